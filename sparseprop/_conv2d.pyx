"""Sparse conv2d: forward and backward from NumPy (the paper's section 3.3).

The math lives in include/sparseprop/conv.h; the argument checks, the
geometry and the per-mask plans (the packed buffer layout, the weights'
offsets and lists, the task ranges) in sparseprop/_conv_plan.py.  This
module fills the kernels' argument structs and runs them with the GIL
released.

bfloat16: X and dY may be ``ml_dtypes.bfloat16`` arrays with a float32
weight; Y and dX are then bfloat16 (rounded to nearest even from float32
sums) and dW float32.  The kernels read and write the activations as
bfloat16 and compute in float32 (include/sparseprop/conv_impl.h): the
driver passes the activations' strides in their own elements and sizes the
scratch (float32 buffers) by the weight's item size.

Threading: the batch is cut into *units* (one image for "over_width", one
SIMD vector of images for "batch_last").  Tasks own contiguous runs of units
and, when units are scarce, also a range of output channels (forward) or of
input channels (backward).  Every dX channel and every dW entry belongs to
exactly one input channel, so backward tasks never write the same element;
tasks that split the batch accumulate dW in their own partial buffer, summed
once at the end.  No atomics, no barriers inside a pass.
"""
import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy

from sparseprop._memory cimport data_ptr as _ptr
from sparseprop._memory cimport round_up64

from sparseprop import _config, _exact
from sparseprop._checks import bf16_round, bf16_widen, is_bfloat16
from sparseprop._checks import (as_float_array, check_bias, check_weight_values, output_array,
                                scratch)
from sparseprop._conv_plan import ALGORITHMS  # no-cython-lint (re-exported)
from sparseprop._conv_plan import (algorithm_for, backward_lists, channel_split, check_weight,
                                   conv_plan, forward_offsets, nchw_view, prepare)
from sparseprop._tasks import task_grid

cnp.import_array()

cdef extern from "sparseprop/threads.h" nogil:
    int sp_omp_team_size()

cdef extern from "sparseprop/conv.h" nogil:
    ctypedef struct sp_conv_geom:
        int batch_last
        int64_t L, U, cv
        int64_t B, C, H, W
        int64_t OC, OH, OW
        int64_t ICg, OCg
        int64_t sh, sw, pt, pl
        int64_t Hb, Wq, rowlen_x, plane_x
        int64_t Hdy, Wdy, TP, LP, rowlen_dy, plane_dy

    ctypedef struct sp_conv_fwd_args:
        const sp_conv_geom* g
        const void* X
        int64_t sxb, sxc, sxh
        void* Y
        const void* bias
        const int64_t* och
        const int32_t* ich
        const int64_t* xoff
        const void* vals

    ctypedef struct sp_conv_bwd_args:
        const sp_conv_geom* g
        const void* X
        int64_t sxb, sxc, sxh
        const void* dY
        int64_t syb, syc, syh
        void* dX
        const int64_t* lptr
        const int64_t* dyoff
        const void* vals

    ctypedef void (*sp_conv_fwd_fn)(const sp_conv_fwd_args*, int64_t, int64_t, int64_t,
                                    int64_t, void*) noexcept nogil
    ctypedef void (*sp_conv_bwd_fn)(const sp_conv_bwd_args*, int64_t, int64_t, int64_t,
                                    int64_t, void*, void*) noexcept nogil
    ctypedef void (*sp_conv_reduce_fn)(const void*, int64_t, int64_t, int64_t,
                                       const int64_t*, void*, int64_t, int64_t) noexcept nogil

    ctypedef void (*sp_conv_gather_fn)(const void*, const int64_t*, void*, int64_t,
                                       int64_t) noexcept nogil

    ctypedef struct sp_conv_kernels:
        sp_conv_fwd_fn fwd
        sp_conv_bwd_fn bwd
        sp_conv_reduce_fn reduce
        sp_conv_gather_fn gather
        int64_t lanes

    sp_conv_kernels sp_conv_select(int isa, int is_f64)
    sp_conv_kernels sp_conv_select_bf16(int isa, int use_bf16x)
    int64_t sp_conv_fwd_scratch(const sp_conv_geom* g, int64_t n_ic, int64_t n_oc)
    int64_t sp_conv_bwd_scratch(const sp_conv_geom* g, int64_t n_ic, int64_t n_oc, int with_dx)


