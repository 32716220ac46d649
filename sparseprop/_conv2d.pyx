"""Sparse conv2d: forward and backward from NumPy (the paper's section 3.3).

The math lives in include/sparseprop/conv.h; this module validates inputs,
works out the geometry (output size, padding, the packed buffer layout),
builds the per-mask kernel plans (cached in the weight's ``_cache``), splits
the work into thread tasks and runs them with the GIL released.

Threading: the batch is cut into *units* (one image for "over_width", one
SIMD vector of images for "batch_last").  Tasks own contiguous runs of units
and, when units are scarce, also a range of output channels (forward) or of
input channels (backward).  Every dX channel and every dW entry belongs to
exactly one input channel, so backward tasks never write the same element;
tasks that split the batch accumulate dW in their own partial buffer, summed
once at the end.  No atomics, no barriers inside a pass.
"""
from collections import OrderedDict

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t

from sparseprop._convweight cimport SparseConvWeight

from sparseprop import _config, _exact
from sparseprop._checks import (MAX_BYTES, as_float_array, check_bias, check_result_size,
                                check_weight_values, output_array, scratch)

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
    int64_t sp_conv_fwd_scratch(const sp_conv_geom* g, int64_t n_ic, int64_t n_oc)
    int64_t sp_conv_bwd_scratch(const sp_conv_geom* g, int64_t n_ic, int64_t n_oc, int with_dx)


# Kernels chosen once, at import, for the ISA in sparseprop._config.
cdef sp_conv_kernels _KERNELS_F32 = sp_conv_select(_config.ISA, 0)
cdef sp_conv_kernels _KERNELS_F64 = sp_conv_select(_config.ISA, 1)

# Below this many multiply-adds a call runs on one thread.
cdef int64_t _SERIAL_WORK = 1 << 17

# Plans kept per weight structure (geometries are few in a network).
_MAX_PLANS = 16

ALGORITHMS = ("auto", "batch_last", "over_width")

# Threads of the most recent parallel region (diagnostic for the tests).
cdef int _last_team = 0


def _last_team_size():
    """Threads that ran the last forward/backward pass of this module (tests use it)."""
    return _last_team


cdef inline sp_conv_kernels _kernels(dtype):
    return _KERNELS_F64 if dtype == np.float64 else _KERNELS_F32


cdef inline char* _ptr(arr):
    return <char*> cnp.PyArray_DATA(<cnp.ndarray> arr)


def lanes(dtype):
    """SIMD lanes of the conv kernels for ``dtype`` on the ISA in use."""
    return int(_kernels(np.dtype(dtype)).lanes)


# ---------------------------------------------------------------- arguments

def _int_tuple(value, name, minimum, what):
    """An int or a sequence of 1 or 2 ints -> (h, w), each >= minimum."""
    bad = TypeError(f"{name} must be an int or a pair of ints (h, w); got {value!r}")
    if isinstance(value, (bool, np.bool_)):
        raise bad
    try:
        if hasattr(value, "__index__"):
            pair = (int(value.__index__()),) * 2
        elif isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(
                hasattr(v, "__index__") and not isinstance(v, (bool, np.bool_)) for v in value):
            pair = tuple(int(v.__index__()) for v in value)
            if len(pair) == 1:
                pair = pair * 2
        else:
            raise bad
    except TypeError:  # e.g. an array of two ints, whose __index__ raises
        raise bad from None
    if min(pair) < minimum:
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return pair


def _check_weight(W):
    if not isinstance(W, SparseConvWeight):
        raise TypeError(
            f"W must be a sparseprop.SparseConvWeight; got {type(W).__name__} "
            "(build one with SparseConvWeight.from_dense / from_torch)"
        )
    return W


def _check_groups(groups, W):
    if isinstance(groups, (bool, np.bool_)) or not hasattr(groups, "__index__"):
        raise TypeError(f"groups must be a positive integer; got {groups!r}")
    g = int(groups.__index__())
    if g < 1:
        raise ValueError(f"groups must be a positive integer; got {g}")
    if W.shape[0] % g:
        raise ValueError(
            f"groups={g} must divide out_channels={W.shape[0]} (W has shape {W.shape})"
        )
    return g


