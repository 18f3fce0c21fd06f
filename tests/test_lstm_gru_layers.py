"""The LSTM and GRU layers against torch.nn.LSTM / torch.nn.GRU carrying the same weights
(loaded with ``load_torch_state_dict``), in float64, and their dropout against finite
differences.

Tolerance: both sides evaluate the same float64 formulas in different orders (a few ulp per
operation, about 1e-14 relative through these depths); 1e-10 normwise leaves four orders of
magnitude of margin while a wrong gate, direction or layer order shows up at 1e-2.
"""
import itertools

import numpy as np
import pytest
from _helpers import assert_grad_matches, assert_normwise_close, numeric_grad, torch_float64

from fastlayers import layers

torch = pytest.importorskip("torch")

CONFIGS = [dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=bias)
           for L, bi, bf, bias in itertools.product((1, 2), (False, True), (False, True), (True, False))]


def pair(kind, config, D=3, H=5, backend="cpu"):
    torch.manual_seed(sum(map(int, config.values())))
    module = getattr(torch.nn, kind)(D, H, **config).double()
    layer = getattr(layers, kind)(D, H, **config, backend=backend, dtype=np.float64, rng=1)
    layer.load_torch_state_dict(module.state_dict())
    return module, layer


def torch_param_grad(module, name):
    """Our gradient's view of PyTorch's: weights transposed; the LSTM's one bias gets each of
    PyTorch's two bias gradients (they are equal: both biases enter the same sum)."""
    suffix = name.split("_", 1)[1]
    if name.startswith("Wx"):
        return getattr(module, f"weight_ih_{suffix}").grad.numpy().T
    if name.startswith("Wh"):
        return getattr(module, f"weight_hh_{suffix}").grad.numpy().T
    if name.startswith("bias_"):  # the GRU's biases carry PyTorch's names
        return getattr(module, name).grad.numpy()
    return getattr(module, f"bias_ih_{suffix}").grad.numpy()


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={int(v)}" for k, v in c.items()))
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_layer_matches_torch(kind, config, with_state):
    T, N, D, H = 4, 3, 3, 5
    module, layer = pair(kind, config, D, H)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, T, D) if config["batch_first"] else (T, N, D))
    S = config["num_layers"] * (2 if config["bidirectional"] else 1)
    states = [rng.standard_normal((S, N, H)) for _ in range(2 if kind == "LSTM" else 1)] if with_state else None
    state = None if states is None else (tuple(states) if kind == "LSTM" else states[0])

    out, final = layer.forward(x, state)
    xt = torch_float64(x)
    tstates = None if states is None else [torch_float64(s) for s in states]
    tstate = None if tstates is None else (tuple(tstates) if kind == "LSTM" else tstates[0])
    out_t, final_t = module(xt, tstate)
    assert_normwise_close(out, out_t.detach().numpy(), "output")
    finals = final if kind == "LSTM" else (final,)
    finals_t = final_t if kind == "LSTM" else (final_t,)
    for f, ft, name in zip(finals, finals_t, ("h_n", "c_n")):
        assert_normwise_close(f, ft.detach().numpy(), name)

    # A loss on the output and on every final state.
    dout = rng.standard_normal(out.shape)
    dfinals = [rng.standard_normal(f.shape) for f in finals]
    torch.autograd.backward([out_t, *finals_t], [torch.tensor(dout), *map(torch.tensor, dfinals)])
    dx = layer.backward(dout, tuple(dfinals) if kind == "LSTM" else dfinals[0])
    assert_normwise_close(dx, xt.grad.numpy(), "dx")
    if with_state:
        dstate = layer.dstate if kind == "LSTM" else (layer.dstate,)
        for g, s, name in zip(dstate, tstates, ("dh0", "dc0")):
            assert_normwise_close(g, s.grad.numpy(), name)
    assert set(layer.grads) == set(layer.params)
    for name, g in layer.grads.items():
        assert_normwise_close(g, torch_param_grad(module, name), f"d{name}")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_eval_mode_turns_dropout_off(kind):
    config = dict(num_layers=3, bidirectional=True)
    module, layer = pair(kind, config)
    dropped = getattr(layers, kind)(3, 5, **config, dropout=0.5, dtype=np.float64, rng=2)
    dropped.load_torch_state_dict(module.state_dict())
    x = np.random.default_rng(3).standard_normal((6, 2, 3))
    expected = layer.forward(x)[0]
    training = dropped.forward(x)[0]
    assert np.linalg.norm(training - expected) > 1e-3 * np.linalg.norm(expected)  # dropout really acts
    np.testing.assert_array_equal(dropped.eval().forward(x)[0], expected)
    assert not dropped.training and dropped.train().training


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_dropout_backward_matches_finite_differences(kind):
    """The same dropout masks on every call (the layer's generator reset before each forward),
    so the training-mode forward is a fixed function whose gradient can be differenced."""
    layer = getattr(layers, kind)(2, 3, num_layers=2, bidirectional=True, dropout=0.4, dtype=np.float64, rng=4)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 2))
    dout = rng.standard_normal((3, 2, 6))

    def forward(x):
        layer._rng = np.random.default_rng(6)
        return layer.forward(x)[0]

    forward(x)
    dx = layer.backward(dout)
    assert_grad_matches(dx, numeric_grad(forward, dict(x=x), "x", dout), err_msg="dx")
    weights = dict(layer.params)
    for name in ("Wh_l0", "Wx_l1_reverse"):
        def through(**kw):
            np.copyto(layer.params[name], kw[name])
            return forward(x)

        original = weights[name].copy()
        layer.zero_grad()  # gradients accumulate over backward calls
        forward(x)
        layer.backward(dout)
        analytic = layer.grads[name]
        numeric = numeric_grad(through, {name: original.copy()}, name, dout)
        np.copyto(layer.params[name], original)
        assert_grad_matches(analytic, numeric, err_msg=f"d{name}")


