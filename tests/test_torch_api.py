"""The functional API as a PyTorch user calls it: torch.nn.functional's arguments and defaults,
against torch (float64, so both sides are exact to ~1e-12) and the reference, on every host backend.

Covered here: conv2d's padding_mode, unbatched inputs, 1-tuples, max_pool2d's dilation and
return_indices default, the rnn functions' nonlinearity; gradients of the new paths by finite
differences. The cuda kernels' share of these is in tests/cuda/sim.
"""
import numpy as np
import pytest
from _helpers import assert_grads_match, make_rng

import fastlayers as fl
from fastlayers import reference as ref

torch = pytest.importorskip("torch")
F = torch.nn.functional

# float64 sums of at most a few hundred products of O(1) values: 1e-12 is >1000 ulp of headroom,
# far below any indexing or padding mistake (which moves values by O(1)).
TOL = dict(rtol=1e-12, atol=1e-12)


def conv_backends():
    cpu = ["cpu:im2col", "cpu:direct"] if "conv2d" in fl.available_backends()["cpu"]["ops"] else []
    return ["numpy"] + cpu


def _conv(label, *args, **kwargs):
    backend, _, algo = label.partition(":")
    return dict(backend=backend, algo=algo or "auto")


def _t(a, grad=False):
    return torch.tensor(a, requires_grad=grad)


# ---------------------------------------------------------------------------- conv2d


@pytest.mark.parametrize("label", conv_backends())
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding, stride, dilation, groups", [
    (1, 1, 1, 1), ((2, 1), (2, 1), 1, 2), ("same", 1, (1, 2), 1), (2, 3, 2, 1),
])
def test_conv2d_padding_mode_matches_torch(label, mode, padding, stride, dilation, groups):
    rng = make_rng(0)
    x, w, b = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 4 // groups, 3, 3)), rng.standard_normal(6)
    conv = torch.nn.Conv2d(4, 6, 3, stride, padding, dilation, groups, padding_mode=mode, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(_t(w))
        conv.bias.copy_(_t(b))
    xt = _t(x, grad=True)
    yt = conv(xt)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=mode)
    y = fl.conv2d(x, w, b, **kw, **_conv(label))
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOL)
    dy = rng.standard_normal(y.shape)
    yt.backward(_t(dy))
    dx, dw, db = fl.conv2d_backward(dy, x, w, **kw, **_conv(label))
    for mine, theirs in zip((dx, dw, db), (xt.grad, conv.weight.grad, conv.bias.grad)):
        np.testing.assert_allclose(mine, theirs.numpy(), **TOL)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv2d_padding_mode_gradients_match_finite_differences(mode):
    """The folded gradient of the explicit padding (each padded cell adds to the cell it copies)."""
    rng = make_rng(1)
    arrays = dict(input=rng.standard_normal((1, 2, 4, 5)), weight=rng.standard_normal((3, 2, 3, 2)),
                  bias=rng.standard_normal(3))
    kw = dict(padding=(2, 1), padding_mode=mode)
    y = ref.conv2d(**arrays, **kw)
    dy = rng.standard_normal(y.shape)
    grads = ref.conv2d_backward(dy, arrays["input"], arrays["weight"], **kw)

    def f(input, weight, bias):
        return ref.conv2d(input, weight, bias, **kw)

    assert_grads_match(f, arrays, dict(zip(arrays, grads)), dy)


@pytest.mark.parametrize("mode, padding, words", [
    ("reflect", 4, ["reflect", "padding < the input height 4", "4"]),
    ("circular", 5, ["circular", "padding <= the input height 4", "5"]),
])
def test_conv2d_padding_mode_limits_are_torchs(mode, padding, words):
    x, w = np.zeros((1, 1, 4, 9)), np.zeros((1, 1, 1, 1))
    with pytest.raises(ValueError) as info:
        fl.conv2d(x, w, padding=padding, padding_mode=mode)
    for word in words:
        assert word in str(info.value)
    with pytest.raises(RuntimeError):  # PyTorch refuses them too
        F.pad(torch.zeros((1, 1, 4, 9)), (padding,) * 4, mode=mode)


