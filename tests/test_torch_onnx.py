"""Issue 17, target 4: ONNX export of models with sparse layers, run by onnxruntime.

``sparseprop.torch.onnx_export`` (torch 2.13's dynamo exporter with
sparseprop's translation table) must give a graph of standard ONNX ops only,
whose onnxruntime outputs equal torch's within float32 tolerance; for
``dense_weights=True`` the weights are dense initializers, for
``dense_weights=False`` the file keeps the sparse values (and is smaller).
"""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
pytest.importorskip("onnxscript",
                    reason="onnxscript is not installed (torch.onnx.export needs it)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

from torch import nn  # noqa: E402

import sparseprop.torch as spt  # noqa: E402

STANDARD = {"Add", "Cast", "CastLike", "Concat", "Constant", "ConstantOfShape", "Conv",
            "CumSum", "Div", "Erf", "Expand", "Flatten", "Gather", "Gelu", "Gemm",
            "GlobalAveragePool", "MatMul", "MaxPool", "Mul", "Pow", "ReduceMean", "Relu", "Reshape",
            "ScatterElements", "Shape", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub",
            "Tanh", "Transpose", "Unsqueeze", "Where", "Identity", "LayerNormalization",
            "BatchNormalization", "Equal", "Not", "And"}


def pruned(module, sparsity=0.8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight[torch.rand(module.weight.shape, generator=gen) < sparsity] = 0
    return module


def run_onnx(path, *inputs):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs, strict=True)}
    return sess.run(None, feeds)


def check_export(model, inputs, tmp_path, dense_weights, reference=None, atol=1e-5):
    """Export, check the graph, run it; returns the ONNX graph."""
    model = model.eval()
    if reference is None:
        with torch.no_grad():
            reference = model(*inputs)
    path = tmp_path / f"model_{dense_weights}.onnx"
    spt.onnx_export(model, inputs, path, dense_weights=dense_weights)
    graph = onnx.load(path).graph
    ops = {n.op_type for n in graph.node}
    assert all(n.domain in ("", "ai.onnx") for n in graph.node), ops
    assert ops <= STANDARD, ops - STANDARD
    (out, *_) = run_onnx(path, *inputs)
    np.testing.assert_allclose(out, reference.numpy(), rtol=1e-4, atol=atol)
    return graph


def initializer_shapes(graph):
    return {tuple(i.dims) for i in graph.initializer}


