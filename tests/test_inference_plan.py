"""A Sequential's inference plan (fastlayers.layers._InferencePlan): where no layer keeps records
its forward runs the layers' planned kernels directly into buffers it keeps, ReLU in place, a
ReLU before a MaxPool2D after the pool (the order Sequential runs them in training too, checked here
against the layers' own order, gradients included). Checked against the layers' own forwards one by one (the
path without the plan): the same values (bit for bit, but for the sign of a zero where the ReLU
moved after the pool), for new inputs at every call, with outputs the caller holds never
overwritten, and the plan made again whenever anything it depends on changes."""
import threading

import numpy as np
import pytest
from _helpers import make_rng

import fastlayers as fl
from fastlayers import layers as L
from fastlayers.ops import conv2d as conv2d_spec

DTYPES = (np.float32, np.float64)


def models(dtype, seed=0):
    """(name, model, input channels, size) of the shapes the plan treats differently."""
    rng = np.random.default_rng(seed)
    kw = dict(dtype=dtype, rng=rng)
    yield "vgg", L.Sequential(
        L.Conv2D(3, 8, 3, padding=1, **kw), L.ReLU(**kw), L.MaxPool2D(2, **kw),
        L.Conv2D(8, 12, 3, padding=1, **kw), L.ReLU(**kw), L.MaxPool2D(2, **kw),
        L.Flatten(**kw), L.Dense(12 * 4 * 4, 5, **kw)), 3, 16
    yield "bn-dropout", L.Sequential(
        L.Conv2D(3, 6, 3, padding=1, bias=False, **kw), L.BatchNorm2d(6, **kw), L.ReLU(**kw),
        L.MaxPool2D(3, stride=2, padding=1, **kw), L.Flatten(**kw), L.Dropout(0.3, **kw),
        L.Dense(6 * 4 * 4, 4, **kw)), 3, 8
    # ReLU in place after a conv, then pools with and without a ReLU before them, a ReLU last
    yield "relu-last", L.Sequential(
        L.Conv2D(2, 4, 3, **kw), L.ReLU(**kw), L.Conv2D(4, 4, 1, **kw), L.MaxPool2D(2, **kw),
        L.ReLU(**kw), L.MaxPool2D(2, stride=1, **kw), L.ReLU(**kw)), 2, 11
    yield "flatten-last", L.Sequential(L.Conv2D(2, 3, 3, padding=1, **kw), L.ReLU(**kw), L.Flatten(**kw)), 2, 5
    yield "dense", L.Sequential(L.Dense(7, 9, **kw), L.ReLU(**kw), L.Dense(9, 8, **kw)), None, 7


def layer_by_layer(model, x):
    for layer in model.layers:
        x = layer.forward(x)
    return x


def draw(rng, channels, size, batch, dtype, special=False):
    shape = (batch, size) if channels is None else (batch, channels, size, size)
    x = rng.standard_normal(shape).astype(dtype)
    if special:  # NaN and -inf cells, zeros of both signs
        for value, share in ((np.nan, 0.05), (-np.inf, 0.05), (0.0, 0.1), (-0.0, 0.1)):
            x[rng.random(shape) < share] = value
    return x


def assert_same_values(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)  # NaN == NaN, -0.0 == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["eval", "no_grad"])
def test_plan_matches_the_layers_forwards(dtype, mode):
    rng = make_rng(1)
    for name, model, channels, size in models(dtype):
        if mode == "eval":
            model.eval()
        for batch in (1, 3, 1):
            held = []
            for call in range(3):  # the first call makes the plan, the others run it
                x = draw(rng, channels, size, batch, dtype, special=call == 2)
                with fl.no_grad():
                    expected = layer_by_layer(model, x)
                    got = model.forward(x)
                if mode == "no_grad" and any(isinstance(layer, L.Dropout) for layer in model.layers):
                    continue  # training-mode Dropout under no_grad draws masks: compared below
                assert_same_values(got, expected)
                held.append((got, got.copy()))
            for got, copy in held:  # outputs the caller holds are never written again
                np.testing.assert_array_equal(got, copy)
        assert model._plans, name


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_before_pool_is_the_pool_then_relu_up_to_the_sign_of_zero(dtype):
    rng = make_rng(2)
    kw = dict(dtype=dtype)
    for pool in (L.MaxPool2D(2, **kw), L.MaxPool2D(3, stride=2, padding=1, ceil_mode=True, **kw)):
        model = L.Sequential(L.ReLU(**kw), pool, L.ReLU(**kw)).eval()
        for _ in range(3):
            x = draw(rng, 3, 9, 2, dtype, special=True)
            expected = fl.relu(fl.max_pool2d(fl.relu(x), pool.kernel_size, pool.stride, pool.padding,
                                             ceil_mode=pool.ceil_mode))
            assert_same_values(model.forward(x), expected)


