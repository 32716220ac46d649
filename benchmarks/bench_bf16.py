"""bfloat16 sparse linear and conv2d kernels against float32 sparse and dense torch, same run.

Linear: for the paper's layer (weight 3072x768, batch 902) at a few
sparsities and thread counts, times (interleaved rounds, medians, after
warm-up):

  forward   sparse f32 (linear_forward on float32 X)
            sparse bf16 (linear_forward on ml_dtypes.bfloat16 X: bf16 kernels)
            dense torch bf16 (F.linear on bfloat16 tensors, as autocast runs it)
            dense torch f32
  backward  the same four: linear_backward (dX and dW), and for dense torch
            the two matrix products autograd runs (dX = dY W, dW = dY^T X)

Conv2d (``--layers``): the four layers of bench_conv.py (7x7, 56x56,
56x56s2, 1x1), the same four (sparse_f32, sparse_bf16: conv2d_forward /
conv2d_backward with algorithm "auto"; dense_bf16, dense_f32: F.conv2d and
its autograd gradients of X and W), all sparsities of a layer and its dense
runs interleaved round by round.

Only ratios measured in the same run are reported, labelled with the CPU,
ISA, the bf16 kernel regions and threads.

    python benchmarks/bench_bf16.py [--sparsities 0.9 0.95 0.99] [--threads 1 2]
                                    [--layers linear 7x7 56x56 56x56s2 1x1]
                                    [--rounds 15] [--json NAME]
"""
import argparse
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import torch

import sparseprop as sp
from sparseprop import _config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_times, machine_info, write_results  # noqa: E402
from bench_conv import LAYERS as CONV_LAYERS  # noqa: E402

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
    out = {"layer": "linear", "sparsity": sparsity, "threads": threads, "forward_s": tf,
           "backward_s": tb}
    _ratios(out, tf, tb)
    return out


def _ratios(out, tf, tb):
    for name, t in (("forward", tf), ("backward", tb)):
        out[f"{name}_bf16_vs_f32_sparse"] = t["sparse_f32"] / t["sparse_bf16"]
        out[f"{name}_bf16_sparse_vs_dense_bf16"] = t["dense_bf16"] / t["sparse_bf16"]
        out[f"{name}_f32_sparse_vs_dense_f32"] = t["dense_f32"] / t["sparse_f32"]


