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
KERNEL_TEST_MODULES = ["test_linear.py", "test_conv2d.py", "test_regressions.py"]

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
