"""conv2d on the CPU: the per-op comparison table, and the experiments behind the CPU kernel's choices.

    python bench/bench_conv2d.py [--threads 2] [--cases a,b]   # the table (the engine's --wide view)
    python bench/bench_conv2d.py --gemm      # im2col forward vs one bare BLAS GEMM of its size; 1 vs n threads
    python bench/bench_conv2d.py --tiles     # im2col column tile size sweep per case
    python bench/bench_conv2d.py --small     # im2col vs direct on tiny convolutions (min of 50 calls)
    python bench/bench_conv2d.py --networks  # real-network layers: every algo, auto, autotuned, PyTorch

The table is ``python -m fastlayers bench --ops conv2d --backends numpy,cpu,torch --wide``: every
algorithm (``cpu:im2col``, ``cpu:direct``, ``cpu:auto``) as a column, PyTorch in its own process,
everything allocating, ``+out`` into preallocated buffers; other options go to the engine
(``--repeat``, ``--json``, ...). The experiments time with the engine's timer on the engine's
inputs; they report medians in ms (``--small``: minima in us, the per-call overhead being what
differs), float32.
"""
from __future__ import annotations

import importlib

import _op_view
import numpy as np

import fastlayers as fl
from fastlayers.benchmark.runner import fastlayers_call
from fastlayers.benchmark.timing import median_ms
from fastlayers.benchmark.workloads import make_inputs
from fastlayers.cases import CASES, CASES_BY_NAME
from fastlayers.ops import CONV2D

CONV_CASES = tuple(c.name for c in CASES if c.op == "conv2d")
CONV = CONV2D.workload


def im2col_forward_ms(case, threads, repeat):
    fn, _ = fastlayers_call(case, "forward", "cpu:im2col", make_inputs(case, "forward", np.float32))
    with fl.threads(threads):
        return median_ms(fn, repeat)


def bare_gemm_ms(case, threads, repeat):
    """The forward's GEMM as one call to the BLAS the kernels link (scipy-openblas32's OpenBLAS,
    allowed ``threads`` threads): (F x C*KH*KW) @ (C*KH*KW x N*OH*OW), no im2col, no copies."""
    import ctypes

    import fastlayers._cpu.im2col  # noqa: F401  loads the library first: ctypes then shares it
    import scipy_openblas32
    from threadpoolctl import threadpool_limits

    lib = ctypes.CDLL(f"{scipy_openblas32.get_lib_dir()}/{scipy_openblas32.get_library(fullname=True)}")
    lib.scipy_cblas_sgemm.restype = None
    w = make_inputs(case, "forward", np.float32)["weight"]
    F_, K = w.shape[0], w[0].size
    P = CONV.work(case, "forward", np.float32)[0] // (2 * F_ * K)
    cols = np.random.default_rng(1).uniform(-1, 1, (K, P)).astype(np.float32)
    a, c = w.reshape(F_, K), np.empty((F_, P), np.float32)
    ptr = ctypes.c_void_p
    args = (101, 111, 111, F_, P, K, ctypes.c_float(1), ptr(a.ctypes.data), K, ptr(cols.ctypes.data), P,
            ctypes.c_float(0), ptr(c.ctypes.data), P)  # CblasRowMajor, CblasNoTrans, CblasNoTrans
    with threadpool_limits(threads, user_api="blas"):
        return median_ms(lambda: lib.scipy_cblas_sgemm(*args), repeat)