def test_float32_layer_runs_on_the_cpu_kernels():
    module, layer64 = pair("LSTM", dict(num_layers=2))
    layer = layers.LSTM(3, 5, num_layers=2, rng=0)
    layer.load_torch_state_dict(module.state_dict())
    assert all(p.dtype == np.float32 for p in layer.params.values())
    x = np.random.default_rng(7).standard_normal((5, 2, 3))
    out, (h, c) = layer.forward(x.astype(np.float32))
    np.testing.assert_allclose(out, layer64.forward(x)[0], rtol=1e-5, atol=1e-5)
    assert layer.backward(np.ones_like(out)).dtype == np.float32


def test_bad_states_and_state_dicts_are_refused():
    module, layer = pair("GRU", dict(num_layers=2))
    x = np.zeros((4, 3, 3))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 3, 5\)"):
        layer.forward(x, np.zeros((1, 3, 5)))
    lstm = layers.LSTM(3, 5, dtype=np.float64)
    with pytest.raises(ValueError, match="tuple"):
        lstm.forward(x, (np.zeros((1, 3, 5)),))
    sd = module.state_dict()
    del sd["bias_hh_l1"]
    with pytest.raises(ValueError, match="missing.*bias_hh_l1"):
        layer.load_torch_state_dict(sd)
    with pytest.raises(ValueError, match="missing"):
        lstm.load_torch_state_dict(module.state_dict())  # a GRU's weights into an LSTM
    with pytest.raises(ValueError, match="dropout"):
        layers.LSTM(3, 5, dropout=1.0)
    with pytest.raises(RuntimeError, match="GRU.backward has no forward to go back through"):
        layers.GRU(3, 5).backward(np.zeros((4, 3, 5), np.float32))


def test_repr_names_the_configuration():
    layer = layers.GRU(3, 5, num_layers=2, bidirectional=True, dropout=0.25)
    text = repr(layer)
    assert text.startswith("GRU(3, 5, num_layers=2, bidirectional=True, dropout=0.25, ")
    assert "Wx_l1_reverse=10x15" in text
