"""Issue 17, target 3: torch.export of models with sparse layers.

A sparsified model exports with ``torch.export.export`` (the layers take the
custom-op route, ``torch.ops.sparseprop.*``), saves with
``torch.export.save``, and loads in a fresh process with
``torch.export.load`` once ``sparseprop.torch`` is imported (which registers
the ops), giving the same outputs.
"""
import textwrap

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import sparseprop.torch as spt  # noqa: E402

from helpers import run_python  # noqa: E402


def pruned(module, sparsity=0.8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight[torch.rand(module.weight.shape, generator=gen) < sparsity] = 0
    return module


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = pruned(nn.Conv2d(3, 8, 3, padding=1))
        self.conv2 = pruned(nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2),
                            seed=1)
        self.fc = pruned(nn.Linear(8 * 4 * 4, 10), seed=2)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def sparse_net():
    torch.manual_seed(0)
    dense = Net().eval()
    sparse, report = spt.sparsify(dense, autotune=False, min_sparsity=0.5)
    assert len(report.converted) == 3
    return dense, sparse


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def sparseprop_nodes(ep):
    return [n for n in ep.graph.nodes if n.op == "call_function"
            and str(n.target).startswith("sparseprop.")]


def test_export_has_the_sparse_ops_and_matches():
    dense, sparse = sparse_net()
    ep = torch.export.export(sparse, (X,))
    assert len(sparseprop_nodes(ep)) == 3
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(X), dense(X), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(ep.module()(X), dense(X), rtol=1e-5, atol=1e-5)


def test_export_with_a_dynamic_batch():
    dense, sparse = sparse_net()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(sparse, (X,), dynamic_shapes={"x": {0: batch}})
    for n in (1, 5):
        x = torch.randn(n, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(ep.module()(x), dense(x), rtol=1e-5, atol=1e-5)


def test_save_and_load_in_a_fresh_process(tmp_path):
    dense, sparse = sparse_net()
    ep = torch.export.export(sparse, (X,))
    path = tmp_path / "sparse.pt2"
    torch.export.save(ep, path)
    with torch.no_grad():
        expected = dense(X)
    torch.save({"x": X, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch
        import sparseprop.torch  # registers torch.ops.sparseprop.*
        ep = torch.export.load({str(path)!r})
        io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        with torch.inference_mode():
            y = ep.module()(io["x"])
        torch.testing.assert_close(y, io["expected"], rtol=1e-5, atol=1e-5)
        n = sum(str(n.target).startswith("sparseprop.") for n in ep.graph.nodes)
        print("OK", n)
    """)
    proc = run_python(["-c", script])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["OK", "3"]


def test_load_without_sparseprop_names_the_missing_op(tmp_path):
    """Without ``import sparseprop.torch`` the ops are unknown: torch's error names them."""
    _, sparse = sparse_net()
    path = tmp_path / "sparse.pt2"
    torch.export.save(torch.export.export(sparse, (X,)), path)
    script = f"import torch; torch.export.load({str(path)!r}).module()(torch.randn(2, 3, 8, 8))"
    proc = run_python(["-c", script])
    assert proc.returncode != 0
    assert "sparseprop" in proc.stderr


def test_exported_program_runs_the_sparse_kernels():
    """The exported graph calls the sparse op (not a dense decomposition): its
    values are what the op reads, so changing them changes the output."""
    _, sparse = sparse_net()
    ep = torch.export.export(sparse, (X,))
    m = ep.module()
    with torch.no_grad():
        y0 = m(X)
        m.fc.values.mul_(2.0)
        y1 = m(X)
    assert not torch.allclose(y0, y1)
