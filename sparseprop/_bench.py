"""``python -m sparseprop bench``: sparse linear and conv layers against dense PyTorch.

Times, in one process and interleaved round by round (every candidate once per
round, so dense and sparse see the same machine load; each figure is the
median over the rounds):

  dense   ``torch.nn.functional.linear`` / ``conv2d`` forward (no grad), and
          the autograd backward (gradients of the input and the weight, as in
          training) - what a user would otherwise run, at the same threads;
  sparse  ``sparseprop.linear_forward`` / ``linear_backward`` and
          ``conv2d_forward`` / ``conv2d_backward`` (the public NumPy API;
          input gradient and weight gradient at the nonzeros).

The default run (the paper's linear layer and two ResNet convs at 90/95/98%,
torch's thread count) takes 10-30 s on 2 cores; ``--full`` sweeps
every layer, 80-99% and 1 and 2 threads (10-20 minutes).  The layers:

  linear     weight 3072x768, input 902x768 (the paper's BERT layer and batch)
  conv7x7    weight 256x128x3x3 on (8, 128, 7, 7), padding 1
  conv56     weight 64x64x3x3 on (32, 64, 56, 56), padding 1
  conv56s2   weight 128x64x3x3 on (32, 64, 56, 56), padding 1, stride 2
  conv1x1    weight 256x64x1x1 on (32, 64, 56, 56)

``benchmarks/run_all.py`` (in the source tree) regenerates the plots and
tables of the README from the fuller benchmark scripts.
"""
import json
import os
import statistics
import sys
import time

import numpy as np

__all__ = ["LAYERS", "add_arguments", "interleaved_times", "machine_info", "main", "run"]

# name -> (kind, weight shape, input shape, stride, padding)
LAYERS = {
    "linear": ("linear", (3072, 768), (902, 768), None, None),
    "conv7x7": ("conv", (256, 128, 3, 3), (8, 128, 7, 7), 1, 1),
    "conv56": ("conv", (64, 64, 3, 3), (32, 64, 56, 56), 1, 1),
    "conv56s2": ("conv", (128, 64, 3, 3), (32, 64, 56, 56), 2, 1),
    "conv1x1": ("conv", (256, 64, 1, 1), (32, 64, 56, 56), 1, 0),
}
QUICK_LAYERS = ["linear", "conv7x7", "conv56"]
QUICK_SPARSITIES = [0.9, 0.95, 0.98]
FULL_SPARSITIES = [0.8, 0.9, 0.95, 0.98, 0.99]


def machine_info():
    """CPU model, cores, load, ISA and versions (what every result is labelled with)."""
    import sparseprop

    cfg = sparseprop.config()
    info = {"cpu": cfg["cpu"], "cores": os.cpu_count(),
            "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "python": cfg["python"], "numpy": cfg["numpy"], "sparseprop": cfg["version"],
            "isa": cfg["isa"], "openmp": cfg["openmp"]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        pass
    caps = dense_isa_caps()
    if caps:
        info["dense_isa_caps"] = caps
    return info


def dense_isa_caps():
    """The environment variables that cap the dense baseline's ISA (torch's
    ATen, MKL, oneDNN; benchmarks/as_isa.py sets them) and are set: a figure
    measured under them says so.  Empty when none is."""
    return {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                                       "ONEDNN_MAX_CPU_ISA") if k in os.environ}


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}

#: Interleaved warm-up rounds before the timed ones.  With 2 the first sparse
#: point of a layer could time 3-4x too slow (fresh pages for the large
#: outputs while the allocator settles; see interleaved_times); the benchmark
#: scripts and ``python -m sparseprop bench`` all use this many.
WARMUP_ROUNDS = 8


