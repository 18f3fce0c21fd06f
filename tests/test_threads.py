"""Many Python threads calling the kernels at once (they release the GIL) get the results of
serial calls, bit for bit, and one thread's ``fl.threads(n)`` never changes another thread's calls.

Semantics (see ``fastlayers._dispatch``): ``with fl.threads(n)`` is a ``contextvars`` override, so
it applies to the calls of the thread (or asyncio task) that entered it, and to no other; a thread
started inside the block starts from the process default (``fl.set_num_threads``, else all CPUs).
"""
import ast
import importlib
import json
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
def test_concurrent_calls_equal_serial_calls(backend, split_work):
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


# ---------------------------------------------------------------------------- thread-count policy


def _python(code, **env):
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.strip()


def test_omp_num_threads_sets_the_default():
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = "import fastlayers as fl; print(fl.get_num_threads())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**env, "OMP_NUM_THREADS": "1"})
    assert run.stdout.strip() == "1", run.stderr[-3000:]


def _team_sizes(monkeypatch):
    """The thread counts the compiled max-pool kernels are called with."""
    part = importlib.import_module("fastlayers.backends.cpu.max_pool2d")
    sizes = []
    real = part._kernels

    class Spy:
        def __getattr__(self, name):
            def call(*args):
                if name.startswith("max_pool2d_"):
                    sizes.append(args[-1])
                return getattr(real, name)(*args)
            return call

    monkeypatch.setattr(part, "_kernels", Spy())
    return sizes


_THREADPOOL_LIMITS = """
import json
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
import fastlayers as fl
from fastlayers.backends.cpu import max_pool2d as part

fl._dispatch.GRAIN_SIZE = 1  # tiny calls use every thread allowed
sizes, real = [], part._kernels
class Spy:  # records the thread count each compiled max-pool call gets
    def __getattr__(self, name):
        def call(*args):
            if name.startswith("max_pool2d_"):
                sizes.append(args[-1])
            return getattr(real, name)(*args)
        return call
part._kernels = Spy()
fl._dispatch.free_cpus = lambda: 1 << 10  # what other processes keep busy is not this test's matter
x = np.ones((4, 4, 16, 16), np.float32)
default = fl.get_num_threads()
fl.max_pool2d(x, 2, return_indices=True, backend="cpu")
for limits in (dict(limits=1), dict(limits=1, user_api="openmp")):
    with threadpool_limits(**limits):
        assert fl.get_num_threads() == 1
        fl.max_pool2d(x, 2, return_indices=True, backend="cpu")
fl.max_pool2d(x, 2, return_indices=True, backend="cpu")
visible = any(info["user_api"] == "openmp" for info in threadpool_info())
print(json.dumps([default, sizes, visible]))
"""


@pytest.mark.skipif(min(fl._dispatch._openmp_max_threads(), fl._dispatch.cpu_limit()) < 2,
                    reason="needs OpenMP and 2 CPUs to tell 1 thread from the default")
def test_threadpool_limits_limits_the_kernels():
    # In a fresh process: the default follows OpenMP's setting and the CPUs this process may
    # use, which earlier code in a long test process may have changed.
    run = subprocess.run([sys.executable, "-c", _THREADPOOL_LIMITS], capture_output=True, text=True,
                         timeout=120, env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    assert run.returncode == 0, run.stderr[-3000:]
    default, sizes, visible = json.loads(run.stdout.strip().splitlines()[-1])
    assert visible, "fastlayers' OpenMP pool is not visible to threadpoolctl"
    assert sizes == [default, 1, 1, default]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None, fl._dispatch.MAX_THREADS + 1, 10**30])
def test_absurd_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match=r"number of threads\) must be an integer from 1 to"):
        with fl.threads(bad):
            pass
    if bad is not None:
        with pytest.raises(ValueError, match="number of threads"):
            fl.set_num_threads(bad)


def test_numpy_integer_thread_counts_are_accepted():
    with fl.threads(np.int64(2)):
        assert fl.get_num_threads() == 2
        assert type(fl.get_num_threads()) is int
    try:
        fl.set_num_threads(np.int32(1))
        assert fl.get_num_threads() == 1
    finally:
        fl.set_num_threads(None)


def test_small_calls_run_on_the_calling_thread(monkeypatch):
    sizes = _team_sizes(monkeypatch)
    grain = fl._dispatch.GRAIN_SIZE
    with fl.threads(2):
        fl.max_pool2d(np.ones((1, 1, 8, 8), np.float32), 2, return_indices=True, backend="cpu")  # 16 windows of 4 taps
        assert fl._dispatch.threads_for(grain - 1) == 1
        assert fl._dispatch.threads_for(2 * grain) == 2
        assert fl._dispatch.threads_for(100 * grain) == 2
    assert sizes == [1]


class _FakeMachine:
    """Readers for ``FreeCpus``: the CPUs' busy seconds and this process's own CPU seconds, advanced
    by ``run(seconds, others, own)`` (CPUs' worth of time kept busy by others and by us)."""

    def __init__(self):
        self.clock, self.busy, self.own, self.reads = 0.0, 100.0, 5.0, 0

    def run(self, seconds, others, own):
        self.clock += seconds
        self.busy += seconds * (others + own)
        self.own += seconds * own

    def monitor(self, cpus, interval=0.1):
        def busy(_):
            self.reads += 1
            return self.busy
        return fl._cpu_load.FreeCpus(cpus, interval, busy=busy, own=lambda: self.own, clock=lambda: self.clock)


