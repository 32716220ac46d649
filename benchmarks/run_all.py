"""Regenerate every plot and table of the README's speed section.

    python benchmarks/run_all.py                 # layer sweeps + end-to-end, 1 and 2 threads
    python benchmarks/run_all.py --quick         # fewer sparsities and rounds
    python benchmarks/run_all.py --skip-e2e      # layer sweeps only
    python benchmarks/run_all.py --plots-only    # redraw from the JSON already in results/
    python benchmarks/as_isa.py avx2 benchmarks/run_all.py --tag avx2
                                                 # the same as an AVX2-only CPU would run it:
                                                 # *_avx2.json/.md/.png, and README blocks
                                                 # named *_AVX2 where the README has them

What it runs (all in this checkout's installed sparseprop, torch as the dense baseline):

* the linear sweep of ``bench_linear.py`` (weight 3072x768, batch 902) and
  the conv sweeps of ``bench_conv.py`` (its four ResNet layers, every conv
  algorithm) over 80-99% sparsity at each thread count - by calling their
  ``run()`` functions, so the numbers are exactly what those scripts print;
* the end-to-end training steps of ``examples/paper_speed.py`` (ResNet18
  95% batch 32, ResNet50 97% batch 16, BERT-base 90%/97% batch 4x128;
  ``--e2e-full`` for the whole paper-style table).

What it writes under ``benchmarks/results/``:

* ``linear_sweep.json``, ``conv_sweep.json``, ``e2e.json`` - the raw rows
  with the machine (CPU, cores, load, ISA, versions);
* ``linear.png`` and ``conv_<layer>.png`` - runtime vs sparsity, log-lin,
  forward and backward, one colour per thread count, dense torch as a
  horizontal line (like Figures 2-4 of the SparseProp paper);
* ``layers.md`` and ``e2e.md`` - the same numbers as markdown tables;
  the README's ``<!-- LINEAR -->``, ``<!-- CONV -->`` and ``<!-- E2E -->``
  blocks are rewritten from them (a summary of the conv sweep: "auto" only).
Took 16-17 minutes on a quiet 2-core machine (layer sweeps 2, end-to-end 14:
its steps run in blocks, see examples/paper_speed.py);
several times that when other jobs share the cores.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import bench_conv  # noqa: E402
import bench_linear  # noqa: E402
from _common import RESULTS, machine_info  # noqa: E402

FULL_SPARSITIES = [0.8, 0.9, 0.95, 0.97, 0.98, 0.99]

#: Set by ``--tag``: appended to every file written under results/ and to the
#: README block names, so a run on another CPU or ISA (e.g. under
#: ``benchmarks/as_isa.py avx2``) keeps its own tables beside the others.
TAG = ""


def _tagged(name):
    """results/ file name or README block name with this run's tag."""
    if not TAG:
        return name
    stem, dot, ext = name.partition(".")
    return f"{stem}_{TAG}{dot}{ext}" if dot else f"{name}_{TAG.upper()}"
QUICK_SPARSITIES = [0.8, 0.9, 0.95, 0.99]


# ---------------------------------------------------------------- running

def run_layers(threads, sparsities, repeats_linear, repeats_conv, conv_layers):
    info = machine_info()
    print(f"# layer sweeps - {info['cpu']}, {info['cores']} cores, ISA {info['isa']}, "
          f"torch {info.get('torch')}, load {info['loadavg_1min']}", flush=True)
    print(bench_linear.HEADER)
    lin = bench_linear.run(threads, sparsities, repeats=repeats_linear)
    info["loadavg_1min_after_linear"] = machine_info()["loadavg_1min"]
    _write(_tagged("linear_sweep.json"), {"machine": info, "rows": lin})
    print(bench_conv.HEADER)
    conv = bench_conv.run(threads, conv_layers, sparsities,
                          ["batch_last", "over_width", "auto"], repeats=repeats_conv)
    info["loadavg_1min_end"] = machine_info()["loadavg_1min"]
    _write(_tagged("conv_sweep.json"), {"machine": info, "rows": conv})


