"""Sparse linear layer: forward and backward from NumPy (the paper's Algorithm 1).

The math lives in include/sparseprop/linear.h; this module validates inputs,
builds the per-mask kernel plan, splits the work into thread tasks and runs
them with the GIL released.

Threading: the batch is cut into chunks of ``chunk`` rows (the kernel's SIMD
width times a few vectors).  Tasks own contiguous runs of chunks, and when
there are fewer chunks than threads they also split the output rows
(forward) or input columns (backward).  Tasks never write the same output
element; dW is accumulated in one partial buffer per batch group and summed
once at the end.  No atomics, no barriers inside a pass.
"""
import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memset

from sparseprop._formats cimport CSCMatrix, CSRMatrix, _CompressedMatrix

from sparseprop import _config
from sparseprop._checks import as_float_array, check_bias, row_stride, rows_view, scratch
from sparseprop._checks import check_result_size

cnp.import_array()

cdef extern from "sparseprop/threads.h" nogil:
    int sp_omp_team_size()

cdef extern from "sparseprop/linear.h" nogil:
    ctypedef struct sp_linear_fwd_args:
        const void* X
        int64_t ldx
        void* Y
        int64_t ldy
        const void* bias
        int64_t rows
        int64_t M
        int64_t N
        int64_t row_begin
        int64_t row_end
        const int64_t* indptr
        const int32_t* indices
        const void* vals
        void* scratch

    ctypedef struct sp_linear_bwd_args:
        const void* X
        int64_t ldx
        const void* dY
        int64_t lddy
        void* dX
        int64_t lddx
        int64_t rows
        int64_t M
        int64_t N
        int64_t col_begin
        int64_t col_end
        const int64_t* colptr
        const int32_t* rowidx
        const void* vals
        void* dW
        void* scratch

    ctypedef void (*sp_linear_fwd_fn)(const sp_linear_fwd_args*) noexcept nogil
    ctypedef void (*sp_linear_bwd_fn)(const sp_linear_bwd_args*) noexcept nogil

    ctypedef struct sp_linear_kernels:
        sp_linear_fwd_fn fwd
        sp_linear_bwd_fn bwd
        int64_t chunk

    sp_linear_kernels sp_linear_select(int isa, int is_f64)
    int64_t sp_linear_fwd_scratch(int64_t chunk, int64_t M)
    int64_t sp_linear_bwd_scratch(int64_t chunk, int64_t M, int64_t N)
    int SP_LINEAR_PAD


# Kernels chosen once, at import, for the ISA in sparseprop._config.
cdef sp_linear_kernels _KERNELS_F32 = sp_linear_select(_config.ISA, 0)
cdef sp_linear_kernels _KERNELS_F64 = sp_linear_select(_config.ISA, 1)

# Below this many multiply-adds a call runs on one thread: waking a team
# costs more than it saves.
cdef int64_t _SERIAL_WORK = 1 << 16

# Threads of the most recent parallel region (diagnostic for the tests).
cdef int _last_team = 0


def _last_team_size():
    """Threads that ran the last forward/backward pass of this module (tests use it)."""
    return _last_team


cdef inline sp_linear_kernels _kernels(dtype):
    return _KERNELS_F64 if dtype == np.float64 else _KERNELS_F32


cdef inline char* _ptr(arr):
    return <char*> cnp.PyArray_DATA(<cnp.ndarray> arr)


def _check_weight(W):
    if not isinstance(W, _CompressedMatrix):
        raise TypeError(
            f"W must be a sparseprop.CSRMatrix or CSCMatrix; got {type(W).__name__} "
            "(build one with CSRMatrix.from_dense / from_scipy / from_torch)"
        )
    return W


