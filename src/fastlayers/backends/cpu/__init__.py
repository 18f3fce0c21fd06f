"""The ``"cpu"`` backend: Cython + OpenMP kernels (sources in kernels/cpu/, compiled into
``fastlayers._cpu``, which loads the libraries they link: see its docstring), one part module per
op family.

Each part module defines ``OPS`` and the functions named there. A part whose compiled kernels
fail to load (a broken install) leaves its ops out, warns once when fastlayers is imported, and
says why in ``availability()`` and ``load_error(op)``.
"""
import importlib
import warnings

_PARTS = ("max_pool2d", "conv2d", "rnn", "lstm", "gru")

OPS = frozenset()
_load_errors = {}
for _part in _PARTS:
    try:
        _mod = importlib.import_module(f"{__name__}.{_part}")
    except ImportError as exc:
        _load_errors[_part] = f"{type(exc).__name__}: {exc}"
        continue
    OPS |= _mod.OPS
    globals().update({op: getattr(_mod, op) for op in _mod.OPS})

FIX = ("reinstall fastlayers so that its extensions are built for this Python and scipy-openblas32 "
       "is installed (from a checkout: `python -m pip install .`, or `-e .`)")


def _describe(errors):
    return "; ".join(f"{part}: {error}" for part, error in errors.items())


def load_error(op):
    """Why ``op`` may be missing: the compiled kernels that failed to load (those of its own
    family when a part is named after it, else all), or None if every part loaded."""
    if not _load_errors:
        return None
    own = {part: error for part, error in _load_errors.items() if op.startswith(part)}
    return f"compiled kernels failed to load ({_describe(own or _load_errors)}); {FIX}"


def availability():
    if not OPS:
        return False, f"compiled kernels failed to load ({_describe(_load_errors)}); {FIX}"
    reason = "Cython + OpenMP kernels"
    if _load_errors:
        reason += f" (failed to load: {_describe(_load_errors)})"
    return True, reason


if _load_errors:
    warnings.warn(
        f"fastlayers: compiled CPU kernels failed to load, so {', '.join(_load_errors)} run on the slow "
        f"NumPy reference ({_describe(_load_errors)}). Fix: {FIX}.",
        RuntimeWarning, stacklevel=2,
    )