def test_later_calls_are_not_validated_again(monkeypatch):
    """The plan's calls skip the spec: its conv2d validation runs at the first call only."""
    model = next(models(np.float32))[1].eval()
    x = make_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    calls = []
    validate = conv2d_spec.Conv2dSpec.forward
    monkeypatch.setattr(conv2d_spec.Conv2dSpec, "forward", lambda *a, **k: calls.append(1) or validate(*a, **k))
    first = model.forward(x)
    assert len(calls) == 2  # the two Conv2D layers
    for _ in range(3):
        assert_same_values(model.forward(x), first)
    assert len(calls) == 2


def test_training_mode_dropout_under_no_grad_still_masks():
    outputs = []
    for plan in (True, False):
        model = list(models(np.float32, seed=5))[1][1]
        x = make_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
        with fl.no_grad():
            outputs.append([model.forward(x) if plan else layer_by_layer(model, x) for _ in range(3)])
    for a, b in zip(*outputs):
        assert_same_values(a, b)
    assert not np.array_equal(outputs[0][0], outputs[0][1])  # new masks at every call


def test_the_plan_follows_changes_of_the_model():
    dtype = np.float32
    model = next(models(dtype))[1].eval()
    rng = make_rng(6)
    x = rng.standard_normal((2, 3, 16, 16)).astype(dtype)
    model.forward(x)
    model.params["0.w"] = rng.standard_normal(model.params["0.w"].shape)  # copied in place
    assert_same_values(model.forward(x), layer_by_layer(model, x))
    model.layers[3].padding = 0  # a child's option: the plan is made again, shapes follow
    model.layers[6:] = [L.Flatten(), L.Dense(12 * 3 * 3, 5, rng=1)]
    assert_same_values(model.forward(x), layer_by_layer(model, x))
    model.to(np.float64)
    x64 = x.astype(np.float64)
    assert_same_values(model.forward(x64), layer_by_layer(model, x64))
    with pytest.raises(TypeError, match="float64"):
        model.forward(x)  # a float32 input to the float64 model: checked, as without a plan
    model.train()
    y = model.forward(x64)  # training mode: records kept, the backward goes through them
    assert model.backward(np.ones_like(y)).shape == x64.shape


def test_a_concurrent_call_takes_the_layers_forwards():
    model = next(models(np.float32))[1].eval()
    rng = make_rng(7)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    model.forward(x)
    (planned,) = model._plans.values()
    with planned.lock:  # as while another thread runs the plan
        x2 = rng.standard_normal(x.shape).astype(np.float32)
        assert_same_values(model.forward(x2), layer_by_layer(model, x2))
    results = {}

    def run(i):
        xi = make_rng(10 + i).standard_normal(x.shape).astype(np.float32)
        results[i] = [(model.forward(xi), layer_by_layer(model, xi)) for _ in range(20)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for pairs in results.values():
        for got, expected in pairs:
            assert_same_values(got, expected)


def test_a_model_in_training_mode_makes_no_plan():
    model = next(models(np.float32))[1]
    x = make_rng(8).standard_normal((2, 3, 16, 16)).astype(np.float32)
    model.forward(x)
    assert not model._plans
    model.zero_grad()


# ---------------------------------------------------------------------------- training order


def twins(dtype, pool_kw):
    def make():
        rng = np.random.default_rng(11)
        kw = dict(dtype=dtype, rng=rng)
        return L.Sequential(
            L.Conv2D(2, 3, 3, padding=1, **kw), L.ReLU(**kw), L.MaxPool2D(**pool_kw, **kw),
            L.Conv2D(3, 4, 3, padding=1, **kw), L.ReLU(**kw), L.MaxPool2D(**pool_kw, **kw), L.Flatten(**kw))
    return make(), make()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool_kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                     dict(kernel_size=3, stride=1, ceil_mode=True)])
