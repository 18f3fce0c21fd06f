"""Layer objects: every backward against central differences (float64), a Sequential CNN on the
dispatch's backend against the NumPy backend, save/load, repr and argument errors."""
import numpy as np
import pytest
from _helpers import assert_close, assert_grad_matches, make_rng, numeric_grad

import fastlayers as fl
from fastlayers import layers as L


def _backends(op):
    """Backends to run a layer on: the reference, and the CPU kernels where they implement ``op``."""
    cpu = fl.backends()["cpu"]
    return ["numpy"] + (["cpu"] if op in cpu["ops"] else [])


def check_gradients(layer, x, **forward_kwargs):
    """backward(dy) must equal the central-difference gradient of sum(forward(x) * dy) with respect
    to x (float inputs) and to every parameter; forward kwargs (h0) are checked too."""
    rng = make_rng(7)
    y = layer.forward(x, **forward_kwargs)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    grads = dict(layer.grads)
    assert set(grads) == set(layer.params)

    def f(**arrays):
        return layer.forward(arrays["x"], **{k: arrays[k] for k in forward_kwargs})

    inputs = {"x": x, **forward_kwargs}
    if x.dtype.kind == "f":
        assert_grad_matches(dx, numeric_grad(f, inputs, "x", dy), err_msg="dx")
    for name, p in layer.params.items():
        # numeric_grad perturbs the array in place: the parameter itself
        numeric = numeric_grad(lambda **a: layer.forward(x, **forward_kwargs), {name: p}, name, dy)
        assert_grad_matches(grads[name], numeric, err_msg=name)
    return dx


CONV_CASES = [
    dict(in_channels=3, out_channels=4, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, groups=2),
    dict(in_channels=2, out_channels=3, kernel_size=2, dilation=2, padding="same", bias=False),
]


@pytest.mark.parametrize("backend", _backends("conv2d"))
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_conv2d_layer_gradients(case, backend):
    layer = L.Conv2D(**case, backend=backend, dtype=np.float64, rng=0)
    x = make_rng(1).standard_normal((2, case["in_channels"], 5, 6))
    check_gradients(layer, x)
    assert layer.forward(x).dtype == np.float64


@pytest.mark.parametrize("backend", _backends("max_pool2d"))
@pytest.mark.parametrize("case", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)])
def test_max_pool2d_layer_gradients(case, backend):
    layer = L.MaxPool2D(**case, backend=backend, dtype=np.float64)
    # a permutation: no ties, and every gap (>= 1e-2) is far wider than the finite-difference step
    x = make_rng(2).permutation(2 * 3 * 6 * 7).reshape(2, 3, 6, 7) * 1e-2
    check_gradients(layer, x)
    assert layer.params == {} and layer.grads == {}


def test_flatten_relu_dense_gradients():
    x = make_rng(3).standard_normal((2, 3, 2, 2))
    check_gradients(L.Flatten(dtype=np.float64), x)
    check_gradients(L.ReLU(dtype=np.float64), x)
    # Dense works on the last axis of any-rank input
    check_gradients(L.Dense(2, 5, dtype=np.float64, rng=0), x)
    check_gradients(L.Dense(2, 3, bias=False, dtype=np.float64, rng=0), x)


@pytest.mark.parametrize("backend", _backends("rnn"))
@pytest.mark.parametrize("batch_first", [False, True])
def test_rnn_layer_gradients(batch_first, backend):
    layer = L.RNN(3, 4, batch_first=batch_first, backend=backend, dtype=np.float64, rng=0)
    rng = make_rng(4)
    x = rng.standard_normal((5, 2, 3))  # (T, N, D), or (N, T, D) when batch_first
    check_gradients(layer, x)
    assert layer.dh0 is None
    h0 = rng.standard_normal((x.shape[0] if batch_first else x.shape[1], 4))  # (N, H)
    check_gradients(layer, x, h0=h0)
    # dL/dh0 against central differences
    y = layer.forward(x, h0=h0)
    dy = make_rng(7).standard_normal(y.shape)
    layer.backward(dy)
    numeric = numeric_grad(lambda **a: layer.forward(x, h0=a["h0"]), {"h0": h0}, "h0", dy)
    assert_grad_matches(layer.dh0, numeric, err_msg="dh0")


