"""The weight of a sparse conv2d layer in the paper's layout (section 3.3).

A weight of shape (out_channels, in_channels // groups, kernel_h, kernel_w)
is stored as its nonzero values in C order of that array (by output
channel, then input channel, then kernel row, then kernel column) plus:

* ``och`` (int64, OC + 1): output channel ``oc`` holds values
  ``[och[oc], och[oc + 1])`` (the paper's W_och);
* ``ich`` (int32, OC * (ICg + 1)): within output channel ``oc``, input
  channel ``ic`` holds the values ``och[oc] + ich[oc*(ICg+1) + ic]`` up to
  ``och[oc] + ich[oc*(ICg+1) + ic + 1]`` (the paper's W_ich; offsets are
  relative to the channel's start, so int32 never overflows:
  ``ICg * kernel_h * kernel_w`` must fit in int32, which holds for any
  realistic layer, e.g. 2048 x 7 x 7);
* ``krow``, ``kcol`` (int32, nnz): kernel coordinates (the paper's W_x, W_y).

The structure is validated once and immutable afterwards (read-only arrays);
the values (``data``) may be updated in place, which is what training does.
"""
import numpy as np

cimport numpy as cnp

from sparseprop import _formats
from sparseprop._checks import frozen

cnp.import_array()

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INT32_MAX = int(np.iinfo(np.int32).max)


def _float_dtype(dtype, name):
    dt = np.dtype(dtype)
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64; got {dt}")
    return dt


def _as_shape4(shape):
    try:
        shape = tuple(int(s.__index__()) for s in shape)
    except (TypeError, AttributeError):
        raise TypeError(
            "shape must be 4 non-negative integers (out_channels, in_channels // groups, "
            f"kernel_h, kernel_w); got {shape!r}"
        ) from None
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(
            "shape must be 4 non-negative integers (out_channels, in_channels // groups, "
            f"kernel_h, kernel_w); got {shape!r}"
        )
    OC, ICg, KH, KW = shape
    if OC > _INT32_MAX or ICg * KH * KW > _INT32_MAX:
        raise ValueError(
            f"shape {shape} is too large: out_channels and in_channels // groups * kernel_h * "
            f"kernel_w must each be at most {_INT32_MAX}"
        )
    return shape


def _as_int_array(arr, name):
    a = np.asarray(arr)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers; got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values beyond int64")
    return a.astype(np.int64, copy=False)


def _as_values(data, dtype, copy):
    """``data`` as a C-contiguous, aligned 1-D float32/float64 array."""
    arr = np.asarray(data)
    if dtype is None:
        if arr.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"data must have dtype float32 or float64; got {arr.dtype} "
                            "(pass dtype= to convert)")
        dt = arr.dtype
    else:
        dt = _float_dtype(dtype, "dtype")
    if arr.ndim != 1:
        raise ValueError(f"data must be 1-D; got shape {arr.shape}")
    return np.require(np.array(arr, dtype=dt, order="C", copy=True if copy else None),
                      requirements="A")


