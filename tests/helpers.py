"""Helpers shared by the test modules (imported as ``helpers``; conftest puts
this folder on sys.path because the suite runs with --import-mode=importlib)."""
import numpy as np

# Sizes that hit SIMD tails for every ISA (vectors of 1, 4, 8 and 16 lanes and
# the kernels' batch chunks of 8 to 48 rows).
TAIL_SIZES = [0, 1, 7, 8, 15, 16, 17, 37]


def random_sparse_dense(rng, shape, sparsity, dtype=np.float32):
    """A dense array with a uniformly random fraction ``sparsity`` of zeros."""
    A = rng.standard_normal(shape).astype(dtype)
    if sparsity >= 1.0:
        A[...] = 0
    elif sparsity > 0:
        A[rng.random(shape) < sparsity] = 0
    return A


def tolerances(dtype, k):
    """(rtol, atol) for a sum of k products of standard normal values."""
    scale = np.sqrt(max(k, 1))
    if np.dtype(dtype) == np.float32:
        return 2e-5, 2e-5 * scale
    return 1e-12, 1e-12 * scale


def run_python(args, env=None, check=False):
    """Run ``python args...`` in a neutral folder (never the repository root,
    whose source tree would shadow the installed package); return the
    CompletedProcess with text output."""
    import os
    import subprocess
    import sys
    import tempfile

    full_env = dict(os.environ)
    full_env.update(env or {})
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              env=full_env, cwd=cwd, check=check)


# ---------------------------------------------------------------- dense conv2d
# The conv2d tests' reference: NumPy only, so they run where torch is missing
# (the emulated aarch64 root of .ci/aarch64).  tests/test_conv2d.py checks it
# against torch.nn.functional.conv2d and torch autograd wherever torch exists,
# and against a plain loop and the adjoint identities everywhere.

def _pair(v):
    return (v, v) if isinstance(v, (int, np.integer)) else tuple(v)


def conv2d_paddings(padding, kernel, dilation):
    """((top, bottom), (left, right)) as torch pads for ``padding`` (an int, a
    pair, "valid" or "same"; "same" puts the odd one of an even total at the
    end, like torch)."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return tuple((t // 2, t - t // 2) for t in total)
    return tuple((p, p) for p in _pair(padding))


def conv2d_reference(X, W, dY=None, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Dense conv2d in float64, as torch.nn.functional.conv2d defines it.

    X: (N, C, H, W) or unbatched (C, H, W); W: dense (OC, C // groups, KH, KW).
    Returns (Y, dX, dW): Y = conv(X, W) + bias and, when dY is given, the
    gradients of sum(Y * dY) with respect to X and to the dense W (else None).

    im2col: cols[n, c, i, j, p, q] = Xpad[n, c, p*sh + i*dh, q*sw + j*dw], the
    input seen by kernel tap (i, j) at output (p, q).  Y is a contraction of
    cols with W per group; dW contracts cols with dY; dX is the adjoint of the
    im2col gather: every tap's slice of dcols added back where it was read.
    """
    X = np.asarray(X, dtype=np.float64)
    unbatched = X.ndim == 3
    if unbatched:
        X = X[None]
    W = np.asarray(W, dtype=np.float64)
    N, C, H, Wi = X.shape
    OC, Cg, KH, KW = W.shape
    G = groups
    assert C == Cg * G and OC % G == 0, (X.shape, W.shape, groups)
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    (pt, pb), (pl, pr) = conv2d_paddings(padding, (KH, KW), (dh, dw))
    Xp = np.pad(X, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (Wi + pl + pr - dw * (KW - 1) - 1) // sw + 1
    assert OH >= 1 and OW >= 1, "the dilated kernel is larger than the padded input"

    def tap(i, j):
        """The (H, W) slices of Xpad that kernel tap (i, j) reads."""
        return (slice(i * dh, i * dh + sh * (OH - 1) + 1, sh),
                slice(j * dw, j * dw + sw * (OW - 1) + 1, sw))

    cols = np.empty((N, C, KH, KW, OH, OW))
    for i in range(KH):
        for j in range(KW):
            cols[:, :, i, j] = Xp[(slice(None), slice(None)) + tap(i, j)]
    cols = cols.reshape(N, G, Cg, KH, KW, OH, OW)
    Wg = W.reshape(G, OC // G, Cg, KH, KW)
    Y = np.einsum("ngcijpq,gocij->ngopq", cols, Wg, optimize=True).reshape(N, OC, OH, OW)
    if bias is not None:
        Y += np.asarray(bias, dtype=np.float64)[:, None, None]
    if dY is None:
        return (Y[0] if unbatched else Y), None, None

    dY = np.asarray(dY, dtype=np.float64).reshape(N, G, OC // G, OH, OW)
    dW = np.einsum("ngcijpq,ngopq->gocij", cols, dY, optimize=True).reshape(W.shape)
    dcols = np.einsum("ngopq,gocij->ngcijpq", dY, Wg, optimize=True).reshape(
        N, C, KH, KW, OH, OW)
    dXp = np.zeros_like(Xp)
    for i in range(KH):
        for j in range(KW):   # within one tap every padded position is read once
            dXp[(slice(None), slice(None)) + tap(i, j)] += dcols[:, :, i, j]
    dX = dXp[:, :, pt:pt + H, pl:pl + Wi]
    return (Y[0] if unbatched else Y), (dX[0] if unbatched else dX), dW
