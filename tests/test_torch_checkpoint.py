"""Issue 17, target 5: sparse checkpoints in safetensors and Hugging Face folders."""
import json
import os

import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch",
                         reason="safetensors is not installed (pip install safetensors)")

from torch import nn  # noqa: E402

import sparseprop.torch as spt  # noqa: E402


def pruned(module, sparsity, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight[torch.rand(module.weight.shape, generator=gen) < sparsity] = 0
    return module


def net(sparsity=0.9):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                      nn.Linear(32 * 6 * 6, 256), nn.ReLU(), nn.Linear(256, 10))
    for i, layer in enumerate((m[0], m[3], m[5])):
        pruned(layer, sparsity, seed=i)
    return m.eval()


X = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("sparsity", [0.8, 0.95])
def test_safetensors_round_trip_and_size(tmp_path, sparsity):
    dense = net(sparsity)
    sparse, report = spt.sparsify(dense, autotune=False, min_sparsity=0.5)
    assert len(report.converted) == 3
    st.save_file(sparse.state_dict(), tmp_path / "sparse.safetensors")
    st.save_file(dense.state_dict(), tmp_path / "dense.safetensors")
    loaded = st.load_file(tmp_path / "sparse.safetensors")
    for key, value in sparse.state_dict().items():  # values, indices, shapes: exactly
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    assert loaded["3.indices"].dtype == torch.int32
    assert loaded["3.weight_shape"].tolist() == [256, 32 * 6 * 6]

    ratio = (os.path.getsize(tmp_path / "sparse.safetensors")
             / os.path.getsize(tmp_path / "dense.safetensors"))
    density = 1.0 - sparsity
    # float32 values + int32 indices per stored weight, an int64 per row, headers
    assert density < ratio < 2.0 * density + 0.02, ratio

    fresh = net(0.0)  # a dense architecture with other weights
    spt.load_state_dict(fresh, loaded)
    assert isinstance(fresh[3], spt.SparseLinear) and fresh[3].nnz == sparse[3].nnz
    with torch.inference_mode():
        torch.testing.assert_close(fresh(X), dense(X), rtol=1e-5, atol=1e-5)


def test_load_safetensors_file_and_folder(tmp_path):
    dense = net()
    sparse, _ = spt.sparsify(dense, autotune=False, min_sparsity=0.5)
    sd = sparse.state_dict()
    st.save_file(sd, tmp_path / "one.safetensors")
    fresh = net(0.0)
    spt.load_safetensors(fresh, tmp_path / "one.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), dense(X), rtol=1e-5, atol=1e-5)

    # a sharded folder, as save_pretrained writes large models
    shard = tmp_path / "sharded"
    shard.mkdir()
    keys = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": keys[::2],
              "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in halves.items():
        st.save_file({k: sd[k] for k in ks}, shard / name)
    weight_map = {k: name for name, ks in halves.items() for k in ks}
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    fresh = net(0.0)
    spt.load_safetensors(fresh, shard)
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), dense(X), rtol=1e-5, atol=1e-5)


def test_load_safetensors_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        spt.load_safetensors(net(), tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="without model.safetensors"):
        spt.load_safetensors(net(), tmp_path)
    # an index naming files outside its folder (or not names at all) is refused
    (tmp_path / "outside.safetensors").write_bytes(b"")
    shard = tmp_path / "sharded"
    shard.mkdir()
    for bad in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), 3, ".."):
        (shard / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"0.weight": bad}}))
        with pytest.raises(ValueError, match="weight_map names shard"):
            spt.load_safetensors(net(), shard)


def _tiny_bert(transformers):
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_attention_heads=2,
                                     intermediate_size=64, num_hidden_layers=2,
                                     max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    for m in model.bert.encoder.modules():
        if isinstance(m, nn.Linear):
            pruned(m, 0.9)
    return model


def test_hugging_face_save_pretrained_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    dense = _tiny_bert(transformers)
    sparse, report = spt.sparsify(dense, autotune=False, min_sparsity=0.5)
    assert len(report.converted) == 12  # 6 Linear per encoder layer
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = dense(ids).logits
        torch.testing.assert_close(sparse(ids).logits, ref, rtol=1e-5, atol=1e-5)
    sparse.save_pretrained(tmp_path)
    saved = st.load_file(tmp_path / "model.safetensors")
    assert "bert.encoder.layer.0.attention.self.query.indices" in saved
    assert "bert.encoder.layer.0.attention.self.query.weight" not in saved

    # the documented conversion: the architecture from the config, then the sparse state
    model = transformers.BertForSequenceClassification(
        transformers.BertConfig.from_pretrained(tmp_path)).eval()
    result = spt.load_safetensors(model, tmp_path)
    assert not result.missing_keys and not result.unexpected_keys
    assert isinstance(model.bert.encoder.layer[1].output.dense, spt.SparseLinear)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, ref, rtol=1e-5, atol=1e-5)
    # and it saves again, the same
    model.save_pretrained(tmp_path / "again")
    again = st.load_file(tmp_path / "again" / "model.safetensors")
    assert again.keys() == saved.keys()
    assert all(torch.equal(again[k], saved[k]) for k in saved)
