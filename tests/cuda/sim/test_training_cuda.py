"""Device-resident training on the CUDA backend (Numba simulator): the loss and optimiser
kernels against their host versions, a small CNN trained on the GPU against the same model on the
host, and a step that moves nothing between host and GPU but the loss the caller reads.

Sizes stay tiny: the simulator runs every GPU thread as a Python thread (a step of the CNN below
takes seconds)."""
import sys
import types

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import layers as L
from fastlayers import reference as ref
from tests._helpers import assert_close, make_rng

cuda = pytest.importorskip("numba.cuda")

DTYPES = [np.float32, np.float64]


def _host(a):
    return a.copy_to_host()


# ---------------------------------------------------------------------------- loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 6), (1, 1), (0, 3)])
def test_softmax_cross_entropy_matches_reference(shape, dtype):
    rng = make_rng(0)
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    logits.reshape(-1)[:1] = 60  # exp(60) overflows nothing: the maximum is subtracted first
    labels = rng.integers(0, shape[-1], shape[:-1])
    want_loss, want_grad = ref.softmax_cross_entropy(logits.astype(np.float64), labels)
    for given in (cuda.to_device(labels), labels):  # labels on the GPU, or copied there
        loss, grad = fl.losses.softmax_cross_entropy(cuda.to_device(logits), given)
        assert loss.shape == () and loss.dtype == dtype and grad.dtype == dtype
        # Each row sums K exponentials; the loss sums the rows' terms.
        assert_close(_host(loss), want_loss, dtype, terms=shape[-1] + max(labels.size, 1), scale=8)
        assert_close(_host(grad), want_grad, dtype, terms=shape[-1])


def test_softmax_cross_entropy_label_out_of_range_gives_nan():
    logits = cuda.to_device(np.zeros((2, 3)))
    loss, _ = fl.losses.softmax_cross_entropy(logits, cuda.to_device(np.array([1, 3])))
    assert np.isnan(_host(loss))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        fl.losses.softmax_cross_entropy(logits, cuda.to_device(np.array([1, 2, 0])))
    with pytest.raises(TypeError, match="labels must be integers"):
        fl.losses.softmax_cross_entropy(logits, cuda.to_device(np.array([1.0, 2.0])))


# ---------------------------------------------------------------------------- optimisers

