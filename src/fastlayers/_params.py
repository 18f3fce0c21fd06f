"""Argument validation and the geometry (output sizes, normalised parameters) of every op.

Every public entry point — the functional API, the reference, every backend — validates through
here, so an argument error reads the same whichever backend would have run. Compiled kernels
trust what this module returns: it is the one place that keeps them in bounds.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Index arithmetic in the kernels uses signed 64-bit integers, and NumPy refuses arrays of 2**63
# bytes or more: at 8 bytes an element (float64, the int64 indices) that is 2**60 elements.
MAX_ELEMENTS = 2**60
# Scalar parameters (kernel_size, stride, padding, dilation) reach the kernels as C ints.
MAX_PARAMETER = 2**31 - 1


# ---------------------------------------------------------------------------- arrays


def array_dtype(name, a):
    """The NumPy dtype of a NumPy or GPU array ``a`` (a TypeError naming ``name`` for non-arrays)."""
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is not None:  # GPU arrays of any family (a torch dtype is no numpy dtype)
        return np.dtype(cai["typestr"])
    if isinstance(getattr(a, "dtype", None), np.dtype):
        return a.dtype
    raise TypeError(f"{name} must be an array (numpy.ndarray or a GPU array), got {type(a).__name__}")


def dtype_of(name, a):
    """The dtype of array-like ``a``, refusing anything but float32/float64."""
    dt = array_dtype(name, a)
    if dt not in FLOAT_DTYPES:
        hint = ""
        if dt.kind in "iub":
            hint = f"; convert with {name}.astype(numpy.float32)"
        raise TypeError(f"{name} must have dtype float32 or float64, got {dt}{hint}")
    return dt


def check_array(name, a, ndim, dtype=None):
    """Check type, dtype and ndim of ``a``; return its dtype.

    ``dtype``, when given, is the dtype the other arguments already have: a mismatch is an error
    (fastlayers never silently promotes)."""
    dt = dtype_of(name, a)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {a.ndim}-D array of shape {tuple(a.shape)}")
    if dtype is not None and dt != dtype:
        raise TypeError(f"{name} has dtype {dt} but the other arguments are {dtype}; mixed dtypes are not supported")
    size = int(np.prod(a.shape, dtype=object))
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
    """Validate a caller-supplied output buffer: right shape and dtype, C-contiguous, writable."""
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


def check_out_tuple(name, out, count):
    if out is None:
        return (None,) * count
    if not isinstance(out, (tuple, list)) or len(out) != count:
        raise TypeError(f"{name} must be a tuple of {count} arrays (or None), got {type(out).__name__}")
    return tuple(out)


# ---------------------------------------------------------------------------- scalar parameters


def _int(name, v):
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(v).__name__}") from None


def pair(name, v, minimum):
    """Normalise an int or a pair of ints to a tuple (a, b), each >= ``minimum``."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {len(v)} values: {tuple(v)}")
        p = (_int(name, v[0]), _int(name, v[1]))
    else:
        i = _int(name, v)
        p = (i, i)
    if min(p) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if max(p) > MAX_PARAMETER:
        raise ValueError(f"{name} must be at most 2**31 - 1 (the kernels index with C ints), got {v}")
    return p


# ---------------------------------------------------------------------------- conv2d


def check_conv2d_arrays(x, w, b=None):
    """Check x (N, C, H, W), w (F, ., KH, KW) and b (F,) agree in dtype and rank; return the dtype."""
    dt = check_array("x", x, 4)
    check_array("w", w, 4, dt)
    if b is not None:
        check_array("b", b, 1, dt)
        check_shape("b", b, (w.shape[0],))
    return dt


