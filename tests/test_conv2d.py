"""The CPU conv2d kernels (algo "im2col", "direct", "depthwise", "auto") against the NumPy reference.

Forward and all three gradients over random configurations (hypothesis) in float32 and float64,
with contiguous and non-contiguous inputs; finite-difference gradient checks in float64; output
buffers, empty sizes, thread-count independence, reproducibility and concurrent callers.
"""
import contextlib
import importlib
from dataclasses import replace
import threading

import numpy as np
import pytest
from _helpers import assert_close, assert_grad_matches, make_rng, numeric_grad
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastlayers as fl
from fastlayers import _dispatch
from fastlayers import reference as ref
from fastlayers.ops import CONV2D
from fastlayers.ops import conv2d as cpu_conv2d_spec
from fastlayers.ops._spec import run as spec_run
from fastlayers.ops.conv2d import conv2d_geometry, fuse_epilogue

# The module, not the package attribute (the cpu package exports its op functions by op name).
cpu_conv2d = importlib.import_module("fastlayers.backends.cpu.conv2d")
_im2col = importlib.import_module("fastlayers._cpu.im2col")
_winograd = importlib.import_module("fastlayers._cpu.conv2d_winograd")
_direct_kernels = importlib.import_module("fastlayers._cpu.conv2d_direct")

ALGOS = ("im2col", "direct", "auto")
DTYPES = (np.float32, np.float64)


def _assert_conv2d_close(actual, expected, dtype, terms, err_msg=""):
    """Data are uniform in [-1, 1), so every product is at most 1 in magnitude. A float sum of
    ``terms`` such products is off by at most about terms * eps * (largest partial sum), and the
    partial sums of random-signed products stay within a small multiple of the largest result:
    scale = max(1, max |expected|). assert_close adds a factor 4 for BLAS's blocked order."""
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    assert_close(actual, expected, dtype, terms=terms, scale=scale, err_msg=err_msg)


def _uniform(rng, shape, dtype, layout="C"):
    """Uniform [-1, 1) data; ``layout`` "F" is Fortran order, "strided" a view with a step of 2
    in the last axis (neither is C-contiguous), "unaligned" C order one byte past an aligned
    address (a view into a byte buffer)."""
    if layout == "strided":
        return rng.uniform(-1, 1, shape[:-1] + (2 * shape[-1],)).astype(dtype)[..., ::2]
    a = rng.uniform(-1, 1, shape).astype(dtype)
    if layout == "unaligned":
        raw = np.empty(a.nbytes + 1, np.uint8)[1:]
        raw[...] = a.reshape(-1).view(np.uint8)
        return raw.view(dtype).reshape(shape)
    return np.asfortranarray(a) if layout == "F" else a


def _check_against_reference(x, w, b, dy, params, algo, dtype, err_msg):
    x64, w64, b64, dy64 = (None if a is None else a.astype(np.float64) for a in (x, w, b, dy))
    g = conv2d_geometry(x.shape, w.shape, **params)
    y = fl.conv2d(x, w, b, algo=algo, backend="cpu", **params)
    assert y.dtype == dtype
    _assert_conv2d_close(y, ref.conv2d(x64, w64, b64, **params), dtype,
                         terms=(g.C // g.groups) * g.KH * g.KW + 1, err_msg=f"y {err_msg}")
    dx, dw, db = fl.conv2d_backward(dy, x, w, algo=algo, backend="cpu", **params)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(dy64, x64, w64, **params)
    for name, got, want, terms in (
        ("dx", dx, dx_ref, (g.F // g.groups) * g.KH * g.KW),
        ("dw", dw, dw_ref, g.N * g.OH * g.OW),
        ("db", db, db_ref, g.N * g.OH * g.OW),
    ):
        assert got.dtype == dtype
        _assert_conv2d_close(got, want, dtype, terms=terms, err_msg=f"{name} {err_msg}")


@st.composite
def conv2d_configs(draw):
    """The issue's ranges: batch 1..4, channels 1..8, groups dividing both, kernel 1..5 (non-square
    too), stride 1..3, padding 0..3 / "same" / "valid", dilation 1..3, input sizes down to the
    kernel's extent == the padded input."""
    groups = draw(st.integers(1, 4))
    C = groups * draw(st.integers(1, 8 // groups))
    F = groups * draw(st.integers(1, 8 // groups))
    KH, KW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.one_of(st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)),
                             st.sampled_from(["same", "valid"])))
    stride = 1 if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if isinstance(padding, str):  # "valid" pads nothing; "same" pads, but needs no smaller bound
        pads = (0, 0)
    else:
        pads = (padding, padding) if isinstance(padding, int) else padding
    sizes = []
    for k, d, p in zip((KH, KW), dilation, pads):
        smallest = max(1, d * (k - 1) + 1 - 2 * p)  # kernel extent == padded input
        sizes.append(smallest + draw(st.integers(0, 6)))
    N = draw(st.integers(1, 4))
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (N, C, *sizes), (F, C // groups, KH, KW), params


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algo", ALGOS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=conv2d_configs(), seed=st.integers(0, 2**32 - 1),
       layout=st.sampled_from(["C", "F", "strided", "unaligned"]), bias=st.booleans())
def test_matches_reference(algo, dtype, config, seed, layout, bias):
    x_shape, w_shape, params = config
    rng = make_rng(seed)
    x = _uniform(rng, x_shape, dtype, layout)
    w = _uniform(rng, w_shape, dtype, layout)
    b = _uniform(rng, (w_shape[0],), dtype) if bias else None
    g = conv2d_geometry(x_shape, w_shape, **params)
    dy = _uniform(rng, g.y_shape, dtype, layout)
    _check_against_reference(x, w, b, dy, params, algo, dtype, f"{algo} {x_shape} {w_shape} {params}")


@st.composite
def wide_conv2d_configs(draw):
    """Rows wider than the direct kernel's vector pairs (16 float or 8 double lanes each) and
    filter counts across its blocks of 8: full, partial and several segments per row, every
    stride/dilation/padding, so the padded band copy and its phases are exercised at width."""
    groups = draw(st.integers(1, 2))
    C = groups * draw(st.integers(1, 3))
    F = groups * draw(st.integers(1, 10))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.just("same")))
    stride = 1 if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    H = dilation[0] * (KH - 1) + 1 + draw(st.integers(0, 5))
    W = dilation[1] * (KW - 1) + 1 + draw(st.integers(17, 70))
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (draw(st.integers(1, 3)), C, H, W), (F, C // groups, KH, KW), params


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algo", ("im2col", "direct"))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=wide_conv2d_configs(), seed=st.integers(0, 2**32 - 1))
def test_wide_rows_match_reference(algo, dtype, config, seed):
    x_shape, w_shape, params = config
    rng = make_rng(seed)
    x, w, b = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype), _uniform(rng, (w_shape[0],), dtype)
    dy = _uniform(rng, conv2d_geometry(x_shape, w_shape, **params).y_shape, dtype)
    _check_against_reference(x, w, b, dy, params, algo, dtype, f"{algo} {x_shape} {w_shape} {params}")


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(KH=st.integers(1, 5), KW=st.integers(1, 5), DH=st.integers(1, 3), H=st.integers(1, 10),
       W=st.integers(1, 20), N=st.integers(1, 2), groups=st.integers(1, 2), seed=st.integers(0, 2**32 - 1))
def test_im2col_runs_of_same_width_rows(dtype, KH, KW, DH, H, W, N, groups, seed):
    """Stride 1 with as many output columns as input ones ("same" padding, even kernels padded
    more on the right): im2col copies each tap's rows as one run and zeroes the padding columns
    after (kernels/cpu/im2col.pyx _im2col_runs); forward and backward against the reference."""
    params = dict(padding="same", dilation=(DH, 1), groups=groups)
    x_shape, w_shape = (N, 2 * groups, H, W), (3 * groups, 2, KH, KW)
    g = conv2d_geometry(x_shape, w_shape, **params)
    assert g.OW == g.W
    rng = make_rng(seed)
    x, w, b = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype), _uniform(rng, (w_shape[0],), dtype)
    dy = _uniform(rng, g.y_shape, dtype)
    _check_against_reference(x, w, b, dy, params, "im2col", dtype, f"{x_shape} {w_shape} {params}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ("row kernel", "filter-vector kernel"))
@settings(max_examples=40, deadline=None)
@given(G=st.integers(1, 3), O=st.integers(1, 40), K=st.integers(1, 150),
       layout=st.sampled_from(["C-ordered", "transposed", "every other filter"]),
       threads=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_direct_filter_packing_is_the_blocked_transpose(kernel, dtype, G, O, K, layout, threads, seed):
    """The direct kernels' packed weights (compiled): blocks of FILTER_BLOCK filters (the row
    kernel's) or of two vectors (the filter-vector kernel's, by register tiles where the taps are
    consecutive), filter-fastest, zeros past the last filter, from C-ordered or strided weights
    (taps apart, or filters further apart than K)."""
    from fastlayers._cpu import conv2d_direct

    rng = make_rng(seed)
    if layout == "transposed":
        w = rng.standard_normal((G, K, O)).astype(dtype).transpose(0, 2, 1)
    elif layout == "every other filter":
        w = rng.standard_normal((G, 2 * O, K)).astype(dtype)[:, ::2]
    else:
        w = rng.standard_normal((G, O, K)).astype(dtype)
    fb = (conv2d_direct.FILTER_BLOCK if kernel == "row kernel"
          else conv2d_direct.FILTER_VECTOR_BYTES // np.dtype(dtype).itemsize)
    blocks = -(-O // fb)
    want = np.zeros((G, blocks * fb, K), dtype)
    want[:, :O] = w
    want = want.reshape(G, blocks, fb, K).transpose(0, 1, 3, 2)
    packed = np.full((G, blocks, K, fb), np.nan, dtype)
    conv2d_direct.pack_filters(w, packed, threads)
    np.testing.assert_array_equal(packed, want)
    with pytest.raises(ValueError, match="packed must have shape"):
        conv2d_direct.pack_filters(w, np.empty((G, blocks + 1, K, fb), dtype), threads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vectors", ("32-byte passes", "64-byte kernel"))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.one_of(conv2d_configs(), wide_conv2d_configs()), seed=st.integers(0, 2**32 - 1),
       bias=st.booleans())
def test_direct_kernels_of_each_vector_width_match_reference(vectors, dtype, config, seed, bias):
    """The direct kernel's AVX2 passes (4 filters x 1-2 chunks of 32 bytes, empty chunks
    skipped) and its 64-byte block (the clone this CPU takes: AVX-512 or the baseline), forward
    and dx, on narrow rows (two output rows a block), wide ones and partial filter blocks."""
    direct = importlib.import_module("fastlayers._cpu.conv2d_direct")
    wide = vectors == "64-byte kernel"
    if not wide and not direct.runs_avx2_passes():
        pytest.skip("the AVX2 passes run only on a CPU with AVX2 and without AVX-512")
    x_shape, w_shape, params = config
    rng = make_rng(seed)
    x, w = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype)
    b = _uniform(rng, (w_shape[0],), dtype) if bias else None
    dy = _uniform(rng, conv2d_geometry(x_shape, w_shape, **params).y_shape, dtype)
    previous = direct.use_wide_vectors(wide)
    try:
        _check_against_reference(x, w, b, dy, params, "direct", dtype, f"{vectors} {x_shape} {w_shape} {params}")
    finally:
        direct.use_wide_vectors(previous)


def _force_direct_kernel(monkeypatch, kernel):
    """Make the direct forward and dx run ``kernel``: the filter-vector kernel on every problem it
    runs (the slow baseline build of it where the CPU has no AVX-512), or the row kernel."""
    from fastlayers._cpu import conv2d_direct

    def fvec_scratch(g, backward_input, itemsize, threads):
        if kernel == "row kernel" or not conv2d_direct.fvec_runs(g, backward_input):
            return 0
        return conv2d_direct.fvec_scratch_bytes(g, backward_input, itemsize, threads)

    monkeypatch.setattr(cpu_conv2d, "_fvec_scratch", fvec_scratch)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ("row kernel", "filter-vector kernel"))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(config=st.one_of(conv2d_configs(), wide_conv2d_configs()), seed=st.integers(0, 2**32 - 1),
       bias=st.booleans())
def test_direct_row_and_filter_vector_kernels_match_reference(monkeypatch, kernel, dtype, config, seed, bias):
    """Both inner kernels of the direct forward and dx, each forced where the other would run:
    the filter-vector kernel's runs of 1-12 positions, partial filter blocks, paddings,
    dilations and column strides 1-2 (and the row kernel's other strides, which it alone takes)."""
    x_shape, w_shape, params = config
    rng = make_rng(seed)
    x, w = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype)
    b = _uniform(rng, (w_shape[0],), dtype) if bias else None
    dy = _uniform(rng, conv2d_geometry(x_shape, w_shape, **params).y_shape, dtype)
    _force_direct_kernel(monkeypatch, kernel)
    _check_against_reference(x, w, b, dy, params, "direct", dtype, f"{kernel} {x_shape} {w_shape} {params}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "x_shape, w_shape, params",
    [
        ((1, 64, 7, 7), (96, 64, 3, 3), dict(padding=1)),
        ((2, 6, 9, 30), (10, 3, 2, 3), dict(padding=(2, 0), dilation=2, groups=2)),
        ((1, 5, 5, 13), (7, 5, 1, 1), {}),
        ((1, 3, 23, 29), (40, 3, 7, 7), dict(stride=2, padding=3)),  # a ResNet stem, forward
    ],
)
def test_direct_row_and_filter_vector_kernels_give_the_same_bits(monkeypatch, dtype, x_shape, w_shape, params):
    """Where both run with AVX-512 each output is the bias plus its taps in the same order, with
    the same fused multiply-adds: the kernel the backend picks does not change a bit."""
    from fastlayers._cpu import conv2d_direct

    if conv2d_direct.vector_isa() != "x86-64-v4":
        pytest.skip("the two kernels round alike only where both run their AVX-512 builds")
    rng = make_rng(3)
    x, w, b = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype), _uniform(rng, (w_shape[0],), dtype)
    dy = _uniform(rng, conv2d_geometry(x_shape, w_shape, **params).y_shape, dtype)
    results = {}
    for kernel in ("row kernel", "filter-vector kernel"):
        _force_direct_kernel(monkeypatch, kernel)
        y = fl.conv2d(x, w, b, algo="direct", **params)
        dx, _, _ = fl.conv2d_backward(dy, x, w, algo="direct", **params)
        results[kernel] = (y, dx)
    for want, got in zip(results["row kernel"], results["filter-vector kernel"]):
        np.testing.assert_array_equal(got, want)


WEIGHTS_PACKED = ("kept packed", "packed by the tasks")


def _pack_weights(monkeypatch, weights):
    """Make the filter-vector forward of one image keep its packed weights, or pack them in its
    tasks, whatever their size."""
    monkeypatch.setattr(cpu_conv2d, "FVEC_UNPACKED_MIN_WEIGHT_BYTES", 0 if weights == "packed by the tasks" else 2**62)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "x_shape, w_shape, params",
    [
        ((1, 130, 7, 7), (40, 130, 3, 3), dict(padding=1)),  # 1170 taps: two chunks of channels
        ((2, 12, 20, 15), (33, 12, 3, 3), dict(padding=2, dilation=2)),  # groups of 8 rows of 15
        ((1, 200, 5, 5), (32, 100, 3, 3), dict(padding=(3, 1), groups=2)),  # rows reading no input
        ((1, 64, 13, 13), (48, 64, 3, 3), dict(stride=2, padding=1)),
        ((1, 8, 1, 9), (32, 8, 3, 3), dict(padding=1)),  # one row: only the kernel's middle row reads x
    ],
)
@pytest.mark.parametrize("weights", WEIGHTS_PACKED)
def test_filter_vector_kernel_chunks_rows_and_padding_match_reference(monkeypatch, weights, dtype, x_shape, w_shape,
                                                                     params):
    """The filter-vector kernel's passes over chunks of channels continue each output's sum, its
    groups of rows cover the plane, and the kernel rows that read only padding, left out, change
    nothing, forward and dx; with the weights packed once and kept, or packed by the forward's
    tasks chunk by chunk (one image)."""
    rng = make_rng(11)
    x, w, b = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype), _uniform(rng, (w_shape[0],), dtype)
    dy = _uniform(rng, conv2d_geometry(x_shape, w_shape, **params).y_shape, dtype)
    _force_direct_kernel(monkeypatch, "filter-vector kernel")
    _pack_weights(monkeypatch, weights)
    _check_against_reference(x, w, b, dy, params, "direct", dtype, f"{weights} {x_shape} {w_shape} {params}")


