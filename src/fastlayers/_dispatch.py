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
import operator
import os
import time
from types import ModuleType
from typing import Any

from ._cpu_load import SAMPLE_SECONDS, free_cpus
from .ops._spec import module

BACKENDS = ("numpy", "cpu", "cuda")

_default_backend = None
_default_threads = None
_backend_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastlayers_backend", default=None)
_threads_override: contextvars.ContextVar[int | None] = contextvars.ContextVar("fastlayers_threads", default=None)
_weights_change: contextvars.ContextVar[bool] = contextvars.ContextVar("fastlayers_weights_change", default=False)


class ContextSetting(contextlib.ContextDecorator):
    """``with``: a context variable set to ``value`` for the block, in the current thread (and
    asyncio task) only, and reset after it; also a decorator (as ``contextlib.contextmanager``'s
    objects). A class, not a generator: every small layer's call enters one, and a generator's
    context manager costs microseconds of it. Re-entrant: each ``with`` keeps its own token."""

    def __init__(self, var: contextvars.ContextVar, value: Any) -> None:
        self._var, self._value, self._tokens = var, value, []

    def __enter__(self) -> None:
        self._tokens.append(self._var.set(self._value))

    def __exit__(self, *exc: Any) -> bool:
        self._var.reset(self._tokens.pop())
        return False


def _check_backend_name(name: str | None) -> None:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")


def backend_module(name: str) -> ModuleType:
    """The package of backend ``name`` (imported on first use: cuda starts nothing before)."""
    _check_backend_name(name)
    return module(f"fastlayers.backends.{name}")


def _loads(kernel):
    """Does ``kernel``'s module import here (compiled kernels built, numba installed)?"""
    try:
        module(kernel.module)
    except ImportError:
        return False
    return True


def _functions_on(name):
    from .ops import FUNCTIONS

    return sorted(
        function for function, spec in FUNCTIONS.items()
        if any(spec.functions[function] in k.functions and _loads(k) for k in spec.kernels_on(name))
    )


