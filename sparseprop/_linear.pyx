"""Sparse linear layer: forward and backward from NumPy (the paper's Algorithm 1).

The math lives in include/sparseprop/linear.h and the per-mask plans (the
orders the kernels walk W in, the cut into thread tasks) in
sparseprop/_linear_plan.py; this module validates inputs and runs the
kernels with the GIL released.

Threading: the batch is cut into chunks of ``chunk`` rows (the kernel's SIMD
width times a few vectors).  Tasks own contiguous runs of chunks, and when
there are fewer chunks than threads they also split the output rows
(forward) or input columns (backward).  Tasks never write the same output
element; dW is accumulated in one partial buffer per batch group and summed
once at the end.  No atomics, no barriers inside a pass.

bfloat16: X and dY may be ``ml_dtypes.bfloat16`` arrays with a float32
weight; Y and dX are then bfloat16 (rounded to nearest even from float32
sums) and dW float32.  The kernels read and write the activations as
bfloat16 and compute in float32 (include/sparseprop/linear.h), so the driver
carries two item sizes: the activations' and the weight's.
"""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memset

from sparseprop._formats cimport _CompressedMatrix
from sparseprop._memory cimport data_ptr as _ptr
from sparseprop._memory cimport round_up64

from sparseprop import _config
from sparseprop._linear_plan import (backward_plan, backward_split, forward_blocks,
                                     forward_plan, forward_split)
from sparseprop._checks import as_float_array, check_bias, row_stride, rows_view, scratch
from sparseprop._checks import check_result_size, check_weight_values, is_bfloat16, output_array

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
        const int64_t* ptr
        const int32_t* indices
        const void* vals
        int64_t nblk
        const int64_t* blk_cols
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
        int64_t fwd_chunk
        int64_t bwd_chunk
        sp_linear_fwd_fn fwd_narrow[2]
        int64_t fwd_narrow_chunk[2]
        sp_linear_fwd_fn fwd_gather
        int64_t fwd_gather_rows

    sp_linear_kernels sp_linear_select(int isa, int is_f64)
    sp_linear_kernels sp_linear_select_bf16(int isa, int use_bf16x)
    int64_t sp_linear_fwd_scratch(int64_t chunk, int64_t M, int64_t rows, int64_t nblk)
    int64_t sp_linear_bwd_scratch(int64_t chunk, int64_t N)
    int SP_LINEAR_PAD
    int SP_LINEAR_FWD_TILE
    void sp_linear_barrier()


# Kernels chosen once, at import, for the ISA in sparseprop._config.
cdef sp_linear_kernels _KERNELS_F32 = sp_linear_select(_config.ISA, 0)
cdef sp_linear_kernels _KERNELS_F64 = sp_linear_select(_config.ISA, 1)
cdef sp_linear_kernels _KERNELS_BF16 = sp_linear_select_bf16(_config.ISA, _config.BF16_EXT)

# Below this many multiply-adds a call runs on one thread: waking a team
# costs more than it saves.
cdef int64_t _SERIAL_WORK = 1 << 16

# Below this many values a gather/scatter of the weights runs on one thread.
cdef int64_t _SERIAL_VALUES = 1 << 13

# Batches of at most this many rows take the row-wise gather forward
# (docs/tuning.md, "Small-batch forward"); larger ones the lane kernels.
GATHER_MAX_BATCH = 2

cdef sp_linear_fwd_fn _forward_kernel(const sp_linear_kernels* K, int64_t B, int64_t* chunk,
                                      int* path):
    """The forward kernel for a batch of B rows and its chunk (rows per call):
    the gather kernel for the smallest batches, else the narrowest lane
    kernel whose chunk holds the batch (the full one for larger batches).
    path: 0 full, 1 and 2 narrow, 3 gather."""
    if K.fwd_gather != NULL and B <= GATHER_MAX_BATCH and B <= K.fwd_gather_rows:
        chunk[0] = K.fwd_gather_rows
        path[0] = 3
        return K.fwd_gather
    cdef int i
    for i in range(2):
        if B <= K.fwd_narrow_chunk[i] and K.fwd_narrow_chunk[i] < K.fwd_chunk:
            chunk[0] = K.fwd_narrow_chunk[i]
            path[0] = i + 1
            return K.fwd_narrow[i]
    chunk[0] = K.fwd_chunk
    path[0] = 0
    return K.fwd


