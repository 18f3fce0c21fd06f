"""The max_pool2d spec: arguments, geometry, outputs and kernels of ``max_pool2d`` and
``max_pool2d_backward``."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._checks import MAX_ELEMENTS, array_dtype, check_array, check_bool, check_int, check_shape, pair
from ._spec import ImageBatch, Kernel, OpSpec, Problem, batch_hooks, lead_one
from ._workload import Workload, normal, onnx_graph, torch_no_grad

INDEX_DTYPE = np.dtype(np.int64)


@dataclass(frozen=True)
class Pool2dGeometry(ImageBatch):
    """Sizes and normalised parameters of one 2-D max pooling."""

    KH: int
    KW: int
    OH: int
    OW: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    ceil_mode: bool
    indices: bool = True  # whether the caller takes the indices (False: a kernel may skip them)
    # The maxima through a ReLU (x < 0 -> 0; NaN and -0.0 kept, as fastlayers.relu): a
    # Sequential's inference plan fuses the ReLU after a pool (``layers.MaxPool2D``). Never set
    # by the functional API.
    relu: bool = False

    @property
    def y_shape(self):
        return (self.N, self.C, self.OH, self.OW)

    def work(self, direction, itemsize):
        """``(bytes, "byte")`` moved by one call: the forward reads x and writes y and (when taken)
        the int64 indices; the backward reads dy and the indices and writes dx."""
        x, y = int(np.prod(self.x_shape)), int(np.prod(self.y_shape))
        return (x + y) * itemsize + y * INDEX_DTYPE.itemsize * self.indices, "byte"


@dataclass(frozen=True)
class Unpool2dGeometry(ImageBatch):
    """Sizes of a max_pool2d backward: the input (N, C, H, W) and the pooled planes (OH, OW);
    ``check_indices``: whether an out-of-range index must raise (False: the caller vouches for
    them, a GPU kernel may skip the read-back of its flag)."""

    OH: int
    OW: int
    check_indices: bool = True


def _pool_out(size, k, s, p, d, ceil_mode):
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    # PyTorch's rule: the last window must start inside the input or the left padding.
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool2d_geometry(x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Validate max_pool2d parameters against the input's shape (N, C, H, W)."""
    N, C, H, W = (int(s) for s in x_shape)
    KH, KW = pair("kernel_size", kernel_size, 1)
    SH, SW = (KH, KW) if stride is None or (isinstance(stride, (tuple, list)) and not stride) else pair("stride", stride, 1)
    PH, PW = pair("padding", padding, 0)
    DH, DW = pair("dilation", dilation, 1)
    if 2 * PH > KH or 2 * PW > KW:
        raise ValueError(
            f"padding must be at most half of kernel_size, got padding={padding} for kernel_size={kernel_size}"
        )
    if H < 1 or W < 1:  # with padding its windows would hold padding only: no maximum, no index
        raise ValueError(f"input must have planes of at least 1x1 for max_pool2d, got {H}x{W}")
    ext_h, ext_w = DH * (KH - 1) + 1, DW * (KW - 1) + 1
    if ext_h > H + 2 * PH or ext_w > W + 2 * PW:
        what = f"kernel_size {KH}x{KW}" + (f" at dilation {DH}x{DW} spans {ext_h}x{ext_w}, which" if (DH, DW) != (1, 1) else "")
        raise ValueError(f"{what} is larger than the padded input {H + 2 * PH}x{W + 2 * PW}")
    ceil_mode = check_bool("ceil_mode", ceil_mode)
    OH = _pool_out(H, KH, SH, PH, DH, ceil_mode)
    OW = _pool_out(W, KW, SW, PW, DW, ceil_mode)
    return Pool2dGeometry(N, C, H, W, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW, ceil_mode)


def check_indices_range(indices, plane):
    """Every index in [0, plane): what the kernels that do not check as they scatter rely on."""
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= plane:
            raise ValueError(f"indices must lie in [0, H*W) = [0, {plane}), got values in [{lo}, {hi}]")


