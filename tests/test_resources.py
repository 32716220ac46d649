"""Memory and concurrency: no leaks over many calls, correct results when many
Python threads share one weight, results that never alias inputs or scratch."""
import os
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


def malloc_bytes():
    """Bytes held by live malloc allocations (glibc's mallinfo2; None elsewhere).

    Resident memory alone can hide a small leak that refills heap memory freed
    earlier in the process; this counts what is allocated and not freed (NumPy
    data, torch's CPU tensors and C++ objects all come from malloc)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2
    info = fn()
    return info.uordblks + info.hblkhd


LEAK_BUDGET = 5 * 2**20  # 5 MB over 2,000 iterations


def assert_no_growth(step, iterations=2000, warmup=50):
    if rss_bytes() is None:
        pytest.skip("needs /proc/self/statm")
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("under AddressSanitizer (.ci/sanitize) freed memory sits in its "
                    "quarantine: resident memory says nothing about leaks")
    for _ in range(warmup):  # scratch buffers and caches reach their size
        step()
    before, heap_before = rss_bytes(), malloc_bytes()
    for _ in range(iterations):
        step()
    grown = rss_bytes() - before
    heap = None if heap_before is None else malloc_bytes() - heap_before
    report = (f"resident memory grew by {grown / 2**20:.2f} MB"
              + ("" if heap is None else f", live malloc bytes by {heap / 2**20:.2f} MB")
              + f" over {iterations} iterations")
    print(report)
    assert grown < LEAK_BUDGET, report
    assert heap is None or heap < LEAK_BUDGET, report


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
                out = (sp.linear_forward(X, W, n_threads=1),
                       *sp.linear_backward(X, W, dY, n_threads=1))
            results[i] = out
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected, strict=True):
        for g, w in zip(got, want, strict=True):
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


# ---------------------------------------------------------------- conv2d, weights, torch

def test_conv2d_does_not_leak(rng):
    W = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (8, 6, 3, 3), 0.7))
    X = rng.standard_normal((9, 6, 7, 7)).astype(np.float32)
    dY = rng.standard_normal((9, 8, 7, 7)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)

    def step():
        for algo in ("batch_last", "over_width"):
            sp.conv2d_forward(X, W, bias, padding=1, algorithm=algo, n_threads=2)
            sp.conv2d_backward(X, W, dY, padding=1, algorithm=algo, n_threads=2)
            sp.conv2d_backward(X, W, dY, padding=1, need_input_grad=False, algorithm=algo,
                               n_threads=1)

    assert_no_growth(step)


def test_conv_weight_does_not_leak(rng):
    import pickle
    A = random_sparse_dense(rng, (6, 4, 3, 3), 0.7)

    def step():
        W = sp.SparseConvWeight.from_dense(A)
        W.to_dense()
        W.with_data(W.data.copy()).copy().astype(np.float64)
        sp.SparseConvWeight(W.data, W.och, W.ich, W.krow, W.kcol, W.shape)
        pickle.loads(pickle.dumps(W))

    assert_no_growth(step)


def _torch_layers(seed=0):
    torch = pytest.importorskip("torch")
    import sparseprop.torch as spt
    gen = torch.Generator().manual_seed(seed)
    lin = spt.SparseLinear(48, 40, sparsity=0.8, generator=gen)
    conv = spt.SparseConv2d(6, 8, 3, padding=1, sparsity=0.7, generator=gen)
    return torch, spt, lin, conv


def test_torch_layers_do_not_leak():
    torch, _, lin, conv = _torch_layers()
    x = torch.randn(16, 48, requires_grad=True)
    xc = torch.randn(4, 6, 7, 7, requires_grad=True)

    def step():
        for layer, inp in ((lin, x), (conv, xc)):
            layer.zero_grad(set_to_none=True)
            inp.grad = None
            layer(inp).square().sum().backward()

    assert_no_growth(step)


def test_torch_ops_do_not_leak():
    torch, _, lin, conv = _torch_layers()
    ops = torch.ops.sparseprop
    x, g = torch.randn(16, 48), torch.randn(16, 40)
    xc, gc = torch.randn(4, 6, 7, 7), torch.randn(4, 8, 7, 7)
    v, cv = lin.values.detach(), conv.values.detach()
    shape, one = list(conv.weight_shape), [1, 1]

    def step():
        ops.linear(x, v, lin.indptr, lin.indices, 48, lin.bias, 2)
        ops.linear_backward(x, v, lin.indptr, lin.indices, 48, g, True, 2)
        ops.conv2d(xc, cv, conv.indptr, conv.indices, shape, conv.bias, one, one, one, 1,
                   "auto", 2)
        ops.conv2d_backward(xc, cv, conv.indptr, conv.indices, shape, gc, one, one, one, 1,
                            False, "auto", 1)

    assert_no_growth(step)


# ---------------------------------------------------------------- ownership

def _scratch_buffer():
    from sparseprop import _checks
    return getattr(_checks._scratch_local, "buf", None)


def _assert_fresh(results, owned):
    """No result shares memory with another, with what the caller owns, or
    with this thread's scratch buffer."""
    scratch = _scratch_buffer()
    assert scratch is not None
    results = [r for r in results if r is not None]
    for i, r in enumerate(results):
        assert not np.shares_memory(r, scratch)
        for a in owned:
            assert not np.shares_memory(r, a)
        for other in results[i + 1:]:
            assert not np.shares_memory(r, other)


