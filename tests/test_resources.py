"""Memory and concurrency: no leaks over many calls, correct results when many
Python threads share one weight, results that never alias inputs or scratch."""
import threading

import numpy as np
import pytest

import sparseprop as sp

from helpers import random_sparse_dense


def rss_bytes():
    """Resident set size of this process (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return None
    import os
    return pages * os.sysconf("SC_PAGE_SIZE")


LEAK_BUDGET = 5 * 2**20  # 5 MB over 2,000 iterations


def assert_no_growth(step, iterations=2000, warmup=50):
    if rss_bytes() is None:
        pytest.skip("needs /proc/self/statm")
    for _ in range(warmup):  # scratch buffers and caches reach their size
        step()
    before = rss_bytes()
    for _ in range(iterations):
        step()
    grown = rss_bytes() - before
    assert grown < LEAK_BUDGET, f"resident memory grew by {grown / 2**20:.1f} MB"


@pytest.mark.parametrize("fmt", [sp.CSRMatrix, sp.CSCMatrix])
def test_linear_does_not_leak(fmt, rng):
    W = fmt.from_dense(random_sparse_dense(rng, (96, 64), 0.8))
    X = rng.standard_normal((40, 64)).astype(np.float32)
    dY = rng.standard_normal((40, 96)).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)

    def step():
        sp.linear_forward(X, W, bias, n_threads=2)
        sp.linear_backward(X, W, dY, n_threads=2)
        sp.linear_backward(X, W, dY, need_input_grad=False, n_threads=1)

    assert_no_growth(step)


def test_formats_do_not_leak(rng):
    A = random_sparse_dense(rng, (50, 40), 0.7)

    def step():
        M = sp.CSRMatrix.from_dense(A)
        M.to_csc().to_csr().to_dense()
        M.with_data(M.data.copy())
        sp.CSRMatrix(M.data, M.indices, M.indptr, M.shape)

    assert_no_growth(step)


def test_four_python_threads_share_one_weight(rng):
    W = sp.CSRMatrix.from_dense(random_sparse_dense(rng, (300, 200), 0.9))
    inputs = [(rng.standard_normal((64 + 7 * i, 200)).astype(np.float32),
               rng.standard_normal((64 + 7 * i, 300)).astype(np.float32)) for i in range(4)]
    expected = [(sp.linear_forward(X, W, n_threads=1), *sp.linear_backward(X, W, dY, n_threads=1))
                for X, dY in inputs]
    results = [None] * 4
    errors = []
    barrier = threading.Barrier(4)

    def worker(i):
        try:
            barrier.wait()
            X, dY = inputs[i]
            out = None
            for _ in range(20):
                out = (sp.linear_forward(X, W, n_threads=1), *sp.linear_backward(X, W, dY, n_threads=1))
            results[i] = out
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)  # bitwise: same inputs, same thread count


def test_results_do_not_alias_inputs(rng):
    W = sp.CSRMatrix.from_dense(random_sparse_dense(rng, (30, 30), 0.5))
    X = rng.standard_normal((30, 30)).astype(np.float32)
    dY = rng.standard_normal((30, 30)).astype(np.float32)
    Y = sp.linear_forward(X, W)
    dX, dW = sp.linear_backward(X, W, dY)
    for out in (Y, dX, dW):
        for arr in (X, dY, W.data, W.indices, W.indptr):
            assert not np.shares_memory(out, arr)
