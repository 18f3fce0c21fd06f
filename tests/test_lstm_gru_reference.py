"""The LSTM and GRU reference against PyTorch (float64, weights mapped to fastlayers' layout) and
against finite differences.

Tolerances. PyTorch and the reference evaluate the same float64 formulas in different orders
(PyTorch fuses the two biases, sums the gate products in its own BLAS order, and computes
sigmoid as 1 / (1 + exp(-z)) where the reference uses (1 + tanh(z / 2)) / 2): each result differs
by a few ulp per step times at most D + H + 1 terms, about 1e-14 relative here. 1e-10 normwise
leaves four orders of magnitude of margin, and a wrong gate, sign or bias shows up at 1e-2.
"""
import numpy as np
import pytest
from _helpers import assert_grad_matches, assert_normwise_close, make_rng, numeric_grad, torch_float64

from fastlayers import reference as ref

torch = pytest.importorskip("torch")

def torch_arrays(module):
    """The module's float64 parameters as NumPy arrays."""
    return {name: p.detach().numpy() for name, p in module.named_parameters()}


def lstm_weights(module, suffix=""):
    """Wx, Wh, b of fastlayers from torch.nn.LSTM(Cell)'s weight_ih, weight_hh, bias_ih + bias_hh."""
    p = torch_arrays(module)
    return p["weight_ih" + suffix].T, p["weight_hh" + suffix].T, p["bias_ih" + suffix] + p["bias_hh" + suffix]


def gru_weights(module, suffix=""):
    p = torch_arrays(module)
    return p["weight_ih" + suffix].T, p["weight_hh" + suffix].T, p["bias_ih" + suffix], p["bias_hh" + suffix]


def step_case(kind, N, D, H, with_state):
    """A torch.nn.LSTMCell or GRUCell, its weights in fastlayers' layout, the generator, an input
    (N, D) and the initial states (N, H) (None without)."""
    torch.manual_seed(N + D + H)
    cell = getattr(torch.nn, kind + "Cell")(D, H).double()
    weights = (lstm_weights if kind == "LSTM" else gru_weights)(cell)
    rng = make_rng(N * D * H)
    x = rng.standard_normal((N, D))
    states = tuple(rng.standard_normal((N, H)) if with_state else None for _ in range(2 if kind == "LSTM" else 1))
    return cell, weights, rng, x, states