def run_e2e(threads, full, extra):
    out = RESULTS / _tagged("e2e.json")
    # --profile: where one step's time goes (sparse kernels vs the rest), for the table
    cmd = [sys.executable, str(ROOT / "examples" / "paper_speed.py"), "--threads",
           *map(str, threads), "--profile", "--json", str(out)]
    cmd += (["--full"] if full else []) + extra
    print("#", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _write(name, payload):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(payload, indent=1))


def _read(name):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------- plots and tables

def _caps_note(info):
    """' (dense torch capped at AVX2 by benchmarks/as_isa.py)' when it was."""
    caps = info.get("dense_isa_caps")
    return (f" (dense torch capped at {caps.get('MKL_ENABLE_INSTRUCTIONS', '?')} by "
            "benchmarks/as_isa.py)" if caps else "")


def _machine_line(info):
    load = info.get("loadavg_1min")
    load = "?" if load is None else f"{load:.1f}"
    end = info.get("loadavg_1min_end")
    if end is not None:
        load += f"-{end:.1f}"
    return (f"{info['cpu']}, {info['cores']} cores, ISA {info['isa']}{_caps_note(info)}, "
            f"torch {info.get('torch')}, 1-min load {load}")


def plot_sweep(rows, title, path, label_of=lambda r: "sparseprop"):
    """Runtime vs sparsity (log y), forward and backward, dense as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = sorted({r["threads"] for r in rows})
    labels = list(dict.fromkeys(label_of(r) for r in rows))
    styles = ["o-", "s--", "^-."]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, phase in zip(axes, ("fwd", "bwd"), strict=True):
        for ti, T in enumerate(threads):
            color = f"C{ti}"
            sub = [r for r in rows if r["threads"] == T]
            dense = sorted(r[f"dense_{phase}_ms"] for r in sub)[len(sub) // 2]
            ax.axhline(dense, color=color, lw=1.5, alpha=0.8,
                       label=f"dense torch, {T} thread{'s' if T > 1 else ''}")
            for li, lab in enumerate(labels):
                pts = sorted((r["sparsity"], r[f"sparse_{phase}_ms"]) for r in sub
                             if label_of(r) == lab)
                if not pts:
                    continue
                name = "sparseprop" if len(labels) == 1 else lab
                ax.plot([100 * s for s, _ in pts], [t for _, t in pts],
                        styles[li % len(styles)], color=color, ms=4,
                        label=f"{name}, {T} thread{'s' if T > 1 else ''}")
        ax.set_yscale("log")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("time (ms, log scale)")
        ax.set_title("forward" if phase == "fwd" else "backward (dX and dW)")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"# wrote {path}")


def _pair(r, key, fmt="{:.2f}"):
    f, b = r.get(f"{key}_fwd"), r.get(f"{key}_bwd")
    return "-" if f is None or b is None else f"{fmt.format(f)} / {fmt.format(b)}"


def _ratio(r, target):
    """'2.95x' with a mark where issue 5 sets a target: + met, - missed."""
    out = []
    for ph in ("fwd", "bwd"):
        v, t = r[f"speedup_{ph}"], (target or {}).get(ph)
        out.append(f"{v:.2f}x" + ("" if t is None else ("+" if v >= t else "-")))
    return " / ".join(out)


def _scaling_rows(rows, key):
    """t(2 threads) / t(1 thread) of each kernel, per ``key(row)``."""
    one = {key(r): r for r in rows if r["threads"] == 1}
    out = []
    for r in rows:
        base = one.get(key(r))
        if r["threads"] != 2 or base is None:
            continue
        out.append((r, {k: r[f"{k}_ms"] / base[f"{k}_ms"]
                        for k in ("sparse_fwd", "sparse_bwd", "dense_fwd", "dense_bwd")}))
    return out


def linear_markdown(lin):
    rows = lin["rows"]
    lines = [f"Linear 3072x768, batch 902, float32 - {_machine_line(lin['machine'])}. "
             "Speedup = dense torch time / sparseprop time, same run (+ / -: issue 5's target "
             "met / missed); GFLOP/s count useful work only (2·nnz·batch per product).", "",
             "| threads | sparsity | dense fwd / bwd ms | sparse fwd / bwd ms | speedup fwd / bwd "
             "| target | reference | GFLOP/s sparse | GFLOP/s dense |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tf, tb = r.get("target_speedup_fwd"), r.get("target_speedup_bwd")
        target = {"fwd": tf, "bwd": tb} if tf is not None else None
        lines.append(f"| {r['threads']} | {100 * r['sparsity']:g}% | "
                     f"{r['dense_fwd_ms']:.1f} / {r['dense_bwd_ms']:.1f} | "
                     f"{r['sparse_fwd_ms']:.2f} / {r['sparse_bwd_ms']:.2f} | "
                     f"{_ratio(r, target)} | {_pair(r, 'target_speedup', '{:.1f}')} | "
                     f"{_pair(r, 'reference_speedup')} | {_pair(r, 'gflops_sparse', '{:.0f}')} | "
                     f"{_pair(r, 'gflops_dense', '{:.0f}')} |")
    scal = _scaling_rows(rows, lambda r: r["sparsity"])
    if scal:
        lines += ["", "Scaling, time with 2 threads / time with 1 thread (issue 5 aims for "
                  "<= 0.55 for every sparse kernel):", "",
                  "| sparsity | sparse fwd | sparse bwd | dense fwd | dense bwd |",
                  "|---|---|---|---|---|"]
        for r, q in scal:
            lines.append(f"| {100 * r['sparsity']:g}% | {q['sparse_fwd']:.2f} | "
                         f"{q['sparse_bwd']:.2f} | {q['dense_fwd']:.2f} | {q['dense_bwd']:.2f} |")
    return "\n".join(lines) + "\n"


def conv_markdown(conv):
    """The whole conv sweep (every algorithm) and the scaling of "auto"."""
    rows = conv["rows"]
    lines = [f"Conv2d, float32 - {_machine_line(conv['machine'])}. Speedup = dense torch time "
             "/ sparseprop time, same run; reference: the paper's code, best variant, 1 thread "
             "(issue 5 asks for 2x it); GFLOP/s count useful work only.", "",
             "| layer | threads | sparsity | algorithm | dense fwd / bwd ms | sparse fwd / bwd ms "
             "| speedup fwd / bwd | reference | GFLOP/s sparse | GFLOP/s dense |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        algo = r["algorithm"] if r["algorithm"] != "auto" else f"auto ({r['algorithm_used']})"
        ref = r.get("reference_speedup_fwd")
        target = ({"fwd": 2 * ref, "bwd": 2 * r["reference_speedup_bwd"]} if ref else None)
        lines.append(f"| {r['layer']} | {r['threads']} | {100 * r['sparsity']:g}% | {algo} | "
                     f"{r['dense_fwd_ms']:.2f} / {r['dense_bwd_ms']:.2f} | "
                     f"{r['sparse_fwd_ms']:.2f} / {r['sparse_bwd_ms']:.2f} | "
                     f"{_ratio(r, target)} | {_pair(r, 'reference_speedup')} | "
                     f"{_pair(r, 'gflops_sparse', '{:.0f}')} | "
                     f"{_pair(r, 'gflops_dense', '{:.0f}')} |")
    scal = _scaling_rows([r for r in conv["rows"] if r["algorithm"] == "auto"],
                         lambda r: (r["layer"], r["sparsity"]))
    if scal:
        lines += ["", "Scaling of `algorithm=\"auto\"`, time with 2 threads / time with 1 "
                  "thread (issue 5 aims for <= 0.55 for every sparse kernel):", "",
                  "| layer | sparsity | sparse fwd | sparse bwd | dense fwd | dense bwd |",
                  "|---|---|---|---|---|---|"]
        for r, q in scal:
            lines.append(f"| {r['layer']} | {100 * r['sparsity']:g}% | {q['sparse_fwd']:.2f} | "
                         f"{q['sparse_bwd']:.2f} | {q['dense_fwd']:.2f} | {q['dense_bwd']:.2f} |")
    return "\n".join(lines) + "\n"


def conv_summary_markdown(conv):
    """README's conv table: ``algorithm="auto"``, one row per layer and sparsity,
    both thread counts side by side."""
    auto = [r for r in conv["rows"] if r["algorithm"] == "auto"]
    by = {(r["layer"], r["sparsity"], r["threads"]): r for r in auto}
    lines = [f"Conv2d, float32, `algorithm=\"auto\"` - {_machine_line(conv['machine'])}. "
             "Speedup = dense torch time / sparseprop time at the same thread count, same run "
             "(+ / -: at least / below twice the reference, the paper's code, best variant, 1 "
             "thread); GFLOP/s count useful work only; t2/t1 = time with 2 threads / time "
             "with 1.", "",
             "| layer | sparsity | chosen | speedup fwd / bwd, 1 thread | 2 threads "
             "| reference | GFLOP/s sparse (dense), 1 thread | t2/t1 fwd / bwd |",
             "|---|---|---|---|---|---|---|---|"]
    for (layer, s, T), r1 in by.items():
        if T != 1:
            continue
        r2 = by.get((layer, s, 2))
        ref = r1.get("reference_speedup_fwd")
        target = {"fwd": 2 * ref, "bwd": 2 * r1["reference_speedup_bwd"]} if ref else None
        two = _ratio(r2, None) if r2 else "-"
        t21 = (f"{r2['sparse_fwd_ms'] / r1['sparse_fwd_ms']:.2f} / "
               f"{r2['sparse_bwd_ms'] / r1['sparse_bwd_ms']:.2f}" if r2 else "-")
        lines.append(f"| {layer} | {100 * s:g}% | {r1['algorithm_used']} | {_ratio(r1, target)} "
                     f"| {two} | {_pair(r1, 'reference_speedup')} | "
                     f"{r1['gflops_sparse_fwd']:.0f} / {r1['gflops_sparse_bwd']:.0f} "
                     f"({r1['gflops_dense_fwd']:.0f} / {r1['gflops_dense_bwd']:.0f}) | {t21} |")
    return "\n".join(lines) + "\n"


def layers_markdown(lin, conv):
    parts = ([linear_markdown(lin)] if lin else []) + ([conv_markdown(conv)] if conv else [])
    return "\n".join(parts)


def update_readme(block, text):
    """Replace README.md's text between <!-- block --> and <!-- /block -->."""
    readme = ROOT / "README.md"
    src = readme.read_text()
    start, end = f"<!-- {block} -->\n", f"<!-- /{block} -->"
    i, j = src.find(start), src.find(end)
    if i < 0 or j < i:
        print(f"# README.md has no {start.strip()} ... {end} block: not updated")
        return
    readme.write_text(src[:i + len(start)] + text + src[j:])
    print(f"# updated the {block} block of {readme}")