cdef inline sp_linear_kernels _kernels(dtype, act_dtype):
    if is_bfloat16(act_dtype):
        return _KERNELS_BF16
    return _KERNELS_F64 if dtype == np.float64 else _KERNELS_F32


def forward_path(int64_t B, dtype=np.float32, act_dtype=None):
    """(name, chunk) of the forward kernel :func:`linear_forward` runs for a
    batch of B rows: "gather", "narrow1", "narrow2" or "full" (for tests and
    benchmarks)."""
    dtype = np.dtype(dtype)
    cdef sp_linear_kernels K = _kernels(dtype, dtype if act_dtype is None else np.dtype(act_dtype))
    cdef int64_t chunk = 0
    cdef int path = 0
    _forward_kernel(&K, B, &chunk, &path)
    return ("full", "narrow1", "narrow2", "gather")[path], chunk


cdef object _rows2d(arr, str name):
    """rows_view(arr, name), without its general machinery for the common
    case: a 2-D array whose rows are contiguous (any row stride)."""
    cdef cnp.ndarray a = <cnp.ndarray> arr
    cdef Py_ssize_t isz = cnp.PyArray_ITEMSIZE(a)
    if cnp.PyArray_NDIM(a) == 2 and cnp.PyArray_DIM(a, 0) > 1 and cnp.PyArray_DIM(a, 1) > 1:
        if cnp.PyArray_STRIDE(a, 1) == isz and cnp.PyArray_STRIDE(a, 0) % isz == 0:
            return a
    return rows_view(arr, name)


def _check_weight(W):
    if not isinstance(W, _CompressedMatrix):
        raise TypeError(
            f"W must be a sparseprop.CSRMatrix or CSCMatrix; got {type(W).__name__} "
            "(build one with CSRMatrix.from_dense / from_scipy / from_torch)"
        )
    return W


cdef int _threads_for(object n_threads, int64_t work):
    cdef int n = _config.resolve_n_threads(n_threads)
    if work < _SERIAL_WORK:
        return 1
    return n


ctypedef fused real:
    float
    double


cdef inline void _gather(const real* data, const int64_t* perm, real* out, int64_t i0,
                         int64_t i1) noexcept nogil:
    """out[i] = data[perm[i]] for i in [i0, i1)."""
    cdef int64_t i
    for i in range(i0, i1):
        out[i] = data[perm[i]]


cdef inline void _gather_part(int is_f64, const char* data, const int64_t* perm, char* out,
                              int64_t n, int part, int parts) noexcept nogil:
    """Piece ``part`` of ``parts`` of the gather of n values."""
    cdef int64_t i0 = n * part // parts, i1 = n * (part + 1) // parts
    if is_f64:
        _gather(<const double*> data, perm, <double*> out, i0, i1)
    else:
        _gather(<const float*> data, perm, <float*> out, i0, i1)


# ---------------------------------------------------------------- forward

cdef void _forward_range(sp_linear_fwd_fn fn, int64_t chunk, int itemsize,
                         const char* Xp, char* Yp, int64_t B, int64_t c, int64_t r,
                         int64_t c1, int64_t r1, char* scratch_ptr,
                         const sp_linear_fwd_args* base) noexcept nogil:
    """Rows [r, N) of chunk c, ..., rows [0, r1) of chunk c1."""
    cdef sp_linear_fwd_args a = base[0]
    cdef int64_t N = a.N, re, b0
    a.scratch = scratch_ptr
    while c < c1 or (c == c1 and r < r1):
        re = N if c < c1 else r1
        if r < re:
            b0 = c * chunk
            a.X = Xp + b0 * a.ldx * itemsize
            a.Y = Yp + b0 * a.ldy * itemsize
            a.rows = chunk if B - b0 > chunk else B - b0
            a.row_begin = r
            a.row_end = re
            fn(&a)
        c += 1
        r = 0


