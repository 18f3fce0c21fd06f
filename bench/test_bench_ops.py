"""pytest-benchmark suite: every case of the table x direction x backend (see conftest.py).

Each benchmark is grouped by case and direction, so pytest-benchmark's table and
``pytest-benchmark compare`` put the backends of one case side by side. ``extra_info`` carries
the work (FLOPs or bytes) and the rate at the median. A combination this installation cannot run
is skipped with the reason (see ``-ra``), never dropped silently; a slow one (the NumPy reference
on the big cases) gets as few as one round after its warm-up, never none.
"""
import time

import pytest
from threadpoolctl import threadpool_limits

import fastlayers as fl
from fastlayers.benchmark.onnx_worker import ENGINES, engine_call
from fastlayers.benchmark.runner import available_families, family, fastlayers_call
from fastlayers.benchmark.timing import plan_rounds
from fastlayers.benchmark.workloads import make_inputs, work, workload
from fastlayers.ops._workload import SWAPPED_FAMILY

MAX_ROUNDS = 7


@pytest.fixture(scope="session")
def found():
    return available_families()


def _torch_call(case, direction, inputs, seed, threads, swapped):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(threads)
    swap = dict(swap=True) if swapped else {}  # the model with fastlayers.torch's modules
    return workload(case.op).torch_call(torch, case, direction, inputs, seed, **swap), None


def test_bench(benchmark, bench_item, found, request):
    case, direction, label = bench_item
    available, reason, ops = found[family(label)]
    if not available:
        pytest.skip(f"{label}: {reason}")
    reason = workload(case.op).unavailable(case, direction, family(label), ops)
    if reason:
        pytest.skip(reason)
    config = request.config
    threads = config.getoption("--bench-threads") or fl.get_num_threads()
    dtype, budget = config.getoption("--bench-dtype"), config.getoption("--bench-budget")
    inputs = make_inputs(case, direction, dtype, seed=0)
    if label in ("torch", SWAPPED_FAMILY):
        fn, sync = _torch_call(case, direction, inputs, 0, threads, label == SWAPPED_FAMILY)
    elif label in ENGINES:  # ONNX Runtime, OpenVINO: the forward as an ONNX model
        (fn, _), sync = engine_call(label, case, inputs, threads), None
    else:
        fn, sync = fastlayers_call(case, direction, label, inputs)
    call = fn if sync is None else (lambda: (fn(), sync()))
    benchmark.group = f"{case.name} {direction} ({dtype}, {threads} threads)"
    with fl.threads(threads), threadpool_limits(limits=threads, user_api="blas"):
        call()  # warm-up: workspaces, lazy initialisation, JIT
        start = time.perf_counter()
        call()
        rounds = plan_rounds(time.perf_counter() - start, MAX_ROUNDS, budget)
        benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
    amount, unit = work(case, direction, dtype)
    benchmark.extra_info.update(case=case.name, op=case.op, direction=direction, backend=label, dtype=dtype,
                                threads=threads, work=amount, work_unit=unit)
    if benchmark.stats is not None:  # None under --benchmark-disable
        rate = amount / benchmark.stats.stats.median / 1e9
        benchmark.extra_info["rate"] = f"{rate:.2f} {'GFLOP/s' if unit == 'flop' else 'GB/s'}"