@pytest.mark.parametrize("label", conv_backends())
def test_conv2d_unbatched_and_one_tuples(label):
    rng = make_rng(2)
    x, w, b = rng.standard_normal((3, 6, 7)), rng.standard_normal((4, 3, 2, 3)), rng.standard_normal(4)
    kw = dict(stride=(2,), padding=(1,), dilation=(1,))
    y = fl.conv2d(x, w, b, **kw, **_conv(label))
    xt = _t(x, grad=True)
    yt = F.conv2d(xt, _t(w), _t(b), **kw)
    assert y.shape == tuple(yt.shape) == (4, 4, 4)
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOL)
    dy = rng.standard_normal(y.shape)
    yt.backward(_t(dy))
    dx, dw, db = fl.conv2d_backward(dy, x, w, **kw, **_conv(label))
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, xt.grad.numpy(), **TOL)
    out = np.empty(y.shape)
    assert fl.conv2d(x, w, b, **kw, **_conv(label), out=out) is out
    np.testing.assert_array_equal(out, y)


def test_conv2d_torch_signature_positionally():
    """torch.nn.functional.conv2d's positional order: input, weight, bias, stride, padding, dilation, groups."""
    rng = make_rng(3)
    x, w, b = rng.standard_normal((1, 4, 6, 6)), rng.standard_normal((2, 2, 3, 3)), rng.standard_normal(2)
    args = (2, 1, 1, 2)
    np.testing.assert_allclose(fl.conv2d(x, w, b, *args), F.conv2d(_t(x), _t(w), _t(b), *args).numpy(), **TOL)
    with pytest.raises(TypeError):  # fastlayers' own options are keyword-only
        fl.conv2d(x, w, b, 1, 0, 1, 1, "zeros")


# ---------------------------------------------------------------------------- max_pool2d


def pool_backends():
    return ["numpy"] + (["cpu"] if "max_pool2d" in fl.available_backends()["cpu"]["ops"] else [])


@pytest.mark.parametrize("backend", pool_backends())
def test_max_pool2d_returns_indices_only_when_asked(backend):
    x = make_rng(4).standard_normal((2, 3, 6, 6))
    y = fl.max_pool2d(x, 2, backend=backend)
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, F.max_pool2d(_t(x), 2).numpy())
    y2, idx = fl.max_pool2d(x, 2, return_indices=True, backend=backend)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(idx, F.max_pool2d(_t(x), 2, return_indices=True)[1].numpy())
    with pytest.raises(TypeError):  # no default kernel size
        fl.max_pool2d(x)


