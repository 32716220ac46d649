"""CSRMatrix / CSCMatrix: construction, conversions, validation, ownership."""
import copy
import pickle

import numpy as np
import pytest
import scipy.sparse as sps

from sparseprop import CSCMatrix, CSRMatrix

from helpers import random_sparse_dense

FORMATS = [CSRMatrix, CSCMatrix]


@pytest.mark.parametrize("cls", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,sparsity", [((5, 7), 0.5), ((1, 1), 0.0), ((0, 3), 0.5),
                                            ((3, 0), 0.5), ((6, 4), 1.0), ((9, 33), 0.9)])
def test_dense_round_trip(cls, dtype, shape, sparsity, rng):
    A = random_sparse_dense(rng, shape, sparsity, dtype)
    M = cls.from_dense(A)
    assert M.shape == shape and M.dtype == dtype
    assert M.nnz == np.count_nonzero(A)
    np.testing.assert_array_equal(M.to_dense(), A)
    assert M.indices.dtype == np.int32 and M.indptr.dtype == np.int64


@pytest.mark.parametrize("cls", FORMATS)
def test_scipy_round_trip_keeps_explicit_zeros(cls, rng):
    A = random_sparse_dense(rng, (8, 6), 0.6)
    S = sps.csr_array(A)
    S.data[0] = 0.0  # an explicitly stored zero is a trainable slot: keep it
    M = cls.from_scipy(S)
    assert M.nnz == S.nnz
    back = M.to_scipy()
    np.testing.assert_array_equal(back.toarray(), S.toarray())
    assert back.nnz == S.nnz


def test_scipy_duplicates_are_summed_and_indices_sorted():
    coo = sps.coo_array((np.array([1.0, 2.0, 3.0], np.float32), ([0, 0, 1], [2, 2, 0])),
                        shape=(2, 3))
    M = CSRMatrix.from_scipy(coo)
    np.testing.assert_array_equal(M.to_dense(), [[0, 0, 3], [3, 0, 0]])
    unsorted = sps.csr_array((np.array([1.0, 2.0]), np.array([2, 0]), np.array([0, 2])),
                             shape=(1, 3))
    np.testing.assert_array_equal(CSRMatrix.from_scipy(unsorted).indices, [0, 2])


@pytest.mark.parametrize("cls", FORMATS)
def test_torch_round_trips(cls, rng):
    torch = pytest.importorskip("torch")
    A = random_sparse_dense(rng, (7, 5), 0.5)
    for t in (torch.from_numpy(A), torch.from_numpy(A).to_sparse_csr(),
              torch.from_numpy(A).to_sparse_csc(), torch.from_numpy(A).to_sparse()):
        M = cls.from_torch(t)
        np.testing.assert_array_equal(M.to_dense(), A)
    np.testing.assert_array_equal(cls.from_dense(A).to_torch().to_dense().numpy(), A)


def test_torch_tensor_requiring_grad_is_accepted():
    torch = pytest.importorskip("torch")
    t = torch.ones(2, 2, requires_grad=True)
    assert CSRMatrix.from_torch(t).nnz == 4


def test_csr_csc_conversions(rng):
    A = random_sparse_dense(rng, (11, 13), 0.7)
    R = CSRMatrix.from_dense(A)
    C = R.to_csc()
    assert isinstance(C, CSCMatrix)
    np.testing.assert_array_equal(C.to_dense(), A)
    np.testing.assert_array_equal(C.to_csr().to_dense(), A)
    np.testing.assert_array_equal(C.indices, sps.csc_array(A).indices)
    assert R.to_csr() is R and C.to_csc() is C


def test_structure_is_read_only_and_values_writable(rng):
    M = CSRMatrix.from_dense(random_sparse_dense(rng, (4, 4), 0.3))
    with pytest.raises(ValueError):
        M.indices[0] = 3
    with pytest.raises(ValueError):
        M.indptr[1] = 0
    M.data[:] = 2.0
    assert np.all(M.to_dense()[M.to_dense() != 0] == 2.0)


def test_constructor_copies_its_inputs():
    data = np.array([1.0, 2.0], np.float32)
    indices = np.array([0, 1])
    M = CSRMatrix(data, indices, [0, 1, 2], (2, 2))
    data[0] = 5.0
    indices[0] = 1
    np.testing.assert_array_equal(M.to_dense(), [[1, 0], [0, 2]])


def test_with_data_shares_structure_and_memory(rng):
    M = CSRMatrix.from_dense(random_sparse_dense(rng, (5, 5), 0.5))
    v = np.arange(M.nnz, dtype=np.float32)
    M2 = M.with_data(v)
    assert M2.indices is M.indices
    v[0] = 100.0
    assert M2.data[0] == 100.0
    with pytest.raises(ValueError, match=rf"values must have shape \({M.nnz},\)"):
        M.with_data(np.zeros(M.nnz + 1, np.float32))
    with pytest.raises(TypeError, match="values must have dtype float32 or float64; got int64"):
        M.with_data(np.zeros(M.nnz, np.int64))