@pytest.mark.parametrize("weights", WEIGHTS_PACKED)
def test_filter_vector_kernel_keeps_the_references_nans_of_padding(monkeypatch, weights):
    """A non-finite weight times a padding zero is NaN in the reference: the filter-vector kernel
    multiplies the padding rows it otherwise leaves out (packed by the tasks: those of the chunk
    of channels that holds it), also for a weight changed in place."""
    rng = make_rng(12)
    x, w = _uniform(rng, (1, 260, 7, 7), np.float64), _uniform(rng, (40, 260, 3, 3), np.float64)
    _force_direct_kernel(monkeypatch, "filter-vector kernel")
    _pack_weights(monkeypatch, weights)
    K = 260 * 9  # a direct sum's budget: an elementwise rtol fails where the outputs cancel
    _assert_conv2d_close(fl.conv2d(x, w, padding=1, algo="direct"), ref.conv2d(x, w, padding=1), np.float64, K)
    for value in (np.inf, np.nan):
        w[3, 200, 0, 1] = value  # kernel row 0: the top output row multiplies it by padding
        y = fl.conv2d(x, w, padding=1, algo="direct")
        want = ref.conv2d(x, w, padding=1)
        assert np.isnan(want[0, 3, 0]).all()
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(want))
        finite = np.isfinite(want)
        _assert_conv2d_close(y[finite], want[finite], np.float64, K)


def test_filter_vector_kernel_checks_its_arguments():
    """The compiled entry refuses what it cannot run before it reads a byte: column strides past
    2 (and a strided dx), no threads, scratch too small for the padded input, a wrong bias,
    output rows too wide for a thread's partial sums (which once overran them)."""
    from fastlayers._cpu import conv2d_direct

    g = conv2d_geometry((1, 4, 9, 9), (32, 4, 3, 3), padding=1)
    x, y = np.zeros(g.x_shape, np.float32), np.zeros(g.y_shape, np.float32)
    packed = np.zeros((1, 1, g.K, conv2d_direct.FILTER_VECTOR_BYTES // 4), np.float32)
    enough = np.zeros(conv2d_direct.fvec_scratch_bytes(g, False, 4, 2), np.uint8)
    bias = np.zeros(32, np.float32)
    conv2d_direct.conv2d_forward_fvec(x, packed, bias, y, enough, g, True, 2)
    with pytest.raises(ValueError, match="scratch must hold"):
        conv2d_direct.conv2d_forward_fvec(x, packed, bias, y, enough[:-1], g, True, 2)
    with pytest.raises(ValueError, match="num_threads"):
        conv2d_direct.conv2d_forward_fvec(x, packed, bias, y, enough, g, True, 0)
    with pytest.raises(ValueError, match="b must hold 32 biases"):
        conv2d_direct.conv2d_forward_fvec(x, packed, bias[:5], y, enough, g, True, 2)
    strided = conv2d_geometry((1, 4, 9, 9), (32, 4, 3, 3), stride=(1, 3))
    assert not conv2d_direct.fvec_runs(strided, False)
    with pytest.raises(ValueError, match="column strides 1 and 2"):
        conv2d_direct.conv2d_forward_fvec(x, packed, bias, np.zeros(strided.y_shape, np.float32), enough, strided, True, 2)
    conv2d_direct.conv2d_forward_fvec_unpacked(x, np.zeros(g.w_shape, np.float32), bias, y, enough, g, 2)
    with pytest.raises(ValueError, match=r"w must have shape \(32, 4, 3, 3\)"):
        conv2d_direct.conv2d_forward_fvec_unpacked(x, np.zeros((32, 4, 3, 2), np.float32), bias, y, enough, g, 2)
    with pytest.raises(ValueError, match="packed weights must have shape"):
        conv2d_direct.conv2d_forward_fvec(x, packed[:, :, 1:], bias, y, enough, g, True, 2)
    with pytest.raises(ValueError, match="scratch must hold"):
        conv2d_direct.conv2d_forward_fvec_unpacked(x, np.zeros(g.w_shape, np.float32), bias, y, enough[:-1], g, 2)
    assert conv2d_direct.fvec_runs(conv2d_geometry((1, 4, 9, 9), (32, 4, 3, 3), stride=2), False)
    assert not conv2d_direct.fvec_runs(conv2d_geometry((1, 4, 9, 9), (32, 4, 3, 3), stride=2), True)
    columns = conv2d_direct.FVEC_MAX_COLUMNS
    wide = conv2d_geometry((1, 4, 3, columns + 1), (32, 4, 3, 3), padding=1)
    xw, yw = np.zeros(wide.x_shape, np.float32), np.zeros(wide.y_shape, np.float32)
    room = np.zeros(2 * conv2d_direct.fvec_scratch_bytes(conv2d_geometry((1, 4, 3, columns), (32, 4, 3, 3),
                                                                          padding=1), False, 4, 2), np.uint8)
    for call in (lambda: conv2d_direct.conv2d_forward_fvec(xw, packed, bias, yw, room, wide, True, 2),
                 lambda: conv2d_direct.conv2d_backward_input_fvec(yw, packed, xw, room, wide, True, 2)):
        with pytest.raises(ValueError, match=f"output rows of at most {columns} columns, got {columns + 1}"):
            call()


# The benchmark cases' shapes at a reduced batch and size: long contractions (K = C * 9 up to
# 576), the pointwise 1x1 path, tiles of several output rows.
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "x_shape, w_shape, params",
    [
        ((2, 64, 12, 12), (64, 64, 3, 3), dict(padding=1)),
        ((2, 32, 9, 9), (48, 32, 1, 1), dict(stride=2)),
        ((3, 16, 10, 10), (24, 16, 1, 1), {}),
        ((2, 16, 8, 8), (32, 4, 3, 3), dict(padding="same", groups=4)),
        ((4, 3, 32, 32), (8, 3, 3, 3), dict(padding=1)),
        ((2, 1, 28, 28), (8, 1, 5, 5), {}),
    ],
)
def test_benchmark_shapes_match_reference(algo, dtype, x_shape, w_shape, params):
    rng = make_rng(1)
    x, w, b = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype), _uniform(rng, (w_shape[0],), dtype)
    dy = _uniform(rng, conv2d_geometry(x_shape, w_shape, **params).y_shape, dtype)
    _check_against_reference(x, w, b, dy, params, algo, dtype, f"{algo} {x_shape} {w_shape} {params}")


@pytest.mark.parametrize("algo", ("im2col", "direct"))
@pytest.mark.parametrize(
    "x_shape, w_shape, params",
    [
        ((2, 4, 6, 5), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)),
        ((1, 2, 5, 6), (3, 2, 2, 3), dict(padding="same", dilation=2)),  # asymmetric padding
        ((2, 3, 5, 5), (2, 3, 1, 1), dict(stride=3)),
    ],
)
def test_gradients_match_finite_differences(algo, x_shape, w_shape, params):
    rng = make_rng(2)
    arrays = dict(input=rng.uniform(-1, 1, x_shape), weight=rng.uniform(-1, 1, w_shape),
                  bias=rng.uniform(-1, 1, w_shape[0]))

    def f(input, weight, bias):
        return fl.conv2d(input, weight, bias, algo=algo, backend="cpu", **params)

    dy = rng.uniform(-1, 1, f(**arrays).shape)
    dx, dw, db = fl.conv2d_backward(dy, arrays["input"], arrays["weight"], algo=algo, backend="cpu", **params)
    for name, analytic in (("input", dx), ("weight", dw), ("bias", db)):
        assert_grad_matches(analytic, numeric_grad(f, arrays, name, dy), err_msg=name)


@st.composite
def small_plane_configs(draw):
    """Batches of small planes (under ``GEMM_COLUMNS`` outputs each), where im2col puts several
    images' columns side by side in one tile: batch 4..40, groups, strides, dilation, padding."""
    groups = draw(st.integers(1, 3))
    C, F = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 5))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    H = max(1, dilation[0] * (KH - 1) + 1 - 2 * padding[0]) + draw(st.integers(0, 9))
    W = max(1, dilation[1] * (KW - 1) + 1 - 2 * padding[1]) + draw(st.integers(0, 9))
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (draw(st.integers(4, 40)), C, H, W), (F, C // groups, KH, KW), params


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", (1, 2, 3))
# split_work only sets a module constant: nothing to reset between examples.
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(config=small_plane_configs(), seed=st.integers(0, 2**32 - 1), bias=st.booleans())
def test_images_batched_per_tile_match_reference(threads, dtype, config, seed, bias, split_work):
    x_shape, w_shape, params = config
    rng = make_rng(seed)
    x, w = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype)
    b = _uniform(rng, (w_shape[0],), dtype) if bias else None
    dy = _uniform(rng, conv2d_geometry(x_shape, w_shape, **params).y_shape, dtype)
    with fl.threads(threads):
        _check_against_reference(x, w, b, dy, params, "im2col", dtype, f"{x_shape} {w_shape} {params}")


def test_images_batched_per_tile_where_planes_are_small():
    """Several images per im2col tile on planes narrower than GEMM_COLUMNS (VGG's 8x8 stage: 8
    images of 64 columns), two tiles per thread at least; one on large, pointwise or banded planes."""
    tiles = lambda x_shape, w_shape, threads, **p: cpu_conv2d._tiles(  # noqa: E731
        conv2d_geometry(x_shape, w_shape, **p), threads, 4)
    assert tiles((32, 64, 8, 8), (128, 64, 3, 3), 2, padding=1) == (8, 8)
    assert tiles((32, 64, 8, 8), (128, 64, 3, 3), 8, padding=1) == (8, 2)
    assert tiles((32, 32, 16, 16), (64, 32, 3, 3), 2, padding=1) == (16, 2)
    assert tiles((32, 3, 32, 32), (32, 3, 3, 3), 2, padding=1)[1] == 1  # 1024 columns a plane
    assert tiles((32, 64, 8, 8), (64, 64, 1, 1), 2)[1] == 1  # pointwise: the input is the columns
    assert tiles((2, 64, 8, 8), (128, 64, 3, 3), 2, padding=1)[1] == 1  # too few images


