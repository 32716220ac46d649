"""Command line: ``python -m sparseprop info``."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sparseprop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print ISA, OpenMP, threads and versions")
    args = parser.parse_args(argv)
    if args.command == "info":
        import sparseprop

        sparseprop.show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
