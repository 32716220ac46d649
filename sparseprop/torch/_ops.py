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

bfloat16.  The ops take a bfloat16 input (and grad_output) with float32
``values``: they return a bfloat16 output and input gradient and a float32
``grad_values``, as the NumPy API does.  The tensors cross to NumPy as
zero-copy ``ml_dtypes.bfloat16`` views (``t.view(torch.int16).numpy()``
reinterpreted; ml_dtypes is needed for bfloat16 only).  Both the linear and
the conv2d ops run bfloat16 kernels (bfloat16 activations, float32 sums).
Autocast is the layers' business (``_layers.py``), not the ops'.

Eager fast path.  Calling a custom op that has autograd attached goes through
the dispatcher and torch's generated autograd wrapper twice per pass, which
on a small layer costs many times the two NumPy calls (the figures are in
docs/tuning.md; benchmarks/bench_torch.py).  So, in plain eager
execution, the layers call :class:`EagerLinear` / :class:`EagerConv2d` instead: ordinary
``torch.autograd.Function`` s around the *same* implementation functions and
the same gradient formulas the ops use, or, when no gradient is wanted
(:func:`grad_wanted`), the implementation functions themselves.
:func:`eager_path_ok` says when that is safe; under ``torch.compile``,
``torch.jit`` tracing, dispatch modes (FakeTensor, FlopCounterMode ...) or
tensor subclasses the layers call the ops, which those understand.
``torch.func`` transforms also get the ops, so their error is torch's own: a
custom op's autograd does not support them (torch 2.13), and neither do the
layers.
"""
import numpy as np
import torch
from torch.autograd.function import once_differentiable

import sparseprop
from sparseprop.torch import _structure

_SUPPORTED = (torch.float32, torch.float64)
#: dtypes an input may have beside the weight's: bfloat16 with float32 values
_LOW = torch.bfloat16


#: Largest row or column count of a weight (its index buffers are int32).
INT32_MAX = 2**31 - 1


def _resolve_threads(n_threads):
    if n_threads < 0:
        raise ValueError(
            f"n_threads must be 0 (meaning torch.get_num_threads()) or a positive integer; "
            f"got {n_threads}"
        )
    if n_threads == 0:  # torch's count may come from a huge OMP_NUM_THREADS: clamp it
        return min(torch.get_num_threads(), sparseprop._config.max_threads())
    return n_threads


def check_n_threads(n_threads):
    """A layer's ``n_threads`` as the ops take it: None -> 0, else a positive int."""
    if n_threads is None:
        return 0
    if isinstance(n_threads, bool) or not hasattr(n_threads, "__index__"):
        raise TypeError(f"n_threads must be a positive integer or None; got "
                        f"{type(n_threads).__name__} {n_threads!r}")
    n = n_threads.__index__()
    if n < 1:
        raise ValueError(f"n_threads must be a positive integer or None; got {n}")
    sparseprop._config.resolve_n_threads(n)  # a value no machine runs is an error now
    return n


def check_same_device(x, **tensors):
    """The fake kernels run for meta (and fake) tensors: every tensor argument
    must be on the input's device, as the real kernels would demand."""
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise ValueError(
                f"{name} is on {t.device} but input is on {x.device}; every tensor of a "
                "sparseprop op must be on one device (the CPU, to run it)"
            )


def check_weight_shape(weight_shape):
    """(OC, ICg, KH, KW) as ints, or a clear error."""
    shape = tuple(weight_shape)
    if len(shape) != 4 or any(isinstance(s, bool) or not isinstance(s, (int, torch.SymInt))
                              or (isinstance(s, int) and s < 0) for s in shape):
        raise ValueError(
            "weight_shape must be 4 non-negative integers (out_channels, "
            f"in_channels // groups, kernel_h, kernel_w); got {list(weight_shape)}"
        )
    return shape


def check_conv_input(x):
    if x.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W) for the conv2d op (the layer adds "
                         f"the batch axis of a 3-D input); got shape {tuple(x.shape)}")