OPTIMISERS = {
    "sgd": lambda m: fl.optim.SGD(m, lr=0.1),
    "sgd-momentum-decay": lambda m: fl.optim.SGD(m, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda m: fl.optim.Adam(m, lr=0.01),
    "adam-decay": lambda m: fl.optim.Adam(m, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPTIMISERS)
def test_optimiser_updates_on_device_match_the_host(name, dtype):
    rng = make_rng(1)
    p = {k: rng.standard_normal(s).astype(dtype) for k, s in (("w", (3, 70)), ("b", (5,)))}  # 210: a partial block
    grads = [{k: rng.standard_normal(v.shape).astype(dtype) for k, v in p.items()} for _ in range(3)]
    host = types.SimpleNamespace(params={k: v.copy() for k, v in p.items()}, grads={})
    dev = types.SimpleNamespace(params={k: cuda.to_device(v) for k, v in p.items()}, grads={})
    opt_host, opt_dev = OPTIMISERS[name](host), OPTIMISERS[name](dev)
    for g in grads:
        host.grads = g
        dev.grads = {k: cuda.to_device(v) for k, v in g.items()}
        opt_host.step()
        opt_dev.step()
    for k in p:
        # The same elementwise operations in the same order: a few roundings per step.
        assert_close(_host(dev.params[k]), host.params[k], dtype, terms=8, err_msg=k)
    state = opt_dev.state_dict()  # on the host, equal to the host optimiser's
    for k, arrays in opt_host.state_dict()["state"].items():
        for got, want in zip(state["state"][k], arrays):
            assert isinstance(got, np.ndarray)
            assert_close(got, want, dtype, terms=8)
    fresh = OPTIMISERS[name](dev)
    fresh.load_state_dict(state)  # back onto the GPU
    assert all(not isinstance(a, np.ndarray) for arrays in fresh.state.values() for a in arrays)


def test_clip_grad_norm_refuses_device_gradients():
    model = types.SimpleNamespace(params={}, grads={"w": cuda.to_device(np.ones(3))})
    with pytest.raises(NotImplementedError, match="no GPU implementation"):
        fl.optim.clip_grad_norm_(model, 1.0)


# ---------------------------------------------------------------------------- layers


def _cnn(dtype, batch_norm=False):
    # Before a BatchNorm2d the convolution has no bias: its gradient would be rounding noise
    # around 0, which Adam's normalisation blows up to full steps (no test could compare those).
    norm = [L.BatchNorm2d(2, dtype=dtype)] if batch_norm else []
    conv = L.Conv2D(1, 2, 3, padding=1, bias=not batch_norm, dtype=dtype, rng=0)
    return L.Sequential(conv, *norm, L.ReLU(dtype=dtype),
                        L.MaxPool2D(2, dtype=dtype), L.Flatten(dtype=dtype), L.Dense(8, 3, dtype=dtype, rng=1))


def _batch(seed=0):
    rng = make_rng(seed)
    return rng.standard_normal((2, 1, 4, 4)), rng.integers(0, 3, 2)


def _step(model, opt, x, labels):
    opt.zero_grad()
    loss, dlogits = fl.losses.softmax_cross_entropy(model(x), labels)
    model.backward(dlogits)
    opt.step()
    return loss


@pytest.mark.parametrize("optimiser", ["sgd-momentum-decay", "adam-decay"])
def test_cnn_trained_on_device_matches_the_host(optimiser):
    host, dev = _cnn(np.float64), _cnn(np.float64).cuda()
    assert all(not isinstance(p, np.ndarray) for p in dev.parameters())
    opt_host, opt_dev = OPTIMISERS[optimiser](host), OPTIMISERS[optimiser](dev)
    x, labels = _batch()
    xd, labels_d = cuda.to_device(x), cuda.to_device(labels)
    for step in range(3):
        want = _step(host, opt_host, x, labels)
        got = _step(dev, opt_dev, xd, labels_d)
        # float64 through a few layers and steps, the sums in other orders than NumPy's: ~1e-16
        # relative; 1e-12 leaves four orders of margin, a wrong term shows at 1e-3.
        np.testing.assert_allclose(float(_host(got)), float(want), rtol=1e-12, err_msg=f"loss at step {step}")
    for (name, p_dev), (_, p_host) in zip(dev.named_parameters(), host.named_parameters()):
        np.testing.assert_allclose(_host(p_dev), p_host, rtol=1e-12, atol=1e-13, err_msg=name)
    for name, grad in dev.grads.items():
        np.testing.assert_allclose(_host(grad), host.grads[name], rtol=1e-12, atol=1e-13, err_msg=f"grad {name}")
    state = dev.state_dict()  # host copies, as the host model's
    for name, a in host.state_dict().items():
        assert isinstance(state[name], np.ndarray)
        np.testing.assert_allclose(state[name], a, rtol=1e-12, atol=1e-13)
    back = dev.cpu()
    assert all(isinstance(p, np.ndarray) for p in back.parameters()) and back[0].backend is None
    np.testing.assert_allclose(back(x), host(x), rtol=1e-12, atol=1e-13)


def test_cnn_with_batch_norm_on_device_matches_the_host():
    """BatchNorm2d on the GPU: batch statistics in training, the running ones (updated on the
    GPU; the batch count on the host) in eval mode."""
    host, dev = _cnn(np.float64, batch_norm=True), _cnn(np.float64, batch_norm=True).cuda()
    opt_host, opt_dev = OPTIMISERS["adam"](host), OPTIMISERS["adam"](dev)
    x, labels = _batch()
    for _ in range(2):
        want = _step(host, opt_host, x, labels)
        got = _step(dev, opt_dev, cuda.to_device(x), cuda.to_device(labels))
        np.testing.assert_allclose(float(_host(got)), float(want), rtol=1e-12)
    state, want_state = dev.state_dict(), host.state_dict()
    assert int(state["1.num_batches_tracked"]) == 2
    for name, a in want_state.items():
        np.testing.assert_allclose(state[name], a, rtol=1e-12, atol=1e-13, err_msg=name)
    x2 = make_rng(5).standard_normal((3, 1, 4, 4))
    np.testing.assert_allclose(_host(dev.eval()(cuda.to_device(x2))), host.eval()(x2), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", [L.Tanh, L.Sigmoid])
def test_tanh_and_sigmoid_on_device_match_the_host(layer, dtype):
    """Forward and backward against the host layer, extreme inputs included (the sigmoid from
    exp(-|x|) never overflows). Forward: float32 within 2 units in the last place of the host's
    values (the GPU's tanhf/expf are within 2 ulp), float64 to 1e-15. Backward: the host's formula
    on the device's own y, to 4 eps |dy| absolute: 1 - y^2 and 1 - y lose all relative accuracy
    as |y| nears 1 (a contracted multiply-add on the GPU rounds them differently), but never more
    than 2 eps absolute."""
    x = np.concatenate([make_rng(2).standard_normal(37) * 4, [0.0, -0.0, 30.0, -30.0, 200.0, -200.0]])
    x = x.astype(dtype).reshape(1, -1)
    dy = make_rng(3).standard_normal(x.shape).astype(dtype)
    host, dev = layer(dtype=dtype), layer(dtype=dtype).cuda()
    y = dev(cuda.to_device(x))
    dx = dev.backward(cuda.to_device(dy))
    rtol = 2 * np.finfo(dtype).eps if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(_host(y), host(x), rtol=rtol, atol=np.finfo(dtype).tiny)
    y_dev = _host(y)
    want = dy * (1 - y_dev * y_dev) if layer is L.Tanh else dy * y_dev * (1 - y_dev)
    assert np.all(np.abs(_host(dx) - want) <= 4 * np.finfo(dtype).eps * np.abs(dy))
    assert np.isfinite(y_dev).all()


def test_mlp_with_tanh_and_sigmoid_trained_on_device_matches_the_host():
    def mlp():
        f64 = dict(dtype=np.float64)
        return L.Sequential(L.Flatten(**f64), L.Dense(16, 6, rng=0, **f64), L.Tanh(**f64),
                            L.Dense(6, 5, rng=1, **f64), L.Sigmoid(**f64), L.Dense(5, 3, rng=2, **f64))

    host, dev = mlp(), mlp().cuda()
    opt_host, opt_dev = OPTIMISERS["sgd-momentum-decay"](host), OPTIMISERS["sgd-momentum-decay"](dev)
    x, labels = _batch()
    for step in range(2):
        want = _step(host, opt_host, x, labels)
        got = _step(dev, opt_dev, cuda.to_device(x), cuda.to_device(labels))
        np.testing.assert_allclose(float(_host(got)), float(want), rtol=1e-12, err_msg=f"loss at step {step}")
    for (name, p_dev), (_, p_host) in zip(dev.named_parameters(), host.named_parameters()):
        np.testing.assert_allclose(_host(p_dev), p_host, rtol=1e-12, atol=1e-13, err_msg=name)


def test_shared_dense_accumulates_on_device():
    """A Dense placed twice: its two calls' gradients add up on the GPU as on the host."""
    def model():
        d = L.Dense(4, 4, dtype=np.float64, rng=2)
        return L.Sequential(d, L.ReLU(dtype=np.float64), d)

    host, dev = model(), model().cuda()
    x = make_rng(3).standard_normal((3, 4))
    dy = make_rng(4).standard_normal((3, 4))
    for _ in range(2):  # a second backward accumulates into the first's gradients
        host(x)
        host.backward(dy)
        dev(cuda.to_device(x))
        dev.backward(cuda.to_device(dy))
    for name, g in host.grads.items():
        np.testing.assert_allclose(_host(dev.grads[name]), g, rtol=1e-12, atol=1e-13, err_msg=name)
    dev.zero_grad()
    assert not dev.grads


def test_moving_models_and_their_errors():
    with pytest.raises(NotImplementedError, match="Dropout cannot be moved to the GPU"):
        L.Sequential(L.Conv2D(1, 2, 3), L.Dropout(0.5)).cuda()
    dev = _cnn(np.float64).to("cuda")
    assert dev.device == "cuda" and dev[0].backend == "cuda"
    with pytest.raises(TypeError, match="must be a GPU array"):
        dev(_batch()[0])
    with pytest.raises(TypeError, match="move the model with model.cuda"):
        _cnn(np.float64)(cuda.to_device(_batch()[0]))
    with pytest.raises(ValueError, match="device must be one of"):
        dev.to(device="tpu")
    host = _cnn(np.float64)
    dev.load_state_dict(host.state_dict())  # host arrays into the device parameters
    dev.params["4.b"] = np.arange(3.0)
    np.testing.assert_array_equal(_host(dev.params["4.b"]), np.arange(3.0))
    np.testing.assert_array_equal(_host(dev.params["0.w"]), host.params["0.w"])
    f32 = dev.to(np.float32)  # a dtype conversion keeps the model on the GPU
    assert f32.device == "cuda" and dev.params["0.w"].dtype == np.float32


# ---------------------------------------------------------------------------- no host round trip


class _Transfers:
    """Counts every host <-> GPU transfer the simulator can make, and refuses every way of reading
    device memory on the host without one (NumPy conversions, arithmetic, element reads) as well
    as host arrays passed to a kernel (an implicit copy each way on a real GPU)."""

    def __init__(self, monkeypatch):
        from numba.cuda.simulator import kernel
        from numba.cuda.simulator.cudadrv import devicearray

        self.to_device = self.host_to_device = self.to_host = 0
        fake = devicearray.FakeCUDAArray
        original_to_device, original_copy_in, original_copy_out = cuda.to_device, fake.copy_to_device, fake.copy_to_host
        original_getattr, original_getitem = fake.__getattr__, fake.__getitem__
        original_call = kernel.FakeCUDAKernel.__call__

        def to_device(*args, **kwargs):
            self.to_device += 1
            return original_to_device(*args, **kwargs)

        def copy_to_device(array, source, *args, **kwargs):
            if not isinstance(source, fake):
                self.host_to_device += 1
            return original_copy_in(array, source, *args, **kwargs)

        def copy_to_host(array, *args, **kwargs):
            self.to_host += 1
            return original_copy_out(array, *args, **kwargs)

        def host_caller():
            # The simulator's own code (the kernels' threads included) reads its arrays freely.
            return not sys._getframe(2).f_globals.get("__name__", "").startswith("numba")

        def getattr_(array, name):
            # Host code reads only metadata; protocols a real device array lacks
            # (__array_interface__, __dlpack__, ...) are absent for it.
            if host_caller() and name not in ("dtype", "size", "ndim", "strides", "itemsize"):
                if name.startswith("__"):
                    raise AttributeError(name)
                raise AssertionError(f"host code read device array attribute {name!r}")
            return original_getattr(array, name)

        def getitem(array, index):
            result = original_getitem(array, index)
            if host_caller() and not isinstance(result, fake):
                raise AssertionError("host code read a device array element")
            return result

        def call(kernel_self, *args):
            for a in args if not kernel_self._device and host_caller() else ():  # launches, not device calls
                if isinstance(a, np.ndarray) and a.ndim:
                    raise AssertionError(f"a host array {a.shape} passed to kernel {kernel_self.fn.__name__}")
            return original_call(kernel_self, *args)

        def refused(original, what):
            def method(*args):
                if host_caller():
                    raise AssertionError(f"host code {what} a device array")
                return original(*args)

            return method

        monkeypatch.setattr(cuda, "to_device", to_device)
        monkeypatch.setattr(fake, "copy_to_device", copy_to_device)
        monkeypatch.setattr(fake, "copy_to_host", copy_to_host)
        monkeypatch.setattr(fake, "__getattr__", getattr_)
        monkeypatch.setattr(fake, "__getitem__", getitem)
        monkeypatch.setattr(fake, "__setitem__", refused(fake.__setitem__, "wrote into"))
        monkeypatch.setattr(kernel.FakeCUDAKernel, "__call__", call)
        for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "eq", "ne", "lt", "le", "gt", "ge"):
            monkeypatch.setattr(fake, f"__{op}__", refused(getattr(fake, f"__{op}__"), f"computed {op} on"))


@pytest.mark.parametrize("optimiser", ["sgd-momentum-decay", "adam-decay"])
def test_a_training_step_moves_nothing_but_the_loss(monkeypatch, optimiser):
    model = _cnn(np.float32, batch_norm=True).cuda()
    opt = OPTIMISERS[optimiser](model)
    x, labels = _batch()
    xd, labels_d = cuda.to_device(x.astype(np.float32)), cuda.to_device(labels)
    transfers = _Transfers(monkeypatch)
    losses = []
    for step in range(2):  # the second step also updates existing optimiser state
        loss = _step(model, opt, xd, labels_d)
        assert (transfers.to_device, transfers.host_to_device, transfers.to_host) == (0, 0, step)
        losses.append(float(loss.copy_to_host()))  # the one transfer: the loss the caller asks for
    assert (transfers.to_device, transfers.host_to_device, transfers.to_host) == (0, 0, 2)
    assert np.all(np.isfinite(losses))