def _check_structure(och, ich, krow, kcol, shape):
    """None if the arrays form a valid structure for ``shape``, else a message."""
    OC, ICg, KH, KW = shape
    nnz = krow.shape[0]
    if kcol.shape[0] != nnz:
        return f"krow and kcol must have the same length; got {nnz} and {kcol.shape[0]}"
    if och.shape[0] != OC + 1:
        return f"och must have length out_channels + 1 = {OC + 1}; got {och.shape[0]}"
    if och[0] != 0:
        return f"och[0] must be 0; got {och[0]}"
    bad = np.flatnonzero(np.diff(och) < 0)
    if bad.size:
        i = int(bad[0])
        return f"och must be non-decreasing; got och[{i}]={och[i]} > och[{i + 1}]={och[i + 1]}"
    if och[-1] != nnz:
        return (f"och[-1] (={och[-1]}) must equal the number of stored values "
                f"(len(krow)={nnz})")
    if ich.shape[0] != OC * (ICg + 1):
        return (f"ich must have length out_channels * (in_channels // groups + 1) = "
                f"{OC * (ICg + 1)}; got {ich.shape[0]}")
    if OC == 0:
        return None
    ich2 = ich.reshape(OC, ICg + 1)
    bad = np.flatnonzero(ich2[:, 0] != 0)
    if bad.size:
        oc = int(bad[0])
        return (f"ich must start every output channel at 0; got ich[{oc * (ICg + 1)}]="
                f"{ich2[oc, 0]} for output channel {oc}")
    steps = np.diff(ich2, axis=1)
    if (steps < 0).any():
        oc, ic = (int(v) for v in np.argwhere(steps < 0)[0])
        return (f"ich must be non-decreasing within an output channel; got "
                f"{ich2[oc, ic]} then {ich2[oc, ic + 1]} for output channel {oc}, "
                f"input channels {ic}, {ic + 1}")
    counts = np.diff(och)
    bad = np.flatnonzero(ich2[:, -1] != counts)
    if bad.size:
        oc = int(bad[0])
        return (f"ich must end output channel {oc} at its value count "
                f"och[{oc + 1}] - och[{oc}] = {counts[oc]}; got {ich2[oc, -1]}")
    if nnz == 0:
        return None
    if krow.min() < 0 or krow.max() >= KH:
        k = int(np.flatnonzero((krow < 0) | (krow >= KH))[0])
        return f"krow[{k}]={krow[k]} is out of range for kernel_h={KH}"
    if kcol.min() < 0 or kcol.max() >= KW:
        k = int(np.flatnonzero((kcol < 0) | (kcol >= KW))[0])
        return f"kcol[{k}]={kcol[k]} is out of range for kernel_w={KW}"
    seg = np.repeat(np.arange(OC * ICg, dtype=np.int64), steps.ravel())
    key = (seg * KH + krow) * KW + kcol
    bad = np.flatnonzero(np.diff(key) <= 0)
    if bad.size:
        k = int(bad[0])
        return (f"within each (output, input) channel the kernel positions (krow, kcol) "
                f"must be sorted and free of duplicates; got ({krow[k]}, {kcol[k]}) then "
                f"({krow[k + 1]}, {kcol[k + 1]}) at positions {k}, {k + 1}")
    return None