# Kernels chosen once, at import, for the ISA in sparseprop._config.
cdef sp_conv_kernels _KERNELS_F32 = sp_conv_select(_config.ISA, 0)
cdef sp_conv_kernels _KERNELS_F64 = sp_conv_select(_config.ISA, 1)
# bfloat16 activations with float32 weights; AVX512_BF16 rounding where
# _config.BF16_EXT says so (as for the linear kernels).
cdef sp_conv_kernels _KERNELS_BF16 = sp_conv_select_bf16(_config.ISA, _config.BF16_EXT)

# Below this many multiply-adds a call runs on one thread.
cdef int64_t _SERIAL_WORK = 1 << 17

cdef inline sp_conv_kernels _kernels(dtype):
    """The kernels for activations of ``dtype`` (W's, or bfloat16 with float32 W)."""
    if is_bfloat16(dtype):
        return _KERNELS_BF16
    return _KERNELS_F64 if dtype == np.float64 else _KERNELS_F32


def lanes(dtype):
    """SIMD lanes of the conv kernels for activations of ``dtype`` on the ISA
    in use (bfloat16: those of the float32 kernels, which it computes in)."""
    return int(_kernels(np.dtype(dtype)).lanes)


def conv2d_algorithm(X_shape, W, stride=1, padding=0, dilation=1, groups=1):
    """The algorithm ``algorithm="auto"`` picks for this convolution.

    Parameters
    ----------
    X_shape : tuple of int
        Shape of the input, (batch, channels, height, width) or
        (channels, height, width).
    W : SparseConvWeight
    stride, padding, dilation, groups
        As in :func:`conv2d_forward`.

    Returns
    -------
    str
        ``"batch_last"`` or ``"over_width"``.

    Notes
    -----
    Both algorithms fill SIMD vectors of ``L`` lanes (8 float32 or 4 float64
    values on AVX2/AVX-512, 1 on the scalar path): "batch_last" with ``L``
    images at one output position, "over_width" with ``L`` neighbouring
    outputs of one row.  With the fractions of useful lanes
    ``eff_batch = B / (ceil(B / L) * L)`` and
    ``eff_width = OW / (ceil(OW / L) * L)`` (``B`` the batch, ``OH x OW`` the
    output), the rule is:

    * "batch_last" if ``eff_batch >= eff_width`` and either the output is
      small (``OH * OW <= 64``, e.g. 7x7) or the width wastes over a quarter
      of the lanes (``eff_width < 0.75``, e.g. widths 1-5 or 9);
    * "over_width" otherwise (e.g. 14x14 and larger outputs, or batch 1).

    The measurements behind the rule are in docs/tuning.md.
    """
    check_weight(W)
    return algorithm_for(X_shape, W, stride, padding, dilation, groups, lanes(W.dtype))


# ---------------------------------------------------------------- plans

cdef void _fill_geom(sp_conv_geom* g, plan, int64_t B):
    g.batch_last = plan.batch_last
    g.L = plan.L
    g.U = plan.U
    g.cv = plan.cv
    g.B = B
    g.C = plan.C
    g.H = plan.H
    g.W = plan.W
    g.OC = plan.OC
    g.OH = plan.OH
    g.OW = plan.OW
    g.ICg = plan.ICg
    g.OCg = plan.OCg
    g.sh = plan.sh
    g.sw = plan.sw
    g.pt = plan.pt
    g.pl = plan.pl
    g.Hb = plan.Hb
    g.Wq = plan.Wq
    g.rowlen_x = plan.rowlen_x
    g.plane_x = plan.plane_x
    g.Hdy = plan.Hdy
    g.Wdy = plan.Wdy
    g.TP = plan.TP
    g.LP = plan.LP
    g.rowlen_dy = plan.rowlen_dy
    g.plane_dy = plan.plane_dy


cdef void _load_geom(sp_conv_geom* g, plan, int64_t B):
    """``g`` = the plan's sp_conv_geom for batch ``B``: filled from the plan's
    fields on its first call, copied from the bytes kept in ``plan.geom`` after."""
    cdef bytes blob = plan.geom
    if blob is None:
        _fill_geom(g, plan, B)
        plan.geom = (<char*> g)[:sizeof(sp_conv_geom)]
    else:
        memcpy(g, <const char*> blob, sizeof(sp_conv_geom))
        g.B = B


# ---------------------------------------------------------------- forward