@pytest.mark.parametrize("dense_weights", [True, False])
@pytest.mark.parametrize("shape", [(5, 16), (2, 3, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(tmp_path, dense_weights, shape, bias):
    layer = spt.SparseLinear.from_dense(pruned(nn.Linear(16, 12, bias=bias)))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    graph = check_export(layer, (x,), tmp_path, dense_weights)
    ops = {n.op_type for n in graph.node}
    assert ops & {"Gemm", "MatMul"}
    if dense_weights:
        assert (12, 16) in initializer_shapes(graph) or (16, 12) in initializer_shapes(graph)
    else:
        assert (layer.nnz,) in initializer_shapes(graph)
        assert (12, 16) not in initializer_shapes(graph)


CONVS = {
    "plain": dict(),
    "stride2-pad1": dict(stride=2, padding=1),
    "groups3": dict(groups=3, padding=(1, 2)),
    "dilation2": dict(dilation=2, padding=2),
    "all": dict(stride=(2, 1), padding=(2, 1), dilation=(2, 1), groups=3, bias=False),
}


@pytest.mark.parametrize("dense_weights", [True, False])
@pytest.mark.parametrize("geometry", CONVS)
def test_conv2d(tmp_path, dense_weights, geometry):
    layer = spt.SparseConv2d.from_dense(pruned(nn.Conv2d(6, 9, 3, **CONVS[geometry])))
    x = torch.randn(2, 6, 11, 10, generator=torch.Generator().manual_seed(1))
    graph = check_export(layer, (x,), tmp_path, dense_weights)
    assert "Conv" in {n.op_type for n in graph.node}
    assert (tuple(layer.weight_shape) in initializer_shapes(graph)) == dense_weights


def test_model_is_not_modified_and_reference_matches_dense(tmp_path):
    dense = pruned(nn.Linear(16, 12)).eval()
    layer = spt.SparseLinear.from_dense(dense)
    x = torch.randn(3, 16)
    with torch.no_grad():
        ref = dense(x)
    check_export(layer, (x,), tmp_path, True, reference=ref)
    assert isinstance(layer, spt.SparseLinear) and layer.nnz == int((dense.weight != 0).sum())


def _models_module():
    path = Path(__file__).resolve().parents[1] / "examples" / "models.py"
    if not path.exists():
        pytest.skip("examples/models.py is not next to the tests")
    spec = importlib.util.spec_from_file_location("sparseprop_example_models", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _magnitude_prune(model, sparsity, kinds=(nn.Conv2d, nn.Linear)):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, kinds) and m.weight.numel() > 64:
                k = int(sparsity * m.weight.numel())
                cut = m.weight.abs().flatten().kthvalue(k).values
                m.weight[m.weight.abs() <= cut] = 0
    return model


@pytest.mark.parametrize("dense_weights", [True, False])
def test_sparsified_resnet(tmp_path, dense_weights):
    models = _models_module()
    torch.manual_seed(0)
    dense = models.ResNet(models.BasicBlock, [1, 1, 1, 1], num_classes=10, in_channels=3,
                          small_input=True)
    _magnitude_prune(dense, 0.9)
    dense.eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    sparse, report = spt.sparsify(dense, autotune=False, min_sparsity=0.5)
    assert len(report.converted) >= 9
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = dense(x)
        torch.testing.assert_close(sparse(x), ref, rtol=1e-4, atol=1e-4)
    graph = check_export(sparse, (x,), tmp_path, dense_weights, reference=ref, atol=1e-4)
    # the model file and, for large weights, its external data file
    size = sum(os.path.getsize(f) for f in tmp_path.glob(f"model_{dense_weights}.onnx*"))
    dense_bytes = 4 * sum(p.numel() for p in dense.parameters())
    if dense_weights:
        assert size > 0.9 * dense_bytes
    else:  # float32 values + int64 positions of ~10% of the weights
        assert size < 0.5 * dense_bytes, (size, dense_bytes)
    assert sum(n.op_type == "Conv" for n in graph.node) >= 9


@pytest.mark.parametrize("dense_weights", [True, False])
def test_one_bert_layer(tmp_path, dense_weights):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=64, num_attention_heads=4,
                                     intermediate_size=128, num_hidden_layers=1)
    torch.manual_seed(0)
    layer = transformers.models.bert.modeling_bert.BertLayer(config).eval()
    _magnitude_prune(layer, 0.9, kinds=(nn.Linear,))
    sparse, report = spt.sparsify(layer, autotune=False, min_sparsity=0.5)
    assert len(report.converted) == 6
    h = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(1))

    class Wrapper(nn.Module):  # the hidden states only (BertLayer returns a tuple)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return out[0] if isinstance(out, tuple) else out

    with torch.no_grad():
        ref = Wrapper(layer)(h)
    graph = check_export(Wrapper(sparse), (h,), tmp_path, dense_weights, reference=ref,
                         atol=1e-4)
    assert sum(n.op_type in ("MatMul", "Gemm") for n in graph.node) >= 6


def test_translation_table_with_torch_onnx_export(tmp_path):
    """What a user calling torch.onnx.export directly passes."""
    layer = spt.SparseConv2d.from_dense(pruned(nn.Conv2d(3, 4, 3, padding=1))).eval()
    x = torch.randn(1, 3, 6, 6)
    path = tmp_path / "direct.onnx"
    torch.onnx.export(layer, (x,), path, custom_translation_table=spt.onnx_translation_table())
    with torch.no_grad():
        ref = layer(x)
    np.testing.assert_allclose(run_onnx(path, x)[0], ref.numpy(), rtol=1e-4, atol=1e-5)


def test_torchscript_exporter_is_refused_clearly():
    layer = spt.SparseLinear(4, 3)
    with pytest.raises(NotImplementedError, match="dynamo must be True"):
        spt.onnx_export(layer, (torch.randn(2, 4),), None, dynamo=False)
    with pytest.raises(TypeError, match="dense_weights must be a bool"):
        spt.onnx_export(layer, (torch.randn(2, 4),), None, dense_weights="yes")