def e2e_markdown(e2e):
    sys.path.insert(0, str(ROOT / "examples"))
    import paper_speed

    load = ""
    if e2e.get("loadavg_1min_start") is not None:
        load = f", 1-min load {e2e['loadavg_1min_start']:.1f}-{e2e['loadavg_1min_end']:.1f}"
    timing = e2e.get("timing")
    if timing and timing["block"] > 1:
        how = (f"medians of {timing['timed_steps']} steps per model, run in blocks of "
               f"{timing['block']} consecutive steps that alternate between the models, the "
               "first step of each block untimed")
    else:
        how = "medians of interleaved steps"
    head = (f"End-to-end training step, {e2e.get('cpu', 'CPU')}, {e2e.get('cores')} cores, "
            f"ISA {e2e.get('isa')}{_caps_note(e2e)}, torch {e2e.get('torch')}{load}; "
            "speedup = dense step "
            f"time / sparse step time ({how}, same run); peak = "
            "resident-set high-water mark of one step in a fresh process.\n\n")
    out = head + paper_speed.markdown_table(e2e["rows"]) + "\n"
    prof = [r for r in e2e["rows"] if r.get("profile_ms")]
    if prof:
        cats = [c for c, _ in paper_speed.CATEGORIES] + ["other"]
        out += ("\nWhere one training step's time goes (torch.profiler, self CPU time of one "
                "profiled step in ms; sparse step, with the dense step's total for "
                "comparison):\n\n")
        out += "| model | threads | sparsity | " + " | ".join(cats) + " | total | dense total |\n"
        out += "|" + "---|" * (len(cats) + 5) + "\n"
        for r in prof:
            sparse = {k: v for k, v in r["profile_ms"].items() if k != "dense"}
            (label, sp), dense = next(iter(sparse.items())), r["profile_ms"]["dense"]
            out += (f"| {r['model']} | {r['threads']} | {label} | "
                    + " | ".join(f"{sp.get(c, 0.0):.0f}" for c in cats)
                    + f" | {sum(sp.values()):.0f} | {sum(dense.values()):.0f} |\n")
    return out


