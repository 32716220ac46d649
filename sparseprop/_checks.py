"""Input validation shared by the NumPy-level API.

Every check names the argument, what was expected and what was received, so
no malformed input reaches a kernel and no user ever sees a Cython buffer
error.
"""
import math
import threading

import numpy as np

from sparseprop import _pool

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_bfloat16(dtype):
    """True for ``ml_dtypes.bfloat16`` (recognised without importing ml_dtypes:
    an array of it can only exist once the user has imported it)."""
    return (isinstance(dtype, np.dtype) and dtype.kind == "V" and dtype.itemsize == 2
            and dtype.name == "bfloat16")


def as_float_array(x, name, dtype, allow_bf16=False):
    """``x`` as an ndarray of exactly ``dtype`` (no silent casts).

    With ``allow_bf16``, an ``ml_dtypes.bfloat16`` array is taken as well when
    ``dtype`` (the weight's) is float32: bfloat16 activations, float32
    weights."""
    if type(x).__module__.startswith("torch"):
        raise TypeError(
            f"{name} is a torch.Tensor; the NumPy API takes arrays (use tensor.numpy(), "
            "or the layers in sparseprop.torch)"
        )
    arr = np.asarray(x)
    if allow_bf16 and is_bfloat16(arr.dtype):
        if dtype != np.float32:
            raise TypeError(f"{name} has dtype bfloat16, which needs a float32 weight (bfloat16 "
                            f"activations, float32 weights); the weight has dtype {dtype}")
    elif arr.dtype != dtype:
        if arr.dtype in FLOAT_DTYPES:
            raise TypeError(
                f"{name} has dtype {arr.dtype} but the weight has dtype {dtype}; "
                f"convert one of them (e.g. {name}.astype(np.{dtype}))"
            )
        raise TypeError(f"{name} must have dtype {dtype} (like the weight); got {arr.dtype}")
    if not arr.flags.aligned:  # e.g. a view into a byte buffer: the kernels need aligned data
        arr = arr.copy()
    return arr


