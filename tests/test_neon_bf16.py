"""The NEON bfloat16 kernels, on an x86-64 machine: tests/c/bf16_linear_check.c
and tests/c/bf16_conv_check.c cross-compiled for AArch64 and run under
user-mode qemu (a few seconds; the whole suite under emulation is
.ci/aarch64).  Skipped, naming what is missing, where there is no cross
compiler or no qemu.  Each check is also built for this machine (level 1:
avx2 on x86-64), so the checks themselves are tested where they run fast."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
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


# ---------------------------------------------------------------- conv2d

# (batch, channels, H, W, out channels, kernel, stride, padding, dilation,
#  groups, sparsity, algorithm, bias): both algorithms, the direct backward
# (W a multiple of the lanes), stride-2 phases past a vector, other strides,
# groups and depthwise, dense and empty weights, batch and width tails
CONV_CASES = [
    (3, 4, 7, 9, 6, 3, 1, 1, 1, 1, 0.5, "batch_last", True),
    (3, 4, 7, 9, 6, 3, 1, 1, 1, 1, 0.5, "over_width", True),
    (2, 3, 6, 16, 5, 3, 1, 1, 1, 1, 0.5, "over_width", False),
    (2, 3, 6, 12, 5, 3, 1, 0, 1, 1, 0.5, "over_width", True),
    (2, 3, 7, 21, 5, 3, 2, 1, 1, 1, 0.5, "over_width", False),
    (5, 3, 7, 21, 5, 3, 2, 1, 1, 1, 0.5, "batch_last", True),
    (2, 6, 9, 11, 8, 3, (1, 3), 2, 2, 2, 0.4, "over_width", True),
    (6, 6, 9, 11, 8, 3, (1, 3), 2, 2, 2, 0.4, "batch_last", False),
    (2, 8, 6, 6, 8, 3, 1, 1, 1, 8, 0.0, "over_width", True),
    (2, 4, 5, 8, 4, 3, 1, 1, 1, 1, 0.0, "batch_last", True),
    (2, 4, 5, 8, 4, 3, 1, 1, 1, 1, 1.0, "over_width", True),
    (1, 3, 5, 5, 4, 1, 1, 0, 1, 1, 0.3, "over_width", False),
]


def _write_conv_cases(folder, lanes):
    """The case files of tests/c/bf16_conv_check.c, planned for ``lanes``."""
    import sparseprop as sp
    from sparseprop import _conv_plan as cp
    from sparseprop._checks import bf16_round

    rng = np.random.default_rng(18)
    paths = []
    for i, (B, C, H, Wd, OC, k, stride, padding, dilation, groups, sparsity, algorithm,
            bias) in enumerate(CONV_CASES):
        dense = rng.standard_normal((OC, C // groups, k, k)).astype(np.float32)
        dense[rng.random(dense.shape) < sparsity] = 0
        W = sp.SparseConvWeight.from_dense(dense)
        geo = cp.conv_geometry((B, C, H, Wd), W, stride, padding, dilation, groups)
        plan = cp.conv_plan(W, algorithm, lanes, B, C, H, Wd, geo)
        xoff = cp.forward_offsets(W, plan)
        perm, lptr, dyoff = cp.backward_lists(W, plan)
        geom = [plan.batch_last, plan.L, plan.U, plan.cv, B, plan.C, plan.H, plan.W, plan.OC,
                plan.OH, plan.OW, plan.ICg, plan.OCg, plan.sh, plan.sw, plan.pt, plan.pl,
                plan.Hb, plan.Wq, plan.rowlen_x, plan.plane_x, plan.Hdy, plan.Wdy, plan.TP,
                plan.LP, plan.rowlen_dy, plan.plane_dy, W.nnz, int(bias)]
        u16 = np.dtype(np.uint16)
        X = bf16_round(rng.standard_normal((B, C, H, Wd)).astype(np.float32) * 3, u16)
        dY = bf16_round(rng.standard_normal((B, OC, geo.OH, geo.OW)).astype(np.float32), u16)
        parts = [np.array(geom, np.int64), np.asarray(W.och, np.int64),
                 np.asarray(W.ich, np.int32), np.asarray(xoff, np.int64),
                 np.asarray(W.data, np.float32), np.asarray(lptr, np.int64),
                 np.asarray(dyoff, np.int64), np.asarray(perm, np.int64)]
        if bias:
            parts.append(rng.standard_normal(OC).astype(np.float32))
        parts += [X, dY]
        path = folder / f"case{i}.bin"
        path.write_bytes(b"".join(np.ascontiguousarray(a).tobytes() for a in parts))
        paths.append(str(path))
    return paths


def _conv_check(tmp_path, cc_args, run_prefix, lanes):
    exe = tmp_path / "conv_check"
    build = subprocess.run(cc_args + ["-I", str(ROOT / "include"),
                                      str(ROOT / "tests" / "c" / "bf16_conv_check.c"),
                                      "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    cases = _write_conv_cases(tmp_path, lanes)
    run = subprocess.run(run_prefix + [str(exe)] + cases, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == len(cases) + 1 and lines[-1] == "0 mismatches", run.stdout[-3000:]


def test_neon_bf16_conv_kernels_match_f32(tmp_path):
    missing = [t for t in (CC, QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: the NEON bfloat16 conv kernels "
                    "are NOT tested in this run")
    _conv_check(tmp_path, [CC, "-O2", "-static"], [QEMU], lanes=4)


def test_bf16_conv_check_natively(tmp_path):
    from sparseprop import _config

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    if _config.CPU_ISA < 1:
        pytest.skip("this CPU runs only the scalar kernels: nothing to check natively")
    import platform
    _conv_check(tmp_path, [cc, "-O2"], [], lanes=8 if platform.machine() in
                ("x86_64", "AMD64") else 4)
