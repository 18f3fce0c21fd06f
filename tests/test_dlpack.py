"""Arrays of other libraries through DLPack in the functional API (fastlayers._dlpack): read
without a copy, results returned as the caller's kind of array, GPU DLPack without
``__cuda_array_interface__`` refused."""
import types

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref


class HostArray:
    """A minimal array of a foreign library: a NumPy array's memory exported through DLPack only
    (no NumPy type, no ``__array__``), with an array namespace whose ``from_dlpack`` makes more
    of them without copying."""

    namespace = types.SimpleNamespace(from_dlpack=lambda a: HostArray(np.from_dlpack(a)))

    def __init__(self, data, device=(1, 0)):
        self.data, self.device = data, device

    def __dlpack__(self, **kwargs):
        return self.data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device

    def __array_namespace__(self, api_version=None):
        return self.namespace


def conv_case(dtype=np.float64):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((2, 3, 6, 6)).astype(dtype), rng.standard_normal((4, 3, 3, 3)).astype(dtype),
            rng.standard_normal(4).astype(dtype))


def test_foreign_host_arrays_are_read_in_place_and_results_come_back_in_their_kind():
    x, w, b = conv_case()
    y = fl.conv2d(HostArray(x), HostArray(w), HostArray(b), padding=1)
    assert isinstance(y, HostArray)
    np.testing.assert_array_equal(y.data, fl.conv2d(x, w, b, padding=1))
    from fastlayers._dlpack import host_view

    assert np.shares_memory(host_view("x", HostArray(x)), x)  # the kernels read the caller's memory
    # out= buffers of the foreign kind are written in place and returned as themselves
    out = HostArray(np.full((2, 4, 6, 6), np.nan))
    assert fl.conv2d(HostArray(x), w, b, padding=1, out=out) is out
    np.testing.assert_array_equal(out.data, fl.conv2d(x, w, b, padding=1))


def test_the_first_array_argument_decides_the_kind_of_the_results():
    x, w, b = conv_case()
    assert isinstance(fl.conv2d(x, HostArray(w), b), np.ndarray)
    assert isinstance(fl.conv2d(weight=w, input=HostArray(x)), HostArray)  # by position in the signature
    grads = fl.conv2d_backward(HostArray(np.ones((2, 4, 4, 4))), x, w)
    assert all(isinstance(g, HostArray) for g in grads)
    np.testing.assert_array_equal(grads[1].data, fl.conv2d_backward(np.ones((2, 4, 4, 4)), x, w)[1])
    # an out= tuple mixing kinds: each given buffer comes back as itself
    dx = HostArray(np.empty_like(x))
    got = fl.conv2d_backward(np.ones((2, 4, 4, 4)), x, w, out=(dx, None, None))
    assert got[0] is dx and isinstance(got[1], np.ndarray)


def test_every_op_takes_dlpack_arrays():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 6))
    y, idx = fl.max_pool2d(HostArray(x), 2, return_indices=True)
    assert isinstance(y, HostArray) and isinstance(idx, HostArray)
    np.testing.assert_array_equal(idx.data, ref.max_pool2d(x, 2, return_indices=True)[1])
    seq, h0, Wx, Wh = (rng.standard_normal(s) * 0.5 for s in ((4, 2, 3), (2, 5), (3, 5), (5, 5)))
    hs = fl.rnn(HostArray(seq), HostArray(h0), HostArray(Wx), HostArray(Wh), nonlinearity="relu")
    np.testing.assert_allclose(hs.data, ref.rnn(seq, h0, Wx, Wh, nonlinearity="relu"), rtol=1e-12, atol=1e-14)
    hs4 = fl.lstm(HostArray(seq), None, None, HostArray(rng.standard_normal((3, 20))),
                  HostArray(rng.standard_normal((5, 20))))
    assert all(isinstance(a, HostArray) for a in hs4)


def test_strided_dlpack_arrays_are_read_at_their_strides():
    x, w, b = conv_case()
    wide = np.repeat(x, 2, axis=3)
    strided = HostArray(wide[..., ::2])  # DLPack carries the strides
    np.testing.assert_array_equal(fl.conv2d(strided, w, b).data, fl.conv2d(x, w, b))


def test_gpu_dlpack_without_cuda_array_interface_is_refused():
    x, w, _ = conv_case()
    with pytest.raises(TypeError, match=r"input is a HostArray on a CUDA device that has __dlpack__ but no "
                                        r"__cuda_array_interface__"):
        fl.conv2d(HostArray(x, device=(2, 0)), w)


def test_bad_dlpack_arrays_are_refused_naming_the_argument():
    x, w, _ = conv_case()
    with pytest.raises(TypeError, match="weight must have dtype float32 or float64, got int64"):
        fl.conv2d(HostArray(x), HostArray(w.astype(np.int64)))
    with pytest.raises(TypeError, match="out must"):
        fl.conv2d(HostArray(x), w, out=HostArray(np.empty((2, 4, 4, 4), np.float32)))


def test_numpy_calls_are_unchanged():
    x, w, b = conv_case()
    out = np.empty((2, 4, 4, 4))
    assert fl.conv2d(x, w, b, out=out) is out
    assert type(fl.conv2d(x, w, b)) is np.ndarray


# ---------------------------------------------------------------------------- PyTorch CPU tensors


def test_torch_cpu_tensors_in_torch_tensors_out_without_copies():
    torch = pytest.importorskip("torch", reason="needs PyTorch (the torch extra)")
    x, w, b = (torch.from_numpy(a) for a in conv_case(np.float32))
    y = fl.conv2d(x, w, b, padding=1)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    expected = torch.nn.functional.conv2d(x, w, b, padding=1)
    assert torch.linalg.vector_norm(y - expected) <= 1e-5 * torch.linalg.vector_norm(expected)
    out = torch.full((2, 4, 6, 6), float("nan"))
    assert fl.conv2d(x, w, b, padding=1, out=out) is out  # written in the tensor's own memory
    assert torch.equal(out, y)
    pooled, indices = fl.max_pool2d(x.transpose(2, 3), 2, return_indices=True)  # strided input
    expected_pooled, expected_indices = torch.nn.functional.max_pool2d(x.transpose(2, 3), 2, return_indices=True)
    assert torch.equal(pooled, expected_pooled) and torch.equal(indices, expected_indices)
    with pytest.raises(TypeError, match="input \\(Tensor\\) cannot be read through DLPack: .*require.* grad"):
        fl.conv2d(x.clone().requires_grad_(), w)
