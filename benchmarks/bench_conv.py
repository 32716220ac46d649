"""Sparse conv2d vs dense PyTorch: the issue's four ResNet layers, forward and backward.

Layers (float32, NCHW, uniform random sparsity):
  7x7      weight 256x128x3x3 on (8, 128, 7, 7), padding 1
  56x56    weight 64x64x3x3 on (32, 64, 56, 56), padding 1
  56x56s2  weight 128x64x3x3 on (32, 64, 56, 56), padding 1, stride 2
  1x1      weight 256x64x1x1 on (32, 64, 56, 56)
For each thread count, layer, sparsity and algorithm it times, in the same
process run and interleaved round by round (so dense and sparse see the same
machine load; each figure is the median over the rounds):
  dense   torch.nn.functional.conv2d forward, and its autograd backward
          (grad of X and W, as in training)
  sparse  sparseprop.conv2d_forward / conv2d_backward (dX and dW at nonzeros)
and prints speedup = dense time / sparse time, plus useful GFLOP/s
(2 * nnz * batch * OH * OW per product; the backward has two products) next
to dense GFLOP/s (2 * OC * IC * kh * kw * batch * OH * OW per product), and
the reference implementation's speedups given in the issue.

Run:  python benchmarks/bench_conv.py [--threads 1 2] [--layers 7x7 56x56]
      [--sparsities 0.8 0.99] [--algorithms auto] [--repeats 7]
A full run takes about 5-10 minutes on 2 cores; pick layers/sparsities for a
quick one.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_times, machine_info, write_results  # noqa: E402

# name -> (weight shape, input shape, stride, padding)
LAYERS = {
    "7x7": ((256, 128, 3, 3), (8, 128, 7, 7), 1, 1),
    "56x56": ((64, 64, 3, 3), (32, 64, 56, 56), 1, 1),
    "56x56s2": ((128, 64, 3, 3), (32, 64, 56, 56), 2, 1),
    "1x1": ((256, 64, 1, 1), (32, 64, 56, 56), 1, 0),
}

# The reference implementation's best variant on this machine kind, speedup
# over dense torch at 1 thread (fwd, bwd), as given in the issue.
REFERENCE = {
    "7x7": {0.8: (0.43, 0.81), 0.9: (0.77, 1.43), 0.95: (1.40, 2.52), 0.99: (5.2, 8.0)},
    "56x56": {0.8: (0.75, 1.26), 0.9: (1.41, 2.40), 0.95: (2.60, 4.42), 0.99: (7.9, 13.4)},
    "56x56s2": {0.8: (0.19, 0.82), 0.9: (0.41, 1.51), 0.95: (0.69, 2.71), 0.99: (1.6, 7.5)},
}


def time_layer(name, T, sparsities, algorithms, repeats, rng, clock="wall", stat="median"):
    """Rows of results for one layer at T threads (dense and sparse interleaved)."""
    import torch
    import torch.nn.functional as F

    import sparseprop as sp

    wshape, xshape, stride, padding = LAYERS[name]
    X = rng.standard_normal(xshape, dtype=np.float32)
    W0 = rng.standard_normal(wshape, dtype=np.float32)
    Xt = torch.from_numpy(X).requires_grad_(True)
    Wt = torch.from_numpy(W0).requires_grad_(True)
    Yt = F.conv2d(Xt, Wt, None, stride, padding)
    dY = rng.standard_normal(tuple(Yt.shape), dtype=np.float32)
    dYt = torch.from_numpy(dY)

    def dense_fwd():
        with torch.no_grad():
            F.conv2d(Xt, Wt, None, stride, padding)

    def dense_bwd():
        torch.autograd.grad(Yt, (Xt, Wt), dYt, retain_graph=True)

    def sparse(W, algo, backward):
        if backward:
            return lambda: sp.conv2d_backward(X, W, dY, stride, padding, algorithm=algo,
                                              n_threads=T)
        return lambda: sp.conv2d_forward(X, W, None, stride, padding, algorithm=algo,
                                         n_threads=T)

    fns = {"dense_fwd": dense_fwd, "dense_bwd": dense_bwd}
    weights = {}
    for s in sparsities:
        Wd = W0.copy()
        Wd[rng.random(wshape) < s] = 0.0
        weights[s] = sp.SparseConvWeight.from_dense(Wd)
        for algo in algorithms:
            fns[("fwd", s, algo)] = sparse(weights[s], algo, False)
            fns[("bwd", s, algo)] = sparse(weights[s], algo, True)
    med = interleaved_times(fns, repeats, clock=clock, stat=stat)
    t_dense_fwd, t_dense_bwd = med["dense_fwd"], med["dense_bwd"]
    B, _, OH, OW = dY.shape
    flops_dense = 2.0 * np.prod(wshape) * B * OH * OW
    rows = []
    for s in sparsities:
        W = weights[s]
        flops_sparse = 2.0 * W.nnz * B * OH * OW
        for algo in algorithms:
            t_fwd, t_bwd = med[("fwd", s, algo)], med[("bwd", s, algo)]
            chosen = sp.conv2d_algorithm(xshape, W, stride, padding) if algo == "auto" else algo
            ref = REFERENCE.get(name, {}).get(s) if T == 1 else None
            rows.append({
                "layer": name, "weight": list(wshape), "input": list(xshape),
                "stride": stride, "padding": padding, "threads": T, "sparsity": s,
                "clock": clock, "stat": stat,
                "nnz": W.nnz, "algorithm": algo, "algorithm_used": chosen,
                "dense_fwd_ms": 1e3 * t_dense_fwd, "dense_bwd_ms": 1e3 * t_dense_bwd,
                "sparse_fwd_ms": 1e3 * t_fwd, "sparse_bwd_ms": 1e3 * t_bwd,
                "speedup_fwd": t_dense_fwd / t_fwd, "speedup_bwd": t_dense_bwd / t_bwd,
                "gflops_sparse_fwd": flops_sparse / t_fwd / 1e9,
                "gflops_sparse_bwd": 2 * flops_sparse / t_bwd / 1e9,
                "gflops_dense_fwd": flops_dense / t_dense_fwd / 1e9,
                "gflops_dense_bwd": 2 * flops_dense / t_dense_bwd / 1e9,
                "reference_speedup_fwd": ref[0] if ref else None,
                "reference_speedup_bwd": ref[1] if ref else None,
            })
            print(_format_row(rows[-1]), flush=True)
    return rows


def run(threads, layers, sparsities, algorithms, repeats=7, seed=0, clock="wall",
        stat="median"):
    import torch

    rng = np.random.default_rng(seed)
    rows = []
    for T in threads:
        torch.set_num_threads(T)
        for name in layers:
            rows += time_layer(name, T, sparsities, algorithms, repeats, rng, clock, stat)
    return rows


HEADER = ("layer    thr sparsity algorithm        | dense fwd/bwd ms | sparse fwd/bwd ms "
          "| speedup fwd/bwd | GFLOP/s sparse fwd/bwd (dense) | reference fwd/bwd")


def _format_row(r):
    ref = (f"{r['reference_speedup_fwd']:.2f}/{r['reference_speedup_bwd']:.2f}"
           if r["reference_speedup_fwd"] else "-")
    algo = r["algorithm"] if r["algorithm"] != "auto" else f"auto={r['algorithm_used']}"
    return (f"{r['layer']:<8} {r['threads']:>3} {r['sparsity']:>8.2f} {algo:<16}"
            f" | {r['dense_fwd_ms']:7.2f}/{r['dense_bwd_ms']:7.2f}"
            f" | {r['sparse_fwd_ms']:7.2f}/{r['sparse_bwd_ms']:7.2f}"
            f" | {r['speedup_fwd']:6.2f}x/{r['speedup_bwd']:6.2f}x"
            f" | {r['gflops_sparse_fwd']:5.1f}/{r['gflops_sparse_bwd']:5.1f}"
            f" ({r['gflops_dense_fwd']:5.1f}/{r['gflops_dense_bwd']:5.1f})"
            f" | {ref}")


def markdown(rows):
    """A markdown table: per layer and sparsity, fwd/bwd speedup of each
    algorithm per thread count, and the reference implementation's figures."""
    threads = sorted({r["threads"] for r in rows})
    algos = [a for a in ("auto", "batch_last", "over_width")
             if any(r["algorithm"] == a for r in rows)]
    head = ["layer", "sparsity"] + [f"{a} {t}T fwd/bwd" for t in threads for a in algos]
    head += ["reference 1T fwd/bwd"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = []
    for r in rows:
        if (r["layer"], r["sparsity"]) not in keys:
            keys.append((r["layer"], r["sparsity"]))
    for layer, s in keys:
        cells = [layer, f"{s:.2f}"]
        ref = "-"
        for t in threads:
            for a in algos:
                m = [r for r in rows if (r["layer"], r["sparsity"], r["threads"],
                                         r["algorithm"]) == (layer, s, t, a)]
                if not m:
                    cells.append("")
                    continue
                r = m[0]
                note = f" ({r['algorithm_used'][:2]})" if a == "auto" else ""
                cells.append(f"{r['speedup_fwd']:.2f}x / {r['speedup_bwd']:.2f}x{note}")
                if r["reference_speedup_fwd"]:
                    ref = f"{r['reference_speedup_fwd']:.2f}x / {r['reference_speedup_bwd']:.2f}x"
        out.append("| " + " | ".join(cells + [ref]) + " |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    p.add_argument("--sparsities", type=float, nargs="+",
                   default=[0.8, 0.9, 0.95, 0.98, 0.99])
    p.add_argument("--algorithms", nargs="+", default=["batch_last", "over_width", "auto"],
                   choices=["batch_last", "over_width", "auto"])
    p.add_argument("--repeats", type=int, default=7, help="rounds (medians over them)")
    p.add_argument("--clock", choices=["wall", "thread"], default="wall",
                   help="wall time, or the calling thread's CPU time (1 thread only)")
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="per closure over the rounds (min: least disturbed round)")
    p.add_argument("--out", default="conv", help="results/<out>.json ('' to skip)")
    args = p.parse_args(argv)
    if args.clock == "thread" and args.threads != [1]:
        p.error("--clock thread measures one thread: use it with --threads 1")
    info = machine_info()
    print(f"# sparse conv2d, float32 - {info['cpu']}, ISA {info['isa']}, "
          f"load {info['loadavg_1min']}, clock {args.clock}, {args.stat} of {args.repeats}")
    print(HEADER)
    rows = run(args.threads, args.layers, args.sparsities, args.algorithms,
               repeats=args.repeats, clock=args.clock, stat=args.stat)
    print()
    print(markdown(rows))
    if args.out:
        info["loadavg_1min_end"] = machine_info()["loadavg_1min"]
        info["clock"] = args.clock
        info["stat"] = args.stat
        path = write_results(args.out, {"machine": info, "rows": rows})
        print(f"# wrote {path}")


if __name__ == "__main__":
    main()
