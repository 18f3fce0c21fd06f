"""The ``"cpu"`` backend: Cython + OpenMP kernels (sources in kernels/cpu/, compiled into
``fastlayers._cpu``, which loads the libraries they link: see its docstring), one module per op
family (``conv2d``, ``max_pool2d``, ``rnn``, ``lstm``, ``gru``, ``linear``, ``relu``, ``batch_norm``; lstm and gru
share ``_gated``) holding the kernel functions its spec lists (``fastlayers.ops``).

A module whose compiled kernels fail to load (a broken install) leaves its family's kernels
unavailable, warns once when fastlayers is imported, and says why in ``availability()`` and in
``load_error(family)``.
"""
import importlib
import warnings

_PARTS = ("max_pool2d", "conv2d", "rnn", "lstm", "gru", "linear", "relu", "batch_norm")  # one module per op family, named after it

_load_errors = {}
for _part in _PARTS:
    try:
        importlib.import_module(f"{__name__}.{_part}")
    except ImportError as exc:
        _load_errors[_part] = f"{type(exc).__name__}: {exc}"


def _functions():
    from ...ops import SPECS

    return frozenset(f for part in _PARTS if part not in _load_errors for f in SPECS[part].functions)


# The public functions whose compiled kernels loaded.
OPS = _functions()

FIX = ("reinstall fastlayers so that its extensions are built for this Python and scipy-openblas32 "
       "is installed (from a checkout: `python -m pip install .`, or `-e .`)")


def _describe(errors):
    return "; ".join(f"{part}: {error}" for part, error in errors.items())


def load_error(family):
    """Why the compiled kernels of op family ``family`` failed to load, or None if they loaded."""
    error = _load_errors.get(family)
    return None if error is None else f"the compiled {family} kernels failed to load ({error}); {FIX}"


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
