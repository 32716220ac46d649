"""The build is what it claims: OpenMP on, ISA dispatch working and cappable."""
import os
import re

import numpy as np
import pytest

import sparseprop
from sparseprop import _config

from helpers import run_python

# A build without OpenMP still runs, silently on one thread: the default is to
# fail loudly on it.  SPARSEPROP_EXPECT_OPENMP=0 says the build was made without
# OpenMP on purpose (meson -Dopenmp=disabled, as .ci/compilers does); the tests
# then check that it really is serial.  Only "1" (the default) and "0" are accepted.
_EXPECT = os.environ.get("SPARSEPROP_EXPECT_OPENMP", "1")
if _EXPECT not in ("0", "1"):
    raise ValueError(f"SPARSEPROP_EXPECT_OPENMP must be 0 or 1; got {_EXPECT!r}")
EXPECT_OPENMP = _EXPECT == "1"
THREADS = 2 if EXPECT_OPENMP else 1   # the team that n_threads=2 gets


def test_openmp_is_as_expected():
    if EXPECT_OPENMP:
        assert sparseprop.openmp_enabled(), (
            "this build has no OpenMP (kernels run on one thread); if that is deliberate, "
            "set SPARSEPROP_EXPECT_OPENMP=0")
    else:
        assert not sparseprop.openmp_enabled(), "SPARSEPROP_EXPECT_OPENMP=0 but OpenMP is on"
        assert sparseprop.config()["openmp"] is False
        assert sparseprop.config()["default_threads"] == 1


def test_two_threads_really_run():
    assert _config.parallel_team_size(2) == THREADS


def test_linear_kernels_run_on_two_threads():
    rng = np.random.default_rng(0)
    W = sparseprop.CSRMatrix.from_dense(rng.standard_normal((256, 128)).astype(np.float32))
    X = rng.standard_normal((256, 128)).astype(np.float32)
    dY = rng.standard_normal((256, 256)).astype(np.float32)
    sparseprop.linear_forward(X, W, n_threads=2)
    assert _config.last_team_size() == THREADS
    sparseprop.linear_backward(X, W, dY, n_threads=2)
    assert _config.last_team_size() == THREADS
    sparseprop.linear_backward(X, W, dY, n_threads=1)
    assert _config.last_team_size() == 1


def test_show_config_prints_the_essentials(capsys):
    sparseprop.show_config()
    out = capsys.readouterr().out
    for key in ("version", "isa", "openmp", "default_threads"):
        assert key in out
    assert sparseprop.__version__ in out
    assert sparseprop.config()["isa"] in _config.ISA_NAMES


def test_cli_info_runs():
    out = run_python(["-m", "sparseprop", "info"], check=True).stdout
    assert "isa" in out and "openmp" in out
    assert re.search(rf"^ *openmp: {EXPECT_OPENMP}$", out, re.M), out
    if not EXPECT_OPENMP:
        assert re.search(r"^ *default_threads: 1$", out, re.M), out


def _isa_in_subprocess(value):
    return run_python(["-c", "import sparseprop; print(sparseprop.config()['isa'])"],
                      env={"SPARSEPROP_ISA": value})


@pytest.mark.parametrize("cap", _config.ISA_NAMES)
def test_isa_cap_is_honoured(cap):
    proc = _isa_in_subprocess(cap)
    assert proc.returncode == 0, proc.stderr
    expected = _config.ISA_NAMES[min(_config.ISA_NAMES.index(cap), _config.CPU_ISA)]
    assert proc.stdout.strip() == expected


def test_bad_isa_cap_is_a_clear_error():
    proc = _isa_in_subprocess("avx3")
    assert proc.returncode != 0
    assert "SPARSEPROP_ISA='avx3' is not one of scalar, avx2, avx512" in proc.stderr


def test_default_threads_follow_omp_num_threads():
    out = run_python(["-c", "import sparseprop; print(sparseprop.config()['default_threads'])"],
                     env={"OMP_NUM_THREADS": "1"}, check=True).stdout
    assert out.strip() == "1"


def test_threadpoolctl_limits_reach_the_kernels():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert _config.default_n_threads() == 1
    assert _config.default_n_threads() == _config.parallel_team_size(None)


@pytest.mark.parametrize("bad", [0, -1])
def test_n_threads_must_be_positive(bad):
    with pytest.raises(ValueError, match="n_threads must be a positive integer or None; got"):
        _config.resolve_n_threads(bad)


@pytest.mark.parametrize("bad", [1.5, "2", True])
def test_n_threads_must_be_an_integer(bad):
    with pytest.raises(TypeError, match="n_threads must be a positive integer or None"):
        _config.resolve_n_threads(bad)
