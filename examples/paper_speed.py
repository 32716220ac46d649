"""Speed at paper scale: training-step time of sparse vs dense ResNet18, ResNet50, BERT-base.

What it shows
    The end-to-end training step (forward, backward, optimizer step) of real
    architectures at the paper's sizes, dense PyTorch against the same model
    with its pruned layers replaced by sparseprop layers - like Tables 2-4 of
    the SparseProp paper - plus the peak memory of each step.

    * ResNet18 / ResNet50 (examples/models.py), 224x224 inputs, SGD with
      momentum (torch's fused CPU implementation, for both models;
      ``--optimizer-impl default`` for torch's per-parameter loop).
      ResNet18: all 3x3 convs except the stem pruned uniformly; ResNet50:
      the 1x1 and 3x3 convs inside the residual blocks (conv1-3 and the 1x1
      downsample of each Bottleneck); the stem and fc stay dense.
    * BERT-base (``transformers.BertForSequenceClassification(BertConfig())``,
      random init, offline), sequences of 128 tokens, AdamW (fused, as
      above: the loop version spends ~0.5 s per step on BERT-base's 110M
      parameters, ~0.3 s on the sparse model's embeddings); the encoder's
      Linear layers (Q, K, V, attention output, intermediate, output) pruned
      uniformly; embeddings, pooler and classifier stay dense.

    Weights are pruned by magnitude (of the random init: uniform random
    masks), then the model is converted with ``sparseprop.torch.sparsify``,
    which - as in the paper's protocol - times every pruned layer dense vs
    sparse on its real input and keeps the faster (``--no-autotune``
    converts them all).  Both models train on the same batches in blocks of
    ``--block`` consecutive steps, taking turns block by block (so both see
    the same machine load); the first step of each block is not timed (it
    follows the other model's step and inherits its caches and freed memory,
    which a training run never does), and each figure is the median over the
    timed steps.  Peak memory: each model's step runs once
    more in a fresh subprocess; the resident-set high-water mark (Linux
    VmHWM, reset after setup and one warm-up step) is the step's peak - with
    glibc's malloc told to return freed memory at once (fixed 128 KiB mmap
    and trim thresholds), so that it follows live memory rather than the
    allocator's caching (without that, the figure varies by +-100 MB from
    run to run for the same model).

    Default: the issue's targets - ResNet18 95% batch 32, ResNet50 97%
    batch 16, BERT-base 90% and 97% batch 4x128 - at torch's thread count.
    ``--full``: 90/95/97% for ResNet18/50 at batch 32 and 64 and BERT-base
    at batch 4 and 8.  ``--profile`` adds a breakdown of one sparse and one
    dense step (sparseprop kernels vs the rest) with torch.profiler.

    ``--autocast bf16`` runs every model's forward and loss under
    ``torch.autocast("cpu", dtype=torch.bfloat16)`` (backward and optimizer
    outside it, weights float32), dense and sparse alike, so the speedup is
    sparse bf16 against dense bf16.  ``sparsify``'s timing runs outside the
    autocast: with autotuning it decides on float32 timings.
How long
    Default run on 2 cores: about 9 minutes at 1 thread, 6 at 2 (ResNet50's
    dense step alone is several seconds; 12 steps per model: one warm-up
    block of 3, then 3 blocks of which 6 steps are timed).  ``--full``:
    1.5-2 hours (estimated from the default run, not timed).
    Tiny settings for a smoke test: ``--image-size 32 --seq-len 16
    --steps 1 --warmup 1 --models resnet18 bert --bert-layers 1``.
Needs
    torch 2.13.0 (CPU); ``transformers`` for BERT (``pip install
    transformers``; it installs beside torch without touching it).

Run:  python examples/paper_speed.py [--threads 1 2] [--full] [--profile] [--json out.json]
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sparseprop
import sparseprop.torch as spt
from sparseprop._bench import dense_isa_caps

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import resnet18, resnet50  # noqa: E402

# The targets: (model, batch, sparsity) -> minimum end-to-end speedup.
TARGETS = {("resnet18", 32, 0.95): 2.7, ("resnet50", 16, 0.97): 2.7,
           ("bert", 4, 0.97): 4.0, ("bert", 4, 0.9): 2.5}
# The reference implementation measured on this machine kind at 1 thread (issue 6).
REFERENCE = {("resnet18", 32, 0.95): "1.65-1.88x", ("resnet50", 16, 0.97): "1.90x",
             ("bert", 4, 0.97): "3.07x", ("bert", 4, 0.9): "1.55x"}


# ---------------------------------------------------------------- models and data

def build(model_name, *, image_size=224, seq_len=128, bert_layers=12, seed=0,
          optimizer_impl="fused", autocast="off"):
    """(model, make_batch, make_optimizer, loss_fn, names of the layers to prune).

    ``optimizer_impl``: "fused" (one fused kernel per step: torch's fastest CPU
    implementation), "foreach" or "default" (torch's per-parameter loop, its
    default on CPU).  Dense and sparse models always use the same one.
    ``autocast``: "off", or "bf16" for a ``loss_fn`` that runs forward and loss
    under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
    """
    model, make_batch, make_opt, loss_fn, names = _build(
        model_name, image_size=image_size, seq_len=seq_len, bert_layers=bert_layers, seed=seed,
        optimizer_impl=optimizer_impl)
    return model, make_batch, make_opt, with_autocast(loss_fn, autocast), names


def with_autocast(loss_fn, mode):
    """``loss_fn`` with forward and loss under bf16 autocast (``mode="bf16"``) or as is."""
    if mode not in ("off", "bf16"):
        raise ValueError(f"autocast must be 'off' or 'bf16'; got {mode!r}")
    if mode == "off":
        return loss_fn

    def autocast_loss(model, inputs, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_fn(model, inputs, y)
    return autocast_loss


def _build(model_name, *, image_size, seq_len, bert_layers, seed, optimizer_impl):
    opt_kw = {} if optimizer_impl == "default" else {optimizer_impl: True}
    torch.manual_seed(seed)
    if model_name in ("resnet18", "resnet50"):
        model = (resnet18 if model_name == "resnet18" else resnet50)(num_classes=1000)
        if model_name == "resnet18":
            names = [n for n, m in model.named_modules()
                     if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and n != "conv1"]
        else:
            names = [n for n, m in model.named_modules()
                     if isinstance(m, nn.Conv2d) and n.startswith("layer")]

        def make_batch(batch, gen):
            x = torch.randn(batch, 3, image_size, image_size, generator=gen)
            y = torch.randint(0, 1000, (batch,), generator=gen)
            return (x,), y

        def make_opt(params):
            return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4, **opt_kw)

        def loss_fn(model, inputs, y):
            return F.cross_entropy(model(*inputs), y)
        return model, make_batch, make_opt, loss_fn, names
    if model_name == "bert":
        try:
            from transformers import BertConfig, BertForSequenceClassification
        except ImportError:
            raise SystemExit("BERT needs transformers: pip install transformers") from None
        config = BertConfig(num_hidden_layers=bert_layers)
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.1
        model = BertForSequenceClassification(config)
        names = [n for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and ".encoder.layer." in f".{n}"]

        def make_batch(batch, gen):
            ids = torch.randint(0, config.vocab_size, (batch, seq_len), generator=gen)
            mask = torch.ones(batch, seq_len, dtype=torch.int64)
            y = torch.randint(0, 2, (batch,), generator=gen)
            return (ids, mask), y

        def make_opt(params):
            return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01, **opt_kw)

        def loss_fn(model, inputs, y):
            ids, mask = inputs
            return F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, y)
        return model, make_batch, make_opt, loss_fn, names
    raise ValueError(f"unknown model {model_name!r}")


def prune_uniform(model, names, sparsity):
    """Zero the smallest-magnitude ``sparsity`` fraction of each named layer's weight."""
    with torch.no_grad():
        for n in names:
            w = model.get_submodule(n).weight
            k = int(round(sparsity * w.numel()))
            if k > 0:
                idx = torch.topk(w.abs().reshape(-1), k, largest=False).indices
                w.view(-1)[idx] = 0.0


