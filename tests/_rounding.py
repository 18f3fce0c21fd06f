"""Rounding budgets: how far each element of a correct float32 result may be from the exact one.

A float32 kernel's result differs from the float64 reference only by rounding, and how much depends
on the output: a conv2d forward sums C/groups*KH*KW products, its dw N*OH*OW; a late RNN state
carries the rounding of every earlier step. So each output element gets its own budget, built from
the number n of terms summed into it and their magnitudes S = sum |terms| (the reference run on
absolute values):

* a sum of n products, in any order (blocked, tiled, split or fused), is off by at most
  gamma_n * S, gamma_n ~ n*u with the unit roundoff u = eps/2 (Higham, Accuracy and Stability of
  Numerical Algorithms, 2nd ed., section 3.1): the worst case, reached only if every rounding
  error has the same sign. Rounding errors that are independent and of mean zero give at most
  lambda * sqrt(n) * u * S with probability at least 1 - 2n*exp(-lambda^2 / 2) (Higham and Mary,
  "A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41, 2019).
  The budget is the smaller of 2 * n * u * S (twice the worst case, which also pays for rounding
  the result to float32) and lambda * sqrt(n) * u * S with lambda = 10 (a miss per element below
  n * 1e-21): long sums such as dw's get the second.
* through the RNN recurrence the worst case grows with the product of the steps' |Jacobians|
  (far beyond any real error), so the error carried from step to step is modelled as random-signed
  rounding errors propagate: scaled per step by the root mean square of the Jacobian
  diag(1 - h_t^2) Wh^T (tanh' shrinks them, Wh's columns of norm ~1 keep them), on top of each
  step's own budget.

Arguments are positional, in the functional API's order; inputs are float32 arrays (exact in
float64). Each function returns one budget array per output, shaped like it (max_pool2d's: exact).
"""
from __future__ import annotations

import math

import numpy as np

from fastlayers import reference as ref
from fastlayers.benchmark.workloads import call_args, make_inputs, op_name, workload

EPS32 = float(np.finfo(np.float32).eps)
TANH_ULPS = 4  # CUDA's tanhf is within 2 ulp; NumPy's and libm's within 1
LAMBDA = 10


def sum_budget(n, magnitude):
    """Budget of a sum of ``n`` products whose absolute values add up to ``magnitude``."""
    return min(n, LAMBDA / 2 * np.sqrt(n)) * EPS32 * magnitude


def _abs64(a):
    return None if a is None else np.abs(np.asarray(a, dtype=np.float64))


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def exact(a):
    """A float32 argument in float64 (exactly), anything else as it is: the reference's inputs."""
    return a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32 else a


