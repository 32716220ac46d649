"""Compressed sparse row/column matrices: the weight formats of sparse linear layers.

Both classes hold float32 or float64 values with int32 minor indices and
int64 offsets.  The structure (``indptr``, ``indices``) is validated once, on
construction, and is immutable afterwards (the arrays are exposed read-only);
the values (``data``) may be updated in place, which is what training does.
"""
import numpy as np

cimport cython
cimport numpy as cnp
from libc.stdint cimport int64_t
from libc.string cimport memcmp

from sparseprop._checks import check_scipy_structure, frozen

cnp.import_array()

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INT32_MAX = np.iinfo(np.int32).max


def _float_dtype(dtype, name):
    """Normalise a requested value dtype; only float32 and float64 exist."""
    dt = np.dtype(dtype)
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64; got {dt}")
    return dt


def _as_values(values, name, dtype=None, copy=True):
    """Values as a C-contiguous 1-D float32/float64 array."""
    arr = np.asarray(values)
    if dtype is None:
        if arr.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{name} must have dtype float32 or float64; got {arr.dtype} "
                "(pass dtype= to convert)"
            )
        dt = arr.dtype
    else:
        dt = _float_dtype(dtype, "dtype")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    out = np.array(arr, dtype=dt, order="C", copy=True if copy else None)
    return out if out.flags.aligned else out.copy()  # the kernels need aligned values


def _as_shape(shape):
    try:
        shape = tuple(int(s.__index__()) for s in shape)
    except (TypeError, AttributeError):
        raise TypeError(f"shape must be a pair of non-negative integers; got {shape!r}") from None
    if len(shape) != 2 or shape[0] < 0 or shape[1] < 0:
        raise ValueError(f"shape must be a pair of non-negative integers; got {shape!r}")
    if shape[0] > _INT32_MAX or shape[1] > _INT32_MAX:
        raise ValueError(
            f"shape {shape} is too large: each dimension must be at most {_INT32_MAX} "
            "(indices are int32)"
        )
    return shape


def _as_index_array(arr, name):
    a = np.asarray(arr)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers; got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must hold values that fit in int64; got {a.max()}")
    return a.astype(np.int64, copy=False)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef object _check_structure(const int64_t[::1] indptr, const int64_t[::1] indices,
                             Py_ssize_t n_major, Py_ssize_t n_minor,
                             str major, str minor):
    """Return None if (indptr, indices) is a valid compressed structure, else a
    message naming the first problem found."""
    cdef Py_ssize_t i, p, nnz = indices.shape[0]
    cdef int64_t prev, cur
    if indptr.shape[0] != n_major + 1:
        return (f"indptr must have length n_{major}s + 1 = {n_major + 1}; "
                f"got {indptr.shape[0]}")
    if indptr[0] != 0:
        return f"indptr[0] must be 0; got {indptr[0]}"
    for i in range(n_major):
        if indptr[i + 1] < indptr[i]:
            return (f"indptr must be non-decreasing; got indptr[{i}]={indptr[i]} > "
                    f"indptr[{i + 1}]={indptr[i + 1]}")
    if indptr[n_major] != nnz:
        return (f"indptr[-1] (={indptr[n_major]}) must equal the number of stored "
                f"values (len(indices)={nnz})")
    for i in range(n_major):
        prev = -1
        for p in range(indptr[i], indptr[i + 1]):
            cur = indices[p]
            if cur < 0 or cur >= n_minor:
                return (f"indices[{p}]={cur} (in {major} {i}) is out of range for "
                        f"{n_minor} {minor}s")
            if cur <= prev:
                return (f"indices of {major} {i} must be sorted and free of duplicates; "
                        f"got {prev} then {cur} at positions {p - 1}, {p}")
            prev = cur
    return None


def _csr_problem(indptr, indices, shape):
    """None if int64 (indptr, indices) is a valid CSR structure of ``shape``,
    else a message naming the first problem (the check CSRMatrix runs)."""
    return _check_structure(np.ascontiguousarray(indptr, dtype=np.int64),
                            np.ascontiguousarray(indices, dtype=np.int64),
                            shape[0], shape[1], "row", "column")


