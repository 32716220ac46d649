"""Issue 17, target 1: sparse layers under torch.inference_mode() and torch.no_grad().

Every way to get a sparse layer - the constructors, ``from_dense``,
``sparsify`` (with and without autotuning), ``load_state_dict`` - works
inside both contexts and matches its dense twin; and a forward without
gradients does no backward-only work: nothing is saved for a backward, and
the backward's kernel plans are not built.
"""
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import sparseprop.torch as spt  # noqa: E402
from sparseprop.torch import _ops, _structure  # noqa: E402

CONTEXTS = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def pruned(module, sparsity=0.8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight[torch.rand(module.weight.shape, generator=gen) < sparsity] = 0
    return module


def mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    pruned(m[0]), pruned(m[2], seed=1)
    return m


def cnn():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2))
    pruned(m[0]), pruned(m[2], seed=1)
    return m


X = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
XC = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(2))


def _ctor_linear():
    layer = spt.SparseLinear(16, 12, sparsity=0.7, generator=torch.Generator().manual_seed(0))
    return layer, layer.to_dense(), X


def _ctor_conv():
    layer = spt.SparseConv2d(3, 4, 3, padding=1, sparsity=0.7,
                             generator=torch.Generator().manual_seed(0))
    return layer, layer.to_dense(), XC


def _from_dense_linear():
    dense = pruned(nn.Linear(16, 12))
    return spt.SparseLinear.from_dense(dense), dense, X


def _from_dense_conv():
    dense = pruned(nn.Conv2d(3, 6, 3, stride=2, padding=1))
    return spt.SparseConv2d.from_dense(dense), dense, XC


def _sparsify_untimed():
    dense = mlp()
    return spt.sparsify(dense, autotune=False, min_sparsity=0.5)[0], dense, X


def _load_into_dense_architecture():
    dense = mlp()
    sd = spt.sparsify(dense, autotune=False, min_sparsity=0.5)[0].state_dict()
    model = mlp()
    with torch.no_grad():  # other weights, so that a load that does nothing fails
        for p in model.parameters():
            p.add_(1.0)
    spt.load_state_dict(model, sd)
    assert isinstance(model[0], spt.SparseLinear)
    return model, dense, X


def _load_other_nnz_into_sparse():
    dense = cnn()
    sd = spt.sparsify(dense, autotune=False, min_sparsity=0.5)[0].state_dict()
    other = cnn()
    pruned(other[0], 0.95), pruned(other[2], 0.95, seed=4)
    model = spt.sparsify(other, autotune=False, min_sparsity=0.5)[0]
    assert model[0].nnz != sd["0.indices"].numel()
    model.load_state_dict(sd)
    return model, dense, XC


def _load_dense_state_into_sparse():
    dense = mlp()
    model = spt.sparsify(mlp(), autotune=False, min_sparsity=0.5)[0]
    with torch.no_grad():
        for p in dense.parameters():
            p.mul_(0.5)
    model.load_state_dict(dense.state_dict())
    return model, dense, X


BUILDS = {f.__name__.lstrip("_"): f for f in (
    _ctor_linear, _ctor_conv, _from_dense_linear, _from_dense_conv, _sparsify_untimed,
    _load_into_dense_architecture, _load_other_nnz_into_sparse, _load_dense_state_into_sparse)}


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("build", BUILDS)
def test_build_and_call_inside_context(context, build):
    with CONTEXTS[context]():
        sparse, dense, x = BUILDS[build]()
        y = sparse(x)
        close(y, dense(x))
        assert y.grad_fn is None and not y.requires_grad
    # and the sparse layers built inside still work outside (a dense module built
    # under inference_mode does not: torch refuses to save its inference tensors)
    with torch.no_grad():
        ref = dense(x)
    close(sparse(x), ref)


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("geometry", [dict(stride=2, padding=1), dict(groups=3, padding=(1, 2)),
                                      dict(dilation=2, padding="same")])
def test_conv_geometries_inside_context(context, geometry):
    dense = pruned(nn.Conv2d(3, 6, 3, **geometry))
    with CONTEXTS[context]():
        sparse = spt.SparseConv2d.from_dense(dense)
        close(sparse(XC), dense(XC))


@pytest.mark.parametrize("context", CONTEXTS)
def test_sparsify_autotune_inside_context_times_the_forward(context, tmp_path):
    dense = cnn()
    with CONTEXTS[context]():
        model, report = spt.sparsify(dense, XC, min_sparsity=0.5, cache_dir=tmp_path,
                                     repeats=1, warmup=0)
        close(model(XC), dense(XC))
    assert report.timed == "forward" and "timed=forward" in str(report)
    assert all(d.dense_ms is not None for d in report.layers)
    # a tuning run with gradients measures again (another cache key)
    n_files = len(list(tmp_path.glob("*.json")))
    _, report2 = spt.sparsify(dense, XC, min_sparsity=0.5, cache_dir=tmp_path, repeats=1,
                              warmup=0)
    assert report2.timed == "forward+backward"
    assert not any(d.cached for d in report2.layers)
    assert len(list(tmp_path.glob("*.json"))) == 2 * n_files


# ---------------------------------------------------------------- no backward-only work

