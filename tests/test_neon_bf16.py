"""The NEON bfloat16 kernels, on an x86-64 machine: tests/c/bf16_linear_check.c
cross-compiled for AArch64 and run under user-mode qemu (a few seconds; the
whole suite under emulation is .ci/aarch64).  Skipped, naming what is missing,
where there is no cross compiler or no qemu."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64-static"


def test_neon_bf16_linear_kernels_match_scalar_and_f32(tmp_path):
    missing = [t for t in (CC, QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: the NEON bfloat16 kernels are "
                    "NOT tested in this run")
    exe = tmp_path / "check"
    build = subprocess.run([CC, "-O2", "-static", "-I", str(ROOT / "include"),
                            str(ROOT / "tests" / "c" / "bf16_linear_check.c"), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([QEMU, str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "0 mismatches" in run.stdout


def test_bf16_check_natively(tmp_path):
    # the same check built for this machine (x86-64: avx2 against scalar and f32 avx2)
    from sparseprop import _config

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    if _config.CPU_ISA < 1:
        pytest.skip("this CPU runs only the scalar kernels: nothing to check natively")
    exe = tmp_path / "check"
    build = subprocess.run([cc, "-O2", "-I", str(ROOT / "include"),
                            str(ROOT / "tests" / "c" / "bf16_linear_check.c"), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "0 mismatches" in run.stdout