def make_plots():
    lin, conv = _read(_tagged("linear_sweep.json")), _read(_tagged("conv_sweep.json"))
    e2e = _read(_tagged("e2e.json"))
    if lin:
        plot_sweep(lin["rows"], "Sparse linear 3072x768, batch 902 (float32) - "
                   + _machine_line(lin["machine"]), RESULTS / _tagged("linear.png"))
    if conv:
        for layer in dict.fromkeys(r["layer"] for r in conv["rows"]):
            rows = [r for r in conv["rows"] if r["layer"] == layer]
            r0 = rows[0]
            title = (f"Sparse conv {'x'.join(map(str, r0['weight']))} on "
                     f"{'x'.join(map(str, r0['input']))}, stride {r0['stride']} - "
                     + _machine_line(conv["machine"]))
            plot_sweep(rows, title, RESULTS / _tagged(f"conv_{layer}.png"),
                       label_of=lambda r: r["algorithm"])
    if lin or conv:
        (RESULTS / _tagged("layers.md")).write_text(layers_markdown(lin, conv))
        print(f"# wrote {RESULTS / _tagged('layers.md')}")
    if lin:
        update_readme(_tagged("LINEAR"), linear_markdown(lin))
    if conv:
        update_readme(_tagged("CONV"), conv_summary_markdown(conv))
    if e2e:
        (RESULTS / _tagged("e2e.md")).write_text(e2e_markdown(e2e))
        print(f"# wrote {RESULTS / _tagged('e2e.md')}")
        update_readme(_tagged("E2E"), e2e_markdown(e2e))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--quick", action="store_true", help="fewer sparsities and rounds")
    p.add_argument("--skip-layers", action="store_true")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--e2e-full", action="store_true", help="the whole paper-style table")
    p.add_argument("--conv-layers", nargs="+", default=list(bench_conv.LAYERS),
                   choices=list(bench_conv.LAYERS))
    p.add_argument("--plots-only", action="store_true", help="redraw from results/*.json")
    p.add_argument("--tag", default="",
                   help="suffix of every results/ file and README block (e.g. avx2)")
    args, extra = p.parse_known_args(argv)
    global TAG
    TAG = args.tag
    if not args.plots_only:
        if not args.skip_layers:
            sp = QUICK_SPARSITIES if args.quick else FULL_SPARSITIES
            run_layers(args.threads, sp, 5 if args.quick else 15, 3 if args.quick else 7,
                       args.conv_layers)
        if not args.skip_e2e:
            run_e2e(args.threads, args.e2e_full, extra)
    make_plots()
    return 0


if __name__ == "__main__":
    sys.exit(main())
