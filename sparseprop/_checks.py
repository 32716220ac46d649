"""Input validation shared by the NumPy-level API.

Every check names the argument, what was expected and what was received, so
no malformed input reaches a kernel and no user ever sees a Cython buffer
error.
"""
import math
import threading

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(x, name, dtype):
    """``x`` as an ndarray of exactly ``dtype`` (no silent casts)."""
    if type(x).__module__.startswith("torch"):
        raise TypeError(
            f"{name} is a torch.Tensor; the NumPy API takes arrays (use tensor.numpy(), "
            "or the layers in sparseprop.torch)"
        )
    arr = np.asarray(x)
    if arr.dtype != dtype:
        if arr.dtype in FLOAT_DTYPES:
            raise TypeError(
                f"{name} has dtype {arr.dtype} but the weight has dtype {dtype}; "
                f"convert one of them (e.g. {name}.astype(np.{dtype}))"
            )
        raise TypeError(f"{name} must have dtype {dtype} (like the weight); got {arr.dtype}")
    if not arr.flags.aligned:  # e.g. a view into a byte buffer: the kernels need aligned data
        arr = arr.copy()
    return arr


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
    """
    dt = np.dtype(dtype)
    if align <= 0 or align & (align - 1) or align % dt.itemsize:
        raise ValueError(f"align must be a power of two multiple of the item size "
                         f"({dt.itemsize}); got {align}")
    shape = tuple(shape) if np.iterable(shape) else (shape,)
    n = math.prod(shape)  # Python ints: no overflow, and cheaper than np.prod (docs/tuning.md)
    buf = np.empty(n + align // dt.itemsize, dtype=dt)
    # NumPy's data is at least itemsize-aligned, so the gap is whole elements
    off = (-buf.__array_interface__["data"][0]) % align // dt.itemsize
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
    off = (-buf.ctypes.data) % align
    return buf[off:off + nbytes]
