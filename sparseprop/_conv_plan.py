"""Conv2d arguments, geometry and per-mask plans (pure Python, NumPy only).

The drivers in ``_conv2d.pyx`` run the kernels; everything they need to know
before that is worked out here:

* the convolution options checked and resolved for one input shape, as a
  :class:`ConvGeometry`;
* the algorithm ``"auto"`` picks (:func:`auto_algorithm`);
* the :class:`ConvPlan` of a weight structure and geometry: the packed
  buffer layout the kernels read and, built on first use and kept with it,
  each weight's offset in the packed input (forward), the weights regrouped
  by input channel and phase (backward) and the channel ranges of thread
  tasks.  Plans are cached per weight structure in ``W._cache``.

The conv kernels' geometry struct (``sp_conv_geom``) is filled from a plan's
fields by the driver, once per plan, and kept in :attr:`ConvPlan.geom`.
"""
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from sparseprop._checks import MAX_BYTES, as_float_array, check_result_size
from sparseprop._convweight import SparseConvWeight
from sparseprop._tasks import split_range

ALGORITHMS = ("auto", "batch_last", "over_width")

# Plans kept per weight structure (geometries are few in a network).
MAX_PLANS = 16


# ---------------------------------------------------------------- arguments

def check_weight(W):
    """``W`` if it is a SparseConvWeight, else a TypeError naming what it is."""
    if not isinstance(W, SparseConvWeight):
        raise TypeError(
            f"W must be a sparseprop.SparseConvWeight; got {type(W).__name__} "
            "(build one with SparseConvWeight.from_dense / from_torch)"
        )
    return W


def check_algorithm(algorithm):
    """Raise a ValueError unless ``algorithm`` is one of :data:`ALGORITHMS`."""
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"algorithm must be one of {', '.join(repr(a) for a in ALGORITHMS)}; "
            f"got {algorithm!r}"
        )


def int_pair(value, name, minimum, what):
    """An int or a sequence of 1 or 2 ints -> (h, w), each >= ``minimum``.

    Parameters
    ----------
    value : int or sequence of int
        Anything with ``__index__`` (not a bool), or a tuple/list of 1 or 2 such.
    name : str
        The argument's name, for messages.
    minimum : int
    what : str
        What ``minimum`` means, for messages ("positive (>= 1)").

    Returns
    -------
    (int, int)
    """
    t = type(value)
    if t is int:  # the common cases first: exact types only (bool is not int here)
        pair = (value, value)
    elif t is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        pair = value
    else:
        pair = _int_pair_general(value, name)
    if pair[0] < minimum or pair[1] < minimum:
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return pair


def _int_pair_general(value, name):
    bad = TypeError(f"{name} must be an int or a pair of ints (h, w); got {value!r}")
    if isinstance(value, (bool, np.bool_)):
        raise bad
    try:
        if hasattr(value, "__index__"):
            return (int(value.__index__()),) * 2
        if isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(
                hasattr(v, "__index__") and not isinstance(v, (bool, np.bool_)) for v in value):
            pair = tuple(int(v.__index__()) for v in value)
            return pair * 2 if len(pair) == 1 else pair
    except TypeError:  # e.g. an array of two ints, whose __index__ raises
        raise bad from None
    raise bad


def check_groups(groups, W):
    """``groups`` as a positive int that divides W's output channels."""
    if type(groups) is int:
        g = groups
    elif isinstance(groups, (bool, np.bool_)) or not hasattr(groups, "__index__"):
        raise TypeError(f"groups must be a positive integer; got {groups!r}")
    else:
        g = int(groups.__index__())
    if g < 1:
        raise ValueError(f"groups must be a positive integer; got {g}")
    if W.shape[0] % g:
        raise ValueError(
            f"groups={g} must divide out_channels={W.shape[0]} (W has shape {W.shape})"
        )
    return g