def check_tensor(t, name, dtype=None, dtype_of="the sparse weight"):
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
    if t.is_nested:
        raise TypeError(f"{name} must be a dense (strided) tensor; got a nested tensor "
                        "(run the layer on each of its tensors: t.unbind())")
    if dtype is None:
        if t.dtype not in _SUPPORTED:
            raise TypeError(f"{name} must be float32 or float64 (bfloat16 with a float32 "
                            f"layer; float16 under torch.autocast); got {t.dtype}")
    elif t.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {t.dtype} but {dtype_of} has dtype {dtype}; "
            f"convert one of them (e.g. {name}.to({dtype}))"
        )


def check_activation(t, name, values_dtype):
    """check_tensor for an input or grad_output: the weight's dtype, or bfloat16
    with float32 values."""
    if (isinstance(t, torch.Tensor) and t.dtype == _LOW and values_dtype == torch.float32):
        check_tensor(t, name, _LOW)
    else:
        check_tensor(t, name, values_dtype)


def _bfloat16_numpy_dtype():
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("bfloat16 tensors need the ml_dtypes package (pip install ml_dtypes, "
                          "or sparseprop[torch]): it gives NumPy the bfloat16 dtype the "
                          "kernels are called with") from None
    return np.dtype(ml_dtypes.bfloat16)


def _np(t):
    """A zero-copy NumPy view of a CPU tensor (any strides, autograd stripped);
    bfloat16 as an ml_dtypes.bfloat16 view of the same memory."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bfloat16_numpy_dtype())
    return t.numpy()


def _torch(a):
    """torch.from_numpy, for ml_dtypes.bfloat16 arrays too (zero-copy)."""
    if a.dtype.kind == "V" and a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _csr(values, indptr, indices, shape, for_backward=False):
    tagged = _structure.CACHE.get(
        "csr", indptr, indices, shape,
        lambda p, i: _structure.build_csr(p, i, shape, np.float32), for_backward,
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

def _linear_impl(x, values, indptr, indices, in_features, bias, n_threads):
    _check_structure_args(values, indptr, indices)
    check_activation(x, "input", values.dtype)
    W = _csr(values, indptr, indices, (indptr.shape[0] - 1, in_features))
    b = None
    if bias is not None:
        check_tensor(bias, "bias", values.dtype)
        b = _np(bias)
    Y = sparseprop.linear_forward(_np(x), W, b, n_threads=_resolve_threads(n_threads))
    return _torch(Y)


@torch.library.custom_op("sparseprop::linear", mutates_args=())
def linear(x: torch.Tensor, values: torch.Tensor, indptr: torch.Tensor,
           indices: torch.Tensor, in_features: int, bias: torch.Tensor | None,
           n_threads: int) -> torch.Tensor:
    """``F.linear(x, W, bias)`` for the sparse W given by (values, indptr, indices)."""
    return _linear_impl(x, values, indptr, indices, in_features, bias, n_threads)


@linear.register_fake
def _linear_fake(x, values, indptr, indices, in_features, bias, n_threads):
    check_same_device(x, values=values, indptr=indptr, indices=indices, bias=bias)
    return x.new_empty((*x.shape[:-1], indptr.shape[0] - 1))


def _linear_backward_impl(x, values, indptr, indices, in_features, grad_output,
                          need_input_grad, n_threads):
    _check_structure_args(values, indptr, indices)
    check_activation(x, "input", values.dtype)
    check_tensor(grad_output, "grad_output", x.dtype, "the input")
    W = _csr(values, indptr, indices, (indptr.shape[0] - 1, in_features), for_backward=True)
    dX, dW = sparseprop.linear_backward(_np(x), W, _np(grad_output), bool(need_input_grad),
                                        n_threads=_resolve_threads(n_threads))
    gx = _torch(dX) if dX is not None else x.new_empty((0,))
    return gx, torch.from_numpy(dW)


@torch.library.custom_op("sparseprop::linear_backward", mutates_args=())
def linear_backward(x: torch.Tensor, values: torch.Tensor, indptr: torch.Tensor,
                    indices: torch.Tensor, in_features: int, grad_output: torch.Tensor,
                    need_input_grad: bool, n_threads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_input, grad_values) of :func:`linear`; grad_input is empty (0,) when
    ``need_input_grad`` is False (its kernel is skipped)."""
    return _linear_backward_impl(x, values, indptr, indices, in_features, grad_output,
                                 need_input_grad, n_threads)


