"""The layers' plans (fastlayers.layers: a call validated once per signature of its arguments, its
output buffers written again when no one holds them): the same results as the full path bit for
bit, plans dropped when anything they depend on changes, and no buffer overwritten while anything
refers to it."""
import weakref

import numpy as np
import pytest
from _helpers import make_rng, spy_backends

import fastlayers as fl
from fastlayers import layers as L


def cnn(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    kw = dict(dtype=dtype, rng=rng)
    return L.Sequential(
        L.Conv2D(2, 4, 3, padding=1, **kw), L.ReLU(**kw), L.MaxPool2D(2, **kw),
        L.Conv2D(4, 6, 3, padding=1, bias=False, **kw), L.ReLU(**kw), L.MaxPool2D(2, **kw),
        L.Flatten(**kw), L.Dense(6 * 2 * 2, 5, **kw),
    )


def full_path(monkeypatch):
    """Every layer call validated and dispatched in full (no key: no plan)."""
    monkeypatch.setattr(L, "_signature", lambda a: a.no_such_attribute)


def train(model, steps, dtype, seed=1):
    """Parameters, gradients and outputs of ``steps`` SGD steps on varying batches."""
    rng = make_rng(seed)
    opt = fl.optim.SGD(model, lr=0.1, momentum=0.9)
    seen = []
    for step in range(steps):
        x = rng.standard_normal((3 if step % 2 else 2, 2, 8, 8)).astype(dtype)
        opt.zero_grad()
        y = model.forward(x)
        seen.append(y.copy())
        dx = model.backward(np.ones_like(y) * 0.1)
        seen.append(dx.copy())
        seen.extend(g.copy() for g in model.grads.values())
        opt.step()
    with fl.no_grad():
        seen.append(model.forward(rng.standard_normal((2, 2, 8, 8)).astype(dtype)).copy())
    return seen + [p.copy() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_planned_training_is_bitwise_the_full_path(monkeypatch, dtype, backend):
    with fl.use_backend(backend):
        model = cnn(dtype)
        planned = train(model, 5, dtype)
        assert all(layer._plans for layer in model.layers if not isinstance(layer, L.Flatten))
        with monkeypatch.context() as m:
            full_path(m)
            model = cnn(dtype)
            full = train(model, 5, dtype)
            assert not any(layer._plans for layer in model.layers)
    assert len(planned) == len(full)
    for a, b in zip(planned, full):
        np.testing.assert_array_equal(a, b)


def test_plans_are_kept_per_signature_and_bounded():
    layer = L.ReLU()
    for n in range(1, 4):
        for _ in range(3):
            layer.forward(np.ones((n, 4), np.float32))
    assert len(layer._plans) == 3
    layer.forward(np.ones((4, 3), np.float32)[:, ::2])  # other strides: a plan of its own
    assert len(layer._plans) == 4
    for n in range(20):
        layer.forward(np.ones((n + 5,), np.float32))
        assert 1 <= len(layer._plans) <= L._MAX_PLANS


# ---------------------------------------------------------------------------- buffers


def test_an_output_the_caller_holds_is_never_overwritten():
    layer = L.Conv2D(2, 3, 3, padding=1, rng=0).eval()
    rng = make_rng(2)
    x1, x2 = (rng.standard_normal((1, 2, 5, 5)).astype(np.float32) for _ in range(2))
    y1 = layer(x1)
    expected = y1.copy()
    y2 = layer(x2)
    view = y2[0, 1]
    expected_view = view.copy()
    del y2  # a view still refers to its memory
    y3 = layer(x1)
    np.testing.assert_array_equal(y1, expected)
    np.testing.assert_array_equal(view, expected_view)
    np.testing.assert_array_equal(y3, expected)


def test_a_dropped_output_is_written_again():
    layer = L.ReLU().eval()
    x = np.arange(-3, 3, dtype=np.float32)
    y = layer(x)
    kept = weakref.ref(y)
    del y
    assert kept() is not None  # the layer keeps it for the next call
    y = layer(-x)
    assert y is kept()
    np.testing.assert_array_equal(y, np.maximum(-x, 0))


def test_an_input_that_is_the_layers_own_buffer_is_not_written_while_read():
    """A layer called on its own previous output (a layer reused in a chain)."""
    layer = L.Conv2D(2, 2, 3, padding=1, rng=0).eval()
    x = make_rng(3).standard_normal((1, 2, 6, 6)).astype(np.float32)
    once = layer(x)
    twice = layer(once)
    np.testing.assert_array_equal(twice, fl.conv2d(fl.conv2d(x, layer.params["w"], layer.params["b"], padding=1),
                                                   layer.params["w"], layer.params["b"], padding=1))


def test_a_layer_used_twice_in_one_forward_keeps_both_records(monkeypatch):
    def model():
        rng = np.random.default_rng(4)
        dense, relu = L.Dense(6, 6, rng=rng), L.ReLU()
        return L.Sequential(dense, relu, dense, relu, L.Dense(6, 3, rng=rng))

    x = make_rng(5).standard_normal((4, 6)).astype(np.float32)

    def run(net):
        results = []
        for _ in range(3):  # the plans' buffers are reused from the second step on
            net.zero_grad()
            y = net.forward(x)
            results += [y.copy(), net.backward(np.ones_like(y)).copy()]
            results += [g.copy() for g in net.grads.values()]
        return results

    planned = run(model())
    full_path(monkeypatch)
    full = run(model())
    for a, b in zip(planned, full, strict=True):
        np.testing.assert_array_equal(a, b)


def test_gradients_accumulate_across_planned_backwards():
    layer = L.Conv2D(1, 2, 3, rng=0)
    x = make_rng(6).standard_normal((2, 1, 5, 5)).astype(np.float32)
    y = layer(x)
    layer.backward(np.ones_like(y))
    once = layer.grads["w"].copy()
    y = layer(x)
    layer.backward(np.ones_like(y))
    np.testing.assert_array_equal(layer.grads["w"], once + once)


@pytest.mark.parametrize("make_layer, kept", [(lambda: L.Conv2D(2, 3, 3, rng=0), {"w", "b"}),
                                              (lambda: L.Dense(4, 3, rng=0), {"b"})], ids=["Conv2D", "Dense"])
def test_gradients_are_the_kernels_buffers_and_a_held_one_is_never_written_again(make_layer, kept):
    """A layer keeps its kernels' gradient outputs as they are (no copy; Dense's W gradient, the
    transpose of the kernel's, is copied), and the next step's backward writes them again once
    zero_grad has dropped them; one the caller still holds, or a view of it, keeps its values."""
    layer = make_layer()
    rng = make_rng(11)
    x = rng.standard_normal((2, 2, 5, 5) if isinstance(layer, L.Conv2D) else (2, 4)).astype(np.float32)

    def step(scale):
        layer.zero_grad()
        y = layer(x * scale)
        layer.backward(np.full_like(y, scale))
        return {name: id(g) for name, g in layer.grads.items()}

    step(1.0)
    # weak references: a freed gradient's id may be a new one's, a dead reference is never alive again
    first = {name: weakref.ref(g) for name, g in layer.grads.items()}
    step(2.0)
    assert {name for name, ref in first.items() if ref() is layer.grads[name]} == kept  # written again: no one held them
    second = {name: id(g) for name, g in layer.grads.items()}  # held below: their ids stay theirs
    held = dict(layer.grads)
    view = held["b"][:1]
    values = {name: g.copy() for name, g in held.items()}
    again = step(3.0)
    assert not set(again.values()) & set(second.values())  # held: new buffers
    for name, g in held.items():
        np.testing.assert_array_equal(g, values[name], err_msg=name)
    np.testing.assert_array_equal(view, values["b"][:1])
    assert all(not np.array_equal(layer.grads[name], values[name]) for name in kept)  # the new step's


# ---------------------------------------------------------------------------- invalidation


def test_a_plan_does_not_skip_the_checks_of_a_call_with_another_signature():
    layer = L.Conv2D(2, 3, 3, rng=0)
    layer(np.ones((1, 2, 5, 5), np.float32))
    with pytest.raises(TypeError, match="dtype float32"):
        layer(np.ones((1, 2, 5, 5), np.float64))
    with pytest.raises(ValueError, match="2 channels"):
        layer(np.ones((1, 3, 5, 5), np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        layer([[[[1.0] * 5] * 5] * 2])
    with pytest.raises(ValueError, match="larger than the padded input"):
        layer(np.ones((1, 2, 2, 2), np.float32))


def test_to_dtype_replaces_the_plans():
    layer = L.Conv2D(2, 3, 3, rng=0)
    x = make_rng(7).standard_normal((1, 2, 5, 5))
    layer(x.astype(np.float32))
    layer.to(np.float64)
    y = layer(x)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, fl.conv2d(x, layer.params["w"], layer.params["b"]))
    with pytest.raises(TypeError, match="float64"):
        layer(x.astype(np.float32))


def test_replaced_and_updated_weights_are_the_ones_used():
    layer = L.Dense(3, 2, rng=0).eval()
    x = make_rng(8).standard_normal((4, 3)).astype(np.float32)
    layer(x)
    layer.params["W"] = np.ones((3, 2))  # copied into the parameter's array
    np.testing.assert_array_equal(layer(x), fl.linear(x, np.ones((2, 3), np.float32), layer.params["b"]))
    layer._parameters["W"] = np.full((3, 4), 2, np.float32)  # a new array of another shape
    layer.out_features = 4
    layer._parameters["b"] = np.zeros(4, np.float32)
    np.testing.assert_array_equal(layer(x), x @ np.full((3, 4), 2, np.float32))


def test_options_assigned_after_a_call_take_effect_and_are_checked():
    layer = L.Conv2D(1, 1, 3, rng=0).eval()
    x = np.ones((1, 1, 7, 7), np.float32)
    assert layer(x).shape == (1, 1, 5, 5)
    layer.stride = 2
    assert layer(x).shape == (1, 1, 3, 3)
    layer.padding = [1, 1]  # a list: unhashable, planned every call
    assert layer(x).shape == (1, 1, 4, 4)
    layer.padding[0] = 0  # changed in place: seen
    assert layer(x).shape == (1, 1, 3, 4)
    layer.stride = True
    with pytest.raises(TypeError, match="stride must be an int"):
        layer(x)


def test_train_and_eval_switch_the_plans():
    pool = L.MaxPool2D(2)
    x = make_rng(9).standard_normal((1, 1, 4, 4)).astype(np.float32)
    pool.eval()
    pool(x)
    with pytest.raises(RuntimeError, match="no forward"):
        pool.backward(np.ones((1, 1, 2, 2), np.float32))
    pool.train()
    y = pool(x)
    dx = pool.backward(np.ones_like(y))
    assert dx.sum() == 4 and (dx == 1).sum() == 4
    with fl.no_grad():
        pool(x)
    with pytest.raises(RuntimeError, match="no forward"):
        pool.backward(np.ones((1, 1, 2, 2), np.float32))


def test_backend_settings_after_a_call_choose_the_kernel_again(monkeypatch):
    seen = spy_backends(monkeypatch)
    layer = L.Conv2D(1, 2, 3, rng=0)
    x = np.ones((1, 1, 5, 5), np.float32)
    layer(x)
    layer(x)
    assert seen == ["cpu"]
    with fl.use_backend("numpy"):
        layer(x)
    fl.set_backend("numpy")
    try:
        layer(x)
    finally:
        fl.set_backend(None)
    layer.backend = "numpy"
    layer(x)
    assert seen == ["cpu", "numpy", "numpy", "numpy"]


def test_the_thread_count_is_read_at_every_call(monkeypatch):
    from fastlayers.ops._spec import Kernel

    counts = []
    real_load = Kernel.load

    def load(kernel, direction):
        real = real_load(kernel, direction)
        return lambda *args: counts.append(fl.get_num_threads()) or real(*args)

    monkeypatch.setattr(Kernel, "load", load)
    layer = L.ReLU()
    x = np.ones(8, np.float32)
    with fl.threads(2):
        layer(x)
    with fl.threads(1):
        layer(x)
    assert counts == [2, 1] and len(layer._plans) == 1


def test_layers_with_plans_pickle_and_copy():
    import copy
    import pickle

    model = cnn()
    x = make_rng(10).standard_normal((1, 2, 8, 8)).astype(np.float32)
    y = model.forward(x)
    model.zero_grad()
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        np.testing.assert_array_equal(other.forward(x), y)


def test_concurrent_calls_of_one_layer_never_share_a_buffer():
    import threading

    layer = L.Conv2D(2, 3, 3, padding=1, rng=0).eval()
    rng = make_rng(11)
    xs = [rng.standard_normal((2, 2, 6, 6)).astype(np.float32) for _ in range(3)]
    expected = [fl.conv2d(x, layer.params["w"], layer.params["b"], padding=1) for x in xs]
    wrong = []

    def work(i):
        for _ in range(300):
            y = layer(xs[i])
            if not np.array_equal(y, expected[i]):
                wrong.append(i)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not wrong
