"""Every DESIGN.md case on a real GPU against the reference, forward and backward, float32.

Skipped where no CUDA GPU is usable (then tests/cuda/sim covers the kernels at small sizes)."""
import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref
from fastlayers.benchmark.workloads import make_inputs, op_name
from fastlayers.cases import CASES
from tests._helpers import assert_close

from tests.cuda._gpu import real_gpu

pytestmark = pytest.mark.skipif(not real_gpu(), reason="needs a CUDA GPU")


def _terms(case):
    """Products summed per output, the rounding budget of assert_close (see tests/_helpers.py)."""
    if case.op == "conv2d":
        N, C, H, W = case.shape
        k = case.params["kernel_size"]
        return max(C * k * k, N * H * W)  # forward/dX sum C*k*k terms, dW/db up to N*OH*OW
    if case.op == "max_pool2d":
        return 4  # a cell gathers at most one term per overlapping window
    T, N, D, H = case.shape
    return T * N * (D + H)


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_design_case_matches_reference(case, direction):
    inputs = make_inputs(case, direction, np.float32)
    params = {}
    if case.op == "conv2d":
        params = dict(stride=case.params["stride"], padding=case.params["padding"])
    elif case.op == "max_pool2d" and direction == "forward":
        params = dict(kernel_size=case.params["kernel_size"], stride=case.params["stride"])
    name = op_name(case.op, direction)
    got = getattr(fl, name)(**inputs, **params, backend="cuda")
    exact = {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v
             for k, v in inputs.items()}
    want = getattr(ref, name)(**exact, **params)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for i, (g, w) in enumerate(zip(got, want)):
        if g.dtype == np.int64:
            np.testing.assert_array_equal(g, w, err_msg=f"output {i}")
        else:
            # Normal-distributed data: terms up to a few units, hence scale 10.
            assert_close(g, w, np.float32, terms=_terms(case), scale=10, err_msg=f"output {i}")