@pytest.mark.parametrize("algo", ("im2col", "direct", "depthwise", "auto", "reference"))
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(config=st.one_of(conv2d_configs(), small_plane_configs()), seed=st.integers(0, 2**32 - 1),
       unbatched=st.booleans(), padding_mode=st.sampled_from(["zeros", "zeros", "reflect"]),
       threads=st.integers(1, 3))
def test_backward_without_input_grad(algo, dtype, config, seed, unbatched, padding_mode, threads, split_work):
    """``input_grad=False``: grad_input is None, grad_weight and grad_bias the reference's (with
    and without a batch axis, padding modes, depthwise groups, 1-3 threads: im2col then splits
    one image's bands over threads); ``out=`` buffers for them filled."""
    x_shape, w_shape, params = config
    if algo == "depthwise":  # one input channel per group
        groups = x_shape[1]
        w_shape, params = (groups * w_shape[0],) + (1,) + w_shape[2:], dict(params, groups=groups)
    if padding_mode == "reflect":
        g = conv2d_geometry(x_shape, w_shape, **params)
        if isinstance(params["padding"], str) or max(g.pad_top, g.pad_bottom) >= g.H or \
                max(g.pad_left, g.pad_right) >= g.W:
            padding_mode = "zeros"
    params = dict(params, padding_mode=padding_mode)
    rng = make_rng(seed)
    x, w = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype)
    g = conv2d_geometry(x_shape, w_shape, **{k: v for k, v in params.items() if k != "padding_mode"})
    dy = _uniform(rng, g.y_shape, dtype)
    if unbatched:
        x, dy = x[0], dy[0]
        g = conv2d_geometry((1,) + x.shape, w_shape, **{k: v for k, v in params.items() if k != "padding_mode"})
    kw = dict(backend="numpy") if algo == "reference" else dict(algo=algo, backend="cpu")
    _, dw_ref, db_ref = ref.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64),
                                            **params)
    out = (None, np.empty(w.shape, dtype), np.empty(w.shape[0], dtype))
    with fl.threads(threads):
        dx, dw, db = fl.conv2d_backward(dy, x, w, input_grad=False, out=out, **params, **kw)
    assert dx is None and dw is out[1] and db is out[2]
    _assert_conv2d_close(dw, dw_ref, dtype, terms=g.N * g.OH * g.OW)
    _assert_conv2d_close(db, db_ref, dtype, terms=g.N * g.OH * g.OW)


def test_backward_without_input_grad_validates():
    x, w = np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))
    dy = np.zeros((2, 4, 3, 3))
    with pytest.raises(TypeError, match="input_grad must be a bool, got int"):
        fl.conv2d_backward(dy, x, w, input_grad=0)
    with pytest.raises(ValueError, match=r"out\[0\] must be None: grad_input is not computed by this call"):
        fl.conv2d_backward(dy, x, w, input_grad=False, out=(np.empty_like(x), None, None))
    assert ref.conv2d_backward(dy, x, w, input_grad=False)[0] is None


@pytest.mark.parametrize("algo", ("im2col", "direct"))
@pytest.mark.parametrize(
    "x_shape, w_shape, params",
    [
        ((9, 4, 4, 3), (6, 2, 3, 2), dict(stride=(1, 2), padding=(1, 1), groups=2)),  # several images a tile
        ((8, 2, 5, 5), (3, 2, 3, 3), dict(padding=2, dilation=2)),
    ],
)
def test_gradients_of_batched_small_planes_match_finite_differences(algo, x_shape, w_shape, params, split_work):
    rng = make_rng(3)
    arrays = dict(input=rng.uniform(-1, 1, x_shape), weight=rng.uniform(-1, 1, w_shape),
                  bias=rng.uniform(-1, 1, w_shape[0]))
    assert cpu_conv2d._tiles(conv2d_geometry(x_shape, w_shape, **params), 2, 8)[1] > 1

    def f(input, weight, bias):
        return fl.conv2d(input, weight, bias, algo=algo, backend="cpu", **params)

    dy = rng.uniform(-1, 1, f(**arrays).shape)
    with fl.threads(2):
        dx, dw, db = fl.conv2d_backward(dy, arrays["input"], arrays["weight"], algo=algo, backend="cpu", **params)
        _, dw_only, db_only = fl.conv2d_backward(dy, arrays["input"], arrays["weight"], algo=algo, backend="cpu",
                                                 input_grad=False, **params)
    for name, analytic in (("input", dx), ("weight", dw), ("bias", db), ("weight", dw_only), ("bias", db_only)):
        assert_grad_matches(analytic, numeric_grad(f, arrays, name, dy), err_msg=name)


@pytest.mark.parametrize("threads", (2, 3))
def test_backward_without_input_grad_splits_one_images_bands(threads, split_work):
    """One image, no dx: im2col's backward gives each thread bands of output rows (per-thread dw
    and db summed in order); finite differences in float64, and the same bits on a second run."""
    rng = make_rng(4)
    arrays = dict(input=rng.uniform(-1, 1, (1, 3, 9, 7)), weight=rng.uniform(-1, 1, (4, 3, 3, 3)),
                  bias=rng.uniform(-1, 1, 4))
    params = dict(padding=1, stride=(1, 2))
    g = conv2d_geometry(arrays["input"].shape, arrays["weight"].shape, **params)
    assert cpu_conv2d._tiles(g, threads, 8)[0] < g.OH  # several bands

    def f(input, weight, bias):
        return fl.conv2d(input, weight, bias, algo="im2col", backend="cpu", **params)

    dy = rng.uniform(-1, 1, f(**arrays).shape)
    with fl.threads(threads):
        runs = [fl.conv2d_backward(dy, arrays["input"], arrays["weight"], algo="im2col", backend="cpu",
                                   input_grad=False, **params) for _ in range(2)]
    for a, b in zip(runs[0][1:], runs[1][1:]):
        np.testing.assert_array_equal(a, b)
    assert_grad_matches(runs[0][1], numeric_grad(f, arrays, "weight", dy), err_msg="weight")
    assert_grad_matches(runs[0][2], numeric_grad(f, arrays, "bias", dy), err_msg="bias")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", (2, 3))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(config=conv2d_configs(), seed=st.integers(0, 2**32 - 1), bias=st.booleans())
def test_small_batch_input_grad_splits_input_channels(threads, dtype, config, seed, bias, split_work):
    """Fewer (image, group) planes than threads: im2col's backward takes a task per block of a
    plane's input channels for its columns of dw (the first also for db) and, with dx, for its
    slice of dx (every kernel size, stride, padding and dilation of the issue's ranges; one or
    two images, one or two groups); without dx the same dw and db."""
    x_shape, w_shape, params = config
    if params["groups"] >= threads:  # one group: then one image is fewer planes than threads
        params = dict(params, groups=1)
        w_shape = (w_shape[0], x_shape[1]) + w_shape[2:]
    x_shape = (1 if params["groups"] * 2 >= threads else 2,) + x_shape[1:]
    g = conv2d_geometry(x_shape, w_shape, **params)
    assert g.N * g.groups < threads
    rng = make_rng(seed)
    x, w = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype)
    b = _uniform(rng, (w_shape[0],), dtype) if bias else None
    dy = _uniform(rng, g.y_shape, dtype)
    with fl.threads(threads):
        _check_against_reference(x, w, b, dy, params, "im2col", dtype, f"{x_shape} {w_shape} {params}")
        without_dx = fl.conv2d_backward(dy, x, w, algo="im2col", backend="cpu", input_grad=False, **params)
    assert without_dx[0] is None
    wants = ref.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **params)[1:]
    for name, got, want in zip(("dw", "db"), without_dx[1:], wants):
        _assert_conv2d_close(got, want, dtype, terms=g.N * g.OH * g.OW, err_msg=f"{name} without dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", (2, 3, 4))
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(config=conv2d_configs(), F=st.integers(17, 70), seed=st.integers(0, 2**32 - 1), bias=st.booleans())
def test_small_batch_forward_splits_many_filters(threads, dtype, config, F, seed, bias, split_work):
    """Fewer (image, group) planes than threads and many filters on a small plane: im2col's
    forward tiles take a part of the filters each (whole tiles of FILTER_SPLIT_MULTIPLE and a
    last partial one), every kernel size, stride, padding and dilation of the issue's ranges."""
    from fastlayers.backends.cpu import conv2d as cpu_conv2d

    x_shape, w_shape, params = config
    params = dict(params, groups=1)
    x_shape, w_shape = (1,) + x_shape[1:], (F, x_shape[1]) + w_shape[2:]
    g = conv2d_geometry(x_shape, w_shape, **params)
    assume(g.OH * g.OW * cpu_conv2d.FILTER_SPLIT_RATIO <= F)
    assert cpu_conv2d._tile_filters(g, threads) < F
    rng = make_rng(seed)
    x, w = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype)
    b = _uniform(rng, (F,), dtype) if bias else None
    dy = _uniform(rng, g.y_shape, dtype)
    with fl.threads(threads):
        _check_against_reference(x, w, b, dy, params, "im2col", dtype, f"{x_shape} {w_shape} {params}")


@pytest.mark.parametrize("x_shape, F", [((1, 40, 7, 7), 70), ((1, 9, 8, 5), 33), ((1, 3, 4, 16), 5)])
def test_small_batch_weight_grad_on_packed_columns(x_shape, F):
    """float32 dw of one image on bands of at most SMALL_BATCH_PACKED_MAX_POSITIONS positions
    runs on packed columns (packed_gemm.h's blocks; channel blocks past a panel's 32 columns, a
    last partial panel): against the float64 reference, the same bits at 2 to 4 threads (tasks
    by channel blocks); the kernel checks the panels it is given."""
    rng = make_rng(16)
    x, w = rng.uniform(-1, 1, x_shape).astype(np.float32), rng.uniform(-1, 1, (F, x_shape[1], 3, 3)).astype(np.float32)
    g = conv2d_geometry(x.shape, w.shape, padding=1)
    rows, _ = cpu_conv2d._tiles(g, 1, 4)
    assert min(rows, g.OH) * g.OW <= cpu_conv2d.SMALL_BATCH_PACKED_MAX_POSITIONS
    dy = rng.uniform(-1, 1, g.y_shape).astype(np.float32)
    runs = []
    for threads in (2, 3, 4):
        with fl.threads(threads):
            runs.append(fl.conv2d_backward(dy, x, w, padding=1, algo="im2col", backend="cpu"))
    for run in runs[1:]:
        for a, c in zip(run, runs[0]):
            np.testing.assert_array_equal(a, c)
    wants = ref.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), padding=1)
    _assert_conv2d_close(runs[0][1], wants[1], np.float32, terms=g.N * g.OH * g.OW, err_msg="dw")
    _assert_conv2d_close(runs[0][0], wants[0], np.float32, terms=g.F * 9, err_msg="dx")
    channels = -(-g.Cg // min(g.Cg, cpu_conv2d.SMALL_BATCH_CHANNEL_BLOCKS))
    work = np.zeros((2, g.K * rows * g.OW), np.float32)
    dw, db = np.zeros((1, g.F * g.K), np.float32), np.zeros((1, g.F), np.float32)
    panels = np.zeros((2, _im2col.panels_size(channels, g, rows) - 1), np.float32)
    with pytest.raises(ValueError, match="panels must be at least"):
        _im2col.conv2d_backward_small_batch(dy, x, w, None, dw, db, work, g, rows, channels, 2, panels)
    as64 = [a.astype(np.float64) for a in (dy, x, w)]
    with pytest.raises(TypeError, match="panels are float32 only"):
        _im2col.conv2d_backward_small_batch(*as64, None, dw.astype(np.float64), db.astype(np.float64),
                                            work.astype(np.float64), g, rows, channels, 2, panels)


@pytest.mark.parametrize("w_shape, params", [
    ((4, 5, 3, 3), dict(padding=1, stride=(1, 2))),
    ((4, 5, 1, 1), {}),  # pointwise: the channel blocks' columns are dx itself
    ((6, 5, 2, 3), dict(padding=(2, 0), dilation=(2, 1))),
])
def test_small_batch_input_grad_matches_finite_differences(w_shape, params, split_work):
    rng = make_rng(5)
    arrays = dict(input=rng.uniform(-1, 1, (1, 5, 7, 6)), weight=rng.uniform(-1, 1, w_shape),
                  bias=rng.uniform(-1, 1, w_shape[0]))

    def f(input, weight, bias):
        return fl.conv2d(input, weight, bias, algo="im2col", backend="cpu", **params)

    dy = rng.uniform(-1, 1, f(**arrays).shape)
    with fl.threads(2):
        runs = [fl.conv2d_backward(dy, arrays["input"], arrays["weight"], algo="im2col", backend="cpu", **params)
                for _ in range(2)]
    for a, c in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, c)
    for name, analytic in zip(("input", "weight", "bias"), runs[0]):
        assert_grad_matches(analytic, numeric_grad(f, arrays, name, dy), err_msg=name)