def bench_conv_layer(name, sparsities, threads, rounds, rng):
    """Points of one conv layer: every sparsity's sparse runs and the dense runs
    in one interleaved set of rounds."""
    F = torch.nn.functional
    torch.set_num_threads(threads)
    wshape, xshape, stride, padding = CONV_LAYERS[name]
    X32 = rng.standard_normal(xshape).astype(np.float32)
    W0 = rng.standard_normal(wshape).astype(np.float32)
    Xb = X32.astype(BF16)
    tX32 = torch.from_numpy(X32).requires_grad_(True)
    tW32 = torch.from_numpy(W0).requires_grad_(True)
    tXb = tX32.detach().bfloat16().requires_grad_(True)
    tWb = tW32.detach().bfloat16().requires_grad_(True)
    Y32 = F.conv2d(tX32, tW32, None, stride, padding)
    Yb = F.conv2d(tXb, tWb, None, stride, padding)
    dY32 = rng.standard_normal(tuple(Y32.shape)).astype(np.float32)
    dYb = dY32.astype(BF16)
    tdY32, tdYb = torch.from_numpy(dY32), torch.from_numpy(dY32).bfloat16()

    def dense_fwd(x, w):
        def f():
            with torch.no_grad():
                F.conv2d(x, w, None, stride, padding)
        return f
    fns = {
        ("fwd", "dense_bf16"): dense_fwd(tXb, tWb),
        ("fwd", "dense_f32"): dense_fwd(tX32, tW32),
        ("bwd", "dense_bf16"): lambda: torch.autograd.grad(Yb, (tXb, tWb), tdYb,
                                                           retain_graph=True),
        ("bwd", "dense_f32"): lambda: torch.autograd.grad(Y32, (tX32, tW32), tdY32,
                                                          retain_graph=True),
    }
    weights = {}
    for s in sparsities:
        Wd = W0.copy()
        Wd[rng.random(wshape) < s] = 0.0
        W = weights[s] = sp.SparseConvWeight.from_dense(Wd)
        for kind, X, dY in (("sparse_f32", X32, dY32), ("sparse_bf16", Xb, dYb)):
            fns[("fwd", kind, s)] = (lambda X=X, W=W: sp.conv2d_forward(
                X, W, None, stride, padding, n_threads=threads))
            fns[("bwd", kind, s)] = (lambda X=X, W=W, dY=dY: sp.conv2d_backward(
                X, W, dY, stride, padding, n_threads=threads))
    t = interleaved_times(fns, rounds)
    points = []
    for s in sparsities:
        tf = {k: t[("fwd", k, s)] for k in ("sparse_f32", "sparse_bf16")}
        tb = {k: t[("bwd", k, s)] for k in ("sparse_f32", "sparse_bf16")}
        for k in ("dense_bf16", "dense_f32"):
            tf[k], tb[k] = t[("fwd", k)], t[("bwd", k)]
        out = {"layer": name, "weight": list(wshape), "input": list(xshape), "stride": stride,
               "padding": padding, "sparsity": s, "threads": threads,
               "nnz": weights[s].nnz,
               "algorithm": sp.conv2d_algorithm(xshape, weights[s], stride, padding),
               "forward_s": tf, "backward_s": tb}
        _ratios(out, tf, tb)
        points.append(out)
    return points


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--shape", type=int, nargs=3, default=[3072, 768, 902],
                    metavar=("OUT", "IN", "BATCH"))
    ap.add_argument("--layers", nargs="+", default=["linear"] + list(CONV_LAYERS),
                    choices=["linear"] + list(CONV_LAYERS),
                    help="the linear layer (--shape) and/or bench_conv.py's conv layers")
    ap.add_argument("--json", default=None, help="write benchmarks/results/NAME.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    info = machine_info()
    info["bf16_linear_region"] = _config.BF16_LINEAR_REGION
    info["bf16_conv2d_region"] = _config.BF16_CONV_REGION
    info["cpu_avx512bf16"] = _config.CPU_AVX512BF16
    N, M, B = args.shape
    print(f"{info['cpu']}, ISA {info['isa']}, bf16 kernels: linear "
          f"{info['bf16_linear_region']}, conv2d {info['bf16_conv2d_region']}; "
          f"torch {info.get('torch')}; linear {N}x{M}, batch {B}")
    print("speed-up = time of the baseline / time of the bfloat16 sparse kernels "
          "(>1: bf16 sparse faster); medians of interleaved rounds")
    print(f"{'layer':>8} {'sparsity':>8} {'thr':>3} | {'fwd vs f32 sp':>13} "
          f"{'fwd vs dense bf16':>17} | {'bwd vs f32 sp':>13} {'bwd vs dense bf16':>17} | "
          f"{'f32 sp vs dense f32 f/b':>23}")
    points = []
    for threads in args.threads:
        for layer in args.layers:
            if layer == "linear":
                got = [bench_point(N, M, B, s, threads, args.rounds, rng)
                       for s in args.sparsities]
            else:
                got = bench_conv_layer(layer, args.sparsities, threads, args.rounds, rng)
            for p in got:
                points.append(p)
                print(f"{p['layer']:>8} {p['sparsity']:>8.2f} {threads:>3} | "
                      f"{p['forward_bf16_vs_f32_sparse']:>13.2f} "
                      f"{p['forward_bf16_sparse_vs_dense_bf16']:>17.2f} | "
                      f"{p['backward_bf16_vs_f32_sparse']:>13.2f} "
                      f"{p['backward_bf16_sparse_vs_dense_bf16']:>17.2f} | "
                      f"{p['forward_f32_sparse_vs_dense_f32']:>10.2f} / "
                      f"{p['backward_f32_sparse_vs_dense_f32']:<10.2f}", flush=True)
    if args.json:
        path = write_results(args.json, {"machine": info, "shape": [N, M, B],
                                         "layers": args.layers, "points": points})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