def _geometry(x_shape, W, stride, padding, dilation, groups):
    """Validate the convolution options for input shape ``x_shape`` (C, H, W
    last); return (sh, sw, pt, pb, pl, pr, dh, dw, groups, OH, OW)."""
    _, ICg, KH, KW = W.shape
    g = _check_groups(groups, W)
    sh, sw = _int_tuple(stride, "stride", 1, "positive (>= 1)")
    dh, dw = _int_tuple(dilation, "dilation", 1, "positive (>= 1)")
    if isinstance(padding, str):
        if padding == "valid":
            pt = pb = pl = pr = 0
        elif padding == "same":
            if sh != 1 or sw != 1:
                raise ValueError(
                    f"padding='same' is not supported for strided convolutions (like torch); "
                    f"got stride={stride!r}"
                )
            th, tw = dh * (KH - 1), dw * (KW - 1)
            pt, pl = th // 2, tw // 2
            pb, pr = th - pt, tw - pl
        else:
            raise ValueError(
                f"padding must be 'same', 'valid', an int or a pair of ints; got {padding!r}"
            )
    else:
        pt, pl = _int_tuple(padding, "padding", 0, "non-negative (>= 0)")
        pb, pr = pt, pl
    C, H, Wd = x_shape[-3], x_shape[-2], x_shape[-1]
    if C != ICg * g:
        raise ValueError(
            f"X has {C} channels (shape {tuple(x_shape)}); W of shape {W.shape} with "
            f"groups={g} expects {ICg * g} (W.shape[1] * groups)"
        )
    Hp, Wp = H + pt + pb, Wd + pl + pr
    eh, ew = dh * (KH - 1) + 1, dw * (KW - 1) + 1
    if Hp < eh or Wp < ew:
        raise ValueError(
            f"the kernel ({KH}x{KW}, dilation ({dh}, {dw}): spans {eh}x{ew}) is larger than "
            f"the padded input ({Hp}x{Wp}: X spatial size {H}x{Wd} plus padding)"
        )
    OH = (Hp - eh) // sh + 1
    OW = (Wp - ew) // sw + 1
    # A stride past the last window gives one output row (column) whatever its
    # value: use the smallest such stride, or the packed input (laid out by
    # column phase) would grow with the stride, not with the input.
    sh, sw = min(sh, Hp - eh + 1), min(sw, Wp - ew + 1)
    check_result_size(tuple(x_shape[:-3]) + (W.shape[0], OH, OW), W.dtype.itemsize,
                      f"X has shape {tuple(x_shape)}, W has shape {W.shape}, padding="
                      f"{padding!r}, dilation={dilation!r}")
    return sh, sw, pt, pb, pl, pr, dh, dw, g, OH, OW


def _as_input(X, dtype):
    Xa = as_float_array(X, "X", dtype)
    if Xa.ndim not in (3, 4):
        raise ValueError(
            f"X must be 4-D (batch, channels, height, width) or 3-D (channels, height, width); "
            f"got shape {Xa.shape}"
        )
    return Xa


def _check_algorithm(algorithm):
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"algorithm must be one of {', '.join(repr(a) for a in ALGORITHMS)}; "
            f"got {algorithm!r}"
        )


