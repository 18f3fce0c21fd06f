"""What every op spec is made of: a ``Problem`` (one validated call: its geometry, its arrays, its
outputs) and ``Kernel`` entries (one implementation on one backend, and which problems it declines).

The run of a problem is the same for every op (``run``): check the caller's ``out=``, let the
dispatch pick a backend and a kernel, allocate the host outputs the kernel does not allocate
itself, call it, and hand the results to the problem's ``finish``.
"""
from __future__ import annotations

import functools
import importlib
import operator
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ._checks import check_no_alias, check_out, is_gpu


NONE = type(None)  # ``NONE in map(type, outs)``: is a buffer missing (``None in outs`` would compare arrays)


def _never(problem):
    return None


def module(name):
    """The module ``name``, imported on first use. An imported module is read from sys.modules
    directly: import_module's own lookup costs microseconds, on every call of every op."""
    found = sys.modules.get(name)
    return found if found is not None else importlib.import_module(name)


@dataclass(frozen=True)
class Kernel:
    """One implementation of an op family on one backend.

    ``functions`` maps a direction ("forward", "backward") to the name of a function in
    ``module`` called as ``fn(*problem.arrays.values(), problem.geometry, outs)`` and returning
    the tuple of its outputs. ``declines(problem)`` returns why this kernel cannot run a problem
    (a sentence) or None: the dispatch then takes another kernel, or says why none can.
    ``allocates``: the kernel gets the caller's buffers (None where none was given) and makes the
    others itself (the reference, and the cuda kernels, which allocate on the device); otherwise it
    gets host buffers for every output."""

    backend: str
    algo: str
    module: str
    functions: dict
    declines: Callable = _never
    allocates: bool = False

    def load(self, direction):
        return getattr(module(self.module), self.functions[direction])


@dataclass(frozen=True)
class ImageBatch:
    """The input sizes of a 2-D op's geometry (its first fields): N images of C channels of H x W."""

    N: int
    C: int
    H: int
    W: int

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)


@dataclass
class Problem:
    """One validated call of an op.

    ``arrays``: the kernel's array arguments by name, in its argument order (None where absent);
    ``outputs``: ``(name, shape, dtype)`` of every output as the caller sees it (what ``out=`` is
    checked against; a shape of None: an output this call does not compute, returned as None); ``kernel_outputs``: the same for the kernel, when they differ (an unbatched
    call runs as a batch of one); ``to_kernel_out`` maps the caller's buffers to the kernel's;
    ``finish`` maps the kernel's results (and the caller's buffers) to what the function returns."""

    direction: str
    geometry: Any
    arrays: dict
    outputs: tuple
    kernel_outputs: Optional[tuple] = None
    to_kernel_out: Callable = staticmethod(lambda outs: outs)
    finish: Callable = staticmethod(lambda results, outs: results)
    options: dict = field(default_factory=dict)  # op parameters kernels may decline (e.g. nonlinearity)
    # Whether a plan of this problem may run again on other arrays of the same signatures: not
    # where its hooks hold the call's own arrays (batch_norm's training update of the running
    # statistics).
    replayable: bool = True

    @property
    def on_gpu(self):
        return any(is_gpu(a) for a in self.arrays.values())


def check_outs(problem, out, single):
    """The caller's ``out`` as a tuple with one entry (maybe None) per output, each host buffer
    checked (shape, dtype, contiguity, no overlap with the inputs or the other outputs). GPU
    buffers are the cuda backend's to check. ``single``: ``out`` may be one buffer for the first
    output (the others then allocated)."""
    count = len(problem.outputs)
    if out is None:
        return (None,) * count
    if count == 1 or (single and not isinstance(out, (tuple, list))):
        out = (out,) + (None,) * (count - 1)
    if not isinstance(out, (tuple, list)) or len(out) != count:
        raise TypeError(f"out must be a tuple of {count} arrays (or None), got {type(out).__name__}")
    name = (lambda i: "out") if count == 1 else (lambda i: f"out[{i}]")
    for i, (o, (output, shape, _)) in enumerate(zip(out, problem.outputs)):
        if shape is None and o is not None:
            raise ValueError(f"{name(i)} must be None: {output} is not computed by this call")
    if problem.on_gpu:
        return tuple(out)
    others = dict(problem.arrays)
    for i, (o, (_, shape, dtype)) in enumerate(zip(out, problem.outputs)):
        if o is not None:
            check_out(name(i), o, shape, dtype)
            check_no_alias(name(i), o, others)
            others[name(i)] = o
    return tuple(out)