@pytest.mark.parametrize("kernel_size, stride, padding, dilation, ceil_mode", [
    (2, None, 0, 2, False), (3, 2, 1, 2, True), ((2, 3), (1, 2), (1, 1), (3, 1), True), (2, 1, 1, (1, 2), False),
])
def test_max_pool2d_dilation_matches_torch(kernel_size, stride, padding, dilation, ceil_mode):
    rng = make_rng(5)
    x = rng.integers(0, 4, (2, 3, 9, 10)).astype(float)  # ties: the first maximum must win, as in torch
    kw = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    y, idx = fl.max_pool2d(x, **kw, return_indices=True)  # automatic: the reference (the cpu kernel declines)
    yt, it = F.max_pool2d(_t(x), **kw, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    dy = rng.standard_normal(y.shape)
    xt = _t(x, grad=True)
    F.max_pool2d(xt, **kw).backward(_t(dy))
    for backend in pool_backends():  # the backward needs the indices only: every backend runs it
        np.testing.assert_allclose(fl.max_pool2d_backward(dy, idx, x.shape, backend=backend), xt.grad.numpy(), **TOL)


@pytest.mark.parametrize("backend", pool_backends())
def test_max_pool2d_unbatched_and_one_tuples(backend):
    rng = make_rng(6)
    x = rng.standard_normal((3, 7, 8))
    y, idx = fl.max_pool2d(x, (3,), (2,), (1,), return_indices=True, backend=backend)
    yt, it = F.max_pool2d(_t(x), (3,), (2,), (1,), return_indices=True)
    assert y.shape == tuple(yt.shape) == (3, 4, 4)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    dy = rng.standard_normal(y.shape)
    xt = _t(x, grad=True)
    F.max_pool2d(xt, 3, 2, 1).backward(_t(dy))
    np.testing.assert_allclose(fl.max_pool2d_backward(dy, idx, x.shape, backend=backend), xt.grad.numpy(), **TOL)


# ---------------------------------------------------------------------------- rnn


def _torch_rnn(Wx, Wh, b, nonlinearity):
    D, H = Wx.shape
    net = torch.nn.RNN(D, H, nonlinearity=nonlinearity, dtype=torch.float64)
    with torch.no_grad():  # the notes' layout: x @ Wx, one bias
        net.weight_ih_l0.copy_(_t(Wx.T))
        net.weight_hh_l0.copy_(_t(Wh.T))
        net.bias_ih_l0.copy_(_t(b))
        net.bias_hh_l0.zero_()
    return net


def _rnn_data(rng, T, N, D, H):
    return (rng.standard_normal((T, N, D)), rng.standard_normal((N, H)), rng.standard_normal((D, H)) / np.sqrt(D),
            rng.standard_normal((H, H)) * 0.5 / np.sqrt(H), rng.standard_normal(H))


def rnn_backends(nonlinearity):
    cpu = "rnn" in fl.available_backends()["cpu"]["ops"] and nonlinearity == "tanh"
    return ["numpy"] + (["cpu"] if cpu else [])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("batched", [True, False])
def test_rnn_matches_torch(nonlinearity, batched):
    rng = make_rng(7)
    x, h0, Wx, Wh, b = _rnn_data(rng, 5, 3, 4, 6)
    if not batched:  # (T, D) and (H,), as nn.RNN takes unbatched sequences
        x, h0 = x[:, 0], h0[0]
    net = _torch_rnn(Wx, Wh, b, nonlinearity)
    xt, h0t = _t(x, grad=True), _t(h0[None], grad=True)
    out, _ = net(xt, h0t)
    dhs = rng.standard_normal(tuple(out.shape))
    out.backward(_t(dhs))
    for backend in rnn_backends(nonlinearity):
        hs = fl.rnn(x, h0, Wx, Wh, b, nonlinearity, backend=backend)
        np.testing.assert_allclose(hs, out.detach().numpy(), **TOL)
        dx, dh0, dWx, dWh, db = fl.rnn_backward(dhs, x, h0, Wx, Wh, hs, nonlinearity, backend=backend)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dh0, h0t.grad.numpy()[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dWx, net.weight_ih_l0.grad.numpy().T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dWh, net.weight_hh_l0.grad.numpy().T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(db, net.bias_ih_l0.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_step_matches_torch_rnn_cell_unbatched(nonlinearity):
    rng = make_rng(8)
    x, h, Wx, Wh, b = _rnn_data(rng, 1, 1, 4, 5)
    x, h = x[0, 0], h[0]  # (D,), (H,) as nn.RNNCell takes them
    cell = torch.nn.RNNCell(4, 5, nonlinearity=nonlinearity, dtype=torch.float64)
    with torch.no_grad():
        cell.weight_ih.copy_(_t(Wx.T))
        cell.weight_hh.copy_(_t(Wh.T))
        cell.bias_ih.copy_(_t(b))
        cell.bias_hh.zero_()
    for backend in rnn_backends(nonlinearity):
        h1 = fl.rnn_step(x, h, Wx, Wh, b, nonlinearity, backend=backend)
        assert h1.shape == (5,)
        np.testing.assert_allclose(h1, cell(_t(x), _t(h)).detach().numpy(), **TOL)
        grads = fl.rnn_step_backward(np.ones(5), x, h, Wx, Wh, h1, nonlinearity, backend=backend)
        assert [g.shape for g in grads] == [(4,), (5,), (4, 5), (5, 5), (5,)]
