"""lstm and gru (and their steps) on the CUDA backend (Numba simulator) against the NumPy reference."""
import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref
from tests._helpers import assert_close, assert_grad_matches, make_rng, numeric_grad

# (T, N, D, H, with states, with biases, with dcs). TILE_M = TILE_N = 64, TILE_K = 8
# (kernels/cuda/launch.py): G*H = 68 or 51 columns make a second, partial column tile.
CASES = [
    (3, 2, 4, 5, True, True, True),
    (2, 3, 9, 2, False, True, False),  # zero initial states; K = D = 9: a partial K tile
    (1, 1, 1, 1, True, False, False),  # the smallest cell, no bias
    (2, 1, 3, 17, True, True, True),
]
IDS = [f"T{c[0]}-N{c[1]}-D{c[2]}-H{c[3]}" + ("" if c[4] else "-no_state") + ("" if c[5] else "-no_bias")
       + ("-dcs" if c[6] else "") for c in CASES]
GATES = {"lstm": 4, "gru": 3}


def _data(cell, case, dtype, seed=0):
    T, N, D, H, with_state, with_bias, _ = case
    rng = make_rng(seed)
    u = lambda *shape: rng.uniform(-1, 1, shape).astype(dtype)  # noqa: E731
    G = GATES[cell] * H
    # Weights scaled by 1/sqrt(fan-in) keep the pre-activations O(1), away from saturation.
    a = dict(input=u(T, N, D), hx=u(N, H) if with_state else None)
    if cell == "lstm":
        a["cx"] = u(N, H) if with_state else None
    a.update(Wx=u(D, G) / np.sqrt(D).astype(dtype), Wh=u(H, G) / np.sqrt(H).astype(dtype))
    if cell == "lstm":
        a["bias"] = u(G) if with_bias else None
    else:
        a.update(bias_ih=u(G) if with_bias else None, bias_hh=u(G) if with_bias else None)
    return a


def _f64(arrays):
    return {k: None if v is None else v.astype(np.float64) for k, v in arrays.items()}


def _terms(case, gates):
    T, N, D, H = case[:4]
    # A state sums D + H products per step (plus a few operations per gate) and carries the
    # previous step's rounding; the gradients sum G*H products per step, the weight gradients
    # over T * N rows of products whose factors carry that error.
    return T * (D + H + 4), T * (D + H + 4 + gates * H), T * N * (D + H + 4 + gates * H)


def _backward_args(cell, a, outs, douts):
    if cell == "lstm":
        return dict(grad_output=douts[0], grad_cell=douts[1], **a, output=outs[0], cell=outs[1])
    return dict(grad_output=douts[0], **a, output=outs[0])


# float32 on the first two cases only: the kernels are the same, and each case costs seconds.
DTYPE_CASES = [(c, np.float64, i) for i, c in zip(IDS, CASES)] + [(c, np.float32, i) for i, c in zip(IDS, CASES[:2])]


