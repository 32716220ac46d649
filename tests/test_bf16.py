"""bfloat16 activations through the NumPy API (ml_dtypes.bfloat16 arrays).

The linear kernels read and write bfloat16 and compute in float32, exactly as
the float32 kernels do on the widened values; so the strongest check is bit
for bit: Y (dX) must be the float32 kernel's result rounded to nearest even,
and dW the float32 kernel's dW.  Every case is also checked against a float64
reference within bfloat16 tolerance.  The conv2d kernels are built the same
way (bfloat16 in and out of their float32 buffers and register tiles), and
are held to the same checks.

Run under every ISA by tests/test_isa.py (and with SPARSEPROP_AVX512BF16=0
for the plain-AVX-512 rounding where the CPU has AVX512_BF16).
"""
import numpy as np
import pytest

import sparseprop as sp
from sparseprop import _config

from helpers import TAIL_SIZES, random_sparse_dense, run_python

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (a test extra)")
BF16 = np.dtype(ml_dtypes.bfloat16)
# The AVX512_BF16 rounding instruction flushes subnormals to zero; no test
# value here is subnormal, so every region must agree bit for bit.
EPS = 2.0**-8  # bfloat16 keeps 8 significant bits: rounding is within EPS/2 relative


def bf16(rng, shape):
    return rng.standard_normal(shape).astype(BF16)


def bits(a):
    return np.ascontiguousarray(a).view(np.uint16)


def assert_rounded_from(actual, f32):
    """actual (bfloat16) is f32 rounded to nearest even, bit for bit (NaNs: NaN)."""
    assert actual.dtype == BF16
    expect = np.asarray(f32, dtype=np.float32).astype(BF16)  # ml_dtypes rounds to nearest even
    nan = np.isnan(expect.astype(np.float32))
    assert np.array_equal(np.isnan(actual.astype(np.float32)), nan)
    np.testing.assert_array_equal(bits(actual)[~nan], bits(expect)[~nan])


def assert_close_bf16(actual, ref, scale):
    """Within bfloat16 rounding of a float64 reference: half an ulp of the value
    plus the float32 sums' error (relative to ``scale`` = sum of |products|)."""
    got = np.asarray(actual).astype(np.float64)
    bound = EPS * np.abs(ref) + 1e-5 * scale + 1e-30
    err = np.abs(got - ref)
    assert (err <= bound).all(), f"max excess {np.max(err - bound)}"


def check_linear(X, Wd, dY, bias=None, n_threads=1):
    """Forward and backward with bfloat16 X/dY against (a) the float32 kernels on
    the widened values and (b) a float64 reference."""
    W = sp.CSRMatrix.from_dense(Wd)
    Y = sp.linear_forward(X, W, bias, n_threads=n_threads)
    assert Y.dtype == BF16 and Y.shape == X.shape[:-1] + (Wd.shape[0],)
    X32, dY32 = X.astype(np.float32), dY.astype(np.float32)
    assert_rounded_from(Y, sp.linear_forward(X32, W, bias, n_threads=n_threads))
    X64, W64 = X.astype(np.float64), Wd.astype(np.float64)
    ref = X64 @ W64.T + (0 if bias is None else bias.astype(np.float64))
    assert_close_bf16(Y, ref, np.abs(X64) @ np.abs(W64.T))

    dX, dW = sp.linear_backward(X, W, dY, n_threads=n_threads)
    assert dX.dtype == BF16 and dX.shape == X.shape and dW.dtype == np.float32
    dX32, dW32 = sp.linear_backward(X32, W, dY32, n_threads=n_threads)
    assert_rounded_from(dX, dX32)
    np.testing.assert_array_equal(dW, dW32)
    dY64 = dY.astype(np.float64)
    assert_close_bf16(dX, dY64 @ W64, np.abs(dY64) @ np.abs(W64))
    B = int(np.prod(X.shape[:-1]))
    X2, dY2 = X64.reshape(B, Wd.shape[1]), dY64.reshape(B, Wd.shape[0])
    rows, cols = np.nonzero(Wd)
    ref_dw = (dY2.T @ X2)[rows, cols]
    np.testing.assert_allclose(dW, ref_dw, rtol=1e-5,
                               atol=1e-5 * ((np.abs(dY2).T @ np.abs(X2))[rows, cols].max()
                                            if rows.size else 1))
    _, dW_only = sp.linear_backward(X, W, dY, need_input_grad=False, n_threads=n_threads)
    np.testing.assert_array_equal(dW_only, dW)
    return Y, dX, dW


