"""Reading a report: the table, the per-op comparison table, the comparison of two reports, the plot."""
from __future__ import annotations

import json

from ..ops._workload import SWAPPED_FAMILY, Workload
from .models import MODEL_LEGEND, MODELS
from .runner import SCHEMA, allocates, family, label_order
from .workloads import WORKLOADS
from .timing import MIN_ROUND_S, MIN_ROUNDS_FOR_SPREAD, UNSTABLE_SPREAD, WARMUP_S, allocator_line, machine_line

COLUMNS = ("case", "dir", "backend", "median ms", "(min - max)", "spread", "n", "rate", "% roof", "vs best other")


def load(path):
    """A report written by ``--json``; refuses files of another kind with a clear error."""
    with open(path) as f:
        report = json.load(f)
    if not isinstance(report, dict) or not str(report.get("schema", "")).startswith("fastlayers-bench/"):
        raise ValueError(f"{path} is not a fastlayers bench report (expected schema {SCHEMA!r})")
    if report["schema"] != SCHEMA:
        raise ValueError(f"{path} was written by another fastlayers version (schema {report['schema']!r}, expected "
                         f"{SCHEMA!r}; in schema 1 the cpu and cuda rows wrote into out= buffers): rerun it")
    return report


def _ms(v):
    return f"{v:.3g}" if v < 10 else f"{v:.0f}" if v >= 1000 else f"{v:.1f}"


def _short(r):
    """Result ``r``'s direction as the tables name it: fwd/bwd for an op, infer/train for a model."""
    names = WORKLOADS[r["op"]].direction_names if r["op"] in WORKLOADS else Workload.direction_names
    return names[r["direction"]]


def _spread_cell(r):
    """The relative spread, ``!`` when unstable; ``?`` alone when too few rounds to tell."""
    if r["unstable"] is None:
        return "?"
    return f"{100 * r['spread']:.0f}%{'!' if r['unstable'] else ''}"


def _legend(report):
    roofs, settings = report["roofs"], report["settings"]
    M, K, N = roofs["gemm_shape"]
    torch = settings["torch"]
    return [
        f"fastlayers bench, {report['date']}, {settings['dtype']}",
        f"machine: {machine_line(report['machine'])}",
        *([f"PyTorch {torch['version']} on {torch['device']}, {torch['threads']} threads, in its own process"]
          if torch else []),
        *([f"{SWAPPED_FAMILY}: PyTorch's model with its Conv2d and MaxPool2d swapped for fastlayers.torch's "
           f"and each ReLU -> MaxPool2d pair run as one call (fastlayers.torch.convert(model, fuse=True)), in "
           f"PyTorch's process"]
          if any(r["backend"] == SWAPPED_FAMILY for r in report["results"]) else []),
        *(f"{engine} {info['version']}, {info['threads']} threads, float32, in its own process: forwards as "
          f"ONNX models (an op one node, a model the whole network)"
          for engine, info in settings.get("engines", {}).items()),
        f"roofs measured in this run: GEMM {roofs['gemm_gflops']:.1f} GFLOP/s (NumPy BLAS, {M}x{K} @ {K}x{N}), "
        f"copy {roofs['copy_gbs']:.1f} GB/s; % roof = rate / roof",
        allocator_line(settings["allocator"]),
        *_load_warning(report["machine"]),
        *_blas_core_warning(report["machine"]),
        "every row allocates its outputs on each call, as PyTorch does; +out: fastlayers writing into "
        "preallocated out= buffers instead",
        "vs best other = median of the fastest other backend (allocating) / this median (> 1: this one is faster)",
        *([MODEL_LEGEND] if any(r["op"] in MODELS for r in report["results"]) else []),
        f"median over n rounds (of calls lasting at least {1e3 * MIN_ROUND_S:g} ms) after "
        f"{1e3 * WARMUP_S:g} ms of warm-up calls; spread = interquartile range / median, "
        f"! = unstable (over {100 * UNSTABLE_SPREAD:.0f}%), ? = under {MIN_ROUNDS_FOR_SPREAD} rounds to tell",
        "",
    ]


def _align(rows, right):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def format_table(report):
    """The report as text: the machine, the roofs, one row per measurement (a blank line between
    cases), the unstable ones counted, the skip notes."""
    rows, breaks = [COLUMNS], set()
    for r in report["results"]:
        if len(rows) > 1 and r["case"] != report["results"][len(rows) - 2]["case"]:
            breaks.add(len(rows))
        ratio = "" if r["vs_best_other"] is None else f"{r['vs_best_other']:.2f}x {r['best_other']}"
        rows.append((
            r["case"], _short(r), r["backend"], _ms(r["median_ms"]),
            f"({_ms(r['min_ms'])} - {_ms(r['max_ms'])})", _spread_cell(r), str(r["rounds"]),
            f"{r['rate']:.2f} {r['rate_unit']}", f"{r['roof_pct']:.0f}%", ratio,
        ))
    lines = _legend(report)
    for i, line in enumerate(_align(rows, right={3, 5, 6, 8})):
        lines += [""] * (i in breaks) + [line]
    lines += _summary(report)
    return "\n".join(lines)


