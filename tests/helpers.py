"""Helpers shared by the test modules (imported as ``helpers``; conftest puts
this folder on sys.path because the suite runs with --import-mode=importlib)."""
import numpy as np

# Sizes that hit SIMD tails for every ISA (vectors of 1, 4, 8 and 16 lanes and
# the kernels' batch chunks of 8 to 48 rows).
TAIL_SIZES = [0, 1, 7, 8, 15, 16, 17, 37]


def random_sparse_dense(rng, shape, sparsity, dtype=np.float32):
    """A dense array with a uniformly random fraction ``sparsity`` of zeros."""
    A = rng.standard_normal(shape).astype(dtype)
    if sparsity >= 1.0:
        A[...] = 0
    elif sparsity > 0:
        A[rng.random(shape) < sparsity] = 0
    return A


def tolerances(dtype, k):
    """(rtol, atol) for a sum of k products of standard normal values."""
    scale = np.sqrt(max(k, 1))
    if np.dtype(dtype) == np.float32:
        return 2e-5, 2e-5 * scale
    return 1e-12, 1e-12 * scale


def run_python(args, env=None, check=False):
    """Run ``python args...`` in a neutral folder (never the repository root,
    whose source tree would shadow the installed package); return the
    CompletedProcess with text output."""
    import os
    import subprocess
    import sys
    import tempfile

    full_env = dict(os.environ)
    full_env.update(env or {})
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              env=full_env, cwd=cwd, check=check)
