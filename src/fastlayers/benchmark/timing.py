"""Timing, this machine's roofs (GEMM GFLOP/s, copy GB/s) and its description."""
from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits


# A fast call is timed in rounds of several calls after a warm-up of many: timed once, right
# after one warm-up call in a fresh process, a call of a few hundred microseconds costs 1.2-1.8x
# what it costs a loop that calls it again and again (docs/performance.md), for every library
# alike; the loop is what a user's training or inference feels.
WARMUP_S = 0.05  # warm-up: calls until this long has passed, at least one
MIN_ROUND_S = 2e-3  # a round's least duration: calls per round = ceil(MIN_ROUND_S / one call)


def time_call(fn, repeat, budget_s, sync=None, clock=time.perf_counter):
    """Seconds per call of ``fn``, one entry per timed round (at most ``repeat``): the one timer
    of every benchmark in fastlayers.

    Warm-up calls, discarded, run for ``WARMUP_S`` (at least one): they warm caches, workspaces,
    thread teams, lazy initialisation and JIT compilers. The last of them tells how long a call
    takes: a round then makes enough calls to last ``MIN_ROUND_S`` (one, for a call that long),
    and the rounds are cut so the measurement stays near ``budget_s`` — a slow reference on a
    big case gets one or two rounds, never none. ``sync`` (e.g. a CUDA synchronise) runs inside
    the timed region, once per round, so asynchronous backends are timed to completion.
    ``clock`` returns seconds."""

    def timed(calls):
        start = clock()
        for _ in range(calls):
            fn()
        if sync is not None:
            sync()
        return (clock() - start) / calls

    one_call = warmed = timed(1)
    while warmed < WARMUP_S:
        one_call = timed(1)
        warmed += one_call
    calls = max(1, math.ceil(MIN_ROUND_S / max(one_call, 1e-9)))
    rounds = plan_rounds(calls * one_call, repeat, budget_s)
    return [timed(calls) for _ in range(rounds)]


def median_ms(fn, repeat, stat=None):
    """Milliseconds per call of ``fn``: the median (or ``stat``, e.g. ``numpy.min``) of ``repeat``
    timed rounds after the warm-up (``time_call``)."""
    times = time_call(fn, repeat, budget_s=math.inf)
    return 1e3 * float((stat or statistics.median)(times))


def plan_rounds(first_call_s, repeat, budget_s):
    """Rounds that fit in ``budget_s`` given one call's time: between 1 and ``repeat``."""
    if math.isinf(budget_s):
        return repeat
    fit = math.floor(budget_s / max(first_call_s, 1e-9))
    return max(1, min(repeat, fit))


# A measurement is unstable when the middle half of its rounds spans more than this fraction of
# the median: a difference of that size between two backends is then not to be trusted.
UNSTABLE_SPREAD = 0.10
# Fewer rounds than this give no interquartile range worth the name.
MIN_ROUNDS_FOR_SPREAD = 3


def spread(times):
    """The distribution of one measurement's rounds: min, quartiles, median, max, the relative
    spread (interquartile range / median) and whether it is unstable (``None``: too few rounds
    to tell)."""
    ordered = sorted(times)
    median = statistics.median(ordered)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    relative = (q3 - q1) / median if median > 0 else 0.0
    unstable = relative > UNSTABLE_SPREAD if len(ordered) >= MIN_ROUNDS_FOR_SPREAD else None
    return dict(min=ordered[0], q1=q1, median=median, q3=q3, max=ordered[-1], relative=relative, unstable=unstable)


