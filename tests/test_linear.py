"""Sparse linear layer against dense references (NumPy / SciPy, float64)."""
import os

import numpy as np
import pytest
import scipy.sparse as sps

import sparseprop as sp

from helpers import TAIL_SIZES, random_sparse_dense, tolerances

DTYPES = [np.float32, np.float64]


def reference(X, Wd, dY, bias=None):
    """Y, dX and the dense dW in float64, from the stored entries only.

    SciPy's sparse products skip structural zeros, so NaN/Inf in X meet only
    the weights that exist - the semantics sparseprop promises.
    """
    S = sps.csr_array(Wd.astype(np.float64))
    rows = int(np.prod(X.shape[:-1]))
    X64 = X.astype(np.float64).reshape(rows, Wd.shape[1])
    Y = (S @ X64.T).T
    if bias is not None:
        Y = Y + bias
    dX = dW_full = None
    if dY is not None:
        dY64 = dY.astype(np.float64).reshape(rows, Wd.shape[0])
        dX = (S.T @ dY64.T).T
        dW_full = dY64.T @ X64
    return Y, dX, dW_full


def at_nonzeros(W, dense):
    """dense[i, j] for every stored (i, j) of W, in W.data order."""
    if isinstance(W, sp.CSRMatrix):
        rows = np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))
        return dense[rows, W.indices]
    cols = np.repeat(np.arange(W.shape[1]), np.diff(W.indptr))
    return dense[W.indices, cols]


