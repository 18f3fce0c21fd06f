"""rnn_step and rnn on the CUDA backend (Numba simulator) against the NumPy reference."""
import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref
from tests._helpers import assert_close, assert_grad_matches, make_rng, numeric_grad

# (T, N, D, H, with h0, with bias). TILE_M = TILE_N = 64, TILE_K = 8 (kernels/cuda/launch.py).
CASES = [
    (3, 2, 4, 5, True, True),
    (2, 3, 9, 7, False, True),  # zero initial state; K = D = 9: a partial K tile
    (1, 1, 1, 1, True, False),  # the smallest RNN, no bias
    (4, 17, 5, 3, True, True),  # T*N = 68 rows: the input projection has two row tiles
]
IDS = [f"T{c[0]}-N{c[1]}-D{c[2]}-H{c[3]}{'' if c[4] else '-no_h0'}{'' if c[5] else '-no_bias'}" for c in CASES]


def _data(case, dtype, seed=0):
    T, N, D, H, with_h0, with_bias = case
    rng = make_rng(seed)
    u = lambda *shape: rng.uniform(-1, 1, shape).astype(dtype)  # noqa: E731
    # Weights scaled by 1/sqrt(fan-in) keep the pre-activations O(1), away from tanh saturation.
    return dict(
        input=u(T, N, D), hx=u(N, H) if with_h0 else None,
        Wx=u(D, H) / np.sqrt(D).astype(dtype), Wh=u(H, H) / np.sqrt(H).astype(dtype),
        bias=u(H) if with_bias else None,
    )


def _f64(arrays):
    return {k: None if v is None else v.astype(np.float64) for k, v in arrays.items()}


def _terms(case):
    T, N, D, H, _, _ = case
    # A state sums D + H products per step and carries the previous step's rounding; the weight
    # gradients sum over T * N rows of products whose factors carry that error.
    return T * (D + H + 1), T * N * (D + H + 1)


# float32 on the first two cases only: the kernels are the same, and each case costs seconds.
DTYPE_CASES = [(c, np.float64) for c in CASES] + [(c, np.float32) for c in CASES[:2]]


@pytest.mark.parametrize("case, dtype", DTYPE_CASES,
                         ids=[f"{i}-{np.dtype(d).name}" for i, (_, d) in zip(IDS + IDS[:2], DTYPE_CASES)])
def test_rnn_forward_and_backward(case, dtype):
    a = _data(case, dtype)
    hs = fl.rnn(**a, backend="cuda")
    exact = _f64(a)
    rhs = ref.rnn(**exact)
    state_terms, grad_terms = _terms(case)
    assert hs.dtype == dtype
    assert_close(hs, rhs, dtype, terms=state_terms)
    dhs = make_rng(1).uniform(-1, 1, hs.shape).astype(dtype)
    args = dict(grad_output=dhs, input=a["input"], hx=a["hx"], Wx=a["Wx"], Wh=a["Wh"], output=hs)
    grads = fl.rnn_backward(**args, backend="cuda")
    expected = ref.rnn_backward(**_f64(args))
    for name, got, want in zip(("dx", "dh0", "dWx", "dWh", "db"), grads, expected):
        assert got.dtype == dtype
        assert_close(got, want, dtype, terms=grad_terms, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rnn_forward_two_column_tiles(dtype):
    """H = 66: a second, partial column tile in the input-projection and recurrent GEMMs (forward
    only: the backward's 66 x 66 weight gradient and 66 bias reductions cost the simulator ~20 s)."""
    case = (2, 1, 3, 66, True, True)
    a = _data(case, dtype)
    assert_close(fl.rnn(**a, backend="cuda"), ref.rnn(**_f64(a)), dtype, terms=_terms(case)[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rnn_step_forward_and_backward(dtype):
    a = _data((1, 3, 4, 5, True, True), dtype)
    x, h_prev = a["input"][0], a["hx"]
    h = fl.rnn_step(x, h_prev, a["Wx"], a["Wh"], a["bias"], backend="cuda")
    step = dict(input=x, hx=h_prev, Wx=a["Wx"], Wh=a["Wh"], bias=a["bias"])
    assert_close(h, ref.rnn_step(**_f64(step)), dtype, terms=10)
    dh = make_rng(1).uniform(-1, 1, h.shape).astype(dtype)
    args = dict(grad_output=dh, input=x, hx=h_prev, Wx=a["Wx"], Wh=a["Wh"], output=h)
    for got, want in zip(fl.rnn_step_backward(**args, backend="cuda"), ref.rnn_step_backward(**_f64(args))):
        assert_close(got, want, dtype, terms=3 * 10)


def test_rnn_backward_matches_finite_differences():
    a = _data(CASES[0], np.float64)
    hs = ref.rnn(**a)
    dhs = make_rng(1).uniform(-1, 1, hs.shape)
    grads = fl.rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs, backend="cuda")
    for name, analytic in zip(("input", "hx", "Wx", "Wh", "bias"), grads):
        assert_grad_matches(analytic, numeric_grad(ref.rnn, dict(a), name, dhs), err_msg=name)


def test_device_arrays_in_place():
    from numba import cuda

    a = _data(CASES[0], np.float64)
    dev = {k: cuda.to_device(v) for k, v in a.items()}
    hs = fl.rnn(**dev, backend="cuda")
    assert isinstance(hs, type(dev["input"]))
    assert_close(hs.copy_to_host(), ref.rnn(**a), np.float64, terms=_terms(CASES[0])[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_matches_reference(dtype):
    """nonlinearity="relu": the fused epilogues of the forward and the backward, and the seed of
    the last step's gradient."""
    a = _data(CASES[0], dtype)
    hs = fl.rnn(**a, nonlinearity="relu", backend="cuda")
    state_terms, grad_terms = _terms(CASES[0])
    assert_close(hs, ref.rnn(**_f64(a), nonlinearity="relu"), dtype, terms=state_terms)
    dhs = make_rng(1).uniform(-1, 1, hs.shape).astype(dtype)
    args = dict(grad_output=dhs, input=a["input"], hx=a["hx"], Wx=a["Wx"], Wh=a["Wh"], output=hs)
    grads = fl.rnn_backward(**args, nonlinearity="relu", backend="cuda")
    expected = ref.rnn_backward(**_f64(args), nonlinearity="relu")
    for name, got, want in zip(("dx", "dh0", "dWx", "dWh", "db"), grads, expected):
        assert_close(got, want, dtype, terms=grad_terms, err_msg=name)
