# Typed fields of the sparse conv2d weight, for other modules to cimport:
#     from sparseprop._convweight cimport SparseConvWeight

cdef class SparseConvWeight:
    # (out_channels, in_channels // groups, kernel_h, kernel_w)
    cdef readonly tuple shape
    # (nnz,) float32/float64, C-contiguous: the stored values, ordered by
    # output channel, then input channel, then kernel row, then kernel column
    cdef object _data
    # (OC + 1,) int64: output channel oc holds values [och[oc], och[oc + 1])
    cdef object _och
    # (OC * (ICg + 1),) int32: values of (oc, ic) are
    # [och[oc] + ich[oc*(ICg+1) + ic], och[oc] + ich[oc*(ICg+1) + ic + 1])
    cdef object _ich
    # (nnz,) int32 kernel row and column of each value (the paper's W_x, W_y)
    cdef object _krow
    cdef object _kcol
    # dict shared by every weight built on the same (immutable) structure:
    # derived layouts and kernel plans cached per mask
    cdef readonly object _cache

    cdef _init_checked(self, values, och, ich, krow, kcol, tuple shape, cache)
