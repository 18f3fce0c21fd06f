"""rnn_step and rnn (forward and backward through time) on the "cpu" backend against the NumPy
reference.

Both nonlinearities, tanh and relu, run on the cpu kernel.

Tolerances. Every test draws Wh with spectral norm RHO = 0.9 (and tanh', relu' <= 1), so the recurrence
is a contraction: a rounding error made at one step shrinks by at least RHO per later step, and
the error of any state or gradient is at most 1 / (1 - RHO) = 10 times the error one step makes.
One step rounds a sum of ``terms`` products (D + H + 1 for a state, H for dx and dh0, T*N for the
weight gradients summed over all steps), which is what ``assert_close`` bounds; float32 results
are compared with the reference run in float64 on the same (float32-representable) data, so the
bound covers the kernel's own float32 arithmetic, including its float32 tanh (a few ulp).
"""

import numpy as np
import pytest
from _helpers import assert_close, assert_grad_matches, make_rng, numeric_grad
from hypothesis import given
from hypothesis import strategies as st

import fastlayers as fl
from fastlayers import reference as ref

DTYPES = (np.float32, np.float64)
NONLINEARITIES = ("tanh", "relu")
RHO = 0.9
AMPLIFICATION = 1 / (1 - RHO)
GRAD_NAMES = ("input", "hx", "Wx", "Wh", "bias")


def rnn_arrays(rng, T, N, D, H, dtype, h0=True, b=True):
    """O(1) inputs; Wx scaled by 1/sqrt(D) as at initialisation, Wh scaled to spectral norm RHO."""
    Wh = rng.standard_normal((H, H))
    Wh *= RHO / max(np.linalg.norm(Wh, 2), 1e-12)
    arrays = dict(
        input=rng.standard_normal((T, N, D)),
        hx=rng.standard_normal((N, H)) if h0 else None,
        Wx=rng.standard_normal((D, H)) / np.sqrt(max(D, 1)),
        Wh=Wh,
        bias=rng.standard_normal(H) if b else None,
    )
    return {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}


def as64(arrays):
    return {k: None if v is None else v.astype(np.float64) for k, v in arrays.items()}


def cpu_rnn(input, hx, Wx, Wh, bias, **kw):
    return fl.rnn(input, hx, Wx, Wh, bias, backend="cpu", **kw)


def cpu_rnn_backward(grad_output, input, hx, Wx, Wh, output, **kw):
    return fl.rnn_backward(grad_output, input, hx, Wx, Wh, output, backend="cpu", **kw)


def assert_state_close(actual, expected, dtype, D, H):
    assert actual.dtype == dtype
    assert_close(actual, expected, dtype, terms=D + H + 1, scale=AMPLIFICATION)


def assert_grads_close(grads, expected, dtype, T, N, D, H, err_msg=""):
    """grads and expected are (dx, dh0, dWx, dWh, db); gradients of O(1) losses through a
    contraction are at most AMPLIFICATION times dhs, and a weight gradient sums T*N of them."""
    terms = dict(input=H, hx=H, Wx=T * N, Wh=T * N, bias=T * N)
    magnitude = dict(input=1, hx=1, Wx=T * N, Wh=T * N, bias=T * N)
    for name, actual, want in zip(GRAD_NAMES, grads, expected):
        assert actual.dtype == dtype, name
        assert_close(actual, want, dtype, terms=terms[name], scale=AMPLIFICATION * np.sqrt(magnitude[name]),
                     err_msg=f"d{name} {err_msg}")


