"""Many Python threads calling the kernels at once (they release the GIL) get the results of
serial calls, bit for bit, and one thread's ``fl.threads(n)`` never changes another thread's calls.

Semantics (see ``fastlayers._dispatch``): ``with fl.threads(n)`` is a ``contextvars`` override, so
it applies to the calls of the thread (or asyncio task) that entered it, and to no other; a thread
started inside the block starts from the process default (``fl.set_num_threads``, else all CPUs).
"""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _random_calls import fixed_call, kernel_pairs

import fastlayers as fl

BACKENDS = sorted({backend for _, backend in kernel_pairs(include_simulator=False)})
# Long enough for every thread to run every op many times, short enough for CI; the long run
# sets FASTLAYERS_THREAD_SECONDS (tools/reliability_long.py).
SECONDS = float(os.environ.get("FASTLAYERS_THREAD_SECONDS", "1.5"))
PYTHON_THREADS = 8
KERNEL_THREADS = (1, 2)


def _ops(backend):
    return sorted(op for op, b in kernel_pairs() if b == backend)


def _blas_threads():
    from threadpoolctl import threadpool_info

    return sorted((info["filepath"], info["num_threads"]) for info in threadpool_info() if info["user_api"] == "blas")


def _same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


_BLAS_SCRIPT = """
import sys, threading, time
sys.path.insert(0, {tests!r})
import numpy as np
import fastlayers as fl
from _random_calls import fixed_call
from threadpoolctl import threadpool_info

def blas():
    return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas")

call = fixed_call({op!r}, np.float32)
fl._dispatch.backend_module({backend!r})  # loads its BLAS libraries, calls nothing yet
before = blas()
start = threading.Barrier(8)

def worker():
    start.wait()
    deadline = time.monotonic() + 0.25
    with fl.threads(2):
        while time.monotonic() < deadline:
            call.run({backend!r})

workers = [threading.Thread(target=worker) for _ in range(8)]
for t in workers:
    t.start()
for t in workers:
    t.join()
print(before == blas(), before, blas())
"""


@pytest.mark.parametrize("op, backend", kernel_pairs(include_simulator=False))
def test_concurrent_calls_leave_blas_threads_alone(op, backend):
    """Kernels that hold BLAS to one thread during a call must restore it whatever the overlap
    of concurrent calls: save/restore scopes that interleave leave it at one thread for good, and
    every later NumPy matmul in the process runs single-threaded. Each op runs in a fresh process
    (the first concurrent calls, when a backend sets up its BLAS control, are the riskiest)."""
    script = _BLAS_SCRIPT.format(tests=str(Path(__file__).parent), op=op, backend=backend)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    same, *states = result.stdout.split(" ", 1)
    assert same == "True", f"8 threads calling {op} left BLAS threads at {states}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_calls_equal_serial_calls(backend):
    calls = {op: fixed_call(op, np.float32, seed=i) for i, op in enumerate(_ops(backend))}
    blas_before = _blas_threads()
    serial = {}
    for n in KERNEL_THREADS:
        with fl.threads(n):
            for op, call in calls.items():
                serial[op, n] = call.run(backend)
    start = threading.Barrier(PYTHON_THREADS)
    counts, failures = [0] * PYTHON_THREADS, []

    def worker(i):
        n = KERNEL_THREADS[i % len(KERNEL_THREADS)]
        order = list(calls)[i % len(calls):] + list(calls)[: i % len(calls)]  # threads start on different ops
        try:
            start.wait()
            deadline = time.monotonic() + SECONDS
            with fl.threads(n):
                while time.monotonic() < deadline:
                    for op in order:
                        got = calls[op].run(backend)
                        if not all(_same(g, s) for g, s in zip(got, serial[op, n])):
                            failures.append(f"thread {i} ({n} kernel threads): {op} differs from the serial call")
                    counts[i] += 1
        except Exception as exc:  # reported below: an exception in a thread would be lost
            failures.append(f"thread {i}: {type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(PYTHON_THREADS)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not failures, "\n".join(failures[:10])
    assert min(counts) >= 1, f"a thread never completed a pass over the ops: {counts}"
    # Kernels hold BLAS to one thread while their OpenMP team runs; concurrent callers must leave
    # the process's BLAS as they found it (NumPy's matmul uses it too).
    assert _blas_threads() == blas_before


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_setting_stays_in_its_thread(backend, monkeypatch):
    """Each thread's kernels see its own ``fl.threads(n)``; a thread without one sees the process
    default, even while others hold theirs, and so does a thread started inside a block."""
    from fastlayers.ops._spec import Kernel

    op = _ops(backend)[0]
    call = fixed_call(op, np.float32)
    seen = {}
    real_load = Kernel.load

    def load(kernel, direction):
        real = real_load(kernel, direction)

        def spy(*args):
            seen.setdefault(threading.current_thread().name, set()).add(fl.get_num_threads())
            return real(*args)

        return spy

    monkeypatch.setattr(Kernel, "load", load)
    default = fl.get_num_threads()
    inside = threading.Barrier(3)

    def run(n):
        if n is None:
            inside.wait()
            call.run(backend)
            inside.wait()
            return
        with fl.threads(n):
            inside.wait()  # all three threads are inside their settings at once
            call.run(backend)
            inside.wait()
            child = threading.Thread(target=call.run, args=(backend,), name=f"child-of-{n}")
            child.start()
            child.join()

    threads = [threading.Thread(target=run, args=(n,), name=str(n)) for n in (1, 3, None)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"1": {1}, "3": {3}, "None": {default}, "child-of-1": {default}, "child-of-3": {default}}