def available_backends() -> dict[str, dict[str, Any]]:
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


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend (``None`` restores automatic choice)."""
    global _default_backend
    if name is not None:
        _check_backend_name(name)
    _default_backend = name


def use_backend(name: str) -> ContextSetting:
    """Use backend ``name`` for ops called inside the block, in this thread only."""
    _check_backend_name(name)
    return ContextSetting(_backend_override, name)


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


def backend_settings() -> tuple:
    """What the backend choice depends on besides the call: ``use_backend``'s and
    ``set_backend``'s choices and ``weights_change`` (what a layer's plans are kept under)."""
    return _backend_override.get(), _default_backend, _weights_change.get()


def weights_change() -> ContextSetting:
    """The calls inside are a training step's (the layers' forwards that record for a backward,
    their backwards, fastlayers.torch's on weights that need a gradient): the weights change
    before the next call, so "auto" counts, for an algorithm that derives arrays from them
    (Winograd's transformed filters, packed filters), that it derives them on every call. In the
    current thread (and asyncio task) only, as ``use_backend``."""
    return ContextSetting(_weights_change, True)


def weights_changing() -> bool:
    """Whether the calls now run inside ``weights_change``."""
    return _weights_change.get()


def host_backend(backend: str | None) -> str:
    """The backend for ops with host kernels only, called from code that may run inside
    ``use_backend("cuda")`` (the layers with no GPU kernels): ``backend``, ``use_backend``'s or
    ``set_backend``'s choice when it is a host backend, else "cpu" where its kernels load, else
    "numpy"."""
    name = backend or _backend_override.get() or _default_backend
    if name in ("numpy", "cpu"):
        return name
    return "cpu" if backend_module("cpu").availability()[0] else "numpy"


def select_kernel(spec, problem, backend, algo="auto"):
    """The kernel that runs ``problem`` of ``spec``.

    The backend: the ``backend`` argument, else ``use_backend``'s, else ``set_backend``'s, else
    "cuda" for GPU arrays, "cpu" when one of its kernels accepts the problem, "numpy" otherwise.
    The kernel: the one named ``algo``, or with "auto" the backend's choice among those that do
    not decline. An explicit choice that cannot run the problem is an error that says why, never
    a silent fallback.

    The choice depends on the problem's direction, geometry, outputs (their shapes and dtypes),
    options and whether its arrays are on a GPU, and on the backend settings: it is remembered
    under those (``_choices``), so that a call on a small shape does not pay for the search
    again. Errors are not remembered."""
    try:
        key = (spec, problem.direction, problem.geometry, problem.outputs, tuple(problem.options.items()),
               problem.on_gpu, backend, *backend_settings(), algo)
        kernel = _choices.get(key)
    except TypeError:  # an unhashable geometry or option: chosen every time
        key, kernel = None, None
    if kernel is None:
        kernel = _select_kernel(spec, problem, backend, algo)
        if key is not None:
            if len(_choices) >= _MAX_CHOICES:
                _choices.clear()
            _choices[key] = kernel
    return kernel


# Kernel choices by problem and settings (select_kernel); bounded: a program that calls ops on
# ever new shapes starts over past this many.
_MAX_CHOICES = 4096
_choices: dict = {}


def _select_kernel(spec, problem, backend, algo):
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


# ---------------------------------------------------------------------------- autotuning

_autotune = False
_tuned: dict[tuple, str] = {}  # (op, direction, backend, geometry, dtype, threads) -> algo
TUNING_RUNS = 2  # timed runs of each kernel after its warm-up run; the fastest run counts


def set_autotune(enabled: bool) -> None:
    """Choose ``algo="auto"``'s kernel by timing (``True``) or by the backend's rules (``False``,
    the default), as cuDNN's benchmark mode does.

    With it on, the first call of each problem (op, direction, sizes and parameters, dtype,
    thread count) that several kernels accept runs each of them on the call's own arrays, once
    to warm up and ``TUNING_RUNS`` times timed, and keeps the fastest for every later call of
    that problem (``autotuned()`` lists the choices). Only kernels that write into host buffers
    (the cpu backend's) are timed. With it off, auto's choice depends on the problem alone and
    results are reproducible bit for bit; with it on, timing noise can make two processes choose
    differently, and algorithms differ in the last bits of their results."""
    global _autotune
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    _autotune = enabled


def plan_settings() -> tuple:
    """What a kept plan's kernel choice depends on besides the call: ``backend_settings()`` and
    whether ``set_autotune(True)`` is in force (the functional API's replays are keyed by it)."""
    return (*backend_settings(), _autotune)


def autotuned() -> dict[tuple, str]:
    """The choices autotuning has made: (op, direction, backend, geometry, dtype, threads) -> algo."""
    return dict(_tuned)


def clear_autotuned() -> None:
    """Forget the choices autotuning has made (they are timed again on the next calls)."""
    _tuned.clear()


def autotuned_kernel(spec, problem, kernel, call):
    """The kernel ``algo="auto"`` runs: ``kernel`` (the backend's rules), unless autotuning is on,
    ``kernel`` writes into host buffers and several kernels accept ``problem``: then the fastest
    of them, timed with ``call(kernel)`` (which runs it on the call's arrays and outputs)."""
    if not _autotune or kernel.allocates:
        return kernel
    dtype = next((a.dtype for a in problem.arrays.values() if hasattr(a, "dtype")), None)
    key = (spec.name, problem.direction, kernel.backend, problem.geometry, str(dtype), get_num_threads())
    algo = _tuned.get(key)
    if algo is None:
        candidates = [k for k in _accepting(spec, kernel.backend, problem) if not k.allocates and _loads(k)]
        if len(candidates) < 2:
            return kernel
        seconds = {}
        for candidate in candidates:
            call(candidate)  # warm-up: page faults, caches, packed operands
            runs = []
            for _ in range(TUNING_RUNS):
                start = time.perf_counter()
                call(candidate)
                runs.append(time.perf_counter() - start)
            seconds[candidate.algo] = min(runs)
        algo = _tuned[key] = min(seconds, key=seconds.get)
    return next(k for k in spec.kernels_on(kernel.backend) if k.algo == algo)


# ---------------------------------------------------------------------------- threads
#
# The default thread count follows the conventions NumPy, scikit-learn and PyTorch users rely on:
# OpenMP's own setting (OMP_NUM_THREADS, threadpoolctl's limits on user_api="openmp"), bounded by
# the CPUs this process may run on (affinity mask) and by its container's CPU quota (cgroup).

# Past a few threads per logical CPU no kernel gets faster, and every OpenMP thread reserves a
# stack: 300 threads under a 2 GiB address-space limit made the OpenMP runtime fail to create one
# and exit the process, with no Python exception. Larger requests are refused.
MAX_THREADS = 4 * (os.cpu_count() or 1)

# A call runs on one more thread for every GRAIN_SIZE elementary steps of work (multiply-adds,
# window taps, elements written): smaller calls run on the calling thread alone, where waking a
# team would cost more than it saves, and on a loaded machine a team member that is not running
# holds every other one at the closing barrier. docs/performance.md ("Threads under load") has the
# measurements behind the value.
GRAIN_SIZE = 1 << 18

_forked_after_team = False  # this process is a fork() child of a process that ran an OpenMP team
_started_team = False


def _after_fork_in_child() -> None:
    global _forked_after_team
    _forked_after_team = _forked_after_team or _started_team


os.register_at_fork(after_in_child=_after_fork_in_child)


def _cgroup_cpu_quota() -> int | None:
    """CPUs' worth of time the container's CPU quota grants (rounded up), or None if unlimited or
    not told: cgroup v2 (cpu.max of this process's cgroup and its ancestors) or v1 (cpu.cfs_*)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: "max 100000" or "QUOTA PERIOD", checked up to the root
            parts = path.strip("/").split("/") if path.strip("/") else []
            for depth in range(len(parts), -1, -1):
                limits.append(_read_quota(os.path.join("/sys/fs/cgroup", *parts[:depth], "cpu.max"), None))
        elif "cpu" in controllers.split(","):
            base = os.path.join("/sys/fs/cgroup", controllers)
            for root in (os.path.join(base, path.lstrip("/")), base):
                limits.append(_read_quota(os.path.join(root, "cpu.cfs_quota_us"), os.path.join(root, "cpu.cfs_period_us")))
    known = [n for n in limits if n is not None]
    return min(known) if known else None


def _read_quota(quota_file: str | os.PathLike, period_file: str | os.PathLike | None) -> int | None:
    try:
        with open(quota_file) as f:
            fields = f.read().split()
        if period_file is not None:
            with open(period_file) as f:
                fields.append(f.read().strip())
        quota, period = fields[0], fields[1]
        if quota in ("max", "-1"):
            return None
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError, IndexError):
        return None


_quota: list[int | None] = []  # computed on first use: [CPUs or None]
# The affinity mask's size as last read, and when: read again at most every SAMPLE_SECONDS (the
# system call costs about a microsecond, on every kernel call).
_affinity = [0, -float("inf")]


def cpu_limit() -> int:
    """CPUs this process may use: its affinity mask (read at most every ``SAMPLE_SECONDS``),
    bounded by its container's CPU quota."""
    now = time.monotonic()
    if now - _affinity[1] >= SAMPLE_SECONDS:
        try:
            _affinity[0] = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            _affinity[0] = os.cpu_count() or 1
        _affinity[1] = now
    count = _affinity[0]
    if not _quota:
        _quota.append(_cgroup_cpu_quota())
    return max(1, min(count, _quota[0] or count))


def _openmp_max_threads() -> int:
    try:
        runtime = module("fastlayers._cpu.openmp_runtime")
    except ImportError:  # no compiled kernels: nothing runs OpenMP threads
        return 1
    return runtime.max_threads()


def _check_threads(n: object, name: str = "n") -> int:
    """``n`` as a Python int (NumPy integers accepted), or a ValueError saying what was expected."""
    if not isinstance(n, bool):
        try:
            n = operator.index(n)  # type: ignore[arg-type]  # a TypeError without __index__
        except TypeError:
            pass
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
        raise ValueError(
            f"{name} (number of threads) must be an integer from 1 to {MAX_THREADS} (4 per CPU of this "
            f"machine), got {n!r}")
    return n


def get_num_threads() -> int:
    """Threads the CPU kernels may use: the context's (``threads``), else the process default
    (``set_num_threads``), else OpenMP's own default (``OMP_NUM_THREADS``,
    ``threadpoolctl.threadpool_limits``) bounded by ``cpu_limit()`` (affinity mask, container
    quota). Each call uses fewer when it has little work (``GRAIN_SIZE``).

    In a child made by ``fork()`` after this process ran kernels on several threads it is 1:
    the OpenMP runtime's thread pool does not survive ``fork()`` (a team would wait forever for
    threads the child does not have), so, as PyTorch does, such a child runs the kernels on one
    thread. Use the "spawn" or "forkserver" start method for workers that need more."""
    if _forked_after_team:
        return 1
    n = _threads_override.get() or _default_threads
    return n if n is not None else max(1, min(_openmp_max_threads(), cpu_limit()))


def threads_for(work: int) -> int:
    """Threads for one kernel call of ``work`` elementary steps: one per ``GRAIN_SIZE`` steps, at
    most ``get_num_threads()``, and, unless a count was set (``set_num_threads``, ``threads``), at
    most the CPUs that other processes leave free (``fastlayers._cpu_load``). Every CPU op's
    wrapper asks this before it starts a team."""
    grains = work // GRAIN_SIZE
    if grains < 2:  # one thread whatever the limits: asking them costs as much as a small op
        return 1
    n = min(get_num_threads(), grains)
    if n > 1 and _threads_override.get() is None and _default_threads is None:
        n = min(n, free_cpus())
    if n > 1:
        global _started_team
        _started_team = True
    return n


def set_num_threads(n: int | None) -> None:
    """Set the process-wide number of threads of the CPU kernels (``None``: the default of
    ``get_num_threads``). ``n`` is an integer from 1 to ``MAX_THREADS``."""
    global _default_threads
    _default_threads = None if n is None else _check_threads(n)


def threads(n: int) -> ContextSetting:
    """Run the CPU kernels called inside the block with at most ``n`` threads, in this thread only."""
    return ContextSetting(_threads_override, _check_threads(n))