def check_against_reference(T, N, D, H, dtype, h0=True, b=True, seed=0, nonlinearity="tanh"):
    rng = make_rng(seed)
    a = rnn_arrays(rng, T, N, D, H, dtype, h0, b)
    a64 = as64(a)
    hs = cpu_rnn(**a, nonlinearity=nonlinearity)
    hs_ref = ref.rnn(**a64, nonlinearity=nonlinearity)
    assert_state_close(hs, hs_ref, dtype, D, H)
    dhs = rng.standard_normal(hs.shape).astype(dtype)
    # The backward gets the reference's states (rounded to dtype) so it is tested on its own.
    grads = cpu_rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs_ref.astype(dtype),
                             nonlinearity=nonlinearity)
    expected = ref.rnn_backward(dhs.astype(np.float64), a64["input"], a64["hx"], a64["Wx"], a64["Wh"],
                                hs_ref.astype(dtype).astype(np.float64), nonlinearity)
    assert_grads_close(grads, expected, dtype, T, N, D, H,
                       err_msg=f"T={T} N={N} D={D} H={H} h0={h0} b={b} {nonlinearity}")


# ---------------------------------------------------------------------------- equal to the reference


@given(T=st.integers(1, 20), N=st.integers(1, 8), D=st.integers(1, 16), H=st.integers(1, 16),
       dtype=st.sampled_from(DTYPES), h0=st.booleans(), b=st.booleans(), seed=st.integers(0, 2**16),
       nonlinearity=st.sampled_from(NONLINEARITIES))
