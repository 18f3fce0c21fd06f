"""The ``"cpu"`` backend: Cython + OpenMP kernels (sources in kernels/cpu/, compiled into
``fastlayers._cpu``), one part module per op family.

Each part module defines ``OPS`` and the functions named there; a part whose compiled kernels are
missing (a broken install) leaves its ops out and says why in ``availability()``.
"""
import importlib

_PARTS = ("max_pool2d", "conv2d", "rnn")

OPS = frozenset()
_missing = []
for _part in _PARTS:
    try:
        _mod = importlib.import_module(f"{__name__}.{_part}")
    except ImportError as exc:
        _missing.append(f"{_part}: {exc}")
        continue
    OPS |= _mod.OPS
    globals().update({op: getattr(_mod, op) for op in _mod.OPS})


def availability():
    if not OPS:
        return False, "compiled kernels missing (reinstall with `pip install .`): " + "; ".join(_missing)
    reason = "Cython + OpenMP kernels"
    if _missing:
        reason += " (missing: " + "; ".join(_missing) + ")"
    return True, reason
