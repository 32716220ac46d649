"""sparsify / densify / the tuning cache; state_dict, torch.save, deepcopy, pickling."""
import copy
import io
import pickle

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import sparseprop.torch as spt  # noqa: E402
from sparseprop.torch import _convert  # noqa: E402

from helpers import run_python  # noqa: E402


def test_import_sparseprop_does_not_import_torch():
    code = "import sys, sparseprop; print('torch' in sys.modules)"
    proc = run_python(["-c", code], check=True)
    assert proc.stdout.strip() == "False"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.head = nn.Linear(256, 10)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        return self.head(self.body(x))


def masked_net(sparsities=(0.95, 0.95, 0.5), seed=0):
    torch.manual_seed(seed)
    net = Net()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m, s in zip((net.body[0], net.body[2], net.head), sparsities, strict=True):
            m.weight[torch.rand(m.weight.shape, generator=gen) < s] = 0
        net.unused.weight[torch.rand(4, 4, generator=gen) < 0.9] = 0
    return net


# ---------------------------------------------------------------- sparsify / densify

def test_sparsify_without_autotune_converts_by_sparsity():
    net = masked_net()
    sparse, report = spt.sparsify(net, min_sparsity=0.8, autotune=False)
    assert isinstance(net.body[0], nn.Linear)  # not inplace: the original is untouched
    assert isinstance(sparse.body[0], spt.SparseLinear)
    assert isinstance(sparse.body[2], spt.SparseLinear)
    assert type(sparse.head) is nn.Linear  # 50% sparse: below min_sparsity
    assert set(report.converted) == {"body.0", "body.2", "unused"}
    assert report["head"].decision == "dense" and "below" in report["head"].reason
    x = torch.randn(8, 32)
    torch.testing.assert_close(sparse(x), net(x), rtol=1e-5, atol=1e-5)
    back = spt.densify(sparse)
    assert not any(isinstance(m, spt.SparseLinear) for m in back.modules())
    assert torch.equal(back.body[0].weight, net.body[0].weight)
    torch.testing.assert_close(back(x), net(x))
    same, _ = spt.sparsify(net, autotune=False, inplace=True)
    assert same is net and isinstance(net.body[0], spt.SparseLinear)


def test_sparsify_accepts_pruned_modules():
    import torch.nn.utils.prune as prune
    torch.manual_seed(1)
    net = Net()
    prune.l1_unstructured(net.body[2], "weight", amount=0.9)
    sparse, report = spt.sparsify(net, autotune=False)
    assert report.converted == ["body.2"]
    assert not hasattr(sparse.body[2], "weight_mask")
    x = torch.randn(3, 32)
    torch.testing.assert_close(sparse(x), net(x), rtol=1e-5, atol=1e-5)


def test_sparsify_autotune_times_and_caches(tmp_path, monkeypatch):
    timed = []
    real = _convert._time_layer

    def counting(dense, sparse, spec, repeats, warmup):
        timed.append(spec["input_shape"])
        return real(dense, sparse, spec, repeats, warmup)
    monkeypatch.setattr(_convert, "_time_layer", counting)
    net = masked_net()
    x = torch.randn(64, 32)
    model, report = spt.sparsify(net, x, cache_dir=tmp_path, repeats=3, warmup=1)
    assert sorted(timed) == [(64, 32), (64, 256)]  # the two layers above 0.8
    text = str(report)
    for name in ("body.0", "body.2", "head", "unused"):
        assert name in text
    for name in ("body.0", "body.2"):
        row = report[name]
        assert row.dense_ms > 0 and row.sparse_ms > 0 and not row.cached
        assert row.input_shape == ((64, 32) if name == "body.0" else (64, 256))
        assert isinstance(model.get_submodule(name), spt.SparseLinear) == (
            row.decision == "sparse")
        assert row.decision == ("sparse" if row.sparse_ms < row.dense_ms else "dense")
    assert "not reached" in report["unused"].reason
    assert len(list(tmp_path.glob("*.json"))) == 2
    # second run: everything from the cache, nothing timed, same decisions
    model2, report2 = spt.sparsify(net, x, cache_dir=tmp_path)
    assert len(timed) == 2
    for name in ("body.0", "body.2"):
        assert report2[name].cached
        assert report2[name].decision == report[name].decision
        assert report2[name].sparse_ms == report[name].sparse_ms
    # a different input shape is a different key
    spt.sparsify(net, torch.randn(8, 32), cache_dir=tmp_path, repeats=1, warmup=0)
    assert len(timed) == 4
    # the environment variable names the default folder
    monkeypatch.setenv("SPARSEPROP_CACHE_DIR", str(tmp_path / "env"))
    assert spt.tuning_cache_dir() == tmp_path / "env"
    spt.sparsify(net, x, repeats=1, warmup=0)
    assert len(timed) == 6 and len(list((tmp_path / "env").glob("*.json"))) == 2
    # a rebuilt sparseprop (other compiled kernels) measures again
    monkeypatch.setattr(_convert, "_kernel_build_id", lambda: "another-build")
    spt.sparsify(net, x, repeats=1, warmup=0)
    assert len(timed) == 8 and len(list((tmp_path / "env").glob("*.json"))) == 4


