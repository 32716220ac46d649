# Inline memory helpers the Cython drivers share (_linear.pyx, _conv2d.pyx):
#     from sparseprop._memory cimport data_ptr, round_up64
cimport numpy as cnp
from libc.stdint cimport int64_t


cdef inline char* data_ptr(arr):
    """The first byte of an ndarray's data (the caller keeps ``arr`` alive)."""
    return <char*> cnp.PyArray_DATA(<cnp.ndarray> arr)


cdef inline int64_t round_up64(int64_t nbytes) noexcept nogil:
    """``nbytes`` rounded up to whole 64-byte cache lines: every buffer carved
    out of one scratch allocation starts on a line of its own."""
    return (nbytes + 63) // 64 * 64
