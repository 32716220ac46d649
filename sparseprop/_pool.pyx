"""A cache of large result buffers, so that a layer's fresh output does not
pay the operating system's page faults on every call.

A fresh ``np.empty`` result of many megabytes is new memory each call: the
kernel maps and zeroes it page by page on first touch.  For the conv and
linear layers at high sparsity that costs as much as the product itself
(docs/tuning.md, "Result-buffer cache"), and more at two threads.  Here a
result of at least ``MIN_BYTES`` lives in a :class:`ResultBuffer`; when the
last array (or torch tensor) viewing it is freed, its memory goes back to a
short list of idle blocks instead of to the system, and the next request of
the same rounded size takes it back - the way a training loop asks for the
same shapes every step.

Nothing is shared while in use: a block is idle only once no Python object
refers to its buffer (its ``__dealloc__`` runs then), and every access to the
list holds the GIL.  Idle blocks never exceed the limit (``set_limit``, the
environment variable ``SPARSEPROP_RESULT_CACHE_MB`` at import, default 256
MiB; 0 turns the cache off), the oldest going first; a request that finds
no block of its size first frees the oldest idle blocks down to half the
limit, so the cache adds less than the limit to a process's peak memory
however many sizes it sees.  ``empty_cache`` returns them all to the system.
New blocks of 4 MiB and more are 2 MiB aligned and, on Linux, advised for
transparent huge pages (fewer, larger faults even on a miss).
"""
cimport numpy as cnp
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free

cnp.import_array()

cdef extern from *:
    """
    #include <stdlib.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    /* size bytes aligned to align (a power of two), or NULL. */
    static void* sp_pool_alloc(size_t size, size_t align)
    {
        void* p = NULL;
    #if defined(_WIN32)
        (void)align;
        p = malloc(size); /* not reached on the platforms this builds for */
    #else
        if (posix_memalign(&p, align, size) != 0)
            return NULL;
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        (void)madvise(p, size, MADV_HUGEPAGE); /* advice only: ignore failure */
    #endif
    #endif
        return p;
    }
    """
    void* sp_pool_alloc(size_t size, size_t align) nogil

#: Results smaller than this come from NumPy's allocator (malloc's heap
#: already reuses freed memory of such sizes without new page faults).
MIN_BYTES = 1 << 20
#: Blocks of at least _HUGE bytes are whole multiples of _GRAIN and aligned
#: to it (one huge page); smaller ones are multiples of _SMALL_GRAIN, page
#: aligned (so a 1.1 MiB result does not hold 2 MiB).
cdef size_t _HUGE = 4 << 20
cdef size_t _GRAIN = 2 << 20
cdef size_t _SMALL_GRAIN = 64 << 10
#: Every block starts on at least this boundary.
PAGE_ALIGN = 4096
cdef enum:
    _SLOTS = 64  # at most this many idle blocks are kept

cdef void* _idle_ptr[_SLOTS]
cdef size_t _idle_size[_SLOTS]
cdef int _n_idle = 0
cdef size_t _idle_bytes = 0
cdef size_t _limit = 0
cdef size_t _hits = 0
cdef size_t _misses = 0
cdef bint _bypass = False


cdef class ResultBuffer:
    """Writable bytes behind one result array, handed back to the cache
    when no array views it any more.  Made by :func:`take` only."""
    cdef char* ptr
    cdef Py_ssize_t nbytes
    cdef size_t block
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __cinit__(self):
        self.ptr = NULL
        self.nbytes = 0
        self.block = 0

    def __getbuffer__(self, Py_buffer* view, int flags):
        view.buf = self.ptr
        view.obj = self
        view.len = self.nbytes
        view.readonly = 0
        view.itemsize = 1
        view.format = "B"
        view.ndim = 1
        self.shape[0] = self.nbytes
        self.strides[0] = 1
        view.shape = self.shape
        view.strides = self.strides
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __dealloc__(self):
        _give_back(self.ptr, self.block)
        self.ptr = NULL


cdef void _give_back(void* p, size_t block) noexcept:
    """Keep block ``p`` idle if it fits the limit, else free it (GIL held)."""
    global _n_idle, _idle_bytes
    if p == NULL:
        return
    if block <= _limit and _n_idle == _SLOTS:
        _trim(_idle_bytes - _idle_size[0])  # the oldest makes room
    if _n_idle < _SLOTS and block <= _limit:
        if _idle_bytes + block > _limit:
            _trim(_limit - block)  # the oldest go first: the newest is the likeliest reused
        _idle_ptr[_n_idle] = p
        _idle_size[_n_idle] = block
        _n_idle += 1
        _idle_bytes += block
    else:
        free(p)