def _summary(report):
    lines = []
    unstable = [r for r in report["results"] if r["unstable"]]
    if unstable:
        cases = ",".join(dict.fromkeys(r["case"] for r in unstable))
        lines += ["", f"{len(unstable)} of {len(report['results'])} measurements unstable (!): their ratios may not "
                      f"hold; rerun on a quieter machine, or spread over time, e.g. --cases {cases} --repeat 15 "
                      f"--passes 3"]
    notes = {}
    for s in report["skipped"]:
        backends, cases = notes.setdefault(" ".join(s["reason"].split()), ({}, {}))
        backends[s["backend"]] = cases[s["case"]] = None
    if notes:
        lines.append("")
    for reason, (backends, cases) in notes.items():
        lines.append(f"skipped {', '.join(backends)} on {', '.join(cases)}: {reason}")
    return lines


def format_wide(report):
    """The per-op comparison tables: for each op, one row per case and direction (and fwd+bwd,
    the sum of the medians, where both were measured), one column of median ms per backend,
    then the fastest allocating backend and its speed-up over the fastest other family."""
    lines = _legend(report) + ["fwd+bwd = sum of the two medians; ! = unstable"]
    for op in dict.fromkeys(r["op"] for r in report["results"]):
        lines += ["", f"{op}:"] + _wide_rows([r for r in report["results"] if r["op"] == op])
    return "\n".join(lines + _summary(report))


def _wide_rows(results):
    labels = sorted({r["backend"] for r in results}, key=label_order)
    cells = {}
    for r in results:
        cells.setdefault((r["case"], _short(r)), {})[r["backend"]] = (r["median_ms"], r["unstable"])
    cases = list(dict.fromkeys(r["case"] for r in results))
    for case in cases:
        fwd, bwd = cells.get((case, "fwd"), {}), cells.get((case, "bwd"), {})
        both = {b: (fwd[b][0] + bwd[b][0], bool(fwd[b][1] or bwd[b][1])) for b in fwd if b in bwd}
        if both:
            cells[case, "fwd+bwd"] = both
    directions = ("fwd", "bwd", "fwd+bwd", "infer", "train")
    rows = [("case", "dir", *(f"{b} ms" for b in labels), "fastest", "vs next family")]
    for (case, direction), by_label in sorted(cells.items(),
                                              key=lambda kv: (cases.index(kv[0][0]), directions.index(kv[0][1]))):
        timed = {b: v for b, v in by_label.items() if allocates(b)}
        best = min(timed, key=lambda b: timed[b][0])
        others = [v[0] for b, v in timed.items() if family(b) != family(best)]
        rows.append((case, direction,
                     *(f"{_ms(by_label[b][0])}{'!' if by_label[b][1] else ''}" if b in by_label else "-" for b in labels),
                     best, f"{min(others) / timed[best][0]:.2f}x" if others else ""))
    return _align(rows, right=set(range(2, 2 + len(labels))))


def _load_warning(machine):
    load = machine.get("load_average")
    if load is None or load < machine["usable_cpus"]:
        return []
    return [f"warning: load average {load:.1f} on {machine['usable_cpus']} CPUs when the run started: "
            "other processes competed for the CPUs, figures are slower and noisier than this machine can do"]


# OpenBLAS's kernels for AVX-512 CPUs (its DYNAMIC_ARCH core names).
AVX512_OPENBLAS_CORES = frozenset({"SkylakeX", "Cooperlake", "SapphireRapids"})


