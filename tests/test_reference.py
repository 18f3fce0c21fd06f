"""The NumPy reference: the course notes' worked examples, finite-difference gradients, PyTorch.

The reference is the oracle of every other test, so it is checked three independent ways: by hand
(the notes' numbers), by calculus (central differences in float64) and against PyTorch.
"""
import numpy as np
import pytest
from _helpers import (
    assert_close,
    assert_grad_matches,
    assert_grads_match,
    make_rng,
    numeric_grad,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from notes_examples import (
    ACTIVATION_MAP_ONES,
    DETECTOR_1,
    DETECTOR_2,
    FEATURE_MAP_1,
    FEATURE_MAP_2,
    IMAGE_KERNEL_SLIDES,
    POOLED_MAP_1,
    CROSS_3x3,
    IMAGE_7x7,
    IMAGE_9x9_PADDED,
    SMOOTHING_3x3,
)

import fastlayers as fl
from fastlayers import reference as ref

# ---------------------------------------------------------------------------- the notes' examples

def conv_backends():
    """Every backend of this installation that runs conv2d on host arrays."""
    return [b for b in ("numpy", "cpu") if "conv2d" in fl.available_backends()[b]["ops"]]


def pool_backends():
    return [b for b in ("numpy", "cpu") if "max_pool2d" in fl.available_backends()[b]["ops"]]


def _image(a, dtype):
    return a.astype(dtype)[None, None]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", conv_backends())
@pytest.mark.parametrize(
    "detector, expected", [(DETECTOR_1, FEATURE_MAP_1), (DETECTOR_2, FEATURE_MAP_2)], ids=["map1", "map2"]
)
def test_notes_feature_maps(backend, dtype, detector, expected):
    y = fl.conv2d(_image(IMAGE_7x7, dtype), _image(detector, dtype), backend=backend)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[0, 0], expected)  # small integers: exact in any float


def test_notes_feature_map_1_typo_cell():
    """The cell the notes misprint as 1 is 0, by the definition and by the reference."""
    assert FEATURE_MAP_1[2, 2] == 0
    y = ref.conv2d(_image(IMAGE_7x7, float), _image(DETECTOR_1, float))
    assert y[0, 0, 2, 2] == 0


