"""Property-based tests (hypothesis): random shapes, sparsities, dtypes and
memory layouts against dense references.

Two profiles: "ci" (default, a few dozen examples per property, seconds) and
"long" for fuzzing outside CI:

    HYPOTHESIS_PROFILE=long pytest tests/test_properties.py
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparseprop as sp

from helpers import tolerances

settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

LAYOUTS = ["contiguous", "row_strided", "fortran", "reversed", "column_strided", "read_only"]


def lay_out(A, layout, rng):
    """The values of A (2-D) in the requested memory layout."""
    if layout == "row_strided":
        big = np.empty((2 * A.shape[0], A.shape[1] + 3), A.dtype)
        big[::2, 1:A.shape[1] + 1] = A
        return big[::2, 1:A.shape[1] + 1]
    if layout == "fortran":
        return np.asfortranarray(A)
    if layout == "reversed":
        return A[::-1].copy()[::-1]
    if layout == "column_strided":
        big = np.empty((A.shape[0], 2 * A.shape[1]), A.dtype)
        big[:, ::2] = A
        return big[:, ::2]
    if layout == "read_only":
        B = A.copy()
        B.flags.writeable = False
        return B
    return np.ascontiguousarray(A)


@st.composite
def linear_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = draw(st.integers(0, 70))
    n_in = draw(st.integers(0, 40))
    n_out = draw(st.integers(0, 40))
    sparsity = draw(st.sampled_from([0.0, 0.3, 0.7, 0.9, 0.97, 1.0]))
    return dict(
        dtype=dtype, batch=batch, n_in=n_in, n_out=n_out, sparsity=sparsity,
        layout=draw(st.sampled_from(LAYOUTS)),
        fmt=draw(st.sampled_from(["csr", "csc"])),
        threads=draw(st.sampled_from([1, 2, 3])),
        bias=draw(st.booleans()),
        need_dx=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(linear_cases())
def test_linear_matches_dense(case):
    rng = np.random.default_rng(case["seed"])
    dt = case["dtype"]
    B, M, N = case["batch"], case["n_in"], case["n_out"]
    Wd = rng.standard_normal((N, M)).astype(dt)
    Wd[rng.random((N, M)) < case["sparsity"]] = 0
    W = (sp.CSRMatrix if case["fmt"] == "csr" else sp.CSCMatrix).from_dense(Wd)
    X = lay_out(rng.standard_normal((B, M)).astype(dt), case["layout"], rng)
    dY = lay_out(rng.standard_normal((B, N)).astype(dt), case["layout"], rng)
    bias = rng.standard_normal(N).astype(dt) if case["bias"] else None
    T = case["threads"]

    Y = sp.linear_forward(X, W, bias, n_threads=T)
    dX, dW = sp.linear_backward(X, W, dY, case["need_dx"], n_threads=T)

    X64, dY64, W64 = X.astype(np.float64), dY.astype(np.float64), Wd.astype(np.float64)
    Yr = X64 @ W64.T + (bias if bias is not None else 0)
    rtol, atol = tolerances(dt, M)
    np.testing.assert_allclose(Y, Yr, rtol=rtol, atol=atol)
    rtol, atol = tolerances(dt, N)
    if case["need_dx"]:
        np.testing.assert_allclose(dX, dY64 @ W64, rtol=rtol, atol=atol)
    else:
        assert dX is None
    full = dY64.T @ X64
    if case["fmt"] == "csr":
        rows = np.repeat(np.arange(N), np.diff(W.indptr))
        ref = full[rows, W.indices]
    else:
        cols = np.repeat(np.arange(M), np.diff(W.indptr))
        ref = full[W.indices, cols]
    rtol, atol = tolerances(dt, B)
    np.testing.assert_allclose(dW, ref, rtol=rtol, atol=atol)


@st.composite
def raw_structures(draw):
    """Random raw (indptr, indices) arrays, valid or not."""
    n_rows = draw(st.integers(0, 6))
    n_cols = draw(st.integers(0, 6))
    indptr = draw(st.lists(st.integers(-2, 8), min_size=0, max_size=n_rows + 2))
    indices = draw(st.lists(st.integers(-2, 8), min_size=0, max_size=9))
    return n_rows, n_cols, indptr, indices


@given(raw_structures())
def test_raw_csr_is_valid_or_rejected_clearly(case):
    n_rows, n_cols, indptr, indices = case
    data = np.ones(len(indices), np.float32)
    try:
        W = sp.CSRMatrix(data, indices, indptr, (n_rows, n_cols))
    except ValueError as e:
        assert "invalid CSRMatrix structure" in str(e) or "indptr" in str(e)
        return
    # accepted: it must be exactly what scipy accepts as canonical CSR, and usable
    import scipy.sparse as sps
    S = sps.csr_array((data, np.array(indices, np.int64), np.array(indptr, np.int64)),
                      shape=(n_rows, n_cols))
    assert S.has_canonical_format
    np.testing.assert_array_equal(W.to_dense(), S.toarray())
    X = np.ones((3, n_cols), np.float32)
    np.testing.assert_allclose(sp.linear_forward(X, W), X @ S.toarray().T)