def test_sparsify_decides_by_the_measured_times(tmp_path, monkeypatch):
    # With the timing replaced, the decision must follow it (and be reported).
    def fake(dense, sparse, spec, repeats, warmup):
        slow = spec["input_shape"][-1] == 32
        return 1.0, {"-": 2.0 if slow else 0.5}
    monkeypatch.setattr(_convert, "_time_layer", fake)
    model, report = spt.sparsify(masked_net(), torch.randn(4, 32), cache_dir=tmp_path)
    assert report["body.0"].decision == "dense" and report["body.0"].reason == "dense is faster"
    assert report["body.2"].decision == "sparse" and report["body.2"].speedup == 2.0
    assert type(model.body[0]) is nn.Linear and isinstance(model.body[2], spt.SparseLinear)


def test_sparsify_errors():
    with pytest.raises(ValueError, match="example_inputs"):
        spt.sparsify(masked_net())
    with pytest.raises(ValueError, match="min_sparsity"):
        spt.sparsify(masked_net(), autotune=False, min_sparsity=1.5)


# ---------------------------------------------------------------- save / load

def sparse_net(seed=0, sparsities=(0.95, 0.9, 0.9)):
    model, _ = spt.sparsify(masked_net(sparsities, seed), min_sparsity=0.8, autotune=False)
    return model


def test_state_dict_holds_everything():
    model = sparse_net()
    sd = model.state_dict()
    for key in ("values", "indptr", "indices", "weight_shape", "bias"):
        assert "body.0." + key in sd
    assert sd["body.0.indices"].dtype == torch.int32
    assert sd["body.0.weight_shape"].tolist() == [256, 32]


def test_load_state_dict_with_a_different_nnz():
    a, b = sparse_net(seed=0), sparse_net(seed=1, sparsities=(0.85, 0.97, 0.88))
    assert a.body[0].nnz != b.body[0].nnz
    param = b.body[0].values
    b.load_state_dict(a.state_dict())
    assert b.body[0].values is param  # resized in place: optimizers keep the object
    for la, lb in zip(a.modules(), b.modules(), strict=True):
        if isinstance(la, spt.SparseLinear):
            assert torch.equal(la.values, lb.values) and torch.equal(la.indices, lb.indices)
            assert torch.equal(la.indptr, lb.indptr)
    x = torch.randn(5, 32)
    assert torch.equal(a(x), b(x))


def test_load_state_dict_rejects_bad_entries():
    a, b = sparse_net(), sparse_net(seed=1)
    sd = a.state_dict()
    sd["body.0.weight_shape"] = torch.tensor([256, 33])
    with pytest.raises(RuntimeError, match="weight_shape"):
        b.load_state_dict(sd)
    sd = a.state_dict()
    sd["body.0.indices"] = sd["body.0.indices"].flip(0)
    with pytest.raises(RuntimeError, match="invalid sparse structure"):
        b.load_state_dict(sd)
    sd = a.state_dict()
    del sd["body.0.weight_shape"]
    with pytest.raises(RuntimeError, match="Missing key.*weight_shape"):
        b.load_state_dict(sd)


def test_dense_state_dict_loads_into_sparse_layer():
    dense = masked_net().body[0]
    layer = spt.SparseLinear(32, 256)
    layer.load_state_dict(dense.state_dict())
    assert layer.nnz == int((dense.weight != 0).sum())
    assert torch.equal(layer.to_dense().weight, dense.weight)


