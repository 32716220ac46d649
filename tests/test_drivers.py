"""The pure-Python side of the drivers: conv geometry and plans, the task
splitter, the conv weight built from CSR buffers, the torch modules' imports."""
import ast
from pathlib import Path

import numpy as np
import pytest

import sparseprop as sp
from sparseprop import _conv_plan, _tasks

from helpers import random_sparse_dense, tolerances

# ---------------------------------------------------------------- geometry

def test_conv_geometry_is_a_named_tuple_of_the_checked_options():
    W = sp.SparseConvWeight.from_dense(np.ones((6, 2, 3, 2), np.float32))
    geo = _conv_plan.conv_geometry((4, 6, 9, 11), W, (2, 1), "valid", 1, 3)
    assert geo._fields == ("sh", "sw", "pt", "pb", "pl", "pr", "dh", "dw", "groups", "OH",
                           "OW")
    assert geo == (2, 1, 0, 0, 0, 0, 1, 1, 3, 4, 10)
    assert (geo.OH, geo.OW, geo.groups) == (4, 10, 3)
    # "same" puts the odd extra row/column at the bottom/right
    geo = _conv_plan.conv_geometry((1, 6, 5, 5), W, 1, "same", (1, 2), 3)
    assert (geo.pt, geo.pb, geo.pl, geo.pr, geo.dw) == (1, 1, 1, 1, 2)
    assert (geo.OH, geo.OW) == (5, 5)
    # a stride past the last window is clamped: one output row either way
    geo = _conv_plan.conv_geometry((1, 6, 4, 4), W, (50, 1), 0, 1, 3)
    assert (geo.sh, geo.OH) == (2, 1)


@pytest.mark.parametrize("value", [True, (1, True), np.bool_(True), (1, 2, 3), 1.0, "2"])
def test_int_pair_fast_path_keeps_rejecting(value):
    with pytest.raises(TypeError, match="stride must be an int or a pair of ints"):
        _conv_plan.int_pair(value, "stride", 1, "positive (>= 1)")


def test_int_pair_accepts_what_it_did():
    assert _conv_plan.int_pair(np.int64(3), "s", 1, "") == (3, 3)
    assert _conv_plan.int_pair([2], "s", 1, "") == (2, 2)
    assert _conv_plan.int_pair((2, np.int32(5)), "s", 1, "") == (2, 5)
    with pytest.raises(ValueError, match="padding must be non-negative"):
        _conv_plan.int_pair((0, -1), "padding", 0, "non-negative (>= 0)")


def test_plan_keeps_the_filled_geometry_and_sets_the_batch_per_call(rng):
    # One plan serves every batch size (the batch is not part of its key); the
    # geometry struct is filled once, kept as bytes, and only its batch is
    # written per call: a stale batch would compute the wrong number of images.
    Wd = random_sparse_dense(rng, (8, 5, 3, 3), 0.5)
    W = sp.SparseConvWeight.from_dense(Wd)
    import torch
    import torch.nn.functional as F

    for B in (3, 9, 1):
        X = rng.standard_normal((B, 5, 6, 7)).astype(np.float32)
        Y = sp.conv2d_forward(X, W, padding=1, algorithm="over_width", n_threads=1)
        ref = F.conv2d(torch.from_numpy(X), torch.from_numpy(Wd), padding=1).numpy()
        np.testing.assert_allclose(Y, ref, *tolerances(np.float32, 45))
    plans = W._cache["conv2d"]
    assert len(plans) == 1
    plan = next(iter(plans.values()))
    assert isinstance(plan.geom, bytes) and plan.geom
    assert isinstance(plan, _conv_plan.ConvPlan)


# ---------------------------------------------------------------- task splitter

@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_split_range_is_ordered_complete_and_balanced(parts, rng):
    for n in (1, 2, 5, 64, 333):
        cost = rng.integers(0, 40, n) + 4
        b = _tasks.split_range(cost, parts)
        assert b.dtype == np.int64 and b.shape == (parts + 1,)
        assert b[0] == 0 and b[-1] == n and np.all(np.diff(b) >= 0)
        cum = np.concatenate(([0], np.cumsum(cost)))
        piece = cum[b[1:]] - cum[b[:-1]]
        assert np.all(np.abs(piece - cum[-1] / parts) <= cost.max())


def test_split_range_of_zero_cost():
    np.testing.assert_array_equal(_tasks.split_range(np.zeros(4, np.int64), 3), [0, 0, 0, 4])


def test_task_grid():
    assert _tasks.task_grid(1, 10, 64) == (1, 1)
    assert _tasks.task_grid(4, 8, 64) == (4, 1)     # enough batch units: split the batch
    assert _tasks.task_grid(4, 1, 64) == (1, 4)     # one unit: split the channels
    Tb, Tc = _tasks.task_grid(3, 2, 64)
    assert Tb * Tc <= 3


# ---------------------------------------------------------------- conv weight from CSR

