"""torch.autocast and bfloat16 tensors through the sparse layers.

Under ``torch.autocast("cpu", dtype=...)`` a sparse layer must return what its
dense twin (nn.Linear / nn.Conv2d with the same weights) returns under the
same autocast - the dtype, and the values within that dtype's rounding - and
the gradients must reach float32 ``values``, ``bias`` and input as the dense
twin's reach its float32 parameters.  The sparse kernels keep float32 weights
(dense autocast rounds them to bfloat16), so the two agree to rounding, not
bit for bit.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes", reason="bfloat16 tensors need ml_dtypes (a test extra)")
from torch import nn  # noqa: E402

import sparseprop.torch as spt  # noqa: E402
from sparseprop.torch import _ops  # noqa: E402

# Unit roundoff of each autocast dtype (8 and 11 significant bits).
EPS = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
LOW = [torch.bfloat16, torch.float16]


def masked_(module, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.mul_(torch.rand(module.weight.shape, generator=g) >= sparsity)
    return module


def assert_close_low(actual, expect, scale, dtype, what):
    """Within a few roundings of ``dtype``, relative to ``scale`` (sum of |terms|)."""
    err = (actual.double() - expect.double()).abs()
    bound = 4 * EPS[dtype] * scale.double() + 1e-6
    assert bool((err <= bound).all()), f"{what}: max excess {float((err - bound).max())}"


def run(layer, x, g, dtype):
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
    (y.float() * g).sum().backward()
    return y, x.grad


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_autocast_matches_dense(dtype, bias):
    dense = masked_(nn.Linear(37, 17, bias=bias), 0.6, 0)
    sparse = spt.SparseLinear.from_dense(dense)
    x = torch.randn(3, 5, 37)
    g = torch.randn(3, 5, 17)
    yd, gxd = run(dense, x, g, dtype)
    ys, gxs = run(sparse, x, g, dtype)
    assert yd.dtype == ys.dtype == dtype
    assert gxs.dtype == gxd.dtype == torch.float32
    W = dense.weight.detach()
    assert_close_low(ys, yd, x.abs() @ W.abs().T + (dense.bias.abs() if bias else 0), dtype, "Y")
    assert_close_low(gxs, gxd, g.abs() @ W.abs(), dtype, "dX")
    assert sparse.values.grad.dtype == torch.float32
    mask = W != 0
    scale_w = (g.abs().reshape(-1, 17).T @ x.abs().reshape(-1, 37))[mask]
    assert_close_low(sparse.values.grad, dense.weight.grad[mask], scale_w, dtype, "dW")
    if bias:
        assert sparse.bias.grad.dtype == torch.float32
        assert_close_low(sparse.bias.grad, dense.bias.grad, g.abs().sum((0, 1)), dtype, "db")


@pytest.mark.parametrize("dtype", LOW)
def test_conv2d_autocast_matches_dense(dtype):
    dense = masked_(nn.Conv2d(4, 6, 3, stride=1, padding=1, groups=2), 0.5, 1)
    sparse = spt.SparseConv2d.from_dense(dense)
    x = torch.randn(2, 4, 7, 9)
    g = torch.randn(2, 6, 7, 9)
    yd, gxd = run(dense, x, g, dtype)
    ys, gxs = run(sparse, x, g, dtype)
    assert yd.dtype == ys.dtype == dtype
    assert gxs.dtype == gxd.dtype == torch.float32
    W = dense.weight.detach()
    scale_y = torch.nn.functional.conv2d(x.abs(), W.abs(), dense.bias.abs(), padding=1, groups=2)
    assert_close_low(ys, yd, scale_y, dtype, "Y")
    scale_x = torch.nn.grad.conv2d_input(x.shape, W.abs(), g.abs(), padding=1, groups=2)
    assert_close_low(gxs, gxd, scale_x, dtype, "dX")
    scale_w = torch.nn.grad.conv2d_weight(x.abs(), W.shape, g.abs(), padding=1, groups=2)
    mask = W != 0
    assert sparse.values.grad.dtype == torch.float32
    assert_close_low(sparse.values.grad, dense.weight.grad[mask], scale_w[mask], dtype, "dW")
    assert_close_low(sparse.bias.grad, dense.bias.grad, g.abs().sum((0, 2, 3)), dtype, "db")


def test_float64_layers_ignore_autocast():
    # autocast leaves float64 alone, for dense layers and sparse ones
    dense = masked_(nn.Linear(8, 3, dtype=torch.float64), 0.5, 2)
    sparse = spt.SparseLinear.from_dense(dense)
    x = torch.randn(4, 8, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dense(x).dtype == sparse(x).dtype == torch.float64


def test_bfloat16_input_without_autocast():
    # a bfloat16 input to a float32 layer runs the bfloat16 kernels: as under autocast
    sparse = spt.SparseLinear.from_dense(masked_(nn.Linear(21, 9), 0.5, 3))
    x = torch.randn(6, 21).bfloat16()
    y = sparse(x)
    assert y.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = sparse(x.float())
    assert torch.equal(y.view(torch.int16), y_auto.view(torch.int16))
    with pytest.raises(TypeError, match="input must be float32 or float64.*got torch.float16"):
        sparse(x.half())


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_bfloat16_input_runs_the_bf16_kernels(channels_last):
    # bfloat16 kernels compute what the float32 ones compute on the widened
    # input: the output and the input gradient are those rounded, bit for bit,
    # and the gradient of the float32 values is the float32 one
    conv = spt.SparseConv2d(4, 6, 3, padding=1, sparsity=0.5,
                            generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 4, 7, 16).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 6, 7, 16).bfloat16()
    grads = []
    for xin, gin in ((x, g), (x.float(), g.float())):
        xin = xin.detach().requires_grad_()
        conv.zero_grad()
        y = conv(xin)
        assert y.dtype == xin.dtype
        y.backward(gin)
        assert xin.grad.dtype == xin.dtype
        grads.append((y.detach(), xin.grad, conv.values.grad.clone()))
    (yb, gxb, gvb), (yf, gxf, gvf) = grads
    assert torch.equal(yb.view(torch.int16), yf.bfloat16().view(torch.int16))
    assert torch.equal(gxb.view(torch.int16), gxf.bfloat16().view(torch.int16))
    assert gvb.dtype == torch.float32 and torch.equal(gvb, gvf)


def test_bfloat16_crosses_to_numpy_without_copies():
    t = torch.randn(6, 10).bfloat16()
    for view in (t, t[:, 1:8], t.T, t[::2]):
        a = _ops._np(view)
        assert a.dtype.name == "bfloat16" and a.shape == tuple(view.shape)
        assert a.ctypes.data == view.data_ptr()
        assert a.strides == tuple(s * 2 for s in view.stride())
        np.testing.assert_array_equal(a.astype(np.float32), view.float().numpy())
    back = _ops._torch(_ops._np(t))
    assert back.dtype == torch.bfloat16 and back.data_ptr() == t.data_ptr()


def test_opcheck_bfloat16():
    layer = spt.SparseLinear(19, 11, sparsity=0.7, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 19).bfloat16().requires_grad_()
    torch.library.opcheck(torch.ops.sparseprop.linear.default,
                          (x, layer.values, layer.indptr, layer.indices, 19, layer.bias, 1))
    torch.library.opcheck(torch.ops.sparseprop.linear_backward.default,
                          (x.detach(), layer.values.detach(), layer.indptr, layer.indices, 19,
                           torch.randn(2, 3, 11).bfloat16(), True, 1))
    conv = spt.SparseConv2d(4, 6, 3, padding=1, sparsity=0.5,
                            generator=torch.Generator().manual_seed(0))
    xc = torch.randn(2, 4, 5, 5).bfloat16().requires_grad_()
    torch.library.opcheck(torch.ops.sparseprop.conv2d.default,
                          (xc, conv.values, conv.indptr, conv.indices, list(conv.weight_shape),
                           conv.bias, [1, 1], [1, 1], [1, 1], 1, "auto", 1))


@pytest.mark.parametrize("dtype", LOW)
def test_compile_fullgraph_under_autocast(dtype):
    torch.manual_seed(0)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(
            spt.SparseConv2d(3, 4, 3, padding=1, sparsity=0.5),
            nn.ReLU(), nn.Flatten(),
            spt.SparseLinear(4 * 6 * 6, 5, sparsity=0.8))

    eager, compiled_model = model(), model()
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(2, 3, 6, 6)
    outs = []
    for m, net in ((eager, eager), (compiled_model, compiled)):
        with torch.autocast("cpu", dtype=dtype):
            y = net(x)
        y.float().square().sum().backward()
        outs.append((y, [p.grad for p in m.parameters() if p.requires_grad]))
    (ye, ge), (yc, gc) = outs
    assert ye.dtype == yc.dtype == dtype
    torch.testing.assert_close(yc, ye, rtol=4 * EPS[dtype], atol=1e-3)
    assert len(ge) == len(gc) == 4
    for a, b in zip(gc, ge, strict=True):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=8 * EPS[dtype], atol=1e-2)