def test_rnn_matches_reference_small_shapes(T, N, D, H, dtype, h0, b, seed, nonlinearity):
    check_against_reference(T, N, D, H, dtype, h0, b, seed, nonlinearity)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("T, N, D, H", [(7, 5, 9, 17), (4, 3, 20, 33), (3, 9, 5, 70), (2, 1, 1, 129)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_matches_reference_across_column_blocks(T, N, D, H, dtype, threads, nonlinearity, split_work):
    """Uneven thread counts and H above one 16-column block: the batch, the T*N rows and the
    weight gradients' columns are split among threads in blocks of unequal (or zero) size."""
    with fl.threads(threads):
        check_against_reference(T, N, D, H, dtype, seed=threads, nonlinearity=nonlinearity)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T, N, D, H", [(5, 8, 300, 272), (3, 16, 600, 200)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_matches_reference_in_gemm_chunks(T, N, D, H, dtype, threads, nonlinearity):
    """Sizes where the kernels cut the products into OpenBLAS small-matrix pieces: several
    column chunks per step and several row panels of the input projection, or (D = 600) the
    fallback to one packed GEMM."""
    with fl.threads(threads):
        check_against_reference(T, N, D, H, dtype, seed=threads, nonlinearity=nonlinearity)


def _run_cpu(a, threads, nonlinearity, dhs, hs_in=None):
    """The forward's states, and the gradients of the backward of ``hs_in`` (default: those)."""
    with fl.threads(threads):
        hs = cpu_rnn(**a, nonlinearity=nonlinearity)
        hs_in = hs if hs_in is None else hs_in
        grads = cpu_rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs_in, nonlinearity=nonlinearity)
    return hs, grads


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("pack", [None, "avx512", "avx2"], ids=["openblas", "packed-avx512", "packed-avx2"])
@pytest.mark.parametrize("T, N, D, H", [(1, 1, 1, 1), (1, 5, 7, 33), (4, 1, 9, 40), (3, 13, 20, 70), (2, 7, 3, 129),
                                        (5, 26, 11, 96), (2, 4, 40, 16)])
def test_float32_on_every_product_path(T, N, D, H, pack, nonlinearity, monkeypatch):
    """float32 multiplies weights packed once per call (kernels/cpu/packed_gemm.h) in the blocking
    of the C helpers' vector width (backends/cpu/_gated.PACKED_BLOCKING), or OpenBLAS without: all
    three are tested whatever this machine picks (either blocking is correct on any CPU), each
    thread packing its share of the panels (some threads a partial panel, several or none).
    Shapes: H off the panels and their 16-column halves, T = 1, N = 1, row counts off the 8/4/1
    (AVX-512) and 6/4/2/1 (AVX2) row blocks for 1, 2 and 3 threads. On packed weights
    each element is the same sum whichever thread computes it, so the states (T > 1: a single
    step's forward stays on OpenBLAS) and the backward's carries (dh0) and bias gradient are
    bitwise those of one thread; dx and the weight gradients are OpenBLAS products split by
    blocks, compared with the reference only."""
    from fastlayers.backends.cpu import _gated

    monkeypatch.setattr(_gated, "PACKED_BLOCKING", pack)
    monkeypatch.setattr(fl._dispatch, "GRAIN_SIZE", 1)  # every thread asked for (see split_work)
    for threads in (1, 2, 3):
        with fl.threads(threads):
            check_against_reference(T, N, D, H, np.float32, seed=H + threads, nonlinearity=nonlinearity)
    if pack is None:
        return
    rng = make_rng(T * N)
    a = rnn_arrays(rng, T, N, D, H, np.float32)
    dhs = rng.standard_normal((T, N, H)).astype(np.float32)
    hs, grads = _run_cpu(a, 1, nonlinearity, dhs)
    for threads in (2, 3):
        hs_t, grads_t = _run_cpu(a, threads, nonlinearity, dhs, hs)
        if T > 1:
            np.testing.assert_array_equal(hs_t, hs, err_msg=f"{threads} threads")
        np.testing.assert_array_equal(grads_t[1], grads[1], err_msg=f"dhx, {threads} threads")
        np.testing.assert_array_equal(grads_t[4], grads[4], err_msg=f"dbias, {threads} threads")


def test_kernels_refuse_buffers_that_do_not_fit():
    """The compiled kernels check the packed buffers and the backward's workspace for the other
    threads' partial weight gradients before writing to them."""
    from fastlayers._cpu import rnn as kernels

    T, N, D, H = 2, 3, 5, 40
    f32 = np.float32
    x, h0, Wx, Wh = np.zeros((T * N, D), f32), np.zeros((N, H), f32), np.zeros((D, H), f32), np.zeros((H, H), f32)
    b = None
    hs = np.zeros((T * N, H), f32)
    size = -(-H // kernels.PANEL) * kernels.PANEL
    px, ph = np.zeros(size * D, f32), np.zeros(size * H, f32)
    kernels.rnn_forward(x, h0, Wx, Wh, b, hs, N, 1, False, px, ph)
    with pytest.raises(ValueError, match="elements"):
        kernels.rnn_forward(x, h0, Wx, Wh, b, hs, N, 1, False, px, ph[:-1])
    with pytest.raises(ValueError, match="together"):
        kernels.rnn_forward(x, h0, Wx, Wh, b, hs, N, 1, False, px, None)
    with pytest.raises(ValueError, match="float32"):
        kernels.rnn_forward(*(v.astype(np.float64) for v in (x, h0, Wx, Wh)), b, hs.astype(np.float64), N, 1, False,
                            px, ph)
    dz, dx, dh0, dWx, dWh, db = (np.zeros_like(v) for v in (hs, x, h0, Wx, Wh, np.zeros(H, f32)))
    grads = (hs, dz, dx, dh0, dWx, dWh, db, None, N, 1, False)
    kernels.rnn_backward(hs, x, h0, Wx, Wh, None, *grads, ph)
    with pytest.raises(ValueError, match="elements"):
        kernels.rnn_backward(hs, x, h0, Wx, Wh, None, *grads, px)
    with pytest.raises(ValueError, match="WhT"):
        kernels.rnn_backward(hs, x, h0, Wx, Wh, None, *grads, None)
    # Two threads: the second one's share of the weight gradients, (D + H) * H elements.
    partial = np.zeros((D + H) * H, f32)
    kernels.rnn_backward(hs, x, h0, Wx, Wh, None, hs, dz, dx, dh0, dWx, dWh, db, partial, N, 2, False, ph)
    with pytest.raises(ValueError, match="partial"):
        kernels.rnn_backward(hs, x, h0, Wx, Wh, None, hs, dz, dx, dh0, dWx, dWh, db, partial[:-1], N, 2, False, ph)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_step_matches_reference(dtype):
    rng = make_rng(1)
    for N, D, H in [(1, 1, 1), (3, 4, 5), (8, 16, 40)]:
        a = rnn_arrays(rng, 1, N, D, H, dtype)
        x, h_prev = a["input"][0], a["hx"]
        h = fl.rnn_step(x, h_prev, a["Wx"], a["Wh"], a["bias"], backend="cpu")
        a64 = as64(a)
        h_ref = ref.rnn_step(a64["input"][0], a64["hx"], a64["Wx"], a64["Wh"], a64["bias"])
        assert_state_close(h, h_ref, dtype, D, H)
        dh = rng.standard_normal(h.shape).astype(dtype)
        h_in = h_ref.astype(dtype)
        grads = fl.rnn_step_backward(dh, x, h_prev, a["Wx"], a["Wh"], h_in, backend="cpu")
        expected = ref.rnn_step_backward(dh.astype(np.float64), a64["input"][0], a64["hx"], a64["Wx"], a64["Wh"],
                                         h_in.astype(np.float64))
        assert_grads_close(grads, expected, dtype, 1, N, D, H)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_of_length_one_equals_rnn_step(dtype):
    rng = make_rng(2)
    a = rnn_arrays(rng, 1, 4, 6, 20, dtype)
    x, h_prev = a["input"][0], a["hx"]
    hs = cpu_rnn(**a)
    h = fl.rnn_step(x, h_prev, a["Wx"], a["Wh"], a["bias"], backend="cpu")
    np.testing.assert_array_equal(hs[0], h)
    dh = rng.standard_normal(h.shape).astype(dtype)
    seq = cpu_rnn_backward(dh[None], a["input"], h_prev, a["Wx"], a["Wh"], hs)
    step = fl.rnn_step_backward(dh, x, h_prev, a["Wx"], a["Wh"], h, backend="cpu")
    np.testing.assert_array_equal(seq[0][0], step[0])
    for name, s, t in zip(GRAD_NAMES[1:], seq[1:], step[1:]):
        np.testing.assert_array_equal(s, t, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_sequence_stays_finite_and_matches(dtype):
    """T = 1000, with inputs large enough that many units saturate (tanh near +-1)."""
    T, N, D, H = 1000, 3, 8, 24
    rng = make_rng(3)
    a = rnn_arrays(rng, T, N, D, H, dtype)
    a["input"] *= 3
    a64 = as64(a)
    hs = cpu_rnn(**a)
    assert np.isfinite(hs).all()
    hs_ref = ref.rnn(**a64)
    assert_state_close(hs, hs_ref, dtype, D, H)
    assert (np.abs(hs) > 0.99).mean() > 0.05  # the saturated regime is really exercised
    dhs = rng.standard_normal(hs.shape).astype(dtype)
    grads = cpu_rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs_ref.astype(dtype))
    assert all(np.isfinite(g).all() for g in grads)
    expected = ref.rnn_backward(dhs.astype(np.float64), a64["input"], a64["hx"], a64["Wx"], a64["Wh"],
                                hs_ref.astype(dtype).astype(np.float64))
    assert_grads_close(grads, expected, dtype, T, N, D, H)


def test_nan_propagates():
    rng = make_rng(4)
    a = rnn_arrays(rng, 3, 2, 3, 20, np.float32)
    a["input"][1, 0, 0] = np.nan
    hs = cpu_rnn(**a)
    assert np.isfinite(hs[0]).all() and np.isfinite(hs[1:, 1]).all()
    assert np.isnan(hs[1:, 0]).all()


@pytest.mark.parametrize("shape", [(0, 2, 3, 4), (2, 0, 3, 4), (2, 3, 0, 4), (2, 3, 4, 0)])
def test_empty_shapes(shape):
    T, N, D, H = shape
    a = rnn_arrays(make_rng(5), T, N, D, H, np.float64)
    hs = cpu_rnn(**a)
    np.testing.assert_array_equal(hs, ref.rnn(**a))
    dhs = np.ones_like(hs)
    for got, want in zip(cpu_rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs),
                         ref.rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs)):
        np.testing.assert_array_equal(got, want)