def csr_of(Wd):
    rows = Wd.reshape(Wd.shape[0], int(np.prod(Wd.shape[1:])))
    mask = rows != 0
    indptr = np.concatenate(([0], np.cumsum(mask.sum(1)))).astype(np.int64)
    indices = np.nonzero(mask)[1].astype(np.int32)
    return rows[mask], indices, indptr


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (5, 3, 1, 2), (3, 2, 0, 3), (0, 2, 3, 3),
                                   (4, 0, 3, 3)])
def test_from_csr_equals_from_dense(shape, rng):
    Wd = random_sparse_dense(rng, shape, 0.6)
    if Wd.size:
        Wd[0] = 0      # an empty output channel
    data, indices, indptr = csr_of(Wd)
    A = sp.SparseConvWeight.from_csr(data, indices, indptr, shape)
    B = sp.SparseConvWeight.from_dense(Wd)
    for name in ("data", "och", "ich", "krow", "kcol"):
        np.testing.assert_array_equal(getattr(A, name), getattr(B, name), err_msg=name)
        assert getattr(A, name).dtype == getattr(B, name).dtype, name
    assert A.shape == B.shape
    # the coordinates were derived on the way: kept, and equal to a fresh derivation
    assert "coords" in A._cache
    for a, b in zip(A._coords(), B._coords(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(A.to_dense(), Wd)
    assert not A.och.flags.writeable and A.och is not indptr


@pytest.mark.parametrize("change,msg", [
    (lambda d, i, p: (d, i[::-1].copy(), p), "sorted and free of duplicates"),
    (lambda d, i, p: (d, i + 100, p), "out of range for 36 columns"),
    (lambda d, i, p: (d, i, p[:-1]), "indptr must have length"),
    (lambda d, i, p: (d[:-1], i, p), "data and indices must have the same length"),
])
def test_from_csr_rejects_bad_structures(change, msg, rng):
    Wd = random_sparse_dense(rng, (2, 4, 3, 3), 0.5)
    d, i, p = change(*csr_of(Wd))
    with pytest.raises(ValueError, match=msg):
        sp.SparseConvWeight.from_csr(d, i, p, Wd.shape)


def test_conv_weight_of_layer_buffers_is_validated_once(monkeypatch):
    # The layer's CSR buffers become a SparseConvWeight with one structure
    # check (as CSR): no intermediate CSRMatrix, no second check of the conv
    # layout, and the structure cache reuses the result on the next call.
    torch = pytest.importorskip("torch")
    import sparseprop.torch as spt
    from sparseprop import _convweight, _formats
    from sparseprop.torch import _structure

    calls = {"csr": 0, "conv": 0}
    real_csr, real_conv = _formats._csr_problem, _convweight._check_structure

    def counting_csr(*a):
        calls["csr"] += 1
        return real_csr(*a)

    def counting_conv(*a):
        calls["conv"] += 1
        return real_conv(*a)

    monkeypatch.setattr(_formats, "_csr_problem", counting_csr)
    monkeypatch.setattr(_convweight, "_check_structure", counting_conv)
    _structure.CACHE.clear()
    torch.manual_seed(0)
    conv = spt.SparseConv2d(4, 6, 3, padding=1, sparsity=0.7)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    for _ in range(3):
        conv(x).sum().backward()
    assert calls == {"csr": 1, "conv": 0}
    assert _structure.CACHE.stats["builds"] == 1
    ref = torch.nn.functional.conv2d(x, conv.dense_weight(), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), ref, rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------- imports

def _imports_of(path, package):
    """sparseprop.torch modules a module imports, at any depth (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == package:
                found.update(f"{package}.{a.name}" for a in node.names)
            elif node.module.startswith(package + "."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(package + "."))
    return found


def test_torch_facade_imports_have_no_circle():
    pkg = Path(sp.__file__).parent / "torch"
    graph = {f"sparseprop.torch.{p.stem}": _imports_of(p, "sparseprop.torch")
             for p in pkg.glob("*.py") if p.stem != "__init__"}
    assert "sparseprop.torch._optim_state" in graph
    assert graph["sparseprop.torch._optim_state"] == set()   # a leaf

    def visit(node, stack):
        assert node not in stack, f"import circle: {' -> '.join(stack + [node])}"
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, stack + [node])

    for module in graph:
        visit(module, [])


def test_plain_type_uses_torch_parametrize():
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch.nn.utils import parametrize

    from sparseprop.torch import _convert

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    lin = nn.Linear(3, 2)
    parametrize.register_parametrization(lin, "weight", Double())
    assert type(lin) is not nn.Linear and _convert._plain_type(lin) is nn.Linear

    class ParametrizedLinear(nn.Linear):
        """A user's subclass whose name only looks like torch's generated one."""

    mod = ParametrizedLinear(3, 2)
    mod.parametrizations = nn.ModuleDict()
    assert _convert._plain_type(mod) is ParametrizedLinear
    assert torch.is_tensor(mod.weight)
