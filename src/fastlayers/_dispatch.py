"""Backend choice and thread count: the one dispatch point every op goes through.

Semantics (also in the README):

* ``set_backend(name)`` / ``set_num_threads(n)`` change the process-wide defaults.
* ``with use_backend(name):`` / ``with threads(n):`` override them for the code inside the block,
  in the current thread (and asyncio task) only: they are ``contextvars``, so another thread's
  calls are never changed by them.
* ``backend=None`` resolves to: the context's backend if set, else the process default if set,
  else ``"cuda"`` for arrays that live on a GPU (``__cuda_array_interface__``), else ``"cpu"`` when
  the compiled kernels implement the op, else ``"numpy"``.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os

BACKENDS = ("numpy", "cpu", "cuda")

_default_backend = None
_default_threads = None
_backend_override = contextvars.ContextVar("fastlayers_backend", default=None)
_threads_override = contextvars.ContextVar("fastlayers_threads", default=None)


def _check_backend_name(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")


def backend_module(name):
    """The module implementing backend ``name`` (imported on first use: cuda starts nothing before)."""
    _check_backend_name(name)
    return importlib.import_module(f"fastlayers.backends.{name}")


def backends():
    """Which backends this installation can run, and why a missing one is missing.

    Returns a dict ``{name: {"available": bool, "reason": str, "ops": [...]}}``. Checking cuda
    imports numba and asks the driver, so call this only when you want to know."""
    report = {}
    for name in BACKENDS:
        try:
            mod = backend_module(name)
            available, reason = mod.availability()
            ops = sorted(mod.OPS) if available else []
        except ImportError as exc:  # the backend's own imports failed (e.g. numba not installed)
            available, reason, ops = False, f"cannot import: {exc}", []
        report[name] = {"available": available, "reason": reason, "ops": ops}
    return report


def set_backend(name):
    """Set the process-wide default backend (``None`` restores automatic choice)."""
    global _default_backend
    if name is not None:
        _check_backend_name(name)
    _default_backend = name


@contextlib.contextmanager
def use_backend(name):
    """Use backend ``name`` for ops called inside the block, in this thread only."""
    _check_backend_name(name)
    token = _backend_override.set(name)
    try:
        yield
    finally:
        _backend_override.reset(token)


def _on_gpu(arrays):
    return any(hasattr(a, "__cuda_array_interface__") for a in arrays if a is not None)


def _has_op(name, op):
    try:
        mod = backend_module(name)
    except ImportError:
        return False
    return op in mod.OPS and mod.availability()[0]


def resolve(op, backend, arrays):
    """The backend module that runs ``op`` for these arrays.

    An explicit choice (argument, ``use_backend``, ``set_backend``) that cannot run the op is an
    error, never a silent fallback."""
    name = backend or _backend_override.get() or _default_backend
    if name is None:
        if _on_gpu(arrays):
            name = "cuda"
        else:
            name = "cpu" if _has_op("cpu", op) else "numpy"
    _check_backend_name(name)
    mod = backend_module(name)
    available, reason = mod.availability()
    if not available:
        raise RuntimeError(f"backend {name!r} is not available here: {reason}")
    if op not in mod.OPS:
        load_error = getattr(mod, "load_error", lambda op: None)(op)
        if load_error:
            raise RuntimeError(f"backend {name!r} cannot run {op}: {load_error}")
        raise NotImplementedError(f"backend {name!r} does not implement {op}; it has {sorted(mod.OPS)}")
    if name != "cuda" and _on_gpu(arrays):
        raise TypeError(f"backend {name!r} needs host (NumPy) arrays, got GPU arrays; use backend='cuda'")
    return getattr(mod, op)


# ---------------------------------------------------------------------------- threads


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_threads(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be an int >= 1, got {n!r}")


def get_num_threads():
    """Threads the CPU kernels use: the context's (``threads``), else the process default
    (``set_num_threads``), else the CPUs this process may run on."""
    return _threads_override.get() or _default_threads or _cpu_count()


def set_num_threads(n):
    """Set the process-wide number of threads of the CPU kernels (``None``: all available CPUs)."""
    global _default_threads
    if n is not None:
        _check_threads(n)
    _default_threads = n


@contextlib.contextmanager
def threads(n):
    """Run the CPU kernels called inside the block with ``n`` threads, in this thread only."""
    _check_threads(n)
    token = _threads_override.set(n)
    try:
        yield
    finally:
        _threads_override.reset(token)