@linear_backward.register_fake
def _linear_backward_fake(x, values, indptr, indices, in_features, grad_output,
                          need_input_grad, n_threads):
    check_same_device(x, values=values, indptr=indptr, indices=indices,
                      grad_output=grad_output)
    gx = x.new_empty(x.shape) if need_input_grad else x.new_empty((0,))
    return gx, values.new_empty(values.shape)


def _save(ctx, *tensors):
    """``ctx.save_for_backward``, except for inference tensors (a layer built under
    ``torch.inference_mode()``), which autograd refuses to save: they are kept on
    ctx as they are, with the structure cache's count of writes into them behind
    torch's back standing in for the version counter they lack."""
    ctx.inference = tuple(t if t is not None and t.is_inference() else None for t in tensors)
    ctx.rewrites = tuple(None if t is None else _structure.CACHE.rewrites(t)
                         for t in ctx.inference)
    ctx.save_for_backward(*(None if inf is not None else t
                            for t, inf in zip(tensors, ctx.inference, strict=True)))


def _saved(ctx):
    for t, n in zip(ctx.inference, ctx.rewrites, strict=True):
        if t is not None and _structure.CACHE.rewrites(t) != n:
            raise _structure.StructureChangedError()
    return tuple(inf if inf is not None else t
                 for t, inf in zip(ctx.saved_tensors, ctx.inference, strict=True))


def _linear_setup(ctx, inputs, output):
    x, values, indptr, indices, in_features, bias, n_threads = inputs
    _save(ctx, x, values, indptr, indices)
    ctx.in_features = in_features
    ctx.n_threads = n_threads
    ctx.has_bias = bias is not None
    ctx.bias_dtype = values.dtype  # a bfloat16 grad is summed in the bias's float32


def _linear_grads(ctx, grad, backward):
    """The gradients of (x, values, ..., bias, ...); ``backward`` is the
    linear_backward op or, on the eager path, its implementation."""
    x, values, indptr, indices = _saved(ctx)
    need_x, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx = gv = gb = None
    if need_x or need_v:
        gx, gv = backward(x, values, indptr, indices, ctx.in_features, grad, need_x,
                          ctx.n_threads)
        gx = gx if need_x else None
        gv = gv if need_v else None
    if ctx.has_bias and ctx.needs_input_grad[5]:
        # flatten, not reshape(-1, n): a layer with 0 out_features has n = 0
        gb = (grad.flatten(0, -2).sum(0, dtype=ctx.bias_dtype) if grad.dim() > 1
              else grad.to(ctx.bias_dtype))
    return gx, gv, None, None, None, gb, None


def _linear_grad(ctx, grad):
    return _linear_grads(ctx, grad, linear_backward)


linear.register_autograd(_linear_grad, setup_context=_linear_setup)


# ---------------------------------------------------------------- conv2d

def conv_output_hw(h, w, kh, kw, stride, padding, dilation):
    """Output height and width of a 2-D convolution (PyTorch's formula)."""
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def _build_conv(indptr_np, indices_np, weight_shape, dtype):
    """The SparseConvWeight of a layer's CSR buffers, validated once (as CSR).

    Both layouts keep the nonzeros of the dense weight in C order, so values
    line up one to one.  O(nnz + out*in/groups): no dense array is formed.
    """
    conv_weight = sparseprop.SparseConvWeight.from_csr(
        np.zeros(indices_np.shape[0], dtype=dtype), indices_np, indptr_np, weight_shape)
    return _structure._Tagged(conv_weight, (conv_weight.och, np.array(indices_np)))


