"""Two builds of sparseprop, one benchmark, one run: is the change neutral?

Runs ``bench_linear.py`` or ``bench_conv.py`` (with the arguments after
``--``) alternately against build A and build B, in ``--rounds`` rounds (A, B,
B, A, A, B, ...: each build goes first equally often), each in a fresh
process whose ``PYTHONPATH`` puts that build's ``sparseprop`` first.  Every
process measures its own dense torch baseline, so each round gives a
speed-up over dense per point for A and for B; the table gives their medians
over the rounds and B's speed-up divided by A's (1.00: no change).

A build is a folder holding an installed ``sparseprop`` package, e.g. a copy
of ``.venv/lib/python3.11/site-packages/sparseprop`` made before a change.

Run:  python benchmarks/ab_builds.py OLD_DIR NEW_DIR --bench linear --rounds 3 \\
          -- --threads 1 2 --sparsities 0.9 0.99
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _key(row):
    """A benchmark point: what identifies one row of either script."""
    return tuple(row.get(k) for k in ("layer", "algorithm", "threads", "sparsity"))


def _one_run(build, bench, bench_args):
    """Rows of one benchmark process against ``build``."""
    name = f"ab-{uuid.uuid4().hex[:12]}"
    env = dict(os.environ, PYTHONPATH=str(Path(build).resolve()))
    cmd = [sys.executable, str(HERE / f"bench_{bench}.py"), *bench_args, "--out", name]
    # cwd = a neutral folder: the repository root would shadow the build
    subprocess.run(cmd, env=env, check=True, cwd=tempfile.gettempdir(),
                   stdout=subprocess.DEVNULL)
    path = RESULTS / f"{name}.json"
    try:
        payload = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    where = payload["machine"]
    return payload["rows"], f"{where['cpu']}, ISA {where['isa']}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("build_a")
    p.add_argument("build_b")
    p.add_argument("--bench", choices=["linear", "conv"], required=True)
    p.add_argument("--rounds", type=int, default=3)
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    bench_args = argv[cut + 1:]  # for the benchmark script
    speed = {"A": {}, "B": {}}
    machine = set()
    for r in range(args.rounds):
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        for which in order:
            rows, where = _one_run(args.build_a if which == "A" else args.build_b,
                                   args.bench, bench_args)
            machine.add(where)
            for row in rows:
                cell = speed[which].setdefault(_key(row), {"fwd": [], "bwd": []})
                cell["fwd"].append(row["speedup_fwd"])
                cell["bwd"].append(row["speedup_bwd"])
        print(f"# round {r + 1}/{args.rounds} done", flush=True)
    print(f"# {args.bench}: A = {args.build_a}, B = {args.build_b}; {args.rounds} rounds; "
          f"{'; '.join(sorted(machine))}")
    print("# speed-up over dense torch (medians over rounds), fwd / bwd; B/A = ratio of those")
    print("layer      algorithm  threads sparsity |   A fwd/bwd    |   B fwd/bwd    |  B/A fwd/bwd")
    for key in sorted(speed["A"], key=lambda k: tuple(str(v) for v in k)):
        a, b = speed["A"][key], speed["B"].get(key)
        if b is None:
            continue
        ma = [statistics.median(a[d]) for d in ("fwd", "bwd")]
        mb = [statistics.median(b[d]) for d in ("fwd", "bwd")]
        layer, algo, threads, sparsity = key
        print(f"{layer or 'linear':<10} {algo or '-':<10} {threads:>7} {sparsity:>8.2f} | "
              f"{ma[0]:6.2f}/{ma[1]:6.2f}x | {mb[0]:6.2f}/{mb[1]:6.2f}x | "
              f"{mb[0] / ma[0]:5.3f}/{mb[1] / ma[1]:5.3f}")


if __name__ == "__main__":
    main()