@pytest.mark.parametrize("B", TAIL_SIZES)
def test_linear_batch_tails(rng, B):
    Wd = random_sparse_dense(rng, (17, 37), 0.6)
    check_linear(bf16(rng, (B, 37)), Wd, bf16(rng, (B, 17)), rng.standard_normal(17)
                 .astype(np.float32))


@pytest.mark.parametrize("M", TAIL_SIZES)
@pytest.mark.parametrize("N", [1, 8, 17])
def test_linear_feature_tails(rng, M, N):
    Wd = random_sparse_dense(rng, (N, M), 0.5)
    check_linear(bf16(rng, (37, M)), Wd, bf16(rng, (37, N)))


@pytest.mark.parametrize("sparsity", [0.0, 1.0])
def test_linear_dense_and_empty_weights(rng, sparsity):
    Wd = random_sparse_dense(rng, (16, 40), sparsity)
    check_linear(bf16(rng, (33, 40)), Wd, bf16(rng, (33, 16)),
                 rng.standard_normal(16).astype(np.float32))


def test_linear_empty_rows_and_columns(rng):
    Wd = random_sparse_dense(rng, (24, 50), 0.5)
    Wd[::3] = 0
    Wd[:, 5:20] = 0
    check_linear(bf16(rng, (21, 50)), Wd, bf16(rng, (21, 24)))


@pytest.mark.parametrize("n_threads", [1, 2])
def test_linear_threads(rng, n_threads):
    # large enough to be split across threads (above the serial threshold)
    Wd = random_sparse_dense(rng, (96, 160), 0.7)
    check_linear(bf16(rng, (300, 160)), Wd, bf16(rng, (300, 96)),
                 rng.standard_normal(96).astype(np.float32), n_threads=n_threads)
    if n_threads > 1 and _config.openmp_enabled():
        assert _config.last_team_size() > 1


def test_linear_strided_readonly_and_batched_inputs(rng):
    Wd = random_sparse_dense(rng, (19, 23), 0.5)
    big = bf16(rng, (2, 40, 50))
    X = big[:, ::2, 3:26]  # row stride 100 elements, misaligned start, 3-D
    dY = bf16(rng, (2, 20, 19))
    dY.flags.writeable = False
    X.flags.writeable = False
    check_linear(X, Wd, dY)
    # a last axis that is not contiguous (copied first) and a transposed view
    Xt = bf16(rng, (23, 9)).T
    check_linear(Xt, Wd, bf16(rng, (9, 38))[:, ::2])


def test_linear_out_arrays(rng):
    Wd = random_sparse_dense(rng, (9, 12), 0.5)
    W = sp.CSRMatrix.from_dense(Wd)
    X, dY = bf16(rng, (5, 12)), bf16(rng, (5, 9))
    out = sp.empty_aligned((5, 9), BF16)
    assert sp.linear_forward(X, W, out=out) is out
    np.testing.assert_array_equal(bits(out), bits(sp.linear_forward(X, W)))
    out_dx = sp.empty_aligned((5, 12), BF16)
    assert sp.linear_backward(X, W, dY, out_dx=out_dx)[0] is out_dx
    with pytest.raises(TypeError, match="out has dtype float32; the result has dtype bfloat16"):
        sp.linear_forward(X, W, out=np.empty((5, 9), np.float32))