@pytest.mark.parametrize("backend", pool_backends())
def test_notes_ceil_mode_pool(backend):
    y, idx = fl.max_pool2d(FEATURE_MAP_1[None, None], 2, 2, ceil_mode=True, return_indices=True, backend=backend)
    np.testing.assert_array_equal(y[0, 0], POOLED_MAP_1)
    # Each index points at a cell that holds the pooled value (first maximum in window order).
    np.testing.assert_array_equal(FEATURE_MAP_1.ravel()[idx[0, 0]], POOLED_MAP_1)
    assert idx[0, 0, 1, 0] == 3 * 5 + 1  # the 4 at row 3, column 1
    # Without ceil_mode the partial last row/column of windows is dropped.
    y_floor = fl.max_pool2d(FEATURE_MAP_1[None, None], 2, 2, return_indices=False, backend=backend)
    np.testing.assert_array_equal(y_floor[0, 0], POOLED_MAP_1[:2, :2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", conv_backends())
def test_notes_padded_9x9_all_ones(backend, dtype):
    y = fl.conv2d(_image(IMAGE_9x9_PADDED, dtype), _image(SMOOTHING_3x3, dtype), backend=backend)
    np.testing.assert_array_equal(y[0, 0], ACTIVATION_MAP_ONES)
    # The same map from the unpadded 7x7 centre with padding=1.
    inner = IMAGE_9x9_PADDED[1:-1, 1:-1]
    y_pad = fl.conv2d(_image(inner, dtype), _image(SMOOTHING_3x3, dtype), padding=1, backend=backend)
    np.testing.assert_array_equal(y_pad[0, 0], ACTIVATION_MAP_ONES)
    y_same = fl.conv2d(_image(inner, dtype), _image(SMOOTHING_3x3, dtype), padding="same", backend=backend)
    np.testing.assert_array_equal(y_same[0, 0], ACTIVATION_MAP_ONES)


@pytest.mark.parametrize("backend", conv_backends())
def test_notes_kernel_slides_first_values(backend):
    img = _image(IMAGE_KERNEL_SLIDES, float)
    smooth = fl.conv2d(img, _image(SMOOTHING_3x3, float), backend=backend)
    cross = fl.conv2d(img, _image(CROSS_3x3, float), backend=backend)
    np.testing.assert_array_equal(smooth[0, 0, 0, :2], [6, 5])  # the notes' "6 5"
    assert cross[0, 0, 0, 0] == 3  # the notes' "3"


@pytest.mark.parametrize("backend", conv_backends())
def test_two_filters_give_depth_two(backend):
    """The notes' "depth": F filters give F activation maps, each the single-filter result."""
    w = np.stack([DETECTOR_1, DETECTOR_2])[:, None]
    y = fl.conv2d(_image(IMAGE_7x7, float), w, backend=backend)
    assert y.shape == (1, 2, 5, 5)
    np.testing.assert_array_equal(y[0, 0], FEATURE_MAP_1)
    np.testing.assert_array_equal(y[0, 1], FEATURE_MAP_2)


def test_notes_flattening():
    np.testing.assert_array_equal(ref.flatten(POOLED_MAP_1[None, None])[0], [1, 1, 0, 4, 2, 1, 0, 2, 1])


def test_softmax_cross_entropy_probabilities():
    """Logits whose softmax is the notes' "80% flower, 15% sky" (and 5% other)."""
    probs = np.array([0.80, 0.15, 0.05])
    logits = np.log(probs)[None] + 3.0  # softmax is shift-invariant
    loss, dlogits = ref.softmax_cross_entropy(logits, np.array([0]))
    assert loss == pytest.approx(-np.log(0.80))
    np.testing.assert_allclose(dlogits[0], probs - [1, 0, 0], atol=1e-12)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    loss, d = ref.softmax_cross_entropy(np.array([[1e4, 0.0, -1e4]]), np.array([1]))
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert loss == pytest.approx(1e4)


# ---------------------------------------------------------------------------- finite differences (float64)

CONV_GRAD_CONFIGS = [
    # (N, C, H, W, F, KH, KW, stride, padding, dilation, groups)
    (2, 3, 5, 6, 4, 3, 3, 1, 0, 1, 1),
    (1, 2, 7, 5, 3, 3, 2, 2, 1, 1, 1),
    (2, 4, 6, 6, 4, 2, 3, 1, "same", 2, 2),
    (1, 2, 6, 7, 2, 3, 3, (2, 1), (0, 2), (1, 2), 1),
    (1, 4, 4, 4, 6, 1, 1, 3, 1, 1, 2),
    (1, 1, 3, 3, 1, 3, 3, 1, 0, 1, 1),  # kernel == input
]


@pytest.mark.parametrize("cfg", CONV_GRAD_CONFIGS)
def test_conv2d_backward_matches_finite_differences(cfg):
    N, C, H, W, F, KH, KW, stride, padding, dilation, groups = cfg
    rng = make_rng(1)
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    arrays = dict(input=rng.standard_normal((N, C, H, W)), weight=rng.standard_normal((F, C // groups, KH, KW)),
                  bias=rng.standard_normal(F))
    y = ref.conv2d(**arrays, **params)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = ref.conv2d_backward(dy, arrays["input"], arrays["weight"], **params)

    def f(input, weight, bias):
        return ref.conv2d(input, weight, bias, **params)

    assert_grads_match(f, arrays, dict(input=dx, weight=dw, bias=db), dy)


@pytest.mark.parametrize("kernel_size, stride, padding, ceil_mode",
                         [(2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, False), ((2, 3), (1, 2), (1, 1), True)])
def test_max_pool2d_backward_matches_finite_differences(kernel_size, stride, padding, ceil_mode):
    rng = make_rng(2)
    # A permutation of distinct values spaced 1 apart: eps=1e-6 cannot change any argmax.
    x = rng.permutation(2 * 3 * 5 * 6).astype(float).reshape(2, 3, 5, 6)
    params = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)
    y, idx = ref.max_pool2d(x, **params, return_indices=True)
    dy = rng.standard_normal(y.shape)
    dx = ref.max_pool2d_backward(dy, idx, x.shape)

    def f(x):
        return ref.max_pool2d(x, **params)

    assert_grad_matches(dx, numeric_grad(f, {"x": x}, "x", dy))


def _rnn_arrays(rng, T, N, D, H):
    return dict(input=rng.standard_normal((T, N, D)), hx=rng.standard_normal((N, H)),
                Wx=rng.standard_normal((D, H)) * 0.5, Wh=rng.standard_normal((H, H)) * 0.5, bias=rng.standard_normal(H))


RNN_ARGS = ("input", "hx", "Wx", "Wh", "bias")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("step", [True, False], ids=["rnn_step", "rnn"])
def test_rnn_backward_matches_finite_differences(step, nonlinearity):
    forward, backward = (ref.rnn_step, ref.rnn_step_backward) if step else (ref.rnn, ref.rnn_backward)
    rng = make_rng(3 if step else 4)
    if step:
        a = _rnn_arrays(rng, 1, 3, 4, 5)
        arrays = dict(a, input=a["input"][0])
    else:
        arrays = _rnn_arrays(rng, 4, 2, 3, 4)
    out = forward(**arrays, nonlinearity=nonlinearity)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout, arrays["input"], arrays["hx"], arrays["Wx"], arrays["Wh"], out, nonlinearity)

    def f(**arrays):
        return forward(**arrays, nonlinearity=nonlinearity)

    assert_grads_match(f, arrays, dict(zip(RNN_ARGS, grads)), dout)


def test_rnn_without_hx_starts_from_zeros():
    rng = make_rng(5)
    a = _rnn_arrays(rng, 3, 2, 3, 4)
    zeros = np.zeros_like(a["hx"])
    np.testing.assert_array_equal(ref.rnn(a["input"], None, a["Wx"], a["Wh"], a["bias"]),
                                  ref.rnn(a["input"], zeros, a["Wx"], a["Wh"], a["bias"]))


def test_linear_relu_loss_backward_match_finite_differences():
    rng = make_rng(6)
    arrays = dict(input=rng.standard_normal((2, 3, 4)), weight=rng.standard_normal((5, 4)), bias=rng.standard_normal(5))
    dy = rng.standard_normal((2, 3, 5))
    grads = ref.linear_backward(dy, arrays["input"], arrays["weight"])
    assert_grads_match(ref.linear, arrays, dict(zip(("input", "weight", "bias"), grads)), dy)

    x = rng.standard_normal((3, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink at 0
    dy = rng.standard_normal(x.shape)
    assert_grad_matches(ref.relu_backward(dy, x), numeric_grad(ref.relu, {"input": x}, "input", dy))

    labels = np.array([[0, 2], [1, 1]])
    logits = {"logits": rng.standard_normal((2, 2, 3))}
    _, dlogits = ref.softmax_cross_entropy(logits["logits"], labels)

    def loss(logits):
        return ref.softmax_cross_entropy(logits, labels)[0]

    assert_grad_matches(dlogits, numeric_grad(loss, logits, "logits", 1.0))


# ---------------------------------------------------------------------------- float32 vs float64


def test_reference_float32_tracks_float64():
    rng = make_rng(7)
    x, w = rng.standard_normal((2, 8, 9, 9)), rng.standard_normal((4, 8, 3, 3))
    y64 = ref.conv2d(x, w, padding=1)
    y32 = ref.conv2d(x.astype(np.float32), w.astype(np.float32), padding=1)
    assert y32.dtype == np.float32
    assert_close(y32, y64, np.float32, terms=8 * 9, scale=3.0)


# ---------------------------------------------------------------------------- PyTorch as a second oracle

conv_cfg = st.tuples(
    st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),  # N, C per group, F per group
    st.integers(1, 3), st.integers(1, 4), st.integers(1, 4),  # groups, KH, KW
    st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2),  # sh, sw, pad, dilation
    st.integers(0, 5), st.integers(0, 5),  # extra H, W beyond the kernel extent
)


@settings(max_examples=60, deadline=None)
@given(cfg=conv_cfg)
def test_conv2d_matches_torch(cfg):
    torch = pytest.importorskip("torch")
    N, Cg, Fg, G, KH, KW, sh, sw, pad, dil, eh, ew = cfg
    H, W = dil * (KH - 1) + 1 + eh, dil * (KW - 1) + 1 + ew
    rng = make_rng(8)
    x = rng.standard_normal((N, Cg * G, H, W))
    w = rng.standard_normal((Fg * G, Cg, KH, KW))
    b = rng.standard_normal(Fg * G)
    params = dict(stride=(sh, sw), padding=pad, dilation=dil, groups=G)
    y = ref.conv2d(x, w, b, **params)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, **params)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    for mine, theirs in zip(ref.conv2d_backward(dy, x, w, **params), (xt, wt, bt)):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 2), ceil_mode=st.booleans(),
       h=st.integers(0, 6), w=st.integers(0, 6), ties=st.booleans())
