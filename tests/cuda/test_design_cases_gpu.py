"""Every benchmark case (fastlayers.cases) on a real GPU against the reference, forward and
backward, float32, each output element within its own rounding budget (tests/_rounding.py).

Skipped where no CUDA GPU is usable (then tests/cuda/sim covers the kernels at small sizes)."""
import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref
from fastlayers.benchmark.workloads import op_name
from fastlayers.cases import CASES
from tests import _rounding
from tests._random_calls import to_host
from tests.cuda._gpu import real_gpu

pytestmark = pytest.mark.skipif(not real_gpu(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_design_case_matches_reference(case, direction):
    if op_name(case.op, direction) not in _rounding.CASE_BUDGETS:
        pytest.skip(f"no rounding budget for {case.op} in tests/_rounding.py yet")
    name, args, kwargs, budgets = _rounding.case_call(case, direction)
    got = getattr(fl, name)(*args, **kwargs, backend="cuda")
    want = getattr(ref, name)(*[_rounding.exact(a) for a in args], **kwargs)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    assert len(got) == len(want) == len(budgets)
    for i, (g, w, budget) in enumerate(zip(got, want, budgets)):
        g = to_host(g)
        if w.dtype == np.int64:
            np.testing.assert_array_equal(g, w, err_msg=f"{name} output {i}")
        else:
            assert g.dtype == np.float32, f"{name} output {i}: dtype {g.dtype}"
            _rounding.assert_within_budget(g, w, budget, err_msg=f"{case.name} {name} output {i}")
