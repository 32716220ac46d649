"""Every ISA path is tested on this machine: the kernel test modules are re-run
in a subprocess per SPARSEPROP_ISA value the CPU supports (the default path is
already covered by the main run)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sparseprop
from sparseprop import _config

HERE = Path(__file__).resolve().parent
# Modules whose every test must pass under every ISA.
KERNEL_TEST_MODULES = ["test_linear.py", "test_conv2d.py", "test_regressions.py", "test_bf16.py"]

OTHER_ISAS = [name for i, name in enumerate(_config.ISA_NAMES)
              if i <= _config.CPU_ISA and i != _config.ISA]


@pytest.mark.parametrize("isa", _config.ISA_NAMES)
def test_kernel_suite_under_isa(isa):
    # Every ISA of this build is a test case, so a path this CPU cannot run
    # shows up as a skip that names it, never as silence.
    if _config.ISA_NAMES.index(isa) > _config.CPU_ISA:
        pytest.skip(f"SPARSEPROP_ISA={isa}: this CPU ({sparseprop.config()['cpu']}) cannot "
                    f"run it (best: {_config.ISA_NAMES[_config.CPU_ISA]}); the {isa} kernels "
                    "are NOT tested in this run")
    if isa == _config.ISA_NAME:
        pytest.skip(f"{isa} is this run's default ISA: the main run tests it")
    env = dict(os.environ, SPARSEPROP_ISA=isa)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           "--rootdir", str(HERE.parent)] + [str(HERE / m) for m in KERNEL_TEST_MODULES]
    # cwd = tests/: the repository root on sys.path would shadow the installed package
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
    tail = "\n".join(proc.stdout.splitlines()[-25:])
    assert proc.returncode == 0, (f"kernel tests failed under SPARSEPROP_ISA={isa}:\n{tail}\n"
                                  f"{proc.stderr[-2000:]}")
    assert " passed" in tail and " failed" not in tail


def test_every_isa_is_covered():
    # The main run covers the default ISA, the subprocesses the others: make
    # sure that adds up to every ISA this CPU can run.
    covered = set(OTHER_ISAS) | {_config.ISA_NAME}
    assert covered == set(_config.ISA_NAMES[: _config.CPU_ISA + 1])


def test_bf16_kernels_without_the_avx512bf16_extension():
    # On a CPU with AVX512_BF16 the default run tests the avx512bf16 (linear)
    # and avx512ybf16 (conv2d) regions; the plain AVX-512 bfloat16 kernels
    # (integer rounding) are what such a CPU runs with SPARSEPROP_AVX512BF16=0
    # and what AVX-512 CPUs without it run.
    names = _config.ISA_NAMES
    if "avx512" not in names or _config.CPU_ISA < names.index("avx512"):
        pytest.skip("no AVX-512 on this CPU: the avx512 bfloat16 kernels are NOT tested here")
    if not _config.CPU_AVX512BF16:
        pytest.skip("this CPU has no AVX512_BF16: the default run already tests the plain "
                    "avx512 bfloat16 kernels; the avx512bf16 ones are NOT tested here")
    env = dict(os.environ, SPARSEPROP_ISA="avx512", SPARSEPROP_AVX512BF16="0")
    probe = subprocess.run([sys.executable, "-c", "from sparseprop import _config; "
                            "print(_config.BF16_LINEAR_REGION, _config.BF16_CONV_REGION)"],
                           capture_output=True, text=True, env=env, cwd=HERE)
    assert probe.stdout.strip() == "avx512 avx512y", probe.stderr
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           "--rootdir", str(HERE.parent), str(HERE / "test_bf16.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
    tail = "\n".join(proc.stdout.splitlines()[-25:])
    assert proc.returncode == 0, f"{tail}\n{proc.stderr[-2000:]}"
    assert " passed" in tail and " failed" not in tail and " skipped" not in tail


def test_bad_avx512bf16_setting_is_an_error():
    env = dict(os.environ, SPARSEPROP_AVX512BF16="yes")
    proc = subprocess.run([sys.executable, "-c", "import sparseprop"], capture_output=True,
                          text=True, env=env, cwd=HERE)
    assert proc.returncode != 0
    assert "SPARSEPROP_AVX512BF16='yes' is not 0, 1 or auto" in proc.stderr
