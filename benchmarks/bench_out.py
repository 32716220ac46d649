"""Writing results into the caller's arrays (``out=``) vs fresh arrays.

For the paper's linear layer (3072x768, batch 902) and the 56x56 ResNet conv
(64x64x3x3 on 32x64x56x56, padding 1), forward only, it times in one process,
round by round (medians):
  dense      torch.nn.functional forward (the baseline, and the memory churn a
             training step puts between two calls of a layer)
  fresh      sparseprop with a new result array per call (the default: large
             results reuse freed blocks of the result-buffer cache)
  uncached   the same with the cache off (each result is new memory, mapped
             and zeroed by the system on first touch: the default before it)
  out        sparseprop writing into one reused ``sparseprop.empty_aligned`` array
  out_np     the same into a reused ``np.empty`` array (16-byte aligned only)

Run:  python benchmarks/bench_out.py [--threads 1 2] [--sparsities 0.9 0.99]
Takes about a minute on 2 cores; results go to benchmarks/results/out.json.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_times, machine_info, write_results  # noqa: E402


def closures(layer, sparsity, threads, rng):
    import torch
    import torch.nn.functional as F

    import sparseprop as sp
    from sparseprop import _pool

    if layer == "linear":
        X = rng.standard_normal((902, 768), dtype=np.float32)
        w = rng.standard_normal((3072, 768), dtype=np.float32)
        w[rng.random(w.shape) < sparsity] = 0
        W = sp.CSRMatrix.from_dense(w)
        y_shape = (902, 3072)

        def run(**kw):
            return sp.linear_forward(X, W, n_threads=threads, **kw)

        def dense():
            F.linear(Xt, Wt)
    else:
        X = rng.standard_normal((32, 64, 56, 56), dtype=np.float32)
        w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
        w[rng.random(w.shape) < sparsity] = 0
        W = sp.SparseConvWeight.from_dense(w)
        y_shape = (32, 64, 56, 56)

        def run(**kw):
            return sp.conv2d_forward(X, W, padding=1, n_threads=threads, **kw)

        def dense():
            F.conv2d(Xt, Wt, padding=1)
    Xt, Wt = torch.from_numpy(X), torch.from_numpy(w)  # the dense closures read these
    out = sp.empty_aligned(y_shape, np.float32)
    out_np = np.empty(y_shape, np.float32)
    np.testing.assert_array_equal(run(out=out), run())

    def uncached():
        old = _pool.set_bypass(True)
        try:
            return run()
        finally:
            _pool.set_bypass(old)

    return {"dense": dense, "fresh": run, "uncached": uncached, "out": lambda: run(out=out),
            "out_np": lambda: run(out=out_np)}


def main():
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.99])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    info = machine_info()
    print(f"# {info['cpu']}, isa={info['isa']}, torch {info.get('torch')}, "
          f"load {info['loadavg_1min']}")
    print("layer | threads | sparsity | dense ms | fresh ms | uncached ms | out ms "
          "| out (np.empty) ms")
    rows = []
    rng = np.random.default_rng(0)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for layer in ("linear", "conv56"):
            for s in args.sparsities:
                with torch.no_grad():
                    t = interleaved_times(closures(layer, s, threads, rng), args.rounds)
                row = {"layer": layer, "threads": threads, "sparsity": s,
                       **{f"{k}_ms": 1e3 * v for k, v in t.items()}}
                rows.append(row)
                print(f"{layer} | {threads} | {s:g} | {row['dense_ms']:.2f} | "
                      f"{row['fresh_ms']:.2f} | {row['uncached_ms']:.2f} | {row['out_ms']:.2f} | "
                      f"{row['out_np_ms']:.2f}",
                      flush=True)
    path = write_results("out", {"machine": info, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
