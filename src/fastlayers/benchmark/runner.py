"""Run a set of cases x directions x backends and collect one report (a JSON-ready dict)."""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
from threadpoolctl import threadpool_limits

from .. import _dispatch
from .timing import GEMM_SHAPE, copy_roof, gemm_roof, machine_info, time_call
from .workloads import (
    FAMILIES,
    family,
    fastlayers_call,
    labels_for,
    make_inputs,
    op_name,
    work,
)

SCHEMA = "fastlayers-bench/1"


def available_families():
    """``{family: (available, reason, ops)}`` for every backend family, torch included."""
    found = {name: (r["available"], r["reason"], set(r["ops"])) for name, r in _dispatch.backends().items()}
    if importlib.util.find_spec("torch") is not None:  # not imported here: it runs in its own process
        found["torch"] = (True, "PyTorch, in a separate process", None)
    else:
        found["torch"] = (False, "PyTorch is not installed (pip install fastlayers[torch])", None)
    return found


def plan(cases, directions, families, found):
    """The (case, direction, label) triples to time, and a skip record for every one that cannot
    run here, with the reason."""
    items, skips = [], []
    for case in cases:
        for direction in directions:
            op = op_name(case.op, direction)
            for label in labels_for(families, case.op):
                available, reason, ops = found[family(label)]
                if not available:
                    skips.append(dict(case=case.name, direction=direction, backend=label, reason=reason))
                elif ops is not None and op not in ops:
                    reason = f"the {family(label)} backend has no {op} yet"
                    skips.append(dict(case=case.name, direction=direction, backend=label, reason=reason))
                else:
                    items.append((case, direction, label))
    return items, skips


SETTLE_S = 0.25


def run(cases, directions=("forward", "backward"), families=FAMILIES, dtype="float32", threads=None,
        repeat=7, budget_s=2.0, seed=0, progress=None):
    """Time every (case, direction, backend) and return the report.

    ``threads`` (default: all usable CPUs) is given to fastlayers (``fl.threads``), to NumPy's BLAS
    (threadpoolctl) and to PyTorch (``torch.set_num_threads`` in its own process). Each
    measurement stays near ``budget_s`` seconds after one warm-up call, with at most ``repeat``
    rounds and at least one."""
    progress = progress or sys.stderr
    threads = threads or _dispatch.get_num_threads()
    dtype = np.dtype(dtype).name
    found = available_families()
    machine = machine_info(threads)  # now, so that its load average is the one the timings met first
    items, skips = plan(cases, directions, families, found)
    print(f"fastlayers bench: {len(items)} measurements, {threads} threads, {dtype}; measuring roofs", file=progress)
    roofs_before = gemm_roof(dtype, threads), copy_roof(threads)
    ours = [item for item in items if item[2] != "torch"]
    torch_items = [item for item in items if item[2] == "torch"]
    timings = {}
    with _dispatch.threads(threads), threadpool_limits(limits=threads, user_api="blas"):
        for i, (case, direction, label) in enumerate(ours):
            print(f"[{i + 1}/{len(items)}] {case.name} {direction} {label}", file=progress, flush=True)
            fn, sync = fastlayers_call(case, direction, label, make_inputs(case, direction, dtype, seed))
            # Let the previous measurement's idle workers go to sleep first: OpenBLAS (NumPy's,
            # after the reference) and OpenMP threads busy-wait ~0.1 s after their last call, and
            # on a 2-core machine that takes a core from the next backend's threads.
            time.sleep(SETTLE_S)
            timings[case.name, direction, label] = time_call(fn, repeat, budget_s, sync)
    if torch_items:
        print(f"[{len(ours) + 1}-{len(items)}/{len(items)}] PyTorch, in its own process", file=progress, flush=True)
        torch_times, torch_skip = _run_torch(torch_items, dtype, threads, repeat, budget_s, seed)
        if torch_times is None:
            skips += [dict(case=c.name, direction=d, backend="torch", reason=torch_skip) for c, d, _ in torch_items]
        else:
            timings.update(zip(((c.name, d, "torch") for c, d, _ in torch_items), torch_times))
    # The roofs are measured before and after the timings and the better kept: a roof taken while
    # another process had the CPUs would make every % of roof look too good.
    roofs_after = gemm_roof(dtype, threads), copy_roof(threads)
    roofs = dict(gemm_gflops=max(roofs_before[0], roofs_after[0]), gemm_shape=GEMM_SHAPE,
                 copy_gbs=max(roofs_before[1], roofs_after[1]),
                 measured=dict(before=roofs_before, after=roofs_after))
    results = [_result(case, direction, label, dtype, timings[case.name, direction, label], roofs)
               for case, direction, label in items if (case.name, direction, label) in timings]
    _add_ratios(results)
    return dict(
        schema=SCHEMA,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine,
        settings=dict(threads=threads, dtype=dtype, repeat=repeat, budget_s=budget_s, seed=seed,
                      note="cpu and cuda write into preallocated out= buffers; numpy and torch allocate"),
        roofs=roofs,
        results=results,
        skipped=skips,
    )


def _run_torch(items, dtype, threads, repeat, budget_s, seed):
    """Timings of the torch items from a worker process, or ``(None, reason)`` if it failed."""
    job = dict(threads=threads, dtype=dtype, repeat=repeat, budget_s=budget_s, seed=seed,
               items=[dict(case=asdict(case), direction=direction) for case, direction, _ in items])
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-m", "fastlayers.benchmark.torch_worker"], input=json.dumps(job),
                          stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        return None, f"the PyTorch worker failed with exit code {proc.returncode} (its error is printed above)"
    return json.loads(proc.stdout)["times_s"], None


def _result(case, direction, label, dtype, times_s, roofs):
    amount, unit = work(case, direction, dtype)
    median = statistics.median(times_s)
    rate = amount / median / 1e9
    roof = roofs["gemm_gflops"] if unit == "flop" else roofs["copy_gbs"]
    return dict(
        case=case.name, op=case.op, direction=direction, backend=label, dtype=dtype,
        shape=list(case.shape), params=case.params, sweep=case.sweep,
        times_ms=[t * 1e3 for t in times_s], rounds=len(times_s),
        median_ms=median * 1e3, min_ms=min(times_s) * 1e3, max_ms=max(times_s) * 1e3,
        work=amount, rate=rate, rate_unit="GFLOP/s" if unit == "flop" else "GB/s", roof_pct=100 * rate / roof,
    )


def _add_ratios(results):
    """``vs_best_other``: the fastest other family's median over this one's (> 1: this is faster)."""
    for r in results:
        others = [o for o in results if (o["case"], o["direction"]) == (r["case"], r["direction"])
                  and family(o["backend"]) != family(r["backend"])]
        best = min(others, key=lambda o: o["median_ms"], default=None)
        r["best_other"] = best and best["backend"]
        r["vs_best_other"] = best and best["median_ms"] / r["median_ms"]