def interleaved_times(fns, rounds, warmup=WARMUP_ROUNDS, clock="wall", stat="median"):
    """Median (or min) seconds of each closure in ``fns`` (a dict), timed round
    by round - every closure once per round - so that all of them, dense and
    sparse, see the same machine load (a shared machine's load changes).

    ``clock="thread"`` counts the calling thread's CPU time instead of wall
    time: with one thread, torch and sparseprop both compute in the calling
    thread, and time spent descheduled by other processes is not counted.
    ``stat="min"`` keeps each closure's least disturbed round.

    The ``warmup`` rounds are interleaved like the timed ones: the allocator
    settles into the pattern it will see (warming each closure up on its own
    left fresh pages to the timed rounds; docs/tuning.md).
    """
    now = CLOCKS[clock]
    reduce = statistics.median if stat == "median" else min
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = now()
            f()
            times[k].append(now() - t0)
    return {k: reduce(v) for k, v in times.items()}


def _layer_fns(name, threads, sparsities, rng):
    """{key: closure} for the dense baseline and every sparsity of one layer."""
    import torch
    import torch.nn.functional as F

    import sparseprop as sp

    kind, wshape, xshape, stride, padding = LAYERS[name]
    X = rng.standard_normal(xshape, dtype=np.float32)
    W0 = rng.standard_normal(wshape, dtype=np.float32)
    Xt = torch.from_numpy(X).requires_grad_(True)
    Wt = torch.from_numpy(W0).requires_grad_(True)
    if kind == "linear":
        def dense(x, w):
            return F.linear(x, w)
    else:
        def dense(x, w):
            return F.conv2d(x, w, None, stride, padding)
    Yt = dense(Xt, Wt)
    dY = rng.standard_normal(tuple(Yt.shape), dtype=np.float32)
    dYt = torch.from_numpy(dY)

    def dense_fwd():
        with torch.no_grad():
            dense(Xt, Wt)

    def dense_bwd():
        torch.autograd.grad(Yt, (Xt, Wt), dYt, retain_graph=True)

    fns = {"dense_fwd": dense_fwd, "dense_bwd": dense_bwd}
    nnz = {}
    for s in sparsities:
        Wd = W0.copy()
        Wd[rng.random(wshape) < s] = 0.0
        W = (sp.CSRMatrix if kind == "linear" else sp.SparseConvWeight).from_dense(Wd)
        nnz[s] = W.nnz
        fns[("fwd", s)], fns[("bwd", s)] = _sparse_fns(kind, X, W, dY, stride, padding,
                                                       threads)
    return fns, nnz, dY.shape


def _sparse_fns(kind, X, W, dY, stride, padding, threads):
    """(forward, backward) closures of the sparseprop NumPy API for one weight."""
    import sparseprop as sp

    if kind == "linear":
        def fwd():
            sp.linear_forward(X, W, n_threads=threads)

        def bwd():
            sp.linear_backward(X, W, dY, n_threads=threads)
    else:
        def fwd():
            sp.conv2d_forward(X, W, None, stride, padding, n_threads=threads)

        def bwd():
            sp.conv2d_backward(X, W, dY, stride, padding, n_threads=threads)
    return fwd, bwd


def run(threads=(None,), layers=QUICK_LAYERS, sparsities=QUICK_SPARSITIES, rounds=7, seed=0,
        log=print):
    """Time every (threads, layer, sparsity); return a list of row dicts.

    ``threads`` entries of None mean torch's current thread count.  Each row
    has the dense and sparse forward/backward times in ms and the speedups
    (dense time / sparse time) of the forward, the backward and both together.
    """
    try:
        import torch
    except ImportError:
        raise SystemExit("the benchmark's dense baseline is PyTorch: pip install "
                         "torch==2.13.0 (CPU build)") from None
    rng = np.random.default_rng(seed)
    default = torch.get_num_threads()
    rows = []
    for T in threads:
        T = default if T is None else int(T)
        torch.set_num_threads(T)
        for name in layers:
            t0 = time.perf_counter()
            fns, nnz, _ = _layer_fns(name, T, sparsities, rng)
            med = interleaved_times(fns, rounds)
            kind, wshape, xshape, stride, padding = LAYERS[name]
            d_f, d_b = med["dense_fwd"], med["dense_bwd"]
            for s in sparsities:
                s_f, s_b = med[("fwd", s)], med[("bwd", s)]
                rows.append({
                    "layer": name, "kind": kind, "weight": list(wshape), "input": list(xshape),
                    "stride": stride, "padding": padding, "threads": T, "sparsity": s,
                    "nnz": nnz[s], "dense_fwd_ms": 1e3 * d_f, "dense_bwd_ms": 1e3 * d_b,
                    "sparse_fwd_ms": 1e3 * s_f, "sparse_bwd_ms": 1e3 * s_b,
                    "speedup_fwd": d_f / s_f, "speedup_bwd": d_b / s_b,
                    "speedup_total": (d_f + d_b) / (s_f + s_b),
                })
                log(_format_row(rows[-1]))
            log(f"# {name} at {T} thread(s): {time.perf_counter() - t0:.1f} s")
    torch.set_num_threads(default)
    return rows


