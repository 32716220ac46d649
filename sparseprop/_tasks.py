"""How the work of one pass is cut into thread tasks (pure Python, no kernels).

Both layer families cut their work into contiguous pieces of about equal
cost: the linear drivers cut (batch chunk, output row / input column) pairs
in chunk-major order, the conv drivers cut a range of channels.  One
splitter, :func:`split_work`, serves both; :func:`task_grid` picks how the
conv drivers divide threads between batch groups and channel ranges.
"""
import numpy as np


def split_work(cost_cum, parts, n_chunks=1, align=1):
    """Cut the (chunk, index) work of a pass into ``parts`` pieces of equal cost.

    The work is every index (output row, input column, channel) of every one
    of ``n_chunks`` batch chunks, in chunk-major order; ``cost_cum`` is the
    cumulative cost of the indices of one chunk.

    Parameters
    ----------
    cost_cum : array_like of int, shape (n + 1,)
        ``cost_cum[i]`` is the cost of indices ``[0, i)`` of one chunk
        (non-decreasing, starting at 0).
    parts : int
        Number of pieces.
    n_chunks : int, default 1
        Batch chunks; 1 cuts a plain range of indices.
    align : int, default 1
        Inner boundaries are rounded to multiples of ``align``, so a piece
        that starts inside a chunk starts on a kernel tile.

    Returns
    -------
    bc, bi : ndarray of int64, shape (parts + 1,)
        Piece ``t`` runs from (chunk ``bc[t]``, index ``bi[t]``) up to
        (``bc[t + 1]``, ``bi[t + 1]``), exclusive; boundaries are ordered, the
        first is (0, 0) and the last (n_chunks, 0).  ``bc * n + bi`` are the
        same boundaries as positions in the flattened work.
    """
    cost_cum = np.asarray(cost_cum, dtype=np.int64)
    n = cost_cum.shape[0] - 1
    per_chunk = int(cost_cum[-1])
    bc = np.zeros(parts + 1, dtype=np.int64)
    bi = np.zeros(parts + 1, dtype=np.int64)
    bc[parts] = n_chunks
    if per_chunk <= 0:
        return bc, bi
    total = per_chunk * n_chunks
    for t in range(1, parts):
        target = total * t // parts
        c, rem = divmod(target, per_chunk)
        i = int(np.searchsorted(cost_cum, rem, side="left"))
        i = min(n, (i + align // 2) // align * align)
        if i >= n:
            c, i = c + 1, 0
        # keep the boundaries ordered
        if (c, i) < (bc[t - 1], bi[t - 1]):
            c, i = bc[t - 1], bi[t - 1]
        bc[t], bi[t] = c, i
    return bc, bi


def split_range(cost, parts):
    """Boundaries cutting ``range(len(cost))`` into ``parts`` contiguous pieces
    of about equal total cost: :func:`split_work` of one chunk, flattened.

    Parameters
    ----------
    cost : array_like of int, shape (n,)
        Cost of each index.
    parts : int

    Returns
    -------
    ndarray of int64, shape (parts + 1,)
        Non-decreasing, from 0 to n; piece ``t`` is ``[b[t], b[t + 1])``.
    """
    cost = np.asarray(cost, dtype=np.int64)
    n = cost.shape[0]
    cum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(cost, out=cum[1:])
    bc, bi = split_work(cum, parts)
    return bc * n + bi


def task_grid(T, n_units, n_chan):
    """(Tb, Tc): batch groups x channel ranges for ``T`` threads, ``Tb * Tc <= T``.

    Splitting the batch costs nothing extra; splitting channels repacks the
    shared input in every task (about a tenth of a task's time, the 0.1
    below): pick the smallest estimated time.

    Parameters
    ----------
    T : int
        Threads available.
    n_units : int
        Batch units (images, or SIMD vectors of images).
    n_chan : int
        Channels the other axis may be split over.

    Returns
    -------
    (int, int)
    """
    if T <= 1 or n_units <= 1 and n_chan <= 1:
        return 1, 1
    best = None
    for Tb in range(1, min(T, n_units) + 1):
        Tc = max(1, min(T // Tb, n_chan))
        t = -(-n_units // Tb) * (1.0 / Tc + (0.1 if Tc > 1 else 0.0))
        if best is None or t <= best[0]:
            best = (t, Tb, Tc)
    return best[1], best[2]
