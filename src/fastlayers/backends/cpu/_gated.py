"""What the lstm and gru modules share (both wrap kernels/cpu/gated_rnn.pyx): thread count,
the empty-size and BLAS-size cases, biases.

The kernels split every product among their own OpenMP threads (``fastlayers._dispatch.threads_for``)
and call BLAS single-threaded inside them. Steps arrive as sequences of length one (the spec,
fastlayers.ops.gated, views them so). The kernels allocate the outputs the caller gave no buffer
for themselves, after checking the sizes (an oversized call fails with its reason, not an
allocation error).
"""
import contextlib
import functools

import numpy as np

from ..._cpu_load import free_cpus
from ..._dispatch import threads_for
from ...ops.gated import GATES, KEPT_BLOCKS
from .. import numpy as _reference
from ..._cpu import gated_rnn as _kernels
from ._common import BLAS_INT_MAX, contiguous, workspace

# Bytes of one cache line: the padding of the forward's rows (see leading_dimension).
CACHE_LINE = 64
# The blocking ("avx512" or "avx2") in which the float32 products run on weights packed once per
# call (kernels/cpu/packed_gemm.h), for the vector width the C helpers run with; None (OpenBLAS's
# paths) on the baseline's SSE2 (measured: docs/performance.md).
PACKED_BLOCKING = {"x86-64-v4": "avx512", "x86-64-v3": "avx2"}.get(_kernels.isa())


def num_threads(T, N, D, H, width):
    """Threads for one call (``threads_for`` its T*N*width*(D+H) multiply-adds), at most N: the
    backward (and the forward on OpenBLAS's path) runs the recurrence of each thread's own block
    of the N sequences."""
    return min(N, threads_for(T * N * width * (D + H)))


def split_by_units(threads):
    """The forward kernels' ``by_units``: whether a call on ``threads`` threads splits each step by
    hidden units (on packed weights, a barrier per step) rather than by sequences (no barrier):
    only while other processes leave that many CPUs free (``free_cpus``), as a team mate that
    another process deschedules holds the whole team at every barrier (measured:
    docs/performance.md, "lstm/gru: the packed forward split by hidden units")."""
    return threads == 1 or free_cpus() >= threads


def blas_kernel(fn):
    """Wraps the cpu function ``fn`` of lstm or gru (named ``<cell>_forward`` or ``<cell>_backward``,
    called as ``fn(*arrays, geometry, outs)``): a problem with a zero size runs on the reference
    (nothing for BLAS to multiply, and lda >= 1 would not hold), one too large for BLAS is refused.

    The kernels hand T*N, D and G*H to BLAS as sizes and leading dimensions, which are C ints:
    past 2**31 - 1 they would be truncated (a silent wrong result)."""
    cell = fn.__name__.split("_")[0]
    reference = getattr(_reference, fn.__name__)

    @functools.wraps(fn)
    def run(*args):
        g = args[-2]
        if g.T * g.N * g.D * g.H == 0:
            return reference(*args)
        width = max(GATES[cell], KEPT_BLOCKS) * g.H + CACHE_LINE  # the widest rows, padded
        if max(g.T * g.N, g.D, width) > BLAS_INT_MAX:
            raise ValueError(f"{cell} sizes T*N={g.T * g.N}, D={g.D}, gates*H={width} are too large for the cpu "
                             f"backend: its BLAS takes sizes as C ints, so each must be at most 2**31 - 1")
        return fn(*args)

    return run


def bias(b, width, dtype):
    """An absent bias is zeros: the cells always add one (no branch in their loops)."""
    return np.zeros(width, dtype) if b is None else np.ascontiguousarray(b)


def outputs(outs, shapes, dtype):
    """The caller's buffers where given (already checked), new arrays for the others."""
    return tuple(np.empty(s, dtype) if o is None else o for o, s in zip(outs, shapes))


def leading_dimension(width, itemsize):
    """Row length (in elements) of the forward's gate-wide arrays (Wx, Wh, the pre-activations).

    Rows whose byte length is a multiple of 2 KiB (4H = 2048 float32 columns: 8 KiB) fall into a
    few cache sets, as the sets repeat every few KiB (L1) or tens of KiB (L2); the step's GEMM,
    which reads Wh in column chunks row by row (OpenBLAS's small-matrix path), then misses on
    every row. One cache line of padding spreads them over all sets."""
    return width + CACHE_LINE // itemsize if (width * itemsize) % 2048 == 0 else width


