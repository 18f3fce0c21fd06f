"""conv2d on the CPU: the per-op comparison table, and the experiments behind the CPU kernel's choices.

    python bench/bench_conv2d.py [--threads 2] [--cases a,b]   # the table (the engine's --wide view)
    python bench/bench_conv2d.py --gemm      # im2col forward vs one bare BLAS GEMM of its size; 1 vs n threads
    python bench/bench_conv2d.py --tiles     # im2col column tile size sweep per case
    python bench/bench_conv2d.py --small     # im2col vs direct on tiny convolutions (min of 50 calls)
    python bench/bench_conv2d.py --layers    # real-network layers: each algorithm, auto, autotuned vs PyTorch
    python bench/bench_conv2d.py --narrow    # planes narrower than a vector: the direct kernels, im2col, winograd

The table is ``python -m fastlayers bench --ops conv2d --backends numpy,cpu,torch --wide``: every
algorithm (``cpu:im2col``, ``cpu:direct``, ``cpu:auto``) as a column, PyTorch in its own process,
everything allocating, ``+out`` into preallocated buffers; other options go to the engine
(``--repeat``, ``--json``, ...). The experiments time with the engine's timer on the engine's
inputs; they report medians in ms (``--small``: minima in us, the per-call overhead being what
differs), float32.
"""
from __future__ import annotations

import importlib
import statistics
import time

import _op_view
import numpy as np

import fastlayers as fl
from fastlayers.benchmark.runner import fastlayers_call
from fastlayers.benchmark.timing import median_ms
from fastlayers.benchmark.workloads import make_inputs
from fastlayers.cases import CASES, CASES_BY_NAME, LAYER_CASES
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


def _layer_shapes():
    """The real-network layers of ``--cases layers`` (``fastlayers.cases.LAYER_CASES``): name, x
    shape, w shape and the conv2d keyword arguments."""
    w = CONV2D.workload
    return [(c.name, c.shape, w.weight_shape(c), w.options(c, "forward")) for c in LAYER_CASES]


def _alternate(calls, rounds, per_round=3):
    """Median ms of each call: ``rounds`` rounds, each timing every call in turn (the minimum of
    ``per_round`` calls: a thread woken late or a neighbour's burst shows in one call, not all)."""
    times = {name: [] for name in calls}
    for fn in calls.values():
        fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            best = float("inf")
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - start)
            times[name].append(best)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def _autotuned(call):
    """``call`` with ``fl.set_autotune(True)``: its first run times the algorithms and chooses."""
    def run():
        fl.set_autotune(True)
        try:
            return call()
        finally:
            fl.set_autotune(False)

    return run


def _accepts(call):
    try:
        call()
        return True
    except NotImplementedError:  # declined: winograd on other kernels, depthwise on other groups
        return False


# Planes narrower than a vector, where the direct forward runs the filter-vector kernel: x shape,
# filters, kernel size, stride, padding (ResNet-18's and VGG's batch-1 stages, a few batches).
NARROW_SHAPES = (
    ((1, 32, 8, 8), 32, 3, 1, 1), ((1, 64, 8, 8), 64, 3, 1, 1), ((1, 64, 8, 8), 128, 3, 1, 1),
    ((1, 128, 8, 8), 128, 3, 1, 1), ((1, 256, 7, 7), 256, 3, 1, 1), ((4, 64, 8, 8), 128, 3, 1, 1),
    ((8, 64, 8, 8), 128, 3, 1, 1), ((1, 256, 14, 14), 256, 3, 1, 1), ((1, 512, 7, 7), 512, 3, 1, 1),
    ((2, 512, 7, 7), 512, 3, 1, 1), ((1, 128, 28, 28), 256, 3, 2, 1), ((1, 256, 14, 14), 512, 3, 2, 1),
)


def narrow_table(threads, rounds):
    """The forward on ``NARROW_SHAPES``: direct (its filter-vector kernel, and its row kernel
    forced), im2col and winograd (where it runs), into ``out=``, alternating (``_alternate``),
    with the algorithm auto takes."""
    conv2d = importlib.import_module("fastlayers.backends.cpu.conv2d")
    rng = np.random.default_rng(0)
    columns = ("direct", "direct row kernel", "im2col", "winograd")
    print(f"conv2d forward on narrow planes, float32, {threads} threads, median of {rounds} alternating rounds, ms")
    print("| x | filters, kernel, stride | MFLOP | " + " | ".join(columns) + " | auto |")
    print("|---|---|---|" + "---|" * (len(columns) + 1))
    for x_shape, F, k, stride, padding in NARROW_SHAPES:
        params = dict(stride=stride, padding=padding)
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = (rng.standard_normal((F, x_shape[1], k, k)) / np.sqrt(x_shape[1] * k * k)).astype(np.float32)
        b = rng.standard_normal(F).astype(np.float32)
        y = fl.conv2d(x, w, b, **params)

        def row_kernel():
            kept = conv2d._fvec_scratch
            conv2d._fvec_scratch = lambda *problem: 0
            try:
                fl.conv2d(x, w, b, **params, algo="direct", out=y)
            finally:
                conv2d._fvec_scratch = kept

        calls = {"direct": lambda: fl.conv2d(x, w, b, **params, algo="direct", out=y), "direct row kernel": row_kernel,
                 "im2col": lambda: fl.conv2d(x, w, b, **params, algo="im2col", out=y),
                 "winograd": lambda: fl.conv2d(x, w, b, **params, algo="winograd", out=y)}
        calls = {name: fn for name, fn in calls.items() if _accepts(fn)}
        with fl.threads(threads):
            ms = _alternate(calls, rounds)
        problem = CONV2D.forward(x, w, b, stride, padding, 1, 1, "zeros")
        auto = importlib.import_module("fastlayers._dispatch").select_kernel(CONV2D, problem, "cpu").algo
        flops = 2 * y.size * x_shape[1] * k * k
        print(f"| {x_shape} | {F}, {k}x{k}, {stride} | {flops / 1e6:.1f} | "
              + " | ".join(f"{ms[c]:.3f}" if c in ms else "-" for c in columns) + f" | {auto} |", flush=True)


