"""Layer objects: every backward against central differences (float64), reuse and accumulation
(PyTorch's gradient semantics), modes, parameters and state dicts, a Sequential CNN on the
dispatch's backend against the NumPy backend, repr and argument errors."""
import io
import tracemalloc

import numpy as np
import pytest
from _helpers import assert_close, assert_grad_matches, make_rng, numeric_grad, spy_backends

import fastlayers as fl
from fastlayers import layers as L


def _backends(op):
    """Backends to run a layer on: the reference, and the CPU kernels where they implement ``op``."""
    cpu = fl.available_backends()["cpu"]
    return ["numpy"] + (["cpu"] if op in cpu["ops"] else [])


def check_gradients(layer, x, **forward_kwargs):
    """backward(dy) must equal the central-difference gradient of sum(forward(x) * dy) with respect
    to x (float inputs) and to every parameter; forward kwargs (h0) are checked too. The
    finite-difference forwards run under no_grad, so they keep no records."""
    rng = make_rng(7)
    layer.zero_grad()
    y = layer.forward(x, **forward_kwargs)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    grads = dict(layer.grads)
    assert set(grads) == set(layer.params)

    def forward(**arrays):
        with fl.no_grad():
            return layer.forward(arrays.get("x", x), **{k: arrays.get(k, v) for k, v in forward_kwargs.items()})

    inputs = {"x": x, **forward_kwargs}
    if x.dtype.kind == "f":
        assert_grad_matches(dx, numeric_grad(forward, inputs, "x", dy), err_msg="dx")
    for name, p in layer.params.items():
        # numeric_grad perturbs the array in place: the parameter itself (shared ones included)
        assert_grad_matches(grads[name], numeric_grad(forward, {name: p}, name, dy), err_msg=name)
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
    assert dict(layer.params) == {} and dict(layer.grads) == {}


