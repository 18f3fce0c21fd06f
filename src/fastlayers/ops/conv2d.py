"""The conv2d spec: arguments, geometry, outputs and kernels of ``conv2d`` and ``conv2d_backward``."""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from ._checks import MAX_ELEMENTS, check_array, check_choice, check_int, check_shape, is_gpu, pair
from ._spec import ImageBatch, Kernel, OpSpec, Problem, batch_hooks, lead_one
from ._workload import Workload, normal, onnx_graph, torch_no_grad
from .max_pool2d import Pool2dGeometry

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_NUMPY_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@dataclass(frozen=True)
class Conv2dGeometry(ImageBatch):
    """Sizes and normalised parameters of one 2-D convolution, and every size derived from them.

    Padding is (top, bottom, left, right): ``padding="same"`` can be asymmetric. The kernels get
    these fields as one C struct (kernels/cpu/_conv2d.pxd) or one tuple (kernels/cuda/conv2d.py).
    ``input_grad`` (backward only): whether the backward computes grad_input; when False its
    kernels skip that work and return None for it. ``pool`` and ``relu`` (forward only): the
    output's epilogue, set by a Sequential's inference plan for Conv2D -> MaxPool2D(2) -> ReLU
    (``fuse_epilogue``), never by the functional API."""

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
    input_grad: bool = True
    # The output through a 2x2 stride-2 max-pool (OH // 2 x OW // 2 of the OH x OW convolution:
    # floor mode, no indices), then a ReLU (x < 0 -> 0; NaN and -0.0 kept, as fastlayers.relu).
    pool: bool = False
    relu: bool = False

    # The derived sizes are read several times a call by the kernel wrappers, and on every call of
    # a layer's kept plan (the geometry is the same object): computed once. So is the hash, which
    # keys the CPU wrappers' caches of tilings and size checks on every call.
    def __hash__(self):
        return self._hash

    @cached_property
    def _hash(self):
        return hash(tuple(getattr(self, name) for name in self.__dataclass_fields__))

    @cached_property
    def Cg(self):
        """Input channels per group."""
        return self.C // self.groups

    @cached_property
    def Fg(self):
        """Filters (output channels) per group."""
        return self.F // self.groups

    @cached_property
    def K(self):
        """Taps summed by one output: ``Cg * KH * KW`` (an im2col column's length)."""
        return self.Cg * self.KH * self.KW

    @property
    def w_shape(self):
        return (self.F, self.Cg, self.KH, self.KW)

    @property
    def y_shape(self):
        """The output's shape: the convolution's, or with ``pool`` the pooled one."""
        if self.pool:
            return (self.N, self.F, self.OH // 2, self.OW // 2)
        return (self.N, self.F, self.OH, self.OW)

    @cached_property
    def plain(self):
        """This geometry without the epilogue (``pool``, ``relu``): the convolution alone."""
        return replace(self, pool=False, relu=False) if self.pool or self.relu else self

    @cached_property
    def pooling(self):
        """The ``Pool2dGeometry`` of the epilogue's pool (and ReLU), on the convolution's output."""
        return Pool2dGeometry(self.N, self.F, self.OH, self.OW, 2, 2, self.OH // 2, self.OW // 2, 2, 2, 0, 0, 1, 1,
                              False, indices=False, relu=self.relu)

    @cached_property
    def flops(self):
        """Multiply-adds x 2 of the forward pass."""
        return 2 * self.N * self.F * self.OH * self.OW * self.K

    def work(self, direction):
        """``(amount, unit)`` of one call: the backward computes dx (unless ``input_grad`` is
        False) and dw, each as many multiply-adds as the forward (db is negligible)."""
        return (self.flops if direction == "forward" else (1 + self.input_grad) * self.flops), "flop"


def conv2d_geometry(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """Validate conv2d parameters against the shapes of the input (N, C, H, W) and the weight
    (F, C / groups, KH, KW)."""
    N, C, H, W = (int(s) for s in x_shape)
    F, Cg, KH, KW = (int(s) for s in w_shape)
    groups = check_int("groups", groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if C % groups:
        raise ValueError(f"groups={groups} must divide the input channels C={C} of input")
    if F % groups:
        raise ValueError(f"groups={groups} must divide the output channels F={F} (weight.shape[0])")
    if Cg != C // groups:
        hint = ""
        if W == Cg * groups:  # the channels are the last axis: NHWC
            hint = (f"; input {tuple(x_shape)} looks channels-last (N, H, W, C) with C={W}: fastlayers, like "
                    f"PyTorch, takes (N, C, H, W), e.g. input.transpose(0, 3, 1, 2)")
        raise ValueError(
            f"weight.shape[1] must be C // groups = {C} // {groups} = {C // groups} (input has C={C} channels "
            f"on axis 1), got {Cg}{hint}"
        )
    if KH < 1 or KW < 1:
        raise ValueError(f"weight must have a kernel of at least 1x1, got {KH}x{KW}")
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


def fuse_epilogue(problem, pool, relu):
    """A batched forward ``problem`` with the epilogue ``pool`` (a 2x2 stride-2 max-pool of its
    output) and ``relu`` (a ReLU after it): its geometry and its output's shape. The pool needs an
    output of at least 2x2 (as max_pool2d does)."""
    g = problem.geometry
    if problem.direction != "forward" or (pool and (g.OH < 2 or g.OW < 2)):
        raise ValueError(f"a conv2d epilogue needs a forward with an output of at least 2x2 to pool, got {g}")
    g = problem.geometry = replace(g, pool=pool, relu=relu)
    (name, _, dtype), = problem.outputs
    problem.outputs = problem.kernel_outputs = ((name, g.y_shape, dtype),)
    return problem


# ---------------------------------------------------------------------------- padding modes
#
# A padding mode other than "zeros" pads the input explicitly (the kernels then run unpadded);
# the backward folds the padded input's gradient back with the adjoint of that padding: every
# padded cell is a copy of one input cell, so its gradient adds to that cell.


def _pad_indices(g, mode):
    """Rows and columns of the input that each padded row and column copies."""
    for name, size, lo, hi in (("height", g.H, g.pad_top, g.pad_bottom), ("width", g.W, g.pad_left, g.pad_right)):
        pad = max(lo, hi)
        if mode == "reflect" and pad >= size and pad:
            raise ValueError(f"padding_mode='reflect' needs padding < the input {name} {size}, got {pad}")
        if mode == "circular" and pad > size:
            raise ValueError(f"padding_mode='circular' needs padding <= the input {name} {size}, got {pad}")
        if mode == "replicate" and pad and size == 0:
            raise ValueError(f"padding_mode='replicate' needs a non-empty input {name}")
    rows = np.pad(np.arange(g.H), (g.pad_top, g.pad_bottom), mode=_NUMPY_PAD_MODE[mode])
    cols = np.pad(np.arange(g.W), (g.pad_left, g.pad_right), mode=_NUMPY_PAD_MODE[mode])
    return rows, cols


def _unpadded(g):
    Hp, Wp = g.H + g.pad_top + g.pad_bottom, g.W + g.pad_left + g.pad_right
    return Conv2dGeometry(g.N, g.C, Hp, Wp, g.F, g.KH, g.KW, g.OH, g.OW, g.stride_h, g.stride_w, 0, 0, 0, 0,
                          g.dilation_h, g.dilation_w, g.groups)


def pad_input(x, rows, cols):
    return x[:, :, rows[:, None], cols[None, :]]


def fold_padding(dxp, rows, cols, shape):
    """The adjoint of ``pad_input``: every padded cell's gradient added to the cell it copies."""
    by_rows = np.zeros(shape[:3] + (dxp.shape[3],), dxp.dtype)
    np.add.at(by_rows, (slice(None), slice(None), rows), dxp)
    dx = np.zeros(shape, dxp.dtype)
    np.add.at(dx, (slice(None), slice(None), slice(None), cols), by_rows)
    return dx


# ---------------------------------------------------------------------------- kernels


def _cuda_declines(problem):
    g = problem.geometry
    if g.pool or g.relu:
        return "the cuda conv2d kernels fuse no pool or ReLU"
    return None


def _cuda_direct_declines(problem):
    if problem.direction == "backward":
        return "the cuda 'direct' kernel is forward only (the backward runs implicit GEMMs whatever algo= says)"
    return _cuda_declines(problem)


def _cpu_depthwise_declines(problem):
    if problem.geometry.Cg != 1:
        return (f"the cpu 'depthwise' kernel takes one input channel per group (groups == in_channels), got "
                f"{problem.geometry.Cg} channels per group")
    return None


def dilation_phases(g):
    """A dilated convolution at stride 1 as an undilated one over its dilation phases. Output
    rows of one phase modulo the dilation read input rows of that phase alone when the padding is
    a multiple of the dilation (likewise columns); where the input's sizes are multiples of it
    too, the d_h * d_w phase sub-images of each image are all H / d_h x W / d_w and form one batch
    of N * d_h * d_w images, whose undilated convolution gives the output's phases. That
    geometry (``g`` itself when undilated), or None where the phases do not tile the input so."""
    dh, dw = g.dilation_h, g.dilation_w
    if (dh, dw) == (1, 1):
        return g
    if (g.stride_h, g.stride_w) != (1, 1) or g.H % dh or g.W % dw or g.pad_top % dh or g.pad_bottom % dh \
            or g.pad_left % dw or g.pad_right % dw:
        return None
    return Conv2dGeometry(g.N * dh * dw, g.C, g.H // dh, g.W // dw, g.F, g.KH, g.KW, g.OH // dh, g.OW // dw, 1, 1,
                          g.pad_top // dh, g.pad_bottom // dh, g.pad_left // dw, g.pad_right // dw, 1, 1, g.groups,
                          g.input_grad)


def _cpu_winograd_declines(problem):
    g = problem.geometry
    if (g.KH, g.KW, g.stride_h, g.stride_w) != (3, 3, 1, 1) or dilation_phases(g) is None:
        return (f"the cpu 'winograd' kernel (F(4x4, 3x3)) takes 3x3 kernels at stride 1, undilated or with "
                f"sizes and paddings that are multiples of the dilation, got kernel {g.KH}x{g.KW}, stride "
                f"{g.stride_h}x{g.stride_w}, dilation {g.dilation_h}x{g.dilation_w}, input {g.H}x{g.W}, "
                f"padding {(g.pad_top, g.pad_bottom, g.pad_left, g.pad_right)}")
    g = dilation_phases(g)
    pads = (g.pad_top, g.pad_bottom, g.pad_left, g.pad_right)
    if problem.direction == "backward" and max(pads) > 2:
        return (f"the cpu 'winograd' backward (its grad_input a forward on the flipped filters, padded by "
                f"2 - padding) takes paddings of at most 2 a side (divided by the dilation), got {pads} (top, "
                f"bottom, left, right)")
    return None


KERNELS = (
    Kernel("numpy", "reference", "fastlayers.backends.numpy",
           {"forward": "conv2d_forward", "backward": "conv2d_backward"}, allocates=True),
    Kernel("cpu", "im2col", "fastlayers.backends.cpu.conv2d", {"forward": "im2col_forward", "backward": "im2col_backward"}),
    Kernel("cpu", "direct", "fastlayers.backends.cpu.conv2d", {"forward": "direct_forward", "backward": "direct_backward"}),
    Kernel("cpu", "depthwise", "fastlayers.backends.cpu.conv2d",
           {"forward": "depthwise_forward", "backward": "depthwise_backward"}, declines=_cpu_depthwise_declines),
    Kernel("cpu", "winograd", "fastlayers.backends.cpu.conv2d",
           {"forward": "winograd_forward", "backward": "winograd_backward"}, declines=_cpu_winograd_declines),
    Kernel("cuda", "implicit_gemm", "fastlayers.backends.cuda.conv2d",
           {"forward": "implicit_gemm_forward", "backward": "implicit_gemm_backward"}, declines=_cuda_declines,
           allocates=True),
    Kernel("cuda", "direct", "fastlayers.backends.cuda.conv2d", {"forward": "direct_forward"},
           declines=_cuda_direct_declines, allocates=True),
)


# ---------------------------------------------------------------------------- benchmark


class Conv2dWorkload(Workload):
    """conv2d: case shape (N, C, H, W); params F, kernel_size, stride, padding, and optionally
    dilation and groups (default 1)."""

    algos = ("im2col", "direct", "auto")  # conv2d's ``algo=``; "auto" is the default
    required = ("F", "kernel_size")
    gpu_target = ("throughput", 0.5)

    @staticmethod
    def weight_shape(case):
        k = case.params["kernel_size"]
        return (case.params["F"], case.shape[1] // case.params.get("groups", 1), k, k)

    @staticmethod
    def options(case, direction):
        p = case.params
        return dict(stride=p.get("stride", 1), padding=p.get("padding", 0), dilation=p.get("dilation", 1),
                    groups=p.get("groups", 1))

    def geometry(self, case):
        return conv2d_geometry(case.shape, self.weight_shape(case), **self.options(case, "forward"))

    def inputs(self, case, direction, dtype, seed):
        draw = normal(seed, dtype)
        w_shape = self.weight_shape(case)
        x = draw(case.shape)
        w = draw(w_shape, 1 / np.sqrt(np.prod(w_shape[1:])))
        if direction == "forward":
            return dict(input=x, weight=w, bias=draw(w_shape[0]))
        return dict(grad_output=draw(self.geometry(case).y_shape), input=x, weight=w)

    def outputs(self, case, direction, inputs, empty):
        if direction == "forward":
            return empty(self.geometry(case).y_shape, inputs["input"].dtype)
        x, w = inputs["input"], inputs["weight"]
        return empty(x.shape, x.dtype), empty(w.shape, w.dtype), empty(w.shape[:1], w.dtype)

    def work(self, case, direction, dtype):
        return self.geometry(case).work(direction)

    def torch_call(self, torch, case, direction, inputs, seed, device="cpu"):
        """The timed PyTorch call on the same ``inputs`` (made with ``seed``), copied to ``device``
        once: forward without a graph; backward: autograd on a graph built once and retained."""
        nnf, kw = torch.nn.functional, self.options(case, direction)
        t = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
        if direction == "forward":
            return torch_no_grad(torch, lambda: nnf.conv2d(t["input"], t["weight"], t["bias"], **kw))
        x, w = t["input"].requires_grad_(), t["weight"].requires_grad_()
        b = torch.zeros(w.shape[0], dtype=w.dtype, device=device, requires_grad=True)
        y = nnf.conv2d(x, w, b, **kw)
        return lambda: torch.autograd.grad(y, (x, w, b), t["grad_output"], retain_graph=True)


    onnx_forward = True

    def onnx_model(self, onnx, case, inputs):
        g = self.geometry(case)
        node = onnx.helper.make_node(
            "Conv", ["input", "weight", "bias"], ["output"], kernel_shape=[g.KH, g.KW],
            strides=[g.stride_h, g.stride_w], pads=[g.pad_top, g.pad_left, g.pad_bottom, g.pad_right],
            dilations=[g.dilation_h, g.dilation_w], group=g.groups)
        feed = {"input": inputs["input"]}
        model = onnx_graph(onnx, case, [node], feed, [("output", inputs["input"].dtype, g.y_shape)],
                           {"weight": inputs["weight"], "bias": inputs["bias"]})
        return model, feed


class Conv2dSpec(OpSpec):
    name = "conv2d"
    functions = {"conv2d": "forward", "conv2d_backward": "backward"}
    kernels = KERNELS
    auto = {"cpu": "fastlayers.backends.cpu.conv2d:choose_algo", "cuda": "fastlayers.backends.cuda.conv2d:choose_algo"}
    workload = Conv2dWorkload()

    @staticmethod
    def _common(input, weight, stride, padding, dilation, groups, padding_mode):
        dt = check_array("input", input, (3, 4))
        check_array("weight", weight, 4, dt)
        check_choice("padding_mode", padding_mode, PADDING_MODES)
        batched = input.ndim == 4
        x_shape = tuple(input.shape) if batched else (1,) + tuple(input.shape)
        g = conv2d_geometry(x_shape, weight.shape, stride, padding, dilation, groups)
        return dt, batched, g

    def _padding(self, input, g, padding_mode):
        """(kernel geometry, padded input, rows, cols) for an explicit padding mode."""
        if is_gpu(input):
            raise NotImplementedError(
                f"padding_mode={padding_mode!r} on GPU arrays is not implemented (it pads on the host); "
                f"pass NumPy arrays or padding_mode='zeros'")
        rows, cols = _pad_indices(g, padding_mode)
        return _unpadded(g), rows, cols

    def forward(self, input, weight, bias, stride, padding, dilation, groups, padding_mode):
        dt, batched, g = self._common(input, weight, stride, padding, dilation, groups, padding_mode)
        if bias is not None:
            check_array("bias", bias, 1, dt)
            check_shape("bias", bias, (weight.shape[0],))
        x = input if batched else lead_one(input)
        kernel_g = g
        if padding_mode != "zeros":
            kernel_g, rows, cols = self._padding(input, g, padding_mode)
            x = pad_input(x, rows, cols)
        y_shape = g.y_shape if batched else g.y_shape[1:]
        return Problem(
            "forward", kernel_g, dict(input=x, weight=weight, bias=bias), (("output", y_shape, dt),),
            kernel_outputs=(("output", g.y_shape, dt),),
            **batch_hooks(batched),
        )

    def backward(self, grad_output, input, weight, stride, padding, dilation, groups, padding_mode,
                 input_grad=True):
        dt, batched, g = self._common(input, weight, stride, padding, dilation, groups, padding_mode)
        check_array("grad_output", grad_output, input.ndim, dt)
        check_shape("grad_output", grad_output, g.y_shape if batched else g.y_shape[1:])
        if not isinstance(input_grad, (bool, np.bool_)):
            raise TypeError(f"input_grad must be a bool, got {type(input_grad).__name__}")
        if not input_grad:
            g = replace(g, input_grad=False)
        x, dy = (input, grad_output) if batched else (lead_one(input), lead_one(grad_output))
        x_shape = g.x_shape if batched else g.x_shape[1:]
        # A shape of None: the output is not computed (None returned, no out= buffer taken).
        outputs = (("grad_input", x_shape if input_grad else None, dt), ("grad_weight", g.w_shape, dt),
                   ("grad_bias", (g.F,), dt))
        kernel_g = g
        to_kernel = (lambda outs: outs) if batched else (lambda outs: (lead_one(outs[0]),) + tuple(outs[1:]))
        unbatch = (lambda r: r) if batched or not input_grad else (lambda r: (r[0].reshape(x_shape),) + tuple(r[1:]))
        finish = lambda r, outs: unbatch(r)  # noqa: E731
        if padding_mode != "zeros":
            kernel_g, rows, cols = self._padding(input, g, padding_mode)
            kernel_g = replace(kernel_g, input_grad=g.input_grad)
            x = pad_input(x, rows, cols)

            def to_kernel(outs):  # the padded input's gradient is the kernel's; out[0] gets it folded
                return (None,) + tuple(outs[1:])

            def finish(r, outs):
                if r[0] is None:
                    return r
                dx = fold_padding(r[0], rows, cols, g.x_shape).reshape(x_shape)
                if outs[0] is not None:
                    np.copyto(outs[0], dx)
                    dx = outs[0]
                return (dx,) + tuple(r[1:])

        kernel_outputs = (("grad_input", kernel_g.x_shape if input_grad else None, dt),) + outputs[1:]
        return Problem("backward", kernel_g, dict(grad_output=dy, input=x, weight=weight), outputs,
                       kernel_outputs=kernel_outputs, to_kernel_out=to_kernel, finish=finish)


CONV2D = Conv2dSpec()
