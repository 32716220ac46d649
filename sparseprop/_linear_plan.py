"""Per-mask plans of the sparse linear kernels (pure Python, NumPy only).

The drivers in ``_linear.pyx`` validate the call and run the kernels; what
they walk is built here, once per mask, and cached in the weight's
``_cache`` (shared by every matrix with the same structure):

* the forward's column blocks and W's nonzeros in the order the forward
  kernel walks them (:func:`forward_plan`);
* the padded CSC structure of the backward kernel (:func:`backward_plan`);
* the cut of a pass into thread tasks (:func:`forward_split`,
  :func:`backward_split`).
"""
import numpy as np

from sparseprop._formats import CSRMatrix
from sparseprop._tasks import split_work

# Fixed cost of one output row (forward) / input column (backward) of a chunk,
# in nonzeros, when the work is balanced between threads.
ROW_COST = 4
COL_COST = 8

# Tests set this (through force_forward_blocks) to walk every block count.
_forced_blocks = 0


def force_forward_blocks(n):
    """Make the forward cut W into ``n`` column blocks (0: choose; for tests)."""
    global _forced_blocks
    _forced_blocks = int(n)


# Fewest batch chunks for which the forward cuts W into column blocks: each
# call with blocks first gathers W's values into the blocked order (a pass
# over nnz), which a few chunks do not earn back (docs/tuning.md, "Forward
# column blocks and small batches").
BLOCK_MIN_CHUNKS = 16


def forward_blocks(M, N, nnz, chunk, itemsize, n_chunks=BLOCK_MIN_CHUNKS):
    """How many column blocks the forward cuts W into.

    A block of X^T (its columns x the chunk's lanes) should stay in L1 while
    every row's entries of the block are walked, but each extra block costs a
    pass over the rows' partial sums: blocks of about 32 KiB, and only as
    many as keep a row's entries per block at 16 or more on average.  With
    fewer than ``BLOCK_MIN_CHUNKS`` chunks in the call, one block: the
    per-call gather of the values into the blocked order costs more than
    blocking saves.

    Parameters
    ----------
    M, N : int
        In and out features of W.
    nnz : int
        Stored values of W.
    chunk : int
        Batch rows of one forward kernel call.
    itemsize : int
        Bytes of one value.
    n_chunks : int, optional
        Chunks (kernel calls per output row) in the call.

    Returns
    -------
    int
        At least 1.
    """
    if _forced_blocks > 0:
        return _forced_blocks
    if M <= 0 or N <= 0 or n_chunks < BLOCK_MIN_CHUNKS:
        return 1
    by_cache = -(-(M * chunk * itemsize) // 32768)
    by_length = (nnz // N) // 16
    return max(1, min(by_cache, by_length, M // 16))


def forward_plan(W, nblk):
    """(ptr, indices, perm, blk_cols): W's nonzeros as the forward kernel walks them.

    Blocks of columns one after the other, each in CSR order (nblk == 1:
    plain CSR).  ``perm`` maps a kernel position to a position of W.data
    (None when it is the identity); ``blk_cols`` holds the block boundaries.
    Built once per mask and block count.
    """
    key = ("linear_forward", nblk)
    plan = W._cache.get(key)
    if plan is not None:
        return plan
    N, M = W.shape
    if isinstance(W, CSRMatrix):
        ptr, idx, perm = W.indptr, W.indices, None
    else:
        perm, ptr, idx = W._transposed_structure()
    blk_cols = np.zeros(nblk + 1, dtype=np.int64)
    if nblk > 1:
        blk_cols[:] = (M * np.arange(nblk + 1) // nblk) // 16 * 16
        blk_cols[-1] = M
        row_of = np.repeat(np.arange(N, dtype=np.int64), np.diff(ptr))
        blk_of = np.searchsorted(blk_cols, idx, side="right") - 1
        key_of = blk_of * N + row_of
        order = np.argsort(key_of, kind="stable")
        ptr = np.zeros(nblk * N + 1, dtype=np.int64)
        np.cumsum(np.bincount(key_of, minlength=nblk * N), out=ptr[1:])
        idx = np.ascontiguousarray(idx[order], dtype=np.int32)
        perm = order.astype(np.int64) if perm is None else np.ascontiguousarray(perm[order])
    plan = (ptr, idx, perm, blk_cols)
    for arr in plan:
        if arr is not None:
            arr.flags.writeable = False
    W._cache[key] = plan
    return plan


def forward_split(W, ptr, nblk, n_chunks, tasks, tile):
    """Equal shares of the forward's (chunk, output row) work for ``tasks``
    threads, rows weighted by their entries (over all blocks) plus
    ``ROW_COST``; boundaries on multiples of the kernel's row ``tile``.
    Returns (bc, bi) as :func:`sparseprop._tasks.split_work`; cached per mask."""
    key = ("linear_forward_split", nblk, n_chunks, tasks)
    split = W._cache.get(key)
    if split is None:
        N = W.shape[0]
        cost = np.zeros(N + 1, dtype=np.int64)
        np.cumsum(np.diff(np.asarray(ptr)).reshape(nblk, N).sum(axis=0) + ROW_COST,
                  out=cost[1:])
        split = W._cache[key] = split_work(cost, tasks, n_chunks, tile)
    return split


def backward_plan(W, pad):
    """The padded CSC structure the backward kernel walks, built once per mask.

    Returns (colptr, rowidx, slot): each column's list is padded to a
    multiple of ``pad`` (the header's SP_LINEAR_PAD) with dummies whose row
    is N (an all-zero row of dY^T in the kernel); ``slot[i]`` is the padded
    position of W.data[i].
    """
    plan = W._cache.get("linear_backward")
    if plan is not None:
        return plan
    N, M = W.shape
    if isinstance(W, CSRMatrix):
        perm, ptr, idx = W._transposed_structure()
    else:
        ptr, idx = W.indptr, W.indices
        perm = np.arange(W.nnz, dtype=np.int64)
    counts = np.diff(ptr)
    padded = (counts + pad - 1) // pad * pad
    colptr = np.zeros(M + 1, dtype=np.int64)
    np.cumsum(padded, out=colptr[1:])
    col_of = np.repeat(np.arange(M, dtype=np.int64), counts)
    slot_csc = colptr[col_of] + (np.arange(W.nnz, dtype=np.int64) - ptr[col_of])
    rowidx = np.full(int(colptr[-1]), N, dtype=np.int32)
    rowidx[slot_csc] = idx
    slot = np.empty(W.nnz, dtype=np.int64)
    slot[perm] = slot_csc
    plan = (colptr, rowidx, slot)
    for a in plan:
        a.flags.writeable = False
    W._cache["linear_backward"] = plan
    return plan


def backward_split(W, colptr, n_chunks, tasks):
    """Equal shares of the backward's (chunk, input column) work for ``tasks``
    threads, columns weighted by their padded entries plus ``COL_COST``.
    Returns (bc, bm) as :func:`sparseprop._tasks.split_work`; cached per mask."""
    key = ("linear_backward_split", n_chunks, tasks)
    split = W._cache.get(key)
    if split is None:
        M = W.shape[1]
        cost = np.asarray(colptr) + COL_COST * np.arange(M + 1, dtype=np.int64)
        split = W._cache[key] = split_work(cost, tasks, n_chunks, 1)
    return split