SHAPES = [(5, 3, 4, 6), (1, 3, 4, 6), (6, 1, 2, 3), (1, 1, 1, 1), (4, 2, 7, 17)]  # T, N, D, H


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("T, N, D, H", SHAPES)
def test_lstm_matches_torch(T, N, D, H, with_state):
    torch.manual_seed(T * 100 + H)
    module = torch.nn.LSTM(D, H).double()
    Wx, Wh, b = lstm_weights(module, "_l0")
    rng = make_rng(T + N + D + H)
    x = rng.standard_normal((T, N, D))
    h0 = rng.standard_normal((N, H)) if with_state else None
    c0 = rng.standard_normal((N, H)) if with_state else None
    hs, cs = ref.lstm(x, h0, c0, Wx, Wh, b)

    xt = torch_float64(x)
    state = (torch_float64(h0[None]), torch_float64(c0[None])) if with_state else None
    out, (hT, cT) = module(xt, state)
    assert_normwise_close(hs, out.detach().numpy(), "hs")
    assert_normwise_close(hs[-1], hT[0].detach().numpy(), "h_T")
    assert_normwise_close(cs[-1], cT[0].detach().numpy(), "c_T")

    # Gradients of a loss touching every hidden state and the last cell state, as torch sees it.
    dhs = rng.standard_normal((T, N, H))
    dcT = rng.standard_normal((N, H))
    torch.autograd.backward([out, cT[0]], [torch.tensor(dhs), torch.tensor(dcT)])
    dcs = np.zeros((T, N, H))
    dcs[-1] = dcT
    dx, dh0, dc0, dWx, dWh, db = ref.lstm_backward(dhs, dcs, x, h0, c0, Wx, Wh, b, hs, cs)
    assert_normwise_close(dx, xt.grad.numpy(), "dx")
    if with_state:
        assert_normwise_close(dh0, state[0].grad[0].numpy(), "dh0")
        assert_normwise_close(dc0, state[1].grad[0].numpy(), "dc0")
    assert_normwise_close(dWx, module.weight_ih_l0.grad.numpy().T, "dWx")
    assert_normwise_close(dWh, module.weight_hh_l0.grad.numpy().T, "dWh")
    assert_normwise_close(db, module.bias_ih_l0.grad.numpy(), "db (bias_ih)")
    assert_normwise_close(db, module.bias_hh_l0.grad.numpy(), "db (bias_hh)")


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("T, N, D, H", SHAPES)
def test_gru_matches_torch(T, N, D, H, with_state):
    torch.manual_seed(T * 100 + H)
    module = torch.nn.GRU(D, H).double()
    Wx, Wh, bx, bh = gru_weights(module, "_l0")
    rng = make_rng(T + N + D + H)
    x = rng.standard_normal((T, N, D))
    h0 = rng.standard_normal((N, H)) if with_state else None
    hs = ref.gru(x, h0, Wx, Wh, bx, bh)

    xt = torch_float64(x)
    state = torch_float64(h0[None]) if with_state else None
    out, hT = module(xt, state)
    assert_normwise_close(hs, out.detach().numpy(), "hs")
    assert_normwise_close(hs[-1], hT[0].detach().numpy(), "h_T")

    dhs = rng.standard_normal((T, N, H))
    out.backward(torch.tensor(dhs))
    dx, dh0, dWx, dWh, dbx, dbh = ref.gru_backward(dhs, x, h0, Wx, Wh, bx, bh, hs)
    assert_normwise_close(dx, xt.grad.numpy(), "dx")
    if with_state:
        assert_normwise_close(dh0, state.grad[0].numpy(), "dh0")
    assert_normwise_close(dWx, module.weight_ih_l0.grad.numpy().T, "dWx")
    assert_normwise_close(dWh, module.weight_hh_l0.grad.numpy().T, "dWh")
    assert_normwise_close(dbx, module.bias_ih_l0.grad.numpy(), "dbx")
    assert_normwise_close(dbh, module.bias_hh_l0.grad.numpy(), "dbh")


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("N, D, H", [(3, 4, 6), (1, 2, 5), (1, 1, 1)])
def test_lstm_step_matches_lstm_cell(N, D, H, with_state):
    cell, (Wx, Wh, b), rng, x, (h_prev, c_prev) = step_case("LSTM", N, D, H, with_state)
    h, c = ref.lstm_step(x, h_prev, c_prev, Wx, Wh, b)
    xt = torch_float64(x)
    state = (torch_float64(h_prev), torch_float64(c_prev)) if with_state else None
    ht, ct = cell(xt, state)
    assert_normwise_close(h, ht.detach().numpy(), "h")
    assert_normwise_close(c, ct.detach().numpy(), "c")

    dh, dc = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    torch.autograd.backward([ht, ct], [torch.tensor(dh), torch.tensor(dc)])
    dx, dh_prev, dc_prev, dWx, dWh, db = ref.lstm_step_backward(dh, dc, x, h_prev, c_prev, Wx, Wh, b, h, c)
    assert_normwise_close(dx, xt.grad.numpy(), "dx")
    if with_state:
        assert_normwise_close(dh_prev, state[0].grad.numpy(), "dh_prev")
        assert_normwise_close(dc_prev, state[1].grad.numpy(), "dc_prev")
    assert_normwise_close(dWx, cell.weight_ih.grad.numpy().T, "dWx")
    assert_normwise_close(dWh, cell.weight_hh.grad.numpy().T, "dWh")
    assert_normwise_close(db, cell.bias_ih.grad.numpy(), "db")


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("N, D, H", [(3, 4, 6), (1, 2, 5), (1, 1, 1)])
def test_gru_step_matches_gru_cell(N, D, H, with_state):
    cell, (Wx, Wh, bx, bh), rng, x, (h_prev,) = step_case("GRU", N, D, H, with_state)
    h = ref.gru_step(x, h_prev, Wx, Wh, bx, bh)
    xt = torch_float64(x)
    state = torch_float64(h_prev) if with_state else None
    ht = cell(xt, state)
    assert_normwise_close(h, ht.detach().numpy(), "h")

    dh = rng.standard_normal((N, H))
    ht.backward(torch.tensor(dh))
    dx, dh_prev, dWx, dWh, dbx, dbh = ref.gru_step_backward(dh, x, h_prev, Wx, Wh, bx, bh, h)
    assert_normwise_close(dx, xt.grad.numpy(), "dx")
    if with_state:
        assert_normwise_close(dh_prev, state.grad.numpy(), "dh_prev")
    assert_normwise_close(dWx, cell.weight_ih.grad.numpy().T, "dWx")
    assert_normwise_close(dWh, cell.weight_hh.grad.numpy().T, "dWh")
    assert_normwise_close(dbx, cell.bias_ih.grad.numpy(), "dbx")
    assert_normwise_close(dbh, cell.bias_hh.grad.numpy(), "dbh")


# ---------------------------------------------------------------------------- finite differences


def gated_arrays(rng, cell, T, N, D, H, with_state=True):
    G = 4 if cell == "lstm" else 3
    a = dict(input=rng.standard_normal((T, N, D)), hx=rng.standard_normal((N, H)) if with_state else None,
             Wx=rng.standard_normal((D, G * H)) / np.sqrt(D), Wh=rng.standard_normal((H, G * H)) / np.sqrt(H))
    if cell == "lstm":
        a.update(cx=rng.standard_normal((N, H)) if with_state else None, bias=rng.standard_normal(G * H))
    else:
        a.update(bias_ih=rng.standard_normal(G * H), bias_hh=rng.standard_normal(G * H))
    return a