def gemm_and_scaling(names, threads, repeat):
    for name in names:
        case = CASES_BY_NAME[name]
        flops = CONV.work(case, "forward", np.float32)[0]
        im2col, gemm = im2col_forward_ms(case, threads, repeat), bare_gemm_ms(case, threads, repeat)
        one = im2col_forward_ms(case, 1, repeat)
        print(f"{name}: im2col forward {im2col:.2f} ms = {flops / im2col / 1e6:.0f} GFLOP/s; bare BLAS sgemm of "
              f"the same size {gemm:.2f} ms = {flops / gemm / 1e6:.0f} GFLOP/s (ratio {gemm / im2col:.2f}); "
              f"1 thread {one:.2f} ms, {threads} threads: speed-up {one / im2col:.2f}x", flush=True)


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
    from fastlayers.cases import Case

    print(f"tiny conv2d, float32, {threads} thread(s), min of 50 calls, us")
    print("| x | w | params | FLOP | direct fwd | im2col fwd | direct bwd | im2col bwd |")
    print("|---|---|---|---|---|---|---|---|")
    for x_shape, (F_, _, k, _), params in SMALL_SHAPES:
        case = Case("small", "conv2d", x_shape, dict(F=F_, kernel_size=k, **params))
        cells = []
        with fl.threads(threads):
            for direction in ("forward", "backward"):
                inputs = make_inputs(case, direction, np.float32)
                for algo in ("direct", "im2col"):
                    fn, _ = fastlayers_call(case, direction, f"cpu:{algo}", inputs)
                    cells.append(f"{1e3 * median_ms(fn, 50, stat=min):.0f}")
        flops = CONV.work(case, "forward", np.float32)[0]
        print(f"| {x_shape} | {(F_, x_shape[1], k, k)} | {params} | {flops} | " + " | ".join(cells) + " |", flush=True)


# Layers of real networks, outside the benchmark table: (name, x shape, F, kernel, stride,
# padding, dilation, groups).
NETWORK_LAYERS = (
    ("ResNet-18 stem, batch 1", (1, 3, 224, 224), 64, 7, 2, 3, 1, 1),
    ("ResNet-18 3x3 64, batch 1", (1, 64, 56, 56), 64, 3, 1, 1, 1, 1),
    ("ResNet-18 3x3 512 7x7, batch 1", (1, 512, 7, 7), 512, 3, 1, 1, 1, 1),
    ("ResNet-50 1x1 256->64, batch 8", (8, 256, 56, 56), 64, 1, 1, 0, 1, 1),
    ("VGG conv1_2, batch 2", (2, 64, 224, 224), 64, 3, 1, 1, 1, 1),
    ("VGG-small stage 3, batch 32", (32, 64, 8, 8), 128, 3, 1, 1, 1, 1),
    ("MobileNet depthwise 32 112x112, batch 8", (8, 32, 112, 112), 32, 3, 1, 1, 1, 32),
    ("MobileNet depthwise 512 14x14, batch 8", (8, 512, 14, 14), 512, 3, 1, 1, 1, 512),
    ("3x3 dilation 2, 256 channels, batch 4", (4, 256, 28, 28), 256, 3, 1, 2, 2, 1),
)