def test_flatten_relu_tanh_sigmoid_dense_gradients():
    x = make_rng(3).standard_normal((2, 3, 2, 2))
    for layer in (L.Flatten(dtype=np.float64), L.ReLU(dtype=np.float64), L.Tanh(dtype=np.float64),
                  L.Sigmoid(dtype=np.float64)):
        check_gradients(layer, x)
    # Dense works on the last axis of any-rank input
    check_gradients(L.Dense(2, 5, dtype=np.float64, rng=0), x)
    check_gradients(L.Dense(2, 3, bias=False, dtype=np.float64, rng=0), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_and_sigmoid_forward_against_float64_maths(dtype):
    x = np.concatenate([make_rng(4).standard_normal(50) * 4, [-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    x = x.astype(dtype)
    exact = x.astype(np.float64)
    tanh, sigmoid = L.Tanh(dtype=dtype)(x), L.Sigmoid(dtype=dtype)(x)
    assert tanh.dtype == sigmoid.dtype == dtype
    # one elementary function each: a few ulps of the result
    np.testing.assert_allclose(tanh, np.tanh(exact), rtol=4 * np.finfo(dtype).eps, atol=np.finfo(dtype).tiny)
    with np.errstate(over="ignore"):  # exp(1000) is inf, and 1 / (1 + inf) the exact 0
        want = 1 / (1 + np.exp(-exact))
    np.testing.assert_allclose(sigmoid, want, rtol=8 * np.finfo(dtype).eps, atol=np.finfo(dtype).tiny)
    assert np.all(np.isfinite(sigmoid)) and sigmoid[-1] == 1 and sigmoid[-5] >= 0


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

    def forward(**a):
        with fl.no_grad():
            return layer.forward(x, h0=a["h0"])

    assert_grad_matches(layer.dh0, numeric_grad(forward, {"h0": h0}, "h0", dy), err_msg="dh0")


def test_rnn_batch_first_is_the_transpose_of_time_major():
    x = make_rng(5).standard_normal((4, 3, 2)).astype(np.float32)  # (T, N, D)
    time_major, batch_first = L.RNN(2, 5, rng=0), L.RNN(2, 5, batch_first=True, rng=0)
    hs = time_major.forward(x)
    np.testing.assert_array_equal(batch_first.forward(x.swapaxes(0, 1)), hs.swapaxes(0, 1))
    assert hs.shape == (4, 3, 5)


def test_embedding_gradient_adds_repeated_ids():
    layer = L.Embedding(5, 3, dtype=np.float64, rng=0)
    ids = np.array([[0, 3, 3], [4, 0, 3]])
    y = layer.forward(ids)
    np.testing.assert_array_equal(y, layer.params["W"][ids])
    assert layer.backward(make_rng(6).standard_normal(y.shape)) is None  # integer ids have no gradient
    check_gradients(layer, ids)
    assert np.all(layer.grads["W"][[1, 2]] == 0)  # ids never seen get no gradient


# ---------------------------------------------------------------------------- reuse and accumulation


def test_a_dense_layer_used_twice_sums_both_calls_gradients():
    """Sequential(d, Tanh(), d): one record per call, gone back through last call first, and
    the two calls' gradients added (the issue's case: 0.52 off before)."""
    d = L.Dense(4, 4, dtype=np.float64, rng=0)
    model = L.Sequential(d, L.Tanh(dtype=np.float64), d)
    assert list(model.params) == ["0.W", "0.b"]  # one parameter set, listed once
    check_gradients(model, make_rng(20).standard_normal((3, 4)))


def test_a_shared_embedding_at_input_and_output():
    """Tied weights: the embedding's table looks up the input and scores the output
    (TiedOutput); its gradient is the sum of both uses."""
    emb = L.Embedding(6, 4, dtype=np.float64, rng=0)
    model = L.Sequential(emb, L.Dense(4, 4, dtype=np.float64, rng=1), L.Tanh(dtype=np.float64), L.TiedOutput(emb))
    ids = np.array([[0, 2, 5], [1, 2, 2]])
    assert model.forward(ids).shape == (2, 3, 6)
    assert sorted(model.params) == ["0.W", "1.W", "1.b"]
    check_gradients(model, ids)  # finite differences move the one table both uses read


def test_gradients_accumulate_until_zero_grad():
    model = small_cnn()
    x1, x2 = make_rng(11).standard_normal((2, 2, 1, 8, 8))
    dy = make_rng(12).standard_normal((2, 5))
    single = []
    for x in (x1, x2):
        model.zero_grad()
        model.forward(x)
        model.backward(dy)
        single.append({k: v.copy() for k, v in model.grads.items()})
    model.zero_grad()
    for x in (x1, x2):
        model.forward(x)
        model.backward(dy)
    for name, g in model.grads.items():
        np.testing.assert_allclose(g, single[0][name] + single[1][name], rtol=1e-13, atol=1e-13, err_msg=name)
    model.zero_grad()
    assert dict(model.grads) == {}


def test_backward_needs_one_forward_per_call():
    layer = L.Dense(2, 2, dtype=np.float64)
    with pytest.raises(RuntimeError, match="Dense.backward has no forward to go back through"):
        layer.backward(np.zeros((1, 2)))
    layer.forward(np.zeros((1, 2)))
    layer.backward(np.zeros((1, 2)))
    with pytest.raises(RuntimeError, match="no forward to go back through"):
        layer.backward(np.zeros((1, 2)))  # the one forward is gone back through already


def test_zero_grad_drops_records_of_forwards_never_gone_back_through():
    layer = L.ReLU()
    for _ in range(3):
        layer.forward(np.ones((4,), np.float32))
    layer.zero_grad()
    with pytest.raises(RuntimeError, match="no forward"):
        layer.backward(np.ones((4,), np.float32))


# ---------------------------------------------------------------------------- modes


def _held_by_records(model):
    """Bytes of the arrays the layers' records hold (each buffer once)."""
    held = {}

    def walk(o):
        if isinstance(o, np.ndarray):
            owner = o if o.base is None else o.base
            held[id(owner)] = owner.nbytes
        elif isinstance(o, (tuple, list)):
            for item in o:
                walk(item)

    for layer in model._unique_layers():
        walk(layer._records)
    return sum(held.values())


def _allocated_by_forward(model, x):
    """Bytes a forward allocates and keeps, beyond its output (tracemalloc sees NumPy's buffers)."""
    model.forward(x)  # once first: kernels' cached workspaces and the layers' buffers reach their size
    model.zero_grad()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        y = model.forward(x)
        kept = tracemalloc.get_traced_memory()[0] - before - y.nbytes
    finally:
        tracemalloc.stop()
    return kept


def test_eval_and_no_grad_keep_nothing_for_a_backward():
    model = small_cnn(np.float32)
    x = make_rng(13).standard_normal((64, 1, 8, 8)).astype(np.float32)
    # training mode keeps at least every layer's input: conv, ReLU and pool inputs alone are
    # several times x (64 x 3 x 8 x 8 floats each)
    model.forward(x)
    assert _held_by_records(model) > 4 * x.nbytes
    model.zero_grad()
    model.eval()
    model.forward(x)
    assert _held_by_records(model) == 0
    kept_eval = _allocated_by_forward(model, x)
    model.train()
    with fl.no_grad():
        model.forward(x)
        assert _held_by_records(model) == 0
        kept_no_grad = _allocated_by_forward(model, x)
    assert fl.is_grad_enabled()  # back on after the context
    # a repeated forward writes the buffers of the previous one (no one holds them): nothing
    # new but small bookkeeping (a few hundred bytes of Python objects)
    assert kept_eval < 2048 and kept_no_grad < 2048, (kept_eval, kept_no_grad)
    model.eval()
    model.forward(x)
    with pytest.raises(RuntimeError, match="no forward"):
        model.backward(np.ones((64, 5), np.float32))


def test_training_steps_choose_their_conv_kernels_as_training(monkeypatch):
    """A Conv2D forward that records (training mode, outside no_grad) and every backward choose
    their kernel inside ``weights_change`` (weights derived again on every call); eval-mode and
    no_grad forwards outside it, each kept under its own plan."""
    from fastlayers import _dispatch
    from fastlayers.backends.cpu import conv2d as cpu_conv2d

    asked = []
    choose = cpu_conv2d.choose_algo
    monkeypatch.setattr(cpu_conv2d, "choose_algo",
                        lambda problem, *a: asked.append((problem.direction, _dispatch.weights_changing()))
                        or choose(problem, *a))
    _dispatch._choices.clear()
    conv = L.Conv2D(3, 5, 3, padding=1, backend="cpu")
    x = make_rng(7).standard_normal((2, 3, 9, 7)).astype(np.float32)
    y = conv.forward(x)
    conv.backward(np.ones_like(y))
    conv.eval()
    np.testing.assert_array_equal(conv.forward(x), y)
    conv.train()
    with fl.no_grad():
        conv.forward(x)
    assert asked == [("forward", True), ("backward", True), ("forward", False)]
    assert not _dispatch.weights_changing()
    _dispatch._choices.clear()


def test_train_and_eval_reach_every_child():
    model = L.Sequential(L.Dense(3, 3), L.Sequential(L.Dropout(0.5), L.BatchNorm2d(2)))
    assert model.eval() is model
    assert not any(layer.training for layer in model._unique_layers())
    model.train()
    assert all(layer.training for layer in model._unique_layers())


# ---------------------------------------------------------------------------- Dropout


def test_dropout_masks_scales_and_goes_back_through_the_same_mask():
    layer = L.Dropout(0.25, dtype=np.float64, rng=0)
    x = make_rng(14).standard_normal((200, 50)) + 3  # no zeros in x
    y = layer(x)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01  # 10,000 draws: the standard error is 0.004
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-15)
    dy = make_rng(15).standard_normal(x.shape)
    np.testing.assert_allclose(layer.backward(dy), np.where(kept, dy / 0.75, 0), rtol=1e-15)
    layer.eval()
    assert layer(x) is x
    assert np.all(L.Dropout(1.0, dtype=np.float64)(x) == 0)
    assert L.Dropout(0.0, dtype=np.float64)(x) is x
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\], got 1.5"):
        L.Dropout(1.5)


# ---------------------------------------------------------------------------- BatchNorm2d


def _batchnorm64(x, w, b, eps):
    """Batch normalisation written out in float64: the reference maths."""
    x = x.astype(np.float64)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w[:, None, None] + b[:, None, None]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm2d_training_forward_and_running_statistics(dtype):
    layer = L.BatchNorm2d(3, momentum=0.2, dtype=dtype)
    rng = make_rng(16)
    layer.params["w"] = rng.standard_normal(3)
    layer.params["b"] = rng.standard_normal(3)
    x = (rng.standard_normal((4, 3, 5, 6)) * [[[2.0]], [[0.5]], [[3.0]]] + 1.5).astype(dtype)
    y = layer(x)
    assert y.dtype == dtype
    want = _batchnorm64(x, layer.params["w"].astype(np.float64), layer.params["b"].astype(np.float64), layer.eps)
    # sums of 120 terms for the statistics, then a few operations per element
    assert_close(y, want, dtype, terms=120, scale=np.abs(want).max())
    n = 4 * 5 * 6
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3)) * n / (n - 1)
    state = dict(layer.named_buffers())
    assert_close(state["running_mean"], 0.2 * mean, dtype, terms=120, scale=np.abs(mean).max())
    assert_close(state["running_var"], 0.8 + 0.2 * var, dtype, terms=120, scale=var.max())
    assert state["num_batches_tracked"] == 1
    # eval: the running statistics, no batch statistics and no update
    layer.eval()
    y_eval = layer(x)
    rm, rv = state["running_mean"].astype(np.float64), state["running_var"].astype(np.float64)
    w, b = layer.params["w"].astype(np.float64), layer.params["b"].astype(np.float64)
    want_eval = (x64 - rm[:, None, None]) / np.sqrt(rv[:, None, None] + layer.eps) * w[:, None, None] + b[:, None, None]
    assert_close(y_eval, want_eval, dtype, terms=4, scale=np.abs(want_eval).max())
    assert dict(layer.named_buffers())["num_batches_tracked"] == 1