def linear_forward(X, W, bias=None, *, n_threads=None, out=None):
    """Forward pass of a sparse linear layer: ``Y = X @ W.T + bias``.

    Same semantics as ``torch.nn.functional.linear(X, W, bias)``.

    Parameters
    ----------
    X : ndarray, shape (..., in_features)
        Input, same dtype as ``W``, or ``ml_dtypes.bfloat16`` with a float32
        ``W`` (bfloat16 kernels: float32 sums, Y rounded to bfloat16); any
        strides (read-only is fine).
    W : CSRMatrix or CSCMatrix, shape (out_features, in_features)
        Sparse weight.
    bias : ndarray, shape (out_features,), optional
    n_threads : int, optional
        Threads to use; None means OpenMP's default (``OMP_NUM_THREADS``,
        threadpoolctl and ``torch.set_num_threads`` all set it).
    out : ndarray, optional
        Where to write Y: C-contiguous, of Y's shape and dtype, sharing no
        memory with X or bias.  Reusing one saves allocating (and the
        operating system clearing) a fresh array on every call; allocate it
        with :func:`sparseprop.empty_aligned` (``np.empty`` arrays are only
        16-byte aligned, which the kernels' stores are slower on).

    Returns
    -------
    Y : ndarray, shape (..., out_features)
        ``out``, or a new C-contiguous array of X's dtype (W's, or bfloat16).
    """
    check_weight_values(W, ("out", out))  # values changed in place, or aliased by out?
    _check_weight(W)
    dtype = W.dtype
    cdef int64_t N = W.shape[0], M = W.shape[1]
    Xa = as_float_array(X, "X", dtype, allow_bf16=True)
    act = Xa.dtype  # the activations' dtype: W's, or bfloat16
    if Xa.ndim < 1 or Xa.shape[-1] != M:
        raise ValueError(
            f"X has shape {Xa.shape}; W (shape {W.shape}) expects (..., {M}) "
            f"(last axis = in_features)"
        )
    lead = Xa.shape[:-1]
    check_result_size(lead + (N,), act.itemsize, f"X has shape {Xa.shape}")
    b = check_bias(bias, N, dtype)
    Y_out = output_array(out, lead + (N,), act, "out", (("X", Xa), ("bias", b)))
    X2 = _rows2d(Xa, "X")
    cdef int64_t B = X2.shape[0]
    Y = Y_out.reshape(B, N)  # a view: Y_out is C-contiguous
    if B == 0 or N == 0:
        return Y_out

    cdef sp_linear_kernels K = _kernels(dtype, act)
    cdef int64_t chunk = 0
    cdef int path = 0
    cdef sp_linear_fwd_fn fn = _forward_kernel(&K, B, &chunk, &path)
    cdef int itemsize = dtype.itemsize  # weights, bias, scratch
    cdef int act_size = act.itemsize    # X and Y
    cdef int64_t nnz = W.nnz
    cdef int64_t n_chunks = (B + chunk - 1) // chunk
    # the gather kernel walks plain CSR order (one block)
    cdef int64_t nblk = 1 if path == 3 else forward_blocks(M, N, nnz, chunk, itemsize, n_chunks)
    ptr, indices, perm, blk_cols = forward_plan(W, nblk)
    cdef int T = _threads_for(n_threads, B * (nnz + N))
    cdef int Tg = T if nnz >= _SERIAL_VALUES else 1
    # the values in the kernel's order: gathered (by the threads, in the
    # region below) unless W.data already is in that order
    cdef const char* g_src = _ptr(W.data)
    cdef const int64_t* g_perm = NULL
    cdef int is_f64 = itemsize == 8
    if perm is None:
        vals = W.data
    else:
        vals = np.empty(nnz, dtype=dtype)
        g_perm = <const int64_t*> _ptr(perm)
    cdef char* g_dst = _ptr(vals)

    # Tasks: equal shares of (chunk, output row) work, rows weighted by cost.
    cdef int64_t tasks = T
    cdef const int64_t[::1] bcv
    cdef const int64_t[::1] biv
    if tasks > 1:
        bcv, biv = forward_split(W, ptr, nblk, n_chunks, tasks, SP_LINEAR_FWD_TILE)
    cdef int64_t per_task = round_up64(sp_linear_fwd_scratch(chunk, M, N, nblk) * itemsize)
    buf = scratch(per_task * tasks)

    cdef sp_linear_fwd_args base
    base.ldx = row_stride(X2)
    base.ldy = N
    base.bias = _ptr(b) if b is not None else NULL
    base.M = M
    base.N = N
    base.ptr = <const int64_t*> _ptr(ptr)
    base.indices = <const int32_t*> _ptr(indices)
    base.vals = _ptr(vals)
    base.nblk = nblk
    base.blk_cols = <const int64_t*> _ptr(blk_cols)
    cdef const char* Xp = _ptr(X2)
    cdef char* Yp = _ptr(Y)
    cdef char* sp = _ptr(buf)
    cdef int64_t t
    cdef int tid, nt
    cdef int team[1]
    team[0] = 1

    with nogil:
        if tasks == 1:
            if g_perm != NULL:
                _gather_part(is_f64, g_src, g_perm, g_dst, nnz, 0, 1)
            _forward_range(fn, chunk, act_size, Xp, Yp, B, 0, 0, n_chunks, 0, sp, &base)
        else:
            # one region: every thread gathers a piece of the values, waits
            # for the others, then computes its share
            with parallel(num_threads=tasks):
                tid = threadid()
                nt = sp_omp_team_size()
                if tid == 0:
                    team[0] = nt  # through memory: not lastprivate
                if g_perm != NULL:
                    if Tg > 1:
                        _gather_part(is_f64, g_src, g_perm, g_dst, nnz, tid, nt)
                    elif tid == 0:
                        _gather_part(is_f64, g_src, g_perm, g_dst, nnz, 0, 1)
                    sp_linear_barrier()
                for t in prange(tasks, schedule="static", chunksize=1):
                    _forward_range(fn, chunk, act_size, Xp, Yp, B, bcv[t], biv[t],
                                   bcv[t + 1], biv[t + 1], sp + tid * per_task, &base)
    _config.note_team_size(team[0])
    return Y_out