def conv2d_forward(X, W, bias=None, stride=1, padding=0, dilation=1, groups=1,
                   algorithm="auto", *, n_threads=None, out=None):
    """Forward pass of a sparse conv2d layer.

    Same semantics as ``torch.nn.functional.conv2d(X, W, bias, stride,
    padding, dilation, groups)``; the cost grows with ``W.nnz``.

    Parameters
    ----------
    X : ndarray, shape (batch, in_channels, H, W) or (in_channels, H, W)
        Input (NCHW), same dtype as ``W``, or ``ml_dtypes.bfloat16`` with a
        float32 ``W`` (bfloat16 kernels: float32 sums, Y rounded to bfloat16,
        nearest even); any strides (channels_last views, read-only arrays are
        fine; inputs whose last axis is not contiguous are copied first).
    W : SparseConvWeight, shape (out_channels, in_channels // groups, kh, kw)
    bias : ndarray, shape (out_channels,), optional
    stride : int or (int, int), default 1
    padding : int, (int, int), "same" or "valid", default 0
        Zero padding on both sides of each spatial axis; ``"same"`` (only with
        stride 1, like torch) pads so the output has the input's size, putting
        the odd extra row/column at the bottom/right.
    dilation : int or (int, int), default 1
    groups : int, default 1
        ``in_channels`` and ``out_channels`` must both be divisible by it;
        ``groups == in_channels`` is a depthwise convolution.
    algorithm : {"auto", "batch_last", "over_width"}, default "auto"
        "batch_last" vectorises over the batch (small spatial sizes),
        "over_width" over the output width (large spatial sizes); "auto"
        follows :func:`conv2d_algorithm`.  Results agree to rounding.
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
    Y : ndarray, shape (batch, out_channels, OH, OW) (no batch axis for 3-D X)
        ``out``, or a new C-contiguous array of X's dtype (W's, or bfloat16).

    Notes
    -----
    Only stored weights multiply: a NaN or Inf in X reaches only the outputs
    that a stored weight connects it to.
    """
    check_weight_values(W, ("out", out))  # values changed in place, or aliased by out?
    dtype, X4, unbatched, geo = prepare(X, W, stride, padding, dilation, groups, algorithm)
    act = X4.dtype  # the activations' dtype: W's, or bfloat16
    OH, OW = geo.OH, geo.OW
    cdef int64_t OC = W.shape[0]
    b = check_bias(bias, OC, dtype)
    cdef int T0 = _config.resolve_n_threads(n_threads)
    cdef int64_t B = X4.shape[0], C = X4.shape[1], H = X4.shape[2], Wd = X4.shape[3]
    y_shape = (int(OC), OH, OW) if unbatched else (int(B), int(OC), OH, OW)
    Y_out = output_array(out, y_shape, act, "out", (("X", X4), ("bias", b)))
    Y = Y_out[None] if unbatched else Y_out
    if B == 0 or OC == 0:
        return Y_out
    cdef sp_conv_kernels K = _kernels(act)
    cdef int64_t L = K.lanes
    plan = conv_plan(W, algorithm, L, B, C, H, Wd, geo)
    batch_last = plan.batch_last
    xoff = forward_offsets(W, plan)
    Xv, sxb, sxc, sxh = nchw_view(X4)

    cdef sp_conv_geom geom
    _load_geom(&geom, plan, B)
    cdef int64_t n_units = (B + L - 1) // L if batch_last else B
    cdef int64_t nnz = W.nnz
    cdef int T = T0 if B * OH * OW * (nnz + OC) >= _SERIAL_WORK else 1
    Tb, Tc = task_grid(T, n_units, OC)
    cdef int64_t tb_n = Tb, tc_n = Tc, tasks = Tb * Tc
    och = W.och
    oc_bounds, n_ic, n_oc = channel_split(W, plan, "fwd", Tc)
    cdef int itemsize = dtype.itemsize  # the scratch buffers are W's dtype
    cdef int64_t per_task = round_up64(sp_conv_fwd_scratch(&geom, n_ic, n_oc) * itemsize)
    buf = scratch(per_task * tasks)

    cdef sp_conv_fwd_args args
    args.g = &geom
    args.X = _ptr(Xv)
    args.sxb = sxb
    args.sxc = sxc
    args.sxh = sxh
    args.Y = _ptr(Y)
    args.bias = _ptr(b) if b is not None else NULL
    args.och = <const int64_t*> _ptr(och)
    args.ich = <const int32_t*> _ptr(W.ich)
    args.xoff = <const int64_t*> _ptr(xoff)
    args.vals = _ptr(W.data)
    cdef const int64_t[::1] ob = oc_bounds
    cdef sp_conv_fwd_fn fn = K.fwd
    cdef char* sp = _ptr(buf)
    cdef int64_t t, tb, tc
    cdef int team[1]
    team[0] = 1
    with nogil:
        if tasks == 1:
            fn(&args, 0, n_units, 0, OC, sp)
        else:
            for t in prange(tasks, num_threads=tasks, schedule="static", chunksize=1):
                if t == 0:
                    team[0] = sp_omp_team_size()  # through memory: not lastprivate
                tb = t // tc_n
                tc = t % tc_n
                fn(&args, n_units * tb // tb_n, n_units * (tb + 1) // tb_n, ob[tc], ob[tc + 1],
                   sp + t * per_task)
    _config.note_team_size(team[0])
    return Y_out


