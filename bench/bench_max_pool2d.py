"""Benchmark of max_pool2d (forward and backward) on the pool cases of fastlayers.cases.

Max-pooling is memory-bound, so besides times it reports bandwidth (bytes read + written / time)
against a multi-threaded copy measured in the same run, and ratios to the NumPy reference and to
PyTorch (timed in a separate process: thread pools of different libraries disturb each other).

    python bench/bench_max_pool2d.py                 # the table, all available threads
    python bench/bench_max_pool2d.py --threads 2 --repeat 15
    pytest bench/bench_max_pool2d.py                 # the same kernels under pytest-benchmark
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import fastlayers as fl
from fastlayers import reference as ref
from fastlayers._dispatch import get_num_threads
from fastlayers._params import pool2d_geometry
from fastlayers.benchmark.timing import median_ms
from fastlayers.cases import CASES

POOL_CASES = [c for c in CASES if c.op == "max_pool2d"]




def make_inputs(case, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape, dtype=np.float64).astype(dtype)
    dy = rng.standard_normal(pool2d_geometry(case.shape, **case.params).y_shape).astype(dtype)
    return x, dy


def copy_ms(nbytes, threads, repeat):
    """A ``threads``-way parallel copy that moves ``nbytes`` (reads nbytes / 2, writes as many);
    NumPy releases the GIL while copying."""
    per_thread = nbytes // 16 // threads
    src = np.ones((threads, per_thread), dtype=np.float64)
    dst = np.empty_like(src)
    with ThreadPoolExecutor(threads) as pool:
        return median_ms(lambda: list(pool.map(np.copyto, dst, src)), repeat)


def traffic(x, y, idx):
    """Bytes each direction must move at least: forward reads x and writes y and indices;
    backward reads dy and indices and writes dx."""
    return x.nbytes + y.nbytes + idx.nbytes


# ---------------------------------------------------------------------------- PyTorch worker


def torch_worker(case_name, threads, repeat):
    """Runs in its own process: times PyTorch's NCHW max_pool2d forward and backward."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    case = next(c for c in POOL_CASES if c.name == case_name)
    x, dy = (torch.from_numpy(a) for a in make_inputs(case))
    k, s = case.params["kernel_size"], case.params["stride"]
    y, idx = F.max_pool2d(x, k, s, return_indices=True)
    fwd = median_ms(lambda: F.max_pool2d(x, k, s, return_indices=True), repeat)
    bwd = median_ms(
        lambda: torch.ops.aten.max_pool2d_with_indices_backward(dy, x, [k, k], [s, s], [0, 0], [1, 1], False, idx),
        repeat,
    )
    print(json.dumps({"forward": fwd, "backward": bwd, "version": torch.__version__}))


def torch_times(case, threads, repeat):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", case.name,
           "--threads", str(threads), "--repeat", str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return None, last
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


# ---------------------------------------------------------------------------- the table


