"""Property-based tests (hypothesis): random shapes, sparsities, dtypes and
memory layouts against dense references.

Two profiles: "ci" (default, a few dozen examples per property, seconds) and
"long" for fuzzing outside CI:

    HYPOTHESIS_PROFILE=long pytest tests/test_properties.py
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparseprop as sp

from helpers import conv2d_reference, tolerances

settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

LAYOUTS = ["contiguous", "row_strided", "fortran", "reversed", "column_strided", "read_only"]


def lay_out(A, layout, rng):
    """The values of A (2-D) in the requested memory layout."""
    if layout == "row_strided":
        big = np.empty((2 * A.shape[0], A.shape[1] + 3), A.dtype)
        big[::2, 1:A.shape[1] + 1] = A
        return big[::2, 1:A.shape[1] + 1]
    if layout == "fortran":
        return np.asfortranarray(A)
    if layout == "reversed":
        return A[::-1].copy()[::-1]
    if layout == "column_strided":
        big = np.empty((A.shape[0], 2 * A.shape[1]), A.dtype)
        big[:, ::2] = A
        return big[:, ::2]
    if layout == "read_only":
        B = A.copy()
        B.flags.writeable = False
        return B
    return np.ascontiguousarray(A)


@st.composite
def linear_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = draw(st.integers(0, 70))
    n_in = draw(st.integers(0, 40))
    n_out = draw(st.integers(0, 40))
    sparsity = draw(st.sampled_from([0.0, 0.3, 0.7, 0.9, 0.97, 1.0]))
    return dict(
        dtype=dtype, batch=batch, n_in=n_in, n_out=n_out, sparsity=sparsity,
        layout=draw(st.sampled_from(LAYOUTS)),
        fmt=draw(st.sampled_from(["csr", "csc"])),
        threads=draw(st.sampled_from([1, 2, 3])),
        bias=draw(st.booleans()),
        need_dx=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(linear_cases())
def test_linear_matches_dense(case):
    rng = np.random.default_rng(case["seed"])
    dt = case["dtype"]
    B, M, N = case["batch"], case["n_in"], case["n_out"]
    Wd = rng.standard_normal((N, M)).astype(dt)
    Wd[rng.random((N, M)) < case["sparsity"]] = 0
    W = (sp.CSRMatrix if case["fmt"] == "csr" else sp.CSCMatrix).from_dense(Wd)
    X = lay_out(rng.standard_normal((B, M)).astype(dt), case["layout"], rng)
    dY = lay_out(rng.standard_normal((B, N)).astype(dt), case["layout"], rng)
    bias = rng.standard_normal(N).astype(dt) if case["bias"] else None
    T = case["threads"]

    Y = sp.linear_forward(X, W, bias, n_threads=T)
    dX, dW = sp.linear_backward(X, W, dY, case["need_dx"], n_threads=T)

    X64, dY64, W64 = X.astype(np.float64), dY.astype(np.float64), Wd.astype(np.float64)
    Yr = X64 @ W64.T + (bias if bias is not None else 0)
    rtol, atol = tolerances(dt, M)
    np.testing.assert_allclose(Y, Yr, rtol=rtol, atol=atol)
    rtol, atol = tolerances(dt, N)
    if case["need_dx"]:
        np.testing.assert_allclose(dX, dY64 @ W64, rtol=rtol, atol=atol)
    else:
        assert dX is None
    full = dY64.T @ X64
    if case["fmt"] == "csr":
        rows = np.repeat(np.arange(N), np.diff(W.indptr))
        ref = full[rows, W.indices]
    else:
        cols = np.repeat(np.arange(M), np.diff(W.indptr))
        ref = full[W.indices, cols]
    rtol, atol = tolerances(dt, B)
    np.testing.assert_allclose(dW, ref, rtol=rtol, atol=atol)


@st.composite
def raw_structures(draw):
    """Random raw (indptr, indices) arrays, valid or not."""
    n_rows = draw(st.integers(0, 6))
    n_cols = draw(st.integers(0, 6))
    indptr = draw(st.lists(st.integers(-2, 8), min_size=0, max_size=n_rows + 2))
    indices = draw(st.lists(st.integers(-2, 8), min_size=0, max_size=9))
    return n_rows, n_cols, indptr, indices


@given(raw_structures())
def test_raw_csr_is_valid_or_rejected_clearly(case):
    n_rows, n_cols, indptr, indices = case
    data = np.ones(len(indices), np.float32)
    try:
        W = sp.CSRMatrix(data, indices, indptr, (n_rows, n_cols))
    except ValueError as e:
        assert "invalid CSRMatrix structure" in str(e) or "indptr" in str(e)
        return
    # accepted: it must be exactly what scipy accepts as canonical CSR, and usable
    import scipy.sparse as sps
    S = sps.csr_array((data, np.array(indices, np.int64), np.array(indptr, np.int64)),
                      shape=(n_rows, n_cols))
    assert S.has_canonical_format
    np.testing.assert_array_equal(W.to_dense(), S.toarray())
    X = np.ones((3, n_cols), np.float32)
    np.testing.assert_allclose(sp.linear_forward(X, W), X @ S.toarray().T)


# ---------------------------------------------------------------- conv2d
# Against the dense float64 reference helpers.conv2d_reference (forward, dX, and
# the dense dW read at the stored weights): NumPy, so these run without torch.
# test_conv2d_reference_matches_torch checks that reference on the same cases.

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")

CONV_LAYOUTS = ["contiguous", "channels_last", "row_strided", "column_strided", "read_only",
                "reversed_batch"]


def lay_out_4d(A, layout):
    """The values of A (N, C, H, W) in the requested memory layout."""
    if layout == "channels_last":
        return np.ascontiguousarray(A.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if layout == "row_strided":
        n, c, h, w = A.shape
        big = np.zeros((n, c, h + 1, w + 3), A.dtype)
        big[:, :, 1:, 2:w + 2] = A
        return big[:, :, 1:, 2:w + 2]
    if layout == "column_strided":
        big = np.zeros(A.shape[:3] + (2 * A.shape[3],), A.dtype)
        big[..., ::2] = A
        return big[..., ::2]
    if layout == "read_only":
        B = A.copy()
        B.flags.writeable = False
        return B
    if layout == "reversed_batch":
        return A[::-1].copy()[::-1]
    return np.ascontiguousarray(A)


@st.composite
def conv_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    kind = draw(st.sampled_from(["plain", "grouped", "depthwise"]))
    if kind == "plain":
        groups, icg, ocg = 1, draw(st.integers(1, 5)), draw(st.integers(1, 6))
    elif kind == "grouped":
        groups, icg, ocg = draw(st.integers(2, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    else:
        groups, icg = draw(st.integers(1, 6)), 1
        ocg = draw(st.sampled_from([1, 1, 2]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if padding == "same":
        stride = (1, 1)
        pad = "same"
    elif padding == "valid":
        pad = "valid"
    elif padding == "int":
        pad = draw(st.integers(0, 3))
    else:
        pad = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    ph, pw = (0, 0) if isinstance(pad, str) else ((pad, pad) if isinstance(pad, int) else pad)
    # the padded input must hold the dilated kernel
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h = draw(st.integers(max(1, eh - 2 * ph), eh + 14))
    w = draw(st.integers(max(1, ew - 2 * pw), ew + 20))
    batch = draw(st.sampled_from([0, 1, 1, 2, 3, 7, 8, 9, 17]))
    return dict(
        dtype=dtype, batch=batch, groups=groups, C=icg * groups, OC=ocg * groups,
        kernel=(kh, kw), stride=stride, padding=pad, dilation=(dh, dw), H=h, W=w,
        sparsity=draw(st.sampled_from([0.0, 0.5, 0.8, 0.95, 1.0])),
        x_layout=draw(st.sampled_from(CONV_LAYOUTS)),
        dy_layout=draw(st.sampled_from(CONV_LAYOUTS)),
        algorithm=draw(st.sampled_from(["auto", "batch_last", "over_width"])),
        threads=draw(st.sampled_from([1, 2])),
        bias=draw(st.booleans()),
        need_dx=draw(st.booleans()),
        unbatched=draw(st.booleans()) and batch == 1,
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def conv_case_arrays(case):
    """X, the dense weight, the bias (or None) and the conv options of a case."""
    rng = np.random.default_rng(case["seed"])
    dt, B, C, OC, g = case["dtype"], case["batch"], case["C"], case["OC"], case["groups"]
    kh, kw = case["kernel"]
    Wd = rng.standard_normal((OC, C // g, kh, kw)).astype(dt)
    Wd[rng.random(Wd.shape) < case["sparsity"]] = 0
    X = rng.standard_normal((B, C, case["H"], case["W"])).astype(dt)
    bias = rng.standard_normal(OC).astype(dt) if case["bias"] else None
    opts = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=g)
    return rng, X, Wd, bias, opts


@needs_torch
@given(conv_cases())
def test_conv2d_reference_matches_torch(case):
    _, X, Wd, bias, opts = conv_case_arrays(case)
    X, Wd = X.astype(np.float64), Wd.astype(np.float64)
    Xt = torch.from_numpy(X).requires_grad_(True)
    Wt = torch.from_numpy(Wd).requires_grad_(True)
    Yt = F.conv2d(Xt, Wt, None if bias is None else torch.from_numpy(bias.astype(np.float64)),
                  **opts)
    dY = np.random.default_rng(case["seed"] + 1).standard_normal(tuple(Yt.shape))
    Yt.backward(torch.from_numpy(dY))
    Y, dX, dW = conv2d_reference(X, Wd, dY, bias, **opts)
    for mine, theirs in [(Y, Yt), (dX, Xt.grad), (dW, Wt.grad)]:
        assert mine.shape == tuple(theirs.shape)
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-12, atol=1e-12)


@given(conv_cases())
def test_conv2d_matches_the_reference(case):
    rng, X, Wd, bias, opts = conv_case_arrays(case)
    dt, B, C, OC, g = case["dtype"], case["batch"], case["C"], case["OC"], case["groups"]
    kh, kw = case["kernel"]
    W = sp.SparseConvWeight.from_dense(Wd)
    Yr, _, _ = conv2d_reference(X, Wd, None, bias, **opts)
    dY = rng.standard_normal(Yr.shape).astype(dt)
    _, dXr, dWr = conv2d_reference(X, Wd, dY, bias, **opts)

    Xin, dYin = lay_out_4d(X, case["x_layout"]), lay_out_4d(dY, case["dy_layout"])
    if case["unbatched"]:
        Xin, dYin = Xin[0], dYin[0]
    T, algo = case["threads"], case["algorithm"]
    Y = sp.conv2d_forward(Xin, W, bias, algorithm=algo, n_threads=T, **opts)
    dX, dW = sp.conv2d_backward(Xin, W, dYin, need_input_grad=case["need_dx"], algorithm=algo,
                                n_threads=T, **opts)

    if case["unbatched"]:
        Y = Y[None]
        dX = None if dX is None else dX[None]
    assert Y.shape == Yr.shape and Y.dtype == dt and Y.flags.c_contiguous
    rtol, atol = tolerances(dt, (C // g) * kh * kw)
    np.testing.assert_allclose(Y, Yr, rtol=rtol, atol=atol)
    if case["need_dx"]:
        assert dX.shape == X.shape and dX.dtype == dt
        rtol, atol = tolerances(dt, (OC // g) * kh * kw)
        np.testing.assert_allclose(dX, dXr, rtol=rtol, atol=atol)
    else:
        assert dX is None
    oc, ic, kr, kc = W._coords()
    assert dW.shape == (W.nnz,) and dW.dtype == dt
    rtol, atol = tolerances(dt, B * Yr.shape[2] * Yr.shape[3])
    np.testing.assert_allclose(dW, dWr[oc, ic, kr, kc], rtol=rtol, atol=atol)


# ---------------------------------------------------------------- torch layers
# SparseLinear / SparseConv2d against the dense modules (same masked weights,
# float64 reference): forward, grad of the input, of the stored values (the
# dense weight's grad at the mask) and of the bias.

def _layer_reference(sparse, x, grad):
    dense = sparse.to_dense().double()
    xd = x.detach().double().requires_grad_(x.requires_grad)
    yd = dense(xd)
    yd.backward(grad.double())
    return dense, xd, yd


def _compare_layer(sparse, x, k_fwd, k_bwd, seed):
    dt = np.float32 if sparse.values.dtype == torch.float32 else np.float64
    y = sparse(x)
    grad = torch.from_numpy(np.random.default_rng(seed).standard_normal(tuple(y.shape))
                            ).to(y.dtype)
    y.backward(grad)
    dense, xd, yd = _layer_reference(sparse, x, grad)
    assert y.shape == yd.shape and y.dtype == x.dtype
    rtol, atol = tolerances(dt, k_fwd)
    np.testing.assert_allclose(y.detach().numpy(), yd.detach().numpy(), rtol=rtol, atol=atol)
    rtol, atol = tolerances(dt, k_bwd)
    if x.requires_grad:
        np.testing.assert_allclose(x.grad.numpy(), xd.grad.numpy(), rtol=rtol, atol=atol)
    mask = sparse.mask()
    np.testing.assert_allclose(sparse.values.grad.numpy(), dense.weight.grad[mask].numpy(),
                               rtol=rtol, atol=atol)
    if sparse.bias is not None:
        np.testing.assert_allclose(sparse.bias.grad.numpy(), dense.bias.grad.numpy(),
                                   rtol=rtol, atol=atol)


def _torch_layout(x, layout):
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        big[..., ::2] = x
        return big[..., ::2]
    if layout == "expanded" and x.shape[0] > 0:  # zero batch stride
        return x[:1].expand(x.shape)
    return x


@st.composite
def sparse_linear_cases(draw):
    return dict(
        dtype=draw(st.sampled_from(["float32", "float64"])),
        lead=draw(st.sampled_from([(), (0,), (1,), (5,), (2, 3), (17,)])),
        n_in=draw(st.integers(1, 40)), n_out=draw(st.integers(1, 40)),
        sparsity=draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
        bias=draw(st.booleans()), need_x=draw(st.booleans()),
        layout=draw(st.sampled_from(["contiguous", "sliced", "expanded"])),
        threads=draw(st.sampled_from([None, 1, 2])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@needs_torch
@given(sparse_linear_cases())
def test_sparse_linear_matches_nn_linear(case):
    import sparseprop.torch as spt
    dtype = getattr(torch, case["dtype"])
    gen = torch.Generator().manual_seed(case["seed"])
    layer = spt.SparseLinear(case["n_in"], case["n_out"], bias=case["bias"],
                             sparsity=case["sparsity"], n_threads=case["threads"], dtype=dtype,
                             generator=gen)
    x = torch.randn(*case["lead"], case["n_in"], generator=gen, dtype=dtype)
    x = _torch_layout(x, case["layout"]).detach().requires_grad_(case["need_x"])
    rows = int(np.prod(case["lead"], dtype=np.int64))
    _compare_layer(layer, x, case["n_in"], max(case["n_out"], rows), case["seed"])


@st.composite
def sparse_conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans())
    icg = 1 if depthwise else draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    padding_mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    padding = draw(st.sampled_from(["same", "valid", 0, 1, 2, (1, 0), (0, 2)]))
    stride = 1 if padding == "same" else draw(st.sampled_from([1, 2, (1, 3)]))
    dilation = draw(st.sampled_from([1, 2, (2, 1)]))
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    # big enough for the kernel and for reflect padding (pad < size)
    h = draw(st.integers(d[0] * (kh - 1) + 1, d[0] * (kh - 1) + 10))
    w = draw(st.integers(d[1] * (kw - 1) + 1, d[1] * (kw - 1) + 12))
    return dict(
        dtype=draw(st.sampled_from(["float32", "float64"])),
        C=icg * groups, OC=draw(st.integers(1, 3)) * groups, groups=groups,
        kernel=(kh, kw), stride=stride, padding=padding, dilation=dilation,
        padding_mode=padding_mode, H=max(h, 3), W=max(w, 3),
        batch=draw(st.sampled_from([1, 2, 3, 8, 9])), unbatched=draw(st.booleans()),
        sparsity=draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
        bias=draw(st.booleans()), need_x=draw(st.booleans()),
        layout=draw(st.sampled_from(["contiguous", "channels_last", "sliced", "expanded"])),
        algorithm=draw(st.sampled_from(["auto", "batch_last", "over_width"])),
        threads=draw(st.sampled_from([None, 1, 2])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@needs_torch
@given(sparse_conv_cases())
def test_sparse_conv2d_matches_nn_conv2d(case):
    import warnings

    import sparseprop.torch as spt
    dtype = getattr(torch, case["dtype"])
    gen = torch.Generator().manual_seed(case["seed"])
    with warnings.catch_warnings():  # torch's note on even kernels with "same"
        warnings.simplefilter("ignore")
        layer = spt.SparseConv2d(case["C"], case["OC"], case["kernel"], case["stride"],
                                 case["padding"], case["dilation"], case["groups"], case["bias"],
                                 case["padding_mode"], sparsity=case["sparsity"],
                                 algorithm=case["algorithm"], n_threads=case["threads"],
                                 dtype=dtype, generator=gen)
        x = torch.randn(case["batch"], case["C"], case["H"], case["W"], generator=gen,
                        dtype=dtype)
        x = _torch_layout(x, case["layout"])
        if case["unbatched"]:
            x = x[0]
        x = x.detach().requires_grad_(case["need_x"])
        kh, kw = case["kernel"]
        k_fwd = case["C"] // case["groups"] * kh * kw
        k_bwd = max(case["OC"] * kh * kw, case["batch"] * case["H"] * case["W"])
        _compare_layer(layer, x, k_fwd, k_bwd, case["seed"])
