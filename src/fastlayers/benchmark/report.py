"""Reading a report: the table, the comparison of two reports, the plot."""
from __future__ import annotations

import json

from .runner import SCHEMA
from .timing import machine_line
from .workloads import label_order

COLUMNS = ("case", "dir", "backend", "median ms", "(min - max)", "n", "rate", "% roof", "vs best other")


def load(path):
    """A report written by ``--json``; refuses files of another kind with a clear error."""
    with open(path) as f:
        report = json.load(f)
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a fastlayers bench report (expected schema {SCHEMA!r})")
    return report


def _ms(v):
    return f"{v:.3g}" if v < 10 else f"{v:.0f}" if v >= 1000 else f"{v:.1f}"


def _short(direction):
    return "fwd" if direction == "forward" else "bwd"


def format_table(report):
    """The report as text: the machine, the roofs, one row per measurement, the skip notes."""
    roofs, settings = report["roofs"], report["settings"]
    M, K, N = roofs["gemm_shape"]
    lines = [
        f"fastlayers bench, {report['date']}, {settings['dtype']}",
        f"machine: {machine_line(report['machine'])}",
        f"roofs measured in this run: GEMM {roofs['gemm_gflops']:.1f} GFLOP/s (NumPy BLAS, {M}x{K} @ {K}x{N}), "
        f"copy {roofs['copy_gbs']:.1f} GB/s; % roof = rate / roof",
        *_load_warning(report["machine"]),
        "vs best other = median of the fastest other backend / this median (> 1: this one is faster)",
        f"{settings['note']}; median over n rounds after a warm-up call",
        "",
    ]
    rows = [COLUMNS]
    for r in report["results"]:
        ratio = "" if r["vs_best_other"] is None else f"{r['vs_best_other']:.2f}x {r['best_other']}"
        rows.append((
            r["case"], _short(r["direction"]), r["backend"], _ms(r["median_ms"]),
            f"({_ms(r['min_ms'])} - {_ms(r['max_ms'])})", str(r["rounds"]), f"{r['rate']:.2f} {r['rate_unit']}",
            f"{r['roof_pct']:.0f}%", ratio,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    right = {3, 5, 7}
    for row in rows:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    notes = {}
    for s in report["skipped"]:
        backends, cases = notes.setdefault(" ".join(s["reason"].split()), ({}, {}))
        backends[s["backend"]] = cases[s["case"]] = None
    if notes:
        lines.append("")
    for reason, (backends, cases) in notes.items():
        lines.append(f"skipped {', '.join(backends)} on {', '.join(cases)}: {reason}")
    return "\n".join(lines)


def _load_warning(machine):
    load = machine.get("load_average")
    if load is None or load < machine["usable_cpus"]:
        return []
    return [f"warning: load average {load:.1f} on {machine['usable_cpus']} CPUs when the run started: "
            "other processes competed for the CPUs, figures are slower and noisier than this machine can do"]


def _key(r):
    return r["case"], r["direction"], r["backend"], r["dtype"]


def compare(a, b, name_a="A", name_b="B"):
    """Per-case ratios of two reports: rows both measured (same case, direction, backend, dtype),
    then the best backend of each for every case and direction both contain (a CPU run against a
    GPU run shares no backend but still compares). Ratio = A's median / B's (> 1: B is faster)."""
    lines = [f"A = {name_a} ({a['date']}; {machine_line(a['machine'])})",
             f"B = {name_b} ({b['date']}; {machine_line(b['machine'])})",
             "A/B = A's median / B's median (> 1: B is faster)", ""]
    rows_b = {_key(r): r for r in b["results"]}
    rows = [("case", "dir", "backend", "dtype", "A ms", "B ms", "A/B")]
    for r in a["results"]:
        o = rows_b.get(_key(r))
        if o is not None:
            rows.append((*_key(r), _ms(r["median_ms"]), _ms(o["median_ms"]), f"{r['median_ms'] / o['median_ms']:.2f}"))
    if len(rows) == 1:
        lines.append("no (case, direction, backend, dtype) measured in both")
    else:
        lines += _columns(rows)
    best_a, best_b = _best(a), _best(b)
    rows = [("case", "dir", "best in A", "A ms", "best in B", "B ms", "A/B")]
    for key in best_a:
        if key in best_b:
            ra, rb = best_a[key], best_b[key]
            rows.append((*key, ra["backend"], _ms(ra["median_ms"]), rb["backend"], _ms(rb["median_ms"]),
                         f"{ra['median_ms'] / rb['median_ms']:.2f}"))
    if len(rows) > 1:
        lines += ["", "fastest backend of each run:"] + _columns(rows)
    return "\n".join(lines)


def _best(report):
    best = {}
    for r in report["results"]:
        key = r["case"], r["direction"]
        if key not in best or r["median_ms"] < best[key]["median_ms"]:
            best[key] = r
    return best


def _columns(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def plot(report, path):
    """Write a PNG: median time per case and backend as grouped bars (log scale), and below, each
    sweep as lines of time against its varying size (how cost grows with work)."""
    from matplotlib.backends.backend_agg import (
        FigureCanvasAgg,  # the bench extra; imported only here
    )
    from matplotlib.figure import Figure

    results = report["results"]
    sweeps = sorted({r["sweep"] for r in results if r["sweep"]})
    sweeps = [s for s in sweeps if len({r["case"] for r in results if r["sweep"] == s}) > 1]
    fig = Figure(figsize=(14, 5 + 4 * bool(sweeps)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1 + bool(sweeps), max(1, len(sweeps)))
    ax = fig.add_subplot(grid[0, :])
    groups = list(dict.fromkeys((r["case"], r["direction"]) for r in results))
    backends = sorted({r["backend"] for r in results}, key=label_order)
    width = 0.8 / max(1, len(backends))
    by_key = {(r["case"], r["direction"], r["backend"]): r["median_ms"] for r in results}
    for j, backend in enumerate(backends):
        xs = [i + (j - (len(backends) - 1) / 2) * width for i, g in enumerate(groups) if (*g, backend) in by_key]
        ys = [by_key[(*g, backend)] for g in groups if (*g, backend) in by_key]
        ax.bar(xs, ys, width, label=backend, color=f"C{j}")
    ax.set_xticks(range(len(groups)), [f"{c} {_short(d)}" for c, d in groups], fontsize=8, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("median time per call (ms, log)")
    machine = report["machine"]
    ax.set_title(f"fastlayers bench, {report['settings']['dtype']}, {machine['cpu']}, "
                 f"{machine['threads']} threads, {report['date'][:10]}")
    ax.legend(ncols=len(backends), fontsize=8)
    for k, sweep in enumerate(sweeps):
        ax = fig.add_subplot(grid[1, k])
        axis = "N" if any(r["op"] == "conv2d" for r in results if r["sweep"] == sweep) else "T"
        for j, backend in enumerate(backends):
            for direction, style in (("forward", "-o"), ("backward", "--s")):
                pts = sorted((r["shape"][0], r["median_ms"]) for r in results
                             if r["sweep"] == sweep and r["backend"] == backend and r["direction"] == direction)
                if pts:
                    ax.plot(*zip(*pts), style, color=f"C{j}", label=f"{backend} {_short(direction)}")
        sizes = sorted({r["shape"][0] for r in results if r["sweep"] == sweep})
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("median ms (log)")
        ax.set_title(f"sweep: {sweep}")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