def test_rnn_batch_first_is_the_transpose_of_time_major():
    x = make_rng(5).standard_normal((4, 3, 2)).astype(np.float32)  # (T, N, D)
    time_major, batch_first = L.RNN(2, 5, rng=0), L.RNN(2, 5, batch_first=True, rng=0)
    hs = time_major.forward(x)
    np.testing.assert_array_equal(batch_first.forward(x.swapaxes(0, 1)), hs.swapaxes(0, 1))
    assert hs.shape == (4, 3, 5)


def test_rnn_initialisation_is_orthogonal_recurrence():
    Wh = L.RNN(3, 6, dtype=np.float64, rng=0).params["Wh"]
    np.testing.assert_allclose(Wh @ Wh.T, np.eye(6), atol=1e-12)


def test_embedding_gradient_adds_repeated_ids():
    layer = L.Embedding(5, 3, dtype=np.float64, rng=0)
    ids = np.array([[0, 3, 3], [4, 0, 3]])
    y = layer.forward(ids)
    np.testing.assert_array_equal(y, layer.params["W"][ids])
    dy = make_rng(6).standard_normal(y.shape)
    assert layer.backward(dy) is None  # integer ids have no gradient
    numeric = numeric_grad(lambda **a: layer.forward(ids), {"W": layer.params["W"]}, "W", dy)
    assert_grad_matches(layer.grads["W"], numeric)
    assert np.all(layer.grads["W"][[1, 2]] == 0)  # ids never seen get no gradient


def small_cnn(dtype=np.float64, backend=None, seed=0):
    rng = np.random.default_rng(seed)
    kw = dict(dtype=dtype, rng=rng)
    return L.Sequential(
        L.Conv2D(1, 3, 3, padding=1, **kw), L.ReLU(**kw), L.MaxPool2D(2, **kw),
        L.Conv2D(3, 4, 3, padding=1, **kw), L.ReLU(**kw), L.MaxPool2D(2, **kw),
        L.Flatten(**kw), L.Dense(4 * 2 * 2, 5, **kw),
        backend=backend,
    )


