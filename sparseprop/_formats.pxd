# Typed fields of the sparse matrix classes, for other modules to cimport:
#     from sparseprop._formats cimport CSRMatrix, CSCMatrix

cdef class _CompressedMatrix:
    cdef readonly tuple shape
    # (nnz,) float32/float64, C-contiguous: the values the kernels read
    cdef object _data
    # (nnz,) int32 minor index of each value (column for CSR, row for CSC)
    cdef object _indices
    # (n_major + 1,) int64 offsets into _indices/_data
    cdef object _indptr
    # dict shared by every matrix built on the same (immutable) structure:
    # derived layouts (the transposed structure, kernel plans) cached per mask
    cdef readonly object _cache

    cdef _init_checked(self, values, indices, indptr, tuple shape, cache)

cdef class CSRMatrix(_CompressedMatrix):
    pass

cdef class CSCMatrix(_CompressedMatrix):
    pass
