"""lstm and gru (steps, sequences, backward through time) on the "cpu" backend against the NumPy
reference.

Tolerances. As in test_rnn.py: Wh (H, G*H) is drawn with spectral norm RHO = 0.9, and every gate
derivative is at most 1 (sigmoid' <= 1/4, tanh' <= 1) while the forget and update gates weigh the
previous state by a factor below 1, so a rounding error made at one step shrinks from step to
step and the error of any state or gradient is at most about 1 / (1 - RHO) = 10 times the error
one step makes. One step rounds a sum of ``terms`` products (D + H + 1 for a pre-activation, then
a few operations per gate; G*H for dx and the carried dh; T*N for the weight gradients summed over
all steps). float32 results are compared with the reference run in float64 on the same
(float32-representable) data, so the bound covers the kernel's own float32 arithmetic, including
its float32 tanh and sigmoid (a few ulp).
"""

import numpy as np
import pytest
from _helpers import assert_close, assert_grad_matches, make_rng, numeric_grad
from hypothesis import given
from hypothesis import strategies as st

import fastlayers as fl
from fastlayers import reference as ref

DTYPES = (np.float32, np.float64)
RHO = 0.9
AMPLIFICATION = 1 / (1 - RHO)


class Lstm:
    gates = 4
    states = ("hx", "cx")
    biases = ("bias",)
    grad_names = ("input", "hx", "cx", "Wx", "Wh", "bias")

    @staticmethod
    def forward(a, backend="cpu", **kw):
        return fl.lstm(a["input"], a["hx"], a["cx"], a["Wx"], a["Wh"], a["bias"], backend=backend, **kw)

    @staticmethod
    def backward(douts, a, outs, backend="cpu", **kw):
        (dhs, dcs), (hs, cs) = douts, outs
        return fl.lstm_backward(dhs, dcs, a["input"], a["hx"], a["cx"], a["Wx"], a["Wh"], a["bias"], hs, cs,
                                backend=backend, **kw)

    @staticmethod
    def reference(a):
        return ref.lstm(**a)

    @staticmethod
    def reference_backward(douts, a, outs):
        return ref.lstm_backward(*douts, a["input"], a["hx"], a["cx"], a["Wx"], a["Wh"], a["bias"], *outs)


class Gru:
    gates = 3
    states = ("hx",)
    biases = ("bias_ih", "bias_hh")
    grad_names = ("input", "hx", "Wx", "Wh", "bias_ih", "bias_hh")

    @staticmethod
    def forward(a, backend="cpu", **kw):
        return (fl.gru(a["input"], a["hx"], a["Wx"], a["Wh"], a["bias_ih"], a["bias_hh"], backend=backend, **kw),)

    @staticmethod
    def backward(douts, a, outs, backend="cpu", **kw):
        return fl.gru_backward(douts[0], a["input"], a["hx"], a["Wx"], a["Wh"], a["bias_ih"], a["bias_hh"], outs[0],
                               backend=backend, **kw)

    @staticmethod
    def reference(a):
        return (ref.gru(**a),)

    @staticmethod
    def reference_backward(douts, a, outs):
        return ref.gru_backward(douts[0], a["input"], a["hx"], a["Wx"], a["Wh"], a["bias_ih"], a["bias_hh"], outs[0])


CELLS = {"lstm": Lstm, "gru": Gru}


def cell_arrays(rng, cell, T, N, D, H, dtype, state=True, bias=True):
    """O(1) inputs; Wx scaled by 1/sqrt(D) as at initialisation, Wh scaled to spectral norm RHO."""
    G = cell.gates
    Wh = rng.standard_normal((H, G * H))
    Wh *= RHO / max(np.linalg.norm(Wh, 2), 1e-12)
    arrays = dict(input=rng.standard_normal((T, N, D)), Wx=rng.standard_normal((D, G * H)) / np.sqrt(max(D, 1)),
                  Wh=Wh)
    arrays.update({s: rng.standard_normal((N, H)) if state else None for s in cell.states})
    arrays.update({b: rng.standard_normal(G * H) if bias else None for b in cell.biases})
    return {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}


def as64(arrays):
    return {k: None if v is None else v.astype(np.float64) for k, v in arrays.items()}


