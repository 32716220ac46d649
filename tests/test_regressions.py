"""Regression tests for bugs the hardening work found (issue 7), each pinned
by the smallest case that showed it.  Kernel cases here also run under every
ISA (tests/test_isa.py)."""
import os

import numpy as np
import pytest

import sparseprop as sp

from helpers import random_sparse_dense, tolerances

torch = pytest.importorskip("torch")
F = torch.nn.functional


def test_runs_under_requested_isa():
    want = os.environ.get("SPARSEPROP_ISA")
    if want:
        assert sp.config()["isa"] == want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("OW", [1, 2, 3, 5, 7])
def test_conv2d_over_width_narrow_outputs_stay_in_their_plane(OW, dtype, rng):
    # Over-width forward stores whole SIMD vectors and lets a row's tail spill
    # into the rows below, which later tiles overwrite.  With an output
    # narrower than a vector the spill covers several rows, and from the last
    # band but one it ran past the plane: into the next channel's first rows
    # (already computed: wrong results) and, for the last plane, past the end
    # of Y (heap corruption).  Heights 1..16 put every band split in play.
    W = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (3, 2, 1, 1), 0.0, dtype))
    for OH in range(1, 17):
        X = rng.standard_normal((2, 2, OH, OW)).astype(dtype)
        Y = sp.conv2d_forward(X, W, algorithm="over_width")
        ref = F.conv2d(torch.from_numpy(X.astype(np.float64)),
                       torch.from_numpy(W.to_dense().astype(np.float64))).numpy()
        rtol, atol = tolerances(dtype, 2)
        np.testing.assert_allclose(Y, ref, rtol=rtol, atol=atol, err_msg=f"OH={OH}")


def test_conv2d_stride_past_the_input_is_exact_and_small(rng):
    # A stride past the last window gives one output row/column whatever its
    # value; the packed input used to grow with the stride (2**20: TiBs).
    Wd = random_sparse_dense(rng, (4, 3, 3, 3), 0.3)
    W = sp.SparseConvWeight.from_dense(Wd)
    X = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    for stride in [(2**20, 1), (1, 2**40), 2**62]:
        Y = sp.conv2d_forward(X, W, stride=stride, padding=1)
        ref = F.conv2d(torch.from_numpy(X), torch.from_numpy(Wd), stride=stride, padding=1)
        np.testing.assert_allclose(Y, ref.numpy(), rtol=1e-5, atol=1e-5)
        dX, dW = sp.conv2d_backward(X, W, np.ones_like(Y), stride=stride, padding=1)
        Xt = torch.from_numpy(X).requires_grad_()
        Wt = torch.from_numpy(Wd).requires_grad_()
        F.conv2d(Xt, Wt, stride=stride, padding=1).sum().backward()
        np.testing.assert_allclose(dX, Xt.grad.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dW, Wt.grad.numpy()[Wd != 0], rtol=1e-5, atol=1e-4)
    plan = next(iter(W._cache["conv2d"].values()))
    assert plan.plane_x < 10_000     # the packed input stays the size of the input