# ---------------------------------------------------------------- backward

def conv2d_backward(X, W, dY, stride=1, padding=0, dilation=1, groups=1,
                    need_input_grad=True, algorithm="auto", *, n_threads=None,
                    out_dx=None):
    """Backward pass of a sparse conv2d layer, in one fused pass over W's nonzeros.

    Computes the input gradient and the weight gradient *only at W's stored
    values*; nothing of the dense weight's size is ever formed.

    Parameters
    ----------
    X : ndarray, shape (batch, in_channels, H, W) or (in_channels, H, W)
        The forward input: W's dtype, or ``ml_dtypes.bfloat16`` with a
        float32 ``W`` (and a bfloat16 ``dY``): the bfloat16 kernels, as in
        :func:`conv2d_forward`.
    W : SparseConvWeight
    dY : ndarray, shape (batch, out_channels, OH, OW) (no batch axis for 3-D X)
        Gradient of the loss with respect to the forward output, of X's dtype.
    stride, padding, dilation, groups
        As in :func:`conv2d_forward` (the same values as the forward pass).
    need_input_grad : bool, default True
        If False, dX is not computed (and its time is saved).
    algorithm : {"auto", "batch_last", "over_width"}, default "auto"
        As in :func:`conv2d_forward`.
    n_threads : int, optional
        As in :func:`conv2d_forward`.
    out_dx : ndarray, optional
        Where to write dX (as ``out`` of :func:`conv2d_forward`: X's shape,
        sharing no memory with X or dY); only with ``need_input_grad``.

    Returns
    -------
    dX : ndarray of X's shape and dtype, or None
        ``out_dx``, or a new C-contiguous array; bfloat16 for bfloat16 X,
        rounded to nearest even from float32 sums.
    dW : ndarray, shape (nnz,)
        Of W's dtype (float32 for bfloat16 X: accumulated in float32).
        Gradient at the stored values, aligned with ``W.data``, so
        ``W.data -= lr * dW`` is an SGD step.

    Notes
    -----
    dW sums, for each stored weight, over every (input, output) position pair
    it connects, the zero padding taking part as zeros (as in the forward
    pass).  NaN and Inf propagate exactly as dense math over the stored
    weights: when the weight or the computed weight gradient is not finite,
    both gradients are recomputed on an exact (slow) path, because the fused
    kernel's border handling is exact only for finite values.
    """
    check_weight_values(W, ("out_dx", out_dx))  # values changed in place, or under out_dx?
    dtype, X4, unbatched, geo = prepare(X, W, stride, padding, dilation, groups, algorithm)
    act = X4.dtype  # the activations' dtype: W's, or bfloat16
    low = is_bfloat16(act)
    OH, OW = geo.OH, geo.OW
    cdef int64_t OC = W.shape[0]
    dYa = as_float_array(dY, "dY", dtype, allow_bf16=low)
    if low and dYa.dtype != act:
        raise TypeError(f"dY has dtype {dYa.dtype} but X has dtype bfloat16; they must match")
    cdef int64_t B = X4.shape[0], C = X4.shape[1], H = X4.shape[2], Wd = X4.shape[3]
    want = (OC, OH, OW) if unbatched else (B, OC, OH, OW)
    if dYa.shape != want:
        raise ValueError(
            f"dY has shape {dYa.shape}; expected {want} (the forward output's shape for X "
            f"of shape {X.shape if hasattr(X, 'shape') else X4.shape[1:]})"
        )
    cdef int T0 = _config.resolve_n_threads(n_threads)
    dY4 = dYa[None] if unbatched else dYa
    need_dx = bool(need_input_grad)
    if out_dx is not None and not need_dx:
        raise ValueError("out_dx was given but need_input_grad is False (no dX is computed)")
    cdef int64_t nnz = W.nnz
    dX_out = (output_array(out_dx, X4.shape[1:] if unbatched else X4.shape, act,
                           "out_dx", (("X", X4), ("dY", dY4))) if need_dx else None)
    dX = (dX_out[None] if unbatched else dX_out) if need_dx else None
    if B == 0 or nnz == 0:
        if need_dx:
            dX_out[...] = 0
        return dX_out, np.zeros(nnz, dtype=dtype)

    cdef sp_conv_kernels K = _kernels(act)
    cdef int64_t L = K.lanes
    plan = conv_plan(W, algorithm, L, B, C, H, Wd, geo)
    batch_last = plan.batch_last
    perm, lptr, dyoff = backward_lists(W, plan)
    Xv, sxb, sxc, sxh = nchw_view(X4)
    dYv, syb, syc, syh = nchw_view(dY4)

    cdef sp_conv_geom geom
    _load_geom(&geom, plan, B)
    cdef int64_t n_units = (B + L - 1) // L if batch_last else B
    cdef int T = T0 if 2 * B * OH * OW * (nnz + OC) >= _SERIAL_WORK else 1
    Tb, Tc = task_grid(T, n_units, C)
    cdef int64_t tb_n = Tb, tc_n = Tc, tasks = Tb * Tc
    ic_bounds, n_ic, n_oc = channel_split(W, plan, "bwd", Tc)
    cdef int itemsize = dtype.itemsize  # scratch, dW partials and values: W's dtype
    cdef int64_t per_task = round_up64(sp_conv_bwd_scratch(&geom, n_ic, n_oc, need_dx) * itemsize)
    cdef int64_t part = round_up64(nnz * L * itemsize)
    cdef int64_t vals_bytes = round_up64(nnz * itemsize)
    buf = scratch(per_task * tasks + part * tb_n + vals_bytes)
    dW = np.empty(nnz, dtype=dtype)
    cdef char* sp = _ptr(buf)
    cdef char* parts = sp + per_task * tasks
    cdef char* vals_p = parts + part * tb_n
    cdef const int64_t* perm_p = <const int64_t*> _ptr(perm)
    cdef char* data_p = _ptr(W.data)
    cdef sp_conv_gather_fn gather = K.gather
    cdef int64_t t, tb, tc, k0, k1
    cdef int Tr = T if nnz * L * Tb > 65536 else 1
    with nogil:  # the values in list order (they change every training step)
        if Tr == 1:
            gather(data_p, perm_p, vals_p, 0, nnz)
        else:
            for t in prange(Tr, num_threads=Tr, schedule="static", chunksize=1):
                gather(data_p, perm_p, vals_p, nnz * t // Tr, nnz * (t + 1) // Tr)

    cdef sp_conv_bwd_args args
    args.g = &geom
    args.X = _ptr(Xv)
    args.sxb = sxb
    args.sxc = sxc
    args.sxh = sxh
    args.dY = _ptr(dYv)
    args.syb = syb
    args.syc = syc
    args.syh = syh
    args.dX = _ptr(dX) if need_dx else NULL
    args.lptr = <const int64_t*> _ptr(lptr)
    args.dyoff = <const int64_t*> _ptr(dyoff)
    args.vals = vals_p
    cdef const int64_t[::1] cb = ic_bounds
    cdef sp_conv_bwd_fn fn = K.bwd
    cdef sp_conv_reduce_fn red = K.reduce
    cdef int team[1]
    team[0] = 1
    with nogil:
        if tasks == 1:
            fn(&args, 0, n_units, 0, C, sp, parts)
        else:
            for t in prange(tasks, num_threads=tasks, schedule="static", chunksize=1):
                if t == 0:
                    team[0] = sp_omp_team_size()  # through memory: not lastprivate
                tb = t // tc_n
                tc = t % tc_n
                fn(&args, n_units * tb // tb_n, n_units * (tb + 1) // tb_n, cb[tc], cb[tc + 1],
                   sp + t * per_task, parts + tb * part)
    _config.note_team_size(team[0])
    cdef char* dW_p = _ptr(dW)
    cdef int64_t stride_el = part // itemsize
    with nogil:
        if Tr == 1:
            red(parts, stride_el, tb_n, L, perm_p, dW_p, 0, nnz)
        else:
            for t in prange(Tr, num_threads=Tr, schedule="static", chunksize=1):
                k0 = nnz * t // Tr
                k1 = nnz * (t + 1) // Tr
                red(parts, stride_el, tb_n, L, perm_p, dW_p, k0, k1)
    if not (np.isfinite(dW).all() and np.isfinite(W.data).all()):  # O(nnz)
        # NaN/Inf: the kernel's border pairs are no longer no-ops (see _exact)
        if low:  # exact float64 math on the widened values; dX (float32) then rounded
            dX_exact, dW = _exact.conv2d_backward(bf16_widen(X4), W, bf16_widen(dY4), geo,
                                                  need_dx)
            if need_dx:
                bf16_round(dX_exact, act, dX)
        else:
            dX_exact, dW = _exact.conv2d_backward(X4, W, dY4, geo, need_dx)
            if need_dx:
                dX[...] = dX_exact
    return dX_out, dW
