"""GPU benchmark: fastlayers cuda vs PyTorch CUDA (cuDNN, FP32: TF32 off) vs fastlayers cpu.

    python bench/bench_cuda.py                       # every case of the table, float32
    python bench/bench_cuda.py --cases lenet,pool-56 --repeat 50 --json run.json
    python bench/bench_cuda.py --no-cpu              # skip the (slow) CPU rows

The engine's run (``fastlayers.benchmark.run``) with PyTorch on the GPU, in its own process
(``torch.backends.cudnn.benchmark``: cuDNN picks its fastest algorithm; TF32 off), on the same
inputs, already on the device; every side allocates its outputs (``+out`` rows: fastlayers into
preallocated buffers); each call is timed to completion (a device synchronise inside the timed
region). Then issue 5's targets: conv2d forward >= 50% of cuDNN's throughput (geometric mean
over conv cases), max_pool2d >= 70% of the measured device-to-device copy bandwidth, rnn
forward+backward within 2x of cuDNN's RNN.

Needs a CUDA GPU (not the simulator); PyTorch with CUDA for the comparison rows.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from fastlayers.benchmark import format_table, run
from fastlayers.benchmark.runner import allocates, family
from fastlayers.benchmark.timing import time_call
from fastlayers.benchmark.workloads import OPS, workload
from fastlayers.cases import CASES, CASES_BY_NAME


def copy_bandwidth_gbs(nbytes=1 << 28, repeat=20):
    """Device-to-device copy bandwidth (bytes read + written per second), the max_pool2d roof."""
    from numba import cuda

    src = cuda.device_array(nbytes, dtype=np.uint8)
    dst = cuda.device_array(nbytes, dtype=np.uint8)
    seconds = min(time_call(lambda: dst.copy_to_device(src), repeat, math.inf, cuda.synchronize))
    return 2 * nbytes / seconds / 1e9


def targets(report, copy_gbs):
    """Issue 5's targets from the report: the best allocating fastlayers cuda row per case and
    direction against PyTorch's, for every op whose workload sets a ``gpu_target``."""
    best, torch_ms, ops = {}, {}, {}
    for r in report["results"]:
        key = r["case"], r["direction"]
        ops[r["case"]] = r["op"]
        if family(r["backend"]) == "torch":
            torch_ms[key] = r["median_ms"]
        elif family(r["backend"]) == "cuda" and allocates(r["backend"]):
            if key not in best or r["median_ms"] < best[key]["median_ms"]:
                best[key] = r
    lines = []
    for op in OPS:
        if workload(op).gpu_target is None:
            continue
        kind, bound = workload(op).gpu_target
        mine = {k: r for k, r in best.items() if ops[k[0]] == op}
        if kind == "throughput":
            ratios = [torch_ms[k] / r["median_ms"] for k, r in mine.items() if k[1] == "forward" and k in torch_ms]
            if ratios:
                gmean = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
                lines.append(f"{op} forward: {gmean:.0%} of cuDNN's throughput (geometric mean; target >= {bound:.0%})")
        elif kind == "bandwidth":
            for (case, direction), r in mine.items():
                lines.append(f"{case} {direction}: {r['rate']:.0f} GB/s = {r['rate'] / copy_gbs:.0%} of copy bandwidth "
                             f"(target >= {bound:.0%})")
        elif kind == "time":
            for case in dict.fromkeys(c for c, _ in mine):
                keys = [(case, d) for d in ("forward", "backward")]
                if all(k in best and k in torch_ms for k in keys):
                    ours = sum(best[k]["median_ms"] for k in keys)
                    theirs = sum(torch_ms[k] for k in keys)
                    lines.append(f"{case} forward+backward: {ours / theirs:.2f}x cuDNN's time (target <= {bound:g}x)")
        else:
            raise ValueError(f"{op}: unknown gpu_target kind {kind!r}")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated case names")
    ap.add_argument("--repeat", type=int, default=20, help="most timed calls per figure (median)")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per measurement that cap the calls")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--no-cpu", action="store_true", help="skip the fastlayers cpu rows")
    ap.add_argument("--json", help="also write the report and the targets here")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES_BY_NAME]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {list(CASES_BY_NAME)}")

    import fastlayers as fl

    available, reason = fl.available_backends()["cuda"]["available"], fl.available_backends()["cuda"]["reason"]
    if not available or "simulator" in reason:
        print(f"bench_cuda needs a CUDA GPU: {reason}", file=sys.stderr)
        return 2
    families = ("cuda", "torch") if args.no_cpu else ("cuda", "cpu", "torch")
    report = run([CASES_BY_NAME[n] for n in names], families=families, dtype=args.dtype, repeat=args.repeat,
                 budget_s=args.budget, torch_device="cuda")
    copy_gbs = copy_bandwidth_gbs()
    print(format_table(report))
    print(f"\ndevice-to-device copy: {copy_gbs:.0f} GB/s")
    summary = targets(report, copy_gbs)
    print("\n".join(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(report=report, copy_gbs=copy_gbs, targets=summary), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
