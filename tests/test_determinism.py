"""Same inputs and same thread count give bitwise-identical outputs and gradients, run to run.

How results change with the thread count is measured, not asserted, by
``python tools/reliability_long.py determinism`` (every result stays within rounding of the
reference at any thread count: tests/test_fuzz.py checks that).
"""
import numpy as np
import pytest
from _random_calls import fixed_call, kernel_pairs

import fastlayers as fl

REPEATS = 3


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("op, backend", kernel_pairs(include_simulator=False))
def test_same_thread_count_is_bitwise_reproducible(op, backend, dtype, threads, split_work):
    call = fixed_call(op, dtype, size="big")
    with fl.threads(threads):
        runs = [call.run(backend) for _ in range(REPEATS)]
    for run in runs[1:]:
        for i, (first, again) in enumerate(zip(runs[0], run)):
            assert first.tobytes() == again.tobytes(), f"{op} output {i} changed between identical calls"
