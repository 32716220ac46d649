"""Whole-model conversion: sparsify, densify, the tuning cache, state_dict loading.

Tuning cache
------------
``sparsify(..., autotune=True)`` times every candidate layer (dense against
sparse, forward + backward) and remembers the result on disk, one small JSON
file per key, so a second run on the same machine reuses it.  The folder is
``$SPARSEPROP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/sparseprop/autotune``,
else ``~/.cache/sparseprop/autotune`` (see :func:`tuning_cache_dir`); a
``cache_dir=`` argument overrides both.  The key holds the layer type and
shape with all its options, the input shape, whether the input needs a
gradient, whether the backward is timed, the sparsity (rounded to 0.01),
the dtype, the thread count, the ISA sparseprop runs on, the sparseprop and
torch versions, and the build of the kernels (size and time of the compiled
modules, so a rebuilt sparseprop measures again).  Delete the folder to re-measure.
"""
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

import sparseprop
from sparseprop.torch._layers import SparseConv2d, SparseLinear, _SparseLayer, dense_weight_of
from sparseprop.torch._masks import _set_submodule

__all__ = [
    "LayerDecision",
    "SparsifyReport",
    "densify",
    "load_state_dict",
    "sparsify",
    "tuning_cache_dir",
]

CONV_ALGORITHMS = ("batch_last", "over_width")