@pytest.mark.parametrize("cls", FORMATS)
def test_pickle_and_copy(cls, rng):
    M = cls.from_dense(random_sparse_dense(rng, (6, 9), 0.5, np.float64))
    for M2 in (pickle.loads(pickle.dumps(M)), copy.deepcopy(M), M.copy()):
        assert type(M2) is cls
        np.testing.assert_array_equal(M2.to_dense(), M.to_dense())
        assert M2.data is not M.data


def test_astype_and_repr(rng):
    M = CSRMatrix.from_dense(random_sparse_dense(rng, (10, 10), 0.9))
    assert M.astype(np.float64).dtype == np.float64
    r = repr(M)
    assert "CSRMatrix 10x10 float32" in r and f"nnz={M.nnz}" in r
    assert M.sparsity == pytest.approx(1 - M.nnz / 100)


# ---------------------------------------------------------------- bad input

BAD_RAW = [
    # (data, indices, indptr, shape, exception, message fragment)
    ([1.0], [0], [0, 1], (2, 2), ValueError, "indptr must have length n_rows + 1 = 3; got 2"),
    ([1.0], [0], [1, 1, 1], (2, 2), ValueError, "indptr[0] must be 0; got 1"),
    ([1.0, 1.0], [0, 1], [0, 2, 1], (2, 2), ValueError, "indptr must be non-decreasing"),
    ([1.0], [0], [0, 1, 2], (2, 2), ValueError, "indptr[-1] (=2) must equal"),
    ([1.0], [5], [0, 1, 1], (2, 2), ValueError, "indices[0]=5 (in row 0) is out of range"),
    ([1.0], [-1], [0, 1, 1], (2, 2), ValueError, "indices[0]=-1 (in row 0) is out of range"),
    ([1.0, 1.0], [1, 0], [0, 2, 2], (2, 2), ValueError, "must be sorted and free of duplicates"),
    ([1.0, 1.0], [1, 1], [0, 2, 2], (2, 2), ValueError, "got 1 then 1 at positions 0, 1"),
    ([1.0, 1.0], [0], [0, 1, 1], (2, 2), ValueError, "data and indices must have the same length"),
    ([1, 2], [0, 1], [0, 1, 2], (2, 2), TypeError, "data must have dtype float32 or float64"),
    ([1.0], [0.5], [0, 1, 1], (2, 2), TypeError, "indices must hold integers"),
    ([1.0], [0], [0, 1, 1], (2, -2), ValueError, "shape must be a pair of non-negative"),
    ([1.0], [0], [0, 1, 1], (2,), ValueError, "shape must be a pair of non-negative"),
    ([1.0], [0], [0, 1, 1], (2, 2**31), ValueError, "is too large"),
]


@pytest.mark.parametrize("data,indices,indptr,shape,exc,msg", BAD_RAW)
def test_malformed_raw_arrays_are_rejected(data, indices, indptr, shape, exc, msg):
    with pytest.raises(exc, match=_literal(msg)):
        CSRMatrix(data, indices, indptr, shape)


def test_csc_errors_speak_of_columns():
    with pytest.raises(ValueError, match=_literal("indices[0]=3 (in column 0) is out of range "
                                                  "for 2 rows")):
        CSCMatrix([1.0], [3], [0, 1, 1], (2, 2))


@pytest.mark.parametrize("cls", FORMATS)
def test_bad_dense_inputs(cls):
    with pytest.raises(ValueError, match="array must be 2-D; got shape"):
        cls.from_dense(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="array must have dtype float32 or float64; got int64"):
        cls.from_dense(np.zeros((2, 2), np.int64))
    assert cls.from_dense(np.eye(2, dtype=np.int64), dtype=np.float32).nnz == 2
    with pytest.raises(TypeError, match="dtype must be float32 or float64; got float16"):
        cls.from_dense(np.eye(2), dtype=np.float16)
    with pytest.raises(TypeError, match="scipy.sparse matrix or array; got ndarray"):
        cls.from_scipy(np.eye(2))


def test_torch_bad_inputs():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor; got ndarray"):
        CSRMatrix.from_torch(np.eye(2))
    with pytest.raises(ValueError, match="tensor must be 2-D"):
        CSRMatrix.from_torch(torch.ones(3))
    with pytest.raises(TypeError, match="float32 or float64; got int64"):
        CSRMatrix.from_torch(torch.ones(2, 2, dtype=torch.int64))


def test_nan_is_a_stored_value():
    A = np.array([[np.nan, 0.0], [0.0, 1.0]], np.float32)
    M = CSRMatrix.from_dense(A)
    assert M.nnz == 2 and np.isnan(M.data[0])


def _literal(msg):
    import re
    return re.escape(msg)


def test_same_contents_is_array_equal():
    # the torch structure cache's per-call comparison (a memcmp when it can)
    from sparseprop._formats import same_contents

    a = np.arange(1000, dtype=np.int32)
    assert same_contents(a, a.copy())
    b = a.copy()
    b[999] = -1
    assert not same_contents(a, b)
    b = a.copy()
    b[0] = 7
    assert not same_contents(a, b)
    assert not same_contents(a, a[:999])                 # shape
    assert same_contents(a.astype(np.int64), a)          # dtypes differ: array_equal
    assert same_contents(a[::2], a[::2].copy())          # strided: array_equal
    assert not same_contents(a[::2], a[1::2])
    assert same_contents(np.zeros(0, np.int64), np.zeros(0, np.int64))