def _conv_weight(values, indptr, indices, weight_shape, for_backward=False):
    shape = check_weight_shape(weight_shape)
    tagged = _structure.CACHE.get(
        "conv2d", indptr, indices, shape,
        lambda p, i: _build_conv(p, i, shape, np.float32), for_backward,
    )
    return tagged.weight.with_data(_np(values.contiguous()))


def _conv2d_impl(x, values, indptr, indices, weight_shape, bias, stride, padding, dilation,
                 groups, algorithm, n_threads):
    _check_structure_args(values, indptr, indices)
    check_activation(x, "input", values.dtype)
    check_conv_input(x)
    W = _conv_weight(values, indptr, indices, weight_shape)
    b = None
    if bias is not None:
        check_tensor(bias, "bias", values.dtype)
        b = _np(bias)
    Y = sparseprop.conv2d_forward(_np(x), W, b, stride=tuple(stride), padding=tuple(padding),
                                  dilation=tuple(dilation), groups=groups,
                                  algorithm=algorithm, n_threads=_resolve_threads(n_threads))
    return _torch(np.ascontiguousarray(Y))


@torch.library.custom_op("sparseprop::conv2d", mutates_args=())
def conv2d(x: torch.Tensor, values: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor,
           weight_shape: list[int], bias: torch.Tensor | None, stride: list[int],
           padding: list[int], dilation: list[int], groups: int, algorithm: str,
           n_threads: int) -> torch.Tensor:
    """``F.conv2d(x, W, bias, stride, padding, dilation, groups)`` for the sparse W."""
    return _conv2d_impl(x, values, indptr, indices, weight_shape, bias, stride, padding,
                        dilation, groups, algorithm, n_threads)


@conv2d.register_fake
def _conv2d_fake(x, values, indptr, indices, weight_shape, bias, stride, padding, dilation,
                 groups, algorithm, n_threads):
    check_same_device(x, values=values, indptr=indptr, indices=indices, bias=bias)
    check_conv_input(x)
    check_weight_shape(weight_shape)
    oh, ow = conv_output_hw(x.shape[2], x.shape[3], weight_shape[2], weight_shape[3],
                            stride, padding, dilation)
    return x.new_empty((x.shape[0], weight_shape[0], oh, ow))


def _conv2d_backward_impl(x, values, indptr, indices, weight_shape, grad_output, stride,
                          padding, dilation, groups, need_input_grad, algorithm, n_threads):
    _check_structure_args(values, indptr, indices)
    check_activation(x, "input", values.dtype)
    check_tensor(grad_output, "grad_output", x.dtype, "the input")
    check_conv_input(x)
    W = _conv_weight(values, indptr, indices, weight_shape, for_backward=True)
    dX, dW = sparseprop.conv2d_backward(
        _np(x), W, _np(grad_output), stride=tuple(stride), padding=tuple(padding),
        dilation=tuple(dilation), groups=groups, need_input_grad=bool(need_input_grad),
        algorithm=algorithm, n_threads=_resolve_threads(n_threads))
    gx = _torch(np.ascontiguousarray(dX)) if dX is not None else x.new_empty((0,))
    return gx, torch.from_numpy(np.ascontiguousarray(dW))