def bf16_widen(arr):
    """A float32 copy of a bfloat16 array: each value exactly (a 16-bit shift)."""
    bits = np.ascontiguousarray(arr).view(np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def bf16_round(arr, bf16_dtype, out=None):
    """A float32 array rounded to bfloat16 (nearest, ties to even; a NaN stays a
    quiet NaN), as an array of ``bf16_dtype``; written into ``out`` (an array of
    that dtype and shape) if given.  The same rounding as the C kernels'."""
    u = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    r = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    r = np.where(nan, (u >> np.uint32(16)) | np.uint32(0x40), r).astype(np.uint16)
    if out is None:
        return r.view(bf16_dtype)
    out.view(np.uint16)[...] = r
    return out


def rows_view(arr, name):
    """A 2-D view (rows, cols) of ``arr`` whose last axis is contiguous.

    Leading axes are flattened into rows; the row stride may be anything
    (negative too).  Copies only when no such view exists.
    """
    if arr.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension; got a scalar")
    cols = arr.shape[-1]
    rows = math.prod(arr.shape[:-1])
    two_d = arr.reshape(rows, cols)  # a view when possible, else a copy
    isz = two_d.itemsize
    if two_d.shape[0] > 0 and cols > 0:
        if (two_d.shape[1] > 1 and two_d.strides[1] != isz) or two_d.strides[0] % isz:
            two_d = np.ascontiguousarray(two_d)
    return two_d


def row_stride(two_d):
    """Row stride in elements of a rows_view result (anything when rows <= 1)."""
    if two_d.shape[0] <= 1:
        return two_d.shape[1]
    return two_d.strides[0] // two_d.itemsize


def check_bias(bias, n_out, dtype):
    """None, or a contiguous (n_out,) array of ``dtype``."""
    if bias is None:
        return None
    b = as_float_array(bias, "bias", dtype)
    if b.shape != (n_out,):
        raise ValueError(f"bias must have shape ({n_out},) (out_features); got {b.shape}")
    return np.ascontiguousarray(b)


#: Largest array, in bytes, whose offsets fit in a signed 64-bit integer.
MAX_BYTES = 2**63 - 1


def check_result_size(shape, itemsize, what):
    """Raise a clear ValueError if an array of ``shape`` could not be addressed.

    NumPy's own error ("array is too big", "Maximum allowed dimension
    exceeded") names no argument; ``what`` says which input asked for it: a
    string, or a function returning one (called only to raise, so a call
    that passes pays nothing for formatting it).  Inputs that are broadcast
    views can describe such sizes without allocating anything.
    """
    n = 1
    for s in shape:
        n *= int(s)
    if n * itemsize > MAX_BYTES:
        if callable(what):
            what = what()
        raise ValueError(
            f"{what}: the result would have shape {tuple(int(s) for s in shape)} "
            f"({n} elements of {itemsize} bytes), more than 64-bit offsets can address "
            f"(at most {MAX_BYTES} bytes)"
        )


_scratch_local = threading.local()


def empty_aligned(shape, dtype=np.float32, align=64):
    """``np.empty(shape, dtype)`` whose data starts on an ``align``-byte boundary.

    NumPy's allocator promises 16 bytes.  The kernels store whole 64-byte
    segments of rows (a segment straddling two cache lines leaves both half
    written; see docs/tuning.md) and the conv forward streams tiles with
    aligned non-temporal stores.  Every result array is
    allocated with this; allocate ``out=`` / ``out_dx=`` buffers with it too.

    Parameters
    ----------
    shape : tuple of int
    dtype : float32 (default) or any NumPy dtype
    align : int, default 64
        A power of two multiple of the item size.

    Returns
    -------
    ndarray
        A C-contiguous view of a private buffer.

    Notes
    -----
    An array of at least 1 MiB (and ``align`` up to 4096) views a block of the
    result-buffer cache (sparseprop/_pool.pyx): when the last array viewing
    it is freed, the block is kept for the next request of that size instead
    of being returned to the system, which would map and zero it again, page
    by page, on the next call.  :func:`sparseprop.empty_cache` frees the idle
    blocks; ``SPARSEPROP_RESULT_CACHE_MB=0`` turns the cache off.
    """
    dt = np.dtype(dtype)
    if align <= 0 or align & (align - 1) or align % dt.itemsize:
        raise ValueError(f"align must be a power of two multiple of the item size "
                         f"({dt.itemsize}); got {align}")
    if type(shape) is not tuple:  # the drivers pass tuples: skip np.iterable's try/iter
        shape = tuple(shape) if np.iterable(shape) else (shape,)
    n = math.prod(shape)  # Python ints: no overflow, and cheaper than np.prod (docs/tuning.md)
    nbytes = n * dt.itemsize
    if nbytes >= _pool.MIN_BYTES and align <= _pool.PAGE_ALIGN and _pool.enabled():
        return np.frombuffer(_pool.take(nbytes), dtype=dt, count=n).reshape(shape)
    buf = np.empty(n + align // dt.itemsize, dtype=dt)
    # NumPy's data is at least itemsize-aligned, so the gap is whole elements
    off = (-_pool.data_address(buf)) % align // dt.itemsize
    return buf[off:off + n].reshape(shape)


def output_array(out, shape, dtype, name, inputs):
    """The array a result of ``shape`` and ``dtype`` is written into.

    None gives a fresh 64-byte aligned array (:func:`empty_aligned`).
    Otherwise ``out`` must be an ndarray of exactly that shape and dtype,
    C-contiguous, writeable and sharing no memory with any of ``inputs``
    (pairs of name and array, None skipped): the kernels read the inputs
    while they write ``out``.  Any element-aligned start works; a 64-byte
    aligned one (:func:`empty_aligned`) is faster (benchmarks/bench_out.py).
    """
    shape = tuple(int(s) for s in shape)
    if out is None:
        return empty_aligned(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or None; got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}; the result has dtype {np.dtype(dtype)}")
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}; the result has shape {shape}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; got strides {out.strides}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable; got a read-only array")
    if not out.flags.aligned:
        raise ValueError(f"{name} must start on a multiple of its item size "
                         f"({out.itemsize} bytes); got address {out.ctypes.data:#x}")
    for other, arr in inputs:
        if arr is not None and np.may_share_memory(out, arr):
            raise ValueError(f"{name} shares memory with {other}; the result must go to "
                             f"a separate array")
    return out


def scratch(nbytes, align=64):
    """A reusable, 64-byte aligned uint8 buffer of at least ``nbytes`` bytes.

    One buffer per Python thread (so concurrent calls never share), kept
    between calls to avoid paying page faults on every call.  Callers must not
    hand it out: results are always fresh arrays.
    """
    buf = getattr(_scratch_local, "buf", None)
    if buf is None or buf.nbytes < nbytes + align:
        buf = np.empty(max(nbytes + align, 1 << 16), dtype=np.uint8)
        _scratch_local.buf = buf
    off = (-_pool.data_address(buf)) % align
    return buf[off:off + nbytes]


# ---------------------------------------------------------------- what the kernels trust

def frozen(arr):
    """``arr`` as a 1-D array no one can write: a read-only view of an immutable
    ``bytes`` copy.

    ``flags.writeable = False`` alone is a promise a user can take back
    (``arr.flags.writeable = True`` works on an array that owns its memory);
    NumPy refuses that for an array whose memory is a ``bytes`` object.  The
    validated index arrays of the weight formats are kept like this, so a
    structure checked once stays checked.  An array that already is frozen is
    returned as is (no copy: ``with_data`` and ``copy`` share the structure).
    """
    if isinstance(arr.base, bytes) and not arr.flags.writeable:
        return arr
    out = np.frombuffer(np.ascontiguousarray(arr).tobytes(), dtype=arr.dtype)
    if not out.flags.aligned:  # bytes objects are 8-byte aligned on every CPython we know
        raise RuntimeError("an immutable copy of an index array is not aligned")
    return out


def check_weight_values(W, *outs):
    """Raise unless ``W.data`` is still what the weight was built with.

    The values array is public and writable (training updates it in place),
    so a caller can also reshape it (``W.data.shape = ...``), reinterpret it
    (``W.data.dtype = ...``) or reallocate it (``W.data.resize(...,
    refcheck=False)``) behind the weight's back; the kernels would then read
    ``nnz`` values of the wrong size or beyond the buffer.  Also refuses
    ``out=`` / ``out_dx=`` buffers (pairs of name and array, None skipped) that
    overlap the values: the kernels read them while writing the result.
    Weights of other types are left to the callers' type checks.  O(1).
    """
    data = getattr(W, "data", None)
    if not isinstance(data, np.ndarray) or not hasattr(W, "nnz"):
        return
    nnz = W.nnz
    if (data.shape != (nnz,) or data.dtype not in FLOAT_DTYPES or not data.flags.c_contiguous
            or not data.flags.aligned):
        raise ValueError(
            f"W.data must be a C-contiguous, aligned float32/float64 array of shape ({nnz},) "
            f"(one value per stored entry); got dtype {data.dtype}, shape {data.shape}, "
            f"strides {data.strides} - it was changed in place after W was built (assign "
            "values with W.data[...] = v, or build a new weight with W.with_data(v))"
        )
    for name, out in outs:
        if isinstance(out, np.ndarray) and np.may_share_memory(out, data):
            raise ValueError(f"{name} shares memory with W.data (the weight's values); the "
                             "result must go to a separate array")


def _check_compressed_scipy(matrix, n_major, n_minor, major, minor):
    """The CSR/CSC/BSR arrays of a scipy matrix, checked before SciPy's own C++
    routines see them (they index with indptr unchecked: a non-monotone one
    gives ``vector::_M_default_append`` or a wrong result)."""
    ptr, idx, data = (np.asarray(a) for a in (matrix.indptr, matrix.indices, matrix.data))
    if ptr.ndim != 1 or idx.ndim != 1 or ptr.dtype.kind not in "iu" or idx.dtype.kind not in "iu":
        raise ValueError(f"matrix.indptr and matrix.indices must be 1-D integer arrays; got "
                         f"{ptr.dtype} of shape {ptr.shape} and {idx.dtype} of shape {idx.shape}")
    if ptr.shape[0] != n_major + 1:
        raise ValueError(f"matrix.indptr must have length n_{major}s + 1 = {n_major + 1}; got "
                         f"{ptr.shape[0]}")
    if ptr[0] != 0:
        raise ValueError(f"matrix.indptr[0] must be 0; got {ptr[0]}")
    steps = np.diff(ptr.astype(np.int64))
    if (steps < 0).any():
        i = int(np.flatnonzero(steps < 0)[0])
        raise ValueError(f"matrix.indptr must be non-decreasing; got indptr[{i}]={ptr[i]} > "
                         f"indptr[{i + 1}]={ptr[i + 1]}")
    stored = min(idx.shape[0], data.shape[0])
    if ptr[-1] > stored:
        raise ValueError(f"matrix.indptr[-1] (={ptr[-1]}) must be at most the number of stored "
                         f"values (len(indices)={idx.shape[0]}, len(data)={data.shape[0]})")
    used = idx[:int(ptr[-1])]
    if used.size and (used.min() < 0 or used.max() >= n_minor):
        k = int(np.flatnonzero((used < 0) | (used >= n_minor))[0])
        raise ValueError(f"matrix.indices[{k}]={used[k]} is out of range for {n_minor} "
                         f"{minor}s")


def check_scipy_structure(matrix):
    """Validate the index arrays of a scipy.sparse matrix before SciPy converts it.

    SciPy trusts the arrays of a matrix built from raw arrays (its constructors
    check only lengths), and its conversions are C++ that index with them.
    """
    fmt = matrix.format
    n_rows, n_cols = (int(s) for s in matrix.shape)
    if fmt == "csr":
        _check_compressed_scipy(matrix, n_rows, n_cols, "row", "column")
    elif fmt == "csc":
        _check_compressed_scipy(matrix, n_cols, n_rows, "column", "row")
    elif fmt == "bsr":
        R, C = matrix.blocksize
        _check_compressed_scipy(matrix, n_rows // R, n_cols // C, "block row", "block column")
    elif fmt == "coo":
        coords = getattr(matrix, "coords", None) or (matrix.row, matrix.col)
        n = np.asarray(matrix.data).shape[0]
        for axis, (c, size, name) in enumerate(zip(coords, (n_rows, n_cols), ("row", "col"),
                                                   strict=True)):
            c = np.asarray(c)
            if c.ndim != 1 or c.shape[0] != n or (c.size and c.dtype.kind not in "iu"):
                raise ValueError(f"matrix.{name} must be a 1-D integer array of length "
                                 f"len(data)={n}; got {c.dtype} of shape {c.shape}")
            if c.size and (c.min() < 0 or c.max() >= size):
                k = int(np.flatnonzero((c < 0) | (c >= size))[0])
                raise ValueError(f"matrix.{name}[{k}]={c[k]} is out of range for shape "
                                 f"{matrix.shape} (axis {axis})")
