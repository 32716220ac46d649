"""The custom operators behind the sparse layers (``torch.ops.sparseprop.*``).

Each kernel is its own ``torch.library.custom_op`` with a fake (meta)
implementation, and autograd is attached with ``register_autograd``: the
backward formula calls the backward *op*, so ``torch.compile`` traces both
passes without graph breaks and ``torch.library.opcheck`` passes.

The ops take the weight as tensors - ``values`` (nnz,), ``indptr`` (rows+1,)
int64 and ``indices`` (nnz,) int32, a CSR structure of the weight viewed as a
matrix (``out x in`` for linear, ``out x in/groups*kh*kw`` for conv2d, i.e.
the nonzeros of the dense weight in C order).  The structure is turned into a
validated sparseprop weight once (see ``_structure``); the ops then call the
public NumPy API (``sparseprop.linear_forward`` ...) on zero-copy ``.numpy()``
views and wrap the fresh NumPy results with ``torch.from_numpy``.

``n_threads`` is an int: 0 means ``torch.get_num_threads()`` read at run time.
"""
import numpy as np
import torch

import sparseprop
from sparseprop.torch import _structure

_SUPPORTED = (torch.float32, torch.float64)


def _resolve_threads(n_threads):
    return torch.get_num_threads() if n_threads <= 0 else n_threads


def check_tensor(t, name, dtype=None):
    """A clear error for tensors the CPU kernels cannot take (no silent copies)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(
            f"{name} is on {t.device}; sparseprop runs on the CPU only "
            "(move the model and inputs with .cpu())"
        )
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor; got layout {t.layout}")
    if dtype is None:
        if t.dtype not in _SUPPORTED:
            raise TypeError(f"{name} must be float32 or float64; got {t.dtype}")
    elif t.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {t.dtype} but the sparse weight has dtype {dtype}; "
            f"convert one of them (e.g. {name}.to({dtype}))"
        )


def _np(t):
    """A zero-copy NumPy view of a CPU tensor (any strides, autograd stripped)."""
    return t.detach().numpy()


def _csr(values, indptr, indices, shape):
    tagged = _structure.CACHE.get(
        "csr", indptr, indices, shape,
        lambda p, i: _structure.build_csr(p, i, shape, np.float32),
    )
    return tagged.weight.with_data(_np(values.contiguous()))


def _check_structure_args(values, indptr, indices):
    check_tensor(values, "values")
    if indptr.dtype != torch.int64 or indptr.dim() != 1:
        raise TypeError(f"indptr must be a 1-D int64 tensor; got {indptr.dtype} "
                        f"of shape {tuple(indptr.shape)}")
    if indices.dtype != torch.int32 or indices.dim() != 1:
        raise TypeError(f"indices must be a 1-D int32 tensor; got {indices.dtype} "
                        f"of shape {tuple(indices.shape)}")
    if values.dim() != 1 or values.shape[0] != indices.shape[0]:
        raise ValueError(f"values must have shape ({indices.shape[0]},) like indices; "
                         f"got {tuple(values.shape)}")
    for t, name in ((indptr, "indptr"), (indices, "indices")):
        if t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device}; sparseprop runs on the CPU only")


# ---------------------------------------------------------------- linear

@torch.library.custom_op("sparseprop::linear", mutates_args=())
def linear(x: torch.Tensor, values: torch.Tensor, indptr: torch.Tensor,
           indices: torch.Tensor, in_features: int, bias: torch.Tensor | None,
           n_threads: int) -> torch.Tensor:
    """``F.linear(x, W, bias)`` for the sparse W given by (values, indptr, indices)."""
    _check_structure_args(values, indptr, indices)
    check_tensor(x, "input", values.dtype)
    W = _csr(values, indptr, indices, (indptr.shape[0] - 1, in_features))
    b = None
    if bias is not None:
        check_tensor(bias, "bias", values.dtype)
        b = _np(bias)
    Y = sparseprop.linear_forward(_np(x), W, b, n_threads=_resolve_threads(n_threads))
    return torch.from_numpy(Y)


@linear.register_fake
def _linear_fake(x, values, indptr, indices, in_features, bias, n_threads):
    return x.new_empty((*x.shape[:-1], indptr.shape[0] - 1))


@torch.library.custom_op("sparseprop::linear_backward", mutates_args=())
def linear_backward(x: torch.Tensor, values: torch.Tensor, indptr: torch.Tensor,
                    indices: torch.Tensor, in_features: int, grad_output: torch.Tensor,
                    need_input_grad: bool, n_threads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_input, grad_values) of :func:`linear`; grad_input is empty (0,) when
    ``need_input_grad`` is False (its kernel is skipped)."""
    _check_structure_args(values, indptr, indices)
    check_tensor(x, "input", values.dtype)
    check_tensor(grad_output, "grad_output", values.dtype)
    W = _csr(values, indptr, indices, (indptr.shape[0] - 1, in_features))
    dX, dW = sparseprop.linear_backward(_np(x), W, _np(grad_output), bool(need_input_grad),
                                        n_threads=_resolve_threads(n_threads))
    gx = torch.from_numpy(dX) if dX is not None else x.new_empty((0,))
    return gx, torch.from_numpy(dW)


