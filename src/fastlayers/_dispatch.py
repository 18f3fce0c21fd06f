"""Backend choice and thread count: the one dispatch point every op goes through.

Semantics (also in the README):

* ``set_backend(name)`` / ``set_num_threads(n)`` change the process-wide defaults.
* ``with use_backend(name):`` / ``with threads(n):`` override them for the code inside the block,
  in the current thread (and asyncio task) only: they are ``contextvars``, so another thread's
  calls are never changed by them.
* ``backend=None`` resolves to: the context's backend if set, else the process default if set,
  else ``"cuda"`` for arrays that live on a GPU (``__cuda_array_interface__``), else ``"cpu"`` when
  one of its compiled kernels accepts the call, else ``"numpy"``.
* Within the backend, the op's spec (``fastlayers.ops``) lists the kernels; ``select_kernel``
  takes the one ``algo=`` names or, for "auto", the backend's choice among those that do not
  decline the call.
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
    """The package of backend ``name`` (imported on first use: cuda starts nothing before)."""
    _check_backend_name(name)
    return importlib.import_module(f"fastlayers.backends.{name}")


def _loads(kernel):
    """Does ``kernel``'s module import here (compiled kernels built, numba installed)?"""
    try:
        importlib.import_module(kernel.module)
    except ImportError:
        return False
    return True


def _functions_on(name):
    from .ops import FUNCTIONS

    return sorted(
        function for function, spec in FUNCTIONS.items()
        if any(spec.functions[function] in k.functions and _loads(k) for k in spec.kernels_on(name))
    )


def available_backends():
    """Which backends this installation can run, and why a missing one is missing.

    Returns a dict ``{name: {"available": bool, "reason": str, "ops": [...]}}`` (``ops``: the
    public functions it has a kernel for). Checking cuda imports numba and asks the driver, so
    call this only when you want to know."""
    report = {}
    for name in BACKENDS:
        try:
            available, reason = backend_module(name).availability()
            ops = _functions_on(name) if available else []
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


def _declines(kernel, problem):
    """Why ``kernel`` cannot run ``problem``, or None."""
    if problem.direction not in kernel.functions:
        return f"the {kernel.backend} {kernel.algo!r} kernel has no {problem.direction}"
    return kernel.declines(problem)


def _accepting(spec, name, problem):
    return [k for k in spec.kernels_on(name) if _declines(k, problem) is None]


def _backend_name(spec, problem, backend):
    name = backend or _backend_override.get() or _default_backend
    if name is not None:
        return name
    if problem.on_gpu:
        return "cuda"
    cpu = _accepting(spec, "cpu", problem)
    return "cpu" if cpu and _loads(cpu[0]) and backend_module("cpu").availability()[0] else "numpy"


def select_kernel(spec, problem, backend, algo="auto"):
    """The kernel that runs ``problem`` of ``spec``.

    The backend: the ``backend`` argument, else ``use_backend``'s, else ``set_backend``'s, else
    "cuda" for GPU arrays, "cpu" when one of its kernels accepts the problem, "numpy" otherwise.
    The kernel: the one named ``algo``, or with "auto" the backend's choice among those that do
    not decline. An explicit choice that cannot run the problem is an error that says why, never
    a silent fallback."""
    name = _backend_name(spec, problem, backend)
    _check_backend_name(name)
    available, reason = backend_module(name).availability()
    if not available:
        raise RuntimeError(f"backend {name!r} is not available here: {reason}")
    kernels = spec.kernels_on(name)
    if not kernels:
        raise NotImplementedError(f"backend {name!r} has no {spec.name} kernel")
    loaded = [k for k in kernels if _loads(k)]
    if not loaded:  # a broken install: say so, never fall back silently
        why = getattr(backend_module(name), "load_error", lambda family: None)(spec.name)
        raise RuntimeError(f"backend {name!r} cannot run {spec.name}: {why or 'its kernels failed to import'}")
    kernels = tuple(loaded)
    if name != "cuda" and problem.on_gpu:
        raise TypeError(f"backend {name!r} needs host (NumPy) arrays, got GPU arrays; use backend='cuda'")
    if algo != "auto":
        chosen = [k for k in kernels if k.algo == algo]
        if not chosen:
            if algo not in spec.algos():
                raise ValueError(f"algo must be 'auto' or one of {spec.algos()}, got {algo!r}")
            raise ValueError(f"backend {name!r} has no {spec.name} algo {algo!r}; it has "
                             f"{tuple(k.algo for k in kernels)}")
        why = _declines(chosen[0], problem)
        if why:
            raise NotImplementedError(why)
        return chosen[0]
    candidates = _accepting(spec, name, problem)
    if not candidates:
        reasons = "; ".join(_declines(k, problem) for k in kernels)
        raise NotImplementedError(f"backend {name!r} cannot run this {spec.name}: {reasons}")
    return spec.choose(name, problem, candidates)


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
