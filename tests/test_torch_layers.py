"""SparseLinear / SparseConv2d against the dense torch modules on the same masked weights."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.utils.prune as prune  # noqa: E402
from torch import nn  # noqa: E402

import sparseprop  # noqa: E402
import sparseprop.torch as spt  # noqa: E402
from sparseprop.torch import _ops, _structure  # noqa: E402


def masked_linear(gen, n_in, n_out, sparsity, bias=True, dtype=torch.float32):
    lin = nn.Linear(n_in, n_out, bias=bias, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=dtype))
        lin.weight[torch.rand(lin.weight.shape, generator=gen) < sparsity] = 0
        if bias:
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen, dtype=dtype))
    return lin


def masked_conv(gen, sparsity, *args, dtype=torch.float32, **kwargs):
    conv = nn.Conv2d(*args, dtype=dtype, **kwargs)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=dtype))
        conv.weight[torch.rand(conv.weight.shape, generator=gen) < sparsity] = 0
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen, dtype=dtype))
    return conv


def tol(k):
    return dict(rtol=2e-5, atol=2e-5 * math.sqrt(max(k, 1)))


def compare_layer(dense, sparse, x, k_fwd, k_bwd, need_x=True):
    """Forward, grad_input, grad_weight at nonzeros and grad_bias of sparse vs dense."""
    xd = x.detach().clone().requires_grad_(need_x)
    xs = x.detach().clone().requires_grad_(need_x)
    yd, ys = dense(xd), sparse(xs)
    assert ys.shape == yd.shape
    torch.testing.assert_close(ys, yd, **tol(k_fwd))
    g = torch.randn(yd.shape, generator=torch.Generator().manual_seed(1), dtype=yd.dtype)
    yd.backward(g)
    ys.backward(g)
    if need_x:
        torch.testing.assert_close(xs.grad, xd.grad, **tol(k_bwd))
    else:
        assert xs.grad is None
    mask = spt.dense_weight_of(dense)[1]
    torch.testing.assert_close(sparse.values.grad, dense.weight.grad[mask], **tol(k_bwd))
    if dense.bias is not None:
        torch.testing.assert_close(sparse.bias.grad, dense.bias.grad, **tol(k_bwd))


# ---------------------------------------------------------------- SparseLinear

@pytest.mark.parametrize("n_in,n_out,batch", [(37, 23, 5), (64, 16, 1), (17, 8, 0),
                                              (128, 96, 49)])
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
def test_linear_matches_dense(n_in, n_out, batch, sparsity):
    gen = torch.Generator().manual_seed(n_in * 1000 + n_out + int(sparsity * 10))
    dense = masked_linear(gen, n_in, n_out, sparsity)
    sparse = spt.SparseLinear.from_dense(dense)
    assert sparse.nnz == int((dense.weight != 0).sum())
    x = torch.randn(batch, n_in, generator=gen)
    compare_layer(dense, sparse, x, n_in, max(n_out, batch))


def test_linear_leading_dims_no_bias_and_first_layer():
    gen = torch.Generator().manual_seed(3)
    dense = masked_linear(gen, 40, 24, 0.8, bias=False)
    sparse = spt.SparseLinear.from_dense(dense)
    assert sparse.bias is None
    x = torch.randn(3, 4, 40, generator=gen)
    compare_layer(dense, sparse, x, 40, 24)
    compare_layer(dense, sparse, x, 40, 24, need_x=False)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_linear_non_contiguous_inputs(layout):
    gen = torch.Generator().manual_seed(4)
    dense = masked_linear(gen, 33, 20, 0.85)
    sparse = spt.SparseLinear.from_dense(dense)
    if layout == "transposed":
        x = torch.randn(33, 9, generator=gen).t()
    elif layout == "sliced":
        x = torch.randn(9, 70, generator=gen)[:, 3:69:2]
    else:
        x = torch.randn(1, 33, generator=gen).expand(9, 33)
    assert not x.is_contiguous()
    compare_layer(dense, sparse, x, 33, 20)


def test_linear_float64_gradcheck():
    gen = torch.Generator().manual_seed(5)
    dense = masked_linear(gen, 12, 7, 0.7, dtype=torch.float64)
    sparse = spt.SparseLinear.from_dense(dense)
    assert sparse.values.dtype == torch.float64
    x = torch.randn(4, 12, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(x, values, bias):
        return torch.ops.sparseprop.linear(x, values, sparse.indptr, sparse.indices, 12,
                                           bias, 1)
    assert torch.autograd.gradcheck(f, (x, sparse.values, sparse.bias))
    compare_layer(dense, sparse, x, 12, 7)


def test_linear_to_dense_round_trip_and_random_init():
    gen = torch.Generator().manual_seed(6)
    dense = masked_linear(gen, 30, 10, 0.9)
    back = spt.SparseLinear.from_dense(dense).to_dense()
    assert type(back) is nn.Linear
    assert torch.equal(back.weight, dense.weight) and torch.equal(back.bias, dense.bias)
    layer = spt.SparseLinear(300, 200, sparsity=0.9, generator=torch.Generator().manual_seed(0))
    assert 0.88 < layer.sparsity < 0.92
    assert layer.values.abs().max() <= 1 / math.sqrt(300)
    assert layer.dense_weight().shape == (200, 300)
    x = torch.randn(4, 300)
    torch.testing.assert_close(layer(x), layer.to_dense()(x), **tol(300))


def test_parameters_and_buffers():
    layer = spt.SparseLinear.from_dense(masked_linear(torch.Generator().manual_seed(7),
                                                      20, 10, 0.8))
    assert [n for n, _ in layer.named_parameters()] == ["values", "bias"]
    assert {n: b.dtype for n, b in layer.named_buffers()} == {"indptr": torch.int64,
                                                              "indices": torch.int32}
    W = sparseprop.CSRMatrix(layer.values.detach().numpy(), layer.indices.numpy(),
                             layer.indptr.numpy(), (10, 20))
    assert np.array_equal(W.to_dense(), layer.to_dense().weight.detach().numpy())


# ---------------------------------------------------------------- pruning interop

def test_from_torch_nn_utils_prune():
    gen = torch.Generator().manual_seed(8)
    dense = masked_linear(gen, 50, 30, 0.0)
    prune.l1_unstructured(dense, "weight", amount=0.85)
    with torch.no_grad():  # weight_orig changes after pruning: the mask still rules
        dense.weight_orig.add_(1.0)
    sparse = spt.SparseLinear.from_dense(dense)
    assert sparse.nnz == int(dense.weight_mask.sum())
    ref = nn.Linear(50, 30)
    with torch.no_grad():
        ref.weight.copy_(dense.weight_orig * dense.weight_mask)
        ref.bias.copy_(dense.bias)
    compare_layer(ref, sparse, torch.randn(6, 50, generator=gen), 50, 30)


def test_mask_keeps_explicit_zeros_as_slots():
    dense = nn.Linear(8, 4)
    mask = torch.zeros(4, 8)
    mask[:, :3] = 1
    prune.custom_from_mask(dense, "weight", mask)
    with torch.no_grad():
        dense.weight_orig[0, 0] = 0.0  # inside the mask, zero valued: still a slot
    assert spt.SparseLinear.from_dense(dense).nnz == 12


@pytest.mark.parametrize("squash", [False, True])
def test_from_torch_ao_sparsifier(squash):
    from torch.ao.pruning import WeightNormSparsifier

    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(32, 16))
    sparsifier = WeightNormSparsifier(sparsity_level=0.75, sparse_block_shape=(1, 1),
                                      zeros_per_block=1)
    sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    mask = model[0].parametrizations.weight[0].mask.clone()
    effective = (model[0].weight * mask).detach().clone()
    if squash:
        sparsifier.squash_mask()
    sparse = spt.SparseLinear.from_dense(model[0])
    assert sparse.nnz == int(mask.sum()) == 128
    assert torch.equal(sparse.to_dense().weight, effective)


# ---------------------------------------------------------------- errors and threads

def test_clear_errors():
    layer = spt.SparseLinear.from_dense(masked_linear(torch.Generator().manual_seed(10),
                                                      8, 4, 0.5))
    with pytest.raises(TypeError, match="float64.*float32"):
        layer(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        layer(torch.randn(2, 8).half())
    with pytest.raises(TypeError, match="float32 or float64"):
        layer(torch.ones(2, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="CPU only"):
        layer(torch.randn(2, 8, device="meta"))
    with pytest.raises(ValueError, match=r"expects \(\.\.\., 8\)"):
        layer(torch.randn(2, 9))
    with pytest.raises(TypeError, match="nn.Linear"):
        spt.SparseLinear.from_dense(nn.Conv2d(3, 3, 3))
    with pytest.raises(TypeError, match="float32 or float64"):
        spt.SparseLinear(4, 4, dtype=torch.float16)


def test_bad_structure_in_op_is_a_clear_error():
    values = torch.ones(2)
    indptr = torch.tensor([0, 2], dtype=torch.int64)
    indices = torch.tensor([1, 1], dtype=torch.int32)  # duplicate
    with pytest.raises(ValueError, match="duplicates"):
        torch.ops.sparseprop.linear(torch.ones(1, 3), values, indptr, indices, 3, None, 1)
    with pytest.raises(ValueError, match="out of range"):
        torch.ops.sparseprop.linear(torch.ones(1, 3), values, indptr,
                                    torch.tensor([0, 5], dtype=torch.int32), 3, None, 1)
    with pytest.raises(TypeError, match="int32"):
        torch.ops.sparseprop.linear(torch.ones(1, 3), values, indptr,
                                    torch.tensor([0, 1]), 3, None, 1)


def spy(monkeypatch, name):
    calls = []
    real = getattr(sparseprop, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)
    monkeypatch.setattr(sparseprop, name, wrapper)
    return calls


def test_threads_follow_torch_and_input_grad_is_skipped(monkeypatch):
    fwd = spy(monkeypatch, "linear_forward")
    bwd = spy(monkeypatch, "linear_backward")
    layer = spt.SparseLinear.from_dense(masked_linear(torch.Generator().manual_seed(11),
                                                      16, 8, 0.5))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        layer(torch.randn(3, 16)).sum().backward()
        assert fwd[-1][1]["n_threads"] == 1 and bwd[-1][1]["n_threads"] == 1
        assert bwd[-1][0][3] is False  # need_input_grad: input does not require grad
        torch.set_num_threads(2)
        layer(torch.randn(3, 16, requires_grad=True)).sum().backward()
        assert fwd[-1][1]["n_threads"] == 2
        assert bwd[-1][0][3] is True
        layer.n_threads = 1
        layer(torch.randn(3, 16)).sum().backward()
        assert fwd[-1][1]["n_threads"] == 1
    finally:
        torch.set_num_threads(old)


def test_structure_is_validated_once(monkeypatch):
    layer = spt.SparseLinear.from_dense(masked_linear(torch.Generator().manual_seed(12),
                                                      24, 12, 0.7))
    builds = []
    real = _structure.build_csr
    monkeypatch.setattr(_structure, "build_csr",
                        lambda *a: builds.append(1) or real(*a))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(4):
        opt.zero_grad()
        layer(torch.randn(5, 24)).square().sum().backward()
        opt.step()
    assert len(builds) == 1  # 4 forwards + 4 backwards, one validation
    # an in-place write bumps _version: contents are compared, nothing rebuilt
    checks = _structure.CACHE.stats["content_checks"]
    layer.indices.add_(0)
    layer(torch.randn(2, 24))
    assert _structure.CACHE.stats["content_checks"] == checks + 1 and len(builds) == 1
    # a real change of the structure in place is seen (and validated)
    with torch.no_grad():
        layer.indices[:] = torch.arange(layer.nnz, dtype=torch.int32) % 24
        layer.indptr[:] = torch.arange(13) * 0
        layer.indptr[-1] = layer.nnz
    with pytest.raises(ValueError, match="sorted|duplicates"):
        layer(torch.randn(2, 24))
    assert len(builds) == 2


# ---------------------------------------------------------------- SparseConv2d

CONV_CASES = [
    dict(in_channels=3, out_channels=8, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2)),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding="same", dilation=2, groups=2),
    dict(in_channels=6, out_channels=6, kernel_size=(2, 4), padding="same", groups=3,
         bias=False),
    dict(in_channels=3, out_channels=5, kernel_size=1, padding="valid", stride=2),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding=(1, 2),
         padding_mode="circular"),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("algorithm", ["auto", "batch_last", "over_width"])
def test_conv_matches_dense(case, algorithm):
    gen = torch.Generator().manual_seed(100 + case)
    dense = masked_conv(gen, 0.7, **CONV_CASES[case])
    sparse = spt.SparseConv2d.from_dense(dense, algorithm=algorithm)
    x = torch.randn(2, dense.in_channels, 9, 8, generator=gen)
    k = math.prod(dense.weight.shape[1:])
    compare_layer(dense, sparse, x, k, 4 * k * 72)
    compare_layer(dense, sparse, x, k, 4 * k * 72, need_x=False)


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "unbatched"])
def test_conv_input_layouts(layout):
    gen = torch.Generator().manual_seed(200)
    dense = masked_conv(gen, 0.8, 4, 8, 3, padding=1)
    sparse = spt.SparseConv2d.from_dense(dense)
    if layout == "channels_last":
        x = torch.randn(3, 4, 7, 7, generator=gen).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(3, 8, 7, 14, generator=gen)[:, ::2, :, ::2]
    else:
        x = torch.randn(4, 7, 7, generator=gen)
    compare_layer(dense, sparse, x, 36, 36 * 49 * 3)


@pytest.mark.parametrize("sparsity", [0.0, 1.0])
def test_conv_extreme_sparsity_and_float64(sparsity):
    gen = torch.Generator().manual_seed(300)
    dense = masked_conv(gen, sparsity, 3, 4, 3, padding=1, dtype=torch.float64)
    sparse = spt.SparseConv2d.from_dense(dense)
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    compare_layer(dense, sparse, x, 27, 27 * 50)
    if sparsity == 0.0:
        assert torch.autograd.gradcheck(
            lambda x, v, b: torch.ops.sparseprop.conv2d(
                x, v, sparse.indptr, sparse.indices, list(sparse.weight_shape), b, [1, 1],
                [1, 1], [1, 1], 1, "auto", 1),
            (x[:1, :, :4, :4].detach().requires_grad_(), sparse.values, sparse.bias))


def test_conv_from_pruned_and_to_dense():
    gen = torch.Generator().manual_seed(400)
    dense = masked_conv(gen, 0.0, 3, 6, (3, 5), stride=2, padding=(1, 2), dilation=(1, 2))
    prune.l1_unstructured(dense, "weight", amount=0.8)
    sparse = spt.SparseConv2d.from_dense(dense)
    back = sparse.to_dense()
    assert (back.stride, back.padding, back.dilation) == ((2, 2), (1, 2), (1, 2))
    assert torch.equal(back.weight, dense.weight_orig * dense.weight_mask)
    x = torch.randn(2, 3, 11, 12, generator=gen)
    compare_layer(back, sparse, x, 45, 45 * 100)


def test_conv_layer_builds_and_converts_without_the_kernels():
    # Construction, masks and dense conversion are plain torch: they work in
    # every build; only forward/backward need the conv kernels.
    gen = torch.Generator().manual_seed(500)
    dense = masked_conv(gen, 0.8, 4, 8, (3, 2), padding="same", groups=2)
    sparse = spt.SparseConv2d.from_dense(dense)
    assert sparse.weight_shape == (8, 2, 3, 2)
    assert sparse.nnz == int((dense.weight != 0).sum())
    back = sparse.to_dense()
    assert back.padding == "same" and back.groups == 2
    assert torch.equal(back.weight, dense.weight)


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_weight_built_from_the_index_buffers(case):
    # The op builds the SparseConvWeight from the CSR buffers in O(nnz); it must
    # be exactly what SparseConvWeight.from_dense makes of the dense weight.
    gen = torch.Generator().manual_seed(600 + case)
    dense = masked_conv(gen, 0.75, **CONV_CASES[case])
    layer = spt.SparseConv2d.from_dense(dense)
    built = _ops._conv_weight(layer.values, layer.indptr, layer.indices, layer.weight_shape)
    ref = sparseprop.SparseConvWeight.from_dense(dense.weight.detach().numpy())
    assert built.shape == ref.shape
    for attr in ("data", "och", "ich", "krow", "kcol"):
        assert np.array_equal(getattr(built, attr), getattr(ref, attr)), attr
