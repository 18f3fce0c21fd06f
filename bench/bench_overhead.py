"""Per-call overhead on tiny shapes: what a call of the functional API and of a layer costs beyond
its kernel, where the arrays are so small (a 1 x 4 x 2 x 2 input) that the kernel itself is about
a microsecond.

    python bench/bench_overhead.py                 # 2 threads, median of 7 rounds
    python bench/bench_overhead.py --threads 1 --calls 1000

Rows: the compiled relu kernel called directly (the floor), the functional calls ``fl.relu``,
``fl.max_pool2d`` (2x2) and ``fl.conv2d`` (4 -> 4 channels, 3x3, padding 1), the same layers in
eval mode (a forward) and in training mode (a forward and its backward). Each figure is the median
over rounds of the mean time of ``--calls`` calls, in microseconds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def per_call_us(fn, calls, rounds):
    for _ in range(min(calls, 200)):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def cases():
    """(name, function of no arguments) of every row."""
    import fastlayers as fl
    from fastlayers import layers as L
    from fastlayers._cpu import relu as relu_kernel

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 2, 2)).astype(np.float32)
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    flat, flat_out = x.reshape(-1), np.empty(x.size, np.float32)

    def forward_backward(layer):
        def step():
            layer.backward(layer(x))
        return step

    def layers():
        return L.ReLU(), L.MaxPool2D(2), L.Conv2D(4, 4, 3, padding=1, rng=0)

    yield "relu kernel alone", lambda: relu_kernel.forward(flat, flat_out, 1)
    yield "fl.relu", lambda: fl.relu(x)
    yield "fl.max_pool2d", lambda: fl.max_pool2d(x, 2)
    yield "fl.conv2d", lambda: fl.conv2d(x, w, b, padding=1)
    for layer in layers():
        yield f"{type(layer).__name__} eval forward", lambda layer=layer.eval(): layer(x)
    for layer in layers():
        yield f"{type(layer).__name__} train forward+backward", forward_backward(layer)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=3000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    import fastlayers as fl

    fl.set_num_threads(args.threads)
    print(f"per-call time on a 1x4x2x2 float32 input, {args.threads} threads, median of {args.rounds} rounds "
          f"of {args.calls} calls")
    for name, fn in cases():
        print(f"  {name:34s} {per_call_us(fn, args.calls, args.rounds):8.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
