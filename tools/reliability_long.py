"""The long reliability runs, too slow for CI (issue 8). Each prints a Markdown table.

    python tools/reliability_long.py rss [--iterations 10000]   RSS over repeated forward+backward
    python tools/reliability_long.py workspace                  im2col workspace vs batch (up to 1024)
    python tools/reliability_long.py determinism                results across kernel thread counts
    python tools/reliability_long.py fuzz [--examples 1000]     the Hypothesis suite, long profile

Run timing-sensitive ones under the shared lock on the development machine:
``flock /tmp/fastlayers-bench.lock python tools/reliability_long.py rss``.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _random_calls import fixed_call, kernel_pairs
from test_memory import FAMILIES, forward_backward, rss_bytes

import fastlayers as fl

MiB = 2**20


def rss(iterations, size):
    checkpoints = sorted({100, iterations // 10, iterations // 2, iterations})
    pairs = [(f, b) for f, b in kernel_pairs() if f in FAMILIES and (FAMILIES[f], b) in kernel_pairs()]
    print(f"| op (forward+backward) | backend | RSS after 100 (MiB) | {' | '.join(f'after {c}' for c in checkpoints[1:])} "
          f"| growth 100 -> {iterations} (KiB) |")
    print("|---" * (4 + len(checkpoints) - 1) + "|")
    for fwd, backend in pairs:
        step = forward_backward(fwd, backend, size=size)
        samples, done = [], 0
        for c in checkpoints:
            for _ in range(c - done):
                step()
            done = c
            samples.append(rss_bytes())
        cells = " | ".join(f"{s / MiB:.1f}" for s in samples)
        print(f"| {fwd} | {backend} | {cells} | {(samples[-1] - samples[0]) / 1024:+.0f} |")


def workspace():
    import importlib

    cpu_conv2d = importlib.import_module("fastlayers.backends.cpu.conv2d")  # the module, not the op
    if not hasattr(cpu_conv2d, "column_tile_bytes"):
        print("the cpu conv2d exposes no workspace cap (column_tile_bytes): nothing to check")
        return
    rng = np.random.default_rng(0)
    C, H, F = 16, 64, 16  # rows of 36 KiB of columns: the cap binds
    w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
    threads = fl.get_num_threads()
    K = C * 9
    cap = threads * max(cpu_conv2d.column_tile_bytes(), K * H * 4)  # at least one output row's columns
    print(f"cap: {threads} threads x max(column_tile_bytes = {cpu_conv2d.column_tile_bytes()}, one row "
          f"= {K * H * 4}) bytes = {cap / MiB:.2f} MiB; backward tiles hold columns and their gradient (x2)")
    print("| N | forward columns workspace (MiB) | backward columns workspace (MiB) | under cap |")
    print("|---|---|---|---|")
    for N in (1, 32, 1024):
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        y = fl.conv2d(x, w, padding=1, algo="im2col", backend="cpu")
        fwd = cpu_conv2d._local.buffers["columns"].nbytes
        cpu_conv2d._local.buffers.clear()
        fl.conv2d_backward(np.ones_like(y), x, w, padding=1, algo="im2col", backend="cpu")
        bwd = cpu_conv2d._local.buffers["columns"].nbytes
        cpu_conv2d._local.buffers.clear()
        ok = fwd <= cap and bwd <= 2 * cap
        print(f"| {N} | {fwd / MiB:.3f} | {bwd / MiB:.3f} | {'yes' if ok else 'NO'} |")


def _eps_units(a, b):
    """max |a - b| in units of eps(dtype) x max |b|: 0 when bitwise equal on finite entries."""
    if a.size == 0 or a.dtype.kind != "f":
        return 0.0 if np.array_equal(a, b) else float("inf")
    scale = np.finfo(a.dtype).eps * max(float(np.max(np.abs(b))), np.finfo(a.dtype).tiny)
    return float(np.max(np.abs(a.astype(np.float64) - b))) / scale


def determinism():
    counts = (1, 2, 3, 4)
    print("max |result(n threads) - result(1 thread)| in units of eps x max |result|, worst output of each op")
    print("| op | backend | dtype | " + " | ".join(f"{n} threads" for n in counts[1:]) + " | same count, 3 runs |")
    print("|---" * (3 + len(counts)) + "|")
    for op, backend in kernel_pairs():
        for dtype in (np.float32, np.float64):
            call = fixed_call(op, dtype, size="big")
            results = {}
            for n in counts:
                with fl.threads(n):
                    results[n] = call.run(backend)
            with fl.threads(2):
                again = [call.run(backend) for _ in range(3)]
            stable = all(a.tobytes() == b.tobytes() for run in again for a, b in zip(run, again[0]))
            cells = " | ".join(f"{max(_eps_units(a, b) for a, b in zip(results[n], results[1])):.2g}" for n in counts[1:])
            print(f"| {op} | {backend} | {np.dtype(dtype).name} | {cells} | {'identical' if stable else 'DIFFER'} |")


def fuzz(examples):
    env = dict(os.environ, FASTLAYERS_LONG_EXAMPLES=str(examples))
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_fuzz.py"), "-q", "-p", "no:cacheprovider",
           "--hypothesis-profile=long", "--hypothesis-show-statistics", "-k", "calls"]
    print("$", " ".join(cmd), f"(FASTLAYERS_LONG_EXAMPLES={examples})", flush=True)
    return subprocess.call(cmd, env=env)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("rss")
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--size", choices=("small", "big"), default="small")
    sub.add_parser("workspace")
    sub.add_parser("determinism")
    p = sub.add_parser("fuzz")
    p.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args()
    if args.what == "rss":
        rss(args.iterations, args.size)
    elif args.what == "workspace":
        workspace()
    elif args.what == "determinism":
        determinism()
    else:
        sys.exit(fuzz(args.examples))


if __name__ == "__main__":
    main()