@pytest.mark.parametrize("case, dtype, name", DTYPE_CASES, ids=[f"{i}-{np.dtype(d).name}" for _, d, i in DTYPE_CASES])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_and_backward(cell, case, dtype, name):
    a = _data(cell, case, dtype)
    outs = getattr(fl, cell)(*a.values(), backend="cuda")
    outs = outs if cell == "lstm" else (outs,)
    expected = getattr(ref, cell)(*_f64(a).values())
    expected = expected if cell == "lstm" else (expected,)
    state_terms, grad_terms, weight_terms = _terms(case, GATES[cell])
    for got, want in zip(outs, expected):
        assert got.dtype == dtype
        assert_close(got, want, dtype, terms=state_terms)
    rng = make_rng(1)
    douts = [rng.uniform(-1, 1, o.shape).astype(dtype) for o in outs]
    if cell == "lstm" and not case[6]:
        douts[1] = None
    args = _backward_args(cell, a, outs, douts)
    grads = getattr(fl, cell + "_backward")(*args.values(), backend="cuda")
    want = getattr(ref, cell + "_backward")(*_f64(args).values())
    names = ["grad_input", "grad_hx", "grad_cx"][: 3 if cell == "lstm" else 2] + ["grad_Wx", "grad_Wh"] + (
        ["grad_bias"] if cell == "lstm" else ["grad_bias_ih", "grad_bias_hh"])
    for gname, g, w in zip(names, grads, want):
        assert g.dtype == dtype
        terms = weight_terms if gname.startswith(("grad_W", "grad_b")) else grad_terms
        assert_close(g, w, dtype, terms=terms, err_msg=gname)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backward_matches_finite_differences(cell):
    a = _data(cell, CASES[0], np.float64)
    outs = getattr(ref, cell)(**a)
    outs = outs if cell == "lstm" else (outs,)
    rng = make_rng(2)
    douts = [rng.uniform(-1, 1, o.shape) for o in outs]
    grads = getattr(fl, cell + "_backward")(*_backward_args(cell, a, outs, douts).values(), backend="cuda")

    def weighted(**kw):
        r = getattr(ref, cell)(**kw)
        return np.stack(r) if cell == "lstm" else r

    dy = np.stack(douts) if cell == "lstm" else douts[0]
    for name, analytic in zip([k for k in a], grads):
        assert_grad_matches(analytic, numeric_grad(weighted, dict(a), name, dy), err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_steps_on_cuda(dtype):
    a = _data("lstm", (1, 3, 4, 5, True, True, True), dtype)
    x = a["input"][0]
    h, c = fl.lstm_step(x, a["hx"], a["cx"], a["Wx"], a["Wh"], a["bias"], backend="cuda")
    rh, rc = ref.lstm_step(**_f64(dict(input=x, hx=a["hx"], cx=a["cx"], Wx=a["Wx"], Wh=a["Wh"], bias=a["bias"])))
    assert_close(h, rh, dtype, terms=20)
    assert_close(c, rc, dtype, terms=20)
    g = _data("gru", (1, 3, 4, 5, True, True, False), dtype)
    x = g["input"][0]
    h = fl.gru_step(x, g["hx"], g["Wx"], g["Wh"], g["bias_ih"], g["bias_hh"], backend="cuda")
    want = ref.gru_step(*_f64(dict(input=x, hx=g["hx"], Wx=g["Wx"], Wh=g["Wh"], bias_ih=g["bias_ih"],
                                   bias_hh=g["bias_hh"])).values())
    assert_close(h, want, dtype, terms=20)
    dh = np.ones_like(h)
    grads = fl.gru_step_backward(dh, x, g["hx"], g["Wx"], g["Wh"], g["bias_ih"], g["bias_hh"], h, backend="cuda")
    expected = ref.gru_step_backward(*_f64(dict(grad_output=dh, input=x, hx=g["hx"], Wx=g["Wx"], Wh=g["Wh"],
                                                bias_ih=g["bias_ih"], bias_hh=g["bias_hh"], output=h)).values())
    for got, w in zip(grads, expected):
        assert_close(got, w, dtype, terms=60)


def test_device_arrays_in_place():
    from numba import cuda

    a = _data("gru", CASES[0], np.float64)
    dev = {k: cuda.to_device(v) for k, v in a.items()}
    hs = fl.gru(*dev.values(), backend="cuda")
    assert isinstance(hs, type(dev["input"]))
    assert_close(hs.copy_to_host(), ref.gru(**a), np.float64, terms=_terms(CASES[0], 3)[0])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_workspace_keeps_no_gates_and_the_backward_recomputes(cell):
    """return_workspace=True on cuda: the kernels keep no gates, so the workspace holds none and
    the backward given it recomputes them, as without one (the same results, bit for bit)."""
    a = _data(cell, CASES[0], np.float64)
    outs = getattr(fl, cell)(**a, return_workspace=True, backend="cuda")
    *outs, ws = outs if isinstance(outs, tuple) else (outs,)
    assert ws.cell == cell and ws.nbytes == 0
    douts = [np.ones_like(o) for o in outs]
    args = _backward_args(cell, a, outs, douts)
    backward = getattr(fl, f"{cell}_backward")
    for got, want in zip(backward(**args, workspace=ws, backend="cuda"), backward(**args, backend="cuda")):
        np.testing.assert_array_equal(got, want)