def test_batchnorm2d_gradients():
    layer = L.BatchNorm2d(2, dtype=np.float64)
    rng = make_rng(17)
    layer.params["w"] = rng.standard_normal(2)
    layer.params["b"] = rng.standard_normal(2)
    check_gradients(layer, rng.standard_normal((3, 2, 4, 3)) * 2 + 1)
    check_gradients(L.BatchNorm2d(2, affine=False, dtype=np.float64), rng.standard_normal((2, 2, 3, 3)))


def test_batchnorm2d_matches_torch():
    torch = pytest.importorskip("torch")
    x = make_rng(18).standard_normal((4, 3, 5, 5))
    ours, theirs = L.BatchNorm2d(3, dtype=np.float64), torch.nn.BatchNorm2d(3).double()
    for _ in range(3):  # training steps move the running statistics
        y = ours(x)
        ours.backward(np.ones_like(y))
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        yt.sum().backward()
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        x = x * 1.1 + 0.3
    state = ours.state_dict()
    for name, value in theirs.state_dict().items():
        np.testing.assert_allclose(state[name if name in state else {"weight": "w", "bias": "b"}[name]],
                                   value.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)
    ours.eval(), theirs.eval()
    np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- a CNN on two backends


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


def test_to_converts_parameters_and_buffers():
    model = L.Sequential(L.Conv2D(1, 2, 3, rng=0), L.BatchNorm2d(2))
    w32 = model.params["0.w"].copy()
    assert model.to(np.float64) is model
    assert all(a.dtype == np.float64 for a in model.state_dict().values() if a.dtype.kind == "f")
    np.testing.assert_array_equal(model.params["0.w"], w32.astype(np.float64))
    assert model.forward(np.ones((2, 1, 5, 5))).dtype == np.float64
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int64"):
        model.to(np.int64)