def take(Py_ssize_t nbytes):
    """A :class:`ResultBuffer` of at least ``nbytes`` bytes, page aligned (2 MiB
    aligned from 4 MiB up): an idle block of the same rounded size if there is
    one, else a new one."""
    global _n_idle, _idle_bytes, _hits, _misses
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0; got {nbytes}")
    cdef size_t grain = _GRAIN if <size_t> nbytes >= _HUGE else _SMALL_GRAIN
    cdef size_t block = (<size_t> nbytes + grain - 1) // grain * grain
    if block == 0:
        block = grain
    cdef size_t align = _GRAIN if block >= _HUGE else PAGE_ALIGN
    cdef ResultBuffer buf = ResultBuffer.__new__(ResultBuffer)
    cdef int i, j
    for i in range(_n_idle - 1, -1, -1):  # the most recently freed first: warmest
        if _idle_size[i] == block:
            buf.ptr = <char*> _idle_ptr[i]
            _n_idle -= 1
            for j in range(i, _n_idle):  # keep the rest oldest-first
                _idle_ptr[j] = _idle_ptr[j + 1]
                _idle_size[j] = _idle_size[j + 1]
            _idle_bytes -= block
            _hits += 1
            break
    if buf.ptr == NULL:
        # a miss: first turn idle memory into this block (free the oldest
        # idle blocks down to half the limit), so that the process's peak
        # memory exceeds what it would be without the cache by less than
        # the limit, however many sizes a training step asks for
        _trim(_limit // 2)
        buf.ptr = <char*> sp_pool_alloc(block, align)
        if buf.ptr == NULL:
            empty_cache()  # give the idle blocks back and try once more
            buf.ptr = <char*> sp_pool_alloc(block, align)
            if buf.ptr == NULL:
                raise MemoryError(f"cannot allocate a result buffer of {block} bytes")
        _misses += 1
    buf.nbytes = nbytes
    buf.block = block
    return buf


def set_bypass(bint on):
    """While on, :func:`enabled` is False: ``empty_aligned`` allocates with
    NumPy, as with the cache off, while the idle blocks stay - for timing the
    cache against no cache in one process (benchmarks/bench_out.py).
    Returns the old setting."""
    global _bypass
    old = bool(_bypass)
    _bypass = on
    return old


def enabled():
    """Whether large results come from the cache: a limit above 0 and no bypass."""
    return _limit > 0 and not _bypass


def data_address(cnp.ndarray arr):
    """The address of ``arr``'s first element: what ``arr.ctypes.data`` gives,
    without building a ctypes object (a tenth of the time, on every call)."""
    return <uintptr_t> cnp.PyArray_DATA(arr)


cdef void _trim(size_t keep) noexcept:
    """Free the oldest idle blocks until at most ``keep`` bytes stay idle."""
    global _n_idle, _idle_bytes
    cdef int i, n = 0
    while n < _n_idle and _idle_bytes > keep:  # slot 0 is the oldest
        free(_idle_ptr[n])
        _idle_bytes -= _idle_size[n]
        n += 1
    if n:
        for i in range(n, _n_idle):
            _idle_ptr[i - n] = _idle_ptr[i]
            _idle_size[i - n] = _idle_size[i]
        _n_idle -= n


def empty_cache():
    """Return every idle block to the system; the number of bytes freed."""
    freed = int(_idle_bytes)
    _trim(0)
    return freed


def set_limit(Py_ssize_t nbytes):
    """Keep at most ``nbytes`` of idle blocks (0: none, the cache is off);
    idle blocks beyond a lower limit are freed now.  Returns the old limit."""
    global _limit
    if nbytes < 0:
        raise ValueError(f"the result cache limit must be >= 0 bytes; got {nbytes}")
    old = int(_limit)
    _limit = <size_t> nbytes
    _trim(_limit)
    return old


def limit():
    """The most bytes of idle blocks kept (0: the cache is off)."""
    return int(_limit)


def stats():
    """{"limit", "idle_bytes", "idle_blocks", "hits", "misses"} of the cache."""
    return {"limit": int(_limit), "idle_bytes": int(_idle_bytes), "idle_blocks": int(_n_idle),
            "hits": int(_hits), "misses": int(_misses)}


def _default_limit():
    """SPARSEPROP_RESULT_CACHE_MB (MiB) if set, else 256 MiB (1/16 of physical memory
    where that is less)."""
    import os
    raw = os.environ.get("SPARSEPROP_RESULT_CACHE_MB", "").strip()
    if raw:
        try:
            mb = float(raw)
        except ValueError:
            raise ValueError(f"SPARSEPROP_RESULT_CACHE_MB must be a number of MiB >= 0; "
                             f"got {raw!r}") from None
        if not mb >= 0:
            raise ValueError(f"SPARSEPROP_RESULT_CACHE_MB must be a number of MiB >= 0; "
                             f"got {raw!r}")
        return int(mb * (1 << 20))
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: a fixed guess
        phys = 8 << 30
    return int(min(phys // 16, 256 << 20))


set_limit(_default_limit())
