"""Per-call time of the NumPy-level layer functions on tiny and small shapes.

On small layers the Python around the kernels (argument checks, the plan
lookup, the task split) is a measured part of a call: this times
``conv2d_forward`` / ``conv2d_backward`` (256x128x3x3 on 8x128x7x7, padding 1,
and 64x64x3x3 on 2x64x7x7) and ``linear_forward`` / ``linear_backward``
(3072x768, batch 8), all at 0.99 sparsity, float32, on 1 and 2 threads, plus a
``SparseConv2d`` forward + backward through the torch façade (with
``--only torch``: importing torch makes each process start slower).
One-thread cases count the calling thread's CPU time, two-thread ones wall
time.

Run:  python benchmarks/bench_overhead.py                 (this build)
      python benchmarks/bench_overhead.py --ab OLD_DIR    (A/B: OLD_DIR holds
      another build's installed ``sparseprop`` folder; each round runs one
      process per build, in alternating order; each process reports its best
      run per case, the table the median over the rounds)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def cases(with_torch):
    """(name, fn) pairs; each fn makes one call."""
    import sparseprop as sp

    rng = np.random.default_rng(0)
    out = []

    def sparse(shape, sparsity):
        w = rng.standard_normal(shape, dtype=np.float32)
        w[rng.random(shape) < sparsity] = 0
        return w

    for label, wshape, xshape in (("conv256", (256, 128, 3, 3), (8, 128, 7, 7)),
                                  ("conv64", (64, 64, 3, 3), (2, 64, 7, 7))):
        W = sp.SparseConvWeight.from_dense(sparse(wshape, 0.99))
        X = rng.standard_normal(xshape, dtype=np.float32)
        dY = rng.standard_normal((xshape[0], wshape[0], 7, 7), dtype=np.float32)
        b = rng.standard_normal(wshape[0], dtype=np.float32)
        for t in (1, 2):
            out.append((f"{label}_fwd_t{t}",
                        lambda X=X, W=W, b=b, t=t: sp.conv2d_forward(X, W, b, padding=1,
                                                                     n_threads=t)))
            out.append((f"{label}_bwd_t{t}",
                        lambda X=X, W=W, dY=dY, t=t: sp.conv2d_backward(X, W, dY, padding=1,
                                                                        n_threads=t)))
    W = sp.CSRMatrix.from_dense(sparse((3072, 768), 0.99))
    X = rng.standard_normal((8, 768), dtype=np.float32)
    dY = rng.standard_normal((8, 3072), dtype=np.float32)
    b = rng.standard_normal(3072, dtype=np.float32)
    for t in (1, 2):
        out.append((f"linear_fwd_t{t}",
                    lambda t=t: sp.linear_forward(X, W, b, n_threads=t)))
        out.append((f"linear_bwd_t{t}",
                    lambda t=t: sp.linear_backward(X, W, dY, n_threads=t)))
    if not with_torch:
        return out

    import torch  # only imported here: a process without it starts in a fraction

    from sparseprop.torch import SparseConv2d
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = SparseConv2d(128, 256, 3, padding=1, sparsity=0.99, n_threads=1)
    x = torch.randn(8, 128, 7, 7, requires_grad=True)

    def torch_step():
        layer(x).sum().backward()

    out.append(("torch_conv256_fwdbwd_t1", torch_step))
    return out


def worker(reps, calls, only):
    """{case: seconds per call} of this process's build: the best of ``reps``
    runs of ``calls`` calls (on a shared machine the others are disturbed)."""
    result = {}
    for name, fn in cases(with_torch=any("torch" in o for o in only)):
        if only and not any(o in name for o in only):
            continue
        for _ in range(max(10, calls // 4)):
            fn()
        # one thread: the calling thread's CPU time (time descheduled by other
        # processes is not counted); two: wall time
        clock = time.perf_counter if "_t2" in name else time.thread_time
        per_call = []
        for _ in range(reps):
            t0 = clock()
            for _ in range(calls):
                fn()
            per_call.append((clock() - t0) / calls)
        result[name] = min(per_call)  # the least disturbed run of this process
    return result


def run_worker(env_path, reps, calls, only):
    env = dict(os.environ)
    if env_path:
        env["PYTHONPATH"] = env_path
    else:
        env.pop("PYTHONPATH", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--reps", str(reps),
           "--calls", str(calls)] + [a for o in only for a in ("--only", o)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ab", metavar="OLD_DIR", help="folder holding the other build")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--only", action="append", default=[], metavar="SUBSTR",
                   help="only the cases whose name contains SUBSTR (repeatable)")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.reps, args.calls, args.only)))
        return
    builds = {"new": None}
    if args.ab:
        builds = {"old": os.path.abspath(args.ab), "new": None}
    rows = {b: [] for b in builds}
    for r in range(args.rounds):
        order = list(builds) if r % 2 == 0 else list(builds)[::-1]
        for b in order:
            rows[b].append(run_worker(builds[b], args.reps, args.calls, args.only))
    names = list(rows["new"][0])
    head = f"{'case':<26}" + "".join(f"{b + ' us':>10}" for b in builds)
    print(head + ("   new/old" if args.ab else ""))
    for n in names:
        med = {b: statistics.median(x[n] for x in rows[b]) * 1e6 for b in builds}
        line = f"{n:<26}" + "".join(f"{med[b]:>10.1f}" for b in builds)
        if args.ab:
            line += f"{med['new'] / med['old']:>10.3f}"
        print(line)


if __name__ == "__main__":
    main()
