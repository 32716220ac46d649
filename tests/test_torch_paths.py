"""The layers' two routes to the kernels: the eager autograd Functions and the custom ops.

In plain eager mode the layers call ``_ops.EagerLinear`` / ``EagerConv2d``
(cheaper to dispatch); under dispatch modes and compilation they call
``torch.ops.sparseprop.*``.  Both must compute exactly the same thing.
"""
import pytest

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import sparseprop.torch as spt  # noqa: E402
from sparseprop.torch import _ops  # noqa: E402


def linear_layer(dtype=torch.float32):
    return spt.SparseLinear(13, 9, sparsity=0.6, dtype=dtype,
                            generator=torch.Generator().manual_seed(0))


def conv_layer(dtype=torch.float32):
    return spt.SparseConv2d(4, 6, 3, stride=2, padding=1, sparsity=0.6, dtype=dtype,
                            generator=torch.Generator().manual_seed(1))


def op_call(layer, x):
    """The layer's computation through the custom op, bypassing the eager path."""
    if isinstance(layer, spt.SparseLinear):
        return torch.ops.sparseprop.linear(x, layer.values, layer.indptr, layer.indices,
                                           layer.in_features, layer.bias, 1)
    return torch.ops.sparseprop.conv2d(x, layer.values, layer.indptr, layer.indices,
                                       list(layer.weight_shape), layer.bias,
                                       list(layer.stride), list(layer.padding),
                                       list(layer.dilation), layer.groups, layer.algorithm, 1)


def grads(layer, x, y, g):
    return torch.autograd.grad(y, [x, layer.values, layer.bias], g)


@pytest.mark.parametrize("make, shape", [(linear_layer, (3, 5, 13)),
                                         (conv_layer, (2, 4, 7, 6))])
def test_eager_path_is_taken_and_equals_the_op(make, shape):
    layer = make()
    layer.n_threads = 1
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2), requires_grad=True)
    y_eager = layer(x)
    y_op = op_call(layer, x)
    assert type(y_eager.grad_fn).__name__.startswith("Eager")
    assert not type(y_op.grad_fn).__name__.startswith("Eager")
    assert torch.equal(y_eager, y_op)
    g = torch.randn(y_op.shape, generator=torch.Generator().manual_seed(3))
    for a, b in zip(grads(layer, x, y_eager, g), grads(layer, x, y_op, g), strict=True):
        assert torch.equal(a, b)


def test_eager_functions_pass_gradcheck():
    lin = linear_layer(torch.float64)
    x = torch.randn(4, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, v, b: _ops.EagerLinear.apply(x, v, lin.indptr, lin.indices, 13, b, 1),
        (x, lin.values, lin.bias))
    conv = conv_layer(torch.float64)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, v, b: _ops.EagerConv2d.apply(
            x, v, conv.indptr, conv.indices, list(conv.weight_shape), b, [2, 2], [1, 1],
            [1, 1], 1, "auto", 1),
        (x, conv.values, conv.bias))


def test_input_grad_skipped_on_the_eager_path(monkeypatch):
    import sparseprop
    calls = []
    real = sparseprop.linear_backward
    monkeypatch.setattr(sparseprop, "linear_backward",
                        lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    layer = linear_layer()
    y = layer(torch.randn(2, 13))  # the input needs no gradient
    assert type(y.grad_fn).__name__.startswith("Eager")
    y.sum().backward()
    assert calls == [False] and layer.values.grad is not None


def test_dispatch_modes_see_the_op():
    layer = linear_layer()
    x = torch.randn(3, 13)
    assert _ops.eager_path_ok(x, layer.values)
    with FlopCounterMode(display=False):
        assert not _ops.eager_path_ok(x, layer.values)
        y = layer(x)
    assert not type(y.grad_fn).__name__.startswith("Eager")  # the op's autograd node
    assert torch.equal(y, layer(x))


@pytest.mark.parametrize("route", ["eager", "op"])
def test_second_derivatives_are_an_error_on_both_routes(route):
    layer = linear_layer()
    x = torch.randn(3, 13, requires_grad=True)
    y = layer(x) if route == "eager" else op_call(layer, x)
    gx, = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|no autograd formula"):
        gx.sum().backward()


@pytest.mark.parametrize("reentrant", [False, True])
def test_eager_route_under_checkpoint_and_inference_mode(reentrant):
    from torch.utils.checkpoint import checkpoint
    layer = linear_layer()
    dense = layer.to_dense()
    x = torch.randn(3, 13, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), dense(x))
    xs, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    checkpoint(lambda t: layer(t).relu(), xs, use_reentrant=reentrant).sum().backward()
    dense(xd).relu().sum().backward()
    torch.testing.assert_close(xs.grad, xd.grad)
    torch.testing.assert_close(layer.values.grad, dense.weight.grad[layer.mask()])