def layers_table(threads, repeat):
    """Forward (into ``out=``) and backward of each algorithm, of auto and autotuned auto
    (``fl.set_autotune``) and of PyTorch (its own conv2d and autograd, in this process) on
    ``_layer_shapes()``, alternating rounds, median ms ("-": the algorithm declines). Backward without
    dx: fastlayers' ``input_grad=False``; PyTorch's autograd asked for dw and db only."""
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    algos = ("im2col", "direct", "winograd", "depthwise", "auto")
    backward_algos = ("im2col", "winograd", "auto")  # the direct backward is 0.8-2x im2col's
    columns = ([f"fwd {a}" for a in algos] + ["fwd autotuned", "fwd PyTorch"]
               + [f"bwd {a}" for a in backward_algos] + ["bwd autotuned", "bwd auto no dx", "bwd PyTorch",
                                                         "bwd PyTorch no dx"])
    print(f"conv2d layers, float32, {threads} threads, median of {repeat} alternating rounds, ms")
    print("| layer | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    fl.clear_autotuned()
    for name, x_shape, w_shape, params in _layer_shapes():
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
        b = rng.standard_normal(w_shape[0]).astype(np.float32)
        y = fl.conv2d(x, w, b, **params)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        grads = (np.empty_like(x), np.empty_like(w), np.empty_like(b))
        calls = {}
        for a in algos:
            calls[f"fwd {a}"] = lambda a=a: fl.conv2d(x, w, b, **params, algo=a, out=y)
        calls["fwd autotuned"] = _autotuned(lambda: fl.conv2d(x, w, b, **params, out=y))
        tx, tw, tb, tdy = (torch.from_numpy(v) for v in (x, w, b, dy))

        def torch_forward():
            with torch.no_grad():
                return torch.nn.functional.conv2d(tx, tw, tb, **params)

        calls["fwd PyTorch"] = torch_forward
        for a in backward_algos:
            calls[f"bwd {a}"] = lambda a=a: fl.conv2d_backward(dy, x, w, **params, algo=a, out=grads)
        calls["bwd autotuned"] = _autotuned(lambda: fl.conv2d_backward(dy, x, w, **params, out=grads))
        calls["bwd auto no dx"] = lambda: fl.conv2d_backward(dy, x, w, **params, input_grad=False,
                                                            out=(None,) + grads[1:])
        gx, gw, gb = (t.clone().requires_grad_() for t in (tx, tw, tb))
        ty = torch.nn.functional.conv2d(gx, gw, gb, **params)
        calls["bwd PyTorch"] = lambda: torch.autograd.grad(ty, (gx, gw, gb), tdy, retain_graph=True)
        calls["bwd PyTorch no dx"] = lambda: torch.autograd.grad(ty, (gw, gb), tdy, retain_graph=True)
        with fl.threads(threads):
            ran = {k: fn for k, fn in calls.items() if _accepts(fn)}
            ms = _alternate(ran, repeat)
        print(f"| {name} {x_shape} F={w_shape[0]} | " + " | ".join(f"{ms[c]:.3f}" if c in ms else "-" for c in columns)
              + " |", flush=True)
    fl.clear_autotuned()


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
    experiment.add_argument("--layers", action="store_true", help="real-network layers: each algorithm vs PyTorch")
    experiment.add_argument("--narrow", action="store_true",
                            help="planes narrower than a vector: the direct kernels, im2col, winograd")
    args, names, rest = _op_view.parse(parser, argv, "conv2d", CONV_CASES, ("gemm", "tiles", "small", "layers", "narrow"))
    if args.gemm:
        gemm_and_scaling(names, args.threads, args.repeat)
    elif args.tiles:
        tile_sweep(names, args.threads, args.repeat)
    elif args.small:
        small_table(args.threads)
    elif args.layers:
        layers_table(args.threads, args.repeat)
    elif args.narrow:
        narrow_table(args.threads, 3 * args.repeat)
    else:
        return _op_view.table("conv2d", names, args.threads, args.repeat, rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
