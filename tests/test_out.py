"""``out=`` / ``out_dx=``: results written into the caller's arrays.

The result must be bitwise the same as without ``out`` (same kernels), the
returned array must be the caller's, any element-aligned start must work,
and every bad destination must be a clear error before anything is written.
"""
import numpy as np
import pytest

import sparseprop

from helpers import random_sparse_dense


def linear_case(dtype=np.float32):
    rng = np.random.default_rng(0)
    W = sparseprop.CSRMatrix.from_dense(random_sparse_dense(rng, (37, 19), 0.7, dtype))
    X = rng.standard_normal((2, 17, 19)).astype(dtype)
    dY = rng.standard_normal((2, 17, 37)).astype(dtype)
    b = rng.standard_normal(37).astype(dtype)
    return W, X, dY, b


def conv_case(dtype=np.float32, unbatched=False):
    rng = np.random.default_rng(1)
    W = sparseprop.SparseConvWeight.from_dense(
        random_sparse_dense(rng, (6, 4, 3, 3), 0.6, dtype))
    shape = (4, 9, 10) if unbatched else (3, 4, 9, 10)
    X = rng.standard_normal(shape).astype(dtype)
    Y = sparseprop.conv2d_forward(X, W, padding=1, stride=2)
    dY = rng.standard_normal(Y.shape).astype(dtype)
    return W, X, dY


