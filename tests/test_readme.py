"""Every Python example in the README runs on its own, exactly as written.

Each ```python block is executed alone, in a fresh namespace and an empty
folder: a block that relies on names from another block fails here.
"""
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_blocks():
    """(section title, code) of every ```python block, in README order."""
    blocks = []
    section = ""
    for part in re.split(r"(?m)^(## .*)$", README.read_text()):
        if part.startswith("## "):
            section = part[3:].strip()
            continue
        blocks += [(section, code) for code in re.findall(r"```python\n(.*?)```", part, re.S)]
    return blocks


BLOCKS = readme_blocks()


def test_readme_has_its_examples():
    # the sections below must keep one example each (this test would
    # silently run nothing if the README's fences changed)
    sections = [title for title, _ in BLOCKS]
    for title in ("Quick start (NumPy)", "Quick start: sparse conv2d (NumPy, NCHW)",
                  "Use with PyTorch", "Deploying a sparse model"):
        assert sections.count(title) == 1, (title, sections)


def _run(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEPROP_CACHE_DIR", str(tmp_path / "cache"))
    namespace = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("title, code", BLOCKS, ids=[t for t, _ in BLOCKS])
def test_readme_block_runs_alone(title, code, tmp_path, monkeypatch, capsys):
    if "import torch" in code:
        pytest.importorskip("torch")
    # the deploy extra: what the block imports, and onnxscript for any ONNX export
    needed = [m for m in ("onnxruntime", "safetensors") if f"import {m}" in code]
    needed += ["onnxscript"] if "onnx_export" in code else []
    for module in needed:
        pytest.importorskip(module, reason=f"{module} is not installed (the deploy extra)")
    ns = _run(code, tmp_path, monkeypatch)
    if title == "Quick start (NumPy)":
        X, W, dense, bias = ns["X"], ns["W"], ns["dense"], ns["bias"]
        # W was updated by the SGD step: compare with its current values
        np.testing.assert_allclose(ns["Y"], X @ dense.T + bias, rtol=2e-4, atol=2e-3)
        assert ns["dW"].shape == (W.nnz,)
    elif title.startswith("Quick start: sparse conv2d"):
        torch = pytest.importorskip("torch")
        ref = torch.nn.functional.conv2d(torch.from_numpy(ns["X"]),
                                         torch.from_numpy(ns["dense"]), None, 1, 1)
        np.testing.assert_allclose(ns["Y"], ref.numpy(), rtol=2e-4, atol=2e-3)
        assert ns["dW"].shape == (ns["W"].nnz,)
    elif title == "Use with PyTorch":
        import torch

        import sparseprop.torch as spt

        report, model = ns["report"], ns["model"]
        assert "sparsify:" in capsys.readouterr().out
        assert report["0"].sparsity == pytest.approx(0.95, abs=1e-3)
        assert report["0"].dense_ms > 0 and report["0"].sparse_ms > 0
        assert isinstance(model[0], spt.SparseLinear) == (report["0"].decision == "sparse")
        assert torch.isfinite(ns["loss"])
        assert (tmp_path / "sparse_model.pt").exists()
        assert list((tmp_path / "cache").glob("*.json"))
    elif title == "Deploying a sparse model":
        import sparseprop.torch as spt

        assert len(ns["report"].converted) == 2
        assert isinstance(ns["fresh"][3], spt.SparseLinear)
        for name in ("model.pt2", "model.onnx", "model.safetensors"):
            assert (tmp_path / name).exists(), name
