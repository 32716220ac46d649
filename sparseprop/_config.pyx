"""Build and run-time configuration: chosen ISA, OpenMP, thread defaults.

The ISA is chosen once, when this module is imported: the best one the CPU
supports, capped by the environment variable ``SPARSEPROP_ISA`` (``scalar``,
``avx2`` or ``avx512`` on x86-64; ``scalar`` or ``neon`` on AArch64).  Every
kernel module reads :data:`ISA` at its own import, so the cap must be set
before ``import sparseprop``.

The bfloat16 kernels (linear and conv2d) on the AVX-512 level also use the
AVX512_BF16 extension where the CPU has it (:data:`BF16_EXT`);
``SPARSEPROP_AVX512BF16=0`` turns that off (they then round by integer
arithmetic, as on plain AVX-512), so both paths can be tested on one
machine.
"""
import os

from cython.parallel cimport prange, threadid
from libc.stdlib cimport calloc, free

cdef extern from "sparseprop/dispatch.h" nogil:
    int sp_isa_levels()
    const char* sp_isa_level_name(int level)
    int sp_cpu_best_isa()
    int sp_compiled_max_isa()
    int sp_cpu_has_avx512bf16()

cdef extern from "sparseprop/threads.h" nogil:
    int SP_OPENMP
    int sp_omp_max_threads()


#: The ISA levels of this build, lowest first: ("scalar", "avx2", "avx512") on
#: x86-64, ("scalar", "neon") on AArch64, ("scalar",) elsewhere.
ISA_NAMES = tuple(sp_isa_level_name(i).decode() for i in range(sp_isa_levels()))


def _isa_from_env():
    """Return (cap, source) from SPARSEPROP_ISA; raise on a bad value."""
    raw = os.environ.get("SPARSEPROP_ISA", "")
    value = raw.strip().lower()
    if value in ("", "auto", "best"):
        return len(ISA_NAMES) - 1, None
    if value not in ISA_NAMES:
        raise ValueError(
            f"SPARSEPROP_ISA={raw!r} is not one of {', '.join(ISA_NAMES)} "
            "(or unset/'auto' for the best the CPU supports)"
        )
    return ISA_NAMES.index(value), raw


#: Best ISA the CPU (and OS) support, as an index into ISA_NAMES.
CPU_ISA = min(sp_cpu_best_isa(), sp_compiled_max_isa())
_cap, ISA_CAP = _isa_from_env()
#: ISA every kernel module uses in this process (index into ISA_NAMES).
ISA = min(CPU_ISA, _cap)
#: Its name: one of ISA_NAMES.
ISA_NAME = ISA_NAMES[ISA]


def _bf16_ext_from_env():
    """False if SPARSEPROP_AVX512BF16 turns the extension off; raise on a bad value."""
    raw = os.environ.get("SPARSEPROP_AVX512BF16", "")
    value = raw.strip().lower()
    if value in ("", "auto", "1"):
        return True
    if value == "0":
        return False
    raise ValueError(f"SPARSEPROP_AVX512BF16={raw!r} is not 0, 1 or auto (unset: use the "
                     "AVX512_BF16 instructions where the CPU has them)")


#: Whether the CPU has the AVX512_BF16 extension (and this build the kernels
#: that use it).
CPU_AVX512BF16 = bool(sp_cpu_has_avx512bf16())
#: Whether the bfloat16 kernels use AVX512_BF16 in this process: the AVX-512
#: level is chosen, the CPU has it, SPARSEPROP_AVX512BF16 is not 0.
BF16_EXT = ISA_NAME == "avx512" and CPU_AVX512BF16 and _bf16_ext_from_env()
#: The code region of the bfloat16 linear kernels in this process: avx512bf16,
#: or the ISA's own (avx512, avx2, neon, scalar).
BF16_LINEAR_REGION = "avx512bf16" if BF16_EXT else ISA_NAME
#: The same for the bfloat16 conv2d kernels, whose AVX-512 regions have
#: 256-bit vectors (include/sparseprop/conv.h): avx512ybf16, avx512y, or the
#: ISA's own (avx2, neon, scalar).
BF16_CONV_REGION = ("avx512ybf16" if BF16_EXT else
                    "avx512y" if ISA_NAME == "avx512" else ISA_NAME)