def test_torch_save_load_weights_only_round_trip():
    model = sparse_net(sparsities=(0.95, 0.9, 0.5))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    # into a freshly built dense architecture: layers become sparse as needed
    fresh = Net()
    spt.load_state_dict(fresh, sd)
    assert isinstance(fresh.body[0], spt.SparseLinear) and type(fresh.head) is nn.Linear
    x = torch.randn(7, 32)
    assert torch.equal(fresh(x), model(x))
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # and back: a dense checkpoint into the sparse model
    dense_sd = spt.densify(model).state_dict()
    spt.load_state_dict(fresh, dense_sd)
    assert type(fresh.body[0]) is nn.Linear
    torch.testing.assert_close(fresh(x), model(x))


def test_deepcopy_and_pickle():
    model = sparse_net()
    x = torch.randn(3, 32)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(x), model(x))
        assert clone.body[0].values is not model.body[0].values
        with torch.no_grad():
            clone.body[0].values.add_(1.0)
        assert not torch.equal(clone(x), model(x))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    whole = torch.load(buf, weights_only=False)
    assert torch.equal(whole(x), model(x))


def test_sparsify_times_both_conv_algorithms(tmp_path, monkeypatch):
    seen = []
    real_time_layer = _convert._time_layer

    def spy(dense, sparse, spec, repeats, warmup):
        out = real_time_layer(dense, sparse, spec, repeats, warmup)
        seen.append(out)
        return out
    monkeypatch.setattr(_convert, "_time_layer", spy)
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, stride=2, padding=1))
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.weight[torch.rand(m.weight.shape) < 0.95] = 0
    x = torch.randn(8, 16, 14, 14).contiguous(memory_format=torch.channels_last)
    model, report = spt.sparsify(net, x, cache_dir=tmp_path, repeats=3, warmup=1)
    assert len(seen) == 2
    for (_, t_sparse), name in zip(seen, ("0", "2"), strict=True):
        assert set(t_sparse) == {"batch_last", "over_width"}
        row = report[name]
        assert row.algorithm == min(t_sparse, key=t_sparse.get)
        layer = model.get_submodule(name)
        if row.decision == "sparse":
            assert layer.algorithm == row.algorithm
    torch.testing.assert_close(model(x), net(x), rtol=1e-4, atol=1e-4)


def test_sparsify_accepts_an_ao_sparsifier_model():
    from torch.ao.pruning import WeightNormSparsifier

    torch.manual_seed(4)
    net = Net()
    sparsifier = WeightNormSparsifier(sparsity_level=0.9, sparse_block_shape=(1, 1),
                                      zeros_per_block=1)
    sparsifier.prepare(net, [{"tensor_fqn": "body.2.weight"}])
    sparsifier.step()
    kept = int(net.body[2].parametrizations.weight[0].mask.sum())
    assert kept == round(0.1 * 256 * 256)
    sparse, report = spt.sparsify(net, autotune=False)
    assert report.converted == ["body.2"]
    assert isinstance(sparse.body[2], spt.SparseLinear) and sparse.body[2].nnz == kept
    x = torch.randn(3, 32)
    torch.testing.assert_close(sparse(x), net(x), rtol=1e-5, atol=1e-5)
    # multi_head attention's out_proj (a Linear subclass) is never replaced
    mha = nn.MultiheadAttention(8, 2)
    with torch.no_grad():
        mha.out_proj.weight.zero_()
    _, report = spt.sparsify(mha, autotune=False)
    assert report.layers == []


def test_weight_sparsity_counts_dense_pruned_and_sparse_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 3))
    assert spt.weight_sparsity(net) == 0.0
    with torch.no_grad():
        net[0].weight[:2] = 0                      # 2 of 8 output channels: 72 zeros
    torch.nn.utils.prune.l1_unstructured(net[1], "weight", amount=0.5)  # 288 of 576
    net[3].weight.data[0] = 0                      # a Linear: not counted by default
    convs = 288 + 576
    assert spt.weight_sparsity(net) == pytest.approx((72 + 288) / convs)
    assert spt.weight_sparsity(net, kinds=(nn.Linear,)) == pytest.approx(8 / 24)
    # the same counts after conversion; a stored zero is a slot, not a zero
    sparse = spt.SparseConv2d.from_dense(net[1])
    net[1] = sparse
    with torch.no_grad():
        sparse.values[0] = 0.0
    assert spt.weight_sparsity(net) == pytest.approx((72 + 288) / convs)
    assert spt.weight_sparsity(net, kinds=(nn.Conv2d, nn.Linear)) == pytest.approx(
        (72 + 288 + 8) / (convs + 24))
    assert spt.weight_sparsity(nn.ReLU()) == 0.0
