"""bfloat16 sparse linear kernels against float32 sparse and dense torch, same run.

For the paper's layer (weight 3072x768, batch 902) at a few sparsities and
thread counts, times (interleaved rounds, medians, after warm-up):

  forward   sparse f32 (linear_forward on float32 X)
            sparse bf16 (linear_forward on ml_dtypes.bfloat16 X: bf16 kernels)
            dense torch bf16 (F.linear on bfloat16 tensors, as autocast runs it)
            dense torch f32
  backward  the same four: linear_backward (dX and dW), and for dense torch
            the two matrix products autograd runs (dX = dY W, dW = dY^T X)

and reports only ratios measured in the same run, labelled with the CPU,
ISA, the bf16 kernel region and threads.

    python benchmarks/bench_bf16.py [--sparsities 0.9 0.95 0.99] [--threads 1 2]
                                    [--rounds 15] [--json NAME]
"""
import argparse

import ml_dtypes
import numpy as np
import torch

import sparseprop as sp
from sparseprop import _config

from _common import interleaved_times, machine_info, write_results

BF16 = np.dtype(ml_dtypes.bfloat16)


def bench_point(N, M, B, sparsity, threads, rounds, rng):
    torch.set_num_threads(threads)
    Wd = rng.standard_normal((N, M)).astype(np.float32)
    Wd[rng.random((N, M)) < sparsity] = 0
    W = sp.CSRMatrix.from_dense(Wd)
    X32 = rng.standard_normal((B, M)).astype(np.float32)
    dY32 = rng.standard_normal((B, N)).astype(np.float32)
    Xb, dYb = X32.astype(BF16), dY32.astype(BF16)
    tW32, tX32, tdY32 = (torch.from_numpy(a) for a in (Wd, X32, dY32))
    tWb, tXb, tdYb = tW32.bfloat16(), tX32.bfloat16(), tdY32.bfloat16()

    fwd = {
        "sparse_f32": lambda: sp.linear_forward(X32, W, n_threads=threads),
        "sparse_bf16": lambda: sp.linear_forward(Xb, W, n_threads=threads),
        "dense_bf16": lambda: torch.nn.functional.linear(tXb, tWb),
        "dense_f32": lambda: torch.nn.functional.linear(tX32, tW32),
    }
    bwd = {
        "sparse_f32": lambda: sp.linear_backward(X32, W, dY32, n_threads=threads),
        "sparse_bf16": lambda: sp.linear_backward(Xb, W, dYb, n_threads=threads),
        "dense_bf16": lambda: (tdYb @ tWb, tdYb.T @ tXb),
        "dense_f32": lambda: (tdY32 @ tW32, tdY32.T @ tX32),
    }
    with torch.no_grad():
        tf = interleaved_times(fwd, rounds)
        tb = interleaved_times(bwd, rounds)
    out = {"sparsity": sparsity, "threads": threads, "forward_s": tf, "backward_s": tb}
    for name, t in (("forward", tf), ("backward", tb)):
        out[f"{name}_bf16_vs_f32_sparse"] = t["sparse_f32"] / t["sparse_bf16"]
        out[f"{name}_bf16_sparse_vs_dense_bf16"] = t["dense_bf16"] / t["sparse_bf16"]
        out[f"{name}_f32_sparse_vs_dense_f32"] = t["dense_f32"] / t["sparse_f32"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--shape", type=int, nargs=3, default=[3072, 768, 902],
                    metavar=("OUT", "IN", "BATCH"))
    ap.add_argument("--json", default=None, help="write benchmarks/results/NAME.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    info = machine_info()
    info["bf16_linear_region"] = _config.BF16_LINEAR_REGION
    info["cpu_avx512bf16"] = _config.CPU_AVX512BF16
    N, M, B = args.shape
    print(f"{info['cpu']}, ISA {info['isa']}, bf16 kernels {info['bf16_linear_region']}, "
          f"torch {info.get('torch')}, layer {N}x{M}, batch {B}")
    print("speed-up = time of the baseline / time of the bfloat16 sparse kernels "
          "(>1: bf16 sparse faster); medians of interleaved rounds")
    print(f"{'sparsity':>8} {'thr':>3} | {'fwd vs f32 sp':>13} {'fwd vs dense bf16':>17} | "
          f"{'bwd vs f32 sp':>13} {'bwd vs dense bf16':>17} | {'f32 sp vs dense f32 f/b':>23}")
    points = []
    for threads in args.threads:
        for s in args.sparsities:
            p = bench_point(N, M, B, s, threads, args.rounds, rng)
            points.append(p)
            print(f"{s:>8.2f} {threads:>3} | {p['forward_bf16_vs_f32_sparse']:>13.2f} "
                  f"{p['forward_bf16_sparse_vs_dense_bf16']:>17.2f} | "
                  f"{p['backward_bf16_vs_f32_sparse']:>13.2f} "
                  f"{p['backward_bf16_sparse_vs_dense_bf16']:>17.2f} | "
                  f"{p['forward_f32_sparse_vs_dense_f32']:>10.2f} / "
                  f"{p['backward_f32_sparse_vs_dense_f32']:<10.2f}", flush=True)
    if args.json:
        path = write_results(args.json, {"machine": info, "shape": [N, M, B], "points": points})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
