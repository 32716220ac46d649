"""Shared helpers for the benchmark scripts: timing, machine description, output.

Conventions (see ../shared/ECOSYSTEM.md): threads pinned per measurement,
warm-up runs first, the median of repeated runs reported, and every speed
quoted as a ratio against a dense baseline measured in the same process run.
"""
import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def median_time(fn, *, warmup=3, repeats=15, min_time=0.0):
    """Median wall time of fn() in seconds over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - t_start) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeats:
            break
    return statistics.median(times)


def machine_info():
    """CPU model, core count, load average, ISA and library versions."""
    import numpy as np

    import sparseprop

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sparseprop": sparseprop.__version__,
        "isa": sparseprop.config()["isa"],
        "openmp": sparseprop.openmp_enabled(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_results(name, payload):
    """Write payload as JSON under benchmarks/results/; return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