@dataclass(frozen=True)
class Conv2dGeometry:
    """Sizes and normalised parameters of one 2-D convolution.

    Padding is (top, bottom, left, right): ``padding="same"`` can be asymmetric."""

    N: int
    C: int
    H: int
    W: int
    F: int
    KH: int
    KW: int
    OH: int
    OW: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    dilation_h: int
    dilation_w: int
    groups: int

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self):
        return (self.F, self.C // self.groups, self.KH, self.KW)

    @property
    def y_shape(self):
        return (self.N, self.F, self.OH, self.OW)

    @property
    def flops(self):
        """Multiply-adds x 2 of the forward pass."""
        return 2 * self.N * self.F * self.OH * self.OW * (self.C // self.groups) * self.KH * self.KW


def conv2d_geometry(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """Validate conv2d parameters against the shapes of x (N, C, H, W) and w (F, C/groups, KH, KW)."""
    N, C, H, W = (int(s) for s in x_shape)
    F, Cg, KH, KW = (int(s) for s in w_shape)
    groups = _int("groups", groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if C % groups:
        raise ValueError(f"groups={groups} must divide the input channels C={C} of x")
    if F % groups:
        raise ValueError(f"groups={groups} must divide the output channels F={F} (w.shape[0])")
    if Cg != C // groups:
        raise ValueError(
            f"w.shape[1] must be C // groups = {C} // {groups} = {C // groups} (x has C={C} channels), got {Cg}"
        )
    if KH < 1 or KW < 1:
        raise ValueError(f"w must have a kernel of at least 1x1, got {KH}x{KW}")
    sh, sw = pair("stride", stride, 1)
    dh, dw = pair("dilation", dilation, 1)
    ext_h, ext_w = dh * (KH - 1) + 1, dw * (KW - 1) + 1
    if isinstance(padding, str):
        if padding == "valid":
            pt = pb = pl = pr = 0
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError(f"padding='same' needs stride 1 (as in PyTorch), got stride={stride}")
            pt, pl = (ext_h - 1) // 2, (ext_w - 1) // 2
            pb, pr = ext_h - 1 - pt, ext_w - 1 - pl
        else:
            raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    else:
        pt, pl = pair("padding", padding, 0)
        pb, pr = pt, pl
    Hp, Wp = H + pt + pb, W + pl + pr
    if ext_h > Hp or ext_w > Wp:
        raise ValueError(
            f"kernel extent {ext_h}x{ext_w} (kernel {KH}x{KW}, dilation {dh}x{dw}) is larger than "
            f"the padded input {Hp}x{Wp}"
        )
    OH = (Hp - ext_h) // sh + 1
    OW = (Wp - ext_w) // sw + 1
    g = Conv2dGeometry(N, C, H, W, F, KH, KW, OH, OW, sh, sw, pt, pb, pl, pr, dh, dw, groups)
    if N * F * OH * OW >= MAX_ELEMENTS or N * C * Hp * Wp >= MAX_ELEMENTS:
        raise ValueError("conv2d sizes are too large to index")
    return g


# ---------------------------------------------------------------------------- max_pool2d


@dataclass(frozen=True)
class Pool2dGeometry:
    N: int
    C: int
    H: int
    W: int
    KH: int
    KW: int
    OH: int
    OW: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    ceil_mode: bool

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.C, self.OH, self.OW)


def _pool_out(size, k, s, p, ceil_mode):
    span = size + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    # PyTorch's rule: the last window must start inside the input or the left padding.
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool2d_geometry(x_shape, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Validate max_pool2d parameters against x's shape (N, C, H, W)."""
    N, C, H, W = (int(s) for s in x_shape)
    KH, KW = pair("kernel_size", kernel_size, 1)
    SH, SW = (KH, KW) if stride is None else pair("stride", stride, 1)
    PH, PW = pair("padding", padding, 0)
    if 2 * PH > KH or 2 * PW > KW:
        raise ValueError(
            f"padding must be at most half of kernel_size, got padding={padding} for kernel_size={kernel_size}"
        )
    if H < 1 or W < 1:  # with padding its windows would hold padding only: no maximum, no index
        raise ValueError(f"x must have planes of at least 1x1 for max_pool2d, got {H}x{W}")
    if KH > H + 2 * PH or KW > W + 2 * PW:
        raise ValueError(f"kernel_size {KH}x{KW} is larger than the padded input {H + 2 * PH}x{W + 2 * PW}")
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    OH = _pool_out(H, KH, SH, PH, ceil_mode)
    OW = _pool_out(W, KW, SW, PW, ceil_mode)
    return Pool2dGeometry(N, C, H, W, KH, KW, OH, OW, SH, SW, PH, PW, bool(ceil_mode))


def check_pool_backward_args(dy, indices, input_shape, dtype=None, check_range=True):
    """Validate max_pool2d_backward's arguments; return input_shape as a tuple of ints.

    ``check_range=False`` is for kernels that check each index themselves as they scatter."""
    check_array("dy", dy, 4, dtype)
    input_shape = input_shape_4d("input_shape", input_shape)
    got = array_dtype("indices", indices)
    if got != np.int64:
        raise TypeError(f"indices must be an int64 array (as returned by max_pool2d), got {got}")
    check_shape("indices", indices, dy.shape)
    if tuple(dy.shape[:2]) != input_shape[:2]:
        raise ValueError(f"dy's (N, C) = {tuple(dy.shape[:2])} must match input_shape's {input_shape[:2]}")
    plane = input_shape[2] * input_shape[3]
    if check_range and indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= plane:
            raise ValueError(f"indices must lie in [0, H*W) = [0, {plane}), got values in [{lo}, {hi}]")
    return input_shape


def input_shape_4d(name, shape):
    try:
        shape = tuple(_int(name, s) for s in shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of 4 ints (N, C, H, W), got {shape!r}") from None
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"{name} must be a tuple of 4 non-negative ints (N, C, H, W), got {shape}")
    if int(np.prod(shape, dtype=object)) >= MAX_ELEMENTS:
        raise ValueError(f"{name} {shape} has more elements than fastlayers can index")
    return shape


# ---------------------------------------------------------------------------- rnn


@dataclass(frozen=True)
class RnnGeometry:
    T: int  # 1 for rnn_step
    N: int
    D: int
    H: int


def rnn_geometry(x, h_prev, Wx, Wh, b=None, sequence=False):
    """Check shapes and dtypes of an RNN step (x (N, D)) or sequence (x (T, N, D)).

    ``h_prev`` may be None for a sequence (zero initial state). Returns (geometry, dtype)."""
    dt = check_array("x_seq" if sequence else "x", x, 3 if sequence else 2)
    if sequence:
        T, N, D = x.shape
    else:
        T, (N, D) = 1, x.shape
    check_array("Wx", Wx, 2, dt)
    H = Wx.shape[1]
    check_shape("Wx", Wx, (D, H))
    check_array("Wh", Wh, 2, dt)
    check_shape("Wh", Wh, (H, H))
    hname = "h0" if sequence else "h_prev"
    if h_prev is not None or not sequence:
        check_array(hname, h_prev, 2, dt)
        check_shape(hname, h_prev, (N, H))
    if b is not None:
        check_array("b", b, 1, dt)
        check_shape("b", b, (H,))
    if T * N * H >= MAX_ELEMENTS:
        raise ValueError(f"rnn sizes T={T}, N={N}, H={H} are too large to index")
    return RnnGeometry(int(T), int(N), int(D), int(H)), dt


# ---------------------------------------------------------------------------- lstm, gru

GATES = {"lstm": 4, "gru": 3}  # PyTorch's gate order: lstm (i, f, g, o), gru (r, z, n)


def gated_geometry(cell, x, Wx, Wh, states, biases, sequence=False, backward=None):
    """Check shapes and dtypes of an LSTM or GRU step (x (N, D)) or sequence (x (T, N, D)).

    ``Wx`` is (D, G*H) and ``Wh`` (H, G*H) with G gates (``GATES[cell]``), gate blocks side by side
    in PyTorch's order; ``states`` and ``biases`` are dicts name -> array or None, shaped (N, H)
    and (G*H,); ``backward`` a dict name -> array or None of per-step arrays shaped (T, N, H)
    for a sequence, (N, H) for a step. Returns (geometry, dtype)."""
    gates = GATES[cell]
    dt = check_array("x_seq" if sequence else "x", x, 3 if sequence else 2)
    if sequence:
        T, N, D = x.shape
    else:
        T, (N, D) = 1, x.shape
    check_array("Wx", Wx, 2, dt)
    check_array("Wh", Wh, 2, dt)
    H = Wh.shape[0]
    width = gates * H
    if Wh.shape[1] != width and Wh.shape[1] * gates == Wh.shape[0]:
        raise ValueError(f"Wh must have shape (H, {gates}*H) with {gates} gates, got {tuple(Wh.shape)}: "
                         f"this looks like PyTorch's weight_hh ({gates}*H, H); pass weight_hh.T")
    check_shape("Wh", Wh, (H, width))
    if Wx.shape[0] != D and Wx.shape[1] == D and Wx.shape[0] == width:
        raise ValueError(f"Wx must have shape {(D, width)} (input features, {gates} gates x H), got "
                         f"{tuple(Wx.shape)}: this looks like PyTorch's weight_ih; pass weight_ih.T")
    check_shape("Wx", Wx, (D, width))
    for name, s in states.items():
        if s is not None:
            if getattr(s, "ndim", 2) == 3 and tuple(s.shape[1:]) == (N, H):
                raise ValueError(f"{name} must have shape {(N, H)}, got {tuple(s.shape)}: the (layers, N, H) "
                                 f"states of torch.nn.{cell.upper()} are one (N, H) state per layer here")
            check_array(name, s, 2, dt)
            check_shape(name, s, (N, H))
    for name, b in biases.items():
        if b is not None:
            check_array(name, b, 1, dt)
            check_shape(name, b, (width,))
    if backward:
        check_arrays_like(dt, (T, N, H) if sequence else (N, H),
                          **{k: v for k, v in backward.items() if v is not None})
    if T * N * width >= MAX_ELEMENTS:
        raise ValueError(f"{cell} sizes T={T}, N={N}, H={H} are too large to index")
    return RnnGeometry(int(T), int(N), int(D), int(H)), dt
