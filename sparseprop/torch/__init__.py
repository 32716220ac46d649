"""PyTorch façade of sparseprop: drop-in sparse layers and model surgery.

Needs ``torch`` (``pip install "sparseprop[torch]"``; tested with 2.13.0, CPU).
``import sparseprop`` never imports torch; ``import sparseprop.torch`` does.

Layers
    :class:`SparseLinear`, :class:`SparseConv2d` - ``from_dense(module)`` /
    ``to_dense()``; values are one Parameter, indices are buffers.
Whole models
    :func:`sparsify` (with autotuning and an on-disk cache), :func:`densify`,
    :func:`load_state_dict`.
Deploying
    :func:`onnx_export` / :func:`onnx_translation_table` (ONNX, dense compute
    in the runtime); ``torch.export`` and safetensors work as they are (see
    the README, "Deploying a sparse model"); :func:`load_safetensors` reads
    a safetensors file or a Hugging Face model folder into any architecture.
Changing masks
    ``layer.prune_`` / ``keep_largest_`` / ``regrow_`` / ``set_mask_``,
    :func:`rigl_update_`, :class:`DenseGradients`,
    :func:`remap_optimizer_state`, :class:`GradualMagnitudePruner`.
Operators
    ``torch.ops.sparseprop.linear`` / ``linear_backward`` / ``conv2d`` /
    ``conv2d_backward`` (``torch.library.custom_op``; they work under
    ``torch.compile(fullgraph=True)`` and pass ``torch.library.opcheck``).
"""
try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sparseprop.torch needs PyTorch: pip install torch==2.13.0 (CPU), "
        "or pip install 'sparseprop[torch]'"
    ) from exc

from sparseprop.torch import _ops  # noqa: F401  (registers torch.ops.sparseprop.*)
from sparseprop.torch._checkpoint import load_safetensors
from sparseprop.torch._convert import (
    LayerDecision,
    SparsifyReport,
    densify,
    load_state_dict,
    sparsify,
    tuning_cache_dir,
)
from sparseprop.torch._layers import SparseConv2d, SparseLinear, dense_weight_of, weight_sparsity
from sparseprop.torch._masks import (
    DenseGradients,
    GradualMagnitudePruner,
    cubic_sparsity,
    rigl_update_,
)
from sparseprop.torch._onnx import onnx_export, onnx_translation_table
from sparseprop.torch._optim_state import remap_optimizer_state, replace_parameter

__all__ = [
    "DenseGradients",
    "GradualMagnitudePruner",
    "LayerDecision",
    "SparseConv2d",
    "SparseLinear",
    "SparsifyReport",
    "cubic_sparsity",
    "dense_weight_of",
    "densify",
    "load_safetensors",
    "load_state_dict",
    "onnx_export",
    "onnx_translation_table",
    "remap_optimizer_state",
    "replace_parameter",
    "rigl_update_",
    "sparsify",
    "tuning_cache_dir",
    "weight_sparsity",
]