class Plan:
    """The kernel call of a validated problem, to run again on arrays of the same signature
    (type, shape, dtype, strides) and the same options without validating them again: what a
    layer keeps per input signature (``fastlayers.layers``). ``call(arrays, outs)`` runs the
    kernel on ``arrays`` (in the kernel's argument order) and the kernel's view of the caller's
    buffers ``outs`` (None where not given) and returns the kernel's results; ``finish(results,
    outs)`` what the function returns. ``direct``: the problem's arrays are the call's arguments
    themselves (no padded or reshaped copy), so a caller may pass its new arguments as they are.
    Keeping a plan is sound only where the problem's hooks depend on its geometry alone (not on
    the arrays of the call they were made for, as batch_norm's training ``finish`` does: such a
    problem is not ``replayable``)."""

    __slots__ = ("fn", "geometry", "specs", "to_kernel_out", "finish", "direct")

    def __init__(self, problem, kernel, arguments=None):
        self.fn = kernel.load(problem.direction)
        self.geometry = problem.geometry
        # Host buffers for the kernels that do not allocate their outputs themselves.
        self.specs = None if kernel.allocates else (problem.kernel_outputs or problem.outputs)
        self.to_kernel_out = problem.to_kernel_out
        self.finish = problem.finish
        self.direct = arguments is not None and len(arguments) == len(problem.arrays) and all(
            a is b for a, b in zip(arguments, problem.arrays.values()))

    def call(self, arrays, outs):
        if self.specs is not None and NONE in map(type, outs):
            # an output of shape None is not computed (conv2d_backward's input_grad=False)
            outs = tuple(np.empty(shape, dtype) if o is None and shape is not None else o
                         for o, (_, shape, dtype) in zip(outs, self.specs))
        return tuple(self.fn(*arrays, self.geometry, outs))


def plan(spec, problem, backend, algo, arguments=None):
    """The ``Plan`` of ``problem`` of ``spec`` on the kernel the dispatch picks (``arguments``:
    the array arguments of the call, to tell whether the plan is ``direct``)."""
    # The dispatch imports this module: it is looked up at the call (an import statement here
    # would cost a microsecond on every call).
    dispatch = module("fastlayers._dispatch")
    kernel = dispatch.select_kernel(spec, problem, backend, algo)
    if algo == "auto":  # with fl.set_autotune(True): the fastest, timed on the problem's arrays
        def call(k):
            blank = problem.to_kernel_out((None,) * len(problem.outputs))
            return Plan(problem, k).call(problem.arrays.values(), blank)

        kernel = dispatch.autotuned_kernel(spec, problem, kernel, call)
    return Plan(problem, kernel, arguments)


def run(spec, problem, backend, algo, out, single_out=True):
    """Run ``problem`` of ``spec`` on the kernel the dispatch picks; return what the function returns."""
    outs = check_outs(problem, out, single_out)
    p = plan(spec, problem, backend, algo)
    _last_run.made = (problem, p)
    return p.finish(p.call(problem.arrays.values(), p.to_kernel_out(outs)), outs)


# The problem and plan of this thread's last ``run`` (read by ``replays`` after the call).
_last_run = threading.local()


def _signature(a):
    """What validating argument ``a`` of a functional call depends on: type, shape, dtype and
    strides of a NumPy array, type and value of a plain value. A TypeError for anything else (a
    GPU array, a NumPy scalar, a list): such calls are never replayed, and no key holds an object
    the caller may want freed."""
    kind = type(a)
    if kind is np.ndarray:
        return a.shape, a.dtype, a.strides
    if kind is tuple:
        return tuple(map(_signature, a))
    if kind in _PLAIN:
        return kind, a
    raise TypeError("not replayable")


_PLAIN = frozenset({int, float, bool, str, NONE})
# Replays a function keeps (one per signature of its calls); past this many it starts over.
MAX_REPLAYS = 256


class _Replay:
    """A functional call's plan, to run again on the arguments of a call with the same
    signatures: ``pick`` takes the kernel's arrays from the call's argument values (positional,
    then keyword, then None for the arrays that are None)."""

    __slots__ = ("plan", "pick", "names", "out_names", "count")

    def __init__(self, problem, p, positions):
        self.plan, self.names, self.count = p, tuple(problem.arrays), len(problem.outputs)
        self.out_names = ("out",) if self.count == 1 else tuple(f"out[{i}]" for i in range(self.count))
        getter = operator.itemgetter(*(-1 if i is None else i for i in positions))
        self.pick = getter if len(positions) > 1 else (lambda values: (getter(values),))

    def _outs(self, out, arrays):
        """The caller's buffers as the first call's ``check_outs`` laid them out. Their shapes,
        dtypes, strides and which are None are the key's: what is left to check is that each
        is writeable and overlaps no input and no other buffer."""
        outs = out if type(out) is tuple else (out,) + (None,) * (self.count - 1)
        others = dict(zip(self.names, arrays))
        for name, o in zip(self.out_names, outs):
            if o is not None:
                if not o.flags.writeable:
                    raise ValueError(f"{name} must be writeable")
                check_no_alias(name, o, others)
                others[name] = o
        return outs

    def __call__(self, values, out):
        arrays = self.pick(values)
        outs = (None,) * self.count if out is None else self._outs(out, arrays)
        p = self.plan
        return p.finish(p.call(arrays, p.to_kernel_out(outs)), outs)