@torch.library.custom_op("sparseprop::conv2d_backward", mutates_args=())
def conv2d_backward(x: torch.Tensor, values: torch.Tensor, indptr: torch.Tensor,
                    indices: torch.Tensor, weight_shape: list[int], grad_output: torch.Tensor,
                    stride: list[int], padding: list[int], dilation: list[int], groups: int,
                    need_input_grad: bool, algorithm: str,
                    n_threads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_input, grad_values) of :func:`conv2d`; grad_input is empty (0,) when
    ``need_input_grad`` is False (its kernel is skipped)."""
    return _conv2d_backward_impl(x, values, indptr, indices, weight_shape, grad_output, stride,
                                 padding, dilation, groups, need_input_grad, algorithm,
                                 n_threads)


@conv2d_backward.register_fake
def _conv2d_backward_fake(x, values, indptr, indices, weight_shape, grad_output, stride,
                          padding, dilation, groups, need_input_grad, algorithm, n_threads):
    check_same_device(x, values=values, indptr=indptr, indices=indices,
                      grad_output=grad_output)
    check_conv_input(x)
    gx = x.new_empty(x.shape) if need_input_grad else x.new_empty((0,))
    return gx, values.new_empty(values.shape)


def _conv2d_setup(ctx, inputs, output):
    (x, values, indptr, indices, weight_shape, bias, stride, padding, dilation, groups,
     algorithm, n_threads) = inputs
    _save(ctx, x, values, indptr, indices)
    ctx.args = (weight_shape, stride, padding, dilation, groups, algorithm, n_threads)
    ctx.has_bias = bias is not None
    ctx.bias_dtype = values.dtype


def _conv2d_grads(ctx, grad, backward):
    """The gradients of conv2d's arguments; ``backward`` is the conv2d_backward
    op or, on the eager path, its implementation."""
    x, values, indptr, indices = _saved(ctx)
    weight_shape, stride, padding, dilation, groups, algorithm, n_threads = ctx.args
    need_x, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx = gv = gb = None
    if need_x or need_v:
        gx, gv = backward(x, values, indptr, indices, weight_shape, grad, stride, padding,
                          dilation, groups, need_x, algorithm, n_threads)
        gx = gx if need_x else None
        gv = gv if need_v else None
    if ctx.has_bias and ctx.needs_input_grad[5]:
        gb = grad.sum((0, 2, 3), dtype=ctx.bias_dtype)
    return gx, gv, None, None, None, gb, None, None, None, None, None, None


def _conv2d_grad(ctx, grad):
    return _conv2d_grads(ctx, grad, conv2d_backward)


conv2d.register_autograd(_conv2d_grad, setup_context=_conv2d_setup)


# ---------------------------------------------------------------- eager fast path

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def eager_path_ok(*tensors):
    """True when the layers may call :class:`EagerLinear` / :class:`EagerConv2d`:
    plain eager execution on plain tensors (see the module doc).  Anything
    else - compiling, tracing, torch.func transforms, an active dispatch mode,
    tensor subclasses - goes through the custom ops."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._are_functorch_transforms_active()
            or torch._C._len_torch_dispatch_stack() > 0):
        return False
    return all(t is None or type(t) in _PLAIN_TENSORS for t in tensors)


def grad_wanted(*tensors):
    """True when a call records autograd history: grad mode is on (it is off under
    ``torch.no_grad()`` and ``torch.inference_mode()``) and a tensor requires grad.

    When False, the layers call the implementation functions directly: no
    autograd.Function, nothing saved for a backward that cannot happen, and
    none of the backward's plans built (they are built on a backward's first
    call, see ``sparseprop._linear_plan`` / ``_conv_plan``)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class EagerLinear(torch.autograd.Function):
    """:func:`linear` with its gradient, as a plain autograd Function."""

    # forward(ctx, ...) rather than a separate setup_context: with the latter
    # Function.apply binds the arguments with inspect.signature on every call
    # (docs/tuning.md); it only matters to torch.func, which never takes this path
    @staticmethod
    def forward(ctx, *inputs):
        y = _linear_impl(*inputs)
        _linear_setup(ctx, inputs, y)
        return y

    @staticmethod
    @once_differentiable  # like the backward op: a second derivative is an error
    def backward(ctx, grad):
        return _linear_grads(ctx, grad, _linear_backward_impl)


class EagerConv2d(torch.autograd.Function):
    """:func:`conv2d` with its gradient, as a plain autograd Function."""

    @staticmethod
    def forward(ctx, *inputs):  # see EagerLinear.forward
        y = _conv2d_impl(*inputs)
        _conv2d_setup(ctx, inputs, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return _conv2d_grads(ctx, grad, _conv2d_backward_impl)