HEADER = ("layer     thr sparsity | dense fwd/bwd ms  | sparse fwd/bwd ms | "
          "speedup fwd / bwd / fwd+bwd")


def _format_row(r):
    return (f"{r['layer']:<9} {r['threads']:>3} {r['sparsity']:>8.2f} | "
            f"{r['dense_fwd_ms']:7.2f}/{r['dense_bwd_ms']:8.2f} | "
            f"{r['sparse_fwd_ms']:7.2f}/{r['sparse_bwd_ms']:8.2f} | "
            f"{r['speedup_fwd']:5.2f}x / {r['speedup_bwd']:5.2f}x / {r['speedup_total']:5.2f}x")


def summary_table(rows):
    """A markdown table: one line per (layer, threads), fwd+bwd speedup per sparsity."""
    sparsities = sorted({r["sparsity"] for r in rows})
    keys = []
    for r in rows:
        if (r["layer"], r["threads"]) not in keys:
            keys.append((r["layer"], r["threads"]))
    head = ["layer", "threads", "dense fwd+bwd ms"] + [f"{100 * s:g}%" for s in sparsities]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for layer, T in keys:
        sub = {r["sparsity"]: r for r in rows if r["layer"] == layer and r["threads"] == T}
        any_row = next(iter(sub.values()))
        cells = [layer, str(T), f"{any_row['dense_fwd_ms'] + any_row['dense_bwd_ms']:.1f}"]
        cells += [f"{sub[s]['speedup_total']:.2f}x" if s in sub else "-" for s in sparsities]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser):
    """The command-line options of ``python -m sparseprop bench``."""
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts (default: torch's; --full: 1 2)")
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), default=None,
                        help=f"default {' '.join(QUICK_LAYERS)}; --full: all")
    parser.add_argument("--sparsities", type=float, nargs="+", default=None,
                        help="default 0.9 0.95 0.98; --full: 0.8 0.9 0.95 0.98 0.99")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median)")
    parser.add_argument("--full", action="store_true",
                        help="every layer, 80-99%% sparsity, 1 and 2 threads")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")


def main(args):
    """Run the benchmark from parsed arguments; prints rows and a summary table."""
    threads = args.threads or ([1, 2] if args.full else [None])
    layers = args.layers or (list(LAYERS) if args.full else QUICK_LAYERS)
    sparsities = args.sparsities or (FULL_SPARSITIES if args.full else QUICK_SPARSITIES)
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise SystemExit(f"--sparsities must be in [0, 1); got {s}")
    if args.rounds < 1 or any(t < 1 for t in threads if t is not None):
        raise SystemExit(f"--rounds and --threads must be positive; got {args.rounds} and "
                         f"{threads}")
    info = machine_info()
    print(f"# sparseprop {info['sparseprop']} layer benchmark - {info['cpu']}, "
          f"{info['cores']} cores, ISA {info['isa']}, torch {info.get('torch')}, "
          f"load {info['loadavg_1min']}")
    print("# dense = torch.nn.functional (fwd no-grad; bwd = autograd dX and dW); "
          "sparse = sparseprop NumPy API; medians of interleaved rounds")
    print(HEADER)
    rows = run(threads, layers, sparsities, rounds=args.rounds)
    print()
    print("fwd+bwd speedup of sparse over dense (same run, float32, "
          f"ISA {info['isa']}):")
    print(summary_table(rows))
    if args.json:
        info["loadavg_1min_end"] = machine_info()["loadavg_1min"]
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(main(p.parse_args()))