def assert_states_close(actual, expected, dtype, D, H):
    for got, want in zip(actual, expected):
        assert got.dtype == dtype
        assert_close(got, want, dtype, terms=D + H + 1, scale=AMPLIFICATION)


def assert_grads_close(cell, grads, expected, dtype, T, N, D, H, err_msg=""):
    """Gradients of O(1) losses through a contraction are at most AMPLIFICATION times the
    incoming ones, and a weight gradient sums T*N of them."""
    summed = T * N
    for name, got, want in zip(cell.grad_names, grads, expected):
        assert got.dtype == dtype, name
        weight = name.startswith(("W", "b"))
        assert_close(got, want, dtype, terms=summed if weight else cell.gates * H,
                     scale=AMPLIFICATION * np.sqrt(summed if weight else 1), err_msg=f"grad_{name} {err_msg}")


def check_against_reference(cell, T, N, D, H, dtype, state=True, bias=True, seed=0, no_dcs=False):
    rng = make_rng(seed)
    a = cell_arrays(rng, cell, T, N, D, H, dtype, state, bias)
    a64 = as64(a)
    outs = cell.forward(a)
    outs_ref = cell.reference(a64)
    assert_states_close(outs, outs_ref, dtype, D, H)
    douts = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    if no_dcs and cell is Lstm:
        douts[1] = None
    # The backward gets the reference's states (rounded to dtype) so it is tested on its own.
    outs_in = [o.astype(dtype) for o in outs_ref]
    grads = cell.backward(douts, a, outs_in)
    expected = cell.reference_backward([None if d is None else d.astype(np.float64) for d in douts], a64,
                                       [o.astype(np.float64) for o in outs_in])
    assert_grads_close(cell, grads, expected, dtype, T, N, D, H,
                       err_msg=f"T={T} N={N} D={D} H={H} state={state} bias={bias}")


# ---------------------------------------------------------------------------- equal to the reference