# ---------------------------------------------------------------------------- parameters and state


def test_parameters_and_named_parameters_are_the_live_arrays():
    model = small_cnn()
    named = dict(model.named_parameters())
    assert list(named) == ["0.w", "0.b", "3.w", "3.b", "7.W", "7.b"]
    assert all(a is b for a, b in zip(model.parameters(), named.values()))
    assert named["3.w"] is model[3].params["w"]
    assert model.num_parameters == sum(a.size for a in named.values())


def test_assigning_a_parameter_writes_into_the_model():
    model = small_cnn(np.float32)
    array = model.params["7.W"]
    model.params["7.W"] = np.zeros((16, 5))  # float64 zeros, rounded into the float32 array
    assert model[7].params["W"] is array and not array.any() and array.dtype == np.float32
    with pytest.raises(ValueError, match=r"parameter '7.W' has shape \(16, 5\), got a value of shape \(5, 16\)"):
        model.params["7.W"] = np.zeros((5, 16))
    with pytest.raises(KeyError, match="no parameter '9.W'"):
        model.params["9.W"] = np.zeros((16, 5))


def _trained_bn_cnn(seed):
    rng = np.random.default_rng(seed)
    model = L.Sequential(L.Conv2D(1, 4, 3, padding=1, rng=rng), L.BatchNorm2d(4), L.ReLU(), L.Dropout(0.2, rng=rng),
                         L.Flatten(), L.Dense(4 * 6 * 6, 3, rng=rng))
    x = rng.standard_normal((5, 1, 6, 6)).astype(np.float32)
    model.backward(np.ones_like(model.forward(x)))
    fl.optim.SGD(model, lr=0.1).step()
    return model.eval()


