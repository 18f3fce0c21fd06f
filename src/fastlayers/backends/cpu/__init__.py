"""The ``"cpu"`` backend: Cython + OpenMP kernels (sources in kernels/cpu/, compiled into
``fastlayers._cpu``), one part module per op family.

Each part module defines ``OPS`` and the functions named there; a part whose compiled kernels are
missing (a broken install) leaves its ops out and says why in ``availability()``.

BLAS threads: the kernels call the OpenBLAS of ``scipy-openblas32`` (linked at build time, see
kernels/cpu/_blas.pxd) from inside their own OpenMP threads, each on its own block, so that
library must run single-threaded: threads of its own would oversubscribe the cores, and its idle
workers busy-wait after start-up (~0.1 s), taking a core from our team. It is loaded by the
imports below with ``OPENBLAS_NUM_THREADS=1``, read once when OpenBLAS initialises, so it starts
no worker thread at all. The variable is restored right after: NumPy's and SciPy's own BLAS
(other libraries, loaded at other times) keep their threads, and no process-wide thread setting
is changed during calls (which concurrent callers could otherwise leave changed).
"""
import importlib
import os

_PARTS = ("max_pool2d", "conv2d", "rnn")

OPS = frozenset()
_missing = []
_user_setting = os.environ.get("OPENBLAS_NUM_THREADS")
os.environ["OPENBLAS_NUM_THREADS"] = "1"
try:
    for _part in _PARTS:
        try:
            _mod = importlib.import_module(f"{__name__}.{_part}")
        except ImportError as exc:
            _missing.append(f"{_part}: {exc}")
            continue
        OPS |= _mod.OPS
        globals().update({op: getattr(_mod, op) for op in _mod.OPS})
finally:
    if _user_setting is None:
        del os.environ["OPENBLAS_NUM_THREADS"]
    else:
        os.environ["OPENBLAS_NUM_THREADS"] = _user_setting


def availability():
    if not OPS:
        return False, "compiled kernels missing (reinstall with `pip install .`): " + "; ".join(_missing)
    reason = "Cython + OpenMP kernels"
    if _missing:
        reason += " (missing: " + "; ".join(_missing) + ")"
    return True, reason
