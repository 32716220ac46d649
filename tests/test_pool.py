"""The result-buffer cache (sparseprop/_pool.pyx) behind large results.

A block may be reused only once nothing views it; reused blocks hold the
last user's bytes, so the kernels must not rely on fresh (zeroed) memory;
the limit bounds what is kept idle; the environment variable sets it.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import sparseprop
from sparseprop import _pool

from helpers import random_sparse_dense

BIG = (1024, 1024)  # 4 MiB of float32: above _pool.MIN_BYTES


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with no idle blocks and the default limit back after."""
    old = _pool.set_limit(_pool.limit())
    _pool.empty_cache()
    yield
    _pool.set_limit(old)
    _pool.empty_cache()


def block_of(a):
    """The ResultBuffer at the end of ``a``'s chain of bases, or None."""
    b = a.base
    while isinstance(b, np.ndarray):
        b = b.base
    if isinstance(b, memoryview):  # np.frombuffer keeps the exporter behind a memoryview
        b = b.obj
    return b if isinstance(b, _pool.ResultBuffer) else None


def test_large_results_come_from_the_cache_small_ones_do_not():
    a = sparseprop.empty_aligned(BIG)
    assert block_of(a) is not None and a.flags.writeable and a.flags.c_contiguous
    assert a.ctypes.data % (2 << 20) == 0 and a.shape == BIG and a.dtype == np.float32
    small = sparseprop.empty_aligned((100, 100))
    assert block_of(small) is None and small.ctypes.data % 64 == 0
    # an alignment above the cache's page-aligned blocks goes to NumPy
    assert block_of(sparseprop.empty_aligned(BIG, align=8192)) is None
    # between 1 and 4 MiB: blocks of 64 KiB steps, page aligned
    mid = sparseprop.empty_aligned((300, 1024))  # 1.17 MiB
    assert block_of(mid) is not None and mid.ctypes.data % 4096 == 0


def test_a_freed_block_is_reused_and_a_live_one_never():
    a = sparseprop.empty_aligned(BIG)
    addr = a.ctypes.data
    b = sparseprop.empty_aligned(BIG)  # a is alive: another block
    assert b.ctypes.data != addr and not np.shares_memory(a, b)
    del a
    hits = _pool.stats()["hits"]
    c = sparseprop.empty_aligned(BIG)
    assert c.ctypes.data == addr and _pool.stats()["hits"] == hits + 1
    # a same-rounded-size request of another shape and dtype reuses it too
    del c
    d = sparseprop.empty_aligned((512, 1024), np.float64)
    assert d.ctypes.data == addr


def test_views_and_tensors_keep_their_block():
    a = sparseprop.empty_aligned(BIG)
    addr = a.ctypes.data
    view = a[10:, ::2]
    del a
    b = sparseprop.empty_aligned(BIG)
    assert b.ctypes.data != addr
    del view
    del b
    torch = pytest.importorskip("torch")
    a = sparseprop.empty_aligned(BIG)
    addr = a.ctypes.data
    t = torch.from_numpy(a)
    del a
    c = sparseprop.empty_aligned(BIG)
    assert c.ctypes.data != addr and t.data_ptr() == addr
    del t, c


def test_limit_bounds_idle_memory_and_zero_turns_the_cache_off():
    _pool.set_limit(5 << 20)  # room for one 4 MiB block
    arrs = [sparseprop.empty_aligned(BIG) for _ in range(3)]
    del arrs
    st = _pool.stats()
    assert st["idle_blocks"] == 1 and st["idle_bytes"] == 4 << 20
    assert _pool.set_limit(0) == 5 << 20
    assert _pool.stats()["idle_bytes"] == 0  # lowering the limit frees
    a = sparseprop.empty_aligned(BIG)
    assert block_of(a) is None and a.ctypes.data % 64 == 0
    assert "off" in sparseprop.config()["result_cache"]
    with pytest.raises(ValueError, match=">= 0"):
        _pool.set_limit(-1)


def test_empty_cache_returns_the_idle_bytes():
    arrs = [sparseprop.empty_aligned(BIG) for _ in range(2)]
    del arrs
    assert _pool.stats()["idle_bytes"] == 8 << 20
    assert sparseprop.empty_cache() == 8 << 20
    assert _pool.stats()["idle_bytes"] == 0 and sparseprop.empty_cache() == 0


def test_bfloat16_results():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = sparseprop.empty_aligned(BIG, ml_dtypes.bfloat16)
    assert a.dtype == ml_dtypes.bfloat16 and block_of(a) is not None
    a[...] = 1.5
    assert float(a[5, 7]) == 1.5


def test_threads_never_share_a_live_block():
    errors = []
    hits = _pool.stats()["hits"]

    def work(k):
        try:
            for i in range(40):
                a = sparseprop.empty_aligned((256, 1024 + 64 * (i % 3)))
                a[...] = k * 1000 + i
                b = sparseprop.empty_aligned((256, 1024 + 64 * (i % 3)))
                b[...] = -1
                if not (a == k * 1000 + i).all():
                    errors.append((k, i))
                del a, b
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _pool.stats()["hits"] > hits  # blocks did pass between the threads' arrays


