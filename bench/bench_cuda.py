"""GPU benchmark: fastlayers cuda vs PyTorch CUDA (cuDNN, FP32: TF32 off) vs fastlayers cpu.

    python bench/bench_cuda.py                       # every DESIGN.md case, float32
    python bench/bench_cuda.py --cases lenet,pool-56 --repeat 50 --json run.json
    python bench/bench_cuda.py --no-cpu              # skip the (slow) CPU column

Each case is timed forward and backward (the backward alone, its inputs precomputed), data
already on the GPU, outputs in preallocated ``out=`` buffers, with CUDA events after warm-up; the
figure is the median over ``--repeat`` calls. PyTorch runs in a process of its own
(``--torch-worker``), with ``torch.backends.cudnn.benchmark = True`` (cuDNN picks its fastest
algorithm) and TF32 off, timing forward and forward+backward through autograd. The targets of
issue 5: conv2d forward >= 50% of cuDNN's throughput (geometric mean over conv cases),
max_pool2d >= 70% of the measured device-to-device copy bandwidth, rnn forward+backward within
2x of cuDNN's RNN.

Needs a CUDA GPU (not the simulator); PyTorch with CUDA for the comparison column.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import numpy as np

from fastlayers.benchmark.workloads import (
    conv2d_weight_shape,
    fastlayers_call,
    make_inputs,
    work,
)
from fastlayers.cases import CASES, CASES_BY_NAME

WARMUP = 3


# ---------------------------------------------------------------------------- fastlayers


def _time_events(fn, repeat):
    """Median milliseconds of ``fn`` on the GPU, by CUDA events around each call."""
    from numba import cuda

    for _ in range(WARMUP):
        fn()
    cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cuda.event(), cuda.event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def _time_host(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(nbytes=1 << 28, repeat=20):
    """Device-to-device copy bandwidth (bytes read + written per second), the max_pool2d roof."""
    from numba import cuda

    src = cuda.device_array(nbytes, dtype=np.uint8)
    dst = cuda.device_array(nbytes, dtype=np.uint8)
    ms = _time_events(lambda: dst.copy_to_device(src), repeat)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def fastlayers_ms(case, direction, label, repeat, dtype):
    fn, _ = fastlayers_call(case, direction, label, make_inputs(case, direction, dtype))
    return _time_events(fn, repeat) if label.startswith("cuda") else _time_host(fn, repeat)


# ---------------------------------------------------------------------------- PyTorch (own process)


def torch_worker(case_names, repeat, dtype):
    """Time PyTorch CUDA on each case: {case: {"forward": ms, "forward+backward": ms}}."""
    import torch
    import torch.nn.functional as TF

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    tdt = getattr(torch, dtype)
    gen = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape, scale=1.0, grad=False):
        return (torch.randn(*shape, device=dev, dtype=tdt, generator=gen) * scale).requires_grad_(grad)

    def timed(fn):
        for _ in range(WARMUP):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeat):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)

    results = {}
    for name in case_names:
        case = CASES_BY_NAME[name]
        if case.op == "conv2d":
            w_shape = conv2d_weight_shape(case)
            x = randn(*case.shape, grad=True)
            w = randn(*w_shape, scale=1 / math.sqrt(np.prod(w_shape[1:])), grad=True)
            b = randn(w_shape[0], grad=True)
            p = case.params

            def forward(x=x, w=w, b=b, p=p):
                return TF.conv2d(x, w, b, stride=p.get("stride", 1), padding=p.get("padding", 0))
        elif case.op == "max_pool2d":
            x = randn(*case.shape, grad=True)
            p = case.params

            def forward(x=x, p=p):
                return TF.max_pool2d(x, p.get("kernel_size", 2), p.get("stride"))
        else:
            T, N, D, H = case.shape
            rnn = torch.nn.RNN(D, H, nonlinearity="tanh", device=dev, dtype=tdt)
            x, h0 = randn(T, N, D, grad=True), randn(1, N, H, scale=0.5, grad=True)

            def forward(rnn=rnn, x=x, h0=h0):
                return rnn(x, h0)[0]
        y = forward()
        dy = torch.randn_like(y)

        def forward_no_grad(forward=forward):
            with torch.no_grad():
                forward()

        results[name] = {
            "forward": timed(forward_no_grad),
            "forward+backward": timed(lambda forward=forward, dy=dy: forward().backward(dy)),
        }
    return results


def torch_timings(case_names, repeat, dtype):
    cmd = [sys.executable, __file__, "--torch-worker", "--cases", ",".join(case_names),
           "--repeat", str(repeat), "--dtype", dtype]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        print(f"PyTorch column skipped: the worker failed:\n{done.stderr.strip()[-2000:]}", file=sys.stderr)
        return {}
    return json.loads(done.stdout)


# ---------------------------------------------------------------------------- report


def _rate(case, dtype, ms, direction):
    """GFLOP/s (conv2d, rnn) or GB/s (max_pool2d) of one call taking ``ms``."""
    if direction == "forward+backward":
        amount = sum(work(case, d, dtype)[0] for d in ("forward", "backward"))
        unit = work(case, "forward", dtype)[1]
    else:
        amount, unit = work(case, direction, dtype)
    return amount / (ms * 1e-3) / 1e9, "GFLOP/s" if unit == "flop" else "GB/s"


def gpu_name():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout.strip()
        return out.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        from numba import cuda

        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated case names")
    ap.add_argument("--repeat", type=int, default=20, help="timed calls per figure (median)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--no-cpu", action="store_true", help="skip the fastlayers cpu column")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES_BY_NAME]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {list(CASES_BY_NAME)}")
    if args.torch_worker:
        json.dump(torch_worker(names, args.repeat, args.dtype), sys.stdout)
        return 0

    import fastlayers as fl

    available, reason = fl.backends()["cuda"]["available"], fl.backends()["cuda"]["reason"]
    if not available or "simulator" in reason:
        print(f"bench_cuda needs a CUDA GPU: {reason}", file=sys.stderr)
        return 2
    torch_ms = torch_timings(names, args.repeat, args.dtype)
    copy_gbs = copy_bandwidth_gbs()
    rows = []
    for name in names:
        case = CASES_BY_NAME[name]
        labels = ["cuda:im2col", "cuda:direct"] if case.op == "conv2d" else ["cuda"]
        if not args.no_cpu:
            labels.append("cpu")
        for label in labels:
            fwd = fastlayers_ms(case, "forward", label, args.repeat, args.dtype)
            bwd = fastlayers_ms(case, "backward", label, args.repeat, args.dtype)
            for direction, ms in (("forward", fwd), ("forward+backward", fwd + bwd)):
                ref_ms = torch_ms.get(name, {}).get(direction)
                rate, unit = _rate(case, args.dtype, ms, direction)
                rows.append(dict(case=name, op=case.op, backend=label, direction=direction, ms=ms,
                                 rate=rate, unit=unit, torch_ms=ref_ms,
                                 torch_over_ours=None if ref_ms is None else ref_ms / ms))
        for direction in ("forward", "forward+backward"):
            ref_ms = torch_ms.get(name, {}).get(direction)
            if ref_ms is not None:
                rate, unit = _rate(case, args.dtype, ref_ms, direction)
                rows.append(dict(case=name, op=case.op, backend="torch", direction=direction, ms=ref_ms,
                                 rate=rate, unit=unit, torch_ms=ref_ms, torch_over_ours=1.0))

    print(f"# {gpu_name()}, {args.dtype}, median of {args.repeat} (CUDA events), D2D copy {copy_gbs:.0f} GB/s")
    print(f"{'case':<12} {'backend':<12} {'direction':<17} {'ms':>9} {'rate':>14} {'torch/ours':>10}")
    for r in rows:
        ratio = "" if r["torch_over_ours"] is None else f"{r['torch_over_ours']:.2f}"
        print(f"{r['case']:<12} {r['backend']:<12} {r['direction']:<17} {r['ms']:>9.3f} "
              f"{r['rate']:>8.1f} {r['unit']:<7} {ratio:>8}")
    summary = _targets(rows, copy_gbs)
    for line in summary:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=gpu_name(), dtype=args.dtype, repeat=args.repeat, copy_gbs=copy_gbs,
                           rows=rows, targets=summary), f, indent=1)
    return 0


def _targets(rows, copy_gbs):
    """Issue 5's targets, from the rows (best fastlayers cuda algorithm per case)."""
    best = {}
    for r in rows:
        if r["backend"].startswith("cuda"):
            key = (r["case"], r["direction"])
            if key not in best or r["ms"] < best[key]["ms"]:
                best[key] = r
    lines = []
    conv = [r["torch_over_ours"] for (c, d), r in best.items()
            if r["op"] == "conv2d" and d == "forward" and r["torch_over_ours"]]
    if conv:
        gmean = math.exp(sum(math.log(v) for v in conv) / len(conv))
        lines.append(f"conv2d forward: {gmean:.0%} of cuDNN's throughput (geometric mean; target >= 50%)")
    for (c, d), r in best.items():
        if r["op"] == "max_pool2d":
            lines.append(f"{c} {d}: {r['rate']:.0f} GB/s = {r['rate'] / copy_gbs:.0%} of copy bandwidth (target >= 70%)")
        if r["op"] == "rnn" and d == "forward+backward" and r["torch_over_ours"]:
            lines.append(f"{c} forward+backward: {1 / r['torch_over_ours']:.2f}x cuDNN's time (target <= 2x)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
