"""Determinism and thread counts.

* Repeated runs with the same inputs and the same thread count give bitwise
  identical results, for every operation (NumPy API, custom ops, layers).
* Forward passes and input gradients do not depend on the thread count
  either (each output element is computed whole by one task, in the same
  order); weight gradients do, in the last bits: tasks that split the batch
  keep their own partial sums, added at the end, so the thread count changes
  the grouping of the batch sum.  README.md ("Threads and determinism") says
  the same; these tests hold it to that.

Sizes are above the kernels' serial-work thresholds, and every run checks that
the requested number of threads really took part.
"""
import numpy as np
import pytest

import sparseprop as sp
from sparseprop import _config

from helpers import random_sparse_dense

THREADS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def linear_case():
    rng = np.random.default_rng(11)
    W = sp.CSRMatrix.from_dense(random_sparse_dense(rng, (300, 200), 0.9))
    X = rng.standard_normal((333, 200)).astype(np.float32)
    dY = rng.standard_normal((333, 300)).astype(np.float32)
    return W, X, dY


@pytest.fixture(scope="module")
def conv_case():
    rng = np.random.default_rng(12)
    W = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (16, 12, 3, 3), 0.8))
    X = rng.standard_normal((13, 12, 12, 12)).astype(np.float32)
    dY = rng.standard_normal((13, 16, 12, 12)).astype(np.float32)
    return W, X, dY


def _linear_run(W, X, dY, T):
    Y = sp.linear_forward(X, W, n_threads=T)
    assert _config.last_team_size() == T
    dX, dW = sp.linear_backward(X, W, dY, n_threads=T)
    assert _config.last_team_size() == T
    return Y, dX, dW


def _conv_run(W, X, dY, T, algorithm):
    Y = sp.conv2d_forward(X, W, padding=1, algorithm=algorithm, n_threads=T)
    assert _config.last_team_size() == T
    dX, dW = sp.conv2d_backward(X, W, dY, padding=1, algorithm=algorithm, n_threads=T)
    assert _config.last_team_size() == T
    return Y, dX, dW


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_linear_thread_counts(fmt, linear_case):
    W, X, dY = linear_case
    W = W if fmt == "csr" else W.to_csc()
    runs = {T: _linear_run(W, X, dY, T) for T in THREADS}
    for T in THREADS:
        again = _linear_run(W, X, dY, T)
        for a, b in zip(again, runs[T], strict=True):
            np.testing.assert_array_equal(a, b)       # same thread count: bitwise
        Y, dX, dW = runs[T]
        np.testing.assert_array_equal(Y, runs[1][0])  # forward: no dependence
        np.testing.assert_array_equal(dX, runs[1][1])  # input gradient: none either
        np.testing.assert_allclose(dW, runs[1][2], rtol=1e-5, atol=1e-4)  # last bits only


@pytest.mark.parametrize("algorithm", ["batch_last", "over_width"])
def test_conv2d_thread_counts(algorithm, conv_case):
    W, X, dY = conv_case
    runs = {T: _conv_run(W, X, dY, T, algorithm) for T in THREADS}
    for T in THREADS:
        again = _conv_run(W, X, dY, T, algorithm)
        for a, b in zip(again, runs[T], strict=True):
            np.testing.assert_array_equal(a, b)
        Y, dX, dW = runs[T]
        np.testing.assert_array_equal(Y, runs[1][0])
        np.testing.assert_array_equal(dX, runs[1][1])
        np.testing.assert_allclose(dW, runs[1][2], rtol=1e-5, atol=1e-4)


def test_weight_gradients_do_depend_on_the_thread_count(linear_case, conv_case):
    # Not a promise, a fact the README states: if this ever stops holding the
    # documentation should be updated (and the per-group sums were changed).
    W, X, dY = linear_case
    lin = [_linear_run(W, X, dY, T)[2] for T in (1, 2)]
    W, X, dY = conv_case
    conv = [_conv_run(W, X, dY, T, "over_width")[2] for T in (1, 2)]
    assert not np.array_equal(*lin) and not np.array_equal(*conv)


def test_torch_layers_and_ops_are_deterministic():
    torch = pytest.importorskip("torch")
    import sparseprop.torch as spt
    gen = torch.Generator().manual_seed(5)
    lin = spt.SparseLinear(200, 300, sparsity=0.9, generator=gen)
    conv = spt.SparseConv2d(12, 16, 3, padding=1, sparsity=0.8, generator=gen)
    x = torch.randn(333, 200, generator=gen)
    xc = torch.randn(13, 12, 12, 12, generator=gen)

    def run(T):
        lin.n_threads = conv.n_threads = T
        out = []
        for layer, inp in ((lin, x), (conv, xc)):
            inp = inp.clone().requires_grad_()
            y = layer(inp)
            out += [y.detach(), *torch.autograd.grad(y.square().sum(), (inp, layer.values))]
        ops = torch.ops.sparseprop
        out.append(ops.linear(x, lin.values, lin.indptr, lin.indices, 200, lin.bias, T))
        out += list(ops.conv2d_backward(xc, conv.values, conv.indptr, conv.indices,
                                        list(conv.weight_shape), torch.ones(13, 16, 12, 12),
                                        [1, 1], [1, 1], [1, 1], 1, True, "auto", T))
        return out

    first = {T: run(T) for T in (1, 2, 4)}
    for T in (1, 2, 4):
        for a, b in zip(run(T), first[T], strict=True):
            assert torch.equal(a, b)
        # outputs and input gradients agree across thread counts too
        for k in (0, 1, 3, 4, 6, 7):
            assert torch.equal(first[T][k], first[1][k]), k