def tuning_cache_dir():
    """The folder of the autotuning cache (see the module documentation)."""
    env = os.environ.get("SPARSEPROP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparseprop" / "autotune"


@dataclasses.dataclass
class LayerDecision:
    """One row of a :class:`SparsifyReport`."""

    name: str
    kind: str
    weight_shape: tuple
    sparsity: float
    decision: str  # "sparse" or "dense"
    reason: str
    input_shape: tuple | None = None
    dense_ms: float | None = None
    sparse_ms: float | None = None
    algorithm: str | None = None
    cached: bool = False

    @property
    def speedup(self):
        """dense time / sparse time (None when not timed)."""
        if self.dense_ms is None or not self.sparse_ms:
            return None
        return self.dense_ms / self.sparse_ms


@dataclasses.dataclass
class SparsifyReport:
    """What :func:`sparsify` did to each Linear/Conv2d; ``print(report)`` shows a table."""

    layers: list
    threads: int
    isa: str
    min_sparsity: float
    autotune: bool
    timed: str = "forward+backward"  # "forward" when sparsify ran without gradients

    @property
    def converted(self):
        """Names of the layers that became sparse."""
        return [d.name for d in self.layers if d.decision == "sparse"]

    def __getitem__(self, name):
        for d in self.layers:
            if d.name == name:
                return d
        raise KeyError(name)

    def __str__(self):
        head = ("layer", "type", "weight shape", "input shape", "sparsity", "dense ms",
                "sparse ms", "speedup", "algorithm", "decision")
        def ms(v):
            return "-" if v is None else f"{v:.3f}"

        rows = []
        for d in self.layers:
            shape = "-" if d.input_shape is None else "x".join(map(str, d.input_shape))
            rows.append((d.name or "(model)", d.kind, "x".join(map(str, d.weight_shape)), shape,
                         f"{100 * d.sparsity:.1f}%", ms(d.dense_ms), ms(d.sparse_ms),
                         "-" if d.speedup is None else f"{d.speedup:.2f}x",
                         d.algorithm or "-",
                         f"{d.decision} ({d.reason}{', cached' if d.cached else ''})"))
        widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [f"sparsify: {len(self.converted)} of {len(self.layers)} layers sparse "
                 f"(min_sparsity={self.min_sparsity}, autotune={self.autotune}, "
                 + ("timed=forward, " if self.timed == "forward" else "") +
                 f"threads={self.threads}, isa={self.isa})",
                 fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in rows]
        return "\n".join(lines)


# ---------------------------------------------------------------- timing

def _deepcopy_model(model):
    """copy.deepcopy that also works on modules pruned with torch.nn.utils.prune.

    A pruned module keeps ``weight = weight_orig * weight_mask`` as a plain,
    non-leaf attribute, which deepcopy refuses; the copy gets a detached clone
    of it (its forward pre-hook recomputes it anyway).
    """
    memo = {}
    for m in model.modules():
        for value in vars(m).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def _median_time(fn, repeats, warmup):
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fwd_bwd(module, x, grad_out):
    params = [p for p in module.parameters() if p.requires_grad]
    if grad_out is None:  # sparsify called without grad (no_grad, inference_mode)
        def forward_only():
            with torch.no_grad():
                module(x)
        return forward_only

    def run():
        xx = x.detach().requires_grad_(x.requires_grad)
        y = module(xx)
        inputs = params + ([xx] if xx.requires_grad else [])
        torch.autograd.grad(y, inputs, grad_out)
    return run


def _time_layer(dense, sparse, spec, repeats, warmup):
    """(dense seconds, {algorithm: sparse seconds}) for forward + backward
    (forward only when ``spec["backward"]`` is False)."""
    backward = spec.get("backward", True)
    gen = torch.Generator().manual_seed(0)
    shape, needs_grad, channels_last = spec["input_shape"], spec["input_grad"], \
        spec["channels_last"]
    x = torch.randn(shape, generator=gen, dtype=sparse.values.dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(needs_grad and backward)
    with torch.no_grad():
        y = dense(x)
    g = torch.randn(y.shape, generator=gen, dtype=y.dtype) if backward else None
    t_dense = _median_time(_fwd_bwd(dense, x, g), repeats, warmup)
    algs = CONV_ALGORITHMS if isinstance(sparse, SparseConv2d) else (None,)
    t_sparse = {}
    for alg in algs:
        if alg is not None:
            sparse.algorithm = alg
        t_sparse[alg or "-"] = _median_time(_fwd_bwd(sparse, x, g), repeats, warmup)
    return t_dense, t_sparse


# ---------------------------------------------------------------- the cache

@functools.lru_cache(maxsize=1)
def _kernel_build_id():
    """Size and modification time of the compiled kernel modules, hashed."""
    from sparseprop import _conv2d, _linear

    stats = [os.stat(m.__file__) for m in (_linear, _conv2d)]
    raw = ";".join(f"{s.st_size}:{s.st_mtime_ns}" for s in stats)
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _cache_key(module, spec, sparsity, threads, backward=True):
    key = {
        "kind": type(module).__name__,
        "weight_shape": list(dense_weight_of(module)[0].shape),
        "bias": module.bias is not None,
        "input_shape": list(spec["input_shape"]),
        "input_grad": bool(spec["input_grad"]) and backward,
        "timed": "forward+backward" if backward else "forward",
        "channels_last": bool(spec["channels_last"]),
        "sparsity": round(float(sparsity), 2),
        "dtype": str(spec["dtype"]),
        "threads": int(threads),
        "isa": sparseprop.config()["isa"],
        "sparseprop": sparseprop.__version__,
        "build": _kernel_build_id(),
        "torch": torch.__version__,
    }
    if isinstance(module, nn.Conv2d):
        key.update(stride=list(module.stride), dilation=list(module.dilation),
                   groups=module.groups, padding_mode=module.padding_mode,
                   padding=module.padding if isinstance(module.padding, str)
                   else list(module.padding))
    return key


def _cache_path(folder, key):
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(folder) / f"{digest}.json"


def _cache_read(folder, key, algorithms):
    """The cached result for ``key``, or None to measure again.

    The file is untrusted (another process may be writing it, a user may edit
    it): anything but a well-formed result for this key - finite non-negative
    times for the dense layer and for exactly ``algorithms``, ``best`` one of
    them - is ignored (and overwritten by the new measurement), never fatal.
    """
    path = _cache_path(folder, key)
    try:
        with open(path) as f:
            entry = json.load(f)
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON, absurdly nested
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    result = entry.get("result")
    if not isinstance(result, dict) or not _time_ok(result.get("dense_s")):
        return None
    sparse_s = result.get("sparse_s")
    if (not isinstance(sparse_s, dict) or set(sparse_s) != set(algorithms)
            or not all(_time_ok(v) for v in sparse_s.values())
            or result.get("best") not in algorithms):
        return None
    return result


def _time_ok(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def _cache_write(folder, key, result):
    path = _cache_path(folder, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump({"key": key, "result": result}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a read-only home must not break sparsify
        pass


# ---------------------------------------------------------------- sparsify

def _record_inputs(model, candidates, example_inputs):
    """Run the model once; the input spec each candidate layer saw first."""
    specs, handles = {}, []

    def hook_for(name):
        def hook(module, inputs, output):
            if name in specs or not inputs or not isinstance(inputs[0], torch.Tensor):
                return
            x = inputs[0]
            specs[name] = {
                "input_shape": tuple(x.shape),
                "input_grad": bool(x.requires_grad),
                "channels_last": x.dim() == 4 and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last),
                "dtype": x.dtype,
            }
        return hook

    for name, m in candidates:
        handles.append(m.register_forward_hook(hook_for(name)))
    try:
        if isinstance(example_inputs, dict):
            model(**example_inputs)
        elif isinstance(example_inputs, (tuple, list)):
            model(*example_inputs)
        else:
            model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    return specs


def _plain_type(module):
    """The module's class, seen through torch.nn.utils.parametrize's generated subclass.

    Only exact nn.Linear / nn.Conv2d are converted: subclasses (such as
    MultiheadAttention's ``out_proj``) may be used through their ``.weight``
    rather than their forward.
    """
    return parametrize.type_before_parametrizations(module)


def _to_sparse(module, n_threads, algorithm="auto"):
    if isinstance(module, nn.Linear):
        return SparseLinear.from_dense(module, n_threads=n_threads)
    return SparseConv2d.from_dense(module, algorithm=algorithm, n_threads=n_threads)


def sparsify(model, example_inputs=None, min_sparsity=0.8, autotune=True, inplace=False, *,
             n_threads=None, cache_dir=None, repeats=7, warmup=2):
    """Replace the sparse-enough, faster-when-sparse Linear/Conv2d layers of a model.

    Every ``nn.Linear`` / ``nn.Conv2d`` (zero-masked, or pruned with
    ``torch.nn.utils.prune``, or prepared by a ``torch.ao.pruning`` sparsifier)
    that is at least ``min_sparsity`` sparse is a candidate.  With
    ``autotune=True`` the model is run once on ``example_inputs`` to learn
    each layer's input shape; then dense and sparse forward + backward are
    timed on that shape (forward only when ``sparsify`` is called with
    gradients off - under ``torch.no_grad()`` or ``torch.inference_mode()``,
    the way to tune a model for inference) (``warmup`` runs, then the median of ``repeats``),
    trying every conv algorithm, and a layer is replaced only when sparse is
    faster, with the fastest algorithm.  Results are cached on disk (see
    :func:`tuning_cache_dir`).  With ``autotune=False`` every candidate is
    replaced without timing (``example_inputs`` may be None).

    Parameters
    ----------
    model : nn.Module
    example_inputs : tensor, tuple of tensors (positional) or dict (keyword)
    min_sparsity : float, default 0.8
    autotune : bool, default True
    inplace : bool, default False
        Modify ``model`` itself instead of a deep copy.
    n_threads : int, optional
        Threads of the new layers and of the timing; None follows
        ``torch.get_num_threads()``.
    cache_dir : str or Path, optional
        Overrides the tuning cache folder.
    repeats, warmup : int
        Timed and untimed runs per measurement.

    Returns
    -------
    model : nn.Module
    report : SparsifyReport
        One row per Linear/Conv2d; ``print(report)`` shows a table.
    """
    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1]; got {min_sparsity}")
    if autotune and example_inputs is None:
        raise ValueError("example_inputs is needed when autotune=True (it gives each layer's "
                         "input shape); pass autotune=False to convert without timing")
    if not inplace:
        model = _deepcopy_model(model)
    # validated (and clamped) before torch.set_num_threads sees it
    threads = (torch.get_num_threads() if n_threads is None
               else sparseprop._config.resolve_n_threads(n_threads))
    folder = Path(cache_dir) if cache_dir is not None else tuning_cache_dir()
    backward = torch.is_grad_enabled()
    candidates, rows = [], []
    for name, m in model.named_modules():
        if isinstance(m, _SparseLayer):
            rows.append(LayerDecision(name, type(m).__name__, m.weight_shape, m.sparsity,
                                      "sparse", "already sparse"))
        elif _plain_type(m) in (nn.Linear, nn.Conv2d):
            candidates.append((name, m))
    specs = {}
    if autotune:
        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            specs = _record_inputs(model, candidates, example_inputs)
        finally:
            torch.set_num_threads(old_threads)

    replacements = []
    for name, m in candidates:
        weight, mask = dense_weight_of(m)
        size = mask.numel()
        sparsity = 1.0 - int(mask.sum()) / size if size else 0.0
        kind = type(m).__name__
        row = LayerDecision(name, kind, tuple(weight.shape), sparsity, "dense", "")
        rows.append(row)
        spec = specs.get(name)
        if spec is not None:
            row.input_shape = spec["input_shape"]
        if weight.dtype not in (torch.float32, torch.float64) or weight.device.type != "cpu":
            row.reason = f"{weight.dtype} on {weight.device} is not supported"
            continue
        if sparsity < min_sparsity:
            row.reason = f"sparsity below {min_sparsity}"
            continue
        if not autotune:
            row.decision, row.reason = "sparse", "not timed (autotune=False)"
            replacements.append((name, _to_sparse(m, n_threads)))
            continue
        if spec is None:
            row.reason = "not reached by example_inputs (cannot time it)"
            continue
        key = _cache_key(m, spec, sparsity, threads, backward)
        sparse = _to_sparse(m, n_threads)
        algorithms = CONV_ALGORITHMS if isinstance(sparse, SparseConv2d) else ("-",)
        result = _cache_read(folder, key, algorithms)
        if result is None:
            dense = sparse.to_dense()
            old_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                t_dense, t_sparse = _time_layer(dense, sparse, dict(spec, backward=backward),
                                                repeats, warmup)
            finally:
                torch.set_num_threads(old_threads)
            best = min(t_sparse, key=t_sparse.get)
            result = {"dense_s": t_dense, "sparse_s": t_sparse, "best": best}
            _cache_write(folder, key, result)
        else:
            row.cached = True
        best = result["best"]
        row.dense_ms = 1e3 * result["dense_s"]
        row.sparse_ms = 1e3 * result["sparse_s"][best]
        row.algorithm = None if best == "-" else best
        if row.sparse_ms < row.dense_ms:
            row.decision, row.reason = "sparse", "faster"
            if row.algorithm is not None:
                sparse.algorithm = row.algorithm
            replacements.append((name, sparse))
        else:
            row.reason = "dense is faster"
    for name, new in replacements:
        if name:
            _set_submodule(model, name, new.train(model.get_submodule(name).training))
        else:  # the model itself is a single layer
            model = new
    report = SparsifyReport(rows, threads, sparseprop.config()["isa"], float(min_sparsity),
                            bool(autotune), "forward+backward" if backward else "forward")
    return model, report


def densify(model, inplace=False):
    """Replace every SparseLinear/SparseConv2d by the equivalent dense module.

    Reverses :func:`sparsify` (the dense weights hold zeros where nothing was
    stored).  Returns the model (a deep copy unless ``inplace``).
    """
    if isinstance(model, _SparseLayer):
        return model.to_dense().train(model.training)
    if not inplace:
        model = _deepcopy_model(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, _SparseLayer):
            _set_submodule(model, name, m.to_dense().train(m.training))
    return model


def load_state_dict(model, state_dict, strict=True):
    """``model.load_state_dict`` that first makes layer types match the state_dict.

    A dense ``nn.Linear``/``nn.Conv2d`` whose entry in ``state_dict`` is
    sparse (has ``indices``) becomes a :class:`SparseLinear`/
    :class:`SparseConv2d`; a sparse layer whose entry is dense (has
    ``weight``) becomes dense.  So a checkpoint of a sparsified model loads
    into a freshly built dense architecture::

        torch.save(sparse_model.state_dict(), path)
        model = load_state_dict(MyNet(), torch.load(path, weights_only=True))

    Returns what ``load_state_dict`` returns; ``model`` is modified in place.
    """
    for name, m in list(model.named_modules()):
        prefix = name + "." if name else ""
        if isinstance(m, _SparseLayer):
            if prefix + "weight" in state_dict and prefix + "indices" not in state_dict \
                    and name:
                _set_submodule(model, name, m.to_dense().train(m.training))
        elif _plain_type(m) in (nn.Linear, nn.Conv2d) and prefix + "indices" in state_dict:
            if not name:
                raise ValueError("the model itself is a dense layer; build the sparse layer "
                                 "with SparseLinear/SparseConv2d.from_dense first")
            _set_submodule(model, name, _to_sparse(m, None).train(m.training))
    return model.load_state_dict(state_dict, strict=strict)