@pytest.mark.parametrize("cpus, others, own, free", [
    (2, 0.0, 2.0, 2),   # our own team keeps both CPUs busy: nothing is taken
    (2, 0.3, 1.0, 2),   # background noise below TAKEN_FRACTION of a CPU
    (2, 1.0, 1.0, 1),   # one competing busy process
    (2, 0.5, 0.0, 1),
    (4, 1.0, 3.0, 3),
    (4, 6.0, 0.5, 1),   # more competitors than CPUs: still one thread
])
def test_free_cpus_discount_what_other_processes_keep_busy(cpus, others, own, free):
    machine = _FakeMachine()
    monitor = machine.monitor(list(range(cpus)))
    assert monitor() == cpus  # the first reading only starts the measurement
    machine.run(0.5, others, own)
    assert monitor() == free
    assert monitor.others == pytest.approx(others)


def test_free_cpus_are_read_at_most_once_per_interval():
    machine = _FakeMachine()
    monitor = machine.monitor([0, 1], interval=0.1)
    monitor()
    machine.run(0.05, 2.0, 0.0)
    assert monitor() == 2 and machine.reads == 1  # too soon: the last answer
    machine.run(0.06, 2.0, 0.0)
    assert monitor() == 1 and machine.reads == 2
    machine.run(0.2, 0.0, 1.0)
    assert monitor() == 2  # the competitor has gone


def test_free_cpus_without_proc_stat_take_nothing():
    monitor = fl._cpu_load.FreeCpus([0, 1, 2], 0.0, busy=lambda cpus: None)
    assert monitor() == monitor() == 3


def test_proc_stat_is_summed_over_the_cpus_asked_for(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  9 9 9 9 9 9 9 9 0 0\n"
                    "cpu0 10 1 5 900 7 2 3 4 0 0\n"
                    "cpu1 20 0 6 800 1 0 0 0 0 0\n"
                    "cpu2 1000 0 0 0 0 0 0 0 0 0\n"
                    "intr 12345\n")
    ticks = (10 + 1 + 5 + 2 + 3 + 4) + (20 + 6)  # user nice system irq softirq steal; not idle, iowait
    assert fl._cpu_load.read_proc_stat([0, 1], stat) == pytest.approx(ticks / fl._cpu_load._TICKS_PER_SECOND)
    assert fl._cpu_load.read_proc_stat([0], tmp_path / "missing") is None


def test_only_the_default_thread_count_follows_the_free_cpus(monkeypatch):
    monkeypatch.setattr(fl._dispatch, "_openmp_max_threads", lambda: 4)
    monkeypatch.setattr(fl._dispatch, "cpu_limit", lambda: 4)
    monkeypatch.setattr(fl._dispatch, "free_cpus", lambda: 3)
    big = 100 * fl._dispatch.GRAIN_SIZE
    assert fl._dispatch.threads_for(big) == 3
    assert fl._dispatch.threads_for(2 * fl._dispatch.GRAIN_SIZE) == 2
    with fl.threads(4):  # a count the user set is kept, loaded machine or not
        assert fl._dispatch.threads_for(big) == 4
    fl.set_num_threads(4)
    try:
        assert fl._dispatch.threads_for(big) == 4
    finally:
        fl.set_num_threads(None)


@pytest.mark.skipif(not os.path.exists("/proc/stat") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux's /proc/stat and at least 2 CPUs")
def test_busy_processes_on_every_cpu_leave_one_thread():
    """Real processes, one spinning on each CPU of the affinity mask: the monitor sees them."""
    cpus = sorted(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{c}}})\nwhile True: pass"])
                for c in cpus]
    try:
        time.sleep(0.5)  # the interpreters start
        monitor = fl._cpu_load.FreeCpus(cpus, 0.0)
        monitor()
        time.sleep(0.5)
        assert monitor() == 1, f"{monitor.others:.2f} CPUs busy with others"
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@pytest.mark.parametrize("files, cpus", [
    ({"cpu.max": "max 100000"}, None),
    ({"cpu.max": "150000 100000"}, 2),
    ({"cpu.max": "50000 100000"}, 1),
    ({"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"}, None),
    ({"cpu.cfs_quota_us": "300000", "cpu.cfs_period_us": "100000"}, 3),
])
def test_container_cpu_quota_is_read(tmp_path, files, cpus):
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    if "cpu.max" in files:
        assert fl._dispatch._read_quota(tmp_path / "cpu.max", None) == cpus
    else:
        assert fl._dispatch._read_quota(tmp_path / "cpu.cfs_quota_us", tmp_path / "cpu.cfs_period_us") == cpus


_FORK_SCRIPT = """
import multiprocessing
import numpy as np
import fastlayers as fl

fl._dispatch.GRAIN_SIZE = 1  # the parent's call must start a team, however small
x = np.ones((8, 8, 32, 32), np.float32)

def work(i):
    return fl.get_num_threads(), float(fl.max_pool2d(x, 2, return_indices=True)[0].sum())

if __name__ == "__main__":
    with fl.threads(2):
        parent = float(fl.max_pool2d(x, 2, return_indices=True)[0].sum())
        with multiprocessing.get_context("fork").Pool(2) as pool:
            print(parent, pool.map(work, range(2)))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_forked_children_run_kernels_after_the_parent_used_threads(tmp_path):
    """issue 13, item 1: a fork() child used to hang in the OpenMP runtime. Bounded by a timeout
    so that a hang fails the test instead of blocking the run."""
    script = tmp_path / "fork_after_team.py"
    script.write_text(_FORK_SCRIPT)
    try:
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a forked child hung running a kernel after the parent ran one on 2 threads")
    assert out.returncode == 0, out.stderr[-3000:]
    parent, children = out.stdout.split(" ", 1)
    assert ast.literal_eval(children) == [(1, float(parent))] * 2
