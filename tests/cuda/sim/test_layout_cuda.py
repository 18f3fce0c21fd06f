"""The strided-to-contiguous copy kernel that makes non-contiguous GPU inputs C-ordered.

Tested here with the backend's span arithmetic; viewing that span of a real GPU array through
``__cuda_array_interface__`` needs device pointers, which the simulator lacks."""
import numpy as np
import pytest

from tests._helpers import make_rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "view",
    [
        lambda a: a.transpose(0, 1, 3, 2),
        lambda a: a[:, ::-1, ::2, 1:],  # negative and step strides, an offset start
        lambda a: a[0, :, 1, ::-3],  # 2-D out of 4-D
        lambda a: a[1, 2, 3, ::-1],  # 1-D, reversed
    ],
    ids=["transpose", "reversed-stepped", "2d-slice", "1d-reversed"],
)
def test_gather_strided_copies_any_view(view, dtype):
    from numba import cuda

    from fastlayers._cuda import launch, layout
    from fastlayers.backends.cuda._arrays import strided_span

    base = make_rng(0).standard_normal((2, 3, 5, 7)).astype(dtype)
    v = view(base)
    strides = [s // base.itemsize for s in v.strides]
    lo, hi = strided_span(v.shape, strides)
    # As the backend does: the flat source is exactly the memory the view spans, index 0 at -lo.
    start = (v.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize
    span = base.reshape(-1)[start + lo : start + hi + 1]
    pad = 4 - v.ndim
    out = cuda.device_array(v.size, dtype=dtype)
    grid, block = launch.launch_config("elementwise", v.size)
    layout.gather_strided_kernel(dtype)[grid, block](
        cuda.to_device(span), -lo, (1,) * pad + v.shape, (0,) * pad + tuple(strides), out
    )
    np.testing.assert_array_equal(out.copy_to_host().reshape(v.shape), v)