class ConvGeometry(NamedTuple):
    """The checked options of one convolution for one input shape.

    Attributes
    ----------
    sh, sw : int
        Strides; a stride past the last window is clamped to the smallest
        one that gives the same single output row (column).
    pt, pb, pl, pr : int
        Zero padding at the top, bottom, left and right.
    dh, dw : int
        Dilations.
    groups : int
    OH, OW : int
        Output height and width.
    """

    sh: int
    sw: int
    pt: int
    pb: int
    pl: int
    pr: int
    dh: int
    dw: int
    groups: int
    OH: int
    OW: int


_new_tuple = tuple.__new__


def conv_geometry(x_shape, W, stride, padding, dilation, groups):
    """Check the convolution options for an input of shape ``x_shape``.

    Parameters
    ----------
    x_shape : tuple of int
        (..., channels, height, width).
    W : SparseConvWeight
    stride, padding, dilation, groups
        As in :func:`sparseprop.conv2d_forward`.

    Returns
    -------
    ConvGeometry

    Raises
    ------
    TypeError, ValueError
        Naming the bad option, or the shapes that do not fit together.
    """
    _, ICg, KH, KW = W.shape
    g = check_groups(groups, W)
    sh, sw = int_pair(stride, "stride", 1, "positive (>= 1)")
    dh, dw = int_pair(dilation, "dilation", 1, "positive (>= 1)")
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
        pt, pl = int_pair(padding, "padding", 0, "non-negative (>= 0)")
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
    check_result_size(x_shape[:-3] + (W.shape[0], OH, OW), W.dtype.itemsize,
                      lambda: f"X has shape {tuple(x_shape)}, W has shape {W.shape}, "
                              f"padding={padding!r}, dilation={dilation!r}")
    # tuple.__new__: a NamedTuple's own __new__ is Python code, 3x slower per call
    return _new_tuple(ConvGeometry, (sh, sw, pt, pb, pl, pr, dh, dw, g, OH, OW))


def prepare(X, W, stride, padding, dilation, groups, algorithm):
    """The checks every conv2d call starts with.

    Returns
    -------
    dtype : numpy.dtype
        W's.
    X4 : ndarray
        X as a 4-D array (a view with a batch axis of 1 for 3-D X) of W's
        dtype, or ``ml_dtypes.bfloat16`` with a float32 W (the bfloat16
        kernels).
    unbatched : bool
        Whether X was 3-D.
    geo : ConvGeometry
    """
    check_weight(W)
    check_algorithm(algorithm)
    dtype = W.dtype
    Xa = as_float_array(X, "X", dtype, allow_bf16=True)
    if Xa.ndim not in (3, 4):
        raise ValueError(
            f"X must be 4-D (batch, channels, height, width) or 3-D (channels, height, width); "
            f"got shape {Xa.shape}"
        )
    geo = conv_geometry(Xa.shape, W, stride, padding, dilation, groups)
    unbatched = Xa.ndim == 3
    X4 = Xa[None] if unbatched else Xa
    if (X4.shape[2] == 0 or X4.shape[3] == 0) and X4.shape[0] and X4.shape[1]:
        raise ValueError(
            f"X has shape {Xa.shape}: an empty spatial size needs batch 0 or 0 channels "
            "(like torch)"
        )
    return dtype, X4, unbatched, geo


