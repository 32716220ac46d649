"""sparseprop: fast training of neural networks with unstructured sparse weights on CPUs.

An implementation of SparseProp (Nikdan et al., 2023): forward and backward
passes whose cost grows with the number of nonzero weights, not the dense
size.  The NumPy-level API is the core; ``sparseprop.torch`` is an optional
façade on top of it.

Quick start::

    import numpy as np, sparseprop as sp
    W = sp.CSRMatrix.from_dense(dense_weight)          # (out, in), float32
    Y = sp.linear_forward(X, W, bias)                  # like F.linear
    dX, dW = sp.linear_backward(X, W, dY)              # dW aligned with W.data
    C = sp.SparseConvWeight.from_dense(dense_conv_weight)   # (out, in/groups, kh, kw)
    Y = sp.conv2d_forward(X, C, bias, stride=1, padding=1)  # like F.conv2d, NCHW
    dX, dW = sp.conv2d_backward(X, C, dY, padding=1)        # dW aligned with C.data
"""
from sparseprop._checks import empty_aligned
from sparseprop._config import openmp_enabled
from sparseprop._conv2d import conv2d_algorithm, conv2d_backward, conv2d_forward
from sparseprop._convweight import SparseConvWeight
from sparseprop._formats import CSCMatrix, CSRMatrix
from sparseprop._linear import linear_backward, linear_forward
from sparseprop._pool import empty_cache

__version__ = "0.1.0"

__all__ = [
    "CSCMatrix",
    "CSRMatrix",
    "SparseConvWeight",
    "__version__",
    "config",
    "conv2d_algorithm",
    "conv2d_backward",
    "conv2d_forward",
    "empty_aligned",
    "empty_cache",
    "linear_backward",
    "linear_forward",
    "openmp_enabled",
    "show_config",
]


def config():
    """The build and run-time configuration as a dict (what :func:`show_config` prints).

    Versions of scipy and torch come from their installed metadata (torch is not
    imported); "-" where one is not installed.
    """
    import platform

    import numpy as np

    from sparseprop import _config

    isa = _config.isa_info()
    return {
        "version": __version__,
        "isa": isa["isa"],
        "isa_cpu_best": isa["cpu_best"],
        "isa_cap (SPARSEPROP_ISA)": isa["cap"] or "none",
        "cpu_avx512bf16": isa["cpu_avx512bf16"],
        # what bfloat16 activations run on (see README, "bfloat16")
        "bf16_linear": f"bfloat16 kernels ({isa['bf16_linear']}), float32 sums",
        "bf16_conv2d": f"bfloat16 kernels ({isa['bf16_conv2d']}), float32 sums",
        "openmp": _config.openmp_enabled(),
        "default_threads": _config.default_n_threads(),
        # large results reuse freed blocks (sparseprop/_pool.pyx; SPARSEPROP_RESULT_CACHE_MB)
        "result_cache": _result_cache_line(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": _installed_version("scipy"),
        "torch": _installed_version("torch"),
        "ml_dtypes": _installed_version("ml_dtypes"),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
    }


def _result_cache_line():
    """The result-buffer cache's limit and idle memory, in MiB, for config()."""
    from sparseprop import _pool

    st = _pool.stats()
    if st["limit"] == 0:
        return "off (SPARSEPROP_RESULT_CACHE_MB=0)"
    return (f"results >= {_pool.MIN_BYTES >> 20} MiB reuse freed blocks; "
            f"{st['idle_bytes'] / 2**20:.0f} of {st['limit'] / 2**20:.0f} MiB idle")


def _installed_version(name):
    """A distribution's version from its metadata (without importing it), or "-"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def _cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def show_config():
    """Print the version, the chosen ISA, whether OpenMP is on, the default thread count,
    the versions of Python, NumPy, SciPy and torch, and the CPU."""
    for key, value in config().items():
        print(f"{key:>26}: {value}")