@pytest.mark.parametrize("algo", ALGOS)
def test_writes_into_out_buffers(algo):
    rng = make_rng(3)
    x, w, b = rng.uniform(-1, 1, (2, 4, 7, 7)), rng.uniform(-1, 1, (6, 4, 3, 3)), rng.uniform(-1, 1, 6)
    y_out = np.full((2, 6, 5, 5), np.nan)  # NaN everywhere: any cell left unwritten shows
    y = fl.conv2d(x, w, b, algo=algo, backend="cpu", out=y_out)
    assert y is y_out
    assert_close(y, ref.conv2d(x, w, b), np.float64, terms=37)
    dy = rng.uniform(-1, 1, y.shape)
    outs = (np.full(x.shape, np.nan), np.full(w.shape, np.nan), np.full(6, np.nan))
    grads = fl.conv2d_backward(dy, x, w, algo=algo, backend="cpu", out=outs)
    for got, buf, want in zip(grads, outs, ref.conv2d_backward(dy, x, w)):
        assert got is buf
        assert_close(got, want, np.float64, terms=50)
    # A partial tuple: the None entries are allocated.
    dx, dw, db = fl.conv2d_backward(dy, x, w, algo=algo, backend="cpu", out=(None, outs[1], None))
    assert dw is outs[1]
    assert_close(dx, ref.conv2d_backward(dy, x, w)[0], np.float64, terms=54)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize(
    "x_shape, w_shape, params",
    [
        ((0, 3, 5, 5), (4, 3, 3, 3), {}),             # empty batch
        ((2, 3, 5, 5), (0, 3, 3, 3), {}),             # no filters
        ((2, 0, 5, 5), (4, 0, 3, 3), {}),             # no input channels: y = b
        ((2, 3, 0, 4), (4, 3, 1, 1), dict(padding=1)),  # no rows, only padding
    ],
)
def test_empty_sizes(algo, x_shape, w_shape, params):
    rng = make_rng(4)
    x, w, b = rng.uniform(-1, 1, x_shape), rng.uniform(-1, 1, w_shape), rng.uniform(-1, 1, w_shape[0])
    y = fl.conv2d(x, w, b, algo=algo, backend="cpu", **params)
    np.testing.assert_array_equal(y, ref.conv2d(x, w, b, **params))
    dy = rng.uniform(-1, 1, y.shape)
    for got, want in zip(fl.conv2d_backward(dy, x, w, algo=algo, backend="cpu", **params),
                         ref.conv2d_backward(dy, x, w, **params)):
        assert got.shape == want.shape
        assert_close(got, want, np.float64, terms=max(1, dy.size))


def _run(algo, threads, x, w, b, dy, params):
    with fl.threads(threads):
        return (fl.conv2d(x, w, b, algo=algo, backend="cpu", **params),
                *fl.conv2d_backward(dy, x, w, algo=algo, backend="cpu", **params))


@pytest.mark.parametrize("algo", ("im2col", "direct"))
def test_reproducible_and_thread_count_independent(algo, split_work):
    """Bit for bit the same on a second run; the same across thread counts except dw and db
    (im2col's GEMMs for both algorithms, summed per thread) and im2col's y and dx where the thread
    count changes its tiles (images per tile): float32 rounding only."""
    rng = make_rng(5)
    params = dict(padding=1, groups=2)
    x, w, b = (rng.uniform(-1, 1, s).astype(np.float32) for s in ((5, 8, 13, 11), (12, 4, 3, 3), (12,)))
    dy = rng.uniform(-1, 1, (5, 12, 13, 11)).astype(np.float32)
    first = _run(algo, 2, x, w, b, dy, params)
    for a, c in zip(first, _run(algo, 2, x, w, b, dy, params)):
        np.testing.assert_array_equal(a, c)
    one_thread = _run(algo, 1, x, w, b, dy, params)
    g = conv2d_geometry(x.shape, w.shape, **params)
    same_tiles = cpu_conv2d._tiles(g, 1, 4) == cpu_conv2d._tiles(g, 2, 4)
    for name, a, c in zip(("y", "dx", "dw", "db"), first, one_thread):
        if name in ("y", "dx") and (algo == "direct" or same_tiles):
            np.testing.assert_array_equal(a, c, err_msg=name)
        else:
            assert_close(a, c, np.float32, terms=5 * 13 * 11, scale=np.abs(c).max(), err_msg=name)


def test_column_tile_bound_keeps_results():
    """One output row per tile (the smallest tile) gives the same results as the default."""
    rng = make_rng(6)
    x, w = rng.uniform(-1, 1, (2, 8, 10, 9)), rng.uniform(-1, 1, (4, 8, 3, 3))
    dy = rng.uniform(-1, 1, (2, 4, 10, 9))
    y = fl.conv2d(x, w, padding=1, algo="im2col", backend="cpu")
    grads = fl.conv2d_backward(dy, x, w, padding=1, algo="im2col", backend="cpu")
    previous = cpu_conv2d.set_column_tile_bytes(1)
    try:
        assert_close(fl.conv2d(x, w, padding=1, algo="im2col", backend="cpu"), y, np.float64, terms=72)
        for a, c in zip(fl.conv2d_backward(dy, x, w, padding=1, algo="im2col", backend="cpu"), grads):
            assert_close(a, c, np.float64, terms=180)
    finally:
        cpu_conv2d.set_column_tile_bytes(previous)
    with pytest.raises(ValueError, match="nbytes must be an int >= 1, got 0"):
        cpu_conv2d.set_column_tile_bytes(0)


def test_concurrent_callers_keep_their_own_workspaces():
    """Python threads calling at once, with different shapes, each get their own right answer."""
    rng = make_rng(7)
    jobs = []
    for i in range(6):
        x, w = rng.uniform(-1, 1, (2, 4 + i, 9 + i, 9)), rng.uniform(-1, 1, (3, 4 + i, 3, 3))
        jobs.append((x, w, ref.conv2d(x, w, padding=1)))
    errors = []

    def work(x, w, want):
        for _ in range(20):
            got = fl.conv2d(x, w, padding=1, algo="im2col", backend="cpu")
            if not np.allclose(got, want, rtol=1e-12, atol=1e-12):
                errors.append(float(np.abs(got - want).max()))

    workers = [threading.Thread(target=work, args=job) for job in jobs]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert errors == []


def test_auto_heuristic():
    """With AVX-512 or AVX2: winograd, forward and backward, for 3x3 stride-1 kernels with at
    least WINOGRAD_MIN_TILES output tiles and WINOGRAD_MIN_CHANNELS channels a group each way (the
    backward with dx and paddings up to 2), on AMD's AVX-512 also from WINOGRAD_FEW_TILES tiles
    and WINOGRAD_FEW_TILES_MIN_FLOPS on (the backward from WINOGRAD_FEW_TILES_BACKWARD_MIN_FLOPS), both with at most
    WINOGRAD_MAX_FILTER_VALUES_PER_TILE transformed filter values a tile. Else, forward with AVX-512: direct for kernels larger
    than 1x1 from DIRECT_MIN_FLOPS on and up to DIRECT_MAX_TAPS taps, DIRECT_MIN_PLANES images
    (Intel) or DIRECT_MIN_ROWS output rows (AMD; DIRECT_MIN_ROWS_WHOLE_VECTORS where the rows are
    whole vectors) and DIRECT_MIN_WIDTH columns; on AMD, narrower
    planes by the filter-vector kernel from FVEC_MIN_FLOPS on, with FVEC_MIN_FILTERS filters;
    im2col for 1x1, tiny, long, narrow and few-image convolutions;
    with AVX2: direct forward for short contractions (DIRECT_MAX_TAPS["x86-64-v3"]) over at least
    DIRECT_MIN_ROWS output rows, even of one image; im2col otherwise. Backward: im2col (or
    winograd)."""
    FEW = ("winograd", "im2col")  # forward by Winograd on few tiles (AMD's AVX-512), backward im2col
    FEW_BOTH = ("winograd", "winograd")  # from WINOGRAD_FEW_TILES_BACKWARD_MIN_FLOPS: dx by Winograd too
    cases = [  # forward with AVX-512 (Intel, AMD), with AVX2
        ((1, 1, 8, 8), (4, 1, 3, 3), {}, "im2col", "im2col", "im2col"),  # tiny: set-up dominates
        ((32, 3, 32, 32), (32, 3, 3, 3), dict(padding=1), "direct", "direct", "direct"),  # cifar-stem: 3 channels
        ((32, 1, 28, 28), (8, 1, 5, 5), {}, "direct", "direct", "direct"),  # lenet
        ((32, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), "winograd", "winograd", "winograd"),  # resnet-56
        ((8, 256, 14, 14), (256, 256, 3, 3), dict(padding=1), "winograd", "winograd", "winograd"),  # resnet-14: 2304 taps
        ((1, 128, 28, 28), (128, 128, 3, 3), dict(padding=1), "im2col", "winograd", "im2col"),  # one image: 49 tiles
        ((1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), "winograd", "winograd", "winograd"),  # one image: 196 tiles
        ((32, 64, 8, 8), (128, 64, 3, 3), dict(padding=1), "winograd", "winograd", "winograd"),  # VGG's 8x8 stage
        ((32, 16, 32, 32), (16, 16, 3, 3), dict(padding=1), "winograd", "winograd", "winograd"),  # 16 channels
        ((32, 64, 8, 8), (128, 16, 3, 3), dict(padding=1, groups=4), "winograd", "winograd", "winograd"),  # 16 a group
        ((32, 64, 8, 8), (128, 8, 3, 3), dict(padding=1, groups=8), "im2col", "im2col", "im2col"),  # 8 a group, 8 wide
        ((32, 8, 16, 16), (16, 8, 3, 3), dict(padding=1), "direct", "direct", "direct"),  # 8 input channels: 72 taps
        ((16, 64, 56, 56), (128, 64, 1, 1), dict(stride=2), "im2col", "im2col", "im2col"),  # down-1x1
        ((8, 64, 56, 56), (64, 64, 1, 1), {}, "im2col", "im2col", "im2col"),  # pointwise
        ((8, 64, 56, 56), (64, 64, 3, 3), dict(stride=2, padding=1), "direct", "direct", "im2col"),  # stride 2: 576 taps
        ((1, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3), "im2col", "direct", "direct"),  # ResNet stem, batch 1
        ((1, 16, 64, 64), (32, 16, 3, 3), dict(padding=1), "winograd", "winograd", "winograd"),  # batch 1: 256 tiles
        ((1, 8, 64, 64), (32, 8, 3, 3), dict(padding=1), "im2col", "direct", "direct"),  # batch 1, 64 rows, 72 taps
        ((1, 3, 32, 32), (32, 3, 3, 3), dict(padding=1), "im2col", "direct", "im2col"),  # 32 rows of 2 vectors
        ((1, 3, 24, 24), (32, 3, 3, 3), dict(padding=1), "im2col", "im2col", "im2col"),  # 24 rows of 1.5 vectors
        ((1, 32, 16, 16), (64, 32, 3, 3), dict(padding=1), "im2col", FEW, "im2col"),  # batch 1, 16 tiles, 9.4 MFLOP
        ((1, 32, 16, 16), (32, 32, 3, 3), dict(padding=1), "im2col", "im2col", "im2col"),  # 16 tiles, 4.7 MFLOP
        ((1, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), "im2col", "direct", "im2col"),  # narrow: filter vectors
        ((1, 256, 7, 7), (256, 256, 3, 3), dict(padding=1), "im2col", "direct", "im2col"),  # 2.25 MiB of U a tile
        ((1, 256, 14, 14), (256, 256, 3, 3), dict(padding=1), "im2col", FEW_BOTH, "im2col"),  # 16 tiles, 14 wide
        ((1, 512, 14, 14), (512, 512, 3, 3), dict(padding=1), "im2col", "direct", "im2col"),  # 2.25 MiB of U a tile
        ((1, 128, 28, 28), (256, 128, 3, 3), dict(stride=2, padding=1), "im2col", "direct", "im2col"),  # 14 wide
        ((1, 64, 8, 8), (128, 64, 3, 3), dict(padding=1), "im2col", FEW, "im2col"),  # 4 tiles, 9.4 MFLOP
        ((1, 32, 8, 8), (64, 32, 3, 3), dict(padding=1), "im2col", "im2col", "im2col"),  # 4 tiles, 2.4 MFLOP
        ((8, 256, 7, 7), (16, 256, 3, 3), dict(padding=1), "im2col", FEW_BOTH, "im2col"),  # 16 filters, 32 tiles, 29 MFLOP
        ((8, 128, 7, 7), (16, 128, 3, 3), dict(padding=1), "im2col", FEW, "im2col"),  # 32 tiles, 14 MFLOP
    ]
    isa = cpu_conv2d.rule_isa()
    for x_shape, w_shape, params, forward_v4, forward_v4_amd, forward_v3 in cases:
        g = conv2d_geometry(x_shape, w_shape, **params)
        assert g.flops >= cpu_conv2d.DIRECT_MIN_FLOPS or forward_v4 == "im2col"
        x, w = np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32)
        dy = np.zeros(g.y_shape, np.float32)
        args = (params.get("stride", 1), params.get("padding", 0), 1, params.get("groups", 1), "zeros")
        problems = (CONV2D.forward(x, w, None, *args), CONV2D.backward(dy, x, w, *args),
                    CONV2D.backward(dy, x, w, *args, input_grad=False))
        expected = {isa: list(forward) + ["im2col"] if isinstance(forward, tuple)
                    else [forward, forward if forward == "winograd" else "im2col", "im2col"]
                    for isa, forward in (("x86-64-v4", forward_v4), ("x86-64-v4-amd", forward_v4_amd),
                                         ("x86-64-v3", forward_v3))}
        expected["baseline"] = ["im2col"] * 3
        assert [_dispatch.select_kernel(CONV2D, p, None).algo for p in problems] == expected[isa], x_shape
        for other in expected:
            assert [cpu_conv2d.choose_algo(p, other) for p in problems] == expected[other], (x_shape, other)
    assert isa in ("x86-64-v4", "x86-64-v4-amd", "x86-64-v3", "baseline")
    # the winograd backward's dw: by Winograd on many tiles, by im2col's GEMMs on few
    assert not cpu_conv2d._winograd_weight_grad_wins(conv2d_geometry((1, 256, 14, 14), (256, 256, 3, 3), padding=1))
    assert cpu_conv2d._winograd_weight_grad_wins(conv2d_geometry((32, 64, 16, 16), (64, 64, 3, 3), padding=1))
    # the winograd backward declines paddings past 2: auto does not ask it
    g = conv2d_geometry((32, 64, 28, 28), (64, 64, 3, 3), padding=3)
    assert [_auto(g, d, "x86-64-v3") for d in ("forward", "backward")] == ["winograd", "im2col"]
    # dilated: by the phases' undilated rule (dilated-256-n4: 16 phase images of 14x14), where they tile x
    g = conv2d_geometry((4, 256, 28, 28), (256, 256, 3, 3), padding=2, dilation=2)
    assert [_auto(g, d, "x86-64-v3") for d in ("forward", "backward")] == ["winograd", "winograd"]
    g = conv2d_geometry((4, 256, 27, 27), (256, 256, 3, 3), padding=2, dilation=2)
    assert [_auto(g, d, "x86-64-v3") for d in ("forward", "backward")] == ["im2col", "im2col"]


