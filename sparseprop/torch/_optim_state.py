"""Optimizer state of parameters whose elements are rearranged (a leaf module).

A sparse layer's ``values`` Parameter changes length when its mask changes
(:meth:`~SparseLinear.prune_`, :meth:`~SparseLinear.regrow_`,
:meth:`~SparseLinear.set_mask_`).  The Parameter *object* is kept (so the
optimizer still holds it), but per-element state such as SGD's
``momentum_buffer`` or Adam's ``exp_avg`` / ``exp_avg_sq`` refers to the old
slots.  Pass ``optimizer=`` to those methods (or call
:func:`remap_optimizer_state` yourself): kept entries keep their state, new
entries start at zero, dropped entries' state is discarded; scalar state
(Adam's ``step``) is unchanged.  Without it, the stale state has the old
length and the next ``optimizer.step()`` fails with a size mismatch - never
silently wrong.

This module imports nothing of sparseprop: the layers (``_layers``) and the
mask schedules (``_masks``) both use it, so neither needs the other for it.
"""
import torch

__all__ = ["remap_optimizer_state", "replace_parameter"]


def remap_optimizer_state(optimizer, param, source, old_shape):
    """Keep ``optimizer``'s per-element state of ``param`` aligned with a new structure.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    param : nn.Parameter
        The parameter whose elements were rearranged (already resized).
    source : (new_numel,) int64 tensor
        For each new element, the index of the old (flattened) element it
        continues, or -1 for a new element (its state starts at zero).
    old_shape : int or tuple
        The shape the state tensors had; only tensors of exactly that shape
        are remapped (scalars such as Adam's ``step`` are left alone).
    """
    state = optimizer.state.get(param)
    if not state:
        return
    old_shape = (old_shape,) if isinstance(old_shape, int) else tuple(old_shape)
    source = torch.as_tensor(source, dtype=torch.int64)
    found = source >= 0
    src = source[found]
    for key, value in list(state.items()):
        if isinstance(value, torch.Tensor) and tuple(value.shape) == old_shape and value.dim():
            new = value.new_zeros(param.shape)
            new.view(-1)[found] = value.reshape(-1)[src]
            state[key] = new


def replace_parameter(optimizer, old, new, source=None):
    """Put ``new`` where ``old`` was in ``optimizer`` (param groups and state).

    Per-element state tensors of ``old``'s shape are gathered at ``source``
    (flat indices into ``old``, -1 for zero-initialised elements); None means
    the elements correspond one to one.
    """
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    if old in optimizer.state:
        state = optimizer.state.pop(old)
        if source is None:
            source = torch.arange(new.numel())
        optimizer.state[new] = state
        remap_optimizer_state(optimizer, new, source, tuple(old.shape))