@linear_backward.register_fake
def _linear_backward_fake(x, values, indptr, indices, in_features, grad_output,
                          need_input_grad, n_threads):
    gx = x.new_empty(x.shape) if need_input_grad else x.new_empty((0,))
    return gx, values.new_empty(values.shape)


def _linear_setup(ctx, inputs, output):
    x, values, indptr, indices, in_features, bias, n_threads = inputs
    ctx.save_for_backward(x, values, indptr, indices)
    ctx.in_features = in_features
    ctx.n_threads = n_threads
    ctx.has_bias = bias is not None


def _linear_grad(ctx, grad):
    x, values, indptr, indices = ctx.saved_tensors
    need_x, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx = gv = gb = None
    if need_x or need_v:
        gx, gv = linear_backward(x, values, indptr, indices, ctx.in_features, grad,
                                 need_x, ctx.n_threads)
        gx = gx if need_x else None
        gv = gv if need_v else None
    if ctx.has_bias and ctx.needs_input_grad[5]:
        gb = grad.reshape(-1, grad.shape[-1]).sum(0)
    return gx, gv, None, None, None, gb, None


linear.register_autograd(_linear_grad, setup_context=_linear_setup)


# ---------------------------------------------------------------- conv2d

def conv_output_hw(h, w, kh, kw, stride, padding, dilation):
    """Output height and width of a 2-D convolution (PyTorch's formula)."""
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def _build_conv(indptr_np, indices_np, weight_shape, dtype):
    """Validate the CSR structure and build the SparseConvWeight with the same nonzeros.

    Both keep the nonzeros of the dense weight in C order, so values line up
    one to one.  O(nnz + out*in/groups): no dense array is formed.
    """
    OC, ICg, KH, KW = weight_shape
    tagged = _structure.build_csr(indptr_np, indices_np, (OC, ICg * KH * KW), dtype)
    W = tagged.weight
    col = W.indices.astype(np.int64)
    oc = np.repeat(np.arange(OC, dtype=np.int64), np.diff(W.indptr))
    ic = col // (KH * KW)
    counts = np.bincount(oc * ICg + ic, minlength=OC * ICg).reshape(OC, ICg)
    ich = np.zeros((OC, ICg + 1), dtype=np.int64)
    np.cumsum(counts, axis=1, out=ich[:, 1:])
    conv_weight = sparseprop.SparseConvWeight(
        np.zeros(W.nnz, dtype=dtype), W.indptr, ich.reshape(-1), (col // KW) % KH, col % KW,
        (OC, ICg, KH, KW))
    return _structure._Tagged(conv_weight, tagged._sp_structure)


def _conv_weight(values, indptr, indices, weight_shape):
    shape = tuple(int(s) for s in weight_shape)
    tagged = _structure.CACHE.get(
        "conv2d", indptr, indices, shape,
        lambda p, i: _build_conv(p, i, shape, np.float32),
    )
    return tagged.weight.with_data(_np(values.contiguous()))


@torch.library.custom_op("sparseprop::conv2d", mutates_args=())
def conv2d(x: torch.Tensor, values: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor,
           weight_shape: list[int], bias: torch.Tensor | None, stride: list[int],
           padding: list[int], dilation: list[int], groups: int, algorithm: str,
           n_threads: int) -> torch.Tensor:
    """``F.conv2d(x, W, bias, stride, padding, dilation, groups)`` for the sparse W."""
    _check_structure_args(values, indptr, indices)
    check_tensor(x, "input", values.dtype)
    W = _conv_weight(values, indptr, indices, weight_shape)
    b = None
    if bias is not None:
        check_tensor(bias, "bias", values.dtype)
        b = _np(bias)
    Y = sparseprop.conv2d_forward(_np(x), W, b, stride=tuple(stride), padding=tuple(padding),
                                  dilation=tuple(dilation), groups=groups,
                                  algorithm=algorithm, n_threads=_resolve_threads(n_threads))
    return torch.from_numpy(np.ascontiguousarray(Y))


@conv2d.register_fake
def _conv2d_fake(x, values, indptr, indices, weight_shape, bias, stride, padding, dilation,
                 groups, algorithm, n_threads):
    oh, ow = conv_output_hw(x.shape[2], x.shape[3], weight_shape[2], weight_shape[3],
                            stride, padding, dilation)
    return x.new_empty((x.shape[0], weight_shape[0], oh, ow))


@torch.library.custom_op("sparseprop::conv2d_backward", mutates_args=())
def conv2d_backward(x: torch.Tensor, values: torch.Tensor, indptr: torch.Tensor,
                    indices: torch.Tensor, weight_shape: list[int], grad_output: torch.Tensor,
                    stride: list[int], padding: list[int], dilation: list[int], groups: int,
                    need_input_grad: bool, algorithm: str,
                    n_threads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_input, grad_values) of :func:`conv2d`; grad_input is empty (0,) when
    ``need_input_grad`` is False (its kernel is skipped)."""
    _check_structure_args(values, indptr, indices)
    check_tensor(x, "input", values.dtype)
    check_tensor(grad_output, "grad_output", values.dtype)
    W = _conv_weight(values, indptr, indices, weight_shape)
    dX, dW = sparseprop.conv2d_backward(
        _np(x), W, _np(grad_output), stride=tuple(stride), padding=tuple(padding),
        dilation=tuple(dilation), groups=groups, need_input_grad=bool(need_input_grad),
        algorithm=algorithm, n_threads=_resolve_threads(n_threads))
    gx = torch.from_numpy(np.ascontiguousarray(dX)) if dX is not None else x.new_empty((0,))
    return gx, torch.from_numpy(np.ascontiguousarray(dW))


@conv2d_backward.register_fake
def _conv2d_backward_fake(x, values, indptr, indices, weight_shape, grad_output, stride,
                          padding, dilation, groups, need_input_grad, algorithm, n_threads):
    gx = x.new_empty(x.shape) if need_input_grad else x.new_empty((0,))
    return gx, values.new_empty(values.shape)


def _conv2d_setup(ctx, inputs, output):
    (x, values, indptr, indices, weight_shape, bias, stride, padding, dilation, groups,
     algorithm, n_threads) = inputs
    ctx.save_for_backward(x, values, indptr, indices)
    ctx.args = (weight_shape, stride, padding, dilation, groups, algorithm, n_threads)
    ctx.has_bias = bias is not None


def _conv2d_grad(ctx, grad):
    x, values, indptr, indices = ctx.saved_tensors
    weight_shape, stride, padding, dilation, groups, algorithm, n_threads = ctx.args
    need_x, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx = gv = gb = None
    if need_x or need_v:
        gx, gv = conv2d_backward(x, values, indptr, indices, weight_shape, grad, stride,
                                 padding, dilation, groups, need_x, algorithm, n_threads)
        gx = gx if need_x else None
        gv = gv if need_v else None
    if ctx.has_bias and ctx.needs_input_grad[5]:
        gb = grad.sum((0, 2, 3))
    return gx, gv, None, None, None, gb, None, None, None, None, None, None


conv2d.register_autograd(_conv2d_grad, setup_context=_conv2d_setup)
