"""Masks that change during training: dense gradients, RigL, gradual pruning.

Optimizer state follows every mask change (see ``_optim_state``).

Dense gradients (RigL)
----------------------
A sparse layer computes the weight gradient only at its nonzeros.  RigL-style
regrowth needs ``|dL/dW|`` at the *missing* weights too.
:class:`DenseGradients` obtains it on the batches run inside its ``with``
block: a forward hook keeps each sparse layer's input, a hook on the output
receives ``dL/dY`` during ``backward()``, and the dense weight gradient is
formed from the two with plain torch (``dY^T X`` for linear,
``torch.nn.grad.conv2d_weight`` for conv2d).  This costs one dense
weight-gradient product per layer and batch, so use it only on the steps that
update masks (RigL does every ΔT steps).
"""
import math

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn
from torch.nn.utils import parametrize

from sparseprop.torch._layers import SparseConv2d, SparseLinear, _SparseLayer, dense_weight_of
from sparseprop.torch._optim_state import replace_parameter

__all__ = [
    "DenseGradients",
    "GradualMagnitudePruner",
    "cubic_sparsity",
    "rigl_update_",
]


def _sparse_layers(model_or_layers):
    if isinstance(model_or_layers, _SparseLayer):
        return {"": model_or_layers}
    if isinstance(model_or_layers, nn.Module):
        return {n: m for n, m in model_or_layers.named_modules() if isinstance(m, _SparseLayer)}
    if isinstance(model_or_layers, dict):
        return dict(model_or_layers)
    return {str(i): m for i, m in enumerate(model_or_layers)}


class DenseGradients:
    """Collect the dense weight gradient of sparse layers during ``backward()``.

    ::

        with DenseGradients(model) as dense:
            loss_fn(model(x), y).backward()
        layer.regrow_(n, dense["0"])            # keyed by module name

    Gradients of several backward passes inside the block add up (like
    ``.grad``).  See the module documentation for how they are computed.

    Parameters
    ----------
    model_or_layers : nn.Module, a sparse layer, or a dict/list of sparse layers
    """

    def __init__(self, model_or_layers):
        self.layers = _sparse_layers(model_or_layers)
        self.grads = {}
        self._handles = []

    def __enter__(self):
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def __getitem__(self, name):
        return self.grads[name]

    def __contains__(self, name):
        return name in self.grads

    def _hook(self, name):
        def forward_hook(layer, inputs, output):
            if not output.requires_grad:
                return
            x = inputs[0].detach()
            output.register_hook(lambda g: self._accumulate(name, layer, x, g.detach()))
        return forward_hook

    def _accumulate(self, name, layer, x, g):
        with torch.no_grad():
            if isinstance(layer, SparseLinear):
                dense = g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
            else:
                if x.dim() == 3:
                    x, g = x.unsqueeze(0), g.unsqueeze(0)
                xp, padding = layer._prepare_input(x)
                dense = torch.nn.grad.conv2d_weight(xp, layer.weight_shape, g, layer.stride,
                                                    padding, layer.dilation, layer.groups)
            prev = self.grads.get(name)
            self.grads[name] = dense if prev is None else prev + dense


def rigl_update_(layer, fraction, dense_grad, *, optimizer=None):
    """One RigL mask update of a sparse layer, in place; nnz stays the same.

    Drops the ``round(fraction * nnz)`` stored weights of smallest magnitude,
    then grows as many connections where ``|dense_grad|`` is largest among the
    positions not stored after the drop (a just-dropped position may come
    back; it restarts from zero).  Optimizer state follows the rules of
    :func:`remap_optimizer_state` when ``optimizer`` is given.

    Returns the (nnz,) map from new slots to the slots before the update
    (-1 for grown ones).
    """
    n = int(round(float(fraction) * layer.nnz))
    if n <= 0:
        return torch.arange(layer.nnz)
    dropped = layer.keep_largest_(layer.nnz - n, optimizer=optimizer)
    grown = layer.regrow_(n, dense_grad, optimizer=optimizer)
    return torch.where(grown >= 0, dropped[grown.clamp(min=0)], grown)