def make_sparse(model, names, sparsity, example, autotune):
    """A pruned, sparsified copy of ``model`` and the sparsify report."""
    sparse = copy.deepcopy(model)
    prune_uniform(sparse, names, sparsity)
    # only the pruned layers are sparse enough to be candidates (the others
    # have no zeros); sparsify times each one and keeps the faster version
    sparse, report = spt.sparsify(sparse, example, min_sparsity=0.5, autotune=autotune,
                                  inplace=True, repeats=3, warmup=1)
    unexpected = set(report.converted) - set(names)
    if unexpected:
        raise RuntimeError(f"layers that were not pruned became sparse: {sorted(unexpected)}")
    return sparse, report


# ---------------------------------------------------------------- timing

def timed_step(model, opt, loss_fn, inputs, y):
    """(forward s, backward s, optimizer s) of one training step."""
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model, inputs, y)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def measure(model_name, batch, sparsities, *, steps, warmup, autotune, image_size, seq_len,
            bert_layers, seed=0, optimizer_impl="fused", block=3, autocast="off", log=print):
    """Step times of the dense model and one sparse model per sparsity.

    The models take turns in blocks of ``block`` consecutive steps; the first
    step of a block is not timed (``block=1``: single steps, all timed).
    ``warmup`` untimed blocks per model come first; then ``steps`` steps of
    each model are timed.  Why blocks: a step that follows another model's
    step pays for the caches and freed memory that one left behind, which a
    training run (one model, step after step) never does.  Measured on
    BERT-base 97% at 2 threads, the same run: single interleaved steps made
    the sparse step 10% slower than in blocks (521 vs 474 ms) and the dense
    one 4% (1960 vs 1889 ms).
    """
    if block < 1:
        raise ValueError(f"block must be at least 1; got {block}")
    dense, make_batch, make_opt, loss_fn, names = build(
        model_name, image_size=image_size, seq_len=seq_len, bert_layers=bert_layers, seed=seed,
        optimizer_impl=optimizer_impl, autocast=autocast)
    gen = torch.Generator().manual_seed(seed)
    batches = [make_batch(batch, gen) for _ in range(2)]
    example = batches[0][0] if model_name != "bert" else {
        "input_ids": batches[0][0][0], "attention_mask": batches[0][0][1]}
    variants = {"dense": (dense, make_opt(dense.parameters()))}
    reports = {}
    for s in sparsities:
        t0 = time.perf_counter()
        m, rep = make_sparse(dense, names, s, example, autotune)
        reports[s] = rep
        variants[s] = (m, make_opt(m.parameters()))
        log(f"  sparsify {model_name} at {100 * s:g}%: {len(rep.converted)} of {len(names)} "
            f"pruned layers sparse ({time.perf_counter() - t0:.1f} s)")
    for m, _ in variants.values():
        m.train()
    timed_per_block = max(1, block - 1)
    times = {k: [] for k in variants}
    for r in range(warmup + -(-steps // timed_per_block)):
        for k, (m, opt) in variants.items():
            for j in range(block):
                inputs, y = batches[(r * block + j) % len(batches)]
                t = timed_step(m, opt, loss_fn, inputs, y)
                if r >= warmup and (j > 0 or block == 1) and len(times[k]) < steps:
                    times[k].append(t)
    med = {k: tuple(statistics.median(t[j] for t in v) for j in range(3)) + (
        statistics.median(sum(t) for t in v),) for k, v in times.items()}
    return med, reports, names


# ---------------------------------------------------------------- peak memory

def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def memory_child(args):
    """In a fresh process: peak RSS of one training step of one variant (prints JSON)."""
    torch.set_num_threads(args.threads_one)
    dense, make_batch, make_opt, loss_fn, names = build(
        args.models[0], image_size=args.image_size, seq_len=args.seq_len,
        bert_layers=args.bert_layers, seed=args.seed, optimizer_impl=args.optimizer_impl,
        autocast=args.autocast)
    gen = torch.Generator().manual_seed(args.seed)
    inputs, y = make_batch(args.batch[0], gen)
    model = dense
    if args.memory_variant != "dense":
        # the layers the timing run converted (sparsify's decision there) become sparse
        prune_uniform(dense, names, float(args.memory_variant))
        for name in filter(None, args.memory_layers.split(",")):
            _replace(model, name, _to_sparse(model.get_submodule(name)))
    opt = make_opt(model.parameters())
    timed_step(model, opt, loss_fn, inputs, y)  # warm-up: optimizer state exists
    import gc
    gc.collect()
    before = _rss_kib("VmRSS")
    ok = _reset_peak_rss()
    timed_step(model, opt, loss_fn, inputs, y)
    peak = _rss_kib("VmHWM") if ok else None
    if not ok:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rss_before_kib": before, "peak_kib": peak, "reset": ok}))


def _to_sparse(module):
    if isinstance(module, nn.Conv2d):
        return spt.SparseConv2d.from_dense(module)
    return spt.SparseLinear.from_dense(module)


def _replace(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def peak_memory(args, model_name, batch, variant, threads, converted):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(variant),
           "--models", model_name, "--batch", str(batch), "--threads", str(threads),
           "--image-size", str(args.image_size), "--seq-len", str(args.seq_len),
           "--bert-layers", str(args.bert_layers), "--seed", str(args.seed),
           "--optimizer-impl", args.optimizer_impl, "--autocast", args.autocast,
           "--memory-layers", ",".join(converted)]
    # glibc's malloc returns freed memory at once (a fixed 128 KiB mmap threshold),
    # so the high-water mark follows live memory, not the allocator's caching
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- profile

CATEGORIES = [
    # eager layers show as their autograd Functions (EagerLinear, EagerConv2dBackward
    # ...); the custom ops (under torch.compile) as sparseprop::* and the self time of
    # their autograd nodes (GeneratedBackwardFor_sparseprop_...)
    ("sparseprop kernels", ("EagerLinear", "EagerConv2d", "sparseprop::", "sparseprop_")),
    ("dense conv/linear/matmul", ("aten::convolution", "aten::_convolution",
                                  "aten::mkldnn_convolution", "aten::convolution_backward",
                                  "aten::addmm", "aten::mm", "aten::linear", "aten::matmul",
                                  "aten::bmm", "aten::baddbmm")),
    ("batchnorm/layernorm", ("batch_norm", "layer_norm")),
    ("relu/gelu/softmax", ("relu", "gelu", "softmax", "threshold")),
    ("dropout (RNG + mask)", ("dropout", "bernoulli")),
    ("pooling", ("pool",)),
    ("embedding", ("embedding",)),
    ("optimizer", ("Optimizer.step", "_foreach", "_fused", "aten::lerp", "aten::addcmul",
                   "aten::addcdiv", "aten::sqrt")),
]


def profile_step(model, opt, loss_fn, inputs, y):
    """{category: ms} of one training step (self CPU time of the profiled ops)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        timed_step(model, opt, loss_fn, inputs, y)
    out = {c: 0.0 for c, _ in CATEGORIES}
    out["other"] = 0.0
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1e3
        for cat, keys in CATEGORIES:
            if any(k in ev.key for k in keys):
                out[cat] += ms
                break
        else:
            out["other"] += ms
    return out


def run_profile(model_name, batch, sparsity, args, log):
    dense, make_batch, make_opt, loss_fn, names = build(
        model_name, image_size=args.image_size, seq_len=args.seq_len,
        bert_layers=args.bert_layers, seed=args.seed, optimizer_impl=args.optimizer_impl,
        autocast=args.autocast)
    gen = torch.Generator().manual_seed(args.seed)
    inputs, y = make_batch(batch, gen)
    example = inputs if model_name != "bert" else {"input_ids": inputs[0],
                                                   "attention_mask": inputs[1]}
    sparse, _ = make_sparse(dense, names, sparsity, example, not args.no_autotune)
    rows = {}
    for label, m in (("dense", dense), (f"{100 * sparsity:g}%", sparse)):
        opt = make_opt(m.parameters())
        timed_step(m, opt, loss_fn, inputs, y)
        rows[label] = profile_step(m, opt, loss_fn, inputs, y)
    cats = list(next(iter(rows.values())))
    log(f"  profile {model_name} batch {batch} (ms of self CPU time in one step):")
    log("  " + f"{'category':<28}" + "".join(f"{k:>12}" for k in rows))
    for c in cats + ["total"]:
        vals = [sum(r.values()) if c == "total" else r[c] for r in rows.values()]
        log("  " + f"{c:<28}" + "".join(f"{v:12.1f}" for v in vals))
    return rows


# ---------------------------------------------------------------- main

def configs(args):
    """[(model, batch, sparsities)] to measure."""
    out = []
    if args.full:
        for m in ("resnet18", "resnet50"):
            for b in (32, 64):
                out.append((m, b, [0.9, 0.95, 0.97]))
        for b in (4, 8):
            out.append(("bert", b, [0.9, 0.95, 0.97]))
    else:
        default = {"resnet18": (32, [0.95]), "resnet50": (16, [0.97]),
                   "bert": (4, [0.9, 0.97])}
        for m in args.models:
            b, s = default[m]
            for bb in (args.batch or [b]):
                out.append((m, bb, args.sparsities or s))
    return [c for c in out if c[0] in args.models]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "bert"],
                   choices=["resnet18", "resnet50", "bert"])
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="thread counts (default: torch's)")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default: the issue's per model)")
    p.add_argument("--sparsities", type=float, nargs="+", default=None)
    p.add_argument("--full", action="store_true",
                   help="the paper-style table: 90/95/97%%, batch 32+64 / 4+8")
    p.add_argument("--steps", type=int, default=6, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=1, help="untimed blocks per model first")
    p.add_argument("--block", type=int, default=3,
                   help="consecutive steps per model and turn, the first one untimed "
                        "(1: single interleaved steps, all timed)")
    p.add_argument("--no-autotune", action="store_true",
                   help="convert every pruned layer without timing it")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--profile", action="store_true",
                   help="break one step down by operator category (torch.profiler)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--bert-layers", type=int, default=12)
    p.add_argument("--optimizer-impl", default="fused", choices=["fused", "foreach", "default"],
                   help="torch optimizer implementation for both models (default fused: "
                        "torch's fastest on CPU; 'default' is torch's per-parameter loop)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--autocast", default="off", choices=["off", "bf16"],
                   help="bf16: forward and loss of every model (dense and sparse) under "
                        "torch.autocast('cpu', dtype=torch.bfloat16); default off (float32)")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-layers", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.block < 1 or args.steps < 1 or args.warmup < 0:
        p.error(f"--block and --steps must be >= 1 and --warmup >= 0; got {args.block}, "
                f"{args.steps}, {args.warmup}")
    if args.memory_child is not None:
        args.memory_variant = args.memory_child
        args.threads_one = args.threads[0]
        return memory_child(args)

    threads_list = args.threads or [torch.get_num_threads()]
    load_start = round(os.getloadavg()[0], 2)
    cfg = sparseprop.config()
    print(f"# sparseprop {sparseprop.__version__}, torch {torch.__version__}, ISA {cfg['isa']}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, autocast {args.autocast}")
    results = []
    for T in threads_list:
        torch.set_num_threads(T)
        for model_name, batch, sparsities in configs(args):
            t0 = time.perf_counter()
            shape = (f"{batch}x{args.seq_len} tokens" if model_name == "bert"
                     else f"batch {batch}, {args.image_size}x{args.image_size}")
            print(f"{model_name} ({shape}), {T} thread(s):", flush=True)
            med, reports, names = measure(
                model_name, batch, sparsities, steps=args.steps, warmup=args.warmup,
                autotune=not args.no_autotune, image_size=args.image_size,
                seq_len=args.seq_len, bert_layers=args.bert_layers, seed=args.seed,
                optimizer_impl=args.optimizer_impl, block=args.block, autocast=args.autocast)
            mem = {}
            if not args.no_memory:
                mem["dense"] = peak_memory(args, model_name, batch, "dense", T, [])
                for s in sparsities:
                    mem[s] = peak_memory(args, model_name, batch, s, T, reports[s].converted)
            d = med["dense"]
            for s in sparsities:
                sp_ = med[s]
                row = {
                    "model": model_name, "batch": batch, "threads": T, "sparsity": s,
                    "isa": cfg["isa"], "autocast": args.autocast,
                    "image_size": args.image_size, "seq_len": args.seq_len,
                    "optimizer": f"{'AdamW' if model_name == 'bert' else 'SGD'} "
                                 f"({args.optimizer_impl})",
                    "pruned_layers": len(names), "sparse_layers": len(reports[s].converted),
                    "dense_fwd_s": d[0], "dense_bwd_s": d[1], "dense_opt_s": d[2],
                    "dense_step_s": d[3], "sparse_fwd_s": sp_[0], "sparse_bwd_s": sp_[1],
                    "sparse_opt_s": sp_[2], "sparse_step_s": sp_[3],
                    "speedup_fwd": d[0] / sp_[0], "speedup_bwd": d[1] / sp_[1],
                    "speedup_step": d[3] / sp_[3],
                    "target": TARGETS.get((model_name, batch, s)),
                    "reference_1thread": REFERENCE.get((model_name, batch, s)),
                }
                if mem:
                    row["dense_peak_mib"] = mem["dense"]["peak_kib"] / 1024
                    row["sparse_peak_mib"] = mem[s]["peak_kib"] / 1024
                results.append(row)
                print("  " + format_row(row), flush=True)
            if args.profile:
                for s in sparsities:
                    prof = run_profile(model_name, batch, s, args, print)
                    results[-len(sparsities) + sparsities.index(s)]["profile_ms"] = prof
            print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print()
    print(markdown_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "isa": cfg["isa"], "torch": torch.__version__, "cores": os.cpu_count(),
            "cpu": cfg["cpu"], "loadavg_1min_start": load_start,
            # caps on dense torch's ISA (benchmarks/as_isa.py), if any
            **({"dense_isa_caps": caps} if (caps := dense_isa_caps()) else {}),
            "loadavg_1min_end": round(os.getloadavg()[0], 2),
            "timing": {"block": args.block, "warmup_blocks": args.warmup,
                       "timed_steps": args.steps}, "rows": results}, indent=1))
        print(f"# wrote {args.json}")
    return 0


def format_row(r):
    s = (f"{100 * r['sparsity']:g}%: dense fwd/bwd/step {r['dense_fwd_s']:.3f}/"
         f"{r['dense_bwd_s']:.3f}/{r['dense_step_s']:.3f} s, sparse {r['sparse_fwd_s']:.3f}/"
         f"{r['sparse_bwd_s']:.3f}/{r['sparse_step_s']:.3f} s -> speedup fwd "
         f"{r['speedup_fwd']:.2f}x bwd {r['speedup_bwd']:.2f}x step {r['speedup_step']:.2f}x")
    if r.get("target"):
        s += f" (target >= {r['target']}x)"
    if "dense_peak_mib" in r:
        s += (f"; peak memory dense {r['dense_peak_mib']:.0f} MiB, "
              f"sparse {r['sparse_peak_mib']:.0f} MiB")
    return s


def markdown_table(rows):
    """The results as a markdown table (one row per model, batch, threads, sparsity);
    an autocast column when some row ran under autocast."""
    autocast = any(r.get("autocast", "off") != "off" for r in rows)
    head = ["model", "batch", "threads", "sparsity", "sparse layers", "dense step s",
            "fwd", "bwd", "step", "target", "peak MiB dense / sparse"]
    if autocast:
        head.insert(4, "autocast")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        batch = f"{r['batch']}x{r['seq_len']}" if r["model"] == "bert" else str(r["batch"])
        mem = (f"{r['dense_peak_mib']:.0f} / {r['sparse_peak_mib']:.0f}"
               if "dense_peak_mib" in r else "-")
        cells = [
            r["model"], batch, str(r["threads"]), f"{100 * r['sparsity']:g}%",
            f"{r['sparse_layers']}/{r['pruned_layers']}", f"{r['dense_step_s']:.2f}",
            f"{r['speedup_fwd']:.2f}x", f"{r['speedup_bwd']:.2f}x",
            f"**{r['speedup_step']:.2f}x**",
            f">= {r['target']}x" if r.get("target") else "-", mem]
        if autocast:
            cells.insert(4, r.get("autocast", "off"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