def test_training_runs_relu_after_the_pool_with_the_same_gradients(dtype, pool_kw):
    """Sequential runs ReLU -> MaxPool2D as MaxPool2D -> ReLU (forward and backward): the same
    outputs, input gradients and parameter gradients as the layers in their own order, on data
    full of ties, zeros of both signs, NaN and -inf."""
    model, reference = twins(dtype, pool_kw)
    assert [type(layer).__name__ for layer in model._order()][:3] == ["Conv2D", "MaxPool2D", "ReLU"]
    rng = make_rng(12)
    for special in (False, True):
        x = rng.integers(-2, 3, size=(2, 2, 9, 9)).astype(dtype)  # ties and zeros in every window
        if special:
            x = draw(rng, 2, 9, 2, dtype, special=True)
        for m in (model, reference):
            m.zero_grad()
        y = model.forward(x)
        expected = layer_by_layer(reference, x)
        assert_same_values(y, expected)
        dy = rng.integers(-3, 4, size=y.shape).astype(dtype)
        dx = model.backward(dy)
        for layer in reversed(reference.layers):
            dy = layer.backward(dy)
        assert_same_values(dx, dy)
        for name, g in reference.grads.items():
            assert_same_values(model.grads[name], g)


def test_training_order_gradient_check():
    """dL/dx and dL/dw of the reordered model against central differences, float64."""
    model, _ = twins(np.float64, dict(kernel_size=3, stride=2, padding=1))
    rng = make_rng(13)
    x = rng.standard_normal((1, 2, 6, 6))
    dy = rng.standard_normal(model.forward(x).shape)
    model.zero_grad()
    model.forward(x)
    dx = model.backward(dy)
    grads = dict(model.grads)

    def loss(xv):
        with fl.no_grad():
            return float(np.sum(model.forward(xv) * dy))

    eps = 1e-6
    for index in [(0, 0, 1, 2), (0, 1, 3, 3), (0, 0, 5, 0), (0, 1, 0, 4)]:
        xp, xm = x.copy(), x.copy()
        xp[index] += eps
        xm[index] -= eps
        np.testing.assert_allclose(dx[index], (loss(xp) - loss(xm)) / (2 * eps), rtol=1e-6, atol=1e-8)
    w = model.params["3.w"]
    for index in [(0, 0, 1, 1), (2, 1, 0, 2), (3, 2, 2, 0)]:
        keep = w[index]
        w[index] = keep + eps
        up = loss(x)
        w[index] = keep - eps
        down = loss(x)
        w[index] = keep
        np.testing.assert_allclose(grads["3.w"][index], (up - down) / (2 * eps), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool_kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)],
                         ids=["2x2", "3x3-s2-p1"])
def test_a_relu_after_a_pool_runs_in_the_pools_call(backend, dtype, pool_kw):
    """The plan fuses the ReLU that runs after a pool into the pool's call (one step fewer) and
    gives the bits of the two calls one after the other, NaN, infinities and -0.0 included."""
    rng = make_rng(5)
    kw = dict(dtype=dtype)
    model = L.Sequential(L.MaxPool2D(**pool_kw, **kw), L.ReLU(**kw), L.Flatten(**kw), backend=backend).eval()
    pool = L.MaxPool2D(**pool_kw, backend=backend, **kw).eval()
    for call in range(3):
        x = draw(rng, 3, 9, 2, dtype, special=call > 0)  # negative maxima too: the ReLU zeroes them
        expected = fl.relu(pool.forward(x), backend=backend).reshape(2, -1)
        got = model.forward(x)
        assert got.tobytes() == expected.tobytes()  # bit for bit: NaN payloads and signed zeros
        (planned,) = model._plans.values()
        assert len(planned.steps) == 2  # the pool with its ReLU, then Flatten