def check_layer(X, Wd, dY, W=None, bias=None, n_threads=None, need_input_grad=True):
    dtype = Wd.dtype
    W = sp.CSRMatrix.from_dense(Wd) if W is None else W
    Y = sp.linear_forward(X, W, bias, n_threads=n_threads)
    dX, dW = sp.linear_backward(X, W, dY, need_input_grad, n_threads=n_threads)
    Yr, dXr, dWr_full = reference(X, Wd, dY, bias)
    M, N = Wd.shape[1], Wd.shape[0]
    rtol, atol = tolerances(dtype, M)
    assert Y.dtype == dtype and Y.shape == X.shape[:-1] + (N,)
    assert Y.flags.c_contiguous
    rows = int(np.prod(X.shape[:-1]))
    np.testing.assert_allclose(Y.reshape(rows, N), Yr, rtol=rtol, atol=atol)
    rtol, atol = tolerances(dtype, N)
    if need_input_grad:
        assert dX.dtype == dtype and dX.shape == X.shape
        np.testing.assert_allclose(dX.reshape(rows, M), dXr, rtol=rtol, atol=atol)
    else:
        assert dX is None
    rtol, atol = tolerances(dtype, X.size // max(M, 1))
    assert dW.dtype == dtype and dW.shape == (W.nnz,)
    np.testing.assert_allclose(dW, at_nonzeros(W, dWr_full), rtol=rtol, atol=atol)
    return Y, dX, dW


def test_runs_under_requested_isa():
    # When the ISA test module re-runs this file under SPARSEPROP_ISA, make
    # sure the cap really took effect (else those runs would prove nothing).
    want = os.environ.get("SPARSEPROP_ISA")
    if want:
        assert sp.config()["isa"] == want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", TAIL_SIZES + [902])
@pytest.mark.parametrize("n_in,n_out", [(1, 1), (7, 8), (8, 7), (15, 16), (16, 17), (17, 37),
                                        (37, 15), (0, 5), (5, 0), (902, 17), (16, 902)])
def test_shapes_hitting_simd_tails(dtype, batch, n_in, n_out, rng):
    Wd = random_sparse_dense(rng, (n_out, n_in), 0.5, dtype)
    X = rng.standard_normal((batch, n_in)).astype(dtype)
    dY = rng.standard_normal((batch, n_out)).astype(dtype)
    bias = rng.standard_normal(n_out).astype(dtype)
    check_layer(X, Wd, dY, bias=bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_sparsities_and_threads(dtype, sparsity, n_threads, rng):
    Wd = random_sparse_dense(rng, (300, 200), sparsity, dtype)
    X = rng.standard_normal((97, 200)).astype(dtype)
    dY = rng.standard_normal((97, 300)).astype(dtype)
    check_layer(X, Wd, dY, n_threads=n_threads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 8, 50])
@pytest.mark.parametrize("n_threads", [2, 3, 4])
def test_few_chunks_split_rows_and_columns(dtype, batch, n_threads, rng):
    # Fewer batch chunks than threads: tasks also split output rows (forward)
    # and input columns (backward).
    Wd = random_sparse_dense(rng, (517, 333), 0.3, dtype)
    X = rng.standard_normal((batch, 333)).astype(dtype)
    dY = rng.standard_normal((batch, 517)).astype(dtype)
    check_layer(X, Wd, dY, n_threads=n_threads)


@pytest.fixture
def forced_blocks():
    """Force the forward's column-block count; always reset afterwards."""
    from sparseprop import _linear_plan

    yield _linear_plan.force_forward_blocks
    _linear_plan.force_forward_blocks(0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nblk", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_forward_column_blocks(dtype, nblk, n_threads, forced_blocks, rng):
    # The forward may cut W into column blocks walked one after the other
    # (partial sums kept between them); block edges that are not multiples of
    # the SIMD width, empty blocks, rows without entries in a block and the
    # CSC input path must all give the dense result.
    forced_blocks(nblk)
    for (n_out, n_in), batch in [((37, 100), 33), ((70, 7), 5), ((130, 161), 70),
                                 ((16, 48), 1)]:
        Wd = random_sparse_dense(rng, (n_out, n_in), 0.7, dtype)
        Wd[3] = 0
        X = rng.standard_normal((batch, n_in)).astype(dtype)
        bias = rng.standard_normal(n_out).astype(dtype)
        Yr = reference(X, Wd, None, bias)[0]
        rtol, atol = tolerances(dtype, n_in)
        for W in (sp.CSRMatrix.from_dense(Wd), sp.CSCMatrix.from_dense(Wd)):
            Y = sp.linear_forward(X, W, bias, n_threads=n_threads)
            np.testing.assert_allclose(Y, Yr, rtol=rtol, atol=atol)


def test_forward_block_count_heuristic():
    from sparseprop import _linear_plan

    # the paper's layer: blocks at 80% sparsity, none at 99% (short rows)
    assert _linear_plan.forward_blocks(768, 3072, 3072 * 768 // 5, 32, 4) > 1
    assert _linear_plan.forward_blocks(768, 3072, 3072 * 768 // 100, 32, 4) == 1
    # never more blocks than 16-column groups, never fewer than one
    assert _linear_plan.forward_blocks(20, 5, 100, 32, 8) == 1
    assert _linear_plan.forward_blocks(0, 5, 0, 32, 4) == 1
    # a call of few chunks never blocks (the per-call value gather would not pay)
    few = _linear_plan.BLOCK_MIN_CHUNKS - 1
    assert _linear_plan.forward_blocks(768, 3072, 3072 * 768 // 5, 32, 4, few) == 1
    assert _linear_plan.forward_blocks(768, 3072, 3072 * 768 // 5, 32, 4, few + 1) > 1


# ---------------------------------------------------------------- small batches
# Batches smaller than a chunk run other kernels: the row-wise gather forward
# (batches up to _linear.GATHER_MAX_BATCH) and the lane kernel compiled for 1
# and 2 vectors of lanes; these tests reach each of them under every ISA.

SMALL_BATCHES = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64]


def _ragged_weight(rng, n_out, n_in, dtype):
    """Row i has min(i, n_in) entries: every tail of a gather (0, < 1 vector,
    exactly 1 and 2 vectors, more) for every vector width."""
    Wd = np.zeros((n_out, n_in), dtype=dtype)
    for i in range(n_out):
        cols = rng.choice(n_in, size=min(i, n_in), replace=False)
        Wd[i, cols] = rng.standard_normal(cols.size)
    return Wd


@pytest.fixture
def gather_max_batch():
    """Set _linear.GATHER_MAX_BATCH (the batches that take the gather
    forward); always reset afterwards."""
    from sparseprop import _linear

    old = _linear.GATHER_MAX_BATCH

    def set_(n):
        _linear.GATHER_MAX_BATCH = n

    yield set_
    _linear.GATHER_MAX_BATCH = old


def test_forward_kernel_follows_the_batch():
    from sparseprop import _linear

    for dtype in DTYPES:
        full = _linear.forward_path(100000, dtype)
        assert full[0] == "full"
        assert _linear.forward_path(1, dtype)[0] == "gather"
        for B in range(1, full[1] + 1):
            name, chunk = _linear.forward_path(B, dtype)
            assert (name == "gather") == (B <= _linear.GATHER_MAX_BATCH)
            assert name == "gather" or B <= chunk or name == "full"
            if name != "gather":  # the narrowest chunk that holds the batch
                assert chunk <= full[1]
        assert _linear.forward_path(full[1] + 1, dtype) == full
    if sp.config().get("bf16_linear"):
        import ml_dtypes

        name, _ = _linear.forward_path(1, np.float32, ml_dtypes.bfloat16)
        assert name != "gather"  # no bfloat16 gather kernel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gather_upto", [None, 0, 4])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_small_batch_forward(dtype, gather_upto, n_threads, gather_max_batch, rng):
    # None: the default rule; 0: never the gather kernel; 4: every row
    # count of the gather kernel (1..4).
    if gather_upto is not None:
        gather_max_batch(gather_upto)
    shapes = [(41, 40), (37, 100), (16, 17), (5, 1), (70, 33)]
    for n_out, n_in in shapes:
        Wd = _ragged_weight(rng, n_out, n_in, dtype) if n_out > 30 else \
            random_sparse_dense(rng, (n_out, n_in), 0.6, dtype)
        bias = rng.standard_normal(n_out).astype(dtype)
        rtol, atol = tolerances(dtype, n_in)
        for W in (sp.CSRMatrix.from_dense(Wd), sp.CSCMatrix.from_dense(Wd)):
            for batch in SMALL_BATCHES:
                X = rng.standard_normal((batch, n_in)).astype(dtype)
                Yr = reference(X, Wd, None, bias)[0]
                Y = sp.linear_forward(X, W, bias, n_threads=n_threads)
                np.testing.assert_allclose(Y, Yr, rtol=rtol, atol=atol,
                                           err_msg=f"batch {batch}, {n_out}x{n_in}")
                Y0 = sp.linear_forward(X, W, n_threads=n_threads)
                np.testing.assert_allclose(Y0, Yr - bias, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_small_batch_paper_layer(dtype, sparsity, n_threads, rng):
    # The paper's layer at the batches of the latency benchmark, enough work
    # for two threads to split the output rows.
    Wd = random_sparse_dense(rng, (3072, 768), sparsity, dtype)
    W = sp.CSRMatrix.from_dense(Wd)
    rtol, atol = tolerances(dtype, 768)
    for batch in [1, 2, 3, 8, 17, 64]:
        X = rng.standard_normal((batch, 768)).astype(dtype)
        Y = sp.linear_forward(X, W, n_threads=n_threads)
        np.testing.assert_allclose(Y, reference(X, Wd, None)[0], rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_batch_strided_read_only_and_out(dtype, gather_max_batch, rng):
    gather_max_batch(4)
    Wd = _ragged_weight(rng, 50, 45, dtype)
    W = sp.CSRMatrix.from_dense(Wd)
    rtol, atol = tolerances(dtype, 45)
    for batch in [1, 2, 3, 4, 9, 33]:
        big = rng.standard_normal((2 * batch, 3 * 45)).astype(dtype)
        X = big[::2, 5:5 + 45]          # strided rows, offset start
        X.flags.writeable = False
        Yr = reference(np.ascontiguousarray(X), Wd, None)[0]
        out = sp.empty_aligned((batch, 50), dtype)
        Y = sp.linear_forward(X, W, out=out)
        assert Y is out
        np.testing.assert_allclose(out, Yr, rtol=rtol, atol=atol)
        Xc = big[:batch, :45]  # column view of contiguous rows (row stride 135)
        np.testing.assert_allclose(sp.linear_forward(Xc, W), reference(
            np.ascontiguousarray(Xc), Wd, None)[0], rtol=rtol, atol=atol)
    # a single vector (1-D input) is batch 1
    x = rng.standard_normal(45).astype(dtype)
    np.testing.assert_allclose(sp.linear_forward(x, W), reference(x[None], Wd, None)[0][0],
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("parts", [2, 3, 5, 8])
@pytest.mark.parametrize("align", [1, 16])
def test_work_split_is_ordered_complete_and_balanced(parts, align, rng):
    from sparseprop import _tasks

    for n, n_chunks in [(1, 1), (7, 3), (100, 1), (333, 4), (3072, 15)]:
        row_cost = rng.integers(0, 50, n) + 4
        cum = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(row_cost, out=cum[1:])
        bc, bi = _tasks.split_work(cum, parts, n_chunks, align)
        assert len(bc) == len(bi) == parts + 1
        assert (bc[0], bi[0]) == (0, 0) and (bc[-1], bi[-1]) == (n_chunks, 0)
        flat = bc * (n + 1) + bi
        assert np.all(np.diff(flat) >= 0), "pieces must follow each other"
        assert np.all((bi % align == 0) | (bi == n)) and np.all(bi <= n)
        # a piece's cost: whole chunks in between plus partial ones at its ends
        cost = (bc[1:] - bc[:-1]) * cum[-1] + cum[bi[1:]] - cum[bi[:-1]]
        assert cost.sum() == n_chunks * cum[-1]
        slack = (align + 1) * row_cost.max()
        assert np.all(np.abs(cost - n_chunks * cum[-1] / parts) <= slack)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [2, 3, 5])
def test_threads_share_chunks(dtype, n_threads, rng):
    # Work is split in equal shares of (batch chunk, row or column): a
    # thread's share may start or end inside a chunk, at any row (forward)
    # or column (backward).  Batches around the chunk sizes of every ISA.
    Wd = random_sparse_dense(rng, (211, 150), 0.6, dtype)
    for batch in [15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 130]:
        X = rng.standard_normal((batch, 150)).astype(dtype)
        dY = rng.standard_normal((batch, 211)).astype(dtype)
        bias = rng.standard_normal(211).astype(dtype)
        check_layer(X, Wd, dY, bias=bias, n_threads=n_threads)


_SMALL_TEAM_SCRIPT = """
import numpy as np, sparseprop as sp
from sparseprop import _config, _linear
rng = np.random.default_rng(5)
for sparsity, n_in in [(0.5, 200), (0.9, 700)]:
    Wd = rng.standard_normal((300, n_in)); Wd[rng.random(Wd.shape) < sparsity] = 0
    X = rng.standard_normal((150, n_in)); dY = rng.standard_normal((150, 300))
    W = sp.CSRMatrix.from_dense(Wd)
    Y = sp.linear_forward(X, W, n_threads=4)
    assert _config.last_team_size() == 1, _config.last_team_size()
    dX, dW = sp.linear_backward(X, W, dY, n_threads=4)
    assert _config.last_team_size() == 1
    rows = np.repeat(np.arange(300), np.diff(W.indptr))
    np.testing.assert_allclose(Y, X @ Wd.T, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dX, dY @ Wd, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dW, (dY.T @ X)[rows, W.indices], rtol=1e-10, atol=1e-9)
print("ok")
"""


def test_team_smaller_than_asked():
    # OpenMP may run a region with fewer threads than asked (here: a limit
    # of 1); the shares of the missing threads, their partial dW buffers and
    # their pieces of the value gather/scatter must then fall to the others.
    from helpers import run_python

    proc = run_python(["-c", _SMALL_TEAM_SCRIPT], env={"OMP_THREAD_LIMIT": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_rows_and_columns(dtype, rng):
    Wd = random_sparse_dense(rng, (40, 30), 0.5, dtype)
    Wd[::3] = 0       # empty output rows
    Wd[:, 1::4] = 0   # empty input columns
    Wd[:, -1] = 0
    X = rng.standard_normal((19, 30)).astype(dtype)
    dY = rng.standard_normal((19, 40)).astype(dtype)
    bias = rng.standard_normal(40).astype(dtype)
    Y, dX, _ = check_layer(X, Wd, dY, bias=bias)
    np.testing.assert_array_equal(Y[:, ::3], np.broadcast_to(bias[::3], (19, 14)))
    assert np.all(dX[:, 1::4] == 0) and np.all(dX[:, -1] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_batch_dims_and_1d_input(dtype, rng):
    Wd = random_sparse_dense(rng, (9, 6), 0.4, dtype)
    check_layer(rng.standard_normal((2, 3, 5, 6)).astype(dtype), Wd,
                rng.standard_normal((2, 3, 5, 9)).astype(dtype))
    Y, dX, _ = check_layer(rng.standard_normal(6).astype(dtype), Wd,
                           rng.standard_normal(9).astype(dtype))
    assert Y.shape == (9,) and dX.shape == (6,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_and_read_only_inputs(dtype, rng):
    Wd = random_sparse_dense(rng, (33, 20), 0.5, dtype)
    big = rng.standard_normal((80, 40)).astype(dtype)
    dbig = rng.standard_normal((80, 66)).astype(dtype)
    views = [
        (big[::2, :20], dbig[::2, :33]),            # row stride
        (big[:40, ::2], dbig[:40, ::2]),            # column stride (copied)
        (big[::-2, 5:25], dbig[::-2, 1:34]),        # negative row stride
        (np.asfortranarray(big[:40, :20]), np.asfortranarray(dbig[:40, :33])),
        (np.broadcast_to(big[0, :20], (17, 20)), np.broadcast_to(dbig[0, :33], (17, 33))),
    ]
    for X, dY in views:
        check_layer(X, Wd, dY)
    X, dY = big[:40, :20].copy(), dbig[:40, :33].copy()
    X.flags.writeable = False
    dY.flags.writeable = False
    check_layer(X, Wd, dY)


@pytest.mark.parametrize("dtype", DTYPES)
def test_csc_weight_gives_gradients_in_its_own_order(dtype, rng):
    Wd = random_sparse_dense(rng, (45, 28), 0.6, dtype)
    X = rng.standard_normal((21, 28)).astype(dtype)
    dY = rng.standard_normal((21, 45)).astype(dtype)
    C = sp.CSCMatrix.from_dense(Wd)
    _, _, dW_csc = check_layer(X, Wd, dY, W=C)
    _, dW_csr = sp.linear_backward(X, sp.CSRMatrix.from_dense(Wd), dY)
    np.testing.assert_allclose(C.to_csr().data, sp.CSRMatrix.from_dense(Wd).data)
    perm = C._transposed_structure()[0]
    np.testing.assert_allclose(dW_csc[perm], dW_csr, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_skipping_the_input_gradient(dtype, rng):
    Wd = random_sparse_dense(rng, (60, 50), 0.8, dtype)
    X = rng.standard_normal((70, 50)).astype(dtype)
    dY = rng.standard_normal((70, 60)).astype(dtype)
    _, _, dW = check_layer(X, Wd, dY, need_input_grad=False)
    _, dW2 = sp.linear_backward(X, sp.CSRMatrix.from_dense(Wd), dY)
    np.testing.assert_array_equal(dW, dW2)


def test_nan_and_inf_meet_only_stored_weights(rng):
    Wd = random_sparse_dense(rng, (12, 10), 0.5)
    Wd[:, 3] = 0
    Wd[0, 3] = 1.0       # only output row 0 reads input column 3
    Wd[1, 4] = 0.0
    X = rng.standard_normal((9, 10)).astype(np.float32)
    X[2, 3] = np.nan
    X[5, 4] = np.inf
    dY = rng.standard_normal((9, 12)).astype(np.float32)
    Y, dX, dW = check_layer(X, Wd, dY)
    assert np.isnan(Y[2, 0]) and np.isfinite(np.delete(Y[2], 0)).all()
    # an explicitly stored zero still multiplies: 0 * inf = nan, like dense math
    W = sp.CSRMatrix(np.array([0.0], np.float32), [0], [0, 1], (1, 1))
    assert np.isnan(sp.linear_forward(np.array([[np.inf]], np.float32), W)[0, 0])


def test_zero_weight_gives_bias_and_zero_grads(rng):
    W = sp.CSRMatrix.from_dense(np.zeros((5, 4), np.float32))
    X = rng.standard_normal((3, 4)).astype(np.float32)
    bias = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(sp.linear_forward(X, W, bias), np.tile(bias, (3, 1)))
    dX, dW = sp.linear_backward(X, W, np.ones((3, 5), np.float32))
    assert dW.shape == (0,) and np.all(dX == 0)


def test_results_are_deterministic(rng):
    Wd = random_sparse_dense(rng, (400, 300), 0.9)
    X = rng.standard_normal((333, 300)).astype(np.float32)
    dY = rng.standard_normal((333, 400)).astype(np.float32)
    W = sp.CSRMatrix.from_dense(Wd)
    for T in (1, 2):
        first = sp.linear_backward(X, W, dY, n_threads=T)
        y0 = sp.linear_forward(X, W, n_threads=T)
        for _ in range(3):
            again = sp.linear_backward(X, W, dY, n_threads=T)
            np.testing.assert_array_equal(again[0], first[0])
            np.testing.assert_array_equal(again[1], first[1])
            np.testing.assert_array_equal(sp.linear_forward(X, W, n_threads=T), y0)


def test_outputs_are_fresh_arrays(rng):
    W = sp.CSRMatrix.from_dense(random_sparse_dense(rng, (20, 10), 0.5))
    X = rng.standard_normal((30, 10)).astype(np.float32)
    dY = rng.standard_normal((30, 20)).astype(np.float32)
    Y1 = sp.linear_forward(X, W)
    Y2 = sp.linear_forward(X, W)
    assert not np.shares_memory(Y1, Y2)
    dX1, dW1 = sp.linear_backward(X, W, dY)
    dX2, dW2 = sp.linear_backward(X, W, dY)
    assert not np.shares_memory(dX1, dX2) and not np.shares_memory(dW1, dW2)
    assert not np.shares_memory(dW1, W.data)


# ---------------------------------------------------------------- bad input

def _layer(dtype=np.float32):
    return sp.CSRMatrix.from_dense(np.eye(4, 3, dtype=dtype))


@pytest.mark.parametrize("call,exc,msg", [
    (lambda: sp.linear_forward(np.ones((2, 3), np.float32), np.eye(4, 3, dtype=np.float32)),
     TypeError, "W must be a sparseprop.CSRMatrix or CSCMatrix; got ndarray"),
    (lambda: sp.linear_forward(np.ones((2, 5), np.float32), _layer()),
     ValueError, r"X has shape \(2, 5\); W \(shape \(4, 3\)\) expects \(..., 3\)"),
    (lambda: sp.linear_forward(np.ones((2, 3), np.float64), _layer()),
     TypeError, "X has dtype float64 but the weight has dtype float32"),
    (lambda: sp.linear_forward(np.ones((2, 3), np.int32), _layer()),
     TypeError, "X must have dtype float32 .like the weight.; got int32"),
    (lambda: sp.linear_forward(np.float32(1.0), _layer()),
     ValueError, r"X has shape \(\); W"),
    (lambda: sp.linear_forward(np.ones((2, 3), np.float32), _layer(), np.ones(3, np.float32)),
     ValueError, r"bias must have shape \(4,\) \(out_features\); got \(3,\)"),
    (lambda: sp.linear_forward(np.ones((2, 3), np.float32), _layer(), np.ones(4)),
     TypeError, "bias has dtype float64 but the weight has dtype float32"),
    (lambda: sp.linear_backward(np.ones((2, 3), np.float32), _layer(), np.ones((2, 3), np.float32)),
     ValueError, r"dY has shape \(2, 3\); expected \(2, 4\)"),
    (lambda: sp.linear_backward(np.ones((2, 3), np.float32), _layer(), np.ones((2, 4))),
     TypeError, "dY has dtype float64 but the weight has dtype float32"),
    (lambda: sp.linear_forward(np.ones((2, 3), np.float32), _layer(), n_threads=0),
     ValueError, "n_threads must be a positive integer or None; got 0"),
    (lambda: sp.linear_backward(np.ones((2, 3), np.float32), _layer(), np.ones((2, 4), np.float32),
                                n_threads=-2),
     ValueError, "n_threads must be a positive integer or None; got -2"),
])
def test_bad_input_is_a_clear_error(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_torch_tensors_are_pointed_to_the_facade():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="X is a torch.Tensor; the NumPy API takes arrays"):
        sp.linear_forward(torch.ones(2, 3), _layer())