@pytest.mark.parametrize("algorithm", ["batch_last", "over_width"])
def test_conv2d_results_are_fresh_and_stay_put(algorithm, rng):
    W = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (5, 3, 3, 3), 0.5))
    X = rng.standard_normal((6, 3, 9, 9)).astype(np.float32)
    dY = rng.standard_normal((6, 5, 9, 9)).astype(np.float32)
    owned = [X, dY, W.data, W.och, W.ich, W.krow, W.kcol]
    Y = sp.conv2d_forward(X, W, padding=1, algorithm=algorithm)
    dX, dW = sp.conv2d_backward(X, W, dY, padding=1, algorithm=algorithm)
    Yu = sp.conv2d_forward(X[0], W, padding=1, algorithm=algorithm)   # a view of a fresh array
    _assert_fresh([Y, dX, dW, Yu], owned)
    kept = [a.copy() for a in (Y, dX, dW, Yu)]
    # more calls on this thread (same scratch buffer, other shapes) change nothing
    sp.conv2d_forward(X[:, :, :5], W, stride=2, algorithm=algorithm)
    sp.conv2d_backward(X[:2], W, dY[:2], padding=1, algorithm=algorithm)
    sp.linear_forward(X.reshape(-1, 9), sp.CSRMatrix.from_dense(np.eye(4, 9, dtype=np.float32)))
    for a, b in zip((Y, dX, dW, Yu), kept, strict=True):
        np.testing.assert_array_equal(a, b)


def test_linear_results_never_alias_scratch_and_stay_put(rng):
    W = sp.CSRMatrix.from_dense(random_sparse_dense(rng, (40, 30), 0.5))
    X = rng.standard_normal((50, 30)).astype(np.float32)
    dY = rng.standard_normal((50, 40)).astype(np.float32)
    Y = sp.linear_forward(X, W)
    dX, dW = sp.linear_backward(X, W, dY)
    _assert_fresh([Y, dX, dW], [X, dY, W.data, W.indices, W.indptr])
    kept = [a.copy() for a in (Y, dX, dW)]
    sp.linear_backward(X[:7], W.to_csc(), dY[:7])
    sp.linear_forward(X, W, n_threads=2)
    for a, b in zip((Y, dX, dW), kept, strict=True):
        np.testing.assert_array_equal(a, b)


def test_format_conversions_do_not_alias_writable_state(rng):
    M = sp.CSRMatrix.from_dense(random_sparse_dense(rng, (20, 30), 0.6))
    C = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (4, 3, 2, 2), 0.5))
    for out in (M.to_csc().data, M.copy().data, M.astype(np.float64).data, M.to_dense(),
                M.to_scipy().data, M.to_scipy().indices, M.to_csc().to_csr().data):
        assert not np.shares_memory(out, M.data)
        assert not np.shares_memory(out, M.indices)
    for out in (C.copy().data, C.astype(np.float64).data, C.to_dense()):
        assert not np.shares_memory(out, C.data)
    # the structure arrays that are shared (copies, with_data, conversions) are read-only
    for a in (M.indices, M.indptr, M.to_csc().indices, M.to_csc().indptr, C.och, C.ich,
              C.krow, C.kcol):
        assert not a.flags.writeable