@pytest.fixture
def save_calls(monkeypatch):
    """Every call of the ops' ``_save`` (what both autograd routes save for backward)."""
    calls = []
    real = _ops._save

    def spy(ctx, *tensors):
        calls.append(len(tensors))
        return real(ctx, *tensors)
    monkeypatch.setattr(_ops, "_save", spy)
    return calls


def _layer(kind):
    gen = torch.Generator().manual_seed(3)
    if kind == "linear":
        return spt.SparseLinear(16, 12, sparsity=0.7, generator=gen), X
    return spt.SparseConv2d(3, 4, 3, padding=1, sparsity=0.7, generator=gen), XC


def _op_call(layer, x):
    """The custom-op route (what torch.compile / torch.export take)."""
    if isinstance(layer, spt.SparseLinear):
        return torch.ops.sparseprop.linear(x, layer.values, layer.indptr, layer.indices,
                                           layer.in_features, layer.bias, 0)
    return torch.ops.sparseprop.conv2d(x, layer.values, layer.indptr, layer.indices,
                                       list(layer.weight_shape), layer.bias, [1, 1], [1, 1],
                                       [1, 1], 1, "auto", 0)


@pytest.mark.parametrize("route", ["layer", "op"])
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@pytest.mark.parametrize("context", CONTEXTS)
def test_nothing_saved_for_backward_without_grad(context, kind, route, save_calls):
    layer, x = _layer(kind)
    call = layer if route == "layer" else (lambda t: _op_call(layer, t))
    with CONTEXTS[context]():
        call(x)
    assert save_calls == []
    with torch.no_grad():  # even with an input that requires grad
        call(x.clone().requires_grad_())
    assert save_calls == []
    call(x)  # positive control: with gradients the values are saved
    assert len(save_calls) == 1


def _cached_weight():
    (entry,) = _structure.CACHE._entries.values()
    return entry.matrix.weight


@pytest.mark.parametrize("context", CONTEXTS)
def test_linear_backward_plan_is_built_lazily(context):
    _structure.CACHE.clear()
    layer, x = _layer("linear")
    with CONTEXTS[context]():
        layer(x)
    W = _cached_weight()
    assert "linear_backward" not in W._cache and "transposed" not in W._cache
    assert any(k[0] == "linear_forward" for k in W._cache if isinstance(k, tuple))
    layer(x.clone().requires_grad_()).sum().backward()  # the backward builds it
    assert "linear_backward" in _cached_weight()._cache


@pytest.mark.parametrize("context", CONTEXTS)
def test_conv_backward_lists_are_built_lazily(context):
    _structure.CACHE.clear()
    layer, x = _layer("conv2d")
    with CONTEXTS[context]():
        layer(x)
    plans = list(_cached_weight()._cache["conv2d"].values())
    assert plans and all(p.lists is None for p in plans)
    layer(x.clone().requires_grad_()).sum().backward()
    assert any(p.lists is not None for p in _cached_weight()._cache["conv2d"].values())


def test_converted_layers_keep_the_train_or_eval_mode():
    """A model put in eval() before sparsify/densify/load stays in eval() throughout
    (torch.onnx.export warns about, and some layers depend on, the mode)."""
    model = spt.sparsify(mlp().eval(), autotune=False, min_sparsity=0.5)[0]
    assert isinstance(model[0], spt.SparseLinear)
    assert not any(m.training for m in model.modules())
    assert not any(m.training for m in spt.densify(model).modules())
    assert not spt.densify(model[0]).training  # a single layer
    fresh = mlp().eval()
    spt.load_state_dict(fresh, model.state_dict())
    assert isinstance(fresh[0], spt.SparseLinear)
    assert not any(m.training for m in fresh.modules())
    train = spt.sparsify(mlp(), autotune=False, min_sparsity=0.5)[0]
    assert all(m.training for m in train.modules())


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_small_batch_forward_matches_dense(context, n_threads):
    # Issue 17 target 2: batches under a kernel chunk take the gather and the
    # narrow lane kernels (float32 and float64); each must match F.linear.
    from sparseprop import _linear

    for dtype in (torch.float32, torch.float64):
        dense = pruned(nn.Linear(70, 130, dtype=dtype), sparsity=0.9)
        with torch.no_grad():
            dense.weight[5] = 0  # an empty output row
        layer = spt.SparseLinear.from_dense(dense)
        layer.n_threads = n_threads
        gen = torch.Generator().manual_seed(3)
        paths = set()
        with CONTEXTS[context]():
            for batch in [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64]:
                x = torch.randn(batch, 70, generator=gen, dtype=dtype)
                paths.add(_linear.forward_path(batch, layer.values.numpy().dtype)[0])
                torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-5)
            x1 = torch.randn(70, generator=gen, dtype=dtype)  # unbatched
            torch.testing.assert_close(layer(x1), dense(x1), rtol=1e-5, atol=1e-5)
            xt = torch.randn(70, 3, generator=gen, dtype=dtype).t()  # non-contiguous
            torch.testing.assert_close(layer(xt), dense(xt), rtol=1e-5, atol=1e-5)
        assert "gather" in paths and len(paths) >= 2
