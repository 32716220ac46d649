"""Sparse conv2d against a dense float64 reference.

The reference is NumPy (helpers.conv2d_reference), so the NumPy-API tests run
without torch too (the emulated aarch64 run of .ci/aarch64 has none); the
reference itself is checked below against torch.nn.functional.conv2d and torch
autograd where torch exists, and against a plain loop and the adjoint
identities everywhere.  The tests of torch interop skip without torch.
"""
import os
import pickle

import numpy as np
import pytest

import sparseprop as sp
from sparseprop import _config, _conv2d

from helpers import conv2d_paddings, conv2d_reference, random_sparse_dense, tolerances

try:
    import torch
    F = torch.nn.functional
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")

# torch's own note about its reference path for even kernels with "same"
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

DTYPES = [np.float32, np.float64]
ALGOS = ["batch_last", "over_width"]


def check_conv(X, Wd, *, bias=None, stride=1, padding=0, dilation=1, groups=1,
               algorithm="auto", n_threads=None, need_input_grad=True, W=None, rng=None,
               dY=None):
    """Run forward and backward and compare with the reference; return (Y, dX, dW)."""
    dtype = Wd.dtype
    W = sp.SparseConvWeight.from_dense(Wd) if W is None else W
    Y = sp.conv2d_forward(X, W, bias, stride, padding, dilation, groups, algorithm,
                          n_threads=n_threads)
    Yr, _, _ = conv2d_reference(X, Wd, None, bias, stride, padding, dilation, groups)
    assert Y.dtype == dtype and Y.shape == Yr.shape and Y.flags.c_contiguous
    OC, ICg, KH, KW = Wd.shape
    rtol, atol = tolerances(dtype, ICg * KH * KW)
    np.testing.assert_allclose(Y, Yr, rtol=rtol, atol=atol)
    if dY is None:
        rng = rng if rng is not None else np.random.default_rng(0)
        dY = rng.standard_normal(Yr.shape).astype(dtype)
    dX, dW = sp.conv2d_backward(X, W, dY, stride, padding, dilation, groups, need_input_grad,
                                algorithm, n_threads=n_threads)
    _, dXr, dWr = conv2d_reference(X, Wd, dY, bias, stride, padding, dilation, groups)
    if need_input_grad:
        assert dX.dtype == dtype and dX.shape == np.shape(X) and dX.flags.c_contiguous
        rtol, atol = tolerances(dtype, (OC // groups) * KH * KW)
        np.testing.assert_allclose(dX, dXr, rtol=rtol, atol=atol)
    else:
        assert dX is None
    assert dW.dtype == dtype and dW.shape == (W.nnz,)
    rtol, atol = tolerances(dtype, int(np.prod(Yr.shape)) // max(OC, 1))
    oc, ic, kr, kc = W._coords()
    np.testing.assert_allclose(dW, dWr[oc, ic, kr, kc], rtol=rtol, atol=atol)
    return Y, dX, dW


def test_runs_under_requested_isa():
    # When test_isa.py re-runs this file under SPARSEPROP_ISA, make sure the
    # cap really took effect (else those runs would prove nothing).
    want = os.environ.get("SPARSEPROP_ISA")
    if want:
        assert sp.config()["isa"] == want


# ---------------------------------------------------------------- the reference
# Every test below trusts helpers.conv2d_reference: check it first, against a
# plain loop and the adjoint identities (no torch needed), and against torch.

def _loop_conv2d(X, W, stride, pads, dilation, groups):
    """Y[n, o, p, q] = sum over c, i, j of Xpad[n, c, p*sh + i*dh, q*sw + j*dw]
    * W[o, c, i, j] (c in o's group), one output at a time."""
    (sh, sw), (dh, dw), ((pt, pb), (pl, pr)) = stride, dilation, pads
    Xp = np.pad(X, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    N, OC, (Cg, KH, KW) = X.shape[0], W.shape[0], W.shape[1:]
    OH = (Xp.shape[2] - dh * (KH - 1) - 1) // sh + 1
    OW = (Xp.shape[3] - dw * (KW - 1) - 1) // sw + 1
    Y = np.zeros((N, OC, OH, OW))
    for n, o, p, q in np.ndindex(Y.shape):
        g = o // (OC // groups)
        for c, i, j in np.ndindex(Cg, KH, KW):
            Y[n, o, p, q] += Xp[n, g * Cg + c, p * sh + i * dh, q * sw + j * dw] * W[o, c, i, j]
    return Y


@pytest.mark.parametrize("kernel,stride,padding,pads,dilation,groups", [
    ((3, 3), (1, 1), 1, ((1, 1), (1, 1)), (1, 1), 1),
    ((2, 3), (2, 3), (1, 2), ((1, 1), (2, 2)), (1, 1), 1),
    ((3, 2), (1, 2), "valid", ((0, 0), (0, 0)), (2, 1), 2),
    ((3, 3), (1, 1), "same", ((2, 2), (1, 1)), (2, 1), 3),
    ((4, 2), (1, 1), "same", ((1, 2), (0, 1)), (1, 1), 1),     # even: the extra one last
    ((2, 4), (1, 1), "same", ((1, 1), (3, 3)), (2, 2), 6),     # even, dilated: symmetric
    ((1, 1), (3, 2), 0, ((0, 0), (0, 0)), (1, 1), 1),
])
def test_reference_matches_a_plain_loop_and_its_adjoint(kernel, stride, padding, pads,
                                                        dilation, groups, rng):
    assert conv2d_paddings(padding, kernel, dilation) == pads
    X = rng.standard_normal((2, 6, 7, 8))
    W = rng.standard_normal((2 * groups, 6 // groups) + kernel)
    bias = rng.standard_normal(2 * groups)
    Y, _, _ = conv2d_reference(X, W, None, bias, stride, padding, dilation, groups)
    Yl = _loop_conv2d(X, W, stride, pads, dilation, groups)
    if padding == "same":
        assert Yl.shape[2:] == X.shape[2:]
    np.testing.assert_allclose(Y, Yl + bias[:, None, None], rtol=1e-13, atol=1e-13)
    # Y - bias is bilinear in (X, W), so the gradients of <Y - bias, dY> satisfy
    # <X, dX> = <W, dW> = <Y - bias, dY>; a wrong dX or dW breaks that.
    dY = rng.standard_normal(Y.shape)
    Y2, dX, dW = conv2d_reference(X, W, dY, bias, stride, padding, dilation, groups)
    np.testing.assert_array_equal(Y2, Y)
    assert dX.shape == X.shape and dW.shape == W.shape
    inner = np.vdot(Yl, dY)
    np.testing.assert_allclose([np.vdot(X, dX), np.vdot(W, dW)], [inner, inner], rtol=1e-12)
    # and unbatched input is the batch of one
    Y1, dX1, dW1 = conv2d_reference(X[1], W, dY[1], bias, stride, padding, dilation, groups)
    np.testing.assert_allclose(Y1, Y[1], rtol=1e-14, atol=1e-14)
    _, dXb, dWb = conv2d_reference(X[1:], W, dY[1:], bias, stride, padding, dilation, groups)
    np.testing.assert_allclose(dX1, dXb[0], rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(dW1, dWb, rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------- the grid
# Every value of every axis of the issue appears in at least one case, and
# every case runs with both algorithms, both dtypes and 1 and 2 threads.
#   (batch, in_ch, H, W, out_ch, kernel, stride, padding, dilation, groups,
#    sparsity, empty output channels)
GRID = [
    (1, 3, 1, 1, 4, (1, 1), 1, 0, 1, 1, 0.0, False),            # 1x1 everything
    (7, 4, 4, 4, 6, (3, 3), 1, 1, 1, 2, 0.5, False),            # groups 2
    (8, 6, 7, 7, 8, (3, 3), 2, (1, 2), 1, 1, 0.9, True),        # stride 2, asym. padding
    (33, 4, 13, 9, 5, (5, 5), 3, 2, 2, 1, 0.5, False),          # stride 3, dilation 2
    (2, 2, 56, 56, 3, (3, 3), 1, 1, 1, 1, 0.5, True),           # 56x56
    (7, 8, 7, 7, 8, (7, 7), 1, 3, 1, 1, 0.99, False),           # 7x7 kernel, 99%
    (8, 6, 13, 9, 6, (1, 3), 1, "same", 1, 6, 0.0, False),      # depthwise 1x3 "same"
    (1, 4, 13, 9, 8, (3, 3), (2, 1), "valid", (2, 1), 2, 1.0, False),  # 100% sparse
    (33, 3, 4, 4, 4, (3, 3), 1, "same", 2, 1, 0.5, True),       # "same" + dilation
    (3, 2, 56, 56, 4, (7, 7), 2, 3, 1, 1, 0.9, False),          # first-layer style
    (8, 16, 7, 7, 16, (1, 1), 1, 0, 1, 1, 0.99, False),         # 1x1 conv, 99%
    (7, 4, 56, 56, 4, (3, 3), 2, 1, 1, 4, 0.5, False),          # depthwise stride 2
    (1, 2, 4, 4, 3, (1, 1), 3, 0, 1, 1, 0.0, False),            # 1x1 stride 3
    (8, 4, 13, 9, 6, (4, 2), 1, "same", 1, 2, 0.5, True),       # even kernel "same"
    (7, 3, 1, 1, 5, (3, 3), 1, 1, 1, 1, 0.9, False),            # 1x1 input, padded
    (33, 5, 7, 7, 7, (5, 5), 1, (2, 3), (1, 2), 1, 0.99, True),  # rect. dilation
]


def _case_arrays(case, dtype, rng):
    B, C, H, Wd, OC, (KH, KW), stride, padding, dilation, groups, sparsity, empty = case
    Wdense = random_sparse_dense(rng, (OC, C // groups, KH, KW), sparsity, dtype)
    if empty:
        Wdense[::3] = 0
    X = rng.standard_normal((B, C, H, Wd)).astype(dtype)
    bias = rng.standard_normal(OC).astype(dtype)
    return X, Wdense, bias, dict(stride=stride, padding=padding, dilation=dilation,
                                 groups=groups)


@needs_torch
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("case", GRID, ids=[f"case{i}" for i in range(len(GRID))])
def test_reference_matches_torch(case, bias, rng):
    X, Wdense, b, opts = _case_arrays(case, np.float64, rng)
    b = b if bias else None
    X = X[0] if case[0] == 1 else X        # batch 1: unbatched, as torch allows
    Xt = torch.from_numpy(X).requires_grad_(True)
    Wt = torch.from_numpy(Wdense).requires_grad_(True)
    Yt = F.conv2d(Xt, Wt, None if b is None else torch.from_numpy(b), **opts)
    dY = rng.standard_normal(tuple(Yt.shape))
    Yt.backward(torch.from_numpy(dY))
    Y, dX, dW = conv2d_reference(X, Wdense, dY, b, **opts)
    for mine, theirs in [(Y, Yt), (dX, Xt.grad), (dW, Wt.grad)]:
        assert mine.shape == tuple(theirs.shape)
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("case", GRID, ids=[f"case{i}" for i in range(len(GRID))])
def test_matches_the_reference(case, algorithm, dtype, n_threads, rng):
    X, Wdense, bias, opts = _case_arrays(case, dtype, rng)
    Y, _, _ = check_conv(X, Wdense, bias=bias, algorithm=algorithm, n_threads=n_threads,
                         rng=rng, **opts)
    if case[-1]:  # empty output channels give the bias
        np.testing.assert_array_equal(Y[:, ::3], np.broadcast_to(
            bias[::3, None, None], Y[:, ::3].shape))


@pytest.mark.parametrize("algorithm", ["auto"] + ALGOS)
@pytest.mark.parametrize("batch", [1, 3, 8, 9, 33])
@pytest.mark.parametrize("n_threads", [2, 3, 4])
def test_thread_splits(algorithm, batch, n_threads, rng):
    # Big enough to run threaded; few units make tasks split channels too.
    X = rng.standard_normal((batch, 12, 14, 15)).astype(np.float32)
    Wdense = random_sparse_dense(rng, (10, 12, 3, 3), 0.7)
    check_conv(X, Wdense, padding=1, algorithm=algorithm, n_threads=n_threads, rng=rng)
    if sp.openmp_enabled():
        assert _config.last_team_size() > 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm,xshape", [("batch_last", (8, 64, 7, 7)),
                                              ("over_width", (2, 64, 40, 37))])
def test_forward_input_channel_blocks(algorithm, xshape, dtype, rng):
    # Enough input channels per group (16) and weights that the forward splits
    # them into L1-sized blocks whose partial tiles are accumulated (scalar,
    # AVX-512 and NEON block; AVX2 never does, conv_impl.h); groups=2 and
    # empty (output channel, block) pairs included.
    X = rng.standard_normal(xshape).astype(dtype)
    Wdense = random_sparse_dense(rng, (16, 32, 3, 3), 0.5, dtype)
    Wdense[3, 5:] = 0
    bias = rng.standard_normal(16).astype(dtype)
    check_conv(X, Wdense, bias=bias, padding=1, groups=2, algorithm=algorithm, rng=rng)
    check_conv(X, Wdense, stride=2, padding=(0, 1), groups=2, algorithm=algorithm, rng=rng)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [128, 130, 5])
def test_forward_streams_sparse_tiles_into_a_large_output(width, dtype, n_threads, rng):
    # Y of at least 8 MiB: the over-width forward writes the tiles of output
    # channels with few nonzeros with streaming stores (see conv.h), the others
    # with plain ones.  Width 128 has whole vectors only; 130 also has tiles
    # whose last vector spills into the next row (never streamed, and the
    # streamed tile at q0 = 0 overwrites the spill later); width 5 is narrower
    # than a vector.  Half of the output channels have many nonzeros, a few none.
    rows = -(-(8 << 20) // (np.dtype(dtype).itemsize * 2 * 32 * width))
    X = rng.standard_normal((2, 8, rows, width)).astype(dtype)
    Wdense = random_sparse_dense(rng, (32, 8, 3, 3), 0.97, dtype)
    Wdense[::2] = random_sparse_dense(rng, (16, 8, 3, 3), 0.3, dtype)
    Wdense[5] = 0
    bias = rng.standard_normal(32).astype(dtype)
    W = sp.SparseConvWeight.from_dense(Wdense)
    Y = sp.conv2d_forward(X, W, bias, padding=1, algorithm="over_width", n_threads=n_threads)
    assert Y.nbytes >= 8 << 20
    Yr, _, _ = conv2d_reference(X, Wdense, None, bias, 1, 1, 1, 1)
    rtol, atol = tolerances(dtype, 8 * 9)
    np.testing.assert_allclose(Y, Yr, rtol=rtol, atol=atol)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_skipping_the_input_gradient(algorithm, dtype, rng):
    X = rng.standard_normal((9, 6, 11, 10)).astype(dtype)
    Wdense = random_sparse_dense(rng, (8, 3, 3, 3), 0.6, dtype)
    dY = rng.standard_normal((9, 8, 6, 5)).astype(dtype)
    opts = dict(stride=2, padding=1, groups=2, algorithm=algorithm)
    check_conv(X, Wdense, need_input_grad=False, dY=dY, **opts)
    W = sp.SparseConvWeight.from_dense(Wdense)
    _, dW_full = sp.conv2d_backward(X, W, dY, **opts)
    dX, dW = sp.conv2d_backward(X, W, dY, need_input_grad=False, **opts)
    assert dX is None
    np.testing.assert_array_equal(dW, dW_full)


@pytest.mark.parametrize("algorithm", ["auto"] + ALGOS)
def test_unbatched_input(algorithm, rng):
    X = rng.standard_normal((4, 9, 8)).astype(np.float32)
    Wdense = random_sparse_dense(rng, (5, 4, 3, 3), 0.5)
    Y, dX, _ = check_conv(X, Wdense, padding=1, algorithm=algorithm, rng=rng)
    assert Y.shape == (5, 9, 8) and dX.shape == (4, 9, 8)


@pytest.mark.parametrize("algorithm", ALGOS)
def test_batch_zero(algorithm):
    W = sp.SparseConvWeight.from_dense(np.ones((3, 2, 3, 3), np.float32))
    X = np.zeros((0, 2, 5, 5), np.float32)
    Y = sp.conv2d_forward(X, W, padding=1, algorithm=algorithm)
    assert Y.shape == (0, 3, 5, 5)
    dX, dW = sp.conv2d_backward(X, W, np.zeros((0, 3, 5, 5), np.float32), padding=1,
                                algorithm=algorithm)
    assert dX.shape == X.shape and np.all(dW == 0) and dW.shape == (W.nnz,)


@pytest.mark.parametrize("algorithm", ALGOS)
def test_non_contiguous_channels_last_and_read_only(algorithm, rng):
    Wdense = random_sparse_dense(rng, (6, 4, 3, 3), 0.5)
    big = rng.standard_normal((10, 8, 12, 14)).astype(np.float32)
    nhwc = np.ascontiguousarray(big[:5, :4].transpose(0, 2, 3, 1))
    views = [
        big[::2, ::2],                        # batch and channel strides
        big[:5, 4:, ::-1],                    # negative row stride
        big[::-2, :4, 1:, 2:],                # negative batch stride, offsets
        big[:5, :4, :, ::2],                  # column stride (copied)
        nhwc.transpose(0, 3, 1, 2),           # channels_last
        np.broadcast_to(big[0, :4], (3, 4, 12, 14)),   # zero batch stride
    ]
    for X in views:
        check_conv(X, Wdense, padding=1, algorithm=algorithm, rng=rng)
        check_conv(X, Wdense, stride=2, padding=(0, 1), algorithm=algorithm, rng=rng)
    # channels_last dY too, and read-only arrays
    X = big[:3, :4].copy()
    X.flags.writeable = False
    W = sp.SparseConvWeight.from_dense(Wdense)
    dY = np.ascontiguousarray(rng.standard_normal((3, 12, 14, 6)).astype(np.float32))
    dY_cl = dY.transpose(0, 3, 1, 2)
    dY_cl.flags.writeable = False
    dX, dW = sp.conv2d_backward(X, W, dY_cl, padding=1, algorithm=algorithm)
    dX2, dW2 = sp.conv2d_backward(X, W, np.ascontiguousarray(dY_cl), padding=1,
                                  algorithm=algorithm)
    np.testing.assert_array_equal(dX, dX2)
    np.testing.assert_array_equal(dW, dW2)


def test_both_algorithms_and_auto_agree(rng):
    X = rng.standard_normal((8, 6, 9, 11)).astype(np.float64)
    W = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (7, 6, 3, 3), 0.6, np.float64))
    dY = rng.standard_normal((8, 7, 9, 11))
    outs = {a: (sp.conv2d_forward(X, W, padding=1, algorithm=a),
                sp.conv2d_backward(X, W, dY, padding=1, algorithm=a)) for a in
            ["auto"] + ALGOS}
    for a in ALGOS:
        np.testing.assert_allclose(outs[a][0], outs["auto"][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(outs[a][1][0], outs["auto"][1][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(outs[a][1][1], outs["auto"][1][1], rtol=1e-12, atol=1e-11)


def test_auto_rule():
    W = sp.SparseConvWeight.from_dense(np.ones((4, 2, 3, 3), np.float32))
    L = _conv2d.lanes(np.float32)
    # float32 lanes: 1 scalar, 4 NEON (128-bit), 8 AVX2/AVX-512 (the conv kernels
    # use 256-bit vectors there)
    assert L == {"scalar": 1, "neon": 4}.get(sp.config()["isa"], 8)
    assert sp.conv2d_algorithm((32, 2, 56, 56), W, padding=1) == "over_width"
    assert sp.conv2d_algorithm((32, 2, 14, 14), W, padding=1) == "over_width"
    assert sp.conv2d_algorithm((8, 2, 7, 7), W, padding=1) == "batch_last"
    assert sp.conv2d_algorithm((4, 2, 7, 7), W, padding=1) == (
        "over_width" if L == 8 else "batch_last")      # 8 lanes: half of them idle
    assert sp.conv2d_algorithm((16, 2, 1, 1), W, padding=1) == "batch_last"
    assert sp.conv2d_algorithm((2, 2, 7, 7), W, stride=2, padding=1) == (
        "batch_last" if L == 1 else "over_width")      # batch 2 wastes more lanes than OW 4
    assert sp.conv2d_algorithm((16, 2, 30, 4), W, padding=1) == (
        "batch_last" if L == 8 else "over_width")      # width 4 of 8 lanes
    assert sp.conv2d_algorithm((4, 2, 7, 7), W, padding="same", dilation=2) in ALGOS
    with pytest.raises(ValueError, match="X has 3 channels"):
        sp.conv2d_algorithm((8, 3, 7, 7), W)
    with pytest.raises(ValueError, match="X_shape must have 4"):
        sp.conv2d_algorithm((7, 7), W)


def test_nan_reaches_only_stored_weights(rng):
    Wdense = random_sparse_dense(rng, (5, 3, 3, 3), 0.6)
    Wdense[:, 1, 1, 1] = 0          # no centre tap from input channel 1
    Wdense[2, 1, 1, 1] = 0.5        # except for output channel 2
    W = sp.SparseConvWeight.from_dense(Wdense)
    for algorithm in ALGOS:
        X = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
        X[1, 1, 4, 4] = np.nan
        Y = sp.conv2d_forward(X, W, padding=1, algorithm=algorithm)
        # expected NaN outputs: where a stored weight meets the NaN pixel
        ind = np.zeros((1, 3, 8, 8), np.float64)
        ind[0, 1, 4, 4] = 1
        mask = (Wdense != 0).astype(np.float64)
        reach = conv2d_reference(ind, mask, padding=1)[0][0] > 0
        assert np.array_equal(np.isnan(Y[1]), reach) and reach[2, 4, 4]
        assert np.isfinite(Y[0]).all()
        # dX does not depend on X; NaN in dY reaches dX through stored weights only
        dY = rng.standard_normal(Y.shape).astype(np.float32)
        dX, _ = sp.conv2d_backward(X, W, dY, padding=1, algorithm=algorithm)
        assert np.isfinite(dX).all()
        dY[0, 2, 3, 3] = np.nan
        dX, dW = sp.conv2d_backward(np.nan_to_num(X), W, dY, padding=1, algorithm=algorithm)
        # the transposed convolution of dY's NaN indicator with the mask
        back = conv2d_reference(np.zeros((1, 3, 8, 8)), mask, np.isnan(dY[:1]).astype(
            np.float64), padding=1)[1][0] > 0
        assert np.array_equal(np.isnan(dX[0]), back) and np.isfinite(dX[1]).all()
        oc = W._coords()[0]
        assert np.isnan(dW[oc == 2]).all() and np.isfinite(dW[oc != 2]).all()


@pytest.mark.parametrize("algorithm", ALGOS)
def test_stale_scratch_never_leaks(algorithm, rng):
    # The kernels zero only the borders of their reused buffers; poison the
    # scratch memory with NaN before every call to prove nothing else is read.
    from sparseprop import _checks

    def poison():
        _checks.scratch(1 << 24)[:] = 0xFF      # 0xFFFFFFFF is a NaN
    for dtype, B, C, H, Wd, stride, padding in [
            (np.float32, 11, 6, 9, 13, 1, 1), (np.float64, 5, 4, 12, 7, 2, (2, 1)),
            (np.float32, 3, 4, 20, 21, 3, 0), (np.float32, 9, 5, 7, 7, 1, "same")]:
        X = rng.standard_normal((B, C, H, Wd)).astype(dtype)
        Wdense = random_sparse_dense(rng, (7, C, 3, 3), 0.5, dtype)
        W = sp.SparseConvWeight.from_dense(Wdense)
        poison()
        Y = sp.conv2d_forward(X, W, None, stride, padding, algorithm=algorithm)
        Yr, _, _ = conv2d_reference(X, Wdense, None, None, stride, padding, 1, 1)
        np.testing.assert_allclose(Y, Yr, rtol=1e-4, atol=1e-4)
        dY = rng.standard_normal(Y.shape).astype(dtype)
        poison()
        dX, dW = sp.conv2d_backward(X, W, dY, stride, padding, algorithm=algorithm)
        _, dXr, dWr = conv2d_reference(X, Wdense, dY, None, stride, padding, 1, 1)
        np.testing.assert_allclose(dX, dXr, rtol=1e-4, atol=1e-4)
        oc, ic, kr, kc = W._coords()
        np.testing.assert_allclose(dW, dWr[oc, ic, kr, kc], rtol=1e-4, atol=1e-3)


def test_results_are_deterministic(rng):
    X = rng.standard_normal((17, 16, 14, 14)).astype(np.float32)
    W = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (24, 16, 3, 3), 0.8))
    dY = rng.standard_normal((17, 24, 14, 14)).astype(np.float32)
    for algorithm in ALGOS:
        for T in (1, 2):
            y0 = sp.conv2d_forward(X, W, padding=1, algorithm=algorithm, n_threads=T)
            g0 = sp.conv2d_backward(X, W, dY, padding=1, algorithm=algorithm, n_threads=T)
            for _ in range(3):
                np.testing.assert_array_equal(
                    sp.conv2d_forward(X, W, padding=1, algorithm=algorithm, n_threads=T), y0)
                g = sp.conv2d_backward(X, W, dY, padding=1, algorithm=algorithm, n_threads=T)
                np.testing.assert_array_equal(g[0], g0[0])
                np.testing.assert_array_equal(g[1], g0[1])


def test_outputs_are_fresh_arrays(rng):
    X = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    W = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (5, 3, 3, 3), 0.5))
    dY = rng.standard_normal((4, 5, 4, 4)).astype(np.float32)
    assert not np.shares_memory(sp.conv2d_forward(X, W), sp.conv2d_forward(X, W))
    (a, b), (c, d) = sp.conv2d_backward(X, W, dY), sp.conv2d_backward(X, W, dY)
    assert not np.shares_memory(a, c) and not np.shares_memory(b, d)
    assert not np.shares_memory(b, W.data)


def test_large_layer_index_widths(rng):
    # 2048 x 7 x 7 = 100352 slots per output channel: past int16 (the paper's
    # W_ich) - offsets must stay exact.
    Wdense = random_sparse_dense(rng, (64, 2048, 7, 7), 0.6)
    W = sp.SparseConvWeight.from_dense(Wdense)
    per_oc = (Wdense != 0).reshape(64, -1).sum(axis=1)
    assert per_oc.min() > 32767
    np.testing.assert_array_equal(np.diff(W.och), per_oc)
    assert W.ich.dtype == np.int32 and W.ich.reshape(64, 2049)[:, -1].tolist() == per_oc.tolist()
    np.testing.assert_array_equal(W.to_dense(), Wdense)
    np.testing.assert_array_equal(W.data, Wdense[Wdense != 0])
    X = rng.standard_normal((2, 2048, 7, 7)).astype(np.float32)
    sub = sp.SparseConvWeight.from_dense(Wdense[:4])
    check_conv(X, Wdense[:4], W=sub, padding=3, rng=rng)


# ---------------------------------------------------------------- the weight

def _weight_with_nan_and_empty_channel(dtype, rng):
    Wdense = random_sparse_dense(rng, (6, 4, 3, 2), 0.6, dtype)
    Wdense[0, 0, 0, 0] = np.nan
    Wdense[1] = 0
    return Wdense, sp.SparseConvWeight.from_dense(Wdense)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_round_trips(dtype, rng):
    Wdense, W = _weight_with_nan_and_empty_channel(dtype, rng)
    assert W.shape == (6, 4, 3, 2) and W.dtype == dtype
    assert W.nnz == int((Wdense != 0).sum())
    np.testing.assert_array_equal(W.data, Wdense[Wdense != 0])   # the facade's contract
    np.testing.assert_array_equal(W.to_dense(), Wdense)
    assert W.och[1] == W.och[2]                                   # empty output channel
    oc, ic, kr, kc = np.nonzero(Wdense != 0)
    np.testing.assert_array_equal(W.krow, kr)
    np.testing.assert_array_equal(W.kcol, kc)
    assert not W.och.flags.writeable and not W.krow.flags.writeable
    W3 = sp.SparseConvWeight(W.data, W.och, W.ich, W.krow, W.kcol, W.shape)
    np.testing.assert_array_equal(W3.to_dense(), Wdense)
    W4 = sp.SparseConvWeight.from_dense(Wdense.astype(np.float16), dtype=dtype)
    assert W4.dtype == dtype and W4.nnz == W.nnz
    assert "SparseConvWeight 6x4x3x2" in repr(W) and f"nnz={W.nnz}" in repr(W)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_round_trips_through_torch(dtype, rng):
    Wdense, W = _weight_with_nan_and_empty_channel(dtype, rng)
    T = torch.from_numpy(Wdense).requires_grad_(True)
    W2 = sp.SparseConvWeight.from_torch(T)
    np.testing.assert_array_equal(W2.data, W.data)
    np.testing.assert_array_equal(W2.to_torch().numpy(), Wdense)


def test_paper_example():
    # The (3, 2, 2, 3) example of the paper's section 3.3.
    D = np.zeros((3, 2, 2, 3), np.float32)
    D[0, 0, 0, 1] = 1  # a
    D[1, 1, 0, 1] = 2  # b
    D[1, 1, 1, 1] = 3  # c
    D[2, 0, 1, 0] = 4  # d
    D[2, 0, 1, 2] = 5  # e
    D[2, 1, 0, 2] = 6  # f
    W = sp.SparseConvWeight.from_dense(D)
    assert W.och.tolist() == [0, 1, 3, 6]
    assert W.ich.tolist() == [0, 1, 1, 0, 0, 2, 0, 2, 3]
    assert W.data.tolist() == [1, 2, 3, 4, 5, 6]
    assert W.krow.tolist() == [0, 0, 1, 1, 1, 0]    # the paper's W_x
    assert W.kcol.tolist() == [1, 1, 1, 0, 2, 2]    # the paper's W_y


def test_weight_with_data_copy_astype_and_pickle(rng):
    Wdense = random_sparse_dense(rng, (4, 3, 3, 3), 0.5)
    W = sp.SparseConvWeight.from_dense(Wdense)
    X = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    Y = sp.conv2d_forward(X, W, padding=1)
    assert "conv2d" in W._cache                      # a plan was cached per mask
    vals = W.data * 2
    W2 = W.with_data(vals)
    assert W2._cache is W._cache and W2.och is W.och
    vals[:] *= 1.5                                    # no copy: updates are seen
    np.testing.assert_allclose(sp.conv2d_forward(X, W2, padding=1), 3 * Y, rtol=1e-5,
                               atol=1e-5)
    C = W.copy()
    C.data[:] = 0
    assert np.any(W.data != 0) and C._cache is W._cache
    D = W.astype(np.float64)
    assert D.dtype == np.float64 and D.krow is W.krow
    P = pickle.loads(pickle.dumps(W))
    np.testing.assert_array_equal(P.data, W.data)
    np.testing.assert_array_equal(P.ich, W.ich)
    assert P.shape == W.shape and "conv2d" not in P._cache
    np.testing.assert_array_equal(sp.conv2d_forward(X, P, padding=1), Y)
    import copy
    assert copy.deepcopy(W).data is not W.data
    with pytest.raises(ValueError, match=rf"values must have shape \({W.nnz},\)"):
        W.with_data(np.ones(W.nnz + 1, np.float32))
    with pytest.raises(TypeError, match="values must have dtype float32 or float64"):
        W.with_data(np.ones(W.nnz, np.int64))


def _raw():
    W = sp.SparseConvWeight.from_dense(np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) % 3)
    return dict(data=W.data, och=W.och, ich=W.ich, krow=W.krow, kcol=W.kcol, shape=W.shape)


@pytest.mark.parametrize("change,exc,msg", [
    (dict(och=[0, 5, 16]), ValueError, "och"),
    (dict(och=[1, 8, 16]), ValueError, r"och\[0\] must be 0"),
    (dict(och=[0, 8]), ValueError, "och must have length out_channels . 1 = 3"),
    (dict(ich=np.zeros(7, np.int32)), ValueError, "ich must have length"),
    (dict(ich=[0, 3, 5, 8, 1, 3, 5, 8]), ValueError, "ich must start every output channel at 0"),
    (dict(ich=[0, 3, 2, 8, 0, 3, 5, 8]), ValueError, "ich must be non-decreasing"),
    (dict(ich=[0, 3, 5, 7, 0, 3, 5, 8]), ValueError, "ich must end output channel 0"),
    (dict(krow=np.full(16, 2)), ValueError, r"krow\[0\]=2 is out of range for kernel_h=2"),
    (dict(kcol=-np.ones(16, np.int64)), ValueError, r"kcol\[0\]=-1 is out of range"),
    (dict(kcol=np.zeros(16, np.int64)), ValueError, "must be sorted and free of duplicates"),
    (dict(shape=(2, 3, 2)), ValueError, "shape must be 4 non-negative integers"),
    (dict(shape=(2, 3, 2, -2)), ValueError, "shape must be 4 non-negative integers"),
    (dict(shape=(1, 2**16, 2**8, 2**8)), ValueError, "is too large"),
    (dict(data=np.ones(16, np.int32)), TypeError, "data must have dtype float32 or float64"),
    (dict(data=np.ones(15, np.float32)), ValueError, "data and krow must have the same length"),
    (dict(krow=np.ones(16, np.float32)), TypeError, "krow must hold integers"),
])
def test_weight_constructor_validates(change, exc, msg):
    args = _raw()
    args.update(change)
    with pytest.raises(exc, match=msg):
        sp.SparseConvWeight(**args)


def test_weight_bad_sources():
    with pytest.raises(ValueError, match=r"array must be 4-D .*got shape \(3, 3\)"):
        sp.SparseConvWeight.from_dense(np.ones((3, 3), np.float32))
    with pytest.raises(TypeError, match="array must have dtype float32 or float64; got int64"):
        sp.SparseConvWeight.from_dense(np.ones((1, 1, 3, 3), np.int64))


@needs_torch
def test_weight_bad_torch_sources():
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor; got ndarray"):
        sp.SparseConvWeight.from_torch(np.ones((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="tensor is on meta; move it to the CPU first"):
        sp.SparseConvWeight.from_torch(torch.ones(1, 1, 3, 3, device="meta"))
    with pytest.raises(TypeError, match="tensor must have dtype float32 or float64; got "
                                        "torch.bfloat16"):
        sp.SparseConvWeight.from_torch(torch.ones(1, 1, 3, 3, dtype=torch.bfloat16))
    W = sp.SparseConvWeight.from_torch(torch.ones(1, 1, 3, 3, dtype=torch.bfloat16),
                                       dtype=np.float32)
    assert W.dtype == np.float32 and W.nnz == 9


# ---------------------------------------------------------------- bad input

def _w(dtype=np.float32, shape=(4, 3, 3, 3)):
    return sp.SparseConvWeight.from_dense(np.ones(shape, dtype))


_X = np.ones((2, 3, 8, 8), np.float32)


@pytest.mark.parametrize("call,exc,msg", [
    (lambda: sp.conv2d_forward(_X, np.ones((4, 3, 3, 3), np.float32)), TypeError,
     "W must be a sparseprop.SparseConvWeight; got ndarray"),
    (lambda: sp.conv2d_forward(np.ones((2, 5, 8, 8), np.float32), _w()), ValueError,
     r"X has 5 channels .*groups=1 expects 3 \(W.shape\[1\] \* groups\)"),
    (lambda: sp.conv2d_forward(_X, _w(shape=(4, 1, 3, 3)), groups=3), ValueError,
     "groups=3 must divide out_channels=4"),
    (lambda: sp.conv2d_forward(np.ones((2, 7, 8, 8), np.float32), _w(shape=(3, 2, 3, 3)),
                               groups=3), ValueError,
     r"X has 7 channels .*with groups=3 expects 6"),
    (lambda: sp.conv2d_forward(_X, _w(), groups=0), ValueError,
     "groups must be a positive integer; got 0"),
    (lambda: sp.conv2d_forward(_X, _w(), groups=1.5), TypeError,
     "groups must be a positive integer; got 1.5"),
    (lambda: sp.conv2d_forward(np.ones((2, 3, 2, 8), np.float32), _w()), ValueError,
     r"the kernel \(3x3, dilation \(1, 1\): spans 3x3\) is larger than the padded input "
     r"\(2x8"),
    (lambda: sp.conv2d_forward(_X, _w(), dilation=4), ValueError,
     r"spans 9x9\) is larger than the padded input \(8x8"),
    (lambda: sp.conv2d_forward(_X.astype(np.float64), _w()), TypeError,
     "X has dtype float64 but the weight has dtype float32"),
    (lambda: sp.conv2d_forward(_X.astype(np.int32), _w()), TypeError,
     r"X must have dtype float32 \(like the weight\); got int32"),
    (lambda: sp.conv2d_forward(np.ones((3, 8), np.float32), _w()), ValueError,
     r"X must be 4-D .* got shape \(3, 8\)"),
    (lambda: sp.conv2d_forward(np.ones((1, 3, 0, 4), np.float32), _w(), padding=2), ValueError,
     r"X has shape \(1, 3, 0, 4\): an empty spatial size needs batch 0 or 0 channels"),
    (lambda: sp.conv2d_forward(_X, _w(), stride=0), ValueError,
     "stride must be positive .>= 1.; got 0"),
    (lambda: sp.conv2d_forward(_X, _w(), stride=(1, -2)), ValueError,
     r"stride must be positive .>= 1.; got \(1, -2\)"),
    (lambda: sp.conv2d_forward(_X, _w(), stride=(1, 2, 3)), TypeError,
     r"stride must be an int or a pair of ints \(h, w\); got \(1, 2, 3\)"),
    (lambda: sp.conv2d_forward(_X, _w(), stride=1.0), TypeError,
     "stride must be an int or a pair of ints"),
    (lambda: sp.conv2d_forward(_X, _w(), padding=-1), ValueError,
     "padding must be non-negative .>= 0.; got -1"),
    (lambda: sp.conv2d_forward(_X, _w(), padding="full"), ValueError,
     "padding must be 'same', 'valid', an int or a pair of ints; got 'full'"),
    (lambda: sp.conv2d_forward(_X, _w(), stride=2, padding="same"), ValueError,
     "padding='same' is not supported for strided convolutions"),
    (lambda: sp.conv2d_forward(_X, _w(), dilation=0), ValueError,
     "dilation must be positive .>= 1.; got 0"),
    (lambda: sp.conv2d_forward(_X, _w(), dilation=True), TypeError,
     "dilation must be an int or a pair of ints"),
    (lambda: sp.conv2d_forward(_X, _w(), algorithm="fast"), ValueError,
     "algorithm must be one of 'auto', 'batch_last', 'over_width'; got 'fast'"),
    (lambda: sp.conv2d_forward(_X, _w(), np.ones(3, np.float32)), ValueError,
     r"bias must have shape \(4,\)"),
    (lambda: sp.conv2d_forward(_X, _w(), np.ones(4)), TypeError,
     "bias has dtype float64 but the weight has dtype float32"),
    (lambda: sp.conv2d_forward(_X, _w(), n_threads=0), ValueError,
     "n_threads must be a positive integer or None; got 0"),
    (lambda: sp.conv2d_backward(_X, _w(), np.ones((2, 4, 6, 5), np.float32)), ValueError,
     r"dY has shape \(2, 4, 6, 5\); expected \(2, 4, 6, 6\)"),
    (lambda: sp.conv2d_backward(_X, _w(), np.ones((2, 4, 6, 6))), TypeError,
     "dY has dtype float64 but the weight has dtype float32"),
    (lambda: sp.conv2d_backward(_X, _w(), np.ones((2, 4, 6, 6), np.float32), n_threads=-1),
     ValueError, "n_threads must be a positive integer or None; got -1"),
    (lambda: sp.conv2d_backward(_X, _w(), np.ones((2, 4, 6, 6), np.float32), stride="2"),
     TypeError, "stride must be an int or a pair of ints"),
])
def test_bad_input_is_a_clear_error(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


@needs_torch
def test_torch_tensors_are_pointed_to_the_facade():
    with pytest.raises(TypeError, match="X is a torch.Tensor; the NumPy API takes arrays"):
        sp.conv2d_forward(torch.ones(2, 3, 8, 8), _w())


# The over-width backward reads X and writes dX in place (no packed copies)
# when the column stride is 1 and a row is whole vectors (width a multiple of
# 8 float32 / 4 float64 lanes; the scalar path: any width).  Its cases: row
# strides, row phases, dilation, groups, padding that leaves rows out, inputs
# whose rows are not width apart and a read-only input broadcast over the batch.
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width,stride,padding,dilation,groups,layout", [
    (8, 1, 1, 1, 1, "contiguous"),
    (16, (2, 1), (1, 0), 1, 1, "contiguous"),
    (24, (3, 1), (0, 2), (2, 1), 2, "contiguous"),
    (32, 1, (2, 1), (1, 2), 1, "wide rows"),
    (16, (2, 1), 1, 1, 2, "reversed rows"),
    (8, 1, 0, 1, 4, "depthwise"),
    (16, 1, 1, 1, 1, "broadcast batch"),
])
def test_in_place_over_width_backward(width, stride, padding, dilation, groups, layout, dtype,
                                      n_threads, rng):
    B, C, H = 5, 4, 9
    if layout == "wide rows":    # row stride of X larger than its width
        X = rng.standard_normal((B, C, H, width + 5)).astype(dtype)[..., :width]
    elif layout == "reversed rows":
        X = rng.standard_normal((B, C, H, width)).astype(dtype)[:, :, ::-1]
    elif layout == "broadcast batch":  # batch stride 0, read-only
        X = np.broadcast_to(rng.standard_normal((C, H, width)).astype(dtype), (B, C, H, width))
    else:
        X = rng.standard_normal((B, C, H, width)).astype(dtype)
    OC = C if layout == "depthwise" else 6
    Wdense = random_sparse_dense(rng, (OC, C // groups, 3, 3), 0.6, dtype)
    Wdense[1] = 0  # an output channel without weights
    for need_input_grad in (True, False):
        check_conv(X, Wdense, stride=stride, padding=padding, dilation=dilation, groups=groups,
                   algorithm="over_width", n_threads=n_threads, rng=rng,
                   need_input_grad=need_input_grad)