def test_max_pool2d_matches_torch(k, s, p, ceil_mode, h, w, ties):
    torch = pytest.importorskip("torch")
    p = min(p, k // 2)
    rng = make_rng(9)
    shape = (2, 3, k + h, k + w)
    x = rng.integers(0, 3, shape).astype(float) if ties else rng.standard_normal(shape)
    y, idx = ref.max_pool2d(x, k, s, p, 1, ceil_mode, True)
    yt, it = torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p, ceil_mode=ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(idx, it.numpy())


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_matches_torch(nonlinearity):
    torch = pytest.importorskip("torch")
    rng = make_rng(10)
    a = _rnn_arrays(rng, 6, 3, 4, 5)
    hs = ref.rnn(**a, nonlinearity=nonlinearity)
    net = torch.nn.RNN(4, 5, nonlinearity=nonlinearity, dtype=torch.float64)
    with torch.no_grad():
        net.weight_ih_l0.copy_(torch.tensor(a["Wx"].T))
        net.weight_hh_l0.copy_(torch.tensor(a["Wh"].T))
        net.bias_ih_l0.copy_(torch.tensor(a["bias"]))
        net.bias_hh_l0.zero_()
    xt = torch.tensor(a["input"], requires_grad=True)
    h0t = torch.tensor(a["hx"][None], requires_grad=True)
    out, _ = net(xt, h0t)
    np.testing.assert_allclose(hs, out.detach().numpy(), rtol=1e-12, atol=1e-12)
    dhs = rng.standard_normal(hs.shape)
    out.backward(torch.tensor(dhs))
    dx, dh0, dWx, dWh, db = ref.rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs, nonlinearity)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dh0, h0t.grad.numpy()[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dWx, net.weight_ih_l0.grad.numpy().T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dWh, net.weight_hh_l0.grad.numpy().T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, net.bias_ih_l0.grad.numpy(), rtol=1e-10, atol=1e-12)