cdef class SparseConvWeight:
    """A sparse conv2d weight in the SparseProp layout.

    Parameters
    ----------
    data : array_like, shape (nnz,)
        Stored values, float32 or float64 (or anything, with ``dtype=``),
        ordered by output channel, input channel, kernel row, kernel column.
    och : array_like of int, shape (out_channels + 1,)
        Output channel ``oc`` holds ``data[och[oc]:och[oc + 1]]``.
    ich : array_like of int, shape (out_channels * (in_channels // groups + 1),)
        Per output channel, offsets of each input channel's values relative to
        ``och[oc]`` (each block starts at 0 and ends at the channel's count).
    krow, kcol : array_like of int, shape (nnz,)
        Kernel row and column of each value; sorted, without duplicates,
        within each (output, input) channel pair.
    shape : tuple of 4 ints
        ``(out_channels, in_channels // groups, kernel_h, kernel_w)``, like
        ``torch.nn.Conv2d.weight``.  Rectangular kernels are fine.
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
    ``data`` is ordered exactly like ``dense[dense != 0]`` for the dense
    weight ``dense`` this was built from (:meth:`from_dense` stores only the
    nonzero entries, NaN included).  Explicitly stored zeros given to the
    constructor stay stored: they are trainable slots.
    """

    def __init__(self, data, och, ich, krow, kcol, shape, *, dtype=None, copy=True):
        shape = _as_shape4(shape)
        values = _as_values(data, dtype, copy)
        o = _as_int_array(och, "och")
        i = _as_int_array(ich, "ich")
        kr = _as_int_array(krow, "krow")
        kc = _as_int_array(kcol, "kcol")
        if values.shape[0] != kr.shape[0]:
            raise ValueError(f"data and krow must have the same length; got {values.shape[0]} "
                             f"and {kr.shape[0]}")
        problem = _check_structure(o, i, kr, kc, shape)
        if problem is not None:
            raise ValueError(f"invalid SparseConvWeight structure: {problem}")
        self._init_checked(values, o.copy(), i.astype(np.int32), kr.astype(np.int32),
                           kc.astype(np.int32), shape, {})

    cdef _init_checked(self, values, och, ich, krow, kcol, tuple shape, cache):
        # the validated structure in immutable memory (a read-only flag alone
        # can be set back by anyone)
        self._data = values
        self._och = frozen(och)
        self._ich = frozen(ich)
        self._krow = frozen(krow)
        self._kcol = frozen(kcol)
        self.shape = shape
        self._cache = cache

    @classmethod
    def _from_checked(cls, values, och, ich, krow, kcol, shape, cache=None):
        """Build without re-validating (internal: the caller guarantees validity)."""
        cdef SparseConvWeight self = cls.__new__(cls)
        self._init_checked(values, och, ich, krow, kcol, tuple(shape),
                           {} if cache is None else cache)
        return self

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_dense(cls, array, *, dtype=None):
        """Build from a dense 4-D array, storing its nonzero entries.

        Parameters
        ----------
        array : array_like, shape (out_channels, in_channels // groups, kh, kw)
            Float32 or float64 (other dtypes need ``dtype=``).  NaN counts as
            nonzero; zeros are not stored.
        dtype : float32 or float64, optional
            Dtype of the stored values.

        Returns
        -------
        SparseConvWeight
            ``W.data`` equals ``array[array != 0]`` (C order).
        """
        A = np.asarray(array)
        if A.ndim != 4:
            raise ValueError(
                "array must be 4-D (out_channels, in_channels // groups, kernel_h, kernel_w); "
                f"got shape {A.shape}"
            )
        if dtype is None and A.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"array must have dtype float32 or float64; got {A.dtype} "
                            "(pass dtype= to convert)")
        dt = A.dtype if dtype is None else _float_dtype(dtype, "dtype")
        shape = _as_shape4(A.shape)
        OC, ICg, KH, KW = shape
        mask = A != 0
        values = np.ascontiguousarray(A[mask], dtype=dt)
        _, _, kr, kc = np.nonzero(mask)
        counts = mask.reshape(OC, ICg, KH * KW).sum(axis=2, dtype=np.int64)
        och = np.zeros(OC + 1, dtype=np.int64)
        np.cumsum(counts.sum(axis=1), out=och[1:])
        ich = np.zeros((OC, ICg + 1), dtype=np.int64)
        np.cumsum(counts, axis=1, out=ich[:, 1:])
        return cls._from_checked(values, och, ich.astype(np.int32).ravel(),
                                 kr.astype(np.int32), kc.astype(np.int32), shape)

    @classmethod
    def from_csr(cls, data, indices, indptr, shape, *, dtype=None, copy=True):
        """Build from the CSR structure of the weight viewed as a matrix.

        The matrix is ``(out_channels, in_channels // groups * kernel_h *
        kernel_w)``: row ``oc`` holds the nonzeros of ``dense[oc].ravel()``,
        which is how the sparseprop.torch layers store a conv weight.  Both
        layouts keep the nonzeros in C order of the dense weight, so
        ``data`` is used as it is.  The CSR structure is validated once; the
        conv structure derived from it is valid by construction.

        Parameters
        ----------
        data : array_like, shape (nnz,)
            Stored values, float32 or float64 (or anything, with ``dtype=``).
        indices : array_like of int, shape (nnz,)
            Column of each value in its row: ``(ic * kernel_h + kr) * kernel_w + kc``.
        indptr : array_like of int, shape (out_channels + 1,)
            Row ``oc`` holds ``data[indptr[oc]:indptr[oc + 1]]``.
        shape : tuple of 4 ints
            ``(out_channels, in_channels // groups, kernel_h, kernel_w)``.
        dtype : float32 or float64, optional
            Convert the values to this dtype.
        copy : bool, default True
            Copy ``data`` even when no conversion is needed.

        Returns
        -------
        SparseConvWeight

        Raises
        ------
        ValueError
            If (indptr, indices) is not a valid CSR structure of that matrix
            (lengths, ranges, order within a row, duplicates).
        """
        shape = _as_shape4(shape)
        OC, ICg, KH, KW = shape
        values = _as_values(data, dtype, copy)
        ptr = np.array(_as_int_array(indptr, "indptr"), dtype=np.int64)  # a copy: kept
        col = _as_int_array(indices, "indices")
        if values.shape[0] != col.shape[0]:
            raise ValueError(f"data and indices must have the same length; got "
                             f"{values.shape[0]} and {col.shape[0]}")
        problem = _formats._csr_problem(ptr, col, (OC, ICg * KH * KW))
        if problem is not None:
            raise ValueError(f"invalid CSR structure of a conv weight of shape {shape} (as an "
                             f"{OC} x {ICg * KH * KW} matrix): {problem}")
        taps = max(KH * KW, 1)  # no column exists when a kernel side is 0
        oc = np.repeat(np.arange(OC, dtype=np.int64), np.diff(ptr))
        ic, tap = np.divmod(col, taps)
        kr, kc = np.divmod(tap, max(KW, 1))
        counts = np.bincount(oc * ICg + ic, minlength=OC * ICg).reshape(OC, ICg)
        ich = np.zeros((OC, ICg + 1), dtype=np.int32)
        np.cumsum(counts, axis=1, out=ich[:, 1:])
        coords = (oc, ic, kr, kc)
        for a in coords:
            a.flags.writeable = False
        return cls._from_checked(values, ptr, ich.ravel(), kr.astype(np.int32),
                                 kc.astype(np.int32), shape, {"coords": coords})

    @classmethod
    def from_torch(cls, tensor, *, dtype=None):
        """Build from a torch tensor holding a dense conv weight (e.g. ``conv.weight``).

        The tensor must live on the CPU; autograd history is dropped.  Sparse
        torch layouts are densified first.  Half-precision tensors need
        ``dtype=``.
        """
        import torch
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor must be a torch.Tensor; got {type(tensor).__name__}")
        if tensor.device.type != "cpu":
            raise ValueError(f"tensor is on {tensor.device}; move it to the CPU first (.cpu())")
        t = tensor.detach()
        if t.dim() != 4:
            raise ValueError(
                "tensor must be 4-D (out_channels, in_channels // groups, kernel_h, kernel_w); "
                f"got shape {tuple(t.shape)}"
            )
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.dim() != 4:
            raise ValueError(
                "tensor must be 4-D (out_channels, in_channels // groups, kernel_h, kernel_w); "
                f"got shape {tuple(t.shape)}"
            )
        if t.dtype not in (torch.float32, torch.float64):
            if dtype is None or not t.is_floating_point():
                raise TypeError(f"tensor must have dtype float32 or float64; got {t.dtype} "
                                "(pass dtype= to convert a floating-point tensor)")
            t = t.to(torch.float64)
        return cls.from_dense(t.numpy(), dtype=dtype)

    # ------------------------------------------------------------ attributes
    @property
    def data(self):
        """(nnz,) values; writable - updating it in place updates the weight."""
        return self._data

    @property
    def och(self):
        """(out_channels + 1,) int64 offsets of each output channel (read-only)."""
        return self._och

    @property
    def ich(self):
        """(out_channels * (in_channels // groups + 1),) int32 offsets of each input
        channel, relative to its output channel's start (read-only)."""
        return self._ich

    @property
    def krow(self):
        """(nnz,) int32 kernel row of each value (read-only)."""
        return self._krow

    @property
    def kcol(self):
        """(nnz,) int32 kernel column of each value (read-only)."""
        return self._kcol

    @property
    def nnz(self):
        """Number of stored values."""
        return int(self._krow.shape[0])

    @property
    def dtype(self):
        """Value dtype, float32 or float64."""
        return self._data.dtype

    @property
    def density(self):
        """nnz / prod(shape); 0.0 for an empty shape."""
        size = int(np.prod(self.shape, dtype=np.int64))
        return self.nnz / size if size else 0.0

    @property
    def sparsity(self):
        """1 - density."""
        return 1.0 - self.density

    def __repr__(self):
        return (f"<SparseConvWeight {'x'.join(str(s) for s in self.shape)} {self.dtype}, "
                f"nnz={self.nnz} ({100 * self.sparsity:.2f}% sparse)>")

    def __reduce__(self):
        # unpickling goes through the validating constructor
        return (SparseConvWeight, (self._data, self._och, self._ich, self._krow, self._kcol,
                                   self.shape))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    # ------------------------------------------------------------ values
    def with_data(self, values):
        """A weight with this structure and new values, built in O(1).

        The structure is shared (and so are cached kernel plans); ``values``
        is used without a copy when it is a C-contiguous float32/float64 array
        of length nnz, so later in-place updates of it are seen by the weight.
        """
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.shape[0] != self.nnz:
            raise ValueError(f"values must have shape ({self.nnz},); got {arr.shape}")
        if arr.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"values must have dtype float32 or float64; got {arr.dtype}")
        arr = np.require(arr, requirements="CA")  # C-contiguous and aligned
        return SparseConvWeight._from_checked(arr, self._och, self._ich, self._krow,
                                              self._kcol, self.shape, self._cache)

    def copy(self):
        """A deep copy of the values (the immutable structure is shared)."""
        return SparseConvWeight._from_checked(self._data.copy(), self._och, self._ich,
                                              self._krow, self._kcol, self.shape, self._cache)

    def astype(self, dtype):
        """The same weight with values converted to ``dtype`` (float32/float64)."""
        dt = _float_dtype(dtype, "dtype")
        return SparseConvWeight._from_checked(self._data.astype(dt), self._och, self._ich,
                                              self._krow, self._kcol, self.shape, self._cache)

    # ------------------------------------------------------------ conversions
    def _coords(self):
        """(oc, ic, krow, kcol) of every stored value as int64 arrays (cached)."""
        cached = self._cache.get("coords")
        if cached is None:
            OC, ICg = self.shape[0], self.shape[1]
            oc = np.repeat(np.arange(OC, dtype=np.int64), np.diff(self._och))
            if OC:
                steps = np.diff(self._ich.reshape(OC, ICg + 1), axis=1).ravel()
            else:
                steps = np.zeros(0, dtype=np.int64)
            ic = np.tile(np.arange(ICg, dtype=np.int64), OC)
            ic = np.repeat(ic, steps)
            cached = (oc, ic, self._krow.astype(np.int64), self._kcol.astype(np.int64))
            for a in cached:
                a.flags.writeable = False
            self._cache["coords"] = cached
        return cached

    def to_dense(self):
        """Dense ndarray of ``shape`` with zeros where nothing is stored."""
        out = np.zeros(self.shape, dtype=self.dtype)
        oc, ic, kr, kc = self._coords()
        out[oc, ic, kr, kc] = self._data
        return out

    def to_torch(self):
        """A dense ``torch.Tensor`` of ``shape`` (a copy), e.g. for ``conv.weight``."""
        import torch
        return torch.from_numpy(self.to_dense())