def _auto(g, direction, isa=None):
    """The cpu "auto" choice for a problem of geometry ``g`` (no arrays: the choice reads sizes only)
    on instruction set ``isa`` (default: this CPU's)."""
    from fastlayers.ops._spec import Problem

    return cpu_conv2d.choose_algo(Problem(direction, g, {}, ()), isa)


def test_auto_in_a_training_step_leaves_few_outputs_to_im2col(monkeypatch):
    """Inside ``weights_change`` (a training step: weights derived again on every call), Winograd
    and the direct kernels that keep packed filters need TRAINING_MIN_OUTPUTS output positions
    over the batch; outside, and on larger batches, the choice is the usual one; one image's
    filter-vector forward on FVEC_UNPACKED_MIN_WEIGHT_BYTES of weights keeps no packing and stays."""
    isa = "x86-64-v4-amd"
    few = conv2d_geometry((1, 128, 16, 16), (128, 128, 3, 3), padding=1)  # 256 outputs, 16 tiles
    many = conv2d_geometry((2, 128, 16, 16), (128, 128, 3, 3), padding=1)  # 512 outputs
    wide = conv2d_geometry((1, 512, 7, 7), (512, 512, 3, 3), padding=2, dilation=2)  # 9 MiB of weights
    outside = [_auto(g, d, isa) for g in (few, many) for d in ("forward", "backward")]
    assert outside == ["winograd", "winograd", "winograd", "winograd"]
    assert _auto(wide, "forward", isa) == "direct"
    with _dispatch.weights_change():
        assert _dispatch.weights_changing()
        assert [_auto(g, d, isa) for g in (few, many) for d in ("forward", "backward")] == [
            "im2col", "im2col", "winograd", "winograd"]
        assert _auto(wide, "forward", isa) == "direct"
        monkeypatch.setattr(cpu_conv2d, "FVEC_UNPACKED_MIN_WEIGHT_BYTES", 1 << 40)  # now a kept packing
        assert _auto(wide, "forward", isa) == "im2col"
    assert not _dispatch.weights_changing()
    # The choice is remembered per setting: the same problem in and out of a training step.
    x, w = np.ones((1, 128, 16, 16), np.float32), np.ones((128, 128, 3, 3), np.float32)
    problem = CONV2D.forward(x, w, None, 1, 1, 1, 1, "zeros")
    monkeypatch.setattr(cpu_conv2d, "rule_isa", lambda: isa)
    _dispatch._choices.clear()
    with _dispatch.weights_change():
        assert _dispatch.select_kernel(CONV2D, problem, "cpu").algo == "im2col"
    assert _dispatch.select_kernel(CONV2D, problem, "cpu").algo == "winograd"
    _dispatch._choices.clear()


def test_auto_runs_an_algorithm_that_fits():
    """auto weighs scratch: the direct loops' row copies grow with the stride (issue 13's case: 0.63 s and
    ~400 MiB kept cached, where im2col takes 1 ms), im2col's gemm sizes are C ints."""
    wide_stride = conv2d_geometry((8, 8, 3, 262144), (128, 8, 3, 3), stride=(1, 65536))
    assert cpu_conv2d._direct_scratch_bytes(wide_stride, "forward") > cpu_conv2d.DIRECT_MAX_SCRATCH_BYTES
    assert _auto(wide_stride, "forward") == "im2col"
    # An image of 2**31 + 2**21 cells: H*W past a C int for im2col; direct copies a few rows of it.
    tall = conv2d_geometry((1, 1, 2049, 2**20), (8, 1, 3, 3))
    for isa in ("x86-64-v4", "x86-64-v4-amd", "x86-64-v3", "baseline"):  # whatever its speed, the one that runs
        assert [_auto(tall, d, isa) for d in ("forward", "backward")] == ["direct", "direct"]
    # Too large for both: direct's error, suggesting nothing.
    both = conv2d_geometry((1, 1, 2**16, 2**16), (1, 1, 3, 3), stride=(1, 2**20), dilation=(1, 2**20),
                           padding=(0, 2**20))
    assert _auto(both, "forward") == "direct"
    with pytest.raises(ValueError, match="algo='direct' would need") as info:
        cpu_conv2d._check_fits(both, "direct", "forward")
    assert "use algo" not in str(info.value)


def test_cpu_is_the_default_backend_for_numpy_inputs():
    x = np.zeros((1, 1, 3, 3), np.float32)
    forward = CONV2D.forward(x, x, None, 1, 0, 1, 1, "zeros")
    backward = CONV2D.backward(np.zeros((1, 1, 1, 1), np.float32), x, x, 1, 0, 1, 1, "zeros")
    for problem in (forward, backward):
        assert _dispatch.select_kernel(CONV2D, problem, None).backend == "cpu"


# ---------------------------------------------------------------------------- depthwise


@st.composite
def depthwise_configs(draw, wide=False):
    """One input channel per group (groups == C), a channel multiplier of 1 to 3 filters per
    group, every kernel size, stride, padding and dilation of conv2d_configs, wide rows too (the
    vectorised rows and their tails; with ``wide`` only those, mostly past a vector of outputs:
    what the blocked loops take)."""
    C = draw(st.integers(1, 6))
    F = C * draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.sampled_from(["same", "valid"])))
    stride = 1 if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = (0, 0) if isinstance(padding, str) else padding
    H = max(1, dilation[0] * (KH - 1) + 1 - 2 * pads[0]) + draw(st.integers(0, 6))
    W = max(1, dilation[1] * (KW - 1) + 1 - 2 * pads[1]) + draw(st.sampled_from([3, 17, 40] if wide else [0, 3, 17, 40]))
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=C)
    return (draw(st.integers(1, 3)), C, H, W), (F, 1, KH, KW), params


@st.composite
def same_3x3_configs(draw):
    """MobileNet's layer, what the "3x3" loops take: a 3x3 filter, stride 1, padding 1, a
    multiplier of 1 or 2 (whose backward takes other loops), planes from 1 row and rows from 1
    column (narrower than half a vector: other loops) through whole and cut vectors of both
    dtypes, the narrow kernels' (under a 32-byte vector) too."""
    C = draw(st.integers(1, 5))
    H, W = draw(st.integers(1, 9)), draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 12, 14, 16, 17, 23, 40]))
    params = dict(padding=1, groups=C)
    return (draw(st.integers(1, 3)), C, H, W), (C * draw(st.integers(1, 2)), 1, 3, 3), params


DEPTHWISE_LOOP_KINDS = ("3x3", "blocked", "padded", "rows")


@contextlib.contextmanager
def depthwise_loops(loops):
    """Run the depthwise kernel's ``loops`` wherever they apply (see _depthwise_loops), the row
    loops elsewhere; the padded loops (a forward) whatever their planes' size."""
    saved = cpu_conv2d.DEPTHWISE_PADDED_MAX_BYTES, cpu_conv2d.DEPTHWISE_LOOPS
    cpu_conv2d.DEPTHWISE_PADDED_MAX_BYTES, cpu_conv2d.DEPTHWISE_LOOPS = 1 << 40, (loops, "rows")
    try:
        yield
    finally:
        cpu_conv2d.DEPTHWISE_PADDED_MAX_BYTES, cpu_conv2d.DEPTHWISE_LOOPS = saved


@pytest.mark.parametrize("loops", DEPTHWISE_LOOP_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(["C", "F", "strided"]))
def test_depthwise_matches_reference(loops, dtype, data, seed, layout):
    """Every kind of plane loops against the reference: the "3x3" loops on the shapes they take,
    the others on any depthwise problem."""
    strategy = {"3x3": same_3x3_configs(), "blocked": depthwise_configs(wide=True)}.get(loops, depthwise_configs())
    x_shape, w_shape, params = data.draw(strategy)
    rng = make_rng(seed)
    x, w = _uniform(rng, x_shape, dtype, layout), _uniform(rng, w_shape, dtype, layout)
    b = _uniform(rng, (w_shape[0],), dtype)
    dy = _uniform(rng, conv2d_geometry(x_shape, w_shape, **params).y_shape, dtype, layout)
    with depthwise_loops(loops):
        _check_against_reference(x, w, b, dy, params, "depthwise", dtype, f"depthwise {x_shape} {w_shape} {params}")