def test_rounding_is_to_nearest_even_with_nan_and_inf():
    # Y[0, n] = 1.0 * w[n] exactly in float32, so Y must be round(w) bit for bit:
    # ties to even both ways, carries into the exponent, overflow to inf, NaN
    # (no zeros: from_dense does not store them; NaNs whose payload would carry
    # into the sign or exponent if rounded like numbers).
    w32 = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF, 0x3FFF8000, 0xBF808000,
                    0xBF818000, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00001, 0x3F80FFFF,
                    0x7FFFFFFF, 0xFFFFFFFF, 0x3F7FFFFF, 0x3F800000, 0x42F6E979, 0xC2F6E979,
                    0x3EAAAAAB],
                   dtype=np.uint32).view(np.float32)
    n = w32.shape[0]
    W = sp.CSRMatrix.from_dense(np.diag(w32))
    for rows in (1, 3, 40):  # scalar tails and full vectors
        X = np.ones((rows, n), dtype=BF16)
        with np.errstate(invalid="ignore", over="ignore"):
            Y = sp.linear_forward(X, W)
            assert_rounded_from(Y, np.broadcast_to(w32, (rows, n)))
            dX, _ = sp.linear_backward(X, W, X)
            assert_rounded_from(dX, np.broadcast_to(w32, (rows, n)))
    expect = np.array([0x3F80, 0x3F82, 0x3F81, 0x3F81, 0x4000, 0xBF80, 0xBF82, 0x7F80, 0x7F80,
                       0xFF80], dtype=np.uint16)
    np.testing.assert_array_equal(bits(Y)[0, :10], expect)  # the hand-computed roundings


def test_bad_dtypes_name_the_argument(rng):
    Wd = random_sparse_dense(rng, (4, 6), 0.5)
    X, dY = bf16(rng, (3, 6)), bf16(rng, (3, 4))
    W64 = sp.CSRMatrix.from_dense(Wd.astype(np.float64))
    with pytest.raises(TypeError, match="X has dtype bfloat16, which needs a float32 weight"):
        sp.linear_forward(X, W64)
    W = sp.CSRMatrix.from_dense(Wd)
    with pytest.raises(TypeError, match="dY has dtype float32 but X has dtype bfloat16"):
        sp.linear_backward(X, W, dY.astype(np.float32))
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        sp.linear_forward(X, W, np.zeros(4, BF16))


# ---------------------------------------------------------------- conv2d

ALGORITHMS = ["batch_last", "over_width"]


