"""conv2d on the CPU backend against PyTorch and the NumPy reference: the issue-3 table.

    flock /tmp/fastlayers-bench.lock python bench/bench_conv2d.py [--threads 2] [--cases a,b]
    python bench/bench_conv2d.py --algos     # im2col vs direct per case (the "auto" heuristic)
    python bench/bench_conv2d.py --tiles     # im2col column tile size sweep per case
    python bench/bench_conv2d.py --small     # im2col vs direct on tiny convolutions (min of 50 us)

Times are medians of ``--repeat`` runs after a warm-up, in ms, float32. PyTorch runs in its own
process (its thread pool and ours disturb each other) with ``torch.set_num_threads`` equal to
ours; the reference runs fewer rounds on the big cases. "fwd+bwd" is conv2d then
conv2d_backward (dx, dw, db); for PyTorch, F.conv2d then autograd's backward of the same dy.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import subprocess
import sys
import time

import numpy as np

from fastlayers.benchmark.timing import median_ms

CONV_CASES = ("cifar-stem", "resnet-56", "resnet-28", "resnet-14", "lenet", "down-1x1")




def case_arrays(name, seed=0):
    """x, w, b, dy (float32) and the conv2d keyword arguments of a case of fastlayers.cases."""
    from fastlayers.cases import CASES_BY_NAME

    case = CASES_BY_NAME[name]
    N, C, H, W = case.shape
    p = case.params
    k = p["kernel_size"]
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, case.shape).astype(np.float32)
    w = rng.uniform(-1, 1, (p["F"], C, k, k)).astype(np.float32)
    b = rng.uniform(-1, 1, p["F"]).astype(np.float32)
    kwargs = dict(stride=p["stride"], padding=p["padding"])
    OH = (H + 2 * p["padding"] - k) // p["stride"] + 1
    OW = (W + 2 * p["padding"] - k) // p["stride"] + 1
    dy = rng.uniform(-1, 1, (N, p["F"], OH, OW)).astype(np.float32)
    flops = 2 * N * p["F"] * OH * OW * C * k * k
    return x, w, b, dy, kwargs, flops


def reference_repeat(flops, repeat):
    return 1 if flops > 2e9 else min(repeat, 3)


# ---------------------------------------------------------------------------- PyTorch (own process)


def torch_worker(cases, threads, repeat):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    result = {}
    for name in cases:
        x, w, b, dy, kw, _ = case_arrays(name)
        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
        with torch.no_grad():
            fwd = median_ms(lambda: F.conv2d(tx, tw, tb, **kw), repeat)
        gx, gw, gb = (t.clone().requires_grad_(True) for t in (tx, tw, tb))

        def fwd_bwd():
            gx.grad = gw.grad = gb.grad = None
            F.conv2d(gx, gw, gb, **kw).backward(tdy)

        result[name] = {"fwd": fwd, "fwd_bwd": median_ms(fwd_bwd, repeat)}
    print(json.dumps(result))


def torch_times(cases, threads, repeat):
    cmd = [sys.executable, __file__, "--torch-worker", "--threads", str(threads), "--repeat", str(repeat),
           "--cases", ",".join(cases)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except subprocess.CalledProcessError as exc:
        print(f"PyTorch not measured: {exc.stderr.strip().splitlines()[-1]}")
        return {}
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- fastlayers


def fastlayers_times(name, threads, repeat, algo="auto", backward=True):
    import fastlayers as fl

    x, w, b, dy, kw, _ = case_arrays(name)
    with fl.threads(threads):
        fwd = median_ms(lambda: fl.conv2d(x, w, b, algo=algo, backend="cpu", **kw), repeat)
        if not backward:
            return {"fwd": fwd}
        bwd = median_ms(lambda: fl.conv2d_backward(dy, x, w, algo=algo, backend="cpu", **kw), repeat)
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}


def reference_times(name, repeat):
    import fastlayers as fl

    x, w, b, dy, kw, flops = case_arrays(name)
    r = reference_repeat(flops, repeat)
    fwd = median_ms(lambda: fl.conv2d(x, w, b, backend="numpy", **kw), r)
    bwd = median_ms(lambda: fl.conv2d_backward(dy, x, w, backend="numpy", **kw), r)
    return {"fwd": fwd, "fwd_bwd": fwd + bwd}


def bare_gemm_ms(name, threads, repeat):
    """The forward's GEMM as one call to the BLAS the kernels link (scipy-openblas32's OpenBLAS,
    allowed ``threads`` threads): (F x C*KH*KW) @ (C*KH*KW x N*OH*OW), no im2col, no copies."""
    import ctypes

    import fastlayers._cpu.im2col  # noqa: F401  loads the library first: ctypes then shares it
    import scipy_openblas32
    from threadpoolctl import threadpool_limits

    lib = ctypes.CDLL(f"{scipy_openblas32.get_lib_dir()}/{scipy_openblas32.get_library(fullname=True)}")
    lib.scipy_cblas_sgemm.restype = None
    x, w, b, dy, kw, flops = case_arrays(name)
    F_, K = w.shape[0], w[0].size
    P = flops // (2 * F_ * K)
    cols = np.random.default_rng(1).uniform(-1, 1, (K, P)).astype(np.float32)
    a, c = w.reshape(F_, K), np.empty((F_, P), np.float32)
    ptr = ctypes.c_void_p
    args = (101, 111, 111, F_, P, K, ctypes.c_float(1), ptr(a.ctypes.data), K, ptr(cols.ctypes.data), P,
            ctypes.c_float(0), ptr(c.ctypes.data), P)  # CblasRowMajor, CblasNoTrans, CblasNoTrans
    with threadpool_limits(threads, user_api="blas"):
        return median_ms(lambda: lib.scipy_cblas_sgemm(*args), repeat)


# ---------------------------------------------------------------------------- tables


def geomean(values):
    values = [v for v in values if v and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main_table(cases, threads, repeat):
    torch_ms = torch_times(cases, threads, repeat)
    fwd_ratios, fb_ratios = [], []
    print(f"conv2d float32, {threads} thread(s), median of {repeat} (reference: fewer rounds), ms")
    head = ("case", "fl fwd", "torch fwd", "numpy fwd", "fl GF/s", "fl/torch", "numpy/fl",
            "fl f+b", "torch f+b", "numpy f+b", "fl/torch", "numpy/fl")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in cases:
        flops = case_arrays(name)[-1]
        fl_t = fastlayers_times(name, threads, repeat)
        ref_t = reference_times(name, repeat)
        t_t = torch_ms.get(name, {"fwd": float("nan"), "fwd_bwd": float("nan")})
        fr, br = fl_t["fwd"] / t_t["fwd"], fl_t["fwd_bwd"] / t_t["fwd_bwd"]
        fwd_ratios.append(fr)
        fb_ratios.append(br)
        cells = (name, f"{fl_t['fwd']:.3f}", f"{t_t['fwd']:.3f}", f"{ref_t['fwd']:.1f}",
                 f"{flops / fl_t['fwd'] / 1e6:.0f}", f"{fr:.2f}", f"{ref_t['fwd'] / fl_t['fwd']:.0f}",
                 f"{fl_t['fwd_bwd']:.3f}", f"{t_t['fwd_bwd']:.3f}", f"{ref_t['fwd_bwd']:.1f}", f"{br:.2f}",
                 f"{ref_t['fwd_bwd'] / fl_t['fwd_bwd']:.0f}")
        print("| " + " | ".join(cells) + " |", flush=True)
    print(f"geometric mean fl/torch: forward {geomean(fwd_ratios):.2f} (worst {max(fwd_ratios):.2f}), "
          f"forward+backward {geomean(fb_ratios):.2f} (worst {max(fb_ratios):.2f})")


def gemm_and_scaling(threads, repeat):
    name = "resnet-56"
    flops = case_arrays(name)[-1]
    im2col = fastlayers_times(name, threads, repeat, algo="im2col", backward=False)["fwd"]
    gemm = bare_gemm_ms(name, threads, repeat)
    print(f"{name} im2col forward {im2col:.2f} ms = {flops / im2col / 1e6:.0f} GFLOP/s; bare BLAS sgemm "
          f"of the same size {gemm:.2f} ms = {flops / gemm / 1e6:.0f} GFLOP/s; ratio {gemm / im2col:.2f}")
    one = fastlayers_times(name, 1, repeat, backward=False)["fwd"]
    many = fastlayers_times(name, threads, repeat, backward=False)["fwd"]
    print(f"{name} forward: 1 thread {one:.2f} ms, {threads} threads {many:.2f} ms, speed-up {one / many:.2f}x")


def algo_table(cases, threads, repeat):
    print(f"im2col vs direct, float32, {threads} thread(s), ms (median of {repeat})")
    print("| case | C*KH*KW | im2col fwd | direct fwd | im2col bwd | direct bwd |")
    print("|---|---|---|---|---|---|")
    for name in cases:
        x, w = case_arrays(name)[:2]
        i = fastlayers_times(name, threads, repeat, "im2col")
        d = fastlayers_times(name, threads, repeat, "direct")
        print(f"| {name} | {w[0].size} | {i['fwd']:.3f} | {d['fwd']:.3f} | {i['bwd']:.3f} | {d['bwd']:.3f} |",
              flush=True)


# Tiny convolutions around the im2col/direct crossover: (x shape, w shape, parameters).
SMALL_SHAPES = (
    ((1, 1, 8, 8), (4, 1, 3, 3), {}),
    ((2, 8, 32, 32), (8, 8, 1, 1), dict(stride=4)),
    ((1, 3, 16, 16), (8, 3, 3, 3), dict(padding=1)),
    ((4, 3, 16, 16), (8, 3, 3, 3), dict(padding=1)),
    ((1, 16, 8, 8), (16, 16, 3, 3), dict(padding=1)),
    ((8, 1, 28, 28), (8, 1, 5, 5), {}),
)


def small_table(threads):
    """Minimum of 50 calls (the per-call overhead is what differs; the minimum is the least
    disturbed by other processes), in microseconds."""
    import fastlayers as fl
    from fastlayers._params import conv2d_geometry

    def min_us(fn):
        times = []
        for _ in range(50):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e6 * min(times)

    rng = np.random.default_rng(0)
    print(f"tiny conv2d, float32, {threads} thread(s), min of 50 calls, us")
    print("| x | w | params | FLOP | direct fwd | im2col fwd | direct bwd | im2col bwd |")
    print("|---|---|---|---|---|---|---|---|")
    for x_shape, w_shape, params in SMALL_SHAPES:
        x, w = rng.uniform(-1, 1, x_shape).astype(np.float32), rng.uniform(-1, 1, w_shape).astype(np.float32)
        g = conv2d_geometry(x_shape, w_shape, **params)
        dy = np.ones(g.y_shape, np.float32)
        cells = []
        with fl.threads(threads):
            for run in (lambda a: fl.conv2d(x, w, algo=a, backend="cpu", **params),
                        lambda a: fl.conv2d_backward(dy, x, w, algo=a, backend="cpu", **params)):
                cells += [f"{min_us(lambda: run(a)):.0f}" for a in ("direct", "im2col")]
        print(f"| {x_shape} | {w_shape} | {params} | {g.flops} | " + " | ".join(cells) + " |", flush=True)


def tile_sweep(cases, threads, repeat):
    conv2d = importlib.import_module("fastlayers.backends.cpu.conv2d")
    sizes = [1 << e for e in range(16, 24)]
    print("im2col forward / backward ms by column tile bytes per thread")
    print("| case | " + " | ".join(f"{n >> 10} KiB" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in cases:
        cells = []
        for nbytes in sizes:
            previous = conv2d.set_column_tile_bytes(nbytes)
            try:
                t = fastlayers_times(name, threads, repeat, "im2col")
            finally:
                conv2d.set_column_tile_bytes(previous)
            cells.append(f"{t['fwd']:.2f} / {t['bwd']:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--cases", default=",".join(CONV_CASES))
    parser.add_argument("--algos", action="store_true", help="im2col vs direct per case")
    parser.add_argument("--tiles", action="store_true", help="im2col column tile size sweep")
    parser.add_argument("--small", action="store_true", help="im2col vs direct on tiny convolutions")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    if args.torch_worker:
        torch_worker(cases, args.threads, args.repeat)
    elif args.algos:
        algo_table(cases, args.threads, args.repeat)
    elif args.small:
        small_table(args.threads)
    elif args.tiles:
        tile_sweep(cases, args.threads, args.repeat)
    else:
        main_table(cases, args.threads, args.repeat)
        gemm_and_scaling(args.threads, args.repeat)


if __name__ == "__main__":
    main()
