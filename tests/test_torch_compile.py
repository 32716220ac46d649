"""The custom ops under torch.library.opcheck and torch.compile(fullgraph=True).

torch.compile is slow to start: the compile tests are few and small.
"""
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import sparseprop.torch as spt  # noqa: E402
from sparseprop.torch import _structure  # noqa: E402


def sparse_linear(n_in, n_out, sparsity=0.8, bias=True, seed=0, dtype=torch.float32):
    return spt.SparseLinear(n_in, n_out, bias=bias, sparsity=sparsity, dtype=dtype,
                            generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_grad", [True, False])
def test_opcheck_linear(bias, x_grad):
    layer = sparse_linear(19, 11, bias=bias)
    x = torch.randn(2, 3, 19, requires_grad=x_grad)
    torch.library.opcheck(torch.ops.sparseprop.linear.default,
                          (x, layer.values, layer.indptr, layer.indices, 19, layer.bias, 1))


@pytest.mark.parametrize("need_input_grad", [True, False])
def test_opcheck_linear_backward(need_input_grad):
    layer = sparse_linear(19, 11)
    x, g = torch.randn(5, 19), torch.randn(5, 11)
    torch.library.opcheck(torch.ops.sparseprop.linear_backward.default,
                          (x, layer.values.detach(), layer.indptr, layer.indices, 19, g,
                           need_input_grad, 0))


@pytest.mark.parametrize("x_grad", [True, False])
def test_opcheck_conv2d(x_grad):
    layer = spt.SparseConv2d(4, 6, (3, 2), stride=(2, 1), padding=1, groups=2, sparsity=0.6,
                             generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 4, 7, 6, requires_grad=x_grad)
    args = (x, layer.values, layer.indptr, layer.indices, list(layer.weight_shape), layer.bias,
            [2, 1], [1, 1], [1, 1], 2, "auto", 1)
    torch.library.opcheck(torch.ops.sparseprop.conv2d.default, args)
    y = torch.ops.sparseprop.conv2d(*args)
    torch.library.opcheck(torch.ops.sparseprop.conv2d_backward.default,
                          (x.detach(), layer.values.detach(), layer.indptr, layer.indices,
                           list(layer.weight_shape), torch.randn_like(y), [2, 1], [1, 1],
                           [1, 1], 2, x_grad, "auto", 1))


def run_steps(model, x, y, steps=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


def test_compile_fullgraph_mlp_matches_eager():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    eager = nn.Sequential(sparse_linear(24, 32, seed=1), nn.ReLU(), sparse_linear(32, 6, seed=2))
    import copy
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(16, 24, generator=gen)
    y = torch.randint(0, 6, (16,), generator=gen)
    builds = _structure.CACHE.stats["builds"]
    le = run_steps(eager, x, y, 3)
    lc = run_steps(compiled, x, y, 3)
    for a, b in zip(le, lc, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for pe, pc in zip(eager.parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(pc, pe, rtol=1e-5, atol=1e-6)
    # two layers in two models: four structures, each validated once for 6 steps
    assert _structure.CACHE.stats["builds"] - builds == 4


def test_compile_fullgraph_cnn_matches_eager():
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)

    def make():
        torch.manual_seed(1)
        return nn.Sequential(
            spt.SparseConv2d(3, 8, 3, padding=1, sparsity=0.7,
                             generator=torch.Generator().manual_seed(3)),
            nn.ReLU(),
            spt.SparseConv2d(8, 8, 3, stride=2, padding="valid", sparsity=0.7,
                             generator=torch.Generator().manual_seed(4)),
            nn.Flatten(), sparse_linear(8 * 3 * 3, 5, seed=5))
    eager, compiled_model = make(), make()
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    y = torch.randint(0, 5, (4,), generator=gen)
    for a, b in zip(run_steps(eager, x, y), run_steps(compiled, x, y), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