def conv2d_budget(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """(y,): each output sums C/groups*KH*KW products and the bias."""
    taps = w.shape[1] * w.shape[2] * w.shape[3]
    magnitude = ref.conv2d(_abs64(x), _abs64(w), _abs64(b), stride, padding, dilation, groups)
    return (sum_budget(taps + 1, magnitude),)


def conv2d_backward_budget(dy, x, w, stride=1, padding=0, dilation=1, groups=1):
    """(dx, dw, db): dx sums at most F/groups*KH*KW products, dw and db N*OH*OW."""
    F, _, KH, KW = w.shape
    N, _, OH, OW = dy.shape
    terms = ((F // groups) * KH * KW, N * OH * OW, N * OH * OW)
    magnitudes = ref.conv2d_backward(_abs64(dy), _abs64(x), _abs64(w), stride, padding, dilation, groups)
    return tuple(sum_budget(n, m) for n, m in zip(terms, magnitudes))


def max_pool2d_budget(x, return_indices=False):
    """(y,) or (y, indices): a selection, exact."""
    return (np.zeros(()),) * (2 if return_indices else 1)


def max_pool2d_backward_budget(dy, indices, input_shape, overlap):
    """(dx,): a cell sums the gradients of the ``overlap`` windows at most that cover it."""
    return (sum_budget(overlap, ref.max_pool2d_backward(_abs64(dy), indices, input_shape)),)


def _carried(tanh_slope, norms, previous_budget):
    """The error a step receives from the one before: that step's largest budget, scaled by the
    root-mean-square gain on random-signed errors of diag(tanh_slope) M (``norms``: the norms of
    M's rows or columns that each output element's error is summed over)."""
    return float(np.sqrt(np.mean((tanh_slope * norms) ** 2))) * previous_budget.max(initial=0.0)


def rnn_budget(x_seq, h0, Wx, Wh, b=None):
    """(hs,): each state sums D + H products and the bias, then tanh rounds; plus what earlier
    steps carried over."""
    T, N, D = x_seq.shape
    H = Wx.shape[1]
    hs = ref.rnn(_f64(x_seq), _f64(h0), _f64(Wx), _f64(Wh), _f64(b))
    aWx, aWh = _abs64(Wx), _abs64(Wh)
    ab = np.zeros(H) if b is None else _abs64(b)
    wh_column_norms = np.sqrt((_f64(Wh) ** 2).sum(axis=0))
    h_prev = np.zeros((N, H)) if h0 is None else _abs64(h0)
    budget = np.empty((T, N, H))
    for t in range(T):
        local = sum_budget(D + H + 1, _abs64(x_seq[t]) @ aWx + h_prev @ aWh + ab) + TANH_ULPS * EPS32
        carried = _carried(1 - hs[t] ** 2, wh_column_norms, budget[t - 1]) if t > 0 else 0.0
        budget[t] = local + carried
        h_prev = np.abs(hs[t])
    return (budget,)


def rnn_backward_budget(dhs, x_seq, h0, Wx, Wh, hs):
    """(dx, dh0, dWx, dWh, db). Back through time, dz_t = (dhs_t + dz_{t+1} @ Wh^T) * (1 - h_t^2)
    carries rounding like the forward's states; each output is then one more product of dz (dx,
    dh0: H terms each) or a sum over every step and sequence (dWx, dWh, db: T*N terms each), whose
    budget adds the carried errors of dz through the absolute weights."""
    T, N, D = x_seq.shape
    H = Wx.shape[1]
    dhs, x_seq, Wx, Wh, hs = (_f64(a) for a in (dhs, x_seq, Wx, Wh, hs))
    h0 = np.zeros((N, H)) if h0 is None else _f64(h0)
    aWx, aWh = np.abs(Wx), np.abs(Wh)
    wh_row_norms = np.sqrt((Wh ** 2).sum(axis=1))
    dx_budget = np.empty((T, N, D))
    dWx_budget, dWh_budget, db_budget = np.zeros((D, H)), np.zeros((H, H)), np.zeros(H)
    dz_next = np.zeros((N, H))
    dz_next_budget = np.zeros((N, H))
    for t in range(T - 1, -1, -1):
        back = dz_next @ Wh.T
        back_local = sum_budget(H, np.abs(dz_next) @ aWh.T)
        slope = 1 - hs[t] ** 2
        dz = (dhs[t] + back) * slope
        # the sum dhs + back and the factor 1 - h*h each round once; the factor's rounding is
        # absolute (up to 2u when h is near +-1), hence |dhs| + |back| rather than |dz|
        local = slope * back_local + 4 * EPS32 * (np.abs(dhs[t]) + np.abs(back))
        dz_budget = local + _carried(slope, wh_row_norms, dz_next_budget)
        adz = np.abs(dz)
        h_prev = np.abs(hs[t - 1] if t > 0 else h0)
        dx_budget[t] = sum_budget(H, adz @ aWx.T) + dz_budget @ aWx.T
        dWx_budget += sum_budget(T * N, np.abs(x_seq[t]).T @ adz) + np.abs(x_seq[t]).T @ dz_budget
        dWh_budget += sum_budget(T * N, h_prev.T @ adz) + h_prev.T @ dz_budget
        db_budget += sum_budget(T * N, adz.sum(axis=0)) + dz_budget.sum(axis=0)
        dz_next, dz_next_budget = dz, dz_budget
    dh0_budget = sum_budget(H, np.abs(dz_next) @ aWh.T) + dz_next_budget @ aWh.T
    return dx_budget, dh0_budget, dWx_budget, dWh_budget, db_budget


def assert_within_budget(actual, expected, budget, err_msg=""):
    """Every element of ``actual`` within its ``budget`` of the exact ``expected``; the message
    names the worst element, its error and its budget."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{err_msg}: shape {actual.shape} != {expected.shape}"
    error = np.abs(actual.astype(np.float64) - expected)
    budget = np.broadcast_to(budget, error.shape)
    over = ~(error <= budget)  # NaN errors count as over
    if over.any():
        ratio = np.where(over, error / np.maximum(budget, np.finfo(np.float64).tiny), -1.0)
        worst = np.unravel_index(np.nanargmax(np.where(np.isnan(ratio), np.inf, ratio)), error.shape)
        raise AssertionError(
            f"{err_msg}: {int(over.sum())} of {error.size} elements beyond their rounding budget; "
            f"worst at {tuple(int(i) for i in worst)}: got {actual[worst]!r}, exact {expected[worst]!r}, "
            f"error {error[worst]:.3g} > budget {budget[worst]:.3g}")


def _pool_overlap(case):
    """How many windows of a max_pool2d case can cover one cell."""
    g = workload(case.op).geometry(case)
    return math.ceil(g.KH / g.stride_h) * math.ceil(g.KW / g.stride_w)


# The budgets of a benchmark case's call, from the case (what the call does not carry: a pool's
# windows) and the call's positional and keyword arguments; by functional op, one entry per spec
# and direction. The lstm and gru have none yet.
CASE_BUDGETS = {
    "conv2d": lambda case, args, kwargs: conv2d_budget(*args, **kwargs),
    "conv2d_backward": lambda case, args, kwargs: conv2d_backward_budget(*args, **kwargs),
    "max_pool2d": lambda case, args, kwargs: max_pool2d_budget(args[0], kwargs["return_indices"]),
    "max_pool2d_backward": lambda case, args, kwargs: max_pool2d_backward_budget(*args, _pool_overlap(case)),
    "rnn": lambda case, args, kwargs: rnn_budget(*args),
    "rnn_backward": lambda case, args, kwargs: rnn_backward_budget(*args),
}


def case_call(case, direction):
    """``(name, args, kwargs, budgets)`` for a benchmark case (fastlayers.cases.Case): the
    functional op's name, its positional and keyword arguments as the benchmark calls it (float32
    inputs from make_inputs) and the rounding budget of each of its outputs. A KeyError for an op
    without budgets (``CASE_BUDGETS``)."""
    name = op_name(case.op, direction)
    budget = CASE_BUDGETS[name]
    args, kwargs = call_args(case, direction, make_inputs(case, direction, np.float32))
    return name, args, kwargs, budget(case, args, kwargs)
