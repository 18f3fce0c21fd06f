"""The package installs right and its compiled kernels load wherever it is installed from.

The slow test builds an editable install, the way users make one (``pip install -e .`` with
build isolation, whose temporary build environment is gone by the time the kernels load), in a
fresh virtual environment, from a copy of this source tree."""
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

import fastlayers as fl

ROOT = Path(__file__).resolve().parents[1]
# What building the package needs; build outputs (*.so, *.c, build/, *.egg-info) stay behind.
SOURCES = ("src", "kernels", "setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE")
BUILD_OUTPUTS = shutil.ignore_patterns("*.so", "*.pyd", "*.c", "build", "*.egg-info", "__pycache__")

_CHECK_LOADED = """
import json
from fastlayers.backends import cpu
assert not cpu._load_errors, cpu._load_errors
print(json.dumps(sorted(cpu.OPS)))
"""

_BROKEN = """
import sys, warnings
import numpy as np
sys.modules["fastlayers._cpu.conv2d_direct"] = None  # an extension that cannot be imported
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastlayers as fl
    import fastlayers.backends.cpu
print(len([w for w in caught if issubclass(w.category, RuntimeWarning)]))
print(caught[0].message)
print(fl.available_backends()["cpu"]["ops"])
x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
print(fl.conv2d(x, w).sum())  # automatic choice: the NumPy reference
try:
    fl.conv2d(x, w, backend="cpu")
except RuntimeError as exc:
    print(exc)
"""


def _source_copy(dest):
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=BUILD_OUTPUTS)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
def test_editable_install_in_a_fresh_venv_loads_every_cpu_kernel(tmp_path):
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("needs the source tree")
    source = _source_copy(tmp_path / "source")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    install = subprocess.run([python, "-m", "pip", "install", "-q", "-e", source],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    run = subprocess.run([python, "-W", "error::RuntimeWarning", "-c", _CHECK_LOADED],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    from fastlayers.backends import cpu

    assert json.loads(run.stdout) == sorted(cpu.OPS)
    assert {"conv2d", "max_pool2d", "rnn"} <= cpu.OPS


def test_broken_kernels_warn_once_and_explicit_cpu_says_they_failed_to_load():
    run = subprocess.run([sys.executable, "-c", _BROKEN], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    count, message, ops, reference_sum, error = run.stdout.strip().splitlines()
    assert count == "1"
    assert "conv2d" in message and "failed to load" in message and "reinstall" in message
    assert "conv2d" not in ops and "max_pool2d" in ops
    assert float(reference_sum) == 36.0
    assert "conv2d" in error and "failed to load" in error and "reinstall" in error


def test_openblas_loaded_from_its_package_single_threaded():
    """The kernels' OpenBLAS is scipy-openblas32's, loaded from the installed package (no
    build-time path), and starts without threads of its own."""
    import scipy_openblas32
    from threadpoolctl import threadpool_info

    fl.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32), backend="cpu", algo="im2col")
    ours = [i for i in threadpool_info() if i["filepath"].startswith(os.path.realpath(scipy_openblas32.get_lib_dir()))]
    assert len(ours) == 1
    assert ours[0]["num_threads"] == 1


def test_every_subpackage_is_listed_for_installation():
    """pyproject.toml lists the packages explicitly (kernels/cuda installs as fastlayers._cuda): a
    subpackage missing there works in an editable install and is absent from a regular one."""
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("needs the source tree")
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    src = ROOT / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")}
    assert found - listed == set()
