"""CUDA tests come in two runs that cannot share a process (Numba reads NUMBA_ENABLE_CUDASIM once):

* ``tests/cuda/sim``: kernels at small sizes against the reference. They run under Numba's CUDA
  simulator (``NUMBA_ENABLE_CUDASIM=1`` in the environment of a separate pytest invocation, see
  .ci/run), or on a real GPU where one is present.
* the other tests in ``tests/cuda`` (the real kernels compiled to PTX for sm_90, import and
  availability checks, the benchmark cases on a real GPU): without the simulator.

Each run skips the other's tests, saying why."""
from pathlib import Path

import pytest

from tests.cuda._gpu import SIMULATOR, real_gpu

_SIM_DIR = Path(__file__).parent / "sim"


def pytest_collection_modifyitems(config, items):
    need_device = pytest.mark.skip(
        reason="needs the CUDA simulator (NUMBA_ENABLE_CUDASIM=1, a separate pytest run) or a CUDA GPU")
    need_real = pytest.mark.skip(
        reason="needs real Numba CUDA: run without NUMBA_ENABLE_CUDASIM (the simulator compiles nothing)")
    for item in items:
        path = Path(str(item.fspath))
        if _SIM_DIR in path.parents:
            if not (SIMULATOR or real_gpu()):
                item.add_marker(need_device)
        elif path.parent == _SIM_DIR.parent and SIMULATOR:
            item.add_marker(need_real)