# ---------------------------------------------------------------- backward

cdef inline void _scatter_values(const real* data, const int64_t* slot, real* vals_pad,
                                 int64_t i0, int64_t i1) noexcept nogil:
    """vals_pad[slot[i]] = data[i] for i in [i0, i1)."""
    cdef int64_t i
    for i in range(i0, i1):
        vals_pad[slot[i]] = data[i]


cdef inline void _reduce_partials(const real* parts, int64_t stride, int64_t n_parts,
                                  const int64_t* slot, real* dW, int64_t i0,
                                  int64_t i1) noexcept nogil:
    """dW[i] = sum over partial buffers of parts[slot[i]] (fixed order), i in [i0, i1)."""
    cdef int64_t i, p
    cdef real acc
    for i in range(i0, i1):
        acc = parts[slot[i]]
        for p in range(1, n_parts):
            acc = acc + parts[p * stride + slot[i]]
        dW[i] = acc


cdef void _values_in(int is_f64, const char* data, const int64_t* slot, char* vals_pad,
                     int64_t nnz_pad, int64_t nnz, int part, int parts) noexcept nogil:
    """Piece ``part`` of ``parts`` of: vals_pad = 0, then data[i] at slot[i].
    All pieces' zeroing must be done before any scatter (callers put a
    barrier between two calls: first with nnz_pad < 0 meaning "zero only")."""
    cdef int64_t itemsize = 8 if is_f64 else 4
    cdef int64_t z0, z1
    if nnz_pad >= 0:
        z0 = nnz_pad * part // parts
        z1 = nnz_pad * (part + 1) // parts
        memset(vals_pad + z0 * itemsize, 0, (z1 - z0) * itemsize)
        return
    if is_f64:
        _scatter_values(<const double*> data, slot, <double*> vals_pad,
                        nnz * part // parts, nnz * (part + 1) // parts)
    else:
        _scatter_values(<const float*> data, slot, <float*> vals_pad,
                        nnz * part // parts, nnz * (part + 1) // parts)


cdef void _dW_out(int is_f64, const char* parts_p, int64_t stride, int64_t n_parts,
                  const int64_t* slot, char* dW, int64_t nnz, int part,
                  int parts) noexcept nogil:
    """Piece ``part`` of ``parts`` of the sum of the partial dW buffers into dW."""
    if is_f64:
        _reduce_partials(<const double*> parts_p, stride, n_parts, slot, <double*> dW,
                         nnz * part // parts, nnz * (part + 1) // parts)
    else:
        _reduce_partials(<const float*> parts_p, stride, n_parts, slot, <float*> dW,
                         nnz * part // parts, nnz * (part + 1) // parts)


cdef void _backward_range(sp_linear_bwd_fn fn, int64_t chunk, int itemsize,
                          const char* Xp, const char* dYp, char* dXp, int64_t B,
                          int64_t c, int64_t m, int64_t c1, int64_t m1,
                          char* dW_part, char* scratch_ptr,
                          const sp_linear_bwd_args* base) noexcept nogil:
    """Columns [m, M) of chunk c, ..., columns [0, m1) of chunk c1, added
    into the calling thread's partial dW."""
    cdef sp_linear_bwd_args a = base[0]
    cdef int64_t M = a.M, me, b0
    a.scratch = scratch_ptr
    a.dW = dW_part
    while c < c1 or (c == c1 and m < m1):
        me = M if c < c1 else m1
        if m < me:
            b0 = c * chunk
            a.X = Xp + b0 * a.ldx * itemsize
            a.dY = dYp + b0 * a.lddy * itemsize
            a.dX = (dXp + b0 * a.lddx * itemsize) if dXp != NULL else NULL
            a.rows = chunk if B - b0 > chunk else B - b0
            a.col_begin = m
            a.col_end = me
            fn(&a)
        c += 1
        m = 0


def linear_backward(X, W, dY, need_input_grad=True, *, n_threads=None, out_dx=None):
    """Backward pass of a sparse linear layer, in one pass over W's nonzeros.

    Computes ``dX = dY @ W`` (sparse x dense) and the weight gradient
    ``dY.T @ X`` *only at W's nonzeros* (sampled dense-dense product); nothing
    of size out_features x in_features is ever formed.

    Parameters
    ----------
    X : ndarray, shape (..., in_features)
        The forward input: W's dtype, or ``ml_dtypes.bfloat16`` with a
        float32 ``W``.
    W : CSRMatrix or CSCMatrix, shape (out_features, in_features)
    dY : ndarray, shape (..., out_features)
        Gradient of the loss with respect to the forward output, of X's dtype.
    need_input_grad : bool, default True
        If False, dX is not computed (and its time is saved).
    n_threads : int, optional
        As in :func:`linear_forward`.
    out_dx : ndarray, optional
        Where to write dX (as ``out`` of :func:`linear_forward`: X's shape,
        sharing no memory with X or dY); only with ``need_input_grad``.

    Returns
    -------
    dX : ndarray of X's shape and dtype (``out_dx`` if given), or None
        bfloat16 for bfloat16 X, rounded to nearest even from float32 sums.
    dW : ndarray, shape (nnz,)
        Of W's dtype (float32 for bfloat16 X: accumulated in float32).
        Gradient at the stored values, aligned with ``W.data`` (whatever W's
        format), so ``W.data -= lr * dW`` is an SGD step.
    """
    check_weight_values(W, ("out_dx", out_dx))  # values changed in place, or under out_dx?
    _check_weight(W)
    dtype = W.dtype
    cdef int64_t N = W.shape[0], M = W.shape[1]
    Xa = as_float_array(X, "X", dtype, allow_bf16=True)
    dYa = as_float_array(dY, "dY", dtype, allow_bf16=True)
    act = Xa.dtype
    if dYa.dtype != act:
        raise TypeError(f"dY has dtype {dYa.dtype} but X has dtype {act}; they must match")
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
    if out_dx is not None and not need_dx:
        raise ValueError("out_dx was given but need_input_grad is False (no dX is computed)")
    dX_out = (output_array(out_dx, Xa.shape, act, "out_dx", (("X", Xa), ("dY", dYa)))
              if need_dx else None)
    X2 = _rows2d(Xa, "X")
    dY2 = _rows2d(dYa, "dY")
    cdef int64_t B = X2.shape[0]
    dX = dX_out.reshape(B, M) if need_dx else None  # a view: dX_out is C-contiguous
    cdef int64_t nnz = W.nnz
    if B == 0 or M == 0:
        return dX_out, np.zeros(nnz, dtype=dtype)

    dW = np.empty(nnz, dtype=dtype)
    colptr, rowidx, slot = backward_plan(W, SP_LINEAR_PAD)
    cdef int64_t nnz_pad = rowidx.shape[0]
    cdef int itemsize = dtype.itemsize  # weights, dW, scratch
    cdef int act_size = act.itemsize    # X, dY and dX
    cdef sp_linear_kernels K = _kernels(dtype, act)
    cdef int64_t chunk = K.bwd_chunk
    cdef int64_t n_chunks = (B + chunk - 1) // chunk
    cdef int T = _threads_for(n_threads, B * (nnz + M))
    cdef int Tg = T if nnz >= _SERIAL_VALUES else 1
    cdef int64_t tasks = T
    cdef const int64_t[::1] bcv
    cdef const int64_t[::1] bmv
    if tasks > 1:
        bcv, bmv = backward_split(W, colptr, n_chunks, tasks)

    cdef int64_t vals_bytes = round_up64(nnz_pad * itemsize)
    cdef int64_t partial_bytes = vals_bytes
    cdef int64_t per_task = round_up64(sp_linear_bwd_scratch(chunk, N) * itemsize)
    buf = scratch(vals_bytes + tasks * (partial_bytes + per_task))
    cdef char* vals_p = _ptr(buf)
    cdef char* pp = vals_p + vals_bytes
    cdef char* sp = pp + tasks * partial_bytes
    cdef const int64_t* slot_p = <const int64_t*> _ptr(slot)
    cdef const char* data_p = _ptr(W.data)
    cdef char* dW_p = _ptr(dW)
    cdef int is_f64 = itemsize == 8

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
    cdef sp_linear_bwd_fn fn = K.bwd
    cdef int64_t t
    cdef int tid, nt, vp
    cdef int team[1]
    team[0] = 1

    with nogil:
        if tasks == 1:
            _values_in(is_f64, data_p, slot_p, vals_p, nnz_pad, nnz, 0, 1)
            _values_in(is_f64, data_p, slot_p, vals_p, -1, nnz, 0, 1)
            memset(pp, 0, nnz_pad * itemsize)
            _backward_range(fn, chunk, act_size, Xp, dYp, dXp, B, 0, 0, n_chunks, 0,
                            pp, sp, &base)
            _dW_out(is_f64, pp, partial_bytes // itemsize, 1, slot_p, dW_p, nnz, 0, 1)
        else:
            # one region, three phases split by barriers: the values into the
            # padded order, each thread's share of the chunks into its own
            # partial dW, the partials summed into dW (pieces of the values
            # only when there are enough of them)
            with parallel(num_threads=tasks):
                tid = threadid()
                nt = sp_omp_team_size()
                if tid == 0:
                    team[0] = nt  # through memory: not lastprivate
                vp = nt if Tg > 1 else 1
                if tid < vp:
                    _values_in(is_f64, data_p, slot_p, vals_p, nnz_pad, nnz, tid, vp)
                sp_linear_barrier()
                if tid < vp:
                    _values_in(is_f64, data_p, slot_p, vals_p, -1, nnz, tid, vp)
                memset(pp + tid * partial_bytes, 0, nnz_pad * itemsize)
                sp_linear_barrier()
                for t in prange(tasks, schedule="static", chunksize=1):
                    _backward_range(fn, chunk, act_size, Xp, dYp, dXp, B, bcv[t], bmv[t],
                                    bcv[t + 1], bmv[t + 1], pp + tid * partial_bytes,
                                    sp + tid * per_task, &base)
                sp_linear_barrier()
                if tid < vp:
                    _dW_out(is_f64, pp, partial_bytes // itemsize, nt, slot_p, dW_p, nnz,
                            tid, vp)
    _config.note_team_size(team[0])
    return dX_out, dW