@pytest.mark.parametrize("x_shape, w_shape, params", [
    ((2, 3, 6, 7), (3, 1, 3, 3), dict(padding=1, groups=3)),  # 3x3: a whole and a cut vector of doubles
    ((2, 2, 5, 9), (2, 1, 3, 3), dict(padding=1, groups=2)),
    ((2, 2, 7, 6), (4, 1, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    ((1, 2, 5, 6), (6, 1, 3, 2), dict(padding=(2, 1), dilation=(2, 1), groups=2)),  # multiplier 3, stride 1
    ((1, 2, 4, 11), (2, 1, 2, 4), dict(padding=(0, 3), groups=2)),  # blocked: taps past the plane's right
    ((2, 2, 7, 13), (4, 1, 3, 3), dict(stride=2, padding=1, groups=2)),  # blocked at stride 2 (dx by rows)
    ((1, 2, 8, 17), (2, 1, 2, 3), dict(stride=(1, 3), padding=(1, 2), dilation=(2, 1), groups=2)),
])
@pytest.mark.parametrize("loops", DEPTHWISE_LOOP_KINDS)
def test_depthwise_gradients_match_finite_differences(loops, x_shape, w_shape, params):
    rng = make_rng(7)
    arrays = dict(input=rng.uniform(-1, 1, x_shape), weight=rng.uniform(-1, 1, w_shape),
                  bias=rng.uniform(-1, 1, w_shape[0]))

    def f(input, weight, bias):
        return fl.conv2d(input, weight, bias, algo="depthwise", backend="cpu", **params)

    with depthwise_loops(loops):
        dy = rng.uniform(-1, 1, f(**arrays).shape)
        dx, dw, db = fl.conv2d_backward(dy, arrays["input"], arrays["weight"], algo="depthwise", backend="cpu",
                                        **params)
        for name, analytic in (("input", dx), ("weight", dw), ("bias", db)):
            assert_grad_matches(analytic, numeric_grad(f, arrays, name, dy), err_msg=name)


@pytest.mark.parametrize("shape, w_shape, padding, stride", [
    ((5, 8, 33, 32), (16, 1, 3, 3), 1, 1),  # forward 3x3, backward (multiplier 2) blocked
    ((5, 8, 33, 32), (8, 1, 3, 3), 1, 1),  # 3x3 both ways
    ((5, 8, 9, 11), (8, 1, 5, 5), 2, 1),  # blocked
    ((5, 8, 33, 32), (8, 1, 3, 3), 1, 2),  # blocked at stride 2
    ((5, 8, 7, 7), (8, 1, 3, 3), 1, 1),  # 3x3 on 16-byte vectors (rows narrower than 8 floats)
    ((5, 8, 7, 7), (8, 1, 3, 3), 1, 2),  # blocked at stride 2 on 16-byte vectors
    ((5, 8, 7, 3), (8, 1, 3, 3), 1, 1),  # padded forward (rows of 3 floats)
])
def test_depthwise_is_thread_count_independent(shape, w_shape, padding, stride, split_work):
    rng = make_rng(8)
    params = dict(padding=padding, stride=stride, groups=shape[1])
    x, w, b = (rng.uniform(-1, 1, s).astype(np.float32) for s in (shape, w_shape, (w_shape[0],)))
    dy = rng.uniform(-1, 1, conv2d_geometry(shape, w_shape, **params).y_shape).astype(np.float32)
    for a, c in zip(_run("depthwise", 2, x, w, b, dy, params), _run("depthwise", 1, x, w, b, dy, params)):
        np.testing.assert_array_equal(a, c)


def test_depthwise_auto_picks_it_and_its_loops():
    """auto: depthwise for one input channel per group, forward and backward, on large planes and
    small; its loops by the rule of _depthwise_loops."""
    rng = make_rng(8)
    params = dict(padding=1, groups=8)
    x, w, b = (rng.uniform(-1, 1, s).astype(np.float32) for s in ((5, 8, 33, 32), (16, 1, 3, 3), (16,)))
    dy = rng.uniform(-1, 1, (5, 16, 33, 32)).astype(np.float32)
    args = (1, 1, 1, 8, "zeros")
    chosen = [_dispatch.select_kernel(CONV2D, p, None).algo
              for p in (CONV2D.forward(x, w, b, *args), CONV2D.backward(dy, x, w, *args),
                        CONV2D.forward(x[:, :, :8, :8], w, b, *args), CONV2D.backward(dy[:, :, :8, :8], x[:, :, :8, :8], w, *args))]
    assert chosen == ["depthwise"] * 4, chosen
    wide = conv2d_geometry((1, 8, 112, 112), (8, 1, 3, 3), padding=1, groups=8)  # MobileNet's first planes
    small = conv2d_geometry((1, 8, 14, 14), (8, 1, 3, 3), padding=1, groups=8)
    narrow = conv2d_geometry((1, 8, 7, 7), (8, 1, 3, 3), padding=1, groups=8)
    cases = [(wide, 4, "forward", "3x3"), (wide, 4, "backward", "3x3"), (small, 4, "backward", "3x3"),
             (conv2d_geometry((1, 8, 112, 112), (8, 1, 3, 3), stride=2, padding=1, groups=8), 4, "forward", "blocked"),
             (conv2d_geometry((1, 8, 112, 112), (8, 1, 3, 3), stride=2, padding=1, groups=8), 4, "backward", "blocked"),
             (conv2d_geometry((1, 8, 14, 14), (8, 1, 3, 3), stride=2, padding=1, groups=8), 4, "forward", "blocked"),
             (conv2d_geometry((1, 8, 5, 5), (8, 1, 3, 3), stride=2, padding=1, groups=8), 4, "forward", "rows"),
             (narrow, 4, "forward", "3x3"), (narrow, 8, "backward", "3x3"),
             (conv2d_geometry((1, 8, 7, 3), (8, 1, 3, 3), padding=1, groups=8), 4, "forward", "padded"),
             (conv2d_geometry((1, 8, 14, 14), (16, 1, 3, 3), padding=1, groups=8), 4, "backward", "blocked"),
             (conv2d_geometry((1, 8, 14, 14), (8, 1, 5, 5), padding=2, groups=8), 4, "forward", "blocked"),
             (conv2d_geometry((1, 8, 14, 14), (8, 1, 3, 3), padding=0, groups=8), 4, "forward", "blocked")]
    assert [cpu_conv2d._depthwise_loops(g, itemsize, d)[0] for g, itemsize, d, _ in cases] == [c[3] for c in cases]


def test_depthwise_declines_several_channels_per_group():
    x, w = np.ones((1, 4, 5, 5)), np.ones((4, 2, 3, 3))
    with pytest.raises(NotImplementedError, match="one input channel per group"):
        fl.conv2d(x, w, groups=2, algo="depthwise")


def test_depthwise_non_finite_weights_give_the_references_nans():
    """Padding taps are skipped, not multiplied by zero: with a NaN weight the reference's border
    outputs are NaN, so such calls run im2col."""
    rng = make_rng(9)
    x, w = rng.uniform(-1, 1, (1, 2, 4, 4)), rng.uniform(-1, 1, (2, 1, 3, 3))
    w[0, 0, 0, 0] = np.nan
    y = fl.conv2d(x, w, padding=1, groups=2, algo="depthwise")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref.conv2d(x, w, padding=1, groups=2)))
    dy = rng.uniform(-1, 1, y.shape)
    dy[0, 1, 0, 0] = np.inf
    for got, want in zip(fl.conv2d_backward(dy, x, w, padding=1, groups=2, algo="depthwise"),
                         ref.conv2d_backward(dy, x, w, padding=1, groups=2)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


@pytest.mark.parametrize("x_shape, w_shape, params", [
    ((2, 2, 5, 9), (2, 1, 3, 3), dict(padding=1, groups=2)),
    ((2, 2, 4, 6), (2, 1, 3, 3), dict(padding=1, groups=2)),  # 16-byte vectors of floats
    ((1, 2, 6, 21), (4, 1, 3, 2), dict(padding=(1, 0), groups=2)),
    ((1, 2, 7, 23), (2, 1, 3, 3), dict(stride=2, padding=1, groups=2)),
])
@pytest.mark.parametrize("loops", DEPTHWISE_LOOP_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_non_finite_inputs_give_the_references_infinities_and_nans(loops, dtype, x_shape, w_shape, params):
    """Infinite and NaN inputs: each output and gradient is infinite or NaN where the reference's
    is (a vector lane that overlaps its neighbour, or a padding row, is no term, not zero times
    the input)."""
    rng = make_rng(10)
    x, w = rng.uniform(-1, 1, x_shape).astype(dtype), rng.uniform(-1, 1, w_shape).astype(dtype)
    x[0, 0, -1, -1], x[0, 1, 0, 2], x[-1, -1, -1, 0] = np.inf, -np.inf, np.nan
    dy = rng.uniform(-1, 1, conv2d_geometry(x_shape, w_shape, **params).y_shape).astype(dtype)
    with depthwise_loops(loops):
        got = (fl.conv2d(x, w, algo="depthwise", **params),) + fl.conv2d_backward(dy, x, w, algo="depthwise",
                                                                                   **params)
    want = (ref.conv2d(x, w, **params),) + ref.conv2d_backward(dy, x, w, **params)
    for name, a, b in zip(("y", "dx", "dw", "db"), got, want):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(b), err_msg=name)
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b), err_msg=name)


# ---------------------------------------------------------------------------- winograd F(4x4, 3x3)