cdef class _CompressedMatrix:
    """Common machinery of CSRMatrix and CSCMatrix (not public)."""

    # 0: rows are compressed (CSR), 1: columns are (CSC)
    _major_axis = 0

    def __init__(self, data, indices, indptr, shape, *, dtype=None, copy=True):
        shape = _as_shape(shape)
        values = _as_values(data, "data", dtype=dtype, copy=copy)
        idx = _as_index_array(indices, "indices")
        ptr = _as_index_array(indptr, "indptr")
        if values.shape[0] != idx.shape[0]:
            raise ValueError(
                f"data and indices must have the same length; got {values.shape[0]} "
                f"and {idx.shape[0]}"
            )
        major, minor = ("row", "column") if self._major_axis == 0 else ("column", "row")
        n_major, n_minor = shape[self._major_axis], shape[1 - self._major_axis]
        problem = _check_structure(np.ascontiguousarray(ptr), np.ascontiguousarray(idx),
                                   n_major, n_minor, major, minor)
        if problem is not None:
            raise ValueError(f"invalid {type(self).__name__} structure: {problem}")
        self._init_checked(values, idx.astype(np.int32), ptr.copy(), shape, {})

    cdef _init_checked(self, values, indices, indptr, tuple shape, cache):
        # Trusted path: the structure is already known to be valid.  It is kept
        # in immutable memory (frozen): a read-only flag alone can be set back.
        self._data = values
        self._indices = frozen(indices)
        self._indptr = frozen(indptr)
        self.shape = shape
        self._cache = cache

    @classmethod
    def _from_checked(cls, values, indices, indptr, shape, cache=None):
        """Build without re-validating (internal: the caller guarantees validity)."""
        cdef _CompressedMatrix self = cls.__new__(cls)
        self._init_checked(values, indices, indptr, tuple(shape), {} if cache is None else cache)
        return self

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_dense(cls, array, *, dtype=None):
        """Build from a dense 2-D array, storing its nonzero entries (NaN counts as nonzero)."""
        A = np.asarray(array)
        if A.ndim != 2:
            raise ValueError(f"array must be 2-D; got shape {A.shape}")
        if dtype is None and A.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"array must have dtype float32 or float64; got {A.dtype} "
                            "(pass dtype= to convert)")
        dt = A.dtype if dtype is None else _float_dtype(dtype, "dtype")
        _as_shape(A.shape)
        if cls._major_axis == 1:
            A = A.T
        mask = A != 0
        counts = mask.sum(axis=1, dtype=np.int64)
        indptr = np.zeros(A.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        rows, cols = np.nonzero(mask)  # row-major order: sorted within each row
        values = np.ascontiguousarray(A[rows, cols], dtype=dt)
        shape = A.shape if cls._major_axis == 0 else A.shape[::-1]
        return cls._from_checked(values, cols.astype(np.int32), indptr, shape)

    @classmethod
    def from_scipy(cls, matrix, *, dtype=None):
        """Build from any scipy.sparse matrix or array (duplicates are summed,
        explicitly stored zeros are kept)."""
        import scipy.sparse as sps
        if not sps.issparse(matrix):
            raise TypeError(f"matrix must be a scipy.sparse matrix or array; got "
                            f"{type(matrix).__name__}")
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-D; got shape {matrix.shape}")
        check_scipy_structure(matrix)  # before SciPy's C++ conversions index with it
        S = matrix.tocsr() if cls._major_axis == 0 else matrix.tocsc()
        if S is matrix:
            S = S.copy()
        S.sum_duplicates()  # also sorts indices
        return cls(S.data, S.indices, S.indptr, S.shape, dtype=dtype, copy=False)

    @classmethod
    def from_torch(cls, tensor, *, dtype=None):
        """Build from a dense (strided) torch tensor or a sparse CSR/CSC/COO one.

        The tensor must live on the CPU; autograd history is dropped.
        """
        import torch
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor must be a torch.Tensor; got {type(tensor).__name__}")
        if tensor.device.type != "cpu":
            raise ValueError(f"tensor is on {tensor.device}; move it to the CPU first (.cpu())")
        t = tensor.detach()
        if t.dim() != 2:
            raise ValueError(f"tensor must be 2-D; got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float32, torch.float64):
            # bfloat16, float16, the float8 kinds: convert here (several have no
            # NumPy dtype) or refuse; so are complex32 and the quantized kinds
            if t.is_floating_point() and dtype is not None:
                t = t.to(torch.float64)
            elif t.is_floating_point() or t.is_complex() or t.is_quantized:
                raise TypeError(f"tensor must have dtype float32 or float64; got {t.dtype}"
                                + (" (pass dtype= to convert a floating-point tensor)"
                                   if t.is_floating_point() else ""))
        if t.layout == torch.strided:
            return cls.from_dense(t.numpy(), dtype=dtype)
        want = torch.sparse_csr if cls._major_axis == 0 else torch.sparse_csc
        if t.layout == torch.sparse_coo:
            t = t.coalesce()
        if t.layout != want:
            t = t.to_sparse_csr() if cls._major_axis == 0 else t.to_sparse_csc()
        if cls._major_axis == 0:
            ptr, idx = t.crow_indices(), t.col_indices()
        else:
            ptr, idx = t.ccol_indices(), t.row_indices()
        return cls(t.values().numpy(), idx.numpy(), ptr.numpy(), tuple(t.shape), dtype=dtype)

    # ------------------------------------------------------------ attributes
    @property
    def data(self):
        """(nnz,) values; writable - updating it in place updates the matrix."""
        return self._data

    @property
    def indices(self):
        """(nnz,) int32 minor indices (read-only view)."""
        return self._indices

    @property
    def indptr(self):
        """(n_major + 1,) int64 offsets (read-only view)."""
        return self._indptr

    @property
    def nnz(self):
        """Number of stored values (explicit zeros included: they are trainable slots)."""
        return int(self._indices.shape[0])

    @property
    def dtype(self):
        """Value dtype, float32 or float64."""
        return self._data.dtype

    @property
    def density(self):
        """nnz / (rows * cols); 0.0 for an empty shape."""
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    @property
    def sparsity(self):
        """1 - density."""
        return 1.0 - self.density

    def __repr__(self):
        return (f"<{type(self).__name__} {self.shape[0]}x{self.shape[1]} {self.dtype}, "
                f"nnz={self.nnz} ({100 * self.sparsity:.2f}% sparse)>")

    def __reduce__(self):
        return (type(self), (self._data, self._indices, self._indptr, self.shape))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    # ------------------------------------------------------------ values
    def with_data(self, values):
        """A matrix with this structure and new values, built in O(1).

        The structure is shared (and so are cached kernel plans); ``values``
        is used without a copy when it is a C-contiguous, aligned
        float32/float64 array of length nnz, so later in-place updates of it
        are seen by the matrix.
        """
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.shape[0] != self.nnz:
            raise ValueError(f"values must have shape ({self.nnz},); got {arr.shape}")
        if arr.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"values must have dtype float32 or float64; got {arr.dtype}")
        arr = np.require(arr, requirements="CA")
        return type(self)._from_checked(arr, self._indices, self._indptr, self.shape, self._cache)

    def copy(self):
        """A deep copy of the values (the immutable structure is shared)."""
        return type(self)._from_checked(self._data.copy(), self._indices, self._indptr,
                                        self.shape, self._cache)

    def astype(self, dtype):
        """The same matrix with values converted to ``dtype`` (float32/float64)."""
        dt = _float_dtype(dtype, "dtype")
        return type(self)._from_checked(self._data.astype(dt), self._indices, self._indptr,
                                        self.shape, self._cache)

    # ------------------------------------------------------------ conversions
    def to_dense(self):
        """Dense ndarray of ``shape`` with zeros where nothing is stored."""
        out = np.zeros(self.shape, dtype=self.dtype)
        major = np.repeat(np.arange(self._indptr.shape[0] - 1), np.diff(self._indptr))
        if self._major_axis == 0:
            out[major, self._indices] = self._data
        else:
            out[self._indices, major] = self._data
        return out

    def _transposed_structure(self):
        """(perm, ptr, idx): the same nonzeros compressed along the other axis.

        ``perm[k]`` is the position in this matrix of the k-th value in the
        other order, so ``other.data = self.data[perm]``.  Cached per structure.
        """
        cached = self._cache.get("transposed")
        if cached is None:
            n_other = self.shape[1 - self._major_axis]
            perm = np.argsort(self._indices, kind="stable").astype(np.int64)
            counts = np.bincount(self._indices, minlength=n_other)
            ptr = np.zeros(n_other + 1, dtype=np.int64)
            np.cumsum(counts, out=ptr[1:])
            major = np.repeat(np.arange(self._indptr.shape[0] - 1, dtype=np.int32),
                              np.diff(self._indptr))
            idx = major[perm]
            for a in (perm, ptr, idx):
                a.flags.writeable = False
            cached = (perm, ptr, idx)
            self._cache["transposed"] = cached
        return cached


cdef class CSRMatrix(_CompressedMatrix):
    """A sparse matrix in compressed sparse row format.

    Parameters
    ----------
    data : array_like, shape (nnz,)
        Stored values, float32 or float64 (or anything, with ``dtype=``).
    indices : array_like of int, shape (nnz,)
        Column of each value; within a row sorted, without duplicates.
    indptr : array_like of int, shape (n_rows + 1,)
        Row ``i`` holds ``data[indptr[i]:indptr[i+1]]``.
    shape : (int, int)
        ``(n_rows, n_cols)``.
    dtype : float32 or float64, optional
        Convert the values to this dtype.
    copy : bool, default True
        Copy ``data`` even when no conversion is needed.

    Raises
    ------
    ValueError
        If the structure is malformed (lengths, ranges, order, duplicates).
    TypeError
        If a dtype is not supported.

    Notes
    -----
    As the weight of a linear layer, a CSRMatrix has shape
    ``(out_features, in_features)`` like ``torch.nn.Linear.weight``.
    Explicitly stored zeros are kept: they are trainable slots.
    """

    _major_axis = 0

    def to_scipy(self):
        """A ``scipy.sparse.csr_array`` with copies of the values and structure."""
        import scipy.sparse as sps
        return sps.csr_array((self._data.copy(), self._indices.copy(), self._indptr.copy()),
                             shape=self.shape)

    def to_torch(self):
        """A ``torch.sparse_csr_tensor`` (int64 indices) with a copy of the values."""
        import torch
        return torch.sparse_csr_tensor(torch.from_numpy(self._indptr.copy()),
                                       torch.from_numpy(self._indices.astype(np.int64)),
                                       torch.from_numpy(self._data.copy()), size=self.shape)

    def to_csr(self):
        """This matrix (already CSR)."""
        return self

    def to_csc(self):
        """The same matrix in CSC format (values copied into column order)."""
        perm, ptr, idx = self._transposed_structure()
        return CSCMatrix._from_checked(np.ascontiguousarray(self._data[perm]), idx, ptr,
                                       self.shape)


cdef class CSCMatrix(_CompressedMatrix):
    """A sparse matrix in compressed sparse column format.

    Same parameters as :class:`CSRMatrix` with the roles of rows and columns
    exchanged: ``indices`` holds row numbers, column ``j`` holds
    ``data[indptr[j]:indptr[j+1]]``.  A linear layer accepts either format.
    """

    _major_axis = 1

    def to_scipy(self):
        """A ``scipy.sparse.csc_array`` with copies of the values and structure."""
        import scipy.sparse as sps
        return sps.csc_array((self._data.copy(), self._indices.copy(), self._indptr.copy()),
                             shape=self.shape)

    def to_torch(self):
        """A ``torch.sparse_csc_tensor`` (int64 indices) with a copy of the values."""
        import torch
        return torch.sparse_csc_tensor(torch.from_numpy(self._indptr.copy()),
                                       torch.from_numpy(self._indices.astype(np.int64)),
                                       torch.from_numpy(self._data.copy()), size=self.shape)

    def to_csc(self):
        """This matrix (already CSC)."""
        return self

    def to_csr(self):
        """The same matrix in CSR format (values copied into row order)."""
        perm, ptr, idx = self._transposed_structure()
        return CSRMatrix._from_checked(np.ascontiguousarray(self._data[perm]), idx, ptr,
                                       self.shape)


def same_contents(a, b):
    """``np.array_equal(a, b)`` for two arrays of one integer dtype, as one
    ``memcmp`` of their bytes when both are C-contiguous (the structure
    cache of the torch façade compares a layer's indices on every call:
    array_equal makes a boolean array of nnz elements first)."""
    cdef cnp.ndarray x, y
    if (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
            and a.dtype.kind in "iu" and a.shape == b.shape
            and a.flags.c_contiguous and b.flags.c_contiguous):
        x, y = a, b
        return memcmp(cnp.PyArray_DATA(x), cnp.PyArray_DATA(y), <size_t> x.nbytes) == 0
    return bool(np.array_equal(a, b))