def test_the_cuda_pool_declines_a_fused_relu():
    from dataclasses import replace

    from fastlayers.ops import max_pool2d as pool_spec

    problem = pool_spec.MAX_POOL2D.forward(np.zeros((1, 1, 4, 4), np.float32), 2, None, 0, 1, False, False)
    cuda = next(k for k in pool_spec.KERNELS if k.backend == "cuda")
    assert cuda.declines(problem) is None
    backward = pool_spec.MAX_POOL2D.backward(np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.int64),
                                             (1, 1, 4, 4))
    assert cuda.declines(backward) is None  # the backward's geometry has no ReLU to fuse
    problem.geometry = replace(problem.geometry, relu=True)
    assert "fuses no ReLU" in cuda.declines(problem)


def _steps(model):
    (planned,) = model._plans.values()
    return len(planned.steps)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_convs_pool_and_relu_run_as_its_epilogue(backend, dtype):
    """Conv2D -> ReLU -> MaxPool2D(2), Conv2D -> MaxPool2D(2), Conv2D -> ReLU: one step each (the
    convolution's epilogue), the values of the layers' own forwards bit for bit (NaN payloads,
    signed zeros), odd planes (the pool drops the last row or column), special inputs."""
    rng = make_rng(30)
    kw = dict(dtype=dtype, backend=backend)
    cases = [  # (layers after the conv, steps of the plan: the conv's with its epilogue, Flatten)
        (lambda: [L.ReLU(**kw), L.MaxPool2D(2, **kw)], 2),
        (lambda: [L.MaxPool2D(2, **kw), L.ReLU(**kw)], 2),
        (lambda: [L.MaxPool2D(2, **kw)], 2),
        (lambda: [L.ReLU(**kw)], 2),
        (lambda: [L.MaxPool2D(2, stride=1, **kw), L.ReLU(**kw)], 3),  # not the 2x2 pool: its own step
        (lambda: [L.MaxPool2D(2, ceil_mode=True, **kw), L.ReLU(**kw)], 3),
    ]
    for C, F, size, padding in ((3, 8, 9, 1), (4, 20, 8, 0), (2, 5, 7, 2)):
        for tail, steps in cases:
            model = L.Sequential(L.Conv2D(C, F, 3, padding=padding, rng=rng, **kw), *tail(), L.Flatten(**kw)).eval()
            for call in range(3):
                x = draw(rng, C, size, 2, dtype, special=call == 2)
                expected = layer_by_layer(L.Sequential(*model._order()), x)
                got = model.forward(x)
                assert got.tobytes() == expected.tobytes()
            assert _steps(model) == steps


def test_a_convs_epilogue_keeps_the_errors_of_the_layers():
    """A conv whose output is too small to pool is not fused: the pool's own error is raised."""
    model = L.Sequential(L.Conv2D(2, 3, 3), L.ReLU(), L.MaxPool2D(2)).eval()
    x = np.zeros((1, 2, 3, 3), np.float32)  # a 1x1 output
    with pytest.raises(ValueError, match="larger than the padded input"):
        model.forward(x)


def test_a_layer_on_another_backend_is_not_fused():
    kw = dict(dtype=np.float64)
    model = L.Sequential(L.Conv2D(2, 3, 3, padding=1, **kw), L.ReLU(backend="numpy", **kw),
                         L.MaxPool2D(2, backend="numpy", **kw)).eval()
    x = make_rng(31).standard_normal((1, 2, 6, 6))
    np.testing.assert_array_equal(model.forward(x), layer_by_layer(L.Sequential(*model._order()), x))
    assert _steps(model) == 2  # the conv, then the pool with its ReLU (both on numpy)


def test_the_vgg_plan_runs_each_stage_in_one_step():
    """Conv -> ReLU -> MaxPool twice, Flatten, Dense: four steps."""
    model = next(models(np.float32))[1].eval()
    model.forward(make_rng(32).standard_normal((2, 3, 16, 16)).astype(np.float32))
    assert _steps(model) == 4