def test_results_are_reproducible(split_work):
    """dWx, dWh, db are summed in a fixed order: repeated calls agree bit for bit."""
    rng = make_rng(6)
    a = rnn_arrays(rng, 30, 8, 16, 48, np.float32)
    hs = cpu_rnn(**a)
    dhs = rng.standard_normal(hs.shape).astype(np.float32)
    first = cpu_rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs)
    for _ in range(3):
        np.testing.assert_array_equal(cpu_rnn(**a), hs)
        for g, f in zip(cpu_rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs), first):
            np.testing.assert_array_equal(g, f)


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_rnn_backward_matches_finite_differences(nonlinearity, split_work):
    rng = make_rng(7)
    a = rnn_arrays(rng, 4, 2, 3, 18, np.float64)  # H > 16: two column blocks with 2 threads

    def forward(**kw):
        return cpu_rnn(**kw, nonlinearity=nonlinearity)

    hs = forward(**a)
    # relu: no pre-activation near its kink, where a difference step would cross it
    pre = a["input"] @ a["Wx"] + np.concatenate([a["hx"][None], hs[:-1]]) @ a["Wh"] + a["bias"]
    assert np.abs(pre).min() > 1e-4
    dhs = rng.standard_normal(hs.shape)
    grads = cpu_rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs, nonlinearity=nonlinearity)
    for name, analytic in zip(GRAD_NAMES, grads):
        assert_grad_matches(analytic, numeric_grad(forward, a, name, dhs), err_msg=f"d{name}")