def _split_balanced(const int64_t[::1] ptr, Py_ssize_t parts):
    """Boundaries cutting range(len(ptr) - 1) into ``parts`` pieces of about
    equal cost, a piece's cost being its stored values plus its length."""
    cdef Py_ssize_t n = ptr.shape[0] - 1
    cost = np.asarray(ptr) + np.arange(n + 1)
    targets = (cost[-1] * np.arange(parts + 1)) // parts
    bounds = np.searchsorted(cost, targets, side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, n
    return np.maximum.accumulate(bounds)


def _forward_structure(_CompressedMatrix W):
    """(indptr, indices, values) of W in CSR order, as the forward kernel reads them."""
    if isinstance(W, CSRMatrix):
        return W.indptr, W.indices, W.data
    perm, ptr, idx = W._transposed_structure()
    return ptr, idx, np.ascontiguousarray(W.data[perm])


def _backward_plan(_CompressedMatrix W):
    """The padded CSC structure the backward kernel walks, built once per mask.

    Returns (colptr, rowidx, slot, source): each column's list is padded to a
    multiple of SP_LINEAR_PAD with dummies whose row is N (an all-zero row of
    dY^T in the kernel); ``slot[i]`` is the padded position of W.data[source[i]].
    """
    plan = W._cache.get("linear_backward")
    if plan is not None:
        return plan
    N, M = W.shape
    if isinstance(W, CSRMatrix):
        perm, ptr, idx = W._transposed_structure()
    else:
        ptr, idx = W.indptr, W.indices
        perm = np.arange(W.nnz, dtype=np.int64)
    counts = np.diff(ptr)
    pad = SP_LINEAR_PAD
    padded = (counts + pad - 1) // pad * pad
    colptr = np.zeros(M + 1, dtype=np.int64)
    np.cumsum(padded, out=colptr[1:])
    col_of = np.repeat(np.arange(M, dtype=np.int64), counts)
    slot = colptr[col_of] + (np.arange(W.nnz, dtype=np.int64) - ptr[col_of])
    rowidx = np.full(int(colptr[-1]), N, dtype=np.int32)
    rowidx[slot] = idx
    source = np.ascontiguousarray(perm, dtype=np.int64)
    plan = (colptr, rowidx, slot, source)
    for a in plan:
        a.flags.writeable = False
    W._cache["linear_backward"] = plan
    return plan


cdef int _threads_for(object n_threads, int64_t work):
    cdef int n = _config.resolve_n_threads(n_threads)
    if work < _SERIAL_WORK:
        return 1
    return n


# ---------------------------------------------------------------- forward

cdef void _forward_task(sp_linear_fwd_fn fn, int64_t chunk, int itemsize,
                        const char* X, int64_t ldx, char* Y, int64_t ldy, int64_t B,
                        int64_t c_begin, int64_t c_end, sp_linear_fwd_args base) noexcept nogil:
    cdef sp_linear_fwd_args a = base
    cdef int64_t c, r0
    for c in range(c_begin, c_end):
        r0 = c * chunk
        a.X = X + r0 * ldx * itemsize
        a.Y = Y + r0 * ldy * itemsize
        a.rows = chunk if B - r0 > chunk else B - r0
        fn(&a)


def linear_forward(X, W, bias=None, *, n_threads=None):
    """Forward pass of a sparse linear layer: ``Y = X @ W.T + bias``.

    Same semantics as ``torch.nn.functional.linear(X, W, bias)``.

    Parameters
    ----------
    X : ndarray, shape (..., in_features)
        Input, same dtype as ``W``; any strides (read-only is fine).
    W : CSRMatrix or CSCMatrix, shape (out_features, in_features)
        Sparse weight.
    bias : ndarray, shape (out_features,), optional
    n_threads : int, optional
        Threads to use; None means OpenMP's default (``OMP_NUM_THREADS``,
        threadpoolctl and ``torch.set_num_threads`` all set it).

    Returns
    -------
    Y : ndarray, shape (..., out_features)
        A new C-contiguous array of W's dtype.
    """
    global _last_team
    _check_weight(W)
    dtype = W.dtype
    cdef int64_t N = W.shape[0], M = W.shape[1]
    Xa = as_float_array(X, "X", dtype)
    if Xa.ndim < 1 or Xa.shape[-1] != M:
        raise ValueError(
            f"X has shape {Xa.shape}; W (shape {W.shape}) expects (..., {M}) "
            f"(last axis = in_features)"
        )
    lead = Xa.shape[:-1]
    check_result_size(lead + (N,), dtype.itemsize, f"X has shape {Xa.shape}")
    b = check_bias(bias, N, dtype)
    X2 = rows_view(Xa, "X")
    cdef int64_t B = X2.shape[0]
    Y = np.empty((B, N), dtype=dtype)
    if B == 0 or N == 0:
        return Y.reshape(lead + (N,))

    indptr, indices, vals = _forward_structure(W)
    cdef sp_linear_kernels K = _kernels(dtype)
    cdef int64_t chunk = K.chunk
    cdef int64_t n_chunks = (B + chunk - 1) // chunk
    cdef int T = _threads_for(n_threads, B * (W.nnz + N))
    cdef int64_t Tb = min(T, n_chunks)
    cdef int64_t Tr = max(1, min(T // Tb, (N + 15) // 16))
    cdef int64_t tasks = Tb * Tr
    row_bounds = _split_balanced(indptr, Tr)
    cdef const int64_t[::1] rb = row_bounds
    cdef int itemsize = dtype.itemsize
    cdef int64_t per_task = (sp_linear_fwd_scratch(chunk, M) * itemsize + 63) // 64 * 64
    buf = scratch(per_task * tasks)

    cdef sp_linear_fwd_args base
    base.ldx = row_stride(X2)
    base.ldy = N
    base.bias = _ptr(b) if b is not None else NULL
    base.M = M
    base.N = N
    base.indptr = <const int64_t*> _ptr(indptr)
    base.indices = <const int32_t*> _ptr(indices)
    base.vals = _ptr(vals)
    cdef const char* Xp = _ptr(X2)
    cdef char* Yp = _ptr(Y)
    cdef char* sp = _ptr(buf)
    cdef sp_linear_fwd_fn fn = K.fwd
    cdef int64_t t
    cdef int team[1]
    cdef sp_linear_fwd_args a
    team[0] = 1

    with nogil:
        if tasks == 1:
            a = base
            a.row_begin = 0
            a.row_end = N
            a.scratch = sp
            _forward_task(fn, chunk, itemsize, Xp, base.ldx, Yp, N, B, 0, n_chunks, a)
        else:
            for t in prange(tasks, num_threads=tasks, schedule="static", chunksize=1):
                if t == 0:
                    team[0] = sp_omp_team_size()  # through memory: not lastprivate
                _forward_one(fn, chunk, itemsize, Xp, Yp, B, n_chunks, t, Tb, Tr,
                             &rb[0], sp + t * per_task, &base)
    _last_team = team[0]
    return Y.reshape(lead + (N,))


cdef void _forward_one(sp_linear_fwd_fn fn, int64_t chunk, int itemsize, const char* Xp,
                       char* Yp, int64_t B, int64_t n_chunks, int64_t t, int64_t Tb,
                       int64_t Tr, const int64_t* rb, char* scratch_ptr,
                       const sp_linear_fwd_args* base) noexcept nogil:
    cdef int64_t tb = t // Tr, tr = t % Tr
    cdef sp_linear_fwd_args a = base[0]
    a.row_begin = rb[tr]
    a.row_end = rb[tr + 1]
    a.scratch = scratch_ptr
    if a.row_begin < a.row_end:
        _forward_task(fn, chunk, itemsize, Xp, a.ldx, Yp, a.ldy, B,
                      n_chunks * tb // Tb, n_chunks * (tb + 1) // Tb, a)


# ---------------------------------------------------------------- backward

ctypedef fused real:
    float
    double


cdef void _gather_values(const real* data, const int64_t* slot, const int64_t* source,
                         real* vals_pad, int64_t nnz_pad, int64_t nnz, int T) noexcept nogil:
    """vals_pad = 0 at dummies, data[source[i]] at slot[i]."""
    cdef int64_t i
    memset(vals_pad, 0, nnz_pad * sizeof(real))
    for i in prange(nnz, num_threads=T, schedule="static"):
        vals_pad[slot[i]] = data[source[i]]


cdef void _reduce_partials(const real* parts, int64_t stride, int64_t n_parts,
                           const int64_t* slot, const int64_t* source, real* dW,
                           int64_t nnz, int T) noexcept nogil:
    """dW[source[i]] = sum over partial buffers of parts[slot[i]] (fixed order)."""
    cdef int64_t i, p
    cdef real acc
    for i in prange(nnz, num_threads=T, schedule="static"):
        acc = parts[slot[i]]
        for p in range(1, n_parts):
            acc = acc + parts[p * stride + slot[i]]
        dW[source[i]] = acc


cdef void _backward_one(sp_linear_bwd_fn fn, int64_t chunk, int itemsize,
                        const char* Xp, const char* dYp, char* dXp, int64_t B,
                        int64_t n_chunks, int64_t t, int64_t Tb, int64_t Tc,
                        const int64_t* cb, char* partials, int64_t partial_bytes,
                        char* scratch_ptr, const sp_linear_bwd_args* base) noexcept nogil:
    cdef int64_t tb = t // Tc, tc = t % Tc, c, r0
    cdef sp_linear_bwd_args a = base[0]
    a.col_begin = cb[tc]
    a.col_end = cb[tc + 1]
    a.scratch = scratch_ptr
    a.dW = partials + tb * partial_bytes
    # this task owns slots [colptr[col_begin], colptr[col_end]) of its partial
    memset(<char*> a.dW + a.colptr[a.col_begin] * itemsize, 0,
           (a.colptr[a.col_end] - a.colptr[a.col_begin]) * itemsize)
    for c in range(n_chunks * tb // Tb, n_chunks * (tb + 1) // Tb):
        r0 = c * chunk
        a.X = Xp + r0 * a.ldx * itemsize
        a.dY = dYp + r0 * a.lddy * itemsize
        a.dX = (dXp + r0 * a.lddx * itemsize) if dXp != NULL else NULL
        a.rows = chunk if B - r0 > chunk else B - r0
        fn(&a)


def linear_backward(X, W, dY, need_input_grad=True, *, n_threads=None):
    """Backward pass of a sparse linear layer, in one pass over W's nonzeros.

    Computes ``dX = dY @ W`` (sparse x dense) and the weight gradient
    ``dY.T @ X`` *only at W's nonzeros* (sampled dense-dense product); nothing
    of size out_features x in_features is ever formed.

    Parameters
    ----------
    X : ndarray, shape (..., in_features)
        The forward input.
    W : CSRMatrix or CSCMatrix, shape (out_features, in_features)
    dY : ndarray, shape (..., out_features)
        Gradient of the loss with respect to the forward output.
    need_input_grad : bool, default True
        If False, dX is not computed (and its time is saved).
    n_threads : int, optional
        As in :func:`linear_forward`.

    Returns
    -------
    dX : ndarray of X's shape, or None
    dW : ndarray, shape (nnz,)
        Gradient at the stored values, aligned with ``W.data`` (whatever W's
        format), so ``W.data -= lr * dW`` is an SGD step.
    """
    global _last_team
    _check_weight(W)
    dtype = W.dtype
    cdef int64_t N = W.shape[0], M = W.shape[1]
    Xa = as_float_array(X, "X", dtype)
    dYa = as_float_array(dY, "dY", dtype)
    if Xa.ndim < 1 or Xa.shape[-1] != M:
        raise ValueError(
            f"X has shape {Xa.shape}; W (shape {W.shape}) expects (..., {M}) "
            f"(last axis = in_features)"
        )
    if dYa.shape != Xa.shape[:-1] + (N,):
        raise ValueError(
            f"dY has shape {dYa.shape}; expected {Xa.shape[:-1] + (N,)} "
            f"(X.shape[:-1] + (out_features,))"
        )
    need_dx = bool(need_input_grad)
    X2 = rows_view(Xa, "X")
    dY2 = rows_view(dYa, "dY")
    cdef int64_t B = X2.shape[0]
    dX = np.empty((B, M), dtype=dtype) if need_dx else None
    cdef int64_t nnz = W.nnz
    if B == 0:
        dW = np.zeros(nnz, dtype=dtype)
        if need_dx:
            dX = dX.reshape(Xa.shape)
        return dX, dW

    dW = np.empty(nnz, dtype=dtype)
    colptr, rowidx, slot, source = _backward_plan(W)
    cdef int64_t nnz_pad = rowidx.shape[0]
    cdef int itemsize = dtype.itemsize
    cdef sp_linear_kernels K = _kernels(dtype)
    cdef int64_t chunk = K.chunk
    cdef int64_t n_chunks = (B + chunk - 1) // chunk
    cdef int T = _threads_for(n_threads, B * (nnz + M))
    cdef int64_t Tb = min(T, n_chunks)
    cdef int64_t Tc = max(1, min(T // Tb, (M + 15) // 16))
    cdef int64_t tasks = Tb * Tc
    col_bounds = _split_balanced(colptr, Tc)
    cdef const int64_t[::1] cb = col_bounds

    cdef int64_t vals_bytes = (nnz_pad * itemsize + 63) // 64 * 64
    cdef int64_t partial_bytes = vals_bytes
    cdef int64_t per_task = (sp_linear_bwd_scratch(chunk, M, N) * itemsize + 63) // 64 * 64
    buf = scratch(vals_bytes + Tb * partial_bytes + tasks * per_task)
    partials = buf[vals_bytes:vals_bytes + Tb * partial_bytes]
    data = W.data
    cdef const int64_t* slot_p = <const int64_t*> _ptr(slot)
    cdef const int64_t* source_p = <const int64_t*> _ptr(source)
    cdef int Tg = T if nnz > 65536 else 1
    cdef char* data_p = _ptr(data)
    cdef char* vals_p = _ptr(buf)
    cdef char* dW_p = _ptr(dW)
    with nogil:
        if itemsize == 8:
            _gather_values(<const double*> data_p, slot_p, source_p, <double*> vals_p,
                           nnz_pad, nnz, Tg)
        else:
            _gather_values(<const float*> data_p, slot_p, source_p, <float*> vals_p,
                           nnz_pad, nnz, Tg)

    cdef sp_linear_bwd_args base
    base.ldx = row_stride(X2)
    base.lddy = row_stride(dY2)
    base.lddx = M
    base.M = M
    base.N = N
    base.colptr = <const int64_t*> _ptr(colptr)
    base.rowidx = <const int32_t*> _ptr(rowidx)
    base.vals = vals_p
    cdef const char* Xp = _ptr(X2)
    cdef const char* dYp = _ptr(dY2)
    cdef char* dXp = _ptr(dX) if need_dx else NULL
    cdef char* pp = _ptr(partials)
    cdef char* sp = _ptr(buf) + vals_bytes + Tb * partial_bytes
    cdef sp_linear_bwd_fn fn = K.bwd
    cdef int64_t t
    cdef int team[1]
    team[0] = 1

    with nogil:
        if tasks == 1:
            _backward_one(fn, chunk, itemsize, Xp, dYp, dXp, B, n_chunks, 0, 1, 1,
                          &cb[0], pp, partial_bytes, sp, &base)
        else:
            for t in prange(tasks, num_threads=tasks, schedule="static", chunksize=1):
                if t == 0:
                    team[0] = sp_omp_team_size()  # through memory: not lastprivate
                _backward_one(fn, chunk, itemsize, Xp, dYp, dXp, B, n_chunks, t, Tb, Tc,
                              &cb[0], pp, partial_bytes, sp + t * per_task, &base)
    _last_team = team[0]

    with nogil:
        if itemsize == 8:
            _reduce_partials(<const double*> pp, partial_bytes // itemsize, Tb, slot_p,
                             source_p, <double*> dW_p, nnz, Tg)
        else:
            _reduce_partials(<const float*> pp, partial_bytes // itemsize, Tb, slot_p,
                             source_p, <float*> dW_p, nnz, Tg)
    if need_dx:
        dX = dX.reshape(Xa.shape)
    return dX, dW