def network_table(threads, repeat):
    """Every algorithm, auto and autotuned (``fl.set_autotune``) on NETWORK_LAYERS, forward and
    forward+backward, fastest of ``repeat`` calls (ms), and auto's and autotuning's time over the
    fastest algorithm's; PyTorch's where it is installed."""
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    algos = ("im2col", "direct", "winograd", "depthwise")
    print(f"conv2d on real-network layers, float32, {threads} thread(s), fastest of {repeat} calls, ms "
          "(forward | forward+backward)")
    print("| layer | " + " | ".join(algos) + " | auto | autotuned | auto / best | autotuned / best | PyTorch |")
    print("|---|" + "---|" * (len(algos) + 5))
    rng = np.random.default_rng(0)
    for name, shape, F, k, stride, padding, dilation, groups in NETWORK_LAYERS:
        x = rng.standard_normal(shape, dtype=np.float32)
        w = rng.standard_normal((F, shape[1] // groups, k, k), dtype=np.float32) / np.float32(np.sqrt(shape[1] // groups * k * k))
        params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        dy = np.ones(fl.conv2d(x, w, **params).shape, np.float32)

        def step(algo):
            fl.conv2d(x, w, **params, algo=algo)
            return fl.conv2d_backward(dy, x, w, **params, algo=algo)

        def forward(algo):
            return fl.conv2d(x, w, **params, algo=algo)

        times = {}
        with fl.threads(threads):
            for algo in algos + ("auto",):
                try:
                    times[algo] = [median_ms(lambda: f(algo), repeat, stat=min) for f in (forward, step)]
                except NotImplementedError:  # declined (forward-only winograd, depthwise's groups)
                    try:
                        times[algo] = [median_ms(lambda: forward(algo), repeat, stat=min), None]
                    except NotImplementedError:
                        times[algo] = [None, None]
            fl.set_autotune(True)
            try:
                step("auto")  # the first calls choose
                times["autotuned"] = [median_ms(lambda: f("auto"), repeat, stat=min) for f in (forward, step)]
            finally:
                fl.set_autotune(False)
                fl.clear_autotuned()
        best = [min(t[i] for a, t in times.items() if a in algos and t[i] is not None) for i in (0, 1)]
        if torch is not None:
            tx, tw, tdy = (torch.from_numpy(a) for a in (x, w, dy))
            txg = tx.clone().requires_grad_(True)
            twg = tw.clone().requires_grad_(True)

            def torch_step():
                torch.nn.functional.conv2d(txg, twg, None, **params).backward(tdy)

            with torch.no_grad():
                t_fwd = median_ms(lambda: torch.nn.functional.conv2d(tx, tw, None, **params), repeat, stat=min)
            torch_cell = f"{t_fwd:.3f} / {median_ms(torch_step, repeat, stat=min):.3f}"
        else:
            torch_cell = "-"

        def cell(t):
            return " / ".join("-" if v is None else f"{v:.3f}" for v in t)

        ratios = [" / ".join(f"{times[a][i] / best[i]:.2f}" for i in (0, 1)) for a in ("auto", "autotuned")]
        print(f"| {name} | " + " | ".join(cell(times[a]) for a in algos) + f" | {cell(times['auto'])} | "
              f"{cell(times['autotuned'])} | {ratios[0]} | {ratios[1]} | {torch_cell} |", flush=True)


def tile_sweep(names, threads, repeat):
    conv2d = importlib.import_module("fastlayers.backends.cpu.conv2d")
    sizes = [1 << e for e in range(16, 24)]
    print("im2col forward / backward ms by column tile bytes per thread")
    print("| case | " + " | ".join(f"{n >> 10} KiB" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in names:
        case = CASES_BY_NAME[name]
        calls = [fastlayers_call(case, d, "cpu:im2col", make_inputs(case, d, np.float32))[0]
                 for d in ("forward", "backward")]
        cells = []
        for nbytes in sizes:
            previous = conv2d.set_column_tile_bytes(nbytes)
            try:
                with fl.threads(threads):
                    fwd, bwd = (median_ms(fn, repeat) for fn in calls)
            finally:
                conv2d.set_column_tile_bytes(previous)
            cells.append(f"{fwd:.2f} / {bwd:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None):
    parser = _op_view.parser(__doc__, repeat=7)
    experiment = parser.add_mutually_exclusive_group()
    experiment.add_argument("--gemm", action="store_true", help="im2col forward vs a bare BLAS GEMM; thread scaling")
    experiment.add_argument("--tiles", action="store_true", help="im2col column tile size sweep")
    experiment.add_argument("--small", action="store_true", help="im2col vs direct on tiny convolutions")
    experiment.add_argument("--networks", action="store_true",
                            help="real-network layers: every algo, auto, autotuned, PyTorch")
    args, names, rest = _op_view.parse(parser, argv, "conv2d", CONV_CASES, ("gemm", "tiles", "small", "networks"))
    if args.gemm:
        gemm_and_scaling(names, args.threads, args.repeat)
    elif args.tiles:
        tile_sweep(names, args.threads, args.repeat)
    elif args.small:
        small_table(args.threads)
    elif args.networks:
        network_table(args.threads, args.repeat)
    else:
        return _op_view.table("conv2d", names, args.threads, args.repeat, rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