def auto_algorithm(B, OH, OW, L):
    """The rule of :func:`sparseprop.conv2d_algorithm` (see there) for batch ``B``,
    output ``OH x OW`` and ``L`` SIMD lanes: "batch_last" or "over_width"."""
    eff_batch = B / (-(-B // L) * L)
    eff_width = OW / (-(-OW // L) * L)
    if eff_batch >= eff_width and (OH * OW <= 64 or eff_width < 0.75):
        return "batch_last"
    return "over_width"


def algorithm_for(X_shape, W, stride, padding, dilation, groups, L):
    """:func:`sparseprop.conv2d_algorithm` for a checked ``W`` with ``L`` lanes."""
    try:
        shape = tuple(int(s.__index__()) for s in X_shape)
    except (TypeError, AttributeError):
        raise TypeError(f"X_shape must be a tuple of 4 (or 3) ints; got {X_shape!r}") from None
    if len(shape) not in (3, 4):
        raise ValueError(
            f"X_shape must have 4 (or 3) entries (batch, channels, height, width); got {shape}"
        )
    B = shape[0] if len(shape) == 4 else 1
    geo = conv_geometry(shape, W, stride, padding, dilation, groups)
    return auto_algorithm(B, geo.OH, geo.OW, L)


def nchw_view(A):
    """A 4-D view whose last axis is contiguous (copied if it is not), and its
    batch, channel and row strides in elements."""
    isz = A.itemsize
    s = A.strides
    if (A.shape[3] > 1 and s[3] != isz) or s[0] % isz or s[1] % isz or s[2] % isz or s[3] % isz:
        A = np.ascontiguousarray(A)
        s = A.strides
    return A, s[0] // isz, s[1] // isz, s[2] // isz


# ---------------------------------------------------------------- plans

class ConvPlan:
    """The packed buffer layout of one weight structure, geometry and algorithm.

    The fields ``batch_last`` ... ``plane_dy`` are those of the kernels'
    ``sp_conv_geom`` (see include/sparseprop/conv.h), all but the batch size:
    ``U`` images per packed element (``L`` for batch-last, else 1), ``cv``
    outputs per vector along the width, the packed input's rows (``Hb``),
    row length (``Wq`` per column phase) and plane, and the packed dY's
    borders (``TP``, ``LP``), rows, row length and plane.  The rest is built
    on first use and kept: ``xoff`` (:func:`forward_offsets`), ``lists``
    (:func:`backward_lists`), ``splits`` (:func:`channel_split`) and ``geom``,
    the driver's filled ``sp_conv_geom`` as bytes.
    """

    __slots__ = ("batch_last", "L", "U", "cv", "C", "H", "W", "OC", "OH", "OW", "ICg", "OCg",
                 "sh", "sw", "pt", "pl", "dh", "dw", "Hb", "Wq", "rowlen_x", "plane_x",
                 "Hdy", "Wdy", "TP", "LP", "rowlen_dy", "plane_dy",
                 "xoff", "lists", "splits", "geom")

    def __init__(self, W, batch_last, L, C, H, Wd, geo):
        OC, ICg, KH, KW = W.shape
        sh, sw, pt, pl, dh, dw = geo.sh, geo.sw, geo.pt, geo.pl, geo.dh, geo.dw
        OH, OW = geo.OH, geo.OW
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
        self.batch_last, self.L, self.U, self.cv = int(batch_last), L, U, cv
        self.C, self.H, self.W, self.OC, self.OH, self.OW = C, H, Wd, OC, OH, OW
        self.ICg, self.OCg = ICg, OC // geo.groups
        self.sh, self.sw, self.pt, self.pl, self.dh, self.dw = sh, sw, pt, pl, dh, dw
        self.Hb, self.Wq, self.rowlen_x = Hb, Wq, sw * Wq * U
        self.plane_x = Hb * self.rowlen_x
        self.Hdy, self.Wdy, self.TP, self.LP = Hdy, Wdy, ih_max, jq_max
        self.rowlen_dy = Wdy * U
        self.plane_dy = Hdy * Wdy * U
        self.xoff = self.lists = self.geom = None
        self.splits = {}
        # Every offset into the packed buffers, and their sizes in bytes summed
        # over up to 2**16 thread tasks, are int64 in the kernels: refuse what
        # would wrap.
        need = (2 * C * self.plane_x + OC * self.plane_dy + (Wd + OH * OW) * U + 4096) * 8
        if need > MAX_BYTES >> 17:
            raise ValueError(
                f"X of shape (batch, {C}, {H}, {Wd}) with this convolution (output {OH}x{OW}, "
                f"stride ({sh}, {sw}), padding ({pt}, {pl}), dilation ({dh}, {dw})) needs "
                f"{need} bytes of packed buffers per thread task; at most {MAX_BYTES >> 17} "
                "bytes keep their 64-bit offsets from overflowing"
            )


def conv_plan(W, algorithm, L, B, C, H, Wd, geo):
    """The :class:`ConvPlan` of one call, from W's cache or built (and cached).

    Parameters
    ----------
    W : SparseConvWeight
    algorithm : {"auto", "batch_last", "over_width"}
        Resolved here with :func:`auto_algorithm` for batch ``B``.
    L : int
        SIMD lanes of the kernels.
    B, C, H, Wd : int
        The input's shape (NCHW).
    geo : ConvGeometry

    Returns
    -------
    ConvPlan
    """
    if algorithm == "auto":
        algorithm = auto_algorithm(B, geo.OH, geo.OW, L)
    batch_last = algorithm == "batch_last"
    key = (batch_last, L, C, H, Wd, geo)
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
    plan = plans[key] = ConvPlan(W, batch_last, L, C, H, Wd, geo)
    while len(plans) > MAX_PLANS:
        plans.popitem(last=False)
    return plan


def _global_ic(W, plan):
    oc, ic, kr, kc = W._coords()
    return oc, (oc // plan.OCg) * plan.ICg + ic, kr, kc


def forward_offsets(W, plan):
    """(nnz,) int64 offset of each stored weight in the packed input (W.data order)."""
    xoff = plan.xoff
    if xoff is None:
        _, ic, kr, kc = _global_ic(W, plan)
        cw = kc * plan.dw
        xoff = (ic * plan.plane_x + kr * plan.dh * plan.rowlen_x
                + ((cw % plan.sw) * plan.Wq + cw // plan.sw) * plan.U).astype(np.int64)
        xoff.flags.writeable = False
        plan.xoff = xoff
    return xoff


def backward_lists(W, plan):
    """The weights regrouped by (input channel, row phase, column phase).

    Returns (perm, lptr, dyoff): list position k holds W.data[perm[k]];
    class (c, rph, wph) = (c*sh + rph)*sw + wph holds [lptr[cls], lptr[cls+1]);
    dyoff[k] is the weight's offset in the packed dY.
    """
    lists = plan.lists
    if lists is None:
        oc, ic, kr, kc = _global_ic(W, plan)
        sh, sw, U = plan.sh, plan.sw, plan.U
        rw, cw = kr * plan.dh, kc * plan.dw
        cls = (ic * sh + rw % sh) * sw + cw % sw
        perm = np.argsort(cls, kind="stable").astype(np.int64)
        n_cls = plan.C * sh * sw
        lptr = np.zeros(n_cls + 1, dtype=np.int64)
        np.cumsum(np.bincount(cls, minlength=n_cls), out=lptr[1:])
        dyoff = (oc * plan.plane_dy + (plan.TP - rw // sh) * plan.rowlen_dy
                 + (plan.LP - cw // sw) * U)[perm].astype(np.int64)
        lists = (perm, lptr, np.ascontiguousarray(dyoff))
        for a in lists:
            a.flags.writeable = False
        plan.lists = lists
    return lists


def channel_split(W, plan, kind, Tc):
    """(bounds, n_ic, n_oc): ``Tc`` contiguous ranges of output channels
    (kind "fwd") or input channels ("bwd") of about equal work, and the most
    input and output channels one range touches (through its groups).
    Cached in the plan (per mask and geometry)."""
    key = (kind, Tc)
    cached = plan.splits.get(key)
    if cached is None:
        ICg, OCg = plan.ICg, plan.OCg
        if kind == "fwd":
            bounds = (split_range(np.diff(W.och) + 4, Tc) if Tc > 1
                      else np.array([0, plan.OC], dtype=np.int64))
        else:
            ic = _global_ic(W, plan)[1]
            bounds = (split_range(np.bincount(ic, minlength=plan.C) + 4, Tc) if Tc > 1
                      else np.array([0, plan.C], dtype=np.int64))
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
        cached = plan.splits[key] = (bounds, n_ic, n_oc)
    return cached