@pytest.mark.parametrize("target", ["path-without-suffix", "path.npz", "file-object"])
def test_state_dict_round_trip_is_bit_identical(tmp_path, target):
    model, other = _trained_bn_cnn(0), _trained_bn_cnn(1)
    x = make_rng(19).standard_normal((4, 1, 6, 6)).astype(np.float32)
    assert not np.array_equal(model(x), other(x))
    assert "1.running_var" in model.state_dict() and "1.num_batches_tracked" in model.state_dict()
    arrays_before = [id(a) for a in other.parameters()]
    if target == "file-object":
        buffer = io.BytesIO()
        model.save(buffer)
        buffer.seek(0)
        other.load(buffer)
    else:
        path = tmp_path / ("cnn" if target == "path-without-suffix" else "cnn.npz")
        model.save(path)
        assert path.exists()  # exactly the path given
        other.load(path)
    np.testing.assert_array_equal(other(x), model(x))
    assert [id(a) for a in other.parameters()] == arrays_before  # loaded in place
    # state_dict is a copy: training on does not change a checkpoint taken before
    state = model.state_dict()
    model.params["0.w"] = model.params["0.w"] + 1
    assert not np.array_equal(state["0.w"], model.params["0.w"])


def test_load_state_dict_is_strict_with_clear_errors():
    model = small_cnn()
    state = model.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['7.b'\], unexpected keys \['8.b'\]"):
        model.load_state_dict({**{k: v for k, v in state.items() if k != "7.b"}, "8.b": state["7.b"]})
    with pytest.raises(ValueError, match=r"entry '0.w' has shape \(3, 1, 5, 5\) and dtype float64, the model's has "
                                         r"\(3, 1, 3, 3\) and float64"):
        model.load_state_dict({**state, "0.w": np.zeros((3, 1, 5, 5))})
    with pytest.raises(ValueError, match="dtype float32"):
        model.load_state_dict({**state, "0.w": state["0.w"].astype(np.float32)})
    partial = {k: np.zeros_like(v) for k, v in state.items() if k.startswith("7.")}
    missing, unexpected = model.load_state_dict({**partial, "extra": np.zeros(1)}, strict=False)
    assert missing == ["0.b", "0.w", "3.b", "3.w"] and unexpected == ["extra"]
    assert not model.params["7.W"].any() and model.params["0.w"].any()