def test_rnn_step_backward_matches_finite_differences():
    rng = make_rng(8)
    a = rnn_arrays(rng, 1, 3, 4, 5, np.float64)
    arrays = dict(input=a["input"][0], hx=a["hx"], Wx=a["Wx"], Wh=a["Wh"], bias=a["bias"])

    def step(**kw):
        return fl.rnn_step(**kw, backend="cpu")

    h = step(**arrays)
    dh = rng.standard_normal(h.shape)
    grads = fl.rnn_step_backward(dh, arrays["input"], arrays["hx"], a["Wx"], a["Wh"], h, backend="cpu")
    for name, analytic in zip(("input", "hx", "Wx", "Wh", "bias"), grads):
        assert_grad_matches(analytic, numeric_grad(step, arrays, name, dh), err_msg=f"d{name}")


# ---------------------------------------------------------------------------- layouts and buffers


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(dtype, split_work):
    rng = make_rng(9)
    T, N, D, H = 5, 3, 4, 20
    a = rnn_arrays(rng, T, N, D, H, dtype)
    strided = dict(
        input=np.repeat(a["input"], 2, axis=2)[:, :, ::2],
        hx=np.asfortranarray(a["hx"]),
        Wx=np.asfortranarray(a["Wx"]),
        Wh=np.ascontiguousarray(a["Wh"].T).T,
        bias=np.repeat(a["bias"], 3)[::3],
    )
    assert not any(v.flags.c_contiguous for v in strided.values())
    hs = cpu_rnn(**a)
    np.testing.assert_array_equal(cpu_rnn(**strided), hs)
    dhs = rng.standard_normal((H, N, T)).astype(dtype).T  # (T, N, H), Fortran order
    hs_f = np.asfortranarray(hs)
    grads = cpu_rnn_backward(dhs, strided["input"], strided["hx"], strided["Wx"], strided["Wh"], hs_f)
    for g, want in zip(grads, cpu_rnn_backward(np.ascontiguousarray(dhs), a["input"], a["hx"], a["Wx"], a["Wh"], hs)):
        np.testing.assert_array_equal(g, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_buffers(dtype):
    rng = make_rng(10)
    T, N, D, H = 6, 4, 5, 24
    a = rnn_arrays(rng, T, N, D, H, dtype)
    hs = cpu_rnn(**a)
    out = np.full((T, N, H), np.nan, dtype)
    assert cpu_rnn(**a, out=out) is out
    np.testing.assert_array_equal(out, hs)

    dhs = rng.standard_normal(hs.shape).astype(dtype)
    grads = cpu_rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs)
    shapes = ((T, N, D), (N, H), (D, H), (H, H), (H,))
    outs = tuple(np.full(s, np.nan, dtype) for s in shapes)
    got = cpu_rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs, out=outs)
    for o, g, want in zip(outs, got, grads):
        assert g is o
        np.testing.assert_array_equal(g, want)
    partial = (None, outs[1], None, outs[3], None)  # None entries are allocated
    for g, want in zip(cpu_rnn_backward(dhs, a["input"], a["hx"], a["Wx"], a["Wh"], hs, out=partial), grads):
        np.testing.assert_array_equal(g, want)

    x, h_prev = a["input"][0], a["hx"]
    h_out = np.full((N, H), np.nan, dtype)
    assert fl.rnn_step(x, h_prev, a["Wx"], a["Wh"], a["bias"], backend="cpu", out=h_out) is h_out
    np.testing.assert_array_equal(h_out, fl.rnn_step(x, h_prev, a["Wx"], a["Wh"], a["bias"], backend="cpu"))
    step_outs = ((N, D), (N, H), (D, H), (H, H), (H,))
    step_outs = tuple(np.full(s, np.nan, dtype) for s in step_outs)
    got = fl.rnn_step_backward(dhs[0], x, h_prev, a["Wx"], a["Wh"], h_out, backend="cpu", out=step_outs)
    want = fl.rnn_step_backward(dhs[0], x, h_prev, a["Wx"], a["Wh"], h_out, backend="cpu")
    for o, g, w in zip(step_outs, got, want):
        assert g is o
        np.testing.assert_array_equal(g, w)


