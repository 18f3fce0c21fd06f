"""Argument checks shared by every op spec: arrays (type, dtype, rank, shape), scalar parameters
(ints and pairs, read as PyTorch reads them) and output buffers (``out=``).

Compiled kernels trust what the specs return: these checks are what keeps them in bounds.
"""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Index arithmetic in the kernels uses signed 64-bit integers, and NumPy refuses arrays of 2**63
# bytes or more: at 8 bytes an element (float64, the int64 indices) that is 2**60 elements.
MAX_ELEMENTS = 2**60
# Scalar parameters (kernel_size, stride, padding, dilation) reach the kernels as C ints.
MAX_PARAMETER = 2**31 - 1


# ---------------------------------------------------------------------------- arrays


def is_gpu(a):
    return a is not None and hasattr(a, "__cuda_array_interface__")


def is_device_array(a):
    """Whether ``a`` lives on the GPU: ``is_gpu``, or a device array of Numba's CUDA simulator
    (``copy_to_host`` but no ``__cuda_array_interface__``). What the layers, losses and optimisers
    go by, where the dispatch goes by ``is_gpu``; False at once for NumPy arrays."""
    return not isinstance(a, np.ndarray) and (hasattr(a, "__cuda_array_interface__") or hasattr(a, "copy_to_host"))


def array_dtype(name, a):
    """The NumPy dtype of a NumPy or GPU array ``a`` (a TypeError naming ``name`` for non-arrays)."""
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is not None:  # GPU arrays of any family (a torch dtype is no numpy dtype)
        return np.dtype(cai["typestr"])
    if isinstance(getattr(a, "dtype", None), np.dtype):
        return a.dtype
    raise TypeError(f"{name} must be an array (numpy.ndarray, a host array with __dlpack__, or a GPU array), got {type(a).__name__}")


def dtype_of(name, a):
    """The dtype of array-like ``a``, refusing anything but (native-order) float32/float64."""
    dt = array_dtype(name, a)
    if dt not in FLOAT_DTYPES:
        hint = ""
        if dt.kind in "iub":
            hint = f"; convert with {name}.astype(numpy.float32)"
        elif dt.kind == "f" and dt.newbyteorder("=") in FLOAT_DTYPES and not dt.isnative:
            hint = (f" ({dt.str}: {'big' if dt.byteorder == '>' else 'little'}-endian, not this machine's byte "
                    f"order, e.g. read from a file); convert with {name}.astype({name}.dtype.newbyteorder('='))")
        raise TypeError(f"{name} must have dtype float32 or float64, got {dt}{hint}")
    return dt


def check_array(name, a, ndim, dtype=None):
    """Check type, dtype and rank of ``a`` (``ndim`` an int or a tuple of allowed ranks); return
    its dtype. ``dtype``, when given, is the dtype the other arguments already have: a mismatch
    is an error (fastlayers never silently promotes)."""
    dt = dtype_of(name, a)
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if a.ndim not in allowed:
        want = " or ".join(f"{n}-D" for n in allowed)
        raise ValueError(f"{name} must be {want}, got {a.ndim}-D array of shape {tuple(a.shape)}")
    if dtype is not None and dt != dtype:
        raise TypeError(f"{name} has dtype {dt} but the other arguments are {dtype}; mixed dtypes are not supported")
    size = math.prod(a.shape)
    if size >= MAX_ELEMENTS:
        raise ValueError(f"{name} has {size} elements, more than fastlayers can index")
    return dt


def check_shape(name, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")


def check_arrays_like(dtype, shape, **arrays):
    """Check that every named array has ``dtype`` and ``shape``."""
    for name, a in arrays.items():
        check_array(name, a, len(shape), dtype)
        check_shape(name, a, shape)


def check_out(name, out, shape, dtype):
    """Validate a caller-supplied host output buffer: right shape and dtype, C-contiguous, writable."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    check_shape(name, out, shape)
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out


def _overlap(a, b):
    """Whether two arrays share an element: the exact test where the bounds check says maybe
    (interleaved views of one buffer do not), an overlap when even that is too hard to tell.
    Two mappings of one file are different memory to NumPy: they cannot be seen."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return np.shares_memory(a, b, max_work=1 << 20)
    except np.exceptions.TooHardError:
        return True


def check_no_alias(name, out, others):
    """Kernels read their inputs while they write their outputs: a buffer overlapping an input
    or another output would be read after being overwritten, a silent wrong answer."""
    for other_name, a in others.items():
        if isinstance(a, np.ndarray) and _overlap(out, a):
            raise ValueError(f"{name} must not share memory with {other_name}")


# ---------------------------------------------------------------------------- scalar parameters


def check_labels(labels, logits_shape):
    """``labels`` as an integer array of shape ``logits_shape[:-1]`` with values in [0, K), K the
    last axis (a TypeError or ValueError naming it otherwise)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.shape != tuple(logits_shape[:-1]):
        raise ValueError(f"labels must have shape {tuple(logits_shape[:-1])} (logits without its last axis), "
                         f"got {labels.shape}")
    K = logits_shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= K):
        raise ValueError(f"labels must lie in [0, {K}), got values in [{labels.min()}, {labels.max()}]")
    return labels


def check_int(name, v):
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(v).__name__}") from None


def check_bool(name, v):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def pair(name, v, minimum):
    """Normalise an int, a 1-tuple or a pair of ints to a tuple (a, b), each >= ``minimum``.

    A 1-tuple ``(k,)`` means ``(k, k)``, as PyTorch reads it."""
    if isinstance(v, (tuple, list)):
        if len(v) not in (1, 2):
            raise ValueError(f"{name} must be an int or a pair of ints, got {len(v)} values: {tuple(v)}")
        p = (check_int(name, v[0]), check_int(name, v[-1]))
    else:
        i = check_int(name, v)
        p = (i, i)
    if min(p) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if max(p) > MAX_PARAMETER:
        raise ValueError(f"{name} must be at most 2**31 - 1 (the kernels index with C ints), got {v}")
    return p


def check_real(name, v, low, high, low_open):
    """A real number (not a bool) in [low, high], or (low, high] with ``low_open``, as a float."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not (low < v if low_open else low <= v) or not v <= high:
        raise ValueError(f"{name} must lie in {'(' if low_open else '['}{low}, {high}], got {v}")
    return v


def check_choice(name, v, choices):
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {v!r}")
    return v
