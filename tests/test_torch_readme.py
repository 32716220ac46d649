"""The README's "Use with PyTorch" example runs exactly as written."""
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_torch_snippet():
    text = README.read_text()
    section = text.split("## Use with PyTorch", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section should hold one python example"
    return blocks[0]


def test_readme_torch_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEPROP_CACHE_DIR", str(tmp_path / "cache"))
    namespace = {"__name__": "__readme__"}
    exec(compile(readme_torch_snippet(), str(README), "exec"), namespace)
    import sparseprop.torch as spt

    report, model = namespace["report"], namespace["model"]
    assert "sparsify:" in capsys.readouterr().out
    assert report["0"].sparsity == pytest.approx(0.95, abs=1e-3)
    assert report["0"].dense_ms > 0 and report["0"].sparse_ms > 0
    assert isinstance(model[0], spt.SparseLinear) == (report["0"].decision == "sparse")
    assert torch.isfinite(namespace["loss"])
    assert (tmp_path / "sparse_model.pt").exists()
    assert list((tmp_path / "cache").glob("*.json"))
