"""No-grad forward latency: sparse layers against dense torch, under inference_mode.

    python benchmarks/bench_inference.py [--threads 1 2] [--rounds 15] [--no-bert]

* the paper's linear layer (weight 3072x768) at batch 1, 8 and 64;
* a BERT-base encoder (12 layers, hidden 768; ``transformers``, random weights)
  on one sequence of 128 tokens, every encoder Linear sparse;

both at 90% and 97% unstructured sparsity (random masks), forward only under
``torch.inference_mode()``.  Dense and sparse are timed round by round in the
same process at the same thread count (``interleaved_times``: warm-up rounds,
then the median), and each speed is reported as dense time / sparse time.
The CPU model (``lscpu``), ISA and load go with the results
(benchmarks/results/inference.json).
"""
import argparse
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparseprop.torch as spt  # noqa: E402
from sparseprop._bench import interleaved_times  # noqa: E402

from _common import machine_info, write_results  # noqa: E402

SPARSITIES = (0.9, 0.97)


def lscpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return None


def random_masks(model, sparsity, gen):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight[torch.rand(m.weight.shape, generator=gen) < sparsity] = 0
    return model


def bench_linear(batches, threads, rounds):
    rows = []
    for sparsity in SPARSITIES:
        gen = torch.Generator().manual_seed(0)
        dense = random_masks(nn.Linear(768, 3072), sparsity, gen).eval()
        sparse = spt.SparseLinear.from_dense(dense)
        for batch in batches:
            x = torch.randn(batch, 768, generator=gen)
            with torch.inference_mode():
                torch.testing.assert_close(sparse(x), dense(x), rtol=1e-4, atol=1e-4)
                t = interleaved_times({"dense": lambda d=dense, x=x: d(x),
                                       "sparse": lambda s=sparse, x=x: s(x)}, rounds)
            rows.append({"layer": "linear 3072x768", "batch": batch, "sparsity": sparsity,
                         "threads": threads, "dense_ms": 1e3 * t["dense"],
                         "sparse_ms": 1e3 * t["sparse"], "speedup": t["dense"] / t["sparse"]})
            print(f"linear 3072x768 batch {batch:3d} sparsity {sparsity:.0%} threads "
                  f"{threads}: dense {1e3 * t['dense']:.3f} ms, sparse "
                  f"{1e3 * t['sparse']:.3f} ms, speedup {t['dense'] / t['sparse']:.2f}x",
                  flush=True)
    return rows


def bench_bert(threads, rounds, tokens=128):
    import transformers

    rows = []
    config = transformers.BertConfig()  # BERT-base: 12 layers, hidden 768, FFN 3072
    for sparsity in SPARSITIES:
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        dense = transformers.BertModel(config, add_pooling_layer=False).encoder.eval()
        random_masks(dense, sparsity, gen)
        sparse, report = spt.sparsify(dense, autotune=False, min_sparsity=0.5)
        h = torch.randn(1, tokens, config.hidden_size, generator=gen)
        with torch.inference_mode():
            ref = dense(h).last_hidden_state
            torch.testing.assert_close(sparse(h).last_hidden_state, ref, rtol=1e-3, atol=1e-3)
            t = interleaved_times({"dense": lambda d=dense, h=h: d(h),
                                   "sparse": lambda s=sparse, h=h: s(h)}, rounds, warmup=3)
        rows.append({"model": "BERT-base encoder", "batch": 1, "tokens": tokens,
                     "sparsity": sparsity, "sparse_layers": len(report.converted),
                     "threads": threads, "dense_ms": 1e3 * t["dense"],
                     "sparse_ms": 1e3 * t["sparse"], "speedup": t["dense"] / t["sparse"]})
        print(f"BERT-base encoder 1x{tokens} sparsity {sparsity:.0%} threads {threads}: "
              f"dense {1e3 * t['dense']:.1f} ms, sparse {1e3 * t['sparse']:.1f} ms, "
              f"speedup {t['dense'] / t['sparse']:.2f}x", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-bert", action="store_true")
    ap.add_argument("--out", default="inference")
    args = ap.parse_args(argv)
    info = dict(machine_info(), lscpu_model=lscpu_model())
    print(info, flush=True)
    results = {"machine": info, "mode": "forward under torch.inference_mode()",
               "linear": [], "bert": []}
    old = torch.get_num_threads()
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)  # dense and sparse (n_threads=None follows it)
            results["linear"] += bench_linear(args.batches, threads, args.rounds)
            if not args.no_bert:
                results["bert"] += bench_bert(threads, max(5, args.rounds // 2))
    finally:
        torch.set_num_threads(old)
    results["machine"]["loadavg_1min_after"] = machine_info()["loadavg_1min"]
    print("written to", write_results(args.out, results))
    return results


if __name__ == "__main__":
    main()