@given(cell=st.sampled_from(list(CELLS.values())), T=st.integers(1, 12), N=st.integers(1, 8), D=st.integers(1, 16),
       H=st.integers(1, 16), dtype=st.sampled_from(DTYPES), state=st.booleans(), bias=st.booleans(),
       no_dcs=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_reference_small_shapes(cell, T, N, D, H, dtype, state, bias, no_dcs, seed):
    check_against_reference(cell, T, N, D, H, dtype, state, bias, seed, no_dcs)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("T, N, D, H", [(7, 5, 9, 17), (4, 3, 20, 33), (2, 1, 1, 70)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_matches_reference_across_thread_blocks(cell, T, N, D, H, dtype, threads, split_work):
    """Uneven thread counts: the batch, the T*N rows and the weight gradients' G*H columns are
    split among threads in blocks of unequal (or zero) size."""
    with fl.threads(threads):
        check_against_reference(cell, T, N, D, H, dtype, seed=threads)


@pytest.mark.parametrize("T, N, D, H", [(3, 8, 300, 136), (2, 16, 600, 100), (2, 64, 5, 200)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_matches_reference_in_gemm_chunks(cell, T, N, D, H, dtype):
    """Sizes where the kernels cut the products into OpenBLAS small-matrix pieces: several
    column chunks per step and several row panels of the input projection, or (D = 600) the
    fallback to one packed GEMM; (N = 64, H = 200) the backward's per-step dz @ Wh^T, 32 rows
    deep in G*H = 600 or 800, in slices of K."""
    with fl.threads(2):
        check_against_reference(cell, T, N, D, H, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell, H", [(Lstm, 128), (Gru, 512)], ids=["lstm", "gru"])
def test_matches_reference_with_padded_rows(cell, H, dtype):
    """Gate widths G*H whose rows are a multiple of 2 KiB long: the forward copies the weights
    into rows one cache line longer (fastlayers.backends.cpu._gated.leading_dimension) where it
    multiplies them on OpenBLAS's path (float64; float32 without packed weights: see
    test_float32_on_every_product_path)."""
    from fastlayers.backends.cpu._gated import leading_dimension

    width = cell.gates * H
    assert leading_dimension(width, np.dtype(dtype).itemsize) > width  # the padded path is the one tested
    with fl.threads(2):
        check_against_reference(cell, 3, 5, 7, H, dtype)


@pytest.mark.parametrize("pack", [None, "avx512", "avx2"], ids=["openblas", "packed-avx512", "packed-avx2"])
@pytest.mark.parametrize("T, N, D, H", [(7, 5, 9, 17), (3, 8, 300, 136), (2, 64, 5, 200), (3, 5, 7, 128),
                                        (2, 70, 40, 33), (3, 26, 11, 20), (2, 14, 8, 40)])
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_float32_on_every_product_path(cell, T, N, D, H, pack, monkeypatch):
    """float32 runs its products on weights packed once per call, in the blocking of the C
    helpers' vector width (fastlayers.backends.cpu._gated.PACKED_BLOCKING: AVX-512 or AVX2), on
    OpenBLAS's paths without either: all three are tested here whatever this machine picks (the
    packed kernel's clones are correct on every instruction set, only slower on the other width).
    Shapes: remainders of the 32-column panels (and of their 16-column halves: 3H = 60, 4H = 80),
    of the 8-, 4- and 1-row blocks (AVX-512) and of the 6-, 4-, 2- and 1-row ones (AVX2: 13 and
    7 rows per thread), chunked and padded rows, and (N = 70, 2 threads) 35 rows per thread."""
    from fastlayers.backends.cpu import _gated

    monkeypatch.setattr(_gated, "PACKED_BLOCKING", pack)
    with fl.threads(2):
        check_against_reference(cell, T, N, D, H, np.float32, seed=T)
        rng = make_rng(N)
        a = cell_arrays(rng, cell, T, N, D, H, np.float32)
        outs, ws = forward_keeping(cell, a, "cpu")
        douts = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
        grads = cell.backward(douts, a, outs, workspace=ws)
    expected = cell.reference_backward([d.astype(np.float64) for d in douts], as64(a),
                                       [o.astype(np.float64) for o in outs])
    assert_grads_close(cell, grads, expected, np.float32, T, N, D, H)


@pytest.mark.parametrize("pack", ["avx512", "avx2"])
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_packed_products_do_not_depend_on_the_thread_count(cell, pack, monkeypatch):
    """Each element of a packed product is the same sum (its products in the order of k) however
    the rows are blocked (kernels/cpu/packed_gemm.h), so in float32 the forward's states and
    gates, and the backward's carries (grad_hx, grad_cx) and bias gradients, are bitwise the same
    whether the 26 sequences run on 1, 2 or 3 threads (26, 13 or 9 rows a step: every row block
    of both blockings). dx and the weight gradients are OpenBLAS products split by blocks, not
    covered."""
    from fastlayers.backends.cpu import _gated

    monkeypatch.setattr(_gated, "PACKED_BLOCKING", pack)
    T, N, D, H = 4, 26, 11, 40
    rng = make_rng(5)
    a = cell_arrays(rng, cell, T, N, D, H, np.float32)
    douts = [rng.standard_normal((T, N, H)).astype(np.float32) for _ in cell.states]
    kept = [i for i, name in enumerate(cell.grad_names) if name in cell.states + cell.biases]
    runs = []
    for threads in (1, 2, 3):
        with fl.threads(threads):
            outs, ws = forward_keeping(cell, a, "cpu")
            grads = cell.backward(douts, a, outs, workspace=ws)
        runs.append((outs, ws, [grads[i] for i in kept]))
    for outs, ws, grads in runs[1:]:
        assert all(np.array_equal(x, y) for x, y in zip(outs + tuple(grads), runs[0][0] + tuple(runs[0][2])))
        assert ws == runs[0][1]


@given(cell=st.sampled_from(list(CELLS.values())), T=st.integers(1, 4), N=st.integers(4, 9), D=st.integers(1, 12),
       H=st.integers(1, 150), dtype=st.sampled_from(DTYPES), threads=st.integers(2, 4),
       pack=st.sampled_from(["avx512", "avx2"]), by_units=st.booleans(), seed=st.integers(0, 2**16))
def test_column_split_steps_match_reference_and_one_thread(cell, T, N, D, H, dtype, threads, pack, by_units, seed):
    """With packed weights (float32) and ``by_units`` the threads split each step by hidden
    units, in whole 32-column panels of every gate (kernels/cpu/gated_rnn.pyx, _forward): H from
    1 to 150 gives teams where some threads own several panels, a partial last panel or none;
    without, by sequences on the same gate-by-gate packed Wh. The states and the kept gates
    match the reference and are bitwise those of one thread (each element is the same sum
    whichever thread computes it), and so are the states of a forward that keeps no gates (its
    pre-activations in the step's N rows only, written again at every step). float64 (the row
    split on OpenBLAS, whose results may change with the rows per thread) is compared with the
    reference only. The backward of those gates: as in test_float32_on_every_product_path."""
    from fastlayers.backends.cpu import _gated

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_gated, "PACKED_BLOCKING", pack)
        patch.setattr(_gated, "split_by_units", lambda threads: by_units)
        patch.setattr(fl._dispatch, "GRAIN_SIZE", 1)  # every thread asked for (see split_work)
        a = cell_arrays(make_rng(seed), cell, T, N, D, H, dtype)
        runs = []
        for count in (1, threads):
            with fl.threads(count):
                runs.append(forward_keeping(cell, a, "cpu") + (_as_tuple(cell.forward(a)),))
    (outs, ws, plain), (outs_t, ws_t, plain_t) = runs
    assert_states_close(outs_t, cell.reference(as64(a)), dtype, D, H)
    assert_states_close(plain_t, cell.reference(as64(a)), dtype, D, H)
    if dtype == np.float32:
        assert all(np.array_equal(x, y) for x, y in zip(outs + outs, outs_t + plain_t))
        assert ws == ws_t


def _as_tuple(outs):
    return outs if isinstance(outs, tuple) else (outs,)


@pytest.mark.parametrize("keep", [False, True])
def test_forward_kernel_refuses_buffers_that_do_not_fit(keep):
    """The compiled forward checks what it is handed before it writes: packed buffers come both or
    neither, and the pre-activations hold the rows it writes (the step's N rows on packed weights,
    all T*N when it keeps the gates or multiplies unpacked weights)."""
    from fastlayers._cpu import gated_rnn as kernels

    T, N, D, H = 3, 4, 5, 32
    G, f32 = 4 * H, np.float32
    x, h0, Wx, Wh = np.zeros((T * N, D), f32), np.zeros((N, H), f32), np.zeros((D, G), f32), np.zeros((H, G), f32)
    hs, cs, u, b = np.zeros((T * N, H), f32), np.zeros((T * N, H), f32), np.zeros((N, G), f32), np.zeros(G, f32)
    px, ph = np.zeros(G * D, f32), np.zeros(G * H, f32)

    def run(a_rows, packed_x, packed):
        kernels.lstm_forward(x, h0, h0, Wx, Wh, b, hs, cs, np.zeros((a_rows, G), f32), u, N, keep, packed_x, packed,
                             False, True, 1)

    run(T * N if keep else N, px, ph)
    with pytest.raises(ValueError, match="rows"):
        run(T * N - 1 if keep else N - 1, px, ph)
    with pytest.raises(ValueError, match="rows"):
        run(N, None, None)  # unpacked: every step's rows
    with pytest.raises(ValueError, match="together"):
        run(T * N, px, None)


@pytest.mark.parametrize("threads, free, expected", [(1, 1, True), (2, 2, True), (2, 1, False), (3, 2, False)])
def test_steps_split_by_units_only_on_free_cpus(threads, free, expected, monkeypatch):
    """A barrier per step only while other processes leave the team its CPUs."""
    from fastlayers.backends.cpu import _gated

    monkeypatch.setattr(_gated, "free_cpus", lambda: free)
    assert _gated.split_by_units(threads) is expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_long_sequence_stays_finite_and_matches(cell, dtype):
    """T = 500, with inputs large enough that many gates saturate."""
    T, N, D, H = 500, 3, 8, 24
    rng = make_rng(3)
    a = cell_arrays(rng, cell, T, N, D, H, dtype)
    a["input"] *= 4
    a64 = as64(a)
    outs = cell.forward(a)
    assert all(np.isfinite(o).all() for o in outs)
    outs_ref = cell.reference(a64)
    assert_states_close(outs, outs_ref, dtype, D, H)
    gates = np.abs(a64["input"].reshape(T * N, D) @ a64["Wx"])
    assert (gates > 4).mean() > 0.05  # the saturated regime is really exercised
    douts = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    outs_in = [o.astype(dtype) for o in outs_ref]
    grads = cell.backward(douts, a, outs_in)
    assert all(np.isfinite(g).all() for g in grads)
    expected = cell.reference_backward([d.astype(np.float64) for d in douts], a64,
                                       [o.astype(np.float64) for o in outs_in])
    assert_grads_close(cell, grads, expected, dtype, T, N, D, H)


# ---------------------------------------------------------------------------- steps


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_step_is_a_sequence_of_one(dtype):
    a = cell_arrays(make_rng(1), Lstm, 1, 4, 6, 20, dtype)
    x, hx, cx = a["input"][0], a["hx"], a["cx"]
    hs, cs = Lstm.forward(a)
    h, c = fl.lstm_step(x, hx, cx, a["Wx"], a["Wh"], a["bias"], backend="cpu")
    np.testing.assert_array_equal(h, hs[0])
    np.testing.assert_array_equal(c, cs[0])
    dh, dc = np.ones_like(h), np.full_like(c, 0.5)
    seq = Lstm.backward((dh[None], dc[None]), a, (hs, cs))
    step = fl.lstm_step_backward(dh, dc, x, hx, cx, a["Wx"], a["Wh"], a["bias"], h, c, backend="cpu")
    np.testing.assert_array_equal(step[0], seq[0][0])
    for name, s, t in zip(Lstm.grad_names[1:], seq[1:], step[1:]):
        np.testing.assert_array_equal(t, s, err_msg=name)
    a64 = as64(a)
    h64, c64 = ref.lstm_step(a64["input"][0], a64["hx"], a64["cx"], a64["Wx"], a64["Wh"], a64["bias"])
    assert_states_close((h, c), (h64, c64), dtype, 6, 20)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_step_is_a_sequence_of_one(dtype):
    a = cell_arrays(make_rng(2), Gru, 1, 4, 6, 20, dtype)
    x, hx = a["input"][0], a["hx"]
    (hs,) = Gru.forward(a)
    h = fl.gru_step(x, hx, a["Wx"], a["Wh"], a["bias_ih"], a["bias_hh"], backend="cpu")
    np.testing.assert_array_equal(h, hs[0])
    dh = np.ones_like(h)
    seq = Gru.backward((dh[None],), a, (hs,))
    step = fl.gru_step_backward(dh, x, hx, a["Wx"], a["Wh"], a["bias_ih"], a["bias_hh"], h, backend="cpu")
    np.testing.assert_array_equal(step[0], seq[0][0])
    for name, s, t in zip(Gru.grad_names[1:], seq[1:], step[1:]):
        np.testing.assert_array_equal(t, s, err_msg=name)
    a64 = as64(a)
    h64 = ref.gru_step(a64["input"][0], a64["hx"], a64["Wx"], a64["Wh"], a64["bias_ih"], a64["bias_hh"])
    assert_states_close((h,), (h64,), dtype, 6, 20)


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_backward_matches_finite_differences(cell, split_work):
    rng = make_rng(7)
    a = cell_arrays(rng, cell, 4, 2, 3, 6, np.float64)  # G*H = 18 or 24 > 16: two column blocks
    outs = cell.forward(a)
    douts = [rng.standard_normal(o.shape) for o in outs]
    grads = cell.backward(douts, a, outs)

    def weighted_outputs(**kw):  # the loss sum(outs * douts) as one array product with douts
        return np.stack(cell.forward(kw))

    for name, analytic in zip(cell.grad_names, grads):
        assert_grad_matches(analytic, numeric_grad(weighted_outputs, a, name, np.stack(douts)), err_msg=f"grad_{name}")


def test_lstm_step_backward_matches_finite_differences():
    rng = make_rng(8)
    a = cell_arrays(rng, Lstm, 1, 3, 4, 5, np.float64)
    arrays = dict(input=a["input"][0], hx=a["hx"], cx=a["cx"], Wx=a["Wx"], Wh=a["Wh"], bias=a["bias"])

    def step(**kw):
        return np.stack(fl.lstm_step(**kw, backend="cpu"))

    h, c = step(**arrays)
    dh, dc = rng.standard_normal(h.shape), rng.standard_normal(c.shape)
    grads = fl.lstm_step_backward(dh, dc, *arrays.values(), h, c, backend="cpu")
    for name, analytic in zip(arrays, grads):
        assert_grad_matches(analytic, numeric_grad(step, arrays, name, np.stack([dh, dc])), err_msg=f"grad_{name}")


def test_gru_step_backward_matches_finite_differences():
    rng = make_rng(9)
    a = cell_arrays(rng, Gru, 1, 3, 4, 5, np.float64)
    arrays = dict(input=a["input"][0], hx=a["hx"], Wx=a["Wx"], Wh=a["Wh"], bias_ih=a["bias_ih"], bias_hh=a["bias_hh"])

    def step(**kw):
        return fl.gru_step(**kw, backend="cpu")

    h = step(**arrays)
    dh = rng.standard_normal(h.shape)
    grads = fl.gru_step_backward(dh, *arrays.values(), h, backend="cpu")
    for name, analytic in zip(arrays, grads):
        assert_grad_matches(analytic, numeric_grad(step, arrays, name, dh), err_msg=f"grad_{name}")


# ---------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_nan_propagates_along_its_sequence_only(cell):
    a = cell_arrays(make_rng(4), cell, 3, 2, 3, 20, np.float32)
    a["input"][1, 0, 0] = np.nan
    hs = cell.forward(a)[0]
    assert np.isfinite(hs[0]).all() and np.isfinite(hs[1:, 1]).all()
    assert np.isnan(hs[1:, 0]).all()


@pytest.mark.parametrize("shape", [(0, 2, 3, 4), (2, 0, 3, 4), (2, 3, 0, 4), (2, 3, 4, 0)])
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_empty_shapes(cell, shape):
    a = cell_arrays(make_rng(5), cell, *shape, np.float64)
    outs = cell.forward(a)
    for got, want in zip(outs, cell.reference(a)):
        np.testing.assert_array_equal(got, want)
    douts = [np.ones_like(o) for o in outs]
    for got, want in zip(cell.backward(douts, a, outs), cell.reference_backward(douts, a, outs)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_results_are_reproducible(cell, split_work):
    """The weight gradients are summed in a fixed order: repeated calls agree bit for bit."""
    rng = make_rng(6)
    a = cell_arrays(rng, cell, 20, 8, 16, 40, np.float32)
    outs = cell.forward(a)
    douts = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
    first = cell.backward(douts, a, outs)
    for _ in range(3):
        for o, f in zip(cell.forward(a), outs):
            np.testing.assert_array_equal(o, f)
        for g, f in zip(cell.backward(douts, a, outs), first):
            np.testing.assert_array_equal(g, f)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_non_contiguous_inputs(cell, dtype, split_work):
    rng = make_rng(10)
    a = cell_arrays(rng, cell, 5, 3, 4, 20, dtype)

    def strided(v):  # the same values through a non-C-contiguous view
        return np.repeat(v, 2, axis=-1)[..., ::2] if v.ndim != 2 else np.asfortranarray(v)

    s = {k: strided(v) for k, v in a.items()}
    assert not any(v.flags.c_contiguous for v in s.values())
    outs = cell.forward(a)
    for got, want in zip(cell.forward(s), outs):
        np.testing.assert_array_equal(got, want)
    douts = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    want = cell.backward(douts, a, outs)
    got = cell.backward([np.asfortranarray(d) for d in douts], s, [np.asfortranarray(o) for o in outs])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_out_buffers(cell, dtype):
    rng = make_rng(11)
    T, N, D, H = 6, 4, 5, 24
    a = cell_arrays(rng, cell, T, N, D, H, dtype)
    outs = cell.forward(a)
    bufs = tuple(np.full(o.shape, np.nan, dtype) for o in outs)
    got = cell.forward(a, out=bufs if cell is Lstm else bufs[0])
    for b, g, o in zip(bufs, got, outs):
        assert g is b
        np.testing.assert_array_equal(g, o)
    douts = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    grads = cell.backward(douts, a, outs)
    gbufs = tuple(np.full(g.shape, np.nan, dtype) for g in grads)
    for b, g, w in zip(gbufs, cell.backward(douts, a, outs, out=gbufs), grads):
        assert g is b
        np.testing.assert_array_equal(g, w)
    partial = tuple(b if i % 2 else None for i, b in enumerate(gbufs))  # None entries are allocated
    for g, w in zip(cell.backward(douts, a, outs, out=partial), grads):
        np.testing.assert_array_equal(g, w)


def test_step_out_buffers():
    a = cell_arrays(make_rng(12), Lstm, 1, 3, 4, 5, np.float64)
    args = (a["input"][0], a["hx"], a["cx"], a["Wx"], a["Wh"], a["bias"])
    h, c = fl.lstm_step(*args, backend="cpu")
    bufs = (np.full_like(h, np.nan), None)
    got = fl.lstm_step(*args, backend="cpu", out=bufs)
    assert got[0] is bufs[0]
    np.testing.assert_array_equal(got[0], h)
    np.testing.assert_array_equal(got[1], c)
    with pytest.raises(ValueError, match="contiguous"):
        fl.lstm_step(*args, backend="cpu", out=(np.zeros((5, 3)).T, None))
    g = cell_arrays(make_rng(13), Gru, 1, 3, 4, 5, np.float64)
    gargs = (g["input"][0], g["hx"], g["Wx"], g["Wh"], g["bias_ih"], g["bias_hh"])
    h = fl.gru_step(*gargs, backend="cpu")
    dx = np.full((3, 4), np.nan)
    grads = fl.gru_step_backward(np.ones_like(h), *gargs, h, backend="cpu", out=(dx, None, None, None, None, None))
    assert grads[0] is dx
    np.testing.assert_array_equal(dx, fl.gru_step_backward(np.ones_like(h), *gargs, h, backend="cpu")[0])


def test_cpu_is_the_default_backend_for_numpy_inputs():
    from fastlayers import _dispatch
    from fastlayers.ops import GRU, LSTM

    x, h = np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 4), np.float32)
    lstm = dict(input=x, hx=None, cx=None, Wx=np.zeros((3, 16), np.float32), Wh=np.zeros((4, 16), np.float32),
                bias=None)
    gru = dict(input=x, hx=None, Wx=np.zeros((3, 12), np.float32), Wh=np.zeros((4, 12), np.float32), bias_ih=None,
               bias_hh=None)
    lstm_grads = dict(grad_output=h, grad_cell=None, **lstm, output=h, cell=h)
    problems = ((LSTM, LSTM.forward(lstm, step=False)), (LSTM, LSTM.backward(lstm_grads, step=False)),
                (GRU, GRU.forward(gru, step=False)),
                (GRU, GRU.backward(dict(grad_output=h, **gru, output=h), step=False)))
    for spec, problem in problems:
        assert _dispatch.select_kernel(spec, problem, None).backend == "cpu"


# ---------------------------------------------------------------------------- saved gates (workspace)


def forward_keeping(cell, a, backend):
    """The forward with return_workspace=True: (outputs, workspace)."""
    *outs, ws = cell.forward(a, backend, return_workspace=True) if cell is Lstm else \
        Gru.forward(a, backend, return_workspace=True)[0]
    return tuple(outs), ws


@given(cell=st.sampled_from(list(CELLS.values())), T=st.integers(1, 10), N=st.integers(1, 7), D=st.integers(1, 12),
       H=st.integers(1, 20), dtype=st.sampled_from(DTYPES), state=st.booleans(), bias=st.booleans(),
       backend=st.sampled_from(["cpu", "numpy"]), seed=st.integers(0, 2**16))
def test_backward_from_saved_gates_matches_reference(cell, T, N, D, H, dtype, state, bias, backend, seed):
    """A forward keeping its gates gives the same states as one that does not (the same
    arithmetic, bit for bit), and the backward reading them matches the reference's (which
    recomputes the gates in float64) within the recompute path's bounds, and the recompute path
    of the same backend within twice them."""
    rng = make_rng(seed)
    a = cell_arrays(rng, cell, T, N, D, H, dtype, state, bias)
    outs, ws = forward_keeping(cell, a, backend)
    for kept, plain in zip(outs, cell.forward(a, backend)):
        np.testing.assert_array_equal(kept, plain)
    douts = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    grads = cell.backward(douts, a, outs, backend, workspace=ws)
    a64 = as64(a)
    expected = cell.reference_backward([d.astype(np.float64) for d in douts], a64, [o.astype(np.float64) for o in outs])
    assert_grads_close(cell, grads, expected, dtype, T, N, D, H, err_msg=f"T={T} N={N} D={D} H={H} {backend}")
    recomputed = cell.backward(douts, a, outs, backend)
    for name, got, want in zip(cell.grad_names, grads, recomputed):
        weight = name.startswith(("W", "b"))
        assert_close(got, want, dtype, terms=T * N if weight else cell.gates * H,
                     scale=2 * AMPLIFICATION * np.sqrt(T * N if weight else 1), err_msg=f"grad_{name} {backend}")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("T, N, D, H", [(7, 5, 9, 17), (3, 8, 300, 136), (2, 64, 5, 200), (3, 5, 7, 128)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_saved_gates_across_blocks_chunks_and_padding(cell, T, N, D, H, dtype, threads):
    """The saved-gates path where the kernels split the batch and the rows among threads, cut
    the products into small-matrix chunks, and pad the rows (4H = 512 float32 columns: 2 KiB)."""
    rng = make_rng(threads)
    a = cell_arrays(rng, cell, T, N, D, H, dtype)
    with fl.threads(threads):
        outs, ws = forward_keeping(cell, a, "cpu")
        douts = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
        grads = cell.backward(douts, a, outs, workspace=ws)
    expected = cell.reference_backward([d.astype(np.float64) for d in douts], as64(a),
                                       [o.astype(np.float64) for o in outs])
    assert_grads_close(cell, grads, expected, dtype, T, N, D, H)


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_backward_from_saved_gates_matches_finite_differences(cell):
    rng = make_rng(8)
    a = cell_arrays(rng, cell, 4, 2, 3, 6, np.float64)
    outs, ws = forward_keeping(cell, a, "cpu")
    douts = [rng.standard_normal(o.shape) for o in outs]
    grads = cell.backward(douts, a, outs, workspace=ws)

    def weighted_outputs(**kw):
        return np.stack(cell.forward(kw))

    for name, analytic in zip(cell.grad_names, grads):
        assert_grad_matches(analytic, numeric_grad(weighted_outputs, a, name, np.stack(douts)), err_msg=f"grad_{name}")


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_workspace_is_read_only_and_reusable(cell):
    """The backward leaves the saved gates as they were: a second backward from the same
    workspace (autograd's retain_graph) gives the same gradients, bit for bit; the workspace of
    one backend serves the other's backward (the same gates, in the spec's layout), with the
    outputs of the same forward (another's, even equal up to rounding, are refused)."""
    rng = make_rng(9)
    a = cell_arrays(rng, cell, 5, 3, 4, 8, np.float64)
    outs, ws = forward_keeping(cell, a, "cpu")
    douts = [rng.standard_normal(o.shape) for o in outs]
    first = cell.backward(douts, a, outs, workspace=ws)
    second = cell.backward(douts, a, outs, workspace=ws)
    for g1, g2 in zip(first, second):
        np.testing.assert_array_equal(g1, g2)
    assert not ws._gates.flags.writeable
    outs_numpy, ws_numpy = forward_keeping(cell, a, "numpy")
    for got, want in zip(cell.backward(douts, a, outs_numpy, "cpu", workspace=ws_numpy),
                         cell.backward(douts, a, outs_numpy, "numpy", workspace=ws_numpy)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("T, N, D, H", [(0, 2, 3, 4), (2, 0, 3, 4), (2, 2, 0, 4), (2, 2, 3, 0)])
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS)
def test_saved_gates_of_empty_sizes(cell, T, N, D, H, backend):
    """A size of zero keeps an empty workspace, which its backward accepts: the same gradients
    as recomputing (zeros, or the empty arrays)."""
    a = cell_arrays(make_rng(4), cell, T, N, D, H, np.float64)
    outs, ws = forward_keeping(cell, a, backend)
    douts = [np.ones_like(o) for o in outs]
    for got, want in zip(cell.backward(douts, a, outs, backend, workspace=ws), cell.backward(douts, a, outs, backend)):
        np.testing.assert_array_equal(got, want)
