"""Markdown tables of the many-core thread curve (issue 5, item 3).

Reads what `bash benchmarks/many_core.sh` wrote on a machine with more cores
(results/linear_16core.json, results/conv_16core_56x56.json,
results/conv_16core_others.json) and writes results/many_core.md: for every
layer and sparsity, the speed-up over dense at each thread count, and the
time at the largest thread count over the time at 1 thread, sparse and dense.

Run:  python benchmarks/many_core_report.py      (no sparseprop or torch needed)
"""
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = ["linear_16core", "conv_16core_56x56", "conv_16core_others"]


def _rows(name):
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None, []
    data = json.loads(path.read_text())
    rows = data["rows"]
    for r in rows:
        r.setdefault("layer", "linear 3072x768 b902")
        r.setdefault("algorithm", "-")
    # The conv sweep over both algorithms also has "auto": keep the auto rows.
    rows = [r for r in rows if r["algorithm"] in ("auto", "-")]
    return data, rows


def curve_table(rows):
    """One line per (layer, sparsity): speed-up fwd / bwd at each thread count,
    and the time at the largest thread count over the 1-thread time (sparse,
    then dense)."""
    threads = sorted({r["threads"] for r in rows})
    head = ["layer", "sparsity"] + [f"{t}T fwd / bwd" for t in threads]
    head += [f"t{threads[-1]}/t1 sparse fwd / bwd", f"t{threads[-1]}/t1 dense fwd / bwd"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = list(dict.fromkeys((r["layer"], r["sparsity"]) for r in rows))
    for layer, s in keys:
        by_t = {r["threads"]: r for r in rows if (r["layer"], r["sparsity"]) == (layer, s)}
        cells = [layer, f"{s:.2f}"]
        for t in threads:
            r = by_t.get(t)
            cells.append(f"{r['speedup_fwd']:.2f}x / {r['speedup_bwd']:.2f}x" if r else "")
        lo, hi = by_t.get(threads[0]), by_t.get(threads[-1])
        for kind in ("sparse", "dense"):
            if lo and hi:
                cells.append(f"{hi[f'{kind}_fwd_ms'] / lo[f'{kind}_fwd_ms']:.2f} / "
                             f"{hi[f'{kind}_bwd_ms'] / lo[f'{kind}_bwd_ms']:.2f}")
            else:
                cells.append("")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    parts = ["# Many-core thread curve", "",
             "Speed-up = dense torch time / sparseprop time at the same thread count, same "
             "process run, medians of 7 interleaved rounds (`algorithm=\"auto\"` for conv). "
             "Regenerate the data with `bash benchmarks/many_core.sh` on the many-core "
             "machine, this page with `python benchmarks/many_core_report.py`.", ""]
    found = False
    for name in SOURCES:
        data, rows = _rows(name)
        if not rows:
            continue
        found = True
        m = data["machine"]
        parts += [f"## {name}", "", data.get("note", ""), "",
                  f"Machine: {m['cpu']}, {m.get('cores', '?')} cores, ISA {m['isa']}, "
                  f"torch {m['torch']}, 1-min load {m['loadavg_1min']:.1f}-"
                  f"{m.get('loadavg_1min_end', m['loadavg_1min']):.1f}.", "",
                  curve_table(rows), ""]
    if not found:
        sys.exit("no many-core results under benchmarks/results/: run benchmarks/many_core.sh")
    path = RESULTS / "many_core.md"
    path.write_text("\n".join(parts))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