def test_torch_results_do_not_alias_inputs_or_weights():
    torch, _, lin, conv = _torch_layers()
    ops = torch.ops.sparseprop
    x = torch.randn(8, 48, requires_grad=True)
    xc = torch.randn(3, 6, 7, 7, requires_grad=True).contiguous(
        memory_format=torch.channels_last).detach().requires_grad_()
    for layer, inp in ((lin, x), (conv, xc)):
        y = layer(inp)
        y.square().sum().backward()
        owned = [inp, layer.values, layer.indices, layer.indptr, layer.bias]
        for r in (y, inp.grad, layer.values.grad, layer.bias.grad):
            for o in owned:
                assert r.untyped_storage().data_ptr() != o.untyped_storage().data_ptr()
        kept = [y.detach().clone(), inp.grad.clone(), layer.values.grad.clone()]
        layer(inp).sum()                                  # another call
        for a, b in zip((y, inp.grad, layer.values.grad), kept, strict=True):
            assert torch.equal(a.detach(), b)
    gx, gv = ops.linear_backward(x.detach(), lin.values.detach(), lin.indptr, lin.indices, 48,
                                 torch.ones(8, 40), True, 1)
    for r in (gx, gv):
        for o in (x, lin.values):
            assert r.untyped_storage().data_ptr() != o.untyped_storage().data_ptr()


# ---------------------------------------------------------------- Python threads

def _run_threads(work, n=4):
    """Run work(i) in n threads started together; return their results."""
    results, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def worker(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("n_threads", [1, 2])
def test_four_python_threads_share_one_conv_weight(n_threads, rng):
    W = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (12, 8, 3, 3), 0.8))
    # a geometry (and so a plan) per thread and algorithm, built concurrently
    inputs = [(rng.standard_normal((5 + 4 * i, 8, 10 + i, 9)).astype(np.float32), 1 + i % 2)
              for i in range(4)]

    def run(X, stride, algo):
        Y = sp.conv2d_forward(X, W, padding=1, stride=stride, algorithm=algo,
                              n_threads=n_threads)
        dY = np.cos(Y)                              # any function of Y: same in every run
        return (Y, *sp.conv2d_backward(X, W, dY, padding=1, stride=stride, algorithm=algo,
                                       n_threads=n_threads))

    def work(i):
        out = None
        for _ in range(5):
            out = [run(*inputs[i], algo) for algo in ("batch_last", "over_width")]
        return out

    results = _run_threads(work)
    W._cache.clear()
    for i, got in enumerate(results):
        for algo, g in zip(("batch_last", "over_width"), got, strict=True):
            for a, b in zip(g, run(*inputs[i], algo), strict=True):
                np.testing.assert_array_equal(a, b)  # bitwise: same inputs, same threads


@pytest.mark.parametrize("n_threads", [1, 2])
def test_four_python_threads_share_torch_layers(n_threads):
    torch, _, lin, conv = _torch_layers(seed=3)
    from sparseprop.torch import _structure
    lin.n_threads = conv.n_threads = n_threads
    gen = torch.Generator().manual_seed(4)
    inputs = [(torch.randn(9 + 5 * i, 48, generator=gen),
               torch.randn(2 + i, 6, 7 + i, 7, generator=gen)) for i in range(4)]

    def run(i):
        out = []
        for layer, x in zip((lin, conv), inputs[i], strict=True):
            x = x.clone().requires_grad_()
            y = layer(x)
            gx, gv, gb = torch.autograd.grad(y.square().sum(), (x, layer.values, layer.bias))
            out += [y.detach(), gx, gv, gb]
        return out

    _structure.CACHE.clear()                        # the threads validate concurrently
    results = _run_threads(lambda i: [run(i) for _ in range(3)][-1])
    for i, got in enumerate(results):
        for a, b in zip(got, run(i), strict=True):
            assert torch.equal(a, b)


