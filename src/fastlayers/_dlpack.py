"""Arrays of other libraries in the functional API, through DLPack (``__dlpack__``).

The rule, for every function of :mod:`fastlayers.functional`:

* an argument that is not a NumPy array and has ``__dlpack__`` (a PyTorch CPU tensor, a JAX or
  CuPy array, ...) on the host (DLPack device CPU) is read as the NumPy view
  ``numpy.from_dlpack`` gives of its memory: no copy. ``out=`` buffers may be such arrays too;
  the kernels then write into the caller's memory and the caller's objects are returned;
* results come back as the kind of array of the call's first array argument when that argument
  came through DLPack: made with its library's ``from_dlpack`` (``x.__array_namespace__()``'s,
  else that of the module that defines its type, e.g. ``torch.from_dlpack``), which wraps the
  result's memory without a copy. A library without ``from_dlpack`` gets NumPy arrays;
* GPU arrays keep their path: anything with ``__cuda_array_interface__`` (a PyTorch CUDA tensor,
  CuPy, Numba) goes to the cuda backend as before, and its results are Numba device arrays (or
  the caller's ``out=`` objects). A DLPack array on a GPU without ``__cuda_array_interface__`` is
  refused with a TypeError: the cuda backend takes GPU memory through that interface only.

Nothing here imports a foreign library: the arrays bring their own ``from_dlpack``.
"""
from __future__ import annotations

import functools
import sys

import numpy as np

# DLPack's device types (dlpack.h, DLDeviceType) that NumPy can view: host memory, plain or pinned.
_HOST_DEVICES = {1: "CPU", 3: "CUDA host (pinned)", 11: "ROCm host (pinned)"}
_DEVICE_NAMES = {2: "CUDA", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI", 10: "ROCm", 13: "CUDA managed",
                 14: "oneAPI"}


def _foreign(a):
    """Whether ``a`` is an array to take through DLPack (not NumPy, not a GPU array of the cuda
    backend's own path). Its type must implement ``__dlpack__``: an object that only forwards
    attributes to a NumPy array it holds (Numba's simulated device arrays) is not one."""
    return (not isinstance(a, np.ndarray) and hasattr(type(a), "__dlpack__")
            and not hasattr(a, "__cuda_array_interface__"))


def host_view(name, a):
    """The NumPy view of DLPack array ``a`` (host memory, no copy); a TypeError naming ``name``
    for a GPU array without ``__cuda_array_interface__`` or an array its library will not export."""
    device = getattr(a, "__dlpack_device__", None)
    kind = int(device()[0]) if device is not None else 1
    if kind not in _HOST_DEVICES:
        where = _DEVICE_NAMES.get(kind, f"DLPack device type {kind}")
        raise TypeError(
            f"{name} is a {type(a).__name__} on a {where} device that has __dlpack__ but no "
            f"__cuda_array_interface__: fastlayers takes host arrays through DLPack and GPU arrays through "
            f"__cuda_array_interface__ only (PyTorch, CuPy and Numba GPU arrays have it)"
        )
    try:
        return np.from_dlpack(a)
    except (BufferError, TypeError, RuntimeError, ValueError) as exc:
        raise TypeError(f"{name} ({type(a).__name__}) cannot be read through DLPack: {exc}") from exc


def from_dlpack_of(like):
    """The ``from_dlpack`` of ``like``'s library, or None (results then stay NumPy arrays)."""
    namespace = getattr(like, "__array_namespace__", None)
    if namespace is not None:
        return getattr(namespace(), "from_dlpack", None)
    module = sys.modules.get(type(like).__module__.partition(".")[0])
    return getattr(module, "from_dlpack", None)


def _to_caller(results, wrap, given):
    """``results`` (an array, a tuple of them, or None) wrapped by ``wrap`` (None: as they are),
    except the views of the caller's ``out=`` objects, which become those objects (``given``:
    id(view) -> object), and what is no array (a GateWorkspace), returned as it is."""
    if isinstance(results, tuple):
        return tuple(_to_caller(r, wrap, given) for r in results)
    if id(results) in given:
        return given[id(results)]
    return results if results is None or wrap is None or not isinstance(results, np.ndarray) else wrap(results)


def _is_array(a):
    return isinstance(a, np.ndarray) or hasattr(a, "__dlpack__") or hasattr(a, "__cuda_array_interface__")


# Types of arguments that are never DLPack arrays: a call made of them alone passes straight through,
# told by one set test per argument list (the per-argument test costs a microsecond on a small call).
_NATIVE = frozenset({np.ndarray, int, float, bool, str, tuple, type(None)})


def accepts_dlpack(fn):
    """``fn`` (a function of the functional API) taking DLPack arrays as the module docstring says;
    calls without them pass straight through."""
    code = fn.__code__
    names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = kwargs.get("out")
        if (_NATIVE.issuperset(map(type, args)) and _NATIVE.issuperset(map(type, kwargs.values()))
                and (type(out) is not tuple or _NATIVE.issuperset(map(type, out)))):
            return fn(*args, **kwargs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if not (any(map(_foreign, args)) or any(map(_foreign, kwargs.values())) or any(map(_foreign, outs))):
            return fn(*args, **kwargs)
        bound = dict(zip(names, args), **kwargs)
        first = next((bound[n] for n in names if n != "out" and _is_array(bound.get(n))), None)
        views = {name: host_view(name, a) if _foreign(a) else a for name, a in bound.items() if name != "out"}
        given = {}
        if out is not None:
            out_views = tuple(host_view("out" if o is out else f"out[{i}]", o) if _foreign(o) else o
                              for i, o in enumerate(outs))
            given = {id(v): o for v, o in zip(out_views, outs) if v is not o}
            views["out"] = out_views if isinstance(out, (tuple, list)) else out_views[0]
        results = fn(**views)
        return _to_caller(results, from_dlpack_of(first) if _foreign(first) else None, given)

    return wrapper
