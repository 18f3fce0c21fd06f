"""Every real CUDA kernel compiles to PTX for sm_90 (Hopper) and float32 kernels stay float32.

Runs without a GPU: NVVM/NVRTC from ``cuda-toolkit[nvrtc,nvvm]==13.0.*`` do the compiling."""
import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="the cuda extra (numba, numba-cuda) is not installed")
from numba import cuda, types  # noqa: E402

from fastlayers._cuda import (activation, batch_norm, conv2d, gated_rnn, layout, loss, max_pool2d, optim,  # noqa: E402
                              reduce, rnn)
from fastlayers._cuda.gemm import GEO_LEN  # noqa: E402

GEO = types.UniTuple(types.int64, GEO_LEN)
QUAD = types.UniTuple(types.int64, 4)
POOL_GEO = types.UniTuple(types.int64, 14)
i64 = types.int64


def _arr(dtype):
    return types.Array(numba.from_dtype(np.dtype(dtype)), 1, "C")


def _scalar(dtype):
    return numba.from_dtype(np.dtype(dtype))


def _gemm_sig(dt):
    return (_arr(dt),) * 5 + (GEO, i64, i64, i64, i64)


# (module, factory, factory args before the dtype, signature for a dtype): every kernel we launch.
KERNELS = [
    *[(conv2d, "gemm_kernel", (name,), _gemm_sig) for name in sorted(conv2d._GEMMS)],
    (conv2d, "direct_kernel", (), lambda dt: (_arr(dt),) * 4 + (GEO,)),
    (max_pool2d, "forward_kernel", (), lambda dt: (_arr(dt), _arr(dt), _arr(np.int64), POOL_GEO)),
    (max_pool2d, "backward_kernel", (), lambda dt: (_arr(dt), _arr(np.int64), _arr(dt), _arr(np.int32), i64, i64, i64)),
    *[(rnn, "gemm_kernel", (name,), _gemm_sig) for name in sorted(rnn._GEMMS)],
    *[(rnn, "activation_grad_kernel", (act,), lambda dt: (_arr(dt),) * 3 + (i64, i64)) for act in ("tanh", "relu")],
    (gated_rnn, "lstm_cell_kernel", (), lambda dt: (_arr(dt),) * 6 + (i64,) * 5),
    (gated_rnn, "lstm_cell_backward_kernel", (), lambda dt: (_arr(dt),) * 9 + (i64,) * 5),
    (gated_rnn, "gru_cell_kernel", (), lambda dt: (_arr(dt),) * 6 + (i64,) * 6),
    (gated_rnn, "gru_cell_backward_kernel", (), lambda dt: (_arr(dt),) * 8 + (i64,) * 4),
    (gated_rnn, "add_kernel", (), lambda dt: (_arr(dt),) * 3 + (i64,)),
    (reduce, "sum_outer_inner_kernel", (), lambda dt: (_arr(dt), _arr(dt), i64, i64, i64)),
    (reduce, "sum_splits_kernel", (), lambda dt: (_arr(dt), _arr(dt), i64, i64)),
    (reduce, "fill_kernel", (), lambda dt: (_arr(dt), i64, i64)),
    (layout, "gather_strided_kernel", (), lambda dt: (_arr(dt), i64, QUAD, QUAD, _arr(dt))),
    (activation, "relu_kernel", (), lambda dt: (_arr(dt),) * 2 + (i64,)),
    (activation, "relu_backward_kernel", (), lambda dt: (_arr(dt),) * 3 + (i64,)),
    (activation, "tanh_kernel", (), lambda dt: (_arr(dt),) * 2 + (i64,)),
    (activation, "sigmoid_kernel", (), lambda dt: (_arr(dt),) * 2 + (i64,)),
    (activation, "tanh_backward_kernel", (), lambda dt: (_arr(dt),) * 3 + (i64,)),
    (activation, "sigmoid_backward_kernel", (), lambda dt: (_arr(dt),) * 3 + (i64,)),
    (loss, "softmax_cross_entropy_kernel", (),
     lambda dt: (_arr(dt), _arr(np.int64), _arr(dt), _arr(dt), i64, i64, _scalar(dt))),
    (optim, "sgd_kernel", (), lambda dt: (_arr(dt),) * 3 + (_scalar(dt),) * 3 + (types.boolean, i64)),
    (optim, "adam_kernel", (), lambda dt: (_arr(dt),) * 4 + (_scalar(dt),) * 9 + (i64,)),
    *[(batch_norm, f"{direction}_kernel", (), lambda dt: (_arr(dt),) * 8 + (types.boolean, _scalar(dt), i64, i64, i64,
                                                                          _scalar(dt)))
      for direction in ("forward", "backward")],
    (batch_norm, "update_running_kernel", (), lambda dt: (_arr(dt),) * 4 + (_scalar(dt),) * 3 + (i64,)),
]


def test_table_lists_every_kernel_factory():
    listed = {(mod.__name__, factory) for mod, factory, _, _ in KERNELS}
    existing = {
        (mod.__name__, name)
        for mod in (activation, batch_norm, conv2d, gated_rnn, layout, loss, max_pool2d, optim, reduce, rnn)
        for name in dir(mod)
        if name.endswith("_kernel") and callable(getattr(mod, name))
    }
    assert listed == existing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mod, factory, args, signature", KERNELS,
                         ids=[f"{m.__name__.rsplit('.', 1)[1]}.{f}{a}" for m, f, a, _ in KERNELS])
def test_compiles_to_ptx_for_sm90(mod, factory, args, signature, dtype):
    kernel = getattr(mod, factory)(*args, dtype)
    # The options the kernel is jitted with (lineinfo, launch_bounds, ...), as a real launch uses.
    options = {k: kernel.targetoptions[k] for k in ("debug", "lineinfo", "opt", "fastmath", "launch_bounds")}
    ptx, _ = cuda.compile_ptx(kernel.py_func, signature(dtype), cc=(9, 0), **options)
    assert ".target sm_90" in ptx
    assert ".entry" in ptx
    if options["launch_bounds"]:
        assert f".maxntid {options['launch_bounds']}" in ptx
    if dtype == np.float32:
        # A float32 kernel doing float64 arithmetic would run at 1/64 speed on consumer GPUs and
        # half on H100: every op on .f64 registers betrays a stray promotion.
        f64_ops = [line for line in ptx.splitlines() if ".f64" in line and not line.strip().startswith("//")]
        assert not f64_ops, f64_ops[:5]