def misaligned_empty(shape, dtype):
    """A C-contiguous array that starts one element past a 64-byte boundary."""
    n = int(np.prod(shape))
    itemsize = np.dtype(dtype).itemsize
    buf = np.empty(n + 64 // itemsize + 1, dtype=dtype)
    off = (-buf.ctypes.data) % 64 // itemsize + 1
    out = buf[off:off + n].reshape(shape)
    assert out.ctypes.data % 64 == itemsize
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alloc", [np.empty, misaligned_empty])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_linear_out(dtype, alloc, n_threads):
    W, X, dY, b = linear_case(dtype)
    Y = sparseprop.linear_forward(X, W, b, n_threads=n_threads)
    out = alloc(Y.shape, dtype)
    out[...] = np.nan  # every element must be written
    got = sparseprop.linear_forward(X, W, b, n_threads=n_threads, out=out)
    assert got is out
    np.testing.assert_array_equal(out, Y)
    dX, dW = sparseprop.linear_backward(X, W, dY, n_threads=n_threads)
    out_dx = alloc(X.shape, dtype)
    out_dx[...] = np.nan
    got_dx, got_dw = sparseprop.linear_backward(X, W, dY, n_threads=n_threads, out_dx=out_dx)
    assert got_dx is out_dx
    np.testing.assert_array_equal(out_dx, dX)
    np.testing.assert_array_equal(got_dw, dW)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alloc", [np.empty, misaligned_empty])
@pytest.mark.parametrize("algorithm", ["batch_last", "over_width"])
@pytest.mark.parametrize("unbatched", [False, True])
def test_conv2d_out(dtype, alloc, algorithm, unbatched):
    W, X, dY = conv_case(dtype, unbatched)
    kw = dict(padding=1, stride=2, algorithm=algorithm, n_threads=2)
    Y = sparseprop.conv2d_forward(X, W, **kw)
    out = alloc(Y.shape, dtype)
    out[...] = np.nan
    assert sparseprop.conv2d_forward(X, W, **kw, out=out) is out
    np.testing.assert_array_equal(out, Y)
    dX, dW = sparseprop.conv2d_backward(X, W, dY, **kw)
    out_dx = alloc(X.shape, dtype)
    out_dx[...] = np.nan
    got_dx, got_dw = sparseprop.conv2d_backward(X, W, dY, **kw, out_dx=out_dx)
    assert got_dx is out_dx
    np.testing.assert_array_equal(out_dx, dX)
    np.testing.assert_array_equal(got_dw, dW)


def test_out_with_nothing_to_compute_is_filled():
    rng = np.random.default_rng(2)
    empty_w = sparseprop.SparseConvWeight.from_dense(np.zeros((2, 3, 3, 3), np.float32))
    X = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    out_dx = np.full(X.shape, np.nan, np.float32)
    dX, dW = sparseprop.conv2d_backward(X, empty_w, np.ones((2, 2, 5, 5), np.float32),
                                        padding=1, out_dx=out_dx)
    assert dX is out_dx and not out_dx.any() and dW.shape == (0,)
    W, X, dY, b = linear_case()
    out = np.empty((2, 0, 37), np.float32)
    assert sparseprop.linear_forward(X[:, :0], W, b, out=out) is out


def test_out_dx_through_the_exact_path():
    """A NaN in dY sends the conv backward down its exact path: out_dx still gets dX."""
    W, X, dY = conv_case()
    dY = dY.copy()
    dY[0, 0, 0, 0] = np.nan
    dX, dW = sparseprop.conv2d_backward(X, W, dY, padding=1, stride=2)
    out_dx = np.empty_like(X)
    got, _ = sparseprop.conv2d_backward(X, W, dY, padding=1, stride=2, out_dx=out_dx)
    assert got is out_dx
    np.testing.assert_array_equal(out_dx, dX)  # NaN where dX has NaN


def _bad_outs(shape, dtype):
    """(out, exception, message) for destinations that must be refused."""
    other = np.float64 if dtype == np.float32 else np.float32
    read_only = np.empty(shape, dtype)
    read_only.flags.writeable = False
    return [
        ([1.0], TypeError, "must be a NumPy array"),
        (np.empty(shape, other), TypeError, "dtype"),
        (np.empty(shape[:-1] + (shape[-1] + 1,), dtype), ValueError, "shape"),
        (np.empty(shape[::-1], dtype).T, ValueError, "C-contiguous"),
        (read_only, ValueError, "read-only"),
    ]


def overlapping(a, shape):
    """(a copy of ``a`` and an array of ``shape``) sharing one element of memory."""
    buf = np.empty(a.size + int(np.prod(shape)) - 1, a.dtype)
    a_view = buf[:a.size].reshape(a.shape)
    a_view[...] = a
    return a_view, buf[a.size - 1:].reshape(shape)


def test_linear_bad_out_is_a_clear_error():
    W, X, dY, b = linear_case()
    y_shape = X.shape[:-1] + (37,)
    for out, exc, msg in _bad_outs(y_shape, np.float32):
        with pytest.raises(exc, match=msg):
            sparseprop.linear_forward(X, W, b, out=out)
    Xv, out = overlapping(X, y_shape)
    with pytest.raises(ValueError, match="shares memory with X"):
        sparseprop.linear_forward(Xv, W, b, out=out)
    bv, out = overlapping(b, y_shape)
    with pytest.raises(ValueError, match="shares memory with bias"):
        sparseprop.linear_forward(X, W, bv, out=out)
    for out, exc, msg in _bad_outs(X.shape, np.float32):
        with pytest.raises(exc, match=msg):
            sparseprop.linear_backward(X, W, dY, out_dx=out)
    dYv, out = overlapping(dY, X.shape)
    with pytest.raises(ValueError, match="shares memory with dY"):
        sparseprop.linear_backward(X, W, dYv, out_dx=out)
    with pytest.raises(ValueError, match="need_input_grad is False"):
        sparseprop.linear_backward(X, W, dY, need_input_grad=False, out_dx=np.empty_like(X))


def test_conv2d_bad_out_is_a_clear_error():
    W, X, dY = conv_case()
    kw = dict(padding=1, stride=2)
    for out, exc, msg in _bad_outs(dY.shape, np.float32):
        with pytest.raises(exc, match=msg):
            sparseprop.conv2d_forward(X, W, **kw, out=out)
    Xv, out = overlapping(X, dY.shape)
    with pytest.raises(ValueError, match="shares memory with X"):
        sparseprop.conv2d_forward(Xv, W, **kw, out=out)
    for out, exc, msg in _bad_outs(X.shape, np.float32):
        with pytest.raises(exc, match=msg):
            sparseprop.conv2d_backward(X, W, dY, **kw, out_dx=out)
    with pytest.raises(ValueError, match="shares memory with X"):
        sparseprop.conv2d_backward(X, W, dY, **kw, out_dx=X)
    dYv, out = overlapping(dY, X.shape)
    with pytest.raises(ValueError, match="shares memory with dY"):
        sparseprop.conv2d_backward(X, W, dYv, **kw, out_dx=out)
    with pytest.raises(ValueError, match="need_input_grad is False"):
        sparseprop.conv2d_backward(X, W, dY, **kw, need_input_grad=False,
                                   out_dx=np.empty_like(X))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_aligned(dtype):
    for shape in [(3, 5), (1000, 7), 17, (2, 3, 4, 5)]:
        a = sparseprop.empty_aligned(shape, dtype)
        assert a.shape == (shape if isinstance(shape, tuple) else (shape,))
        assert a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % 64 == 0
    assert sparseprop.empty_aligned((4, 4), dtype, align=128).ctypes.data % 128 == 0
    for bad in (0, 48, 2):
        with pytest.raises(ValueError, match="align"):
            sparseprop.empty_aligned((4,), dtype, align=bad)