def test_out_sharing_memory_with_an_input_is_refused():
    a = rnn_arrays(make_rng(11), 3, 2, 4, 4, np.float64)
    with pytest.raises(ValueError, match="out"):
        cpu_rnn(a["input"], a["hx"], a["Wx"], a["Wh"], a["bias"], out=a["input"])
    hs = cpu_rnn(**a)
    outs = (None, a["hx"], None, None, None)
    with pytest.raises(ValueError, match=r"out\[1\]"):
        cpu_rnn_backward(np.ones_like(hs), a["input"], a["hx"], a["Wx"], a["Wh"], hs, out=outs)


def test_cpu_is_the_default_backend_for_numpy_inputs():
    from fastlayers import _dispatch
    from fastlayers.ops import RNN

    a = rnn_arrays(make_rng(12), 2, 2, 3, 4, np.float32)
    hs = cpu_rnn(**a)
    problems = (RNN.forward(*a.values(), "tanh", step=False),
                RNN.backward(hs, a["input"], a["hx"], a["Wx"], a["Wh"], hs, "tanh", step=False))
    for problem in problems:
        assert _dispatch.select_kernel(RNN, problem, None).backend == "cpu"
    np.testing.assert_array_equal(fl.rnn(**a), hs)


def test_relu_runs_on_the_cpu_kernel():
    """The automatic choice takes the cpu kernel for relu as for tanh."""
    from fastlayers import _dispatch
    from fastlayers.ops import RNN

    a = rnn_arrays(make_rng(13), 3, 4, 3, 20, np.float64)
    hs = cpu_rnn(**a, nonlinearity="relu")
    problems = (RNN.forward(*a.values(), "relu", step=False),
                RNN.backward(hs, a["input"], a["hx"], a["Wx"], a["Wh"], hs, "relu", step=False))
    for problem in problems:
        assert _dispatch.select_kernel(RNN, problem, None).backend == "cpu"
    assert (hs == 0).any() and (hs > 0).any()  # both sides of the kink are exercised
    np.testing.assert_array_equal(fl.rnn(**a, nonlinearity="relu"), hs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_propagates_nan_and_clamps_negative_infinity(dtype):
    """As the reference (np.maximum): NaN stays NaN, -inf becomes 0 (and its gradient is 0)."""
    a = rnn_arrays(make_rng(14), 1, 2, 3, 20, dtype, h0=False, b=False)
    a["input"][0, 0, 0], a["input"][0, 1, 0] = np.nan, -np.inf
    a["Wx"][0] = np.abs(a["Wx"][0]) + 0.1  # -inf reaches every unit of sequence 1 as -inf
    hs = cpu_rnn(**a, nonlinearity="relu")
    assert np.isnan(hs[0, 0]).all()
    np.testing.assert_array_equal(hs[0, 1], np.zeros(20, dtype))
    with np.errstate(invalid="ignore"):  # NumPy warns of the NaN and inf it is given
        np.testing.assert_array_equal(hs, ref.rnn(**a, nonlinearity="relu"))
    dhs = np.ones_like(hs)
    grads = cpu_rnn_backward(dhs, a["input"], None, a["Wx"], a["Wh"], hs, nonlinearity="relu")
    np.testing.assert_array_equal(grads[0][0, 1], np.zeros(3, dtype))


# ---------------------------------------------------------------------------- bad input

X = np.zeros((5, 2, 3))
H0 = np.zeros((2, 4))
WX = np.zeros((3, 4))
WH = np.zeros((4, 4))
HS = np.zeros((5, 2, 4))


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: cpu_rnn(X, H0, np.zeros((2, 4)), WH, None), ValueError, ["Wx", "(3, 4)", "(2, 4)"]),
        (lambda: cpu_rnn(X, H0, WX, np.zeros((4, 5)), None), ValueError, ["Wh", "square", "(4, 5)"]),
        (lambda: cpu_rnn(X, np.zeros((3, 4)), WX, WH, None), ValueError, ["hx", "(2, 4)", "(3, 4)"]),
        (lambda: cpu_rnn(X, H0, WX, WH, np.zeros(5)), ValueError, ["bias", "(4,)", "(5,)"]),
        (lambda: cpu_rnn(X[0, 0], H0, WX, WH, None), ValueError, ["input", "3-D", "1-D"]),
        (lambda: cpu_rnn(X[:, 0], H0, WX, WH, None), ValueError, ["hx", "1-D", "2-D"]),  # unbatched input
        (lambda: cpu_rnn(X, H0.astype(np.float32), WX, WH, None), TypeError, ["hx", "float32", "float64"]),
        (lambda: cpu_rnn(X.astype(np.int64), H0, WX, WH, None), TypeError, ["input", "int64"]),
        (lambda: cpu_rnn(X, H0, WX, WH, None, out=np.zeros((5, 2, 3))), ValueError, ["out", "(5, 2, 4)"]),
        (lambda: cpu_rnn(X, H0, WX, WH, None, out=np.zeros((5, 2, 4), np.float32)), TypeError, ["out", "float64"]),
        (lambda: cpu_rnn(X, H0, WX, WH, None, out=np.zeros((5, 2, 8))[:, :, ::2]), ValueError, ["out", "contiguous"]),
        (lambda: cpu_rnn_backward(np.zeros((5, 2, 3)), X, H0, WX, WH, HS), ValueError, ["grad_output", "(5, 2, 4)"]),
        (lambda: cpu_rnn_backward(HS, X, H0, WX, WH, HS[:4]), ValueError, ["output", "(5, 2, 4)", "(4, 2, 4)"]),
        (lambda: cpu_rnn_backward(HS, X, H0, WX, WH, HS, out=(None,) * 4), TypeError, ["out", "5"]),
        (lambda: fl.rnn_step(X[0], None, WX, WH, backend="cpu"), TypeError, ["hx"]),
        (lambda: fl.rnn_step_backward(H0[:1], X[0], H0, WX, WH, H0, backend="cpu"), ValueError,
         ["grad_output", "(2, 4)"]),
    ],
)
def test_bad_input_names_the_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