def dirty_cache(nbytes_list):
    """Leave idle blocks of these sizes filled with NaN, as a previous user would."""
    arrs = [sparseprop.empty_aligned((n // 4,)) for n in nbytes_list]
    for a in arrs:
        a[...] = np.nan
    addrs = {a.ctypes.data for a in arrs if block_of(a) is not None}
    del arrs
    return addrs


def test_kernels_do_not_rely_on_zeroed_results(rng):
    """Large results land in reused blocks full of NaN and still equal the
    dense reference: no kernel may skip writing an element it owns."""
    w = random_sparse_dense(rng, (600, 512), 0.9, np.float32)
    W = sparseprop.CSRMatrix.from_dense(w)
    X = rng.standard_normal((700, 512), dtype=np.float32)
    dY = rng.standard_normal((700, 600), dtype=np.float32)
    for threads in (1, 2):
        dirty = dirty_cache([700 * 600 * 4, 700 * 512 * 4])
        Y = sparseprop.linear_forward(X, W, n_threads=threads)
        assert Y.ctypes.data in dirty  # the result landed in a NaN-filled block
        np.testing.assert_allclose(Y, X @ w.T, rtol=1e-4, atol=1e-4)
        dirty = dirty_cache([700 * 512 * 4])
        dX, _ = sparseprop.linear_backward(X, W, dY, n_threads=threads)
        assert dX.ctypes.data in dirty
        np.testing.assert_allclose(dX, dY @ w, rtol=1e-4, atol=1e-4)
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    wc = random_sparse_dense(rng, (32, 16, 3, 3), 0.8, np.float32)
    C = sparseprop.SparseConvWeight.from_dense(wc)
    for shape, stride in (((8, 16, 40, 40), 1), ((16, 16, 7, 7), 1), ((4, 16, 64, 64), 2)):
        Xc = rng.standard_normal(shape, dtype=np.float32)
        ref = F.conv2d(torch.from_numpy(Xc), torch.from_numpy(wc), None, stride, 1).numpy()
        dYc = rng.standard_normal(ref.shape, dtype=np.float32)
        ref_dx = torch.nn.grad.conv2d_input(Xc.shape, torch.from_numpy(wc),
                                            torch.from_numpy(dYc), stride, 1).numpy()
        for algorithm in ("over_width", "batch_last"):
            for threads in (1, 2):
                dirty = dirty_cache([ref.nbytes, Xc.nbytes])
                Y = sparseprop.conv2d_forward(Xc, C, None, stride, 1, algorithm=algorithm,
                                              n_threads=threads)
                assert (Y.ctypes.data in dirty) == (Y.nbytes >= _pool.MIN_BYTES)
                np.testing.assert_allclose(Y, ref, rtol=1e-4, atol=1e-4)
                dirty = dirty_cache([Xc.nbytes])
                dX, _ = sparseprop.conv2d_backward(Xc, C, dYc, stride, 1,
                                                   algorithm=algorithm, n_threads=threads)
                assert (dX.ctypes.data in dirty) == (dX.nbytes >= _pool.MIN_BYTES)
                np.testing.assert_allclose(dX, ref_dx, rtol=1e-4, atol=1e-4)


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=os.path.dirname(__file__))


def test_environment_variable_sets_the_limit():
    code = "from sparseprop import _pool; print(_pool.limit())"
    r = run_python(code, SPARSEPROP_RESULT_CACHE_MB="64")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 64 << 20
    r = run_python(code, SPARSEPROP_RESULT_CACHE_MB="0")
    assert int(r.stdout) == 0
    r = run_python(code, SPARSEPROP_RESULT_CACHE_MB="lots")
    assert r.returncode != 0 and "SPARSEPROP_RESULT_CACHE_MB must be a number" in r.stderr


def test_bypass_allocates_with_numpy_and_keeps_the_idle_blocks():
    a = sparseprop.empty_aligned(BIG)
    addr = a.ctypes.data
    del a
    assert _pool.set_bypass(True) is False
    try:
        assert not _pool.enabled()
        b = sparseprop.empty_aligned(BIG)
        assert block_of(b) is None and b.ctypes.data % 64 == 0
        del b
        assert _pool.stats()["idle_blocks"] == 1  # the idle block stays
    finally:
        _pool.set_bypass(False)
    assert sparseprop.empty_aligned(BIG).ctypes.data == addr


def test_a_miss_trims_idle_memory_to_half_the_limit_oldest_first():
    _pool.set_limit(16 << 20)
    blocks = [sparseprop.empty_aligned((n << 18,)) for n in (1, 2, 3, 4)]  # 1-4 MiB
    addrs = [b.ctypes.data for b in blocks]
    while blocks:  # freed in this order: the 1 MiB block is the oldest
        blocks.pop(0)
    assert _pool.stats()["idle_bytes"] == 10 << 20
    big = sparseprop.empty_aligned((6 << 18,))  # 6 MiB: a miss, idle down to <= 8 MiB
    st = _pool.stats()
    assert st["idle_bytes"] == 7 << 20 and st["idle_blocks"] == 2  # 3 + 4 MiB stay
    assert sparseprop.empty_aligned((4 << 18,)).ctypes.data == addrs[3]
    assert sparseprop.empty_aligned((3 << 18,)).ctypes.data == addrs[2]
    del big


def test_the_limit_drops_the_oldest_blocks_first():
    _pool.set_limit(9 << 20)
    blocks = [sparseprop.empty_aligned((n << 18,)) for n in (4, 4, 4)]  # 3 x 4 MiB
    addrs = [b.ctypes.data for b in blocks]
    while blocks:  # the third does not fit beside two: the oldest goes
        blocks.pop(0)
    assert _pool.stats()["idle_blocks"] == 2
    a = sparseprop.empty_aligned((4 << 18,))
    b = sparseprop.empty_aligned((4 << 18,))
    assert {a.ctypes.data, b.ctypes.data} == {addrs[1], addrs[2]}