def input_shape_tuple(name, shape, ndim):
    try:
        shape = tuple(check_int(name, s) for s in shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of {ndim} ints, got {shape!r}") from None
    if len(shape) != ndim or min(shape) < 0:
        raise ValueError(f"{name} must be a tuple of {ndim} non-negative ints (grad_output is {ndim}-D), got {shape}")
    if int(np.prod(shape, dtype=object)) >= MAX_ELEMENTS:
        raise ValueError(f"{name} {shape} has more elements than fastlayers can index")
    return shape


# ---------------------------------------------------------------------------- kernels


def _cpu_declines(problem):
    g = problem.geometry
    if problem.direction == "forward" and (g.dilation_h, g.dilation_w) != (1, 1):
        return "the cpu max_pool2d kernel has no dilation (kernels/cpu/max_pool2d.pyx): use backend 'numpy' or 'cuda'"
    return None


def _cuda_declines(problem):
    if problem.direction == "forward" and problem.geometry.relu:
        return "the cuda max_pool2d kernel fuses no ReLU"
    return None


KERNELS = (
    Kernel("numpy", "reference", "fastlayers.backends.numpy",
           {"forward": "max_pool2d_forward", "backward": "max_pool2d_backward"}, allocates=True),
    # allocates: the backward checks a caller's buffer's indices before writing it.
    Kernel("cpu", "simd", "fastlayers.backends.cpu.max_pool2d", {"forward": "forward", "backward": "backward"},
           declines=_cpu_declines, allocates=True),
    Kernel("cuda", "thread_per_output", "fastlayers.backends.cuda.max_pool2d",
           {"forward": "forward", "backward": "backward"}, declines=_cuda_declines, allocates=True),
)


# ---------------------------------------------------------------------------- benchmark


class MaxPool2dWorkload(Workload):
    """max_pool2d: case shape (N, C, H, W); params kernel_size, stride, padding. The forward is
    inference's, the maxima only, on every side (the engines' MaxPool node, PyTorch's default);
    the backward takes the indices of a forward that returned them, as training does."""

    required = ("kernel_size",)
    gpu_target = ("bandwidth", 0.7)

    @staticmethod
    def options(case, direction):
        if direction == "backward":
            return {}
        return dict(stride=case.params.get("stride"), padding=case.params.get("padding", 0), return_indices=False)

    @staticmethod
    def geometry(case, indices=True):
        g = pool2d_geometry(case.shape, case.params["kernel_size"], case.params.get("stride"),
                            case.params.get("padding", 0))
        return g if indices else replace(g, indices=False)

    def inputs(self, case, direction, dtype, seed):
        from .. import reference  # it validates through this module's spec

        draw = normal(seed, dtype)
        x = draw(case.shape)
        if direction == "forward":
            return dict(input=x)
        _, indices = reference.max_pool2d(x, case.params["kernel_size"], case.params.get("stride"),
                                          case.params.get("padding", 0), return_indices=True)
        return dict(grad_output=draw(indices.shape), indices=indices, input_shape=x.shape)

    @staticmethod
    def args(case, direction, inputs):
        """kernel_size follows the input, as in torch.nn.functional."""
        values = tuple(inputs.values())
        return values + (case.params["kernel_size"],) if direction == "forward" else values

    def outputs(self, case, direction, inputs, empty):
        if direction == "forward":
            return empty(self.geometry(case).y_shape, inputs["input"].dtype)
        return empty(inputs["input_shape"], inputs["grad_output"].dtype)

    def work(self, case, direction, dtype):
        return self.geometry(case, indices=direction == "backward").work(direction, np.dtype(dtype).itemsize)

    def torch_call(self, torch, case, direction, inputs, seed, device="cpu"):
        nnf, k, stride = torch.nn.functional, case.params["kernel_size"], case.params.get("stride")
        padding = case.params.get("padding", 0)
        if direction == "forward":
            x = torch.from_numpy(inputs["input"]).to(device)
            return torch_no_grad(torch, lambda: nnf.max_pool2d(x, k, stride, padding))
        # The same x the indices were taken from: the forward's inputs under the same seed.
        dy = torch.from_numpy(inputs["grad_output"]).to(device)
        x = torch.from_numpy(self.inputs(case, "forward", inputs["grad_output"].dtype, seed)["input"]).to(device).requires_grad_()
        y = nnf.max_pool2d(x, k, stride, padding)
        return lambda: torch.autograd.grad(y, (x,), dy, retain_graph=True)


    onnx_forward = True

    def onnx_model(self, onnx, case, inputs):
        """The inference engines' pool: the maxima only (with ONNX's optional indices output,
        OpenVINO ran pool-stem 8x slower than without)."""
        g = self.geometry(case)
        node = onnx.helper.make_node("MaxPool", ["input"], ["output"], kernel_shape=[g.KH, g.KW],
                                     strides=[g.stride_h, g.stride_w], pads=[g.pad_h, g.pad_w, g.pad_h, g.pad_w])
        feed = {"input": inputs["input"]}
        return onnx_graph(onnx, case, [node], feed, [("output", inputs["input"].dtype, g.y_shape)], {}), feed


class MaxPool2dSpec(OpSpec):
    name = "max_pool2d"
    functions = {"max_pool2d": "forward", "max_pool2d_backward": "backward"}
    kernels = KERNELS
    workload = MaxPool2dWorkload()

    def forward(self, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
        dt = check_array("input", input, (3, 4))
        return_indices = check_bool("return_indices", return_indices)
        batched = input.ndim == 4
        g = pool2d_geometry(input.shape if batched else (1,) + tuple(input.shape), kernel_size, stride, padding,
                            dilation, ceil_mode)
        if not return_indices:
            g = replace(g, indices=False)
        shape = g.y_shape if batched else g.y_shape[1:]
        outputs = (("output", shape, dt), ("indices", shape, INDEX_DTYPE))
        pick = (lambda r: r) if return_indices else (lambda r: r[0])
        return Problem(
            "forward", g, dict(input=input if batched else lead_one(input)), outputs,
            kernel_outputs=(("output", g.y_shape, dt), ("indices", g.y_shape, INDEX_DTYPE)),
            **batch_hooks(batched, pick),
        )

    def backward(self, grad_output, indices, input_shape, check_indices=True):
        """Indices are not range-checked here: each kernel checks them as it scatters (reading them
        once), the reference with ``check_indices_range``."""
        dt = check_array("grad_output", grad_output, (3, 4))
        batched = grad_output.ndim == 4
        input_shape = input_shape_tuple("input_shape", input_shape, grad_output.ndim)
        got = array_dtype("indices", indices)
        if got != INDEX_DTYPE:
            raise TypeError(f"indices must be an int64 array (as returned by max_pool2d), got {got}")
        check_shape("indices", indices, grad_output.shape)
        lead = grad_output.ndim - 2
        if tuple(grad_output.shape[:lead]) != input_shape[:lead]:
            what = "(N, C)" if batched else "C"
            raise ValueError(f"grad_output's {what} = {tuple(grad_output.shape[:lead])} must match input_shape's "
                             f"{input_shape[:lead]}")
        full = input_shape if batched else (1,) + input_shape
        g = Unpool2dGeometry(*full, *tuple(grad_output.shape)[-2:], check_bool("check_indices", check_indices))
        arrays = dict(grad_output=grad_output, indices=indices)
        if not batched:
            arrays = {k: lead_one(v) for k, v in arrays.items()}
        return Problem(
            "backward", g, arrays, (("grad_input", input_shape, dt),), kernel_outputs=(("grad_input", full, dt),),
            **batch_hooks(batched),
        )


MAX_POOL2D = MaxPool2dSpec()