@st.composite
def winograd_configs(draw):
    """3x3 kernels at stride 1 and dilation 1 (what F(4x4, 3x3) takes): any channels and groups,
    paddings 0..2 (what its backward takes; odd and even output sizes, tiles cut at the edges),
    planes from 1x1 up."""
    groups = draw(st.integers(1, 3))
    C, F = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 4))
    padding = draw(st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.sampled_from(["same", "valid"])))
    pads = (1, 1) if padding == "same" else (0, 0) if padding == "valid" else padding
    H = max(1, 3 - 2 * pads[0]) + draw(st.integers(0, 9))
    W = max(1, 3 - 2 * pads[1]) + draw(st.sampled_from([0, 1, 2, 3, 4, 19, 36]))
    return (draw(st.integers(1, 3)), C, H, W), (F, C // groups, 3, 3), dict(padding=padding, groups=groups)


@st.composite
def dilated_winograd_configs(draw):
    """Dilated 3x3 kernels at stride 1 that Winograd takes through the dilation phases: planes
    and paddings multiples of the dilation (each phase padded by 0..2, what the backward takes)."""
    groups = draw(st.integers(1, 2))
    C, F = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(2, 3))
    ph, pw = dh * draw(st.integers(0, 2)), dw * draw(st.integers(0, 2))
    H = dh * (max(1, 3 - 2 * ph // dh) + draw(st.integers(0, 5)))
    W = dw * (max(1, 3 - 2 * pw // dw) + draw(st.integers(0, 9)))
    return (draw(st.integers(1, 2)), C, H, W), (F, C // groups, 3, 3), dict(padding=(ph, pw), dilation=(dh, dw),
                                                                            groups=groups)


def _assert_winograd_close(actual, expected, dtype, K, err_msg):
    """Elementwise budget of a Winograd result summing K products: that of a direct sum of K + 1
    terms times 9 for the transforms' growth (B^T's rows sum to 10 in magnitude, A^T's to 19, but
    the rounding errors they spread have random signs): over 600 random configurations of
    winograd_configs the worst error measured 0.9 of the plain K + 1 budget."""
    _assert_conv2d_close(actual, expected, dtype, terms=9 * (K + 1), err_msg=err_msg)


WINOGRAD_WEIGHT_GRADS = ("dw by Winograd", "dw by im2col")


def _winograd_weight_grad(mp, weight_grad):
    """Make the Winograd backward take dw by Winograd (as on many tiles) or by im2col's GEMMs (as
    on few), whatever the problem's tiles."""
    mp.setattr(cpu_conv2d, "_winograd_weight_grad_wins", lambda g: weight_grad == "dw by Winograd")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_grad", WINOGRAD_WEIGHT_GRADS)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.one_of(winograd_configs(), dilated_winograd_configs()), seed=st.integers(0, 2**32 - 1),
       layout=st.sampled_from(["C", "F", "strided", "unaligned"]), bias=st.booleans())
def test_winograd_matches_reference(dtype, weight_grad, config, seed, layout, bias):
    """Forward and backward (dx by Winograd, dw by Winograd or by im2col) against the float64
    reference; dilated convolutions by their dilation phases (ops.conv2d.dilation_phases),
    within the undilated budgets."""
    with pytest.MonkeyPatch.context() as mp:
        _winograd_weight_grad(mp, weight_grad)
        _check_winograd_against_reference(dtype, config, seed, layout, bias)


def _check_winograd_against_reference(dtype, config, seed, layout, bias):
    x_shape, w_shape, params = config
    rng = make_rng(seed)
    x, w = _uniform(rng, x_shape, dtype, layout), _uniform(rng, w_shape, dtype, layout)
    b = _uniform(rng, (w_shape[0],), dtype) if bias else None
    g = conv2d_geometry(x_shape, w_shape, **params)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y = fl.conv2d(x, w, b, algo="winograd", **params)
    assert y.dtype == dtype
    expected = ref.conv2d(x64, w64, None if b is None else b.astype(np.float64), **params)
    _assert_winograd_close(y, expected, dtype, g.K, f"y {x_shape} {w_shape} {params}")
    dy = _uniform(rng, g.y_shape, dtype, layout)
    dx, dw, db = fl.conv2d_backward(dy, x, w, algo="winograd", **params)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(dy.astype(np.float64), x64, w64, **params)
    assert dx.dtype == dtype
    _assert_winograd_close(dx, dx_ref, dtype, 9 * g.Fg, f"dx {x_shape} {w_shape} {params}")
    # dw sums N * OH * OW products per weight, transformed: over 600 random configurations its
    # worst error measured 0.35 of a direct sum's budget
    _assert_conv2d_close(dw, dw_ref, dtype, terms=g.N * g.OH * g.OW, err_msg="dw")
    _assert_conv2d_close(db, db_ref, dtype, terms=g.N * g.OH * g.OW, err_msg="db")
    _, dw_only, _ = fl.conv2d_backward(dy, x, w, algo="winograd", input_grad=False, **params)
    np.testing.assert_array_equal(dw_only, dw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_grad", WINOGRAD_WEIGHT_GRADS)
@pytest.mark.parametrize("config", [
    ((1, 33, 8, 8), (40, 33, 3, 3), dict(padding=1)),  # channels and filters over 2 vectors: 3 blocks each
    ((2, 16, 5, 19), (17, 16, 3, 3), dict(padding=(0, 2))),  # whole vectors of channels, one filter past
    ((3, 36, 7, 6), (34, 18, 3, 3), dict(padding=(2, 1), groups=2)),  # 18 a group, 17 filters
    ((1, 20, 16, 16), (48, 20, 3, 3), dict(padding="same")),  # batch 1, one tile row of a task for two
])
def test_winograd_vector_blocks_of_channels_and_filters(dtype, weight_grad, config):
    """The transforms take channels and filters in a vector's lanes (16 floats, 8 doubles): counts
    over several vectors, with a partial last one (its lanes past a group's channels or filters
    zeros or never stored), against the reference, forward and backward."""
    with pytest.MonkeyPatch.context() as mp:
        _winograd_weight_grad(mp, weight_grad)
        _check_winograd_against_reference(dtype, config, 14, "C", True)


@pytest.mark.parametrize("pads", [(0, 2, 1, 0), (2, 0, 0, 2), (1, 2, 2, 1)])
def test_winograd_takes_asymmetric_padding(pads):
    """The kernels take (top, bottom, left, right) paddings as the geometry holds them (the API
    makes 3x3 paddings symmetric; the data gradient's geometry pads by 2 - p a side): against the
    reference on the explicitly padded input."""
    rng = make_rng(13)
    x, w = rng.uniform(-1, 1, (2, 4, 7, 9)), rng.uniform(-1, 1, (6, 2, 3, 3))
    pt, pb, pl, pr = pads
    g = replace(conv2d_geometry(x.shape, w.shape, groups=2), OH=7 + pt + pb - 2, OW=9 + pl + pr - 2, pad_top=pt,
                pad_bottom=pb, pad_left=pl, pad_right=pr)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    y = np.empty(g.y_shape)
    cpu_conv2d.winograd_forward(x, w, None, g, (y,))
    _assert_winograd_close(y, ref.conv2d(xp, w, groups=2), np.float64, g.K, "y")
    dy = rng.uniform(-1, 1, g.y_shape)
    outs = (np.empty(x.shape), np.empty(w.shape), np.empty(6))
    cpu_conv2d.winograd_backward(dy, x, w, g, outs)
    dxp = ref.conv2d_backward(dy, xp, w, groups=2)[0]
    _assert_winograd_close(outs[0], dxp[:, :, pt:pt + 7, pl:pl + 9], np.float64, 9 * g.Fg, "dx")
    _assert_conv2d_close(outs[1], ref.conv2d_backward(dy, xp, w, groups=2)[1], np.float64, g.N * g.OH * g.OW,
                         err_msg="dw")


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pads=st.tuples(*[st.integers(0, 3)] * 4), H=st.integers(1, 10), W=st.integers(1, 13),
       N=st.integers(1, 3), band=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_winograd_forward_over_paddings_and_bands(dtype, pads, H, W, N, band, seed):
    """The transforms read whole input rows into lines and take a tile's columns 4 and 5 from
    the next tile, but a tile row's last tile's from x: against the reference on the explicitly
    padded input, for (top, bottom, left, right) paddings up to 3 and tasks of 1 to 12 tiles (a
    task's tile rows span images, a row's last tile anywhere in it)."""
    pt, pb, pl, pr = pads
    if H + pt + pb < 3 or W + pl + pr < 3:
        return
    rng = make_rng(seed)
    x, w = _uniform(rng, (N, 3, H, W), dtype, "C"), _uniform(rng, (4, 3, 3, 3), dtype, "C")
    b = _uniform(rng, (4,), dtype)
    g = replace(conv2d_geometry(x.shape, w.shape, padding=3), OH=H + pt + pb - 2, OW=W + pl + pr - 2, pad_top=pt,
                pad_bottom=pb, pad_left=pl, pad_right=pr)
    y = np.empty(g.y_shape, dtype)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("_WINOGRAD_TILES", "_WINOGRAD_MIN_TILES"):
            mp.setattr(cpu_conv2d, name, band)
        cpu_conv2d.winograd_forward(x, w, b, g, (y,))
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    _assert_winograd_close(y, ref.conv2d(xp, w.astype(np.float64), b.astype(np.float64)), dtype, g.K,
                           f"{x.shape} {pads} {band}")


def test_winograd_declines_dilations_whose_phases_do_not_tile_the_input():
    x, w = np.zeros((1, 2, 9, 8)), np.zeros((2, 2, 3, 3))
    with pytest.raises(NotImplementedError, match="multiples of the dilation"):
        fl.conv2d(x, w, padding=2, dilation=2, algo="winograd")  # 9 rows: phases of 5 and 4
    with pytest.raises(NotImplementedError, match="multiples of the dilation"):
        fl.conv2d(np.zeros((1, 2, 8, 8)), w, padding=1, dilation=2, algo="winograd")  # padding 1
    assert fl.conv2d(np.zeros((1, 2, 8, 8)), w, padding=1, dilation=2).shape == (1, 2, 6, 6)  # auto: im2col


@pytest.mark.parametrize("x_shape, params", [
    ((2, 4, 6, 5), dict(padding=(2, 1), groups=2)),
    ((2, 4, 6, 9), dict(padding=(2, 3), dilation=(2, 3), groups=2)),  # by the dilation phases
])
@pytest.mark.parametrize("weight_grad", WINOGRAD_WEIGHT_GRADS)
def test_winograd_gradients_match_finite_differences(monkeypatch, weight_grad, x_shape, params):
    _winograd_weight_grad(monkeypatch, weight_grad)
    rng = make_rng(14)
    arrays = dict(input=rng.uniform(-1, 1, x_shape), weight=rng.uniform(-1, 1, (4, 2, 3, 3)),
                  bias=rng.uniform(-1, 1, 4))

    def f(input, weight, bias):
        return fl.conv2d(input, weight, bias, algo="winograd", **params)

    dy = rng.uniform(-1, 1, f(**arrays).shape)
    dx, dw, db = fl.conv2d_backward(dy, arrays["input"], arrays["weight"], algo="winograd", **params)
    _, dw_only, _ = fl.conv2d_backward(dy, arrays["input"], arrays["weight"], algo="winograd", input_grad=False,
                                       **params)
    for name, analytic in (("input", dx), ("weight", dw), ("bias", db), ("weight", dw_only)):
        assert_grad_matches(analytic, numeric_grad(f, arrays, name, dy), err_msg=name)


# The float32 normwise error bound asserted below (and documented in docs/performance.md): a sum
# of K rounded products with independent rounding errors is off by about sqrt(K) units of
# roundoff u (Higham and Mary 2019); the transforms add a part that does not grow with K (their
# own additions, and the products' errors spread by A's and A^T's coefficients up to 8). Measured
# on the benchmark layers the error of y and dx is (0.85 to 1.16) sqrt(K + 128) u, from 27 to
# 2304 taps, and that of dw (K = N OH OW products a weight) 0.48 to 0.92 of it: the bound is
# 4 sqrt(K + 128) u (im2col's errors stay near 0.1 to 0.25 of it).
def winograd_float32_bound(K):
    return 4 * np.sqrt(K + 128) * np.finfo(np.float32).eps / 2


@pytest.mark.parametrize("x_shape, F", [((2, 3, 32, 32), 32), ((2, 32, 32, 32), 64), ((2, 64, 28, 28), 64),
                                        ((1, 128, 14, 14), 128), ((1, 256, 8, 8), 256)])
def test_winograd_float32_error_within_its_bound(monkeypatch, x_shape, F):
    """Normwise error of y, dx and dw (by Winograd, also on few tiles) against the float64
    reference on the benchmark layers' shapes (fewer images), data drawn as at initialisation."""
    _winograd_weight_grad(monkeypatch, "dw by Winograd")
    rng = make_rng(11)
    C = x_shape[1]
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    exact = ref.conv2d(x64, w64, padding=1)
    error = np.linalg.norm(fl.conv2d(x, w, padding=1, algo="winograd") - exact) / np.linalg.norm(exact)
    assert error <= winograd_float32_bound(9 * C), error
    dy = rng.standard_normal(exact.shape).astype(np.float32)
    exact_grads = ref.conv2d_backward(dy.astype(np.float64), x64, w64, padding=1)[:2]
    grads = fl.conv2d_backward(dy, x, w, padding=1, algo="winograd")[:2]
    for name, got, want, K in zip(("dx", "dw"), grads, exact_grads, (9 * F, x_shape[0] * x_shape[2] * x_shape[3])):
        error = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert error <= winograd_float32_bound(K), (name, error)


def test_winograd_takes_3x3_stride_1_and_backward_paddings_up_to_2():
    x, w = np.ones((1, 2, 6, 6)), np.ones((2, 2, 3, 3))
    with pytest.raises(NotImplementedError, match="3x3 kernels at stride 1"):
        fl.conv2d(x, w, stride=2, algo="winograd")
    with pytest.raises(NotImplementedError, match="3x3 kernels at stride 1"):
        fl.conv2d(x, np.ones((2, 2, 5, 5)), algo="winograd")
    with pytest.raises(NotImplementedError, match="multiples of the dilation"):  # 7 rows: phases of 4 and 3
        fl.conv2d_backward(np.ones((1, 2, 3, 3)), np.ones((1, 2, 7, 7)), w, dilation=2, algo="winograd")
    _assert_winograd_close(fl.conv2d(x, w, padding=3, algo="winograd"), ref.conv2d(x, w, padding=3), np.float64, 18,
                           "forward, padding 3")
    with pytest.raises(NotImplementedError, match="paddings of at most 2 a side"):
        fl.conv2d_backward(np.ones((1, 2, 10, 10)), x, w, padding=3, algo="winograd")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, F, padding", [
    ((1, 16, 8, 8), 40, 1),  # two tile rows in one task: blocks of 32 and 8 filters
    ((1, 24, 16, 13), 64, 1),  # 16x13 output, the tiles cut at the right edge
    ((1, 20, 5, 9), 17, (1, 2)),  # 17 filters: blocks of 16 and 1
    ((2, 16, 4, 4), 48, 0),  # two images' one tile row each
])
def test_winograd_splits_the_filters_of_calls_with_few_tile_rows(x_shape, F, padding, dtype, split_work):
    """Calls whose tile rows make fewer than two tasks (batch 1, small planes) give each task a
    block of the filters: y and the dx that runs the same kernel (its filters are x's channels)
    against the reference, and bit for bit at 1, 2 and 3 threads."""
    g = conv2d_geometry(x_shape, (F, x_shape[1], 3, 3), padding=padding)
    rows, _ = cpu_conv2d._winograd_band(g)
    assert cpu_conv2d._winograd_task_filters(g, rows) < F
    rng = make_rng(sum(x_shape) + F)
    x, w = _uniform(rng, x_shape, dtype, "C"), _uniform(rng, (F, x_shape[1], 3, 3), dtype, "C")
    b, dy = _uniform(rng, (F,), dtype), _uniform(rng, g.y_shape, dtype, "C")
    results = []
    for threads in (1, 2, 3):
        with fl.threads(threads):
            y = fl.conv2d(x, w, b, padding=padding, algo="winograd")
            dx, _, _ = fl.conv2d_backward(dy, x, w, padding=padding, algo="winograd")
        results.append((y, dx))
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    _assert_winograd_close(results[0][0], ref.conv2d(x64, w64, b.astype(np.float64), padding=padding), dtype, g.K,
                           f"y {x_shape} {F}")
    _assert_winograd_close(results[0][1], ref.conv2d_backward(dy64, x64, w64, padding=padding)[0], dtype, F * 9,
                           f"dx {x_shape} {F}")
    for y, dx in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("F, Cg, groups", [(16, 16, 1), (40, 24, 1), (64, 17, 1), (12, 10, 2), (33, 3, 3)])
def test_winograd_data_gradient_filters_read_in_place_equal_a_flipped_copys(dtype, F, Cg, groups):
    """The data gradient's transformed filters, read from w rotated in place (``flipped``), are
    bit for bit those of the rotated, channel-swapped copy transformed as forward filters: over
    whole and partial vector blocks of either channel count, and groups."""
    w = np.random.default_rng(F * Cg).standard_normal((F, Cg, 3, 3)).astype(dtype)
    Fg = F // groups
    copy = np.ascontiguousarray(w.reshape(groups, Fg, Cg, 3, 3)[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4))
    expected = np.empty((groups, 36, Fg, Cg), dtype)
    _winograd.transform_filters(copy.reshape(groups * Cg, Fg, 3, 3), expected, groups, 2)
    for threads in (1, 3):
        U = np.full((groups, 36, Fg, Cg), np.nan, dtype)
        _winograd.transform_filters(w, U, groups, threads, True)
        np.testing.assert_array_equal(U, expected)
    with pytest.raises(ValueError, match=rf"U must be \({groups}, 36, {Fg}, {Cg}\)"):
        _winograd.transform_filters(w, np.empty((groups, 36, Cg + 1, Fg), dtype), groups, 1, True)


def test_winograd_kernel_checks_its_filters_and_workspace():
    x, w = np.ones((1, 16, 8, 8), np.float32), np.ones((32, 16, 3, 3), np.float32)
    g = conv2d_geometry(x.shape, w.shape, padding=1)
    U = cpu_conv2d._winograd_filters(w, g)
    y = np.empty(g.y_shape, np.float32)
    rows, tiles_w = cpu_conv2d._winograd_band(g)
    work = np.empty((2, _winograd.workspace_size(16, 16, rows, tiles_w)), np.float32)
    for filters in (0, 33):  # checked before anything is divided by it
        with pytest.raises(ValueError, match="filters must be from 1 to 32"):
            _winograd.conv2d_forward(x, U, None, y, work, g, rows, filters, 1)
    with pytest.raises(ValueError, match="rows must be at least 1"):
        _winograd.conv2d_forward(x, U, None, y, work, g, 0, 16, 1)
    with pytest.raises(ValueError, match=r"U must be \(1, 36, 16, 32\)"):  # (groups, 36, Cg, Fg)
        _winograd.conv2d_forward(x, np.ascontiguousarray(U.transpose(0, 1, 3, 2)), None, y, work, g, rows, 16, 1)
    with pytest.raises(ValueError, match="workspace must be at least"):
        _winograd.conv2d_forward(x, U, None, y, work, g, rows, 32, 1)  # sized for 16 filters
    with pytest.raises(ValueError, match="workspace must be at least"):
        _winograd.conv2d_forward(x, U, None, y, work, g, rows, 16, 3)  # sized for 2 threads
    _winograd.conv2d_forward(x, U, None, y, work, g, rows, 16, 2)
    np.testing.assert_allclose(y, ref.conv2d(x, w, padding=1), rtol=1e-5)
    dU = np.zeros((1, 1, 36, 32, 16), np.float32)  # the weight gradient's tasks take all 32 filters
    with pytest.raises(ValueError, match="workspace must be at least"):
        _winograd.conv2d_backward_weight(x, y, dU, work, g, rows, 1)
    with pytest.raises(ValueError, match="rows must be at least 1"):
        _winograd.conv2d_backward_weight(x, y, dU, work, g, 0, 1)
    _winograd.conv2d_backward_weight(x, y, dU, np.empty((1, _winograd.workspace_size(16, 32, rows, tiles_w)),
                                                         np.float32), g, rows, 1)
    assert np.isfinite(dU).all() and dU.any()


def test_winograd_is_thread_count_independent_and_keeps_the_references_nans(split_work, monkeypatch):
    for name in ("_WINOGRAD_TILES", "_WINOGRAD_MIN_TILES"):  # several tasks, and dw runs, on a small call
        monkeypatch.setattr(cpu_conv2d, name, 4)
    rng = make_rng(12)
    x, w = rng.uniform(-1, 1, (3, 8, 13, 11)).astype(np.float32), rng.uniform(-1, 1, (6, 8, 3, 3)).astype(np.float32)
    dy = rng.uniform(-1, 1, (3, 6, 13, 11)).astype(np.float32)
    with fl.threads(1):
        one = fl.conv2d(x, w, padding=1, algo="winograd")
        grads_one = fl.conv2d_backward(dy, x, w, padding=1, algo="winograd")
    assert cpu_conv2d._winograd_dw_runs(conv2d_geometry(x.shape, w.shape, padding=1), 4) > 1
    for threads in (2, 3):
        with fl.threads(threads):
            np.testing.assert_array_equal(fl.conv2d(x, w, padding=1, algo="winograd"), one)
            for got, want in zip(fl.conv2d_backward(dy, x, w, padding=1, algo="winograd"), grads_one):
                np.testing.assert_array_equal(got, want)
    x[0, 0, 0, 0] = np.nan  # a tile's transforms would spread it to the tile's outputs: im2col runs
    np.testing.assert_array_equal(np.isnan(fl.conv2d(x, w, padding=1, algo="winograd")),
                                  np.isnan(ref.conv2d(x, w, padding=1)))
    for got, want in zip(fl.conv2d_backward(dy, x, w, padding=1, algo="winograd"),
                         ref.conv2d_backward(dy, x, w, padding=1)):  # dx by Winograd, dw by im2col
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    dy[1, 2, 3, 4] = np.inf
    for got, want in zip(fl.conv2d_backward(dy, x, w, padding=1, algo="winograd"),
                         ref.conv2d_backward(dy, x, w, padding=1)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    x[0, 0, 0, 0] = 0
    for value in (np.inf, np.nan):  # w's transform, kept across calls, is checked again as w changes in place
        w[1, 2, 0, 1] = value
        np.testing.assert_array_equal(np.isnan(fl.conv2d(x, w, padding=1, algo="winograd")),
                                      np.isnan(ref.conv2d(x, w, padding=1)))


# ---------------------------------------------------------------------------- the epilogue
# A Sequential's inference plan runs Conv2D -> MaxPool2D(2) -> ReLU (or Conv2D -> ReLU) as one
# call: the geometry's epilogue (``fuse_epilogue``). The Winograd kernel pools and rectifies in
# its output transform, the others pool from a workspace: either way the values must be those of
# the convolution by the same algorithm, then fl.max_pool2d, then fl.relu, bit for bit.

EPILOGUES = ((True, True), (True, False), (False, True))  # (pool, relu)


def _forward_problem(x, w, b, params):
    return CONV2D.forward(x, w, b, params.get("stride", 1), params.get("padding", 0), params.get("dilation", 1),
                          params.get("groups", 1), "zeros")


def _with_epilogue(x, w, b, params, pool, relu, **kw):
    """conv2d with the epilogue, through the spec's run (``kw``: backend, algo, out)."""
    problem = fuse_epilogue(_forward_problem(x, w, b, params), pool, relu)
    return spec_run(CONV2D, problem, kw.get("backend", "cpu"), kw.get("algo", "auto"), kw.get("out"))


def _separate(x, w, b, params, pool, relu, **kw):
    """What the epilogue must equal: the convolution, then the pool, then the ReLU, by calls."""
    y = fl.conv2d(x, w, b, **params, **kw)
    if pool:
        y = fl.max_pool2d(y, 2, backend=kw.get("backend", "cpu"))
    return fl.relu(y, backend=kw.get("backend", "cpu")) if relu else y


def _special_cells(rng, a, values=(np.nan, np.inf, -np.inf, -0.0)):
    for value in values:
        a[rng.random(a.shape) < 0.03] = value
    return a


@pytest.mark.parametrize("algo", ("im2col", "direct", "winograd", "depthwise", "reference"))
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.one_of(winograd_configs(), conv2d_configs()), seed=st.integers(0, 2**32 - 1),
       epilogue=st.sampled_from(EPILOGUES), bias=st.booleans(), special=st.booleans())
def test_epilogue_is_the_pool_and_relu_of_the_convolution(algo, dtype, config, seed, epilogue, bias, special):
    """Every CPU algorithm and the reference, against its own convolution followed by the pool and
    the ReLU, bit for bit (NaN payloads and signed zeros included), on random shapes (odd planes:
    the pool drops the last row or column), with NaN, infinities and -0.0 in x (Winograd then
    takes im2col, its convolution as well)."""
    x_shape, w_shape, params = config
    if algo == "depthwise":  # one input channel per group
        groups = x_shape[1]
        w_shape, params = (groups * w_shape[0] // params.get("groups", 1),) + (1,) + w_shape[2:], \
            dict(params, groups=groups)
    g = conv2d_geometry(x_shape, w_shape, **params)
    pool, relu = epilogue
    assume(not pool or (g.OH >= 2 and g.OW >= 2))
    if algo == "winograd":
        problem = _forward_problem(np.empty(x_shape, dtype), np.empty(w_shape, dtype), None, params)
        assume(not cpu_conv2d_spec._cpu_winograd_declines(problem))
    rng = make_rng(seed)
    x, w = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype)
    b = _uniform(rng, (w_shape[0],), dtype) if bias else None
    if special:
        _special_cells(rng, x)
    kw = dict(backend="numpy") if algo == "reference" else dict(algo=algo, backend="cpu")
    got = _with_epilogue(x, w, b, params, pool, relu, **kw)
    want = _separate(x, w, b, params, pool, relu, **kw)
    assert got.shape == want.shape == (g.N, g.F) + ((g.OH // 2, g.OW // 2) if pool else (g.OH, g.OW))
    assert got.dtype == dtype
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("x_shape, F, padding", [
    ((1, 32, 16, 16), 64, 1),  # VGG's second stage at batch 1: the filters split over tasks
    ((2, 64, 8, 8), 128, 1),  # VGG's third stage
    ((3, 5, 11, 9), 17, 1),  # odd planes, a partial vector of filters
    ((1, 3, 32, 32), 32, 1),  # VGG's first layer
    ((2, 20, 11, 9), 40, 0),  # 9x7 output: a tile row and column cut, pooled 4x3
])
def test_winograd_epilogue_pools_tiles_of_overflowed_values_as_the_pool_does(dtype, epilogue, x_shape, F, padding):
    """An input near the type's largest value overflows in the transforms: the tiles that read
    it hold infinities and NaNs (inf - inf), the others finite values, which the fused pool must
    treat as max_pool2d does (a NaN wins, of several the last) and the ReLU keep; against the
    unfused Winograd call, bit for bit, and on ordinary data too."""
    rng = make_rng(21)
    w = _uniform(rng, (F, x_shape[1], 3, 3), dtype)
    b = _uniform(rng, (F,), dtype)
    pool, relu = epilogue
    for overflow in (False, True):
        x = _uniform(rng, x_shape, dtype)
        if overflow:  # one cell an image: the tiles that read it
            x[:, 0, 1, 1] = np.finfo(dtype).max / 4
        got = _with_epilogue(x, w, b, dict(padding=padding), pool, relu, algo="winograd")
        want = _separate(x, w, b, dict(padding=padding), pool, relu, algo="winograd")
        assert np.isnan(want).any() == overflow and np.isfinite(want).any()
        assert got.tobytes() == want.tobytes()


def test_epilogue_writes_into_out_buffers_and_checks_them():
    rng = make_rng(22)
    x, w = _uniform(rng, (2, 4, 9, 8), np.float32), _uniform(rng, (6, 4, 3, 3), np.float32)
    for algo in ("winograd", "im2col"):
        out = np.full((2, 6, 4, 4), 7, np.float32)
        got = _with_epilogue(x, w, None, dict(padding=1), True, True, algo=algo, out=out)
        assert got is out
        np.testing.assert_array_equal(out, _separate(x, w, None, dict(padding=1), True, True, algo=algo))
        with pytest.raises(ValueError, match="out"):
            _with_epilogue(x, w, None, dict(padding=1), True, True, algo=algo, out=np.empty((2, 6, 9, 8), np.float32))


def test_fuse_epilogue_needs_a_forward_with_planes_to_pool():
    x = np.zeros((1, 2, 3, 3), np.float32)
    w = np.zeros((4, 2, 3, 3), np.float32)
    one = CONV2D.forward(x, w, None, 1, 0, 1, 1, "zeros")  # a 1x1 output
    with pytest.raises(ValueError, match="at least 2x2"):
        fuse_epilogue(one, True, True)
    assert fuse_epilogue(CONV2D.forward(x, w, None, 1, 0, 1, 1, "zeros"), False, True).outputs[0][1] == (1, 4, 1, 1)
    backward = CONV2D.backward(np.zeros((1, 4, 1, 1), np.float32), x, w, 1, 0, 1, 1, "zeros")
    with pytest.raises(ValueError, match="forward"):
        fuse_epilogue(backward, False, True)


def test_the_cuda_kernels_decline_an_epilogue():
    problem = CONV2D.forward(np.zeros((1, 2, 4, 4), np.float32), np.zeros((3, 2, 3, 3), np.float32), None, 1, 1, 1,
                             1, "zeros")
    cuda = [k for k in cpu_conv2d_spec.KERNELS if k.backend == "cuda"]
    assert all(k.declines(problem) is None for k in cuda)
    fuse_epilogue(problem, True, False)
    assert all("fuse no pool or ReLU" in k.declines(problem) for k in cuda)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("x_shape, w_shape, params", [
    ((1, 3, 32, 32), (32, 3, 3, 3), dict(padding=1)),  # VGG's first layer at batch 1
    ((2, 4, 9, 21), (9, 4, 3, 3), dict(padding=1)),  # odd rows and columns: the last ones dropped
    ((3, 6, 12, 40), (10, 3, 3, 5), dict(padding=(1, 2), groups=2)),  # groups, a filter block cut
    ((1, 2, 35, 33), (8, 2, 5, 5), dict(stride=1, padding=2, dilation=1)),  # one image, many bands
    ((2, 3, 20, 38), (6, 3, 3, 3), dict(stride=(1, 2), padding=1)),  # column stride: 19 wide
])
def test_direct_epilogue_pools_pairs_of_rows_in_its_tasks(dtype, threads, x_shape, w_shape, params):
    """The direct row kernel pools each pair of output rows in its task (rows wider than a
    vector: conv2d_direct.pools): against its own convolution, then the pool and the ReLU, bit
    for bit, at 1-3 threads (bands of other heights), with NaN and infinities in x."""
    rng = make_rng(23)
    g = conv2d_geometry(x_shape, w_shape, **params)
    x, w = _uniform(rng, x_shape, dtype), _uniform(rng, w_shape, dtype)
    b = _uniform(rng, (w_shape[0],), dtype)
    for special in (False, True):
        if special:
            _special_cells(rng, x)
        with fl.threads(threads):
            for pool, relu in ((True, True), (True, False)):
                got = _with_epilogue(x, w, b, params, pool, relu, algo="direct")
                want = _separate(x, w, b, params, pool, relu, algo="direct")
                assert got.tobytes() == want.tobytes(), (special, pool, relu)
    assert _direct_kernels.pools(g, np.dtype(dtype).itemsize) == (g.OW > 64 // np.dtype(dtype).itemsize)