def _positions(problem, values):
    """Where each of ``problem``'s arrays is among the call's argument ``values`` (None for an
    array that is None); None when one is not an argument itself (a padded, reshaped or
    zero-filled array: the call is not replayed) or is given as several."""
    positions = []
    for a in problem.arrays.values():
        if a is None:
            positions.append(None)
            continue
        found = [i for i, v in enumerate(values) if v is a]
        if len(found) != 1:  # none, or one array given as two arguments: which is which later?
            return None
        positions.append(found[0])
    return tuple(positions)


_replays = []  # every replaying function's plans, for forget_replays()


def forget_replays():
    """Drop every kept plan of the functional API: the next call of each signature is validated
    and dispatched in full again (what a test that spies on the dispatch needs)."""
    for plans in _replays:
        plans.clear()


def replays(fn):
    """``fn``, a function of the functional API, replaying its calls' plans: the first call on
    NumPy arrays of one signature (their shapes, dtypes and strides, and the other arguments'
    values) is validated in full and its plan (``Plan``: the kernel chosen, the geometry) kept;
    a later call of the same signature under the same backend settings runs that plan on its
    arrays after checking only that its ``out=`` buffers are writeable and overlap nothing,
    since nothing else that validation depends on can differ. That cuts a small call's cost
    by about two thirds (docs/performance.md)."""
    plans = {}
    _replays.append(plans)
    dispatch = module("fastlayers._dispatch")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            key = (len(args), *kwargs, *map(_signature, args), *map(_signature, kwargs.values()),
                   *dispatch.plan_settings())
        except TypeError:
            return fn(*args, **kwargs)
        kept = plans.get(key)
        values = (*args, *kwargs.values(), None)  # None: where the kernel's absent arrays are read
        if kept is not None:
            return kept(values, kwargs.get("out"))
        _last_run.made = None
        result = fn(*args, **kwargs)
        made, _last_run.made = _last_run.made, None
        if made is not None and made[0].replayable and not made[0].on_gpu:
            positions = _positions(made[0], values)
            if positions is not None:
                if len(plans) >= MAX_REPLAYS:
                    plans.clear()
                plans[key] = _Replay(made[0], made[1], positions)
        return result

    return wrapper


def first_result(results, outs):
    """The ``finish`` of a single-output op: its one result (the caller's buffer where given)."""
    return results[0]


def lead_one(a):
    """``a`` with an axis of one in front (a view): an unbatched input as a batch of one, a step
    as a sequence of one."""
    return None if a is None else a.reshape((1,) + tuple(a.shape))


def drop_lead(results, outs):
    """The kernel's results without their leading axis of one (``lead_one`` undone): the caller's
    buffers where given."""
    return tuple(r.reshape(tuple(r.shape)[1:]) if o is None else o for r, o in zip(results, outs))


def batch_hooks(batched, pick=lambda results: results[0]):
    """``to_kernel_out`` and ``finish`` (a dict to pass to ``Problem``) of a call whose arrays
    may lack the batch axis (an unbatched call runs as a batch of one): the caller's buffers
    viewed with it, the kernel's results without it, then ``pick`` (what the function returns
    from the tuple of results: by default the first)."""
    if batched:
        return dict(to_kernel_out=lambda outs: outs, finish=lambda r, outs: pick(r))
    return dict(to_kernel_out=lambda outs: tuple(map(lead_one, outs)),
                finish=lambda r, outs: pick(drop_lead(r, outs)))


class OpSpec:
    """An op family: its public functions (name -> direction), its kernels on every backend,
    per backend with several, how ``algo="auto"`` chooses (``auto``: backend -> "module:function"
    taking the problem and returning an algo name), and what the benchmark times (``workload``,
    an ``ops._workload.Workload``)."""

    name = ""
    functions: dict = {}
    kernels: tuple = ()
    auto: dict = {}
    workload: Any = None  # an ops._workload.Workload

    def kernels_on(self, backend):
        return tuple(k for k in self.kernels if k.backend == backend)

    def algos(self):
        return tuple(dict.fromkeys(k.algo for k in self.kernels if k.backend != "numpy"))

    def choose(self, backend, problem, candidates):
        """The kernel ``algo="auto"`` runs among ``candidates`` (kernels that accept the problem)."""
        where = self.auto.get(backend)
        if where is None or len(candidates) == 1:
            return candidates[0]
        name, function = where.split(":")
        algo = getattr(module(name), function)(problem)
        return next((k for k in candidates if k.algo == algo), candidates[0])
