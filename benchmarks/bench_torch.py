"""The torch façade's cost: SparseLinear and SparseConv2d against
dense torch and against calling the NumPy API directly, forward + backward
(for linear also through the custom op, the route under torch.compile).

    python benchmarks/bench_torch.py [--threads 1 2] [--quick]

Every figure is a median over repeated runs, measured in this process, with
the thread count and ISA recorded; results go to benchmarks/results/torch.json.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparseprop  # noqa: E402
import sparseprop.torch as spt  # noqa: E402

from _common import machine_info, median_time, write_results  # noqa: E402


def masked_linear(n_in, n_out, sparsity, gen):
    m = nn.Linear(n_in, n_out)
    with torch.no_grad():
        m.weight[torch.rand(m.weight.shape, generator=gen) < sparsity] = 0
    return m


def bench_linear(n_in, n_out, batch, sparsity, threads, repeats):
    gen = torch.Generator().manual_seed(0)
    dense = masked_linear(n_in, n_out, sparsity, gen)
    sparse = spt.SparseLinear.from_dense(dense, n_threads=threads)
    x = torch.randn(batch, n_in, generator=gen)
    g = torch.randn(batch, n_out, generator=gen)

    def torch_step(module):
        def run():
            xx = x.detach().requires_grad_()
            y = module(xx)
            torch.autograd.grad(y, [xx] + list(module.parameters()), g)
        return run

    W = sparseprop.CSRMatrix.from_dense(dense.weight.detach().numpy())
    b, xn, gn = dense.bias.detach().numpy(), x.numpy(), g.numpy()

    def numpy_step():
        sparseprop.linear_forward(xn, W, b, n_threads=threads)
        sparseprop.linear_backward(xn, W, gn, n_threads=threads)
        gn.sum(0)  # the bias gradient, as autograd computes it

    def op_step():  # the custom op, the route the layer takes under torch.compile
        xx = x.detach().requires_grad_()
        y = torch.ops.sparseprop.linear(xx, sparse.values, sparse.indptr, sparse.indices,
                                        n_in, sparse.bias, threads)
        torch.autograd.grad(y, [xx, sparse.values, sparse.bias], g)

    torch.set_num_threads(threads)
    t_dense = median_time(torch_step(dense), repeats=repeats)
    t_numpy = median_time(numpy_step, repeats=repeats)
    t_facade = median_time(torch_step(sparse), repeats=repeats)
    t_op = median_time(op_step, repeats=repeats)
    return {"layer": f"linear {n_out}x{n_in}", "batch": batch, "sparsity": sparsity,
            "threads": threads, "dense_ms": 1e3 * t_dense, "numpy_api_ms": 1e3 * t_numpy,
            "facade_ms": 1e3 * t_facade, "custom_op_ms": 1e3 * t_op,
            "speedup_vs_dense": t_dense / t_facade,
            "facade_overhead_ms": 1e3 * (t_facade - t_numpy)}


def bench_conv(shape_w, shape_x, padding, stride, sparsity, threads, repeats):
    gen = torch.Generator().manual_seed(0)
    dense = nn.Conv2d(shape_w[1], shape_w[0], shape_w[2:], stride=stride, padding=padding)
    with torch.no_grad():
        dense.weight[torch.rand(dense.weight.shape, generator=gen) < sparsity] = 0
    x = torch.randn(shape_x, generator=gen)
    with torch.no_grad():
        g = torch.randn(dense(x).shape, generator=gen)
    torch.set_num_threads(threads)
    out = []
    for alg in ("batch_last", "over_width"):
        sparse = spt.SparseConv2d.from_dense(dense, algorithm=alg, n_threads=threads)

        def step(module):
            def run():
                xx = x.detach().requires_grad_()
                torch.autograd.grad(module(xx), [xx] + list(module.parameters()), g)
            return run
        t_dense = median_time(step(dense), repeats=repeats)
        t_sparse = median_time(step(sparse), repeats=repeats)
        out.append({"layer": f"conv {'x'.join(map(str, shape_w))} on "
                    f"{'x'.join(map(str, shape_x))} s{stride}", "algorithm": alg,
                    "sparsity": sparsity, "threads": threads, "dense_ms": 1e3 * t_dense,
                    "facade_ms": 1e3 * t_sparse, "speedup_vs_dense": t_dense / t_sparse})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and shapes")
    args = ap.parse_args()
    repeats = 5 if args.quick else 11
    rows = []
    for threads in args.threads:
        for sparsity in ((0.9,) if args.quick else (0.8, 0.9, 0.95, 0.99)):
            rows.append(bench_linear(768, 3072, 902, sparsity, threads, repeats))
        rows.append(bench_linear(256, 256, 32, 0.9, threads, repeats))
        # a layer too small to matter: its time is the per-call cost of the facade
        rows.append(bench_linear(16, 16, 2, 0.5, threads, repeats))
        rows += bench_conv((256, 128, 3, 3), (8, 128, 7, 7), 1, 1, 0.9, threads, repeats)
        if not args.quick:
            rows += bench_conv((64, 64, 3, 3), (32, 64, 56, 56), 1, 1, 0.9, threads, repeats)
    info = machine_info()
    print(f"# {info['cpu']}, isa={info['isa']}, torch {info.get('torch')}, "
          f"load {info['loadavg_1min']}")
    keys = ["layer", "batch", "algorithm", "sparsity", "threads", "dense_ms", "numpy_api_ms",
            "facade_ms", "custom_op_ms", "speedup_vs_dense", "facade_overhead_ms"]
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "-"))
                         for k in keys))
    path = write_results("torch", {"machine": info, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