# ---------------------------------------------------------------------------- initialisation


def test_default_initialisation_is_pytorchs():
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for Conv2D and Dense weights and biases, and
    U(-1/sqrt(hidden), 1/sqrt(hidden)) for every RNN parameter: bounds and standard deviation
    (a uniform's is bound / sqrt(3); 10^5+ draws estimate it to under 1%)."""
    cases = [(L.Conv2D(64, 128, 3, dtype=np.float64, rng=0), "w", 64 * 9),
             (L.Conv2D(64, 128, 3, dtype=np.float64, rng=0), "b", 64 * 9),
             (L.Dense(300, 400, dtype=np.float64, rng=0), "W", 300),
             (L.RNN(100, 400, dtype=np.float64, rng=0), "Wh", 400)]
    for layer, name, fan_in in cases:
        a, bound = layer.params[name], 1 / np.sqrt(fan_in)
        assert np.abs(a).max() <= bound
        if a.size > 10_000:
            assert abs(a.std() / (bound / np.sqrt(3)) - 1) < 0.01, name
    assert abs(L.Embedding(1000, 100, dtype=np.float64, rng=0).params["W"].std() - 1) < 0.01
    bn = L.BatchNorm2d(3)
    assert (bn.params["w"] == 1).all() and (bn.params["b"] == 0).all()


def test_initialisers():
    conv = L.Conv2D(32, 64, 3, dtype=np.float64, rng=0)
    w = fl.init.kaiming_normal_(conv.params["w"], nonlinearity="relu", rng=1)
    assert w is conv.params["w"]
    assert abs(w.std() / np.sqrt(2 / (32 * 9)) - 1) < 0.02
    dense = L.Dense(500, 200, dtype=np.float64, rng=0)
    fan_in, fan_out = dense.fans("W")
    fl.init.xavier_uniform_(dense.params["W"], rng=2, fan_in=fan_in, fan_out=fan_out)
    bound = np.sqrt(6 / (500 + 200))
    assert np.abs(dense.params["W"]).max() <= bound and abs(dense.params["W"].std() / (bound / np.sqrt(3)) - 1) < 0.02
    fl.init.kaiming_uniform_(dense.params["W"], a=np.sqrt(5), rng=3, fan_in=fan_in, fan_out=fan_out)
    assert np.abs(dense.params["W"]).max() <= 1 / np.sqrt(500)
    fl.init.xavier_normal_(dense.params["W"], gain=fl.init.calculate_gain("tanh"), rng=4, fan_in=500, fan_out=200)
    assert abs(dense.params["W"].std() / (5 / 3 * np.sqrt(2 / 700)) - 1) < 0.02
    q = fl.init.orthogonal_(np.empty((6, 10)), rng=5)
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-12)
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        fl.init.calculate_gain("swish")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fl.init.kaiming_normal_(np.zeros(3))


def test_gains_match_torch():
    torch = pytest.importorskip("torch")
    for name in ("linear", "conv2d", "sigmoid", "tanh", "relu"):
        assert fl.init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name), rel=1e-15)
    assert fl.init.calculate_gain("leaky_relu", 0.2) == pytest.approx(torch.nn.init.calculate_gain("leaky_relu", 0.2))