def test_lstm_backward_matches_finite_differences():
    rng = make_rng(3)
    a = gated_arrays(rng, "lstm", 4, 2, 3, 5)
    hs, cs = ref.lstm(**a)
    dhs, dcs = rng.standard_normal(hs.shape), rng.standard_normal(cs.shape)
    grads = ref.lstm_backward(dhs, dcs, a["input"], a["hx"], a["cx"], a["Wx"], a["Wh"], a["bias"], hs, cs)

    def loss_weighted_states(**kw):  # sum(hs * dhs) + sum(cs * dcs) as one array product with (dhs, dcs)
        return np.stack(ref.lstm(**kw))

    for name, analytic in zip(("input", "hx", "cx", "Wx", "Wh", "bias"), grads):
        numeric = numeric_grad(loss_weighted_states, a, name, np.stack([dhs, dcs]))
        assert_grad_matches(analytic, numeric, err_msg=f"grad_{name}")


def test_lstm_step_backward_matches_finite_differences():
    rng = make_rng(4)
    a = gated_arrays(rng, "lstm", 1, 3, 4, 2)
    arrays = dict(input=a["input"][0], hx=a["hx"], cx=a["cx"], Wx=a["Wx"], Wh=a["Wh"], bias=a["bias"])
    h, c = ref.lstm_step(**arrays)
    dh = rng.standard_normal(h.shape)
    grads = ref.lstm_step_backward(dh, None, arrays["input"], a["hx"], a["cx"], a["Wx"], a["Wh"], a["bias"], h, c)

    def hidden(**kw):  # dc = None: the loss sees h only
        return ref.lstm_step(**kw)[0]

    for name, analytic in zip(("input", "hx", "cx", "Wx", "Wh", "bias"), grads):
        assert_grad_matches(analytic, numeric_grad(hidden, arrays, name, dh), err_msg=f"grad_{name}")


def test_gru_backward_matches_finite_differences():
    rng = make_rng(5)
    a = gated_arrays(rng, "gru", 4, 2, 3, 5)
    hs = ref.gru(**a)
    dhs = rng.standard_normal(hs.shape)
    grads = ref.gru_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], a["bias_ih"], a["bias_hh"], hs)
    for name, analytic in zip(("input", "hx", "Wx", "Wh", "bias_ih", "bias_hh"), grads):
        assert_grad_matches(analytic, numeric_grad(ref.gru, a, name, dhs), err_msg=f"grad_{name}")


def test_gru_step_backward_matches_finite_differences():
    rng = make_rng(6)
    a = gated_arrays(rng, "gru", 1, 3, 4, 2)
    arrays = dict(input=a["input"][0], hx=a["hx"], Wx=a["Wx"], Wh=a["Wh"], bias_ih=a["bias_ih"], bias_hh=a["bias_hh"])
    h = ref.gru_step(**arrays)
    dh = rng.standard_normal(h.shape)
    grads = ref.gru_step_backward(dh, arrays["input"], a["hx"], a["Wx"], a["Wh"], a["bias_ih"], a["bias_hh"], h)
    for name, analytic in zip(("input", "hx", "Wx", "Wh", "bias_ih", "bias_hh"), grads):
        assert_grad_matches(analytic, numeric_grad(ref.gru_step, arrays, name, dh), err_msg=f"grad_{name}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("T, N, D, H", [(0, 2, 3, 4), (3, 0, 3, 4), (3, 2, 0, 4), (3, 2, 3, 0)])
def test_empty_shapes(cell, T, N, D, H):
    """Empty sequences, batches and feature sizes: results of the right shape, gradients zeros."""
    a = gated_arrays(make_rng(0), cell, T, N, D, H, with_state=False)
    if cell == "lstm":
        hs, cs = ref.lstm(**a)
        grads = ref.lstm_backward(np.ones_like(hs), None, a["input"], None, None, a["Wx"], a["Wh"], a["bias"], hs, cs)
        shapes = [(T, N, D), (N, H), (N, H), (D, 4 * H), (H, 4 * H), (4 * H,)]
    else:
        hs = ref.gru(**a)
        grads = ref.gru_backward(np.ones_like(hs), a["input"], None, a["Wx"], a["Wh"], a["bias_ih"], a["bias_hh"], hs)
        shapes = [(T, N, D), (N, H), (D, 3 * H), (H, 3 * H), (3 * H,), (3 * H,)]
    assert hs.shape == (T, N, H)
    assert [g.shape for g in grads] == shapes
    if T == 0 or N == 0:
        assert all(not g.any() for g in grads)