def _auto(B, OH, OW, L):
    """The rule of :func:`conv2d_algorithm` (see there)."""
    eff_batch = B / (-(-B // L) * L)
    eff_width = OW / (-(-OW // L) * L)
    if eff_batch >= eff_width and (OH * OW <= 64 or eff_width < 0.75):
        return "batch_last"
    return "over_width"


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

    Measured on ResNet layers at 90% sparsity (one Zen 4 core, float32):
    batch-last is 10-25% faster on 7x7 outputs with batch 8 or 32,
    over-width 5-40% faster from 14x14 on (and 7x faster at batch 1).
    """
    _check_weight(W)
    try:
        shape = tuple(int(s.__index__()) for s in X_shape)
    except (TypeError, AttributeError):
        raise TypeError(f"X_shape must be a tuple of 4 (or 3) ints; got {X_shape!r}") from None
    if len(shape) not in (3, 4):
        raise ValueError(
            f"X_shape must have 4 (or 3) entries (batch, channels, height, width); got {shape}"
        )
    B = shape[0] if len(shape) == 4 else 1
    geo = _geometry(shape, W, stride, padding, dilation, groups)
    return _auto(B, geo[9], geo[10], lanes(W.dtype))


# ---------------------------------------------------------------- plans

def _plan(SparseConvWeight W, algorithm, int64_t L, B, C, H, Wd, geo):
    """The plan of one call: the algorithm resolved and the buffer layout of
    its geometry (a dict, cached per weight structure and geometry)."""
    sh, sw, pt, _pb, pl, _pr, dh, dw, groups, OH, OW = geo
    batch_last = _resolve(algorithm, B, OH, OW, L) == "batch_last"
    key = ("fwd-bwd", batch_last, L, C, H, Wd, OH, OW, sh, sw, pt, pl, dh, dw, groups)
    plans = W._cache.get("conv2d")
    if plans is None:
        plans = W._cache["conv2d"] = OrderedDict()
    plan = plans.get(key)
    if plan is not None:
        try:
            plans.move_to_end(key)
        except KeyError:  # evicted meanwhile by another Python thread: still valid
            pass
        return plan
    OC, ICg, KH, KW = W.shape
    U = L if batch_last else 1
    cv = 1 if batch_last else L
    jq_max = ((KW - 1) * dw) // sw
    ih_max = ((KH - 1) * dh) // sh
    OWc = -(-OW // cv) * cv
    a_hi_max = (pt + H - 1) // sh
    b_hi_max = (pl + Wd - 1) // sw
    Hb = max(pt + H, (OH - 1) * sh + (KH - 1) * dh + 1)
    Wq = max(OWc + jq_max, b_hi_max + cv)
    Hdy = max(OH, a_hi_max + 1) + ih_max
    Wdy = max(OW, b_hi_max + cv) + jq_max
    Wq = -(-Wq // cv) * cv      # whole vectors: packed rows start 32-byte aligned
    rowlen_x = sw * Wq * U
    plan = {
        "batch_last": int(batch_last), "L": L, "U": U, "cv": cv,
        "C": C, "H": H, "W": Wd, "OC": OC, "OH": OH, "OW": OW,
        "ICg": ICg, "OCg": OC // groups, "sh": sh, "sw": sw, "pt": pt, "pl": pl,
        "dh": dh, "dw": dw,
        "Hb": Hb, "Wq": Wq, "rowlen_x": rowlen_x, "plane_x": Hb * rowlen_x,
        "Hdy": Hdy, "Wdy": Wdy, "TP": ih_max, "LP": jq_max, "rowlen_dy": Wdy * U,
        "plane_dy": Hdy * Wdy * U,
    }
    # Every offset into the packed buffers, and their sizes in bytes summed over
    # up to 2**16 thread tasks, are int64 in the kernels: refuse what would wrap.
    need = (2 * C * plan["plane_x"] + OC * plan["plane_dy"] + (Wd + OH * OW) * U + 4096) * 8
    if need > MAX_BYTES >> 17:
        raise ValueError(
            f"X of shape (batch, {C}, {H}, {Wd}) with this convolution (output {OH}x{OW}, "
            f"stride ({sh}, {sw}), padding ({pt}, {pl}), dilation ({dh}, {dw})) needs "
            f"{need} bytes of packed buffers per thread task; at most {MAX_BYTES >> 17} "
            "bytes keep their 64-bit offsets from overflowing"
        )
    plans[key] = plan
    while len(plans) > _MAX_PLANS:
        plans.popitem(last=False)
    return plan


def _global_ic(SparseConvWeight W, plan):
    oc, ic, kr, kc = W._coords()
    return oc, (oc // plan["OCg"]) * plan["ICg"] + ic, kr, kc


def _forward_offsets(SparseConvWeight W, plan):
    """(nnz,) int64 offset of each stored weight in the packed input (W.data order)."""
    xoff = plan.get("xoff")
    if xoff is None:
        _, ic, kr, kc = _global_ic(W, plan)
        sw, U = plan["sw"], plan["U"]
        cw = kc * plan["dw"]
        xoff = (ic * plan["plane_x"] + kr * plan["dh"] * plan["rowlen_x"]
                + ((cw % sw) * plan["Wq"] + cw // sw) * U).astype(np.int64)
        xoff.flags.writeable = False
        plan["xoff"] = xoff
    return xoff


def _backward_lists(SparseConvWeight W, plan):
    """The weights regrouped by (input channel, row phase, column phase).

    Returns (perm, lptr, dyoff): list position k holds W.data[perm[k]];
    class (c, rph, wph) = (c*sh + rph)*sw + wph holds [lptr[cls], lptr[cls+1]);
    dyoff[k] is the weight's offset in the packed dY.
    """
    lists = plan.get("lists")
    if lists is None:
        oc, ic, kr, kc = _global_ic(W, plan)
        sh, sw, U = plan["sh"], plan["sw"], plan["U"]
        rw, cw = kr * plan["dh"], kc * plan["dw"]
        cls = (ic * sh + rw % sh) * sw + cw % sw
        perm = np.argsort(cls, kind="stable").astype(np.int64)
        n_cls = plan["C"] * sh * sw
        lptr = np.zeros(n_cls + 1, dtype=np.int64)
        np.cumsum(np.bincount(cls, minlength=n_cls), out=lptr[1:])
        dyoff = (oc * plan["plane_dy"] + (plan["TP"] - rw // sh) * plan["rowlen_dy"]
                 + (plan["LP"] - cw // sw) * U)[perm].astype(np.int64)
        # input-channel boundaries in list order, for balancing tasks
        lists = (perm, lptr, np.ascontiguousarray(dyoff))
        for a in lists:
            a.flags.writeable = False
        plan["lists"] = lists
    return lists


cdef void _fill_geom(sp_conv_geom* g, dict plan, int64_t B):
    g.batch_last = plan["batch_last"]
    g.L = plan["L"]
    g.U = plan["U"]
    g.cv = plan["cv"]
    g.B = B
    g.C = plan["C"]
    g.H = plan["H"]
    g.W = plan["W"]
    g.OC = plan["OC"]
    g.OH = plan["OH"]
    g.OW = plan["OW"]
    g.ICg = plan["ICg"]
    g.OCg = plan["OCg"]
    g.sh = plan["sh"]
    g.sw = plan["sw"]
    g.pt = plan["pt"]
    g.pl = plan["pl"]
    g.Hb = plan["Hb"]
    g.Wq = plan["Wq"]
    g.rowlen_x = plan["rowlen_x"]
    g.plane_x = plan["plane_x"]
    g.Hdy = plan["Hdy"]
    g.Wdy = plan["Wdy"]
    g.TP = plan["TP"]
    g.LP = plan["LP"]
    g.rowlen_dy = plan["rowlen_dy"]
    g.plane_dy = plan["plane_dy"]


def _nchw_view(A):
    """A 4-D view whose last axis is contiguous (copied if it is not), and its
    batch, channel and row strides in elements."""
    isz = A.itemsize
    s = A.strides
    if (A.shape[3] > 1 and s[3] != isz) or any(v % isz for v in s):
        A = np.ascontiguousarray(A)
        s = A.strides
    return A, s[0] // isz, s[1] // isz, s[2] // isz


def _split(cost, parts):
    """Boundaries cutting range(len(cost)) into ``parts`` contiguous pieces of
    about equal total cost."""
    n = len(cost)
    cum = np.concatenate(([0], np.cumsum(cost, dtype=np.float64)))
    targets = cum[-1] * np.arange(parts + 1) / parts
    bounds = np.searchsorted(cum, targets, side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, n
    return np.maximum.accumulate(bounds)


def _channel_split(SparseConvWeight W, plan, kind, Tc):
    """(bounds, n_ic, n_oc): ``Tc`` contiguous ranges of output channels
    (kind "fwd") or input channels ("bwd") of about equal work, and the most
    input and output channels one range touches (through its groups).
    Cached in the plan (per mask and geometry)."""
    key = ("split", kind, Tc)
    cached = plan.get(key)
    if cached is None:
        OC, C, ICg, OCg = plan["OC"], plan["C"], plan["ICg"], plan["OCg"]
        if kind == "fwd":
            bounds = (_split(np.diff(W.och) + 4, Tc) if Tc > 1
                      else np.array([0, OC], dtype=np.int64))
        else:
            ic = _global_ic(W, plan)[1]
            bounds = (_split(np.bincount(ic, minlength=C) + 4, Tc) if Tc > 1
                      else np.array([0, C], dtype=np.int64))
        n_ic = n_oc = 0
        for i in range(Tc):
            a, b = int(bounds[i]), int(bounds[i + 1])
            if b > a:
                if kind == "fwd":
                    n_ic = max(n_ic, ((b - 1) // OCg + 1 - a // OCg) * ICg)
                    n_oc = max(n_oc, b - a)
                else:
                    n_ic = max(n_ic, b - a)
                    n_oc = max(n_oc, ((b - 1) // ICg + 1 - a // ICg) * OCg)
        bounds.flags.writeable = False
        cached = plan[key] = (bounds, n_ic, n_oc)
    return cached


def _task_grid(int T, int64_t n_units, int64_t n_chan):
    """(Tb, Tc): batch groups x channel ranges, Tb * Tc <= T.

    Splitting the batch costs nothing extra; splitting channels repacks the
    shared input in every task (~10%): pick the smallest estimated time."""
    best = None
    for Tb in range(1, min(T, n_units) + 1):
        Tc = max(1, min(T // Tb, n_chan))
        t = -(-n_units // Tb) * (1.0 / Tc + (0.1 if Tc > 1 else 0.0))
        if best is None or t <= best[0]:
            best = (t, Tb, Tc)
    return best[1], best[2]


def _prepare(X, W, stride, padding, dilation, groups, algorithm):
    _check_weight(W)
    _check_algorithm(algorithm)
    dtype = W.dtype
    Xa = _as_input(X, dtype)
    geo = _geometry(Xa.shape, W, stride, padding, dilation, groups)
    unbatched = Xa.ndim == 3
    X4 = Xa[None] if unbatched else Xa
    if (X4.shape[2] == 0 or X4.shape[3] == 0) and X4.shape[0] and X4.shape[1]:
        raise ValueError(
            f"X has shape {Xa.shape}: an empty spatial size needs batch 0 or 0 channels "
            "(like torch)"
        )
    return dtype, X4, unbatched, geo


def _resolve(algorithm, B, OH, OW, L):
    if algorithm == "auto":
        return _auto(B, OH, OW, L)
    return algorithm


# ---------------------------------------------------------------- forward

def conv2d_forward(X, W, bias=None, stride=1, padding=0, dilation=1, groups=1,
                   algorithm="auto", *, n_threads=None, out=None):
    """Forward pass of a sparse conv2d layer.

    Same semantics as ``torch.nn.functional.conv2d(X, W, bias, stride,
    padding, dilation, groups)``; the cost grows with ``W.nnz``.

    Parameters
    ----------
    X : ndarray, shape (batch, in_channels, H, W) or (in_channels, H, W)
        Input (NCHW), same dtype as ``W``; any strides (channels_last views,
        read-only arrays are fine; inputs whose last axis is not contiguous
        are copied first).
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
        ``out``, or a new C-contiguous array of W's dtype.

    Notes
    -----
    Only stored weights multiply: a NaN or Inf in X reaches only the outputs
    that a stored weight connects it to.
    """
    global _last_team
    check_weight_values(W, ("out", out))  # values changed in place, or aliased by out?
    dtype, X4, unbatched, geo = _prepare(X, W, stride, padding, dilation, groups, algorithm)
    OH, OW = geo[9], geo[10]
    cdef int64_t OC = W.shape[0]
    b = check_bias(bias, OC, dtype)
    cdef int T0 = _config.resolve_n_threads(n_threads)
    cdef int64_t B = X4.shape[0], C = X4.shape[1], H = X4.shape[2], Wd = X4.shape[3]
    y_shape = (int(OC), OH, OW) if unbatched else (int(B), int(OC), OH, OW)
    Y_out = output_array(out, y_shape, dtype, "out", (("X", X4), ("bias", b)))
    Y = Y_out[None] if unbatched else Y_out
    if B == 0 or OC == 0:
        return Y_out
    cdef sp_conv_kernels K = _kernels(dtype)
    cdef int64_t L = K.lanes
    plan = _plan(W, algorithm, L, B, C, H, Wd, geo)
    batch_last = plan["batch_last"]
    xoff = _forward_offsets(W, plan)
    Xv, sxb, sxc, sxh = _nchw_view(X4)

    cdef sp_conv_geom geom
    _fill_geom(&geom, plan, B)
    cdef int64_t n_units = (B + L - 1) // L if batch_last else B
    cdef int64_t nnz = W.nnz
    cdef int T = T0 if B * OH * OW * (nnz + OC) >= _SERIAL_WORK else 1
    Tb, Tc = _task_grid(T, n_units, OC)
    cdef int64_t tb_n = Tb, tc_n = Tc, tasks = Tb * Tc
    och = W.och
    oc_bounds, n_ic, n_oc = _channel_split(W, plan, "fwd", Tc)
    cdef int itemsize = dtype.itemsize
    cdef int64_t per_task = (sp_conv_fwd_scratch(&geom, n_ic, n_oc) * itemsize + 63) // 64 * 64
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
    _last_team = team[0]
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
        The forward input.
    W : SparseConvWeight
    dY : ndarray, shape (batch, out_channels, OH, OW) (no batch axis for 3-D X)
        Gradient of the loss with respect to the forward output.
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
    dX : ndarray of X's shape, or None
        ``out_dx``, or a new C-contiguous array.
    dW : ndarray, shape (nnz,)
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
    global _last_team
    check_weight_values(W, ("out_dx", out_dx))  # values changed in place, or under out_dx?
    dtype, X4, unbatched, geo = _prepare(X, W, stride, padding, dilation, groups, algorithm)
    OH, OW = geo[9], geo[10]
    cdef int64_t OC = W.shape[0]
    dYa = as_float_array(dY, "dY", dtype)
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
    dX_out = (output_array(out_dx, X4.shape[1:] if unbatched else X4.shape, dtype,
                           "out_dx", (("X", X4), ("dY", dY4))) if need_dx else None)
    dX = (dX_out[None] if unbatched else dX_out) if need_dx else None
    if B == 0 or nnz == 0:
        if need_dx:
            dX_out[...] = 0
        return dX_out, np.zeros(nnz, dtype=dtype)

    cdef sp_conv_kernels K = _kernels(dtype)
    cdef int64_t L = K.lanes
    plan = _plan(W, algorithm, L, B, C, H, Wd, geo)
    batch_last = plan["batch_last"]
    perm, lptr, dyoff = _backward_lists(W, plan)
    Xv, sxb, sxc, sxh = _nchw_view(X4)
    dYv, syb, syc, syh = _nchw_view(dY4)

    cdef sp_conv_geom geom
    _fill_geom(&geom, plan, B)
    cdef int64_t n_units = (B + L - 1) // L if batch_last else B
    cdef int T = T0 if 2 * B * OH * OW * (nnz + OC) >= _SERIAL_WORK else 1
    Tb, Tc = _task_grid(T, n_units, C)
    cdef int64_t tb_n = Tb, tc_n = Tc, tasks = Tb * Tc
    ic_bounds, n_ic, n_oc = _channel_split(W, plan, "bwd", Tc)
    cdef int itemsize = dtype.itemsize
    cdef int64_t per_task = (sp_conv_bwd_scratch(&geom, n_ic, n_oc, need_dx) * itemsize
                             + 63) // 64 * 64
    cdef int64_t part = (nnz * L * itemsize + 63) // 64 * 64
    cdef int64_t vals_bytes = (nnz * itemsize + 63) // 64 * 64
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
    _last_team = team[0]
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
        dX_exact, dW = _exact.conv2d_backward(X4, W, dY4, geo, need_dx)
        if need_dx:
            dX[...] = dX_exact
    return dX_out, dW
