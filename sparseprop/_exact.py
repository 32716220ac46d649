"""conv2d's backward pass with exact IEEE semantics, for NaN and Inf.

The fused backward kernel (include/sparseprop/conv_impl.h) is input-stationary
over the image and reads dY from a zero-bordered copy: it also multiplies
pairs whose output falls outside the image (with a zero dY there) and leaves
out pairs whose input falls in the zero padding.  With finite values both are
exact no-ops; with NaN or Inf they are not (``0 * inf`` is NaN): a NaN in X
near the border would make weight gradients NaN that dense math keeps finite,
and a NaN weight would spread into dX positions it never reaches.

:func:`sparseprop.conv2d_backward` therefore checks, in O(nnz), whether the
weight or the weight gradient it computed holds a non-finite value, and if so
recomputes both gradients here: dense math over the stored weights only,
accumulated in float64, the zero padding taking part as zeros exactly as in
the forward pass.  It is NumPy, vectorised per kernel tap: about as fast as a
dense NumPy convolution (tens of times slower than the kernel), and it runs
only when a gradient is already NaN or Inf.
"""
import numpy as np

# Elements of the gathered windows processed at once (memory bound: 32 MB).
_CHUNK = 1 << 22


def conv2d_backward(X4, W, dY4, geo, need_dx):
    """(dX or None, dW) of a conv2d whose weight or gradient is not finite.

    ``X4``, ``dY4`` are 4-D (batch, channels, H, W); ``geo`` is the
    :class:`sparseprop._conv_plan.ConvGeometry` of the call.
    """
    sh, sw, pt, pb, pl, pr = geo.sh, geo.sw, geo.pt, geo.pb, geo.pl, geo.pr
    dh, dw, groups, OH, OW = geo.dh, geo.dw, geo.groups, geo.OH, geo.OW
    B, C, H, Wd = X4.shape
    OC, ICg = W.shape[0], W.shape[1]
    dtype = W.dtype
    Xp = np.zeros((B, C, H + pt + pb, Wd + pl + pr), np.float64)
    Xp[:, :, pt:pt + H, pl:pl + Wd] = X4
    dY = np.asarray(dY4, np.float64)
    dXp = np.zeros_like(Xp) if need_dx else None
    dW = np.empty(W.nnz, np.float64)
    oc, icl, kr, kc = W._coords()
    ic = oc // (OC // groups) * ICg + icl
    vals = W.data.astype(np.float64)
    rows_end, cols_end = sh * (OH - 1) + 1, sw * (OW - 1) + 1
    tap = kr * W.shape[3] + kc
    order = np.argsort(tap, kind="stable")
    bounds = np.flatnonzero(np.diff(tap[order])) + 1
    step = max(1, _CHUNK // max(1, B * OH * OW))
    with np.errstate(invalid="ignore", over="ignore"):
        for ks in np.split(order, bounds):
            if ks.size == 0:
                continue
            r0, c0 = int(kr[ks[0]]) * dh, int(kc[ks[0]]) * dw
            rs, cs = slice(r0, r0 + rows_end, sh), slice(c0, c0 + cols_end, sw)
            for s in range(0, ks.size, step):
                k = ks[s:s + step]
                g = dY[:, oc[k]]                            # (B, n, OH, OW)
                dW[k] = np.einsum("bnpq,bnpq->n", g, Xp[:, ic[k], rs, cs])
                if need_dx:
                    np.add.at(dXp[:, :, rs, cs], (slice(None), ic[k]),
                              vals[k][None, :, None, None] * g)
    dX = np.ascontiguousarray(dXp[:, :, pt:pt + H, pl:pl + Wd], dtype) if need_dx else None
    return dX, dW.astype(dtype)