def openmp_enabled():
    """True if the extension was compiled with OpenMP (multi-threaded kernels).

    A build without OpenMP still runs, on one thread; the tests fail loudly on
    such a build so it can never be shipped by accident.
    """
    return bool(SP_OPENMP)


def default_n_threads():
    """Threads a kernel uses when called with ``n_threads=None``.

    This is OpenMP's current default (``omp_get_max_threads``), so it follows
    ``OMP_NUM_THREADS``, ``threadpoolctl.threadpool_limits(..., user_api="openmp")``
    and ``torch.set_num_threads`` (torch's CPU wheel shares the same libgomp).
    """
    if not SP_OPENMP:
        return 1
    return int(sp_omp_max_threads())


#: An ``n_threads`` above this cannot be meant: it is an error, not clamped.
MAX_N_THREADS = 1 << 16


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: The CPUs this process may run on (its affinity mask), read at import.
USABLE_CPUS = _usable_cpus()


def max_threads():
    """The most threads a kernel runs: 4 x the CPUs this process may use, at least 16.

    Larger requests (``n_threads=``, ``OMP_NUM_THREADS``,
    ``torch.set_num_threads``) are clamped to it, as scikit-learn clamps its
    OpenMP thread counts: oversubscribing a few times over is allowed (tests
    do it on small machines), asking OpenMP for tens of thousands of threads
    makes thread creation fail and libgomp end the process.
    """
    return max(16, 4 * USABLE_CPUS)


cpdef int resolve_n_threads(object n_threads) except -1:
    """Validate an ``n_threads`` argument; None means :func:`default_n_threads`.

    Returns at most :func:`max_threads`; above :data:`MAX_N_THREADS` the value
    cannot be meant and is a ValueError.
    """
    if n_threads is None:
        return min(default_n_threads(), max_threads())
    if isinstance(n_threads, bool) or not hasattr(n_threads, "__index__"):
        raise TypeError(
            f"n_threads must be a positive integer or None; got {type(n_threads).__name__} "
            f"{n_threads!r}"
        )
    n = n_threads.__index__()
    if n < 1:
        raise ValueError(f"n_threads must be a positive integer or None; got {n}")
    if n > MAX_N_THREADS:
        raise ValueError(
            f"n_threads must be at most {MAX_N_THREADS} (more than any machine runs in one "
            f"process; this one may use {USABLE_CPUS} CPUs); got {n}"
        )
    return min(n, max_threads())


def parallel_team_size(n_threads):
    """Run an OpenMP region of ``n_threads`` threads; return how many took part.

    A diagnostic for the tests: it is 1 on a build without OpenMP.
    """
    cdef int n = resolve_n_threads(n_threads)
    cdef int* seen = <int*> calloc(n, sizeof(int))
    cdef int i, count = 0
    if seen == NULL:
        raise MemoryError()
    try:
        with nogil:
            for i in prange(n, num_threads=n, schedule="static", chunksize=1):  # no-cython-lint
                seen[threadid()] = 1
        for i in range(n):
            count += seen[i]
    finally:
        free(seen)
    return count


def isa_info():
    """A dict: the ISA chosen, what the CPU supports, and the cap applied."""
    return {
        "isa": ISA_NAME,
        "cpu_best": ISA_NAMES[CPU_ISA],
        "cap": ISA_CAP,
        "available": list(ISA_NAMES[: CPU_ISA + 1]),
        "cpu_avx512bf16": CPU_AVX512BF16,
        "bf16_linear": BF16_LINEAR_REGION,
        "bf16_conv2d": BF16_CONV_REGION,
    }


# Threads of the most recent kernel pass (forward or backward, linear or
# conv): a diagnostic for the tests.
cdef int _last_team = 0


def note_team_size(int n):
    """Record how many threads ran the kernel pass that just ended (the kernel modules call it)."""
    global _last_team
    _last_team = n


def last_team_size():
    """Threads that ran the most recent kernel pass of this process (tests use it)."""
    return _last_team