def measure(case, threads, repeat, with_reference, with_torch):
    x, dy = make_inputs(case)
    with fl.threads(threads):
        y, idx = fl.max_pool2d(x, backend="cpu", **case.params)
    dx = np.empty_like(x)
    nbytes = traffic(x, y, idx)
    rows = {}

    def cpu(direction, n, out):
        with fl.threads(n):
            if direction == "forward":
                return median_ms(lambda: fl.max_pool2d(x, backend="cpu", out=(y, idx) if out else None,
                                                       **case.params), repeat)
            return median_ms(lambda: fl.max_pool2d_backward(dy, idx, x.shape, backend="cpu",
                                                            out=dx if out else None), repeat)

    for direction in ("forward", "backward"):
        rows[direction] = {
            "out": cpu(direction, threads, True),
            "fresh": cpu(direction, threads, False),
            "1 thread": cpu(direction, 1, True),
        }
    if with_reference:  # slow: a few repeats are enough for a ratio of 10-100x
        rows["forward"]["reference"] = median_ms(lambda: ref.max_pool2d(x, **case.params), 3)
        rows["backward"]["reference"] = median_ms(lambda: ref.max_pool2d_backward(dy, idx, x.shape), 3)
    torch_note = None
    if with_torch:
        torch_ms, torch_note = torch_times(case, threads, repeat)
        if torch_ms:
            rows["forward"]["torch"] = torch_ms["forward"]
            rows["backward"]["torch"] = torch_ms["backward"]
            torch_note = f"PyTorch {torch_ms['version']}, separate process, {threads} threads"
    return nbytes, rows, torch_note


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all available)")
    parser.add_argument("--repeat", type=int, default=11, help="timed runs per figure (median)")
    parser.add_argument("--cases", default=",".join(c.name for c in POOL_CASES))
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) NumPy reference")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--torch-worker", metavar="CASE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = args.threads or get_num_threads()
    if args.torch_worker:
        return torch_worker(args.torch_worker, threads, args.repeat)

    cases = [c for c in POOL_CASES if c.name in args.cases.split(",")]
    print(f"max_pool2d, float32, {threads} threads, median of {args.repeat} runs (ms); GB/s = (bytes read "
          f"+ written) / time; copy = {threads}-thread copy of the same byte count in this run")
    header = (f"{'case':9} {'pass':8} {'cpu out=':>9} {'GB/s':>6} {'% copy':>7} {'fresh':>7} "
              f"{'1 thr':>7} {'2v1':>5} {'ref':>8} {'xref':>6} {'torch':>7} {'xtorch':>7}")
    print(header)
    print("-" * len(header))
    notes = []
    for case in cases:
        nbytes, rows, torch_note = measure(case, threads, args.repeat, not args.no_reference, not args.no_torch)
        copy = copy_ms(nbytes, threads, args.repeat)
        copy_gbs = nbytes / copy / 1e6
        for direction, r in rows.items():
            gbs = nbytes / r["out"] / 1e6
            ref_ms, torch_ms = r.get("reference"), r.get("torch")
            print(f"{case.name:9} {direction:8} {r['out']:9.2f} {gbs:6.1f} {100 * gbs / copy_gbs:6.0f}% "
                  f"{r['fresh']:7.2f} {r['1 thread']:7.2f} {r['1 thread'] / r['out']:5.2f} "
                  + (f"{ref_ms:8.1f} {ref_ms / r['out']:6.0f}" if ref_ms else f"{'-':>8} {'-':>6}") + " "
                  + (f"{torch_ms:7.2f} {torch_ms / r['out']:7.1f}" if torch_ms else f"{'-':>7} {'-':>7}"))
        print(f"{case.name:9} {'copy':8} {copy:9.2f} {copy_gbs:6.1f}   (the {nbytes / 1e6:.0f} MB a pass moves)")
        if torch_note:
            notes.append(f"{case.name}: {torch_note}")
    print("\ncpu out=: caller's output buffers reused; fresh: new outputs each call (page faults); "
          "1 thr: one thread, out=; 2v1: 1 thr / cpu out=;\nxref, xtorch: reference or PyTorch time / cpu out= time "
          "(PyTorch allocates its outputs, as its users do).")
    for note in dict.fromkeys(notes):
        print(note)


# ---------------------------------------------------------------------------- pytest-benchmark


def _params(directions=("forward", "backward")):
    import pytest

    return pytest.mark.parametrize("case, direction", [(c, d) for c in POOL_CASES for d in directions],
                                   ids=lambda v: getattr(v, "name", v))


try:
    @_params()
    def test_max_pool2d_cpu(benchmark, case, direction):
        x, dy = make_inputs(case)
        y, idx = fl.max_pool2d(x, backend="cpu", **case.params)
        if direction == "forward":
            benchmark(fl.max_pool2d, x, backend="cpu", out=(y, idx), **case.params)
        else:
            benchmark(fl.max_pool2d_backward, dy, idx, x.shape, backend="cpu", out=np.empty_like(x))
except ImportError:  # pytest not installed: the script still runs
    pass


if __name__ == "__main__":
    main()
