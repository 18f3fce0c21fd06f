"""Options and parameters of the pytest-benchmark suite (the case table x direction x backend).

    pytest bench/ --benchmark-only                          # every case, every backend here
    pytest bench/ --benchmark-only --bench-cases quick --bench-backends cpu,torch
    pytest bench/ --benchmark-only --benchmark-json=run.json; pytest-benchmark compare ...

The items, inputs, calls (every backend allocates; ``+out`` items write into out= buffers) and
the allocator policy are the engine's (``fastlayers.benchmark``); pytest-benchmark is the timer.
PyTorch runs in this process here (pytest-benchmark times in-process), after every fastlayers
benchmark so that its thread pool starts only once ours are done; ``python -m fastlayers bench``
times it in a process of its own, the cleaner comparison.
"""
import pytest

from fastlayers.benchmark.runner import FAMILIES, labels_for
from fastlayers.benchmark.timing import steady_allocator
from fastlayers.benchmark.workloads import DIRECTIONS
from fastlayers.cases import CASE_GROUPS, CASES_BY_NAME, QUICK_CASES, expand_groups


def pytest_addoption(parser):
    group = parser.getgroup("fastlayers bench")
    group.addoption("--bench-cases", default="all",
                    help="comma-separated case names, 'quick' (the --quick subset), 'layers' (real networks' "
                         "layers) or 'all' (default)")
    group.addoption("--bench-backends", default=",".join(FAMILIES),
                    help=f"comma-separated backend families among {', '.join(FAMILIES)} (default all)")
    group.addoption("--bench-threads", type=int, default=None, help="threads (default: all usable CPUs)")
    group.addoption("--bench-dtype", default="float32", choices=("float32", "float64"))
    group.addoption("--bench-budget", type=float, default=2.0,
                    help="seconds per benchmark that cap its rounds (at least one; default 2)")


def _cases(config):
    spec = config.getoption("--bench-cases")
    names = QUICK_CASES if spec == "quick" else expand_groups(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in CASES_BY_NAME]
    if unknown:
        raise pytest.UsageError(f"--bench-cases: unknown case {', '.join(unknown)}; known: {', '.join(CASES_BY_NAME)}, "
                               f"{', '.join(CASE_GROUPS)}, quick")
    return [CASES_BY_NAME[n] for n in names]


def pytest_generate_tests(metafunc):
    if "bench_item" not in metafunc.fixturenames:
        return
    families = [f.strip() for f in metafunc.config.getoption("--bench-backends").split(",") if f.strip()]
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise pytest.UsageError(f"--bench-backends: unknown backend {', '.join(bad)}; expected some of {FAMILIES}")
    items = [(case, direction, label) for case in _cases(metafunc.config) for direction in DIRECTIONS
             for label in labels_for(families, case.op)]
    metafunc.parametrize("bench_item", items, ids=[f"{c.name}-{d}-{b}" for c, d, b in items])


def pytest_sessionstart(session):
    steady_allocator()  # as the engine does: allocation costs the same whatever ran before


def pytest_collection_modifyitems(items):
    """PyTorch's benchmarks last: its thread pool must not be alive while ours are timed."""
    items.sort(key=lambda item: item.name.endswith("-torch]"))
