"""The cuda backend's import and availability contract (no simulator, no GPU needed)."""
import subprocess
import sys

import numpy as np
import pytest


def test_importing_fastlayers_and_running_cpu_ops_never_imports_numba():
    code = (
        "import sys, numpy as np, fastlayers as fl\n"
        "fl.max_pool2d(np.ones((1, 1, 4, 4)), 2, backend='numpy')\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_availability_reports_the_driver_state():
    cuda = pytest.importorskip("numba.cuda", reason="the cuda extra (numba, numba-cuda) is not installed")
    import fastlayers as fl

    report = fl.available_backends()["cuda"]
    if cuda.is_available():
        assert report["available"] and report["reason"].startswith("GPU")
        return
    assert not report["available"] and report["reason"].startswith("no usable CUDA GPU/driver")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available here: no usable CUDA GPU"):
        fl.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), backend="cuda")