def _blas_core_warning(machine):
    """A warning when OPENBLAS_CORETYPE holds OpenBLAS (NumPy's, and the one fastlayers' GEMM
    paths call) to kernels older than an AVX-512 CPU runs: those paths then run at about half
    the speed the CPU can do, while PyTorch, ONNX Runtime and OpenVINO never read the variable."""
    forced = machine.get("openblas_coretype")
    slower = sorted({b["architecture"] for b in machine["blas"]
                     if b.get("architecture") and b["architecture"] not in AVX512_OPENBLAS_CORES})
    if not forced or machine.get("kernel_isa") != "x86-64-v4" or not slower:
        return []
    return [f"warning: OPENBLAS_CORETYPE={forced} runs OpenBLAS's {'/'.join(slower)} kernels on this AVX-512 CPU: "
            "fastlayers' GEMM-based paths (im2col, linear, the recurrent weight gradients) and NumPy's run at "
            "about half speed, the other engines are unaffected; unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE "
            "for this command to measure what the CPU can do"]


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
    """Write a PNG, three panels: the median time per case and backend as grouped bars (log
    scale) with the interquartile range as error bars and unstable ones hatched; the speed-up of
    each backend over the fastest other one per case (bars up from 1: faster, down: slower);
    each sweep as lines of time against its varying size (how cost grows with work)."""
    from matplotlib.backends.backend_agg import (
        FigureCanvasAgg,  # the bench extra; imported only here
    )
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    results = report["results"]
    sweeps = sorted({r["sweep"] for r in results if r["sweep"]})
    sweeps = [s for s in sweeps if len({r["case"] for r in results if r["sweep"] == s}) > 1]
    groups = list(dict.fromkeys((r["case"], r["direction"]) for r in results))
    names = {(r["case"], r["direction"]): _short(r) for r in results}
    backends = sorted({r["backend"] for r in results}, key=label_order)
    by_key = {(r["case"], r["direction"], r["backend"]): r for r in results}
    fig = Figure(figsize=(max(14, 0.9 * len(groups)), 10 + 4 * bool(sweeps)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2 + bool(sweeps), max(1, len(sweeps)))
    times_ax, speed_ax = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, :])
    color = {b: f"C{j % 10}" for j, b in enumerate(backends)}
    for i, g in enumerate(groups):
        present = [by_key[(*g, b)] for b in backends if (*g, b) in by_key]
        width = 0.8 / len(present)
        xs = [i + (j - (len(present) - 1) / 2) * width for j in range(len(present))]
        colors = [color[r["backend"]] for r in present]
        bars = times_ax.bar(xs, [r["median_ms"] for r in present], width, color=colors,
                            yerr=[[r["median_ms"] - r["q1_ms"] for r in present],
                                  [r["q3_ms"] - r["median_ms"] for r in present]],
                            error_kw=dict(elinewidth=0.8, capsize=1.5))
        for bar, r in zip(bars, present):
            bar.set_hatch("//" if r["unstable"] else "")
        ratios = [(x, r) for x, r in zip(xs, present) if r["vs_best_other"]]
        speed_ax.bar([x for x, _ in ratios], [r["vs_best_other"] - 1 for _, r in ratios], width, bottom=1,
                     color=[color[r["backend"]] for _, r in ratios])
    labels = [f"{g[0]} {names[g]}" for g in groups]
    for ax in (times_ax, speed_ax):
        ax.set_xticks(range(len(groups)), labels, fontsize=8, rotation=30, ha="right")
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_yscale("log")
        ax.grid(axis="y", which="major", alpha=0.3)
    times_ax.set_ylabel("median ms per call (log)\nerror bars: interquartile range")
    machine = report["machine"]
    times_ax.set_title(f"fastlayers bench, {report['settings']['dtype']}, {machine['cpu']}, "
                       f"{machine['threads']} threads, {report['date'][:10]}: time per call "
                       "(+out: into preallocated buffers; every other bar allocates)")
    handles = [Patch(color=color[b]) for b in backends]
    names = list(backends)
    if any(r["unstable"] for r in results):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//"))
        names.append(f"unstable\n(spread > {100 * UNSTABLE_SPREAD:.0f}%)")
    times_ax.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    speed_ax.axhline(1, color="black", linewidth=0.8)
    speed_ax.set_ylabel("speed-up over the fastest\nother backend (log)")
    speed_ax.set_title("speed-up per case: above 1 this backend beats every other family by that factor; "
                       "below 1 the fastest other one is 1/that faster")
    for k, sweep in enumerate(sweeps):
        ax = fig.add_subplot(grid[2, k])
        for backend in backends:
            for direction, style in (("forward", "-o"), ("backward", "--s")):
                pts = sorted((r["shape"][0], r["median_ms"], r["q1_ms"], r["q3_ms"]) for r in results
                             if r["sweep"] == sweep and r["backend"] == backend and r["direction"] == direction)
                if pts:
                    n, med, q1, q3 = zip(*pts)
                    ax.errorbar(n, med, yerr=[[m - a for m, a in zip(med, q1)], [b - m for m, b in zip(med, q3)]],
                                fmt=style, color=color[backend], capsize=2,
                                label=f"{backend} {Workload.direction_names[direction]}",
                                markersize=3)
        sizes = sorted({r["shape"][0] for r in results if r["sweep"] == sweep})
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("size along the sweep (conv2d: N, rnn: T)")
        ax.set_ylabel("median ms (log)")
        ax.set_title(f"sweep: {sweep}")
        ax.legend(fontsize=6, ncols=2)
    fig.savefig(path, dpi=100)
