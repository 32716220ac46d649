"""Shared helpers for the benchmark scripts: timing, machine description, output.

Conventions (see ../shared/ECOSYSTEM.md): threads pinned per measurement,
warm-up runs first, the median of repeated runs reported, and every speed
quoted as a ratio against a dense baseline measured in the same process run.
"""
import json
import statistics
import time
from pathlib import Path

# One implementation of the machine description and of interleaved timing, shared
# with ``python -m sparseprop bench``.
from sparseprop._bench import interleaved_times, machine_info  # noqa: F401

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


def write_results(name, payload):
    """Write payload as JSON under benchmarks/results/; return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