# ---------------------------------------------------------------------------- repr and errors


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
    assert repr(L.Dropout(0.1)) == "Dropout(p=0.1)"


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
    with pytest.raises(ValueError, match=r"BatchNorm2d input x must have 2 channels"):
        L.BatchNorm2d(2).forward(np.zeros((2, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="more than one value per channel"):
        L.BatchNorm2d(2).forward(np.zeros((1, 2, 1, 1), np.float32))
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
    with pytest.raises(TypeError, match="TiedOutput needs an Embedding, got Dense"):
        L.TiedOutput(L.Dense(2, 2))


def test_embedding_refuses_bad_ids():
    emb = L.Embedding(4, 2)
    with pytest.raises(TypeError, match="ids must be integers"):
        emb.forward(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\), got values in \[0, 4\]"):
        emb.forward(np.array([0, 4]))


def test_mixed_sequential_is_refused():
    with pytest.raises(TypeError, match="share one dtype"):
        L.Sequential(L.ReLU(dtype=np.float32), L.ReLU(dtype=np.float64))
    with pytest.raises(TypeError, match="argument 1 must be a fastlayers layer"):
        L.Sequential(L.ReLU(), lambda x: x)


def test_sequential_backend_reaches_its_children(monkeypatch):
    """Sequential(backend=...) runs children built with backend=None on that backend."""
    seen = spy_backends(monkeypatch)
    model = small_cnn(backend="numpy")
    model.backward(np.ones_like(model.forward(np.ones((1, 1, 8, 8)))))
    assert seen and set(seen) == {"numpy"}


@pytest.mark.parametrize("backend", _backends("conv2d"))
def test_conv2d_layer_backward_without_input_grad(backend):
    """backward(dy, input_grad=False): None for dL/dx, the same parameter gradients."""
    layer = L.Conv2D(3, 4, 3, padding=1, backend=backend, dtype=np.float64, rng=0)
    x = make_rng(1).standard_normal((2, 3, 5, 6))
    dy = make_rng(2).standard_normal((2, 4, 5, 6))
    layer.forward(x)
    layer.backward(dy)
    full = {name: g.copy() for name, g in layer.grads.items()}
    layer.zero_grad()
    layer.forward(x)
    assert layer.backward(dy, input_grad=False) is None
    for name, g in layer.grads.items():
        assert_close(g, full[name], np.float64, terms=2 * 5 * 6, err_msg=name)


@pytest.mark.parametrize("first", ["conv", "dense"])
def test_sequential_backward_without_input_grad(first):
    """``input_grad=False``: None comes back, the first Conv2D skips dL/dx, and every parameter's
    gradient is the one of the full backward (float64: within rounding of a different summation
    split)."""
    rng = np.random.default_rng(3)
    f64 = dict(dtype=np.float64)

    def model():
        head = (L.Conv2D(2, 3, 3, padding=1, rng=1, **f64) if first == "conv"
                else L.Sequential(L.Flatten(**f64), L.Dense(2 * 5 * 5, 3 * 5 * 5, rng=1, **f64)))
        return L.Sequential(head, L.ReLU(**f64), L.Flatten(**f64), L.Dense(3 * 5 * 5, 4, rng=2, **f64))

    x = rng.standard_normal((2, 2, 5, 5))
    dy = rng.standard_normal((2, 4))
    full, skipped = model(), model()
    full(x)
    assert full.backward(dy) is not None
    skipped(x)
    asked = []
    first_backward = skipped.layers[0].backward
    skipped.layers[0].backward = lambda g, **kw: asked.append(kw) or first_backward(g, **kw)
    assert skipped.backward(dy, input_grad=False) is None
    assert asked == [{"input_grad": False}]  # the first layer was told (and skipped dL/dx)
    assert set(skipped.grads) == set(full.grads) == {name for name, _ in full.named_parameters()}
    for name, g in full.grads.items():
        np.testing.assert_allclose(skipped.grads[name], g, rtol=1e-13, atol=1e-15, err_msg=name)
    with pytest.raises(TypeError, match="input_grad must be True or False"):
        skipped.backward(dy, input_grad=0)
