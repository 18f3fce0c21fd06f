"""CUDA tests come in two runs that cannot share a process (Numba reads NUMBA_ENABLE_CUDASIM once):

* ``tests/cuda/sim``: kernels run by Numba's CUDA simulator against the reference; they need
  ``NUMBA_ENABLE_CUDASIM=1`` in the environment of a separate pytest invocation (see .ci/run).
* the other tests in ``tests/cuda`` (the real kernels compiled to PTX for sm_90, import and
  availability checks): without the simulator.

Each run skips the other's tests, saying why."""
import os
from pathlib import Path

import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")
_SIM_DIR = Path(__file__).parent / "sim"


def pytest_collection_modifyitems(config, items):
    need_sim = pytest.mark.skip(reason="simulator test: run with NUMBA_ENABLE_CUDASIM=1 (a separate pytest run)")
    need_real = pytest.mark.skip(reason="needs real Numba CUDA: run without NUMBA_ENABLE_CUDASIM (the simulator compiles nothing)")
    for item in items:
        path = Path(str(item.fspath))
        if _SIM_DIR in path.parents and not SIMULATOR:
            item.add_marker(need_sim)
        elif path.parent == _SIM_DIR.parent and SIMULATOR:
            item.add_marker(need_real)