# ---------------------------------------------------------------------------- allocator

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# glibc's largest dynamic mmap threshold on 64-bit (a long-running process that has freed a block
# this big gets it) and the trim threshold it pairs with.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def steady_allocator():
    """Fix glibc's malloc thresholds in this process to a long-running process's steady state and
    return what was done, for the report.

    By default glibc serves a block above its mmap threshold by a fresh mmap and returns heap
    memory above its trim threshold to the kernel; both thresholds start at 128 KiB and rise
    with the largest mmapped block the process has freed so far. A call that allocates its
    outputs then costs page faults or not depending on what its process did before, and a
    fresh worker process pays them where a process that ran the reference does not (the 7x
    disagreement on PyTorch's cifar-stem forward: docs/performance.md). With fixed thresholds
    every process of a run, fastlayers' and PyTorch's, allocates alike whatever its history; a
    buffer above 32 MiB is still mapped afresh on each call, on every side alike."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return dict(fixed=False, reason=f"not glibc ({platform.libc_ver()[0] or 'unknown libc'}): left as it is")
    libc = ctypes.CDLL(None)
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        return dict(fixed=False, reason="glibc refused mallopt")
    return dict(fixed=True, mmap_threshold=MMAP_THRESHOLD, trim_threshold=TRIM_THRESHOLD)


def allocator_line(allocator):
    if not allocator["fixed"]:
        return f"allocator: {allocator['reason']}"
    return (f"allocator: glibc mmap threshold {allocator['mmap_threshold'] >> 20} MiB, trim threshold "
            f"{allocator['trim_threshold'] >> 20} MiB in every process of the run")


# ---------------------------------------------------------------------------- roofs

# A conv-like GEMM: K = C*KH*KW = 128*9 as in resnet-28's im2col product, M and N large enough
# that BLAS reaches its peak, so the roof is what this machine's best GEMM can do.
GEMM_SHAPE = (512, 1152, 1024)  # (M, K, N)
COPY_BYTES = 64 * 2**20  # twice the L3 of most desktop and server parts: a DRAM copy


def gemm_roof(dtype, threads, rounds=10):
    """Best GFLOP/s of NumPy's BLAS on a conv-sized GEMM with ``threads`` threads."""
    M, K, N = GEMM_SHAPE
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    c = np.empty((M, N), dtype)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=c)
        best = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(rounds))
    return 2 * M * K * N / best / 1e9


def copy_roof(threads, rounds=10):
    """Best GB/s (bytes read + bytes written) of a DRAM-sized copy split over ``threads`` threads
    (NumPy releases the GIL while copying)."""
    src = np.ones(COPY_BYTES // 8)
    dst = np.empty_like(src)
    chunks = [slice(lo, lo + len(src) // threads + 1) for lo in range(0, len(src), len(src) // threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        def copy():
            list(pool.map(lambda s: np.copyto(dst[s], src[s]), chunks))

        copy()
        best = min(_timed(copy) for _ in range(rounds))
    return 2 * COPY_BYTES / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- machine


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_names():
    """GPU names from nvidia-smi (asking the CUDA driver would start CUDA; nvidia-smi does not)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads):
    """What a reader needs to interpret the figures: CPU, cores, threads, BLAS, GPU, versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    blas = [
        {k: info.get(k) for k in ("internal_api", "version", "num_threads", "architecture", "filepath")}
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "threads": threads,
        # Other processes' load at the start of the run: above the usable CPUs, figures are disturbed.
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "blas": blas,
        # OpenBLAS runs the kernels this names (e.g. Haswell: AVX2) whatever the CPU supports.
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "kernel_isa": _kernel_isa(),
        "gpus": _gpu_names(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("fastlayers", "numpy", "scipy", "numba", "numba-cuda", "torch")},
    }


def _kernel_isa():
    """The instruction set fastlayers' C kernels picked on this CPU (target_clones.h)."""
    from .._cpu import conv2d_direct

    return conv2d_direct.vector_isa()


def machine_line(machine):
    """One line naming the machine, for the table header and the README."""
    blas = machine["blas"][0] if machine["blas"] else {}
    gpu = ", GPU " + "/".join(machine["gpus"]) if machine["gpus"] else ""
    return (
        f"{machine['cpu']}, {machine['usable_cpus']} CPUs, {machine['threads']} threads, "
        f"BLAS {blas.get('internal_api', '?')} {blas.get('version', '')} ({blas.get('architecture', '?')}){gpu}, "
        f"numpy {machine['versions']['numpy']}, torch {machine['versions']['torch'] or 'absent'}"
    )