def test_sequential_cnn_gradients():
    model = small_cnn()
    x = make_rng(8).standard_normal((1, 1, 8, 8))
    check_gradients(model, x)
    assert set(model.grads) == {"0.w", "0.b", "3.w", "3.b", "7.W", "7.b"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequential_cnn_matches_numpy_backend(dtype):
    """The same CNN trained one step on the dispatch's default backend and on the reference."""
    x = make_rng(9).standard_normal((6, 1, 8, 8)).astype(dtype)
    labels = np.arange(6) % 5
    results = []
    for backend in (None, "numpy"):
        model = small_cnn(dtype, backend)
        logits = model.forward(x)
        _, dlogits = fl.losses.softmax_cross_entropy(logits, labels)
        dx = model.backward(dlogits)
        results.append((logits, dx, model.grads))
    (logits, dx, grads), (ref_logits, ref_dx, ref_grads) = results
    # The deepest chain of sums is conv (9 taps) -> conv (27 terms) -> dense (16) and back; the
    # largest single reduction is dw's over N*OH*OW = 384 products: 4 * 384 * eps per unit of
    # magnitude bounds every entry (float32: 2e-4 relative, float64: 3e-13).
    assert_close(logits, ref_logits, dtype, terms=384)
    assert_close(dx, ref_dx, dtype, terms=384, scale=np.abs(ref_dx).max())
    assert set(grads) == set(ref_grads)
    for name in grads:
        assert grads[name].dtype == dtype
        assert_close(grads[name], ref_grads[name], dtype, terms=384, scale=np.abs(ref_grads[name]).max(),
                     err_msg=name)


def test_float32_layers_follow_float64():
    x = make_rng(10).standard_normal((3, 1, 8, 8))
    m64, m32 = small_cnn(np.float64), small_cnn(np.float32)
    y64 = m64.forward(x)
    y32 = m32.forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    # float32 weights are the float64 ones rounded (same rng draws): relative error a few eps32
    # per sum of <= 36 terms through three layers
    assert_close(y32, y64, np.float32, terms=3 * 36, scale=np.abs(y64).max())


def test_backward_sets_gradients_instead_of_accumulating():
    model = small_cnn()
    x = make_rng(11).standard_normal((2, 1, 8, 8))
    dy = np.ones((2, 5))
    model.forward(x)
    model.backward(dy)
    first = {k: v.copy() for k, v in model.grads.items()}
    model.backward(dy)
    for name, g in model.grads.items():
        np.testing.assert_array_equal(g, first[name])


def test_save_load_round_trip(tmp_path):
    model, other = small_cnn(seed=0), small_cnn(seed=1)
    x = make_rng(12).standard_normal((2, 1, 8, 8))
    assert not np.array_equal(model.forward(x), other.forward(x))
    model.save(tmp_path / "cnn.npz")
    arrays_before = {k: id(v) for k, v in other.params.items()}
    other.load(tmp_path / "cnn.npz")
    np.testing.assert_array_equal(other.forward(x), model.forward(x))
    # loaded in place: an optimiser holding the arrays keeps training the loaded values
    assert {k: id(v) for k, v in other.params.items()} == arrays_before
    with np.load(tmp_path / "cnn.npz") as data:
        assert sorted(data.files) == sorted(model.params)


def test_load_refuses_a_different_model(tmp_path):
    small_cnn().save(tmp_path / "cnn.npz")
    wider = L.Sequential(L.Conv2D(1, 5, 3, dtype=np.float64), L.Flatten(dtype=np.float64),
                         L.Dense(5 * 6 * 6, 5, dtype=np.float64))
    with pytest.raises(ValueError, match="missing"):
        wider.load(tmp_path / "cnn.npz")
    shaped = small_cnn()
    shaped.layers[0] = L.Conv2D(1, 3, 5, padding=2, dtype=np.float64)
    with pytest.raises(ValueError, match="0.w.*shape"):
        shaped.load(tmp_path / "cnn.npz")
    in32 = small_cnn(np.float32)
    with pytest.raises(ValueError, match="dtype"):
        in32.load(tmp_path / "cnn.npz")


def test_repr_shows_shapes_and_parameter_counts():
    conv = L.Conv2D(3, 8, 3, stride=2, rng=0)
    assert repr(conv) == "Conv2D(3, 8, kernel_size=(3, 3), stride=2, w=8x3x3x3, b=8, 224 parameters)"
    assert conv.num_parameters == 8 * 3 * 3 * 3 + 8
    model = small_cnn()
    text = repr(model)
    assert f"# {model.num_parameters} parameters" in text
    assert model.num_parameters == (3 * 9 + 3) + (4 * 3 * 9 + 4) + (16 * 5 + 5)
    assert "(7) Dense(16, 5, W=16x5, b=5, 85 parameters)" in text
    assert repr(L.ReLU()) == "ReLU()"


def test_layers_keep_their_dtype_and_refuse_others():
    layer = L.Dense(4, 2)
    assert layer.params["W"].dtype == np.float32
    with pytest.raises(TypeError, match=r"Dense input x must have the layer's dtype float32, got float64"):
        layer.forward(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"Dense input x must have 4 features"):
        layer.forward(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"Conv2D input x must have 3 channels"):
        L.Conv2D(3, 4, 3).forward(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"RNN input x must be 3-D"):
        L.RNN(3, 4).forward(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int32"):
        L.Dense(2, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="backend must be one of"):
        L.ReLU(backend="gpu")
    with pytest.raises(ValueError, match="groups=2 must divide in_channels=3"):
        L.Conv2D(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        L.Conv2D(3, 4, 3, stride=0)
    with pytest.raises(ValueError, match="in_features must be an int >= 1"):
        L.Dense(0, 2)


def test_embedding_refuses_bad_ids():
    emb = L.Embedding(4, 2)
    with pytest.raises(TypeError, match="ids must be integers"):
        emb.forward(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\), got values in \[0, 4\]"):
        emb.forward(np.array([0, 4]))


def test_backward_before_forward_and_mixed_sequential():
    with pytest.raises(RuntimeError, match="Conv2D.backward called before forward"):
        L.Conv2D(1, 1, 1).backward(np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(TypeError, match="share one dtype"):
        L.Sequential(L.ReLU(dtype=np.float32), L.ReLU(dtype=np.float64))
    with pytest.raises(TypeError, match="argument 1 must be a fastlayers layer"):
        L.Sequential(L.ReLU(), lambda x: x)


def test_sequential_backend_reaches_its_children(monkeypatch):
    """Sequential(backend=...) runs children built with backend=None on that backend."""
    seen = []
    real = fl._dispatch.resolve

    def spy(op, backend, arrays):
        seen.append(backend or fl._dispatch._backend_override.get())
        return real(op, backend, arrays)

    monkeypatch.setattr(fl._dispatch, "resolve", spy)
    model = small_cnn(backend="numpy")
    model.backward(np.ones_like(model.forward(np.ones((1, 1, 8, 8)))))
    assert seen and set(seen) == {"numpy"}