def cubic_sparsity(step, final_sparsity, begin_step, end_step, initial_sparsity=0.0):
    """The gradual pruning schedule of Zhu & Gupta (2017).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3`` for
    ``t0 <= t <= t1``; ``s_i`` before ``t0`` and ``s_f`` after ``t1``.
    """
    if step >= end_step:
        return float(final_sparsity)
    if step <= begin_step:
        return float(initial_sparsity)
    frac = (step - begin_step) / (end_step - begin_step)
    return float(final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - frac) ** 3)


def _set_submodule(model, name, new):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class GradualMagnitudePruner:
    """Gradual magnitude pruning (Zhu & Gupta's cubic schedule) that ends in sparse layers.

    During the dense phase layers stay ``nn.Linear`` / ``nn.Conv2d``, masked
    with ``torch.nn.utils.prune`` (so pruned weights get zero gradient and stay
    zero); once a layer is at least ``convert_at`` sparse it is replaced in the
    model by :class:`SparseLinear` / :class:`SparseConv2d` (same values, same
    bias Parameter) and later steps prune it in place.  When ``optimizer`` is
    given its param groups and state follow every change (see
    :func:`remap_optimizer_state`).

    Call :meth:`step` once per training step, after ``optimizer.step()``.
    Pruning happens at ``begin_step, begin_step + frequency, ...`` up to
    ``end_step`` (and at ``end_step``).

    Parameters
    ----------
    model : nn.Module
    final_sparsity : float
    end_step : int
    begin_step : int, default 0
    frequency : int, default 100
    initial_sparsity : float, default 0.0
    scope : {"uniform", "global"}
        ``uniform``: every layer reaches the target sparsity; ``global``: one
        magnitude threshold over all pruned layers' weights.
    exclude_first_conv, exclude_last_linear : bool, default True
        Leave the first ``Conv2d`` and the last ``Linear`` (in
        ``model.named_modules()`` order) dense.
    layers : list of str, optional
        Names of the modules to prune (overrides the automatic choice).
    convert_at : float or None, default 0.8
        Sparsity from which a layer becomes a sparse layer; None never converts.
    optimizer : torch.optim.Optimizer, optional
    n_threads : int, optional
        Passed to the sparse layers.
    """

    def __init__(self, model, final_sparsity, end_step, *, begin_step=0, frequency=100,
                 initial_sparsity=0.0, scope="uniform", exclude_first_conv=True,
                 exclude_last_linear=True, layers=None, convert_at=0.8, optimizer=None,
                 n_threads=None):
        if scope not in ("uniform", "global"):
            raise ValueError(f"scope must be 'uniform' or 'global'; got {scope!r}")
        if not 0.0 <= initial_sparsity <= final_sparsity <= 1.0:
            raise ValueError("need 0 <= initial_sparsity <= final_sparsity <= 1; got "
                             f"{initial_sparsity} and {final_sparsity}")
        if end_step < begin_step or frequency < 1:
            raise ValueError(f"need begin_step <= end_step and frequency >= 1; got "
                             f"{begin_step}, {end_step}, {frequency}")
        self.model = model
        self.final_sparsity = float(final_sparsity)
        self.initial_sparsity = float(initial_sparsity)
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency
        self.scope = scope
        self.convert_at = convert_at
        self.optimizer = optimizer
        self.n_threads = n_threads
        self._step = -1
        self.history = []
        if layers is None:
            layers = self._default_layers(exclude_first_conv, exclude_last_linear)
        self.layer_names = list(layers)
        for name in self.layer_names:
            if not isinstance(model.get_submodule(name), (nn.Linear, nn.Conv2d, _SparseLayer)):
                raise TypeError(f"{name!r} is not a Linear/Conv2d layer")

    def _default_layers(self, exclude_first_conv, exclude_last_linear):
        names, convs, linears = [], [], []
        for name, m in self.model.named_modules():
            if isinstance(m, (nn.Conv2d, SparseConv2d)):
                names.append(name)
                convs.append(name)
            elif isinstance(m, (nn.Linear, SparseLinear)):
                names.append(name)
                linears.append(name)
        skip = set()
        if exclude_first_conv and convs:
            skip.add(convs[0])
        if exclude_last_linear and linears:
            skip.add(linears[-1])
        return [n for n in names if n not in skip]

    def sparsity_at(self, step):
        """The target sparsity at ``step`` (the cubic schedule)."""
        return cubic_sparsity(step, self.final_sparsity, self.begin_step, self.end_step,
                              self.initial_sparsity)

    def is_pruning_step(self, step):
        """Whether :meth:`step` prunes at ``step``."""
        if step < self.begin_step or step > self.end_step:
            return False
        return (step - self.begin_step) % self.frequency == 0 or step == self.end_step

    def step(self, step=None):
        """Advance one training step (or go to ``step``); prune when the schedule says so.

        Returns the target sparsity applied, or None when nothing was pruned.
        """
        self._step = self._step + 1 if step is None else int(step)
        if not self.is_pruning_step(self._step):
            return None
        target = self.sparsity_at(self._step)
        self.prune_to(target)
        self.history.append((self._step, target))
        return target

    # ------------------------------------------------------------ pruning
    def _scores(self, m):
        """(magnitudes, structure) of a layer: flat positions and |w| of its stored weights."""
        if isinstance(m, _SparseLayer):
            return m.values.detach().abs(), m.flat_positions()
        w, mask = dense_weight_of(m)
        pos = mask.reshape(-1).nonzero().reshape(-1)
        return w.reshape(-1)[pos].abs(), pos

    @torch.no_grad()
    def prune_to(self, sparsity):
        """Prune every managed layer to ``sparsity`` now (uniform or global), then convert."""
        mods = {n: self.model.get_submodule(n) for n in self.layer_names}
        scores = {n: self._scores(m) for n, m in mods.items()}
        sizes = {n: self._numel(m) for n, m in mods.items()}
        if self.scope == "uniform":
            keep = {n: int(round((1.0 - sparsity) * sizes[n])) for n in mods}
        else:
            total = sum(sizes.values())
            k = int(round((1.0 - sparsity) * total))
            mags = torch.cat([scores[n][0].to(torch.float64) for n in mods]) if mods else \
                torch.zeros(0)
            owner = torch.cat([torch.full((scores[n][0].numel(),), i, dtype=torch.int64)
                               for i, n in enumerate(mods)]) if mods else torch.zeros(0)
            top = torch.sort(mags, descending=True, stable=True).indices[:k]
            counts = torch.bincount(owner[top], minlength=len(mods))
            keep = {n: int(counts[i]) for i, n in enumerate(mods)}
        for n, m in mods.items():
            mags, pos = scores[n]
            if keep[n] < pos.numel():
                if isinstance(m, _SparseLayer):
                    m.keep_largest_(keep[n], optimizer=self.optimizer)
                else:
                    order = torch.sort(mags, descending=True, stable=True).indices[:keep[n]]
                    mask = torch.zeros(sizes[n], dtype=torch.bool)
                    mask[pos[order]] = True
                    self._mask_dense(m, mask.reshape(self._weight(m).shape))
        self._convert_ready(mods, sizes)

    @staticmethod
    def _weight(m):
        return m.weight_orig if hasattr(m, "weight_orig") else m.weight

    def _numel(self, m):
        if isinstance(m, _SparseLayer):
            return math.prod(m.weight_shape)
        return self._weight(m).numel()

    def _mask_dense(self, m, mask):
        if hasattr(m, "weight_orig") and hasattr(m, "weight_mask"):
            m.weight_mask.copy_(mask.to(m.weight_mask.dtype))
            m.weight = m.weight_orig * m.weight_mask  # what the pre-hook computes
        else:
            if parametrize.is_parametrized(m, "weight"):
                for p in m.parametrizations["weight"]:
                    if isinstance(getattr(p, "mask", None), torch.Tensor):
                        p.mask.copy_(mask.to(p.mask.dtype))  # a subset of the old mask
                        return
            torch_prune.custom_from_mask(m, "weight", mask)

    def _convert_ready(self, mods, sizes):
        if self.convert_at is None:
            return
        for n, m in mods.items():
            if isinstance(m, _SparseLayer):
                continue
            _, mask = dense_weight_of(m)
            sparsity = 1.0 - int(mask.sum()) / sizes[n] if sizes[n] else 0.0
            if sparsity < self.convert_at:
                continue
            cls = SparseLinear if isinstance(m, nn.Linear) else SparseConv2d
            new = cls.from_dense(m, n_threads=self.n_threads)
            if m.bias is not None:
                new.bias = m.bias  # the same Parameter: optimizers keep it
            if self.optimizer is not None:
                old = self._weight(m)
                source = mask.reshape(-1).nonzero().reshape(-1)
                replace_parameter(self.optimizer, old, new.values, source)
            _set_submodule(self.model, n, new)