def test_four_python_threads_churn_the_conv_plan_cache(rng):
    # More geometries than the per-weight plan cache holds (16): threads evict
    # each other's plans between lookup and use; every result must stay exact.
    W = sp.SparseConvWeight.from_dense(random_sparse_dense(rng, (4, 3, 3, 3), 0.5))
    shapes = [(1 + i % 3, 3, 5 + i, 6 + i % 5) for i in range(24)]
    inputs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    expected = [sp.conv2d_forward(X, W, padding=1) for X in inputs]

    def work(i):
        bad = 0
        for _ in range(3):
            for j in range(i, i + len(inputs)):
                X = inputs[j % len(inputs)]
                bad += not np.array_equal(sp.conv2d_forward(X, W, padding=1),
                                          expected[j % len(inputs)])
        return bad

    assert _run_threads(work) == [0, 0, 0, 0]
    assert len(W._cache["conv2d"]) <= 16


def test_the_leak_check_sees_a_leak():
    import mmap
    hoard = []

    def leak():  # 8 KB of fresh pages a step (heap memory freed by earlier tests
        m = mmap.mmap(-1, 8192)  # could hide a heap leak this small from RSS)
        m.write(b"x" * 8192)
        hoard.append(m)

    with pytest.raises(AssertionError, match="resident memory grew by"):
        assert_no_growth(leak)
    heap_hoard = []                   # and a heap leak that reuses freed memory
    with pytest.raises(AssertionError, match="live malloc bytes by"):
        assert_no_growth(lambda: heap_hoard.append(np.ones(1024, np.float32)))


# ---------------------------------------------------------------- unusual buffers

def _unaligned(A):
    """A copy of A whose data pointer is not a multiple of its itemsize."""
    buf = np.zeros(A.nbytes + 1, np.uint8)
    out = np.ndarray(A.shape, A.dtype, buffer=buf, offset=1)
    out[...] = A
    assert not out.flags.aligned
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unaligned_buffers_are_read_correctly(dtype, rng):
    # Legal NumPy arrays (e.g. views into a byte buffer): inputs, biases and
    # weight values that are not aligned to their itemsize.
    Wd = random_sparse_dense(rng, (20, 17), 0.5, dtype)
    W = sp.CSRMatrix.from_dense(Wd)
    Wu = W.with_data(_unaligned(W.data))
    X = rng.standard_normal((23, 17)).astype(dtype)
    dY = rng.standard_normal((23, 20)).astype(dtype)
    b = rng.standard_normal(20).astype(dtype)
    for w in (W, Wu):
        Y = sp.linear_forward(_unaligned(X), w, _unaligned(b))
        np.testing.assert_allclose(Y, X @ Wd.T + b, rtol=1e-5, atol=1e-5)
        dX, dW = sp.linear_backward(_unaligned(X), w, _unaligned(dY))
        np.testing.assert_allclose(dX, dY @ Wd, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dW, (dY.T @ X)[Wd != 0], rtol=1e-5, atol=1e-4)
    Cd = random_sparse_dense(rng, (4, 3, 3, 3), 0.5, dtype)
    C = sp.SparseConvWeight.from_dense(Cd)
    Cu = C.with_data(_unaligned(C.data))
    Xc = rng.standard_normal((5, 3, 9, 9)).astype(dtype)
    for algo in ("batch_last", "over_width"):
        Y0 = sp.conv2d_forward(Xc, C, padding=1, algorithm=algo)
        Y1 = sp.conv2d_forward(_unaligned(Xc), Cu, _unaligned(np.zeros(4, dtype)), padding=1,
                               algorithm=algo)
        np.testing.assert_allclose(Y1, Y0, rtol=1e-6, atol=1e-6)
        dY0 = np.cos(Y0)
        g0 = sp.conv2d_backward(Xc, C, dY0, padding=1, algorithm=algo)
        g1 = sp.conv2d_backward(_unaligned(Xc), Cu, _unaligned(dY0), padding=1, algorithm=algo)
        for a, c in zip(g0, g1, strict=True):
            np.testing.assert_allclose(c, a, rtol=1e-6, atol=1e-6)