@contextlib.contextmanager
def forward_workspaces(Wx, Wh, TN, N, keep, packed):
    """``(Wx, Wh, a, u)`` for a forward kernel, rows ``leading_dimension`` apart: the weights
    (copied into padded buffers when padded, unless ``packed``: the kernel then multiplies by the
    packed copies only), the pre-activations a (T*N rows; N when ``packed``: the kernel computes
    each step's x @ Wx with its h @ Wh, into the same rows every step) and u (N rows). With
    ``keep``, a is a new array of T*N rows, KEPT_BLOCKS * H columns wide (in padded rows), which
    the kernel leaves holding the gates: the caller keeps it."""
    (D, width), H, dt = Wx.shape, Wh.shape[0], Wx.dtype
    ld = leading_dimension(width, dt.itemsize)
    with contextlib.ExitStack() as stack:
        if keep:
            a = np.empty((TN, leading_dimension(KEPT_BLOCKS * H, dt.itemsize)), dt)
        else:
            a = stack.enter_context(workspace("gated_rnn_z", (N if packed else TN, ld), dt))
        u = stack.enter_context(workspace("gated_rnn_u", (N, ld), dt))
        if ld == width or packed:
            yield contiguous(Wx), contiguous(Wh), a, u
            return
        Wxp = stack.enter_context(workspace("gated_rnn_wx", (D, ld), dt))
        Whp = stack.enter_context(workspace("gated_rnn_wh", (H, ld), dt))
        Wxp[:, :width] = Wx
        Whp[:, :width] = Wh
        yield Wxp, Whp, a, u


@contextlib.contextmanager
def packed_weights(Wx, Wh):
    """``(packed_x, packed)``: the buffers a forward kernel packs Wx and Wh into for its products
    (kernels/cpu/packed_gemm.h: panels of PANEL columns, each K x PANEL in C order, zeros past the
    columns), or ``(None, None)`` where PACKED_BLOCKING is None or for float64 (the small-matrix
    path). Both are packed gate by gate, each gate's H columns in whole panels, so that a thread's
    share of the hidden units starts on a panel in every gate (the kernel's per-step column
    split)."""
    if PACKED_BLOCKING is None or Wh.dtype != np.float32:
        yield None, None
        return
    (D, G), H = Wx.shape, Wh.shape[0]
    with (_packed_buffer("gated_rnn_packed_x", D, G, G // H) as px,
          _packed_buffer("gated_rnn_packed_h", H, G, G // H) as ph):
        yield px, ph


@contextlib.contextmanager
def packed_transpose(Wh):
    """The buffer a backward kernel packs Wh^T (G, H) into for its per-step dz @ Wh^T, or None (see
    packed_weights)."""
    if PACKED_BLOCKING is None or Wh.dtype != np.float32:
        yield None
        return
    H, G = Wh.shape
    with _packed_buffer("gated_rnn_packed_t", G, H) as pt:
        yield pt


def avx512_blocking():
    """The kernels' ``avx512`` argument: whether the packed products take the AVX-512 blocking."""
    return PACKED_BLOCKING == "avx512"


def _packed_buffer(slot, K, G, blocks=1):
    """A workspace for a (K, G) float32 weight packed in panels, its ``blocks`` equal column blocks
    in turn, each in whole panels (the kernels fill it)."""
    panels = -(-(G // blocks) // _kernels.PANEL)
    return workspace(slot, (blocks * panels * K * _kernels.PANEL,), np.float32)


@contextlib.contextmanager
def backward_gates(gates, TN, H, dt):
    """``(gates, recompute)`` for a backward kernel: the forward's kept gates (read only), or a
    workspace of KEPT_BLOCKS * H columns the kernel recomputes them into."""
    if gates is not None:
        yield gates, False
        return
    with workspace("gated_rnn_gates", (TN, KEPT_BLOCKS * H), dt) as scratch:
        yield scratch, True


@contextlib.contextmanager
def transposed_rows(Wh, packed):
    """Wh^T (G*H, H) in C order for a backward kernel, in rows ``leading_dimension(H)`` long (its
    per-step product reads Wh^T as the forward's reads Wh); None when ``packed`` (the kernel
    multiplies the packed copy only)."""
    if packed:
        yield None
        return
    H, dt = Wh.shape[0], Wh.dtype
    ld = leading_dimension(H, dt.itemsize)
    if ld == H:
        yield contiguous(Wh.T)
        return
    with workspace("gated_rnn_wht", (Wh.shape[1], ld), dt) as WhT:
        WhT[:, :H] = Wh.T
        yield WhT