def _conv_ref(X64, W64, kw):
    """torch float64 conv2d and its two gradients' functions (the reference)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    padding = kw.get("padding", 0)
    if padding == "same":  # torch's gradient functions take numbers (odd kernels here)
        padding = (W64.shape[2] // 2, W64.shape[3] // 2)
    args = dict(stride=kw.get("stride", 1), padding=padding,
                dilation=kw.get("dilation", 1), groups=kw.get("groups", 1))
    t = torch.from_numpy

    def fwd(x, w):
        return F.conv2d(t(x), t(w), **args).numpy()

    def dx(w, g):
        return torch.nn.grad.conv2d_input(X64.shape, t(w), t(g), **args).numpy()

    def dw(x, g):
        return torch.nn.grad.conv2d_weight(t(x), W64.shape, t(g), **args).numpy()
    return fwd, dx, dw


def check_conv(rng, X, Wd, bias=None, algorithm="auto", n_threads=1, **kw):
    """conv2d forward and backward with bfloat16 X/dY against (a) the float32
    kernels on the widened values, bit for bit after rounding, and (b) a
    float64 reference within bfloat16 tolerance."""
    C = sp.SparseConvWeight.from_dense(Wd)
    opts = dict(kw, algorithm=algorithm, n_threads=n_threads)
    Y = sp.conv2d_forward(X, C, bias, **opts)
    X32 = X.astype(np.float32)
    Y32 = sp.conv2d_forward(X32, C, bias, **opts)
    assert Y.dtype == BF16 and Y.shape == Y32.shape and Y.flags.c_contiguous
    assert_rounded_from(Y, Y32)
    dY = bf16(rng, Y.shape)
    dX, dW = sp.conv2d_backward(X, C, dY, **opts)
    dY32 = dY.astype(np.float32)
    dX32, dW32 = sp.conv2d_backward(X32, C, dY32, **opts)
    assert dX.dtype == BF16 and dX.shape == X.shape and dW.dtype == np.float32
    assert_rounded_from(dX, dX32)
    np.testing.assert_array_equal(dW, dW32)
    dX_none, dW_only = sp.conv2d_backward(X, C, dY, need_input_grad=False, **opts)
    assert dX_none is None
    np.testing.assert_array_equal(dW_only, dW)

    X4 = X32.astype(np.float64)
    dY4 = dY32.astype(np.float64)
    if X4.ndim == 3:
        X4, dY4 = X4[None], dY4[None]
    W64 = Wd.astype(np.float64)
    fwd, gx, gw = _conv_ref(X4, W64, kw)
    b64 = 0 if bias is None else bias.astype(np.float64)[:, None, None]
    Y4 = Y.astype(np.float64).reshape((-1,) + Y.shape[-3:])
    assert_close_bf16(Y4, fwd(X4, W64) + b64, fwd(np.abs(X4), np.abs(W64)) + np.abs(b64))
    dX4 = dX.astype(np.float64).reshape(X4.shape)
    assert_close_bf16(dX4, gx(W64, dY4), gx(np.abs(W64), np.abs(dY4)))
    mask = Wd != 0
    ref_dw = gw(X4, dY4)[mask]
    scale_dw = gw(np.abs(X4), np.abs(dY4))[mask]
    # dW is C's values in W's C order (SparseConvWeight stores them so)
    np.testing.assert_allclose(dW, ref_dw, rtol=0, atol=1e-5 * (scale_dw.max() if
                                                               scale_dw.size else 1))
    return Y, dX, dW


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("shape,kw", [
    ((2, 4, 7, 7), dict(padding=1)),
    ((1, 6, 9, 8), dict(stride=2, padding=1, groups=2)),
    ((3, 4, 5, 17), dict(padding="same")),
    ((2, 3, 8, 16), dict(padding=1)),             # over-width direct mode (W % 8 == 0)
    ((2, 3, 6, 24), dict()),                      # direct mode, no padding
    ((2, 3, 6, 16), dict(padding=(1, 0))),        # direct mode, OW % 8 != 0
    ((1, 2, 11, 24), dict(padding=2, dilation=2)),
    ((9, 3, 5, 13), dict(stride=(1, 3), padding=1)),
    ((2, 3, 6, 37), dict(stride=2, padding=1)),   # stride-2 phases past 16 columns, tails
    ((2, 3, 7, 40), dict(stride=2)),
    ((1, 8, 5, 5), dict(padding=1, groups=8)),    # depthwise
    ((3, 16, 6, 6), dict(padding=1, groups=4)),
])
def test_conv2d_matches_float32_rounded(rng, shape, kw, algorithm):
    groups = kw.get("groups", 1)
    Wd = random_sparse_dense(rng, (8, shape[1] // groups, 3, 3), 0.6)
    b = rng.standard_normal(8).astype(np.float32)
    check_conv(rng, bf16(rng, shape), Wd, b, algorithm, **kw)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("width", [1, 3, 7, 8, 9, 15, 16, 17, 23, 32, 33, 56])
def test_conv2d_width_tails(rng, algorithm, width):
    # vector tails of the packing and unpacking, over-width tiles with spills,
    # through the band, or of whole vectors (written in place)
    Wd = random_sparse_dense(rng, (5, 3, 3, 3), 0.5)
    check_conv(rng, bf16(rng, (3, 3, 6, width)), Wd, None, algorithm, padding=1)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("batch", [1, 2, 7, 8, 9, 17])
def test_conv2d_batch_tails(rng, algorithm, batch):
    Wd = random_sparse_dense(rng, (6, 4, 3, 3), 0.5)
    check_conv(rng, bf16(rng, (batch, 4, 7, 9)), Wd, rng.standard_normal(6)
               .astype(np.float32), algorithm, padding=1)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv2d_unbatched_input(rng, algorithm):
    Wd = random_sparse_dense(rng, (4, 3, 3, 3), 0.5)
    check_conv(rng, bf16(rng, (3, 9, 16)), Wd, None, algorithm, padding=1)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("sparsity", [0.0, 1.0])
def test_conv2d_dense_and_empty_weights(rng, algorithm, sparsity):
    Wd = random_sparse_dense(rng, (6, 4, 3, 3), sparsity)
    check_conv(rng, bf16(rng, (3, 4, 8, 16)), Wd, rng.standard_normal(6).astype(np.float32),
               algorithm, padding=1)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv2d_empty_channels(rng, algorithm):
    Wd = random_sparse_dense(rng, (9, 6, 3, 3), 0.4)
    Wd[::3] = 0        # output channels without weights: Y is the bias
    Wd[:, 1:3] = 0     # input channels without weights: dX is zero
    check_conv(rng, bf16(rng, (2, 6, 7, 16)), Wd, rng.standard_normal(9).astype(np.float32),
               algorithm, padding=1)


def test_conv2d_blocked_forward(rng):
    # many input channels at low sparsity: the forward cuts them into blocks
    # (partial tiles in the band buffer) where the ISA blocks
    Wd = random_sparse_dense(rng, (8, 32, 3, 3), 0.0)
    check_conv(rng, bf16(rng, (1, 32, 12, 56)), Wd, rng.standard_normal(8).astype(np.float32),
               "over_width", padding=1)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_conv2d_threads(rng, algorithm, n_threads):
    # large enough to be split across threads (above the serial threshold)
    Wd = random_sparse_dense(rng, (16, 8, 3, 3), 0.5)
    check_conv(rng, bf16(rng, (16, 8, 14, 16)), Wd, rng.standard_normal(16)
               .astype(np.float32), algorithm, n_threads=n_threads, padding=1)
    if n_threads > 1 and _config.openmp_enabled():
        assert _config.last_team_size() > 1
    # batch 1: the threads split channels instead
    check_conv(rng, bf16(rng, (1, 8, 40, 40)), Wd, None, algorithm, n_threads=n_threads,
               stride=2, padding=1)


def test_conv2d_strided_readonly_inputs(rng):
    Wd = random_sparse_dense(rng, (5, 4, 3, 3), 0.5)
    big = bf16(rng, (3, 8, 10, 40))
    X = big[:, ::2, 1:9, 3:35]          # strided batch, channels and rows, misaligned start
    X.flags.writeable = False
    for alg in ALGORITHMS:
        check_conv(rng, X, Wd, None, alg, padding=1)
    Xcl = np.ascontiguousarray(bf16(rng, (2, 9, 11, 4)).transpose(0, 3, 1, 2))  # (2, 4, 9, 11)
    check_conv(rng, bf16(rng, (2, 9, 11, 4)).transpose(0, 3, 1, 2), Wd, None, padding=1)
    check_conv(rng, Xcl, Wd, None, padding=1)


def test_conv2d_out_arrays(rng):
    C = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (6, 4, 3, 3), 0.5))
    X = bf16(rng, (2, 4, 8, 16))
    out = sp.empty_aligned((2, 6, 8, 16), BF16)
    assert sp.conv2d_forward(X, C, padding=1, out=out) is out
    np.testing.assert_array_equal(bits(out), bits(sp.conv2d_forward(X, C, padding=1)))
    dY = bf16(rng, (2, 6, 8, 16))
    out_dx = sp.empty_aligned((2, 4, 8, 16), BF16)
    dX, dW = sp.conv2d_backward(X, C, dY, padding=1, out_dx=out_dx)
    assert dX is out_dx
    ref_dx, ref_dw = sp.conv2d_backward(X, C, dY, padding=1)
    np.testing.assert_array_equal(bits(dX), bits(ref_dx))
    np.testing.assert_array_equal(dW, ref_dw)
    with pytest.raises(TypeError, match="out has dtype float32; the result has dtype bfloat16"):
        sp.conv2d_forward(X, C, padding=1, out=np.empty((2, 6, 8, 16), np.float32))
    with pytest.raises(TypeError, match="out_dx has dtype float32; the result has dtype "
                                        "bfloat16"):
        sp.conv2d_backward(X, C, dY, padding=1, out_dx=np.empty((2, 4, 8, 16), np.float32))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv2d_rounding_is_to_nearest_even(algorithm):
    # a 1x1 conv of ones: Y[:, o] = w[o] exactly in float32, so Y must be
    # round(w) bit for bit (ties to even both ways, carries, overflow, NaN)
    w32 = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF, 0x3FFF8000, 0xBF808000,
                    0xBF818000, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00001, 0x3F80FFFF,
                    0x3F7FFFFF, 0x3F800000, 0x42F6E979, 0xC2F6E979, 0x3EAAAAAB],
                   dtype=np.uint32).view(np.float32)
    n = w32.shape[0]
    C = sp.SparseConvWeight.from_dense(np.diag(w32).reshape(n, n, 1, 1))
    for B, Wd in ((1, 8), (3, 5), (9, 24)):  # vectors and tails, in place and through buffers
        X = np.ones((B, n, 2, Wd), dtype=BF16)
        with np.errstate(invalid="ignore", over="ignore"):
            Y = sp.conv2d_forward(X, C, algorithm=algorithm)
        assert_rounded_from(Y, np.broadcast_to(w32[None, :, None, None], Y.shape))
    expect = np.array([0x3F80, 0x3F82, 0x3F81, 0x3F81, 0x4000, 0xBF80, 0xBF82, 0x7F80, 0x7F80,
                       0xFF80], dtype=np.uint16)
    np.testing.assert_array_equal(bits(Y)[0, :10, 0, 0], expect)


def test_conv2d_non_finite_gradients_take_the_exact_path(rng):
    # an Inf in X makes dW non-finite: the exact path, on the widened values
    C = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (4, 3, 3, 3), 0.5))
    X = bf16(rng, (2, 3, 6, 16))
    X[0, 1, 2, 3] = np.inf
    dY = bf16(rng, (2, 4, 6, 16))
    with np.errstate(invalid="ignore", over="ignore"):
        dX, dW = sp.conv2d_backward(X, C, dY, padding=1)
        dX32, dW32 = sp.conv2d_backward(X.astype(np.float32), C, dY.astype(np.float32),
                                        padding=1)
    assert not np.isfinite(dW).all()
    assert_rounded_from(dX, dX32)
    np.testing.assert_array_equal(dW, dW32)


def test_conv2d_bf16_errors(rng):
    C = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (2, 3, 3, 3), 0.5))
    X = bf16(rng, (1, 3, 5, 5))
    with pytest.raises(TypeError, match="dY has dtype float32 but X has dtype bfloat16"):
        sp.conv2d_backward(X, C, np.zeros((1, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="dY must have dtype float32"):
        sp.conv2d_backward(X.astype(np.float32), C, np.zeros((1, 2, 3, 3), BF16))
    C64 = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (2, 3, 3, 3), 0.5,
                                                             dtype=np.float64))
    with pytest.raises(TypeError, match="X has dtype bfloat16, which needs a float32 weight"):
        sp.conv2d_forward(X, C64)
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        sp.conv2d_forward(X, C, np.zeros(2, BF16))


# ---------------------------------------------------------------- configuration

def test_config_names_the_bf16_paths():
    cfg = sp.config()
    region = _config.BF16_LINEAR_REGION
    assert f"({region})" in cfg["bf16_linear"]
    expect = "avx512bf16" if _config.BF16_EXT else _config.ISA_NAME
    assert region == expect
    conv = _config.BF16_CONV_REGION
    assert cfg["bf16_conv2d"] == f"bfloat16 kernels ({conv}), float32 sums"
    expect = ("avx512ybf16" if _config.BF16_EXT else
              "avx512y" if _config.ISA_NAME == "avx512" else _config.ISA_NAME)
    assert conv == expect


def test_core_works_without_ml_dtypes():
    # ml_dtypes is optional: with its import blocked, sparseprop imports and runs
    code = ("import sys; sys.modules['ml_dtypes'] = None\n"
            "import numpy as np, sparseprop as sp\n"
            "W = sp.CSRMatrix.from_dense(np.eye(3, dtype=np.float32))\n"
            "Y = sp.linear_forward(np.ones((2, 3), np.float32), W)\n"
            "assert 'ml_dtypes' not in sys.modules or sys.modules['ml_dtypes'] is None\n"
            "print(float(Y.sum()))\n")
    proc = run_python(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "6.0"
