"""conv2d on the CPU backend: im2col + GEMM (kernels/cpu/im2col.pyx), direct loops
(kernels/cpu/conv2d_direct.pyx), for one input channel per group, depthwise plane loops
(kernels/cpu/conv2d_depthwise.pyx), and for 3x3 kernels at stride 1 Winograd's F(4x4, 3x3)
(kernels/cpu/conv2d_winograd.pyx; a dilated one as the undilated convolution of its dilation
phases, ``ops.conv2d.dilation_phases``), forward and backward. The depthwise loops give every output
to one task in a fixed order, and so do the Winograd forward and dx (their tasks' tiles do not
depend on the thread count), whose dw sums a fixed number of runs of tasks in order: their
results do not depend on the thread count. At stride 1 the depthwise plane copies (a thread's
padded input or gradient planes, and for the padded forward a widened output plane, in its
workspace) stay within ``DEPTHWISE_BLOCKED_MAX_BYTES`` (blocked loops) or
``DEPTHWISE_PADDED_MAX_BYTES`` (padded forward); the 3x3 loops copy nothing.

Both algorithms are reproducible bit for bit from run to run at a given thread count: no
atomics, every sum in a fixed order. The direct loops do not depend on the thread count at all;
the direct backward takes dw and db from im2col's GEMMs where their sizes fit a C int.
The im2col forward gives every output to one gemm, whose shape depends on the thread count only
when there are few (image, group) pairs for the threads: fewer than threads (the bands of output
rows, or on small planes with many filters the filters, are then cut so every thread has work),
or, on small planes whose images share a tile, fewer than two tiles per thread (fewer images then
share one); its backward sums dw and db
per thread, then over threads in order. So im2col results change with the thread count by float
rounding only.

Scratch memory is bounded whatever the batch size: an im2col column tile is at most
``column_tile_bytes()`` (a band of output rows whose columns fit, at least one row, or the
columns of several whole small images) per thread, two of them in the backward (columns of x and
of dx), plus, when images share a tile, their gemm's product in the forward and their dy in the
backward (filters per group x the tile's columns), and one partial dw (the size of w) per thread
in the backward; a direct task's row copy is kept to about 1 MiB and refused past
``DIRECT_MAX_SCRATCH_BYTES`` per thread (its width grows with the stride and dilation), the
filter-vector kernel's padded copy of the whole input to ``FVEC_MAX_SCRATCH_BYTES``; a
Winograd task holds its tiles' transforms, 36 (Cg + Fg) values a tile (``_winograd_band``), and
its dw up to ``_WINOGRAD_DW_RUNS`` partial transformed gradients of 36 F Cg values.
Workspaces are cached per Python thread and checked out for the call
(``_common.workspace``), so concurrent or re-entrant callers never share one; they keep their
largest size until the thread ends or ``fastlayers.release_workspaces()``.
"""
import functools
from dataclasses import replace

import numpy as np

from ..._cpu import bits as _bits
from ..._cpu import conv2d_depthwise as _depthwise
from ..._cpu import conv2d_direct as _direct
from ..._cpu import conv2d_winograd as _winograd
from ..._cpu import im2col as _im2col
from ..._cpu import relu as _relu
from ... import _dispatch
from ..._dispatch import threads_for
from ...ops.conv2d import Conv2dGeometry, dilation_phases
from . import _gated
from . import max_pool2d as _max_pool2d
from ._common import BLAS_INT_MAX, contiguous, derived
from ._common import workspace as scratch

# A tile's columns sized to sit in L2 (1-2 MiB per core) beside the gemm's packed panels; timings
# are flat from 512 KiB to 8 MiB and the gemms get too thin below 256 KiB (docs/performance.md).
_column_tile_bytes = 1 << 21



def column_tile_bytes():
    """Bytes of im2col column matrix each thread works on at a time."""
    return _column_tile_bytes


def set_column_tile_bytes(nbytes):
    """Bound the im2col column workspace to ``nbytes`` per thread (at least one output row's
    columns are always used). Returns the previous value."""
    global _column_tile_bytes
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"nbytes must be an int >= 1, got {nbytes!r}")
    previous, _column_tile_bytes = _column_tile_bytes, nbytes
    return previous


def _finite(*arrays):
    """Whether the arrays hold no NaN and no infinity: compiled where an array is aligned (a
    view into a byte buffer may not be), by NumPy otherwise."""
    return all(_bits.all_finite(contiguous(a), threads_for(a.size)) if a.dtype in _FLOATS and a.flags.aligned
               else np.isfinite(a).all() for a in arrays)


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _with_epilogue(forward, x, w, b, g, outs):
    """``forward`` (a kernel wrapper) on a geometry whose epilogue (``g.pool``, ``g.relu``) it
    does not fuse: the convolution alone (``g.plain``) into a workspace, then the pool and its
    ReLU in max_pool2d's kernel; with a ReLU alone, the convolution into y, then the ReLU over y
    in place. The values are those of the separate calls, bit for bit."""
    (y,) = outs
    if not g.pool:
        forward(x, w, b, g.plain, outs)
        flat = y.reshape(-1)
        _relu.forward(flat, flat, threads_for(flat.size))
        return (y,)
    with scratch("conv2d epilogue", g.plain.y_shape, x.dtype) as full:
        forward(x, w, b, g.plain, (full,))
        _max_pool2d.forward(full, g.pooling, (y, None))
    return (y,)


def _unfused_epilogue(forward):
    """A kernel wrapper ``forward(x, w, b, g, outs)`` that also takes geometries with an
    epilogue, by ``_with_epilogue``."""
    @functools.wraps(forward)
    def run(x, w, b, g, outs):
        if g.pool or g.relu:
            return _with_epilogue(forward, x, w, b, g, outs)
        return forward(x, w, b, g, outs)

    return run


def _degenerate(x, w):
    """Nothing to convolve: no input elements (N, C, H or W zero) or no weights (F zero)."""
    return x.size == 0 or w.size == 0


def _band_rows(g, threads, itemsize):
    """Output rows per im2col tile: as many as fit in the column tile bytes, but few enough that
    every thread gets tiles."""
    rows = max(1, column_tile_bytes() // (g.K * g.OW * itemsize))
    per_plane = -(-threads // max(1, g.N * g.groups))  # bands needed per (image, group) plane
    return max(1, min(rows, g.OH, -(-g.OH // per_plane)))


# Images per im2col tile on small planes: a gemm over one 8x8 plane has 64 columns, too narrow for
# OpenBLAS's kernels (137 against 165 GFLOP/s at 512 on VGG's third stage), so the columns of
# several whole images go side by side, up to about this many (docs/performance.md).
GEMM_COLUMNS = 512


def _tile_images(g, rows, threads, itemsize):
    """Images per im2col tile: one, unless a tile of ``rows`` rows is a whole plane narrower
    than ``GEMM_COLUMNS`` columns (and not the input itself, as pointwise columns are); then as
    many as make about that many columns, fit the column tile bytes, and leave two tiles per
    thread."""
    P = g.OH * g.OW
    if rows < g.OH or P >= GEMM_COLUMNS or _is_pointwise(g):
        return 1
    per_thread = -(-2 * threads // g.groups)  # batches of images needed for two tiles per thread
    fit = column_tile_bytes() // (g.K * P * itemsize)
    return max(1, min(GEMM_COLUMNS // P, fit, g.N // per_thread))


def _is_pointwise(g):
    """A 1x1 kernel, stride 1, no padding: the image itself is the column matrix (im2col.pyx)."""
    return (g.KH, g.KW, g.stride_h, g.stride_w, g.pad_top, g.pad_left, g.OH, g.OW) == (1, 1, 1, 1, 0, 0, g.H, g.W)


def _im2col_fits(g, rows=1):
    """Whether im2col's gemm sizes and leading dimensions (C ints) hold ``rows``-row tiles."""
    return max(g.H * g.W, g.OH * g.OW, g.K * rows * g.OW, g.F * g.K) <= BLAS_INT_MAX


# The direct loops copy a band's padded input rows, every row and column phase the band spans,
# so their scratch grows with stride and dilation (a stride of 65536 needs ~200 MiB a thread for
# a 3x3 kernel, one of 2**28 hundreds of GiB). Past this much for one output row they refuse,
# and "auto" takes im2col, whose columns hold only the taps that are read.
DIRECT_MAX_SCRATCH_BYTES = 64 << 20


def _direct_scratch_bytes(g, direction):
    """Per-thread scratch of the direct loops at their thinnest band (one row), in float64."""
    return _direct.scratch_bytes(g, 1, direction == "backward", 8)


@functools.lru_cache(maxsize=4096)  # remembers the sizes that fit (a raise is not cached)
def _check_fits(g, algo, direction):
    """A ValueError where ``algo``'s sizes do not fit."""
    if algo == "im2col" and not _im2col_fits(g):
        raise ValueError(
            f"conv2d sizes exceed what BLAS can index (C ints) for algo='im2col'"
            + ("; use algo='direct'" if _direct_scratch_bytes(g, direction) <= DIRECT_MAX_SCRATCH_BYTES else "")
            + f": {g}"
        )
    if algo == "direct" and _direct_scratch_bytes(g, direction) > DIRECT_MAX_SCRATCH_BYTES:
        raise ValueError(
            f"conv2d with algo='direct' would need {_direct_scratch_bytes(g, direction)} bytes of scratch per "
            f"thread (its row copies span the stride {g.stride_h}x{g.stride_w} and dilation "
            f"{g.dilation_h}x{g.dilation_w}), more than {DIRECT_MAX_SCRATCH_BYTES}"
            + ("; use algo='im2col'" if _im2col_fits(g) else "") + f": {g}"
        )


# Where each algorithm wins (measured: docs/performance.md): the direct forward skips building
# the column matrix, which pays on kernels wider than 1x1 whose contraction is short enough that
# a kernel call's taps stay in L1/L2 (on AVX-512 up to ~2k taps per output; with AVX2, whose
# 16 registers hold a block of half the filters and outputs, up to about 150 (at 288, level): past that,
# and with 128 filters or more, re-reading the band copy for every block of 8 filters costs more
# than the GEMM). On 1x1 kernels the column matrix is the input or a strided subsample of it, so
# the GEMM wins. Small calls are decided by the per-call set-up, which is im2col's smaller; with
# few output rows in all (batch 1 and small planes) the direct tasks, bands of rows each copying
# the input rows it reads, get thin (on Intel's AVX-512 it needed 8 images even on large planes;
# on AMD's Zen 5, with 2 MiB of L2 a core, 64 rows of one image pay as with AVX2). Its
# rows are vectors along the output columns: on planes narrower than one (8x8: VGG's third
# stage) much of each vector is idle and im2col wins. Winograd, where it applies, beats both. The
# direct backward (its dx, with im2col's dw) ran 0.8-2x im2col's time, faster only on some
# batch-1 planes. Without AVX2 (SSE2 only) the block spills and runs 10-40x slower than im2col.
# The depthwise loops (one input channel per group) beat both on large planes, where each
# plane's taps are long vector passes; on small planes the direct kernel's blocks win, and
# backward im2col. By instruction set ("-amd": on AMD's CPUs, where they differ), where measured:
DIRECT_MIN_FLOPS = 400_000
# taps per output, C/groups * KH * KW
DIRECT_MAX_TAPS = {"x86-64-v4": 2048, "x86-64-v4-amd": 2048, "x86-64-v3": 160}
DIRECT_MIN_PLANES = {"x86-64-v4": 8, "x86-64-v4-amd": 1, "x86-64-v3": 1}  # images x groups
# output rows of all planes, N * groups * OH
DIRECT_MIN_ROWS = {"x86-64-v4": 0, "x86-64-v4-amd": 64, "x86-64-v3": 64}
DIRECT_MIN_WIDTH = 16  # output columns: a vector of float32 (AVX-512), two (AVX2)
# Where each output row is whole vectors (OW a multiple of DIRECT_MIN_WIDTH), fewer rows do: on
# Zen 4 at batch 1, 32 rows of 32 took 0.58-0.94x im2col's time (3 to 64 channels, 32 to 128
# filters), rows of 24 (a vector and a half) 1.0-1.3x (docs/performance.md).
DIRECT_MIN_ROWS_WHOLE_VECTORS = {"x86-64-v4-amd": 32}
DIRECT_FAST_ISAS = frozenset(DIRECT_MAX_TAPS)  # instruction sets where the direct forward can win
# On planes narrower than DIRECT_MIN_WIDTH the direct forward runs the filter-vector kernel
# (``_fvec_fits``): measured against im2col on AMD's Zen 4, 0.86-0.97x its time from
# FVEC_MIN_FLOPS on, 0.93-1.35x below (the direct call's set-up, the derived-weights check
# among it, outweighs its faster loop), with blocks of 32 filters full (fewer leave lanes idle).
FVEC_MIN_FLOPS = {"x86-64-v4-amd": 15_000_000}
FVEC_MIN_FILTERS = 32  # filters per group
# Winograd F(4x4, 3x3) (3x3 kernels, stride 1; dilated ones by their phases) against im2col,
# measured with AVX2 (Zen 3) and AVX-512 (Zen 5, Zen 4) (docs/performance.md): its fixed costs
# (each task's pass over the 36 transformed filters; the filter transform itself is kept across
# calls, ``derived``) scale with Cg x Fg as its savings do with tiles x Cg x Fg, so it needs a
# number of tiles (under 128, two threads, the gains were mixed on Zen 3 and Zen 5: 0.6-1.4x
# im2col's time; on Zen 4, from 48 tiles on, 0.5-0.85x the best of im2col and direct, with 16-32
# 0.9-1.2x); and its transforms (per input and output element) must be spread over enough
# channels: with 16 a group it takes 0.6-0.9x im2col's time, with 8 0.8-1.1x, with 3 1.5-2x.
# On Zen 4 the forward also wins on fewer tiles, from 4 (batch 1 on 14x14 and 16x16 planes
# with 64 to 256 channels, in a chain of such layers: 0.74-0.92x the time of im2col and direct;
# 8x8 planes of 96-128 channels 0.90-0.94x, and the VGG model's 64 to 128 at 8x8 took 0.875x
# the whole model's time, once the transforms ran along several channels' tiles at once),
# since calls with too few tile rows for two tasks split the filters (``_winograd_task_filters``),
# from about 9 MFLOP on (smaller calls' 72 gemm calls and transforms cost as much as they save)
# and with at most 1 MiB of float32 transformed filters (36 Cg Fg values) per tile: every call
# reads them all, and where they do not stay in cache between calls (512 channels on 14x14: 2.25
# MiB a tile, 1.5x; 256 channels on 7x7, 2.25 MiB, 1.47x) that costs more than the
# multiplications saved.
# The backward's dx, a Winograd forward, follows the forward's rules, on few tiles from
# WINOGRAD_FEW_TILES_BACKWARD_MIN_FLOPS on (the backward's time against im2col's, calls
# alternated: 256 channels on 14x14 at batch 1 0.95x, 128 on 16x16 0.89x, 256 to 16 on 7x7 at
# batch 8 0.82x; the VGG model's 9.4 MFLOP layers at batch 1 1.25x); its dw (a task's partial dU of 36 Fg Cg values, summed on few
# threads) still needs the tiles of the first rule (at batch 1 it ran 1.4-3x im2col's time): on
# fewer tiles it is im2col's (``winograd_backward``).
WINOGRAD_MIN_TILES = {"x86-64-v4-amd": 48}  # 4x4 output tiles of the batch; elsewhere
WINOGRAD_MIN_TILES_DEFAULT = 128
WINOGRAD_FEW_TILES = {"x86-64-v4-amd": 4}  # the forward's, below WINOGRAD_MIN_TILES
WINOGRAD_FEW_TILES_MIN_FLOPS = 8_000_000
WINOGRAD_FEW_TILES_BACKWARD_MIN_FLOPS = 20_000_000  # a forward's: the backward's dx
WINOGRAD_MAX_FILTER_VALUES_PER_TILE = 1 << 18  # forward: 36 Cg Fg / tiles
WINOGRAD_MIN_CHANNELS = 16  # input and output channels per group
# Measured on the AMD CPUs; Intel's AVX-512 by the same rule, unmeasured there.
WINOGRAD_FAST_ISAS = frozenset({"x86-64-v4", "x86-64-v4-amd", "x86-64-v3"})
# In a training step (``_dispatch.weights_change``) the weights change before every call, so
# Winograd's transformed filters (4x the weights, written then read cold) and the direct kernels'
# packed filters are derived again on every call: those algorithms then need this many output
# positions over the batch (N OH OW) to win it back. Below it, with weights changed before each
# call, im2col was 1.0-2.0x faster than Winograd (batch 1-2, 32-256 channels, 8x8-16x16 planes),
# above it Winograd 1.0-2.1x faster (docs/performance.md); one image's filter-vector forward on
# FVEC_UNPACKED_MIN_WEIGHT_BYTES of weights keeps no packing and is not concerned.
TRAINING_MIN_OUTPUTS = 512


@functools.lru_cache(maxsize=1)
def rule_isa():
    """The key of auto's tables for this CPU: the instruction set the direct kernel's loader picked
    ("x86-64-v4", "x86-64-v3" or "baseline"), "x86-64-v4-amd" for AVX-512 on an AMD CPU."""
    isa = _direct.vector_isa()
    return isa + "-amd" if isa == "x86-64-v4" and _cpu_vendor() == "AuthenticAMD" else isa


def _cpu_vendor():
    """/proc/cpuinfo's vendor_id ("GenuineIntel", "AuthenticAMD"), or "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def _winograd_tiles(g):
    """The 4x4 output tiles of the batch."""
    return g.N * -(-g.OH // 4) * -(-g.OW // 4)


def _winograd_weight_grad_wins(g):
    """Whether the Winograd backward takes dw by Winograd, not by im2col's GEMMs: from the first
    rule's tiles on (on fewer, at batch 1, its partial sums of 36 Fg Cg values a task cost
    1.4-3x im2col's time)."""
    return _winograd_tiles(g) >= WINOGRAD_MIN_TILES.get(rule_isa(), WINOGRAD_MIN_TILES_DEFAULT)


def _winograd_wins(g, direction, isa):
    """Whether "auto" takes winograd for this problem (both directions: the backward's dx is a
    winograd forward with Cg and Fg swapped; without dx the backward is im2col's either way); a
    dilated one by the undilated convolution of its phases (``dilation_phases``)."""
    if (g.KH, g.KW, g.stride_h, g.stride_w) != (3, 3, 1, 1) or dilation_phases(g) is None:
        return False
    g = dilation_phases(g)
    tiles = _winograd_tiles(g)
    min_tiles = WINOGRAD_MIN_TILES.get(isa, WINOGRAD_MIN_TILES_DEFAULT)
    if isa not in WINOGRAD_FAST_ISAS or min(g.Cg, g.Fg) < WINOGRAD_MIN_CHANNELS:
        return False
    fits = 36 * g.Cg * g.Fg <= WINOGRAD_MAX_FILTER_VALUES_PER_TILE * tiles
    few = (fits and isa in WINOGRAD_FEW_TILES and tiles >= WINOGRAD_FEW_TILES[isa]
           and g.flops >= WINOGRAD_FEW_TILES_MIN_FLOPS)
    if direction != "forward":  # dx by the forward's rules (dw by im2col's GEMMs on few tiles)
        few = few and g.flops >= WINOGRAD_FEW_TILES_BACKWARD_MIN_FLOPS
        return g.input_grad and max(g.pad_top, g.pad_bottom, g.pad_left, g.pad_right) <= 2 and (tiles >= min_tiles or few)
    return fits and (tiles >= min_tiles or few)


def choose_algo(problem, isa=None):
    """``algo="auto"``: the one algorithm that can run when the other cannot (im2col's BLAS sizes
    past a C int, direct's scratch past ``DIRECT_MAX_SCRATCH_BYTES``); otherwise, on a CPU whose
    instruction set ``isa`` (default: the running one's, ``rule_isa``) is in
    ``WINOGRAD_FAST_ISAS``, "winograd" forward and backward (with dx) for 3x3 kernels at stride 1
    (dilated ones by their phases' undilated geometry, ``dilation_phases``) with
    ``WINOGRAD_MIN_CHANNELS`` input and output channels per group and at least
    ``WINOGRAD_MIN_TILES[isa]`` 4x4 output tiles (backward: paddings up to 2), also with
    ``WINOGRAD_FEW_TILES[isa]`` where given from ``WINOGRAD_FEW_TILES_MIN_FLOPS`` on (the
    backward, whose dw is then im2col's, from ``WINOGRAD_FEW_TILES_BACKWARD_MIN_FLOPS``), and the
    forward with at most ``WINOGRAD_MAX_FILTER_VALUES_PER_TILE`` transformed filter values per tile;
    else, for the forward on one in ``DIRECT_FAST_ISAS``, "direct" for kernels larger than 1x1
    with at most ``DIRECT_MAX_TAPS[isa]`` taps per output (C/groups * KH * KW), at least
    ``DIRECT_MIN_FLOPS`` FLOP, ``DIRECT_MIN_PLANES[isa]`` (image, group) planes,
    ``DIRECT_MIN_ROWS[isa]`` output rows over all of them (``DIRECT_MIN_ROWS_WHOLE_VECTORS[isa]``
    where given and the rows are whole multiples of ``DIRECT_MIN_WIDTH``) and ``DIRECT_MIN_WIDTH``
    output columns, or on one in ``FVEC_MIN_FLOPS``, for narrower planes the filter-vector kernel runs
    (``_fvec_fits``, as float32) with at least ``FVEC_MIN_FILTERS`` filters a group, from
    ``FVEC_MIN_FLOPS[isa]`` FLOP on; "im2col" otherwise. Inside ``_dispatch.weights_change`` (a
    training step), Winograd and the direct kernels that keep packed filters need
    ``TRAINING_MIN_OUTPUTS`` output positions over the batch. Several groups of one input channel
    each (depthwise), forward and backward: "depthwise"."""
    g, direction = problem.geometry, problem.direction
    if g.Cg == 1 and g.groups > 1:
        return "depthwise"
    if not _im2col_fits(g):
        return "direct"
    if _direct_scratch_bytes(g, direction) > DIRECT_MAX_SCRATCH_BYTES:
        return "im2col"
    isa = rule_isa() if isa is None else isa
    # What a training step's weights, derived again on every call, leave to im2col.
    derives_too_often = _dispatch.weights_changing() and g.N * g.OH * g.OW < TRAINING_MIN_OUTPUTS
    if _winograd_wins(g, direction, isa) and not derives_too_often:
        return "winograd"
    if (direction == "forward" and isa in FVEC_MIN_FLOPS and g.KH * g.KW > 1 and g.Fg >= FVEC_MIN_FILTERS
            and g.flops >= FVEC_MIN_FLOPS[isa] and _fvec_fits(g, False, 4)
            and not (derives_too_often and not _fvec_unpacked(g, 4))):
        return "direct"
    if derives_too_often:
        return "im2col"
    if (direction == "forward" and isa in DIRECT_FAST_ISAS and g.KH * g.KW > 1 and g.K <= DIRECT_MAX_TAPS[isa]
            and g.flops >= DIRECT_MIN_FLOPS and g.N * g.groups >= DIRECT_MIN_PLANES[isa]
            and g.N * g.groups * g.OH >= _direct_min_rows(g, isa) and g.OW >= DIRECT_MIN_WIDTH):
        return "direct"
    return "im2col"


def _direct_min_rows(g, isa):
    """The output rows over all planes the direct forward needs to win on ``isa``."""
    if isa in DIRECT_MIN_ROWS_WHOLE_VECTORS and g.OW % DIRECT_MIN_WIDTH == 0:
        return DIRECT_MIN_ROWS_WHOLE_VECTORS[isa]
    return DIRECT_MIN_ROWS[isa]


def _pack_filters(wg, block):
    """Weights (G, outputs per group, K) -> (G, blocks, K, block): a direct kernel's blocks of
    filters, filter-fastest, zero-padded to whole blocks."""
    G, O, K = wg.shape
    packed = np.empty((G, -(-O // block), K, block), dtype=wg.dtype)
    _direct.pack_filters(wg, packed, threads_for(wg.size))
    return packed


# The direct forward and dx run the filter-vector kernel on AVX-512 where the row kernel's
# vectors along the output columns would be partly idle: planes narrower than one vector (7x7,
# 8x8, 14x14 hold 44-88% of 16 floats a row pair; the filter-vector kernel's vectors along the
# filters are full from 32 filters on), and from FVEC_MIN_TAPS taps an output (shorter
# contractions spend more of its call on the outputs' transposed stores). Column strides 1 and 2
# forward, stride 1 for dx (``_direct.fvec_runs``). Elsewhere the row kernel was 1.1-2x faster,
# here 1.1-3.5x slower (docs/performance.md); with AVX2's 16 registers the filter-vector
# kernel's accumulators do not fit. It pads the whole input once per call, up to
# FVEC_MAX_SCRATCH_BYTES (past it, the row kernel's bands).
FVEC_MIN_TAPS = 64
FVEC_MAX_SCRATCH_BYTES = 8 << 20


def _fvec_fits(g, backward_input, itemsize):
    """Whether the filter-vector kernel is the direct kernel for this problem (any CPU)."""
    cols = g.W if backward_input else g.OW
    taps = g.Fg * g.KH * g.KW if backward_input else g.K
    return (_direct.fvec_runs(g, backward_input) and cols < 64 // itemsize and taps >= FVEC_MIN_TAPS
            and _direct.fvec_scratch_bytes(g, backward_input, itemsize, 1) <= FVEC_MAX_SCRATCH_BYTES)


@functools.lru_cache(maxsize=4096)
def _fvec_scratch(g, backward_input, itemsize, threads):
    """The bytes of scratch the filter-vector kernel needs for this problem, 0 where the row
    kernel runs it."""
    if _direct.vector_isa() != "x86-64-v4" or not _fvec_fits(g, backward_input, itemsize):
        return 0
    return _direct.fvec_scratch_bytes(g, backward_input, itemsize, threads)


# One image's filter-vector forward with this many bytes of weights packs them as its tasks go
# (``conv2d_forward_fvec_unpacked``): a call reads them once, where a kept packing costs a pass
# over w and its kept copy (to tell it is still right) and one over the packing, all three
# too large to stay in cache between calls (Zen 4, batch 1, 2 threads, in chains of four such
# layers: 512 channels at 7x7 0.58x the kept packing's time, at 14x14 0.83x; 256 channels at 7x7
# and 14x14, 2.25 MiB, 1.03-1.04x; docs/performance.md).
FVEC_UNPACKED_MIN_WEIGHT_BYTES = 4 << 20


def _fvec_unpacked(g, itemsize):
    """Whether the filter-vector forward packs the weights as its tasks go, keeping no packing."""
    return g.N == 1 and g.F * g.K * itemsize >= FVEC_UNPACKED_MIN_WEIGHT_BYTES


def _direct_block(fvec, dtype):
    """Filters per packed block of the kernel that runs: the filter-vector kernel's or the row
    kernel's."""
    return _direct.FILTER_VECTOR_BYTES // np.dtype(dtype).itemsize if fvec else _direct.FILTER_BLOCK


# A direct task copies the input rows its band of output rows reads; bands are whole planes but
# cut thinner when there are fewer planes than 4 per thread, and their copies kept to L2 size.
_DIRECT_BAND_BYTES = 1 << 20


@functools.lru_cache(maxsize=4096)  # a small call's set-up costs as much as its kernel
def _direct_band(g, backward_input, dtype, threads):
    """Output rows per direct task, and the bytes of per-thread scratch it needs."""
    planes, rows = g.N * g.groups, g.H if backward_input else g.OH
    band = max(1, -(-rows // -(-4 * threads // planes)))
    itemsize = np.dtype(dtype).itemsize
    nbytes = _direct.scratch_bytes(g, band, backward_input, itemsize)
    while band > 1 and nbytes > _DIRECT_BAND_BYTES:
        band = -(-band // 2)
        nbytes = _direct.scratch_bytes(g, band, backward_input, itemsize)
    if g.pool:  # the epilogue's pool takes whole pairs of rows, and a pair of rows of scratch
        band += band % 2
        nbytes = _direct.pooled_scratch_bytes(g, band, itemsize)
    return band, nbytes


def _forward_threads(x, w, b, g, y, algo):
    """The thread count of a forward that runs ``algo``'s compiled loops, once its sizes are
    checked to fit them; None when the problem is degenerate, answered here (y is the bias)."""
    if _degenerate(x, w):
        y[...] = 0 if b is None else b[None, :, None, None]
        return None
    _check_fits(g, algo, "forward")
    return threads_for(g.flops // 2)  # multiply-adds


def _degenerate_backward(dy, outs):
    dx, dw, db = outs
    if dx is not None:
        dx[...] = 0
    dw[...] = 0
    db[...] = dy.sum(axis=(0, 2, 3)) if dy.size else 0
    return outs


def direct_forward(x, w, b, g, outs):
    """The forward; its epilogue's pool and ReLU (``g.pool``) fused into the row kernel's tasks
    where its rows are wider than a vector (``conv2d_direct.pools``), else ``_with_epilogue``."""
    (y,) = outs
    if (g.pool or g.relu) and (not g.pool or _degenerate(x, w) or not _direct.pools(g, x.itemsize)):
        return _with_epilogue(direct_forward, x, w, b, g, outs)
    threads = _forward_threads(x, w, b, g, y, "direct")
    if threads is None:
        return (y,)
    fvec = _fvec_scratch(g, False, x.itemsize, threads)
    if fvec and g.pool:
        return _with_epilogue(direct_forward, x, w, b, g, outs)
    if fvec:
        return (_fvec_forward(x, w, b, g, y, fvec, threads),)
    block = _direct.FILTER_BLOCK
    packed_w = derived("direct", w, (g.groups, block),
                       lambda: _pack_filters(contiguous(w).reshape(g.groups, g.Fg, -1), block))
    band, nbytes = _direct_band(g, False, x.dtype, threads)
    with scratch("direct", (threads, nbytes), np.uint8) as work:
        _direct.conv2d_forward(contiguous(x), packed_w, _packed_bias(b, g, x.dtype, block), y, work, g, band,
                               threads, g.pool, g.relu)
    return (y,)


def _packed_bias(b, g, dtype, block):
    """The row kernel's starting accumulators (G, blocks, block): each group's biases in blocks
    of filters, zero-padded to whole blocks; zeros without a bias. A view of b where the blocks
    are whole (packing it cost a small call 2 us)."""
    blocks = -(-g.Fg // block)
    if b is None:
        return np.zeros((g.groups, blocks, block), dtype=dtype)
    bias = contiguous(b)
    if g.Fg % block == 0:
        return bias.reshape(g.groups, blocks, block)
    return _pack_filters(bias.reshape(g.groups, g.Fg, 1), block).reshape(g.groups, blocks, block)


def _fvec_forward(x, w, b, g, y, nbytes, threads):
    """The direct forward by the filter-vector kernel, with ``nbytes`` of scratch: one image with
    ``FVEC_UNPACKED_MIN_WEIGHT_BYTES`` of weights packed by its tasks, other calls on a packing
    kept across calls (``derived``). It leaves out the weights' products with padding rows,
    zeros where the weights are finite; elsewhere they are the reference's NaNs, and the weights
    are packed for each call (not kept: ``derived`` keeps only what its kernel can use)."""
    bias = contiguous(b) if b is not None else np.empty(0, dtype=x.dtype)
    with scratch("direct", (nbytes,), np.uint8) as work:
        if _fvec_unpacked(g, x.itemsize):
            _direct.conv2d_forward_fvec_unpacked(contiguous(x), contiguous(w), bias, y, work, g, threads)
            return y
        block = _direct_block(True, x.dtype)

        def pack():
            return _pack_filters(contiguous(w).reshape(g.groups, g.Fg, -1), block)

        packed_w = derived("direct", w, (g.groups, block), lambda: pack() if _finite(w) else None)
        skip_padding = packed_w is not None
        _direct.conv2d_forward_fvec(contiguous(x), pack() if packed_w is None else packed_w, bias, y, work, g,
                                    skip_padding, threads)
    return y


@_unfused_epilogue
def im2col_forward(x, w, b, g, outs):
    (y,) = outs
    threads = _forward_threads(x, w, b, g, y, "im2col")
    if threads is None:
        return (y,)
    rows, images, filters, size = _forward_tiles(g, threads, x.dtype.itemsize, _column_tile_bytes)
    with scratch("columns", (threads, size), x.dtype) as workspace:
        _im2col.conv2d_forward(contiguous(x), contiguous(w), contiguous(b), y, workspace, g, rows, images, filters,
                               threads)
    return (y,)


# With fewer (image, group) planes than threads the tiles split planes. Thinner bands give every
# thread all the weights to pack and stream for a part of the columns; where the weights outweigh
# a plane's columns by this much (Fg >= FILTER_SPLIT_RATIO * OH * OW: many filters on small
# planes, as ResNet's 7x7 stage at batch 1), tiles split the filters instead, each building its
# band's columns itself (docs/performance.md).
FILTER_SPLIT_RATIO = 4
FILTER_SPLIT_MULTIPLE = 16  # filters a tile: whole blocks of OpenBLAS's AVX2 kernel rows


@functools.lru_cache(maxsize=4096)  # a small call's set-up costs as much as its kernel
def _forward_tiles(g, threads, itemsize, tile_bytes):
    """An im2col forward tile's output rows, images and filters, and the workspace elements per
    thread, under column tile bytes ``tile_bytes`` (a key of the cache, as for ``_tiles_for``)."""
    filters = _tile_filters(g, threads)
    # Tiles of a part of the filters need no thinner bands: tiled as for one thread.
    rows, images = _tiles_for(g, threads if filters == g.Fg else 1, itemsize, tile_bytes)
    size = g.K * rows * g.OW if images == 1 else (g.K + g.Fg) * images * rows * g.OW  # columns (and product)
    return rows, images, filters, size


def _tile_filters(g, threads):
    """Filters per im2col forward tile: the group's ``Fg``, or a part of them (see
    ``FILTER_SPLIT_RATIO``)."""
    planes = g.N * g.groups
    if planes >= threads or g.Fg < FILTER_SPLIT_RATIO * g.OH * g.OW:
        return g.Fg
    per_plane = -(-threads // planes)
    return min(g.Fg, FILTER_SPLIT_MULTIPLE * -(-g.Fg // (per_plane * FILTER_SPLIT_MULTIPLE)))


def direct_backward(dy, x, w, g, outs):
    dx, dw, db = outs
    if _degenerate(x, w):
        return _degenerate_backward(dy, outs)
    if _im2col_fits(g) and not _finite(w, dy):
        # The direct dx multiplies every weight by the zeros of its padded, upsampled copy of dy
        # (0 * NaN poisons all of dx), and its dw skips the padding taps (a NaN in dy that the
        # reference multiplies by a padding zero leaves dw finite): im2col's products are the
        # reference's, NaN for NaN.
        return im2col_backward(dy, x, w, g, outs)
    _check_fits(g, "direct", "backward")
    threads = threads_for(g.work("backward")[0] // 2)  # multiply-adds of dx and dw
    dyc = contiguous(dy)
    if dx is not None:
        G, Fg, Cg = g.groups, g.Fg, g.Cg
        # dx convolves dy with each group's filters flipped and transposed: (G, Cg, Fg*KH*KW)
        fvec = _fvec_scratch(g, True, x.itemsize, threads)
        block = _direct_block(fvec, x.dtype)

        def pack_flipped():
            flipped = contiguous(w).reshape(G, Fg, Cg, g.KH, g.KW)[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
            return _pack_filters(flipped.reshape(G, Cg, -1), block)

        packed_wt = derived("direct input", w, (G, block), pack_flipped)
        if fvec:
            with scratch("direct", (fvec,), np.uint8) as work:
                # w was checked finite with dy where im2col fits: its products with padding are zeros
                _direct.conv2d_backward_input_fvec(dyc, packed_wt, dx, work, g, _im2col_fits(g), threads)
        else:
            zeros = np.zeros((G, packed_wt.shape[1], block), dtype=x.dtype)
            band, nbytes = _direct_band(g, True, x.dtype, threads)
            with scratch("direct", (threads, nbytes), np.uint8) as work:
                _direct.conv2d_backward_input(dyc, packed_wt, zeros, dx, work, g, band, threads)
    if _im2col_fits(g):  # dw and db by im2col's GEMMs: the direct loops' are 10-40x slower
        im2col_backward(dyc, x, w, replace(g, input_grad=False), (None, dw, db))
    else:
        with scratch("rows", (threads, g.OW), x.dtype) as accumulators:
            _direct.conv2d_backward_weight(dyc, contiguous(x), dw, db, accumulators, g, threads)
    return outs


def _tiles(g, threads, itemsize):
    """Output rows and images of an im2col tile."""
    return _tiles_for(g, threads, itemsize, _column_tile_bytes)


@functools.lru_cache(maxsize=4096)  # a small call's set-up costs as much as its kernel
def _tiles_for(g, threads, itemsize, tile_bytes):
    """``_tiles`` under column tile bytes ``tile_bytes`` (the value ``_band_rows`` and
    ``_tile_images`` read: a key of the cache)."""
    rows = _band_rows(g, threads, itemsize)
    if not _im2col_fits(g, rows):  # tiles cut thinner (one row fits: checked by _check_fits)
        rows = 1
    return rows, _tile_images(g, rows, threads, itemsize)


def im2col_backward(dy, x, w, g, outs):
    dx, dw, db = outs
    if _degenerate(x, w):
        return _degenerate_backward(dy, outs)
    _check_fits(g, "im2col", "backward")
    threads = threads_for(g.work("backward")[0] // 2)  # multiply-adds
    # Too few planes for a task each: tasks by blocks of input channels, with dx always; without
    # it where there are enough channels for the blocks (with fewer, as the ResNet stem's three,
    # bands of output rows, summed per thread, were 1.2x faster)
    if g.N * g.groups < threads and (g.input_grad or g.Cg >= SMALL_BATCH_CHANNEL_BLOCKS):
        return _small_batch_backward(dy, x, w, g, outs, threads)
    if g.input_grad:  # a task (the dx of a group of images) per thread at most
        threads = min(threads, g.N * g.groups)
    rows, images = _tiles(g, threads, x.dtype.itemsize)
    # without dx, one image's bands are tasks of their own (the kernel's ``split``)
    bands = 1 if g.input_grad or images > 1 else -(-g.OH // rows)
    threads = min(threads, -(-g.N // images) * g.groups * bands)
    # columns of x and of dx (and of dy when several images share a task)
    size = 2 * g.K * rows * g.OW if images == 1 else (2 * g.K + g.Fg) * images * rows * g.OW
    # The partial sums are reduced inside the checkout: nothing else can write them meanwhile.
    partials = threads if threads > 1 else 0
    with scratch("columns", (threads, size), x.dtype) as workspace, \
            scratch("dw", (partials, g.F * g.K), x.dtype) as dw_partial, \
            scratch("db", (partials, g.F), x.dtype) as db_partial:
        if threads == 1:  # the one thread's partial sums are the result
            dw_partial, db_partial = dw.reshape(1, -1), db.reshape(1, -1)
        dw_partial[...] = 0
        db_partial[...] = 0
        _im2col.conv2d_backward(contiguous(dy), contiguous(x), contiguous(w), dx, dw_partial, db_partial,
                                workspace, g, rows, images, threads)
        if threads > 1:
            np.sum(dw_partial, axis=0, out=dw.reshape(-1))
            np.sum(db_partial, axis=0, out=db)
    return outs


# dw and dx of a small batch are cut into this many blocks of input channels per (image, group)
# plane (fewer where there are fewer channels): a count of the problem's, so the bits do not depend
# on the thread count.
SMALL_BATCH_CHANNEL_BLOCKS = 8
# Up to this many output positions a band, the small batch's dw products (depth: the positions)
# run in float32 on the columns packed for packed_gemm.h's register blocks, not OpenBLAS's gemm,
# which packs and scales dw first: faster on 7x7 planes, even on 8x8, slower from 16x16 on
# (docs/performance.md).
SMALL_BATCH_PACKED_MAX_POSITIONS = 64


def _small_batch_backward(dy, x, w, g, outs, threads):
    """im2col's backward over fewer (image, group) planes than threads: a task per block of a
    plane's input channels for its columns of dw (the first also for db), and for dx (where
    asked); no partial sums at batch 1; dw's products on packed columns on bands of at most
    ``SMALL_BATCH_PACKED_MAX_POSITIONS`` positions (float32, where packed_gemm.h has a blocking)."""
    dx, dw, db = outs
    channels = -(-g.Cg // min(g.Cg, SMALL_BATCH_CHANNEL_BLOCKS))
    rows, _ = _tiles(g, 1, x.dtype.itemsize)
    partials = g.N if g.N > 1 else 0
    packed = (x.dtype == np.float32 and _gated.PACKED_BLOCKING is not None
              and min(rows, g.OH) * g.OW <= SMALL_BATCH_PACKED_MAX_POSITIONS)
    panels = (threads, _im2col.panels_size(channels, g, rows)) if packed else (0, 0)
    with scratch("columns", (threads, g.K * rows * g.OW), x.dtype) as workspace, \
            scratch("dw panels", panels, np.float32) as dw_panels, \
            scratch("dw", (partials, g.F * g.K), x.dtype) as dw_partial, \
            scratch("db", (partials, g.F), x.dtype) as db_partial:
        if g.N == 1:  # the one image's partial sums are the result
            dw_partial, db_partial = dw.reshape(1, -1), db.reshape(1, -1)
        db_partial[...] = 0  # dw_partial: every plane's part is written (its first band's product)
        _im2col.conv2d_backward_small_batch(contiguous(dy), contiguous(x), contiguous(w), dx, dw_partial,
                                            db_partial, workspace, g, rows, channels, threads,
                                            dw_panels if packed else None, _gated.avx512_blocking())
        if g.N > 1:
            np.sum(dw_partial, axis=0, out=dw.reshape(-1))
            np.sum(db_partial, axis=0, out=db)
    return outs


# The depthwise plane loops (conv2d_depthwise.pyx). MobileNet's layers (3x3 filters, stride 1,
# dilation 1, padding 1, rows of at least half a vector: ``_depthwise.VECTOR_BYTES`` / 2, 4
# floats; backward one filter per channel) take the 3x3 loops, which sweep each vector column
# down the plane with the filter in registers and need no copy. Other problems with output rows
# of at least half a vector (any stride; backward at stride 1 input rows too, its dx by the row
# loops at other strides) take the blocked loops, a block of outputs (or a filter's sums) in registers
# over the taps, read from a padded copy of the plane (a thread's workspace row, bounded by
# ``DEPTHWISE_BLOCKED_MAX_BYTES``). Both beat the others on every plane measured
# (docs/performance.md). Narrower rows take, forward at stride 1, the padded-plane loops while
# their two plane copies fit L1, which there beat the row loops' short passes; the row loops take
# the rest (a padded backward would multiply its widened dy's zero columns by input cells, NaN
# for an infinite one where the reference has no term).
DEPTHWISE_BLOCKED_MAX_BYTES = 8 << 20
DEPTHWISE_PADDED_MAX_BYTES = 32 << 10
# The loops in that order of preference: the first that applies runs ("rows" always does).
DEPTHWISE_LOOPS = ("3x3", "blocked", "padded", "rows")


def _depthwise_loops(g, itemsize, direction):
    """The depthwise plane loops (the first of ``DEPTHWISE_LOOPS`` that applies) and a thread's
    workspace values."""
    backward, stride_1 = direction == "backward", (g.stride_h, g.stride_w) == (1, 1)
    vector = _depthwise.VECTOR_BYTES // itemsize
    # rows of at least half a vector (the narrow kernels'); dx by the row loops at stride > 1
    wide = 2 * g.OW >= vector and (not backward or not stride_1 or 2 * g.W >= vector)
    same_3x3 = ((g.KH, g.KW, g.dilation_h, g.dilation_w, g.pad_top, g.pad_bottom, g.pad_left, g.pad_right)
                == (3, 3, 1, 1, 1, 1, 1, 1) and (not backward or g.Fg == 1))
    for loops in DEPTHWISE_LOOPS:
        if loops == "rows":
            break
        if loops == "blocked" and wide:
            size = _depthwise.workspace_size(g, _depthwise.BLOCKED, backward)
            if size * itemsize <= DEPTHWISE_BLOCKED_MAX_BYTES:
                return loops, size
        if not stride_1:
            continue
        if loops == "3x3" and same_3x3 and wide:
            return loops, 0
        if loops == "padded" and not backward:
            size = _depthwise.workspace_size(g, _depthwise.PADDED, False)
            if size * itemsize <= DEPTHWISE_PADDED_MAX_BYTES:
                return loops, size
    return "rows", 0


_DEPTHWISE_LOOPS = {"rows": _depthwise.ROWS, "padded": _depthwise.PADDED, "blocked": _depthwise.BLOCKED,
                    "3x3": _depthwise.SAME_3X3}


@_unfused_epilogue
def depthwise_forward(x, w, b, g, outs):
    (y,) = outs
    if not _finite(w):  # padding taps are skipped, not multiplied by zero: the reference's NaNs need im2col
        return im2col_forward(x, w, b, g, outs)
    threads = _forward_threads(x, w, b, g, y, "depthwise")  # no size limit of its own
    if threads is not None:
        loops, size = _depthwise_loops(g, x.dtype.itemsize, "forward")
        with scratch("depthwise", (threads, max(size, 1)), x.dtype) as work:
            _depthwise.conv2d_forward(contiguous(x), contiguous(w), contiguous(b), y, work if size else None, g,
                                      _DEPTHWISE_LOOPS[loops], threads)
    return (y,)


def depthwise_backward(dy, x, w, g, outs):
    dx, dw, db = outs
    if _degenerate(x, w):
        return _degenerate_backward(dy, outs)
    if not _finite(w, dy):  # as in depthwise_forward: non-finite values meet padding taps in the reference
        return im2col_backward(dy, x, w, g, outs)
    threads = threads_for(g.work("backward")[0] // 2)
    loops, size = _depthwise_loops(g, x.dtype.itemsize, "backward")
    with scratch("depthwise", (threads, max(size, 1)), x.dtype) as work:
        _depthwise.conv2d_backward(contiguous(dy), contiguous(x), contiguous(w), dx, dw, db, work if size else None,
                                   g, _DEPTHWISE_LOOPS[loops], threads)
    return outs


# ---------------------------------------------------------------------------- winograd F(4x4, 3x3)

# A task's tiles (the 36 GEMMs' N; the transforms' vector loops run along them too): each gemm
# packs its U[xi] (Fg x Cg) for N columns, so wider channels want more tiles. Measured best on
# the design layers (docs/performance.md): about (Cg + Fg) / 4 tiles, at least 64; on calls too
# small for 2 such tasks, fewer, so that both threads work, but at least 32 (half the speed-up
# is lost at 16).
_WINOGRAD_TILES = 64
_WINOGRAD_MIN_TILES = 32
_WINOGRAD_MIN_TASKS = 2
_WINOGRAD_FILTER_MULTIPLE = 16


def _transform_filters(w, g, flipped=False):
    """U (groups, 36, Cg, Fg) = G w G^T for every filter and channel, computed in float64 and
    rounded once to w's dtype (conv2d_winograd.pyx), each position's filters a row of a channel
    (the GEMMs' right-hand operand); or None where w holds a NaN or an infinity (a tile's
    transforms would spread it to all its outputs; where w is finite so is U: G's rows sum to
    at most 1 in magnitude). ``flipped``: the data gradient's, (groups, 36, Fg, Cg), of w rotated
    180 degrees with each group's in- and out-channels swapped (``_winograd_input_geometry``)."""
    if not _finite(w):
        return None
    U = np.empty((g.groups, 36) + ((g.Fg, g.Cg) if flipped else (g.Cg, g.Fg)), dtype=w.dtype)
    _winograd.transform_filters(contiguous(w), U, g.groups, threads_for(g.F * g.Cg * 36 * 9), flipped)
    return U


def _winograd_filters(w, g):
    """w's transformed filters (``_transform_filters``), kept while w is unchanged (``derived``),
    so the finiteness check runs once."""
    return derived("winograd", w, g.groups, lambda: _transform_filters(w, g))


def _winograd_input_filters(w, g):
    """The transformed filters of the data gradient's forward, kept as ``_winograd_filters``."""
    return derived("winograd input", w, g.groups, lambda: _transform_filters(w, g, flipped=True))


def _winograd_band(g):
    """Tile rows per task (consecutive rows of the batch, across images) and tiles per row: about
    max(``_WINOGRAD_TILES``, (Cg + Fg) / 4) tiles, cut to make ``_WINOGRAD_MIN_TASKS`` tasks but
    not below ``_WINOGRAD_MIN_TILES``; at least one row, at most all of them. It does not depend
    on the thread count."""
    tile = _winograd.TILE_SIZE
    tiles_w, tile_rows = -(-g.OW // tile), g.N * -(-g.OH // tile)
    floor = -(-_WINOGRAD_MIN_TILES // tiles_w)
    rows = -(-max(_WINOGRAD_TILES, (g.Cg + g.Fg) // 4) // tiles_w)
    blocks = -(-_WINOGRAD_MIN_TASKS // g.groups)  # blocks of rows per group for that many tasks
    rows = max(floor, min(rows, -(-tile_rows // blocks)))
    return max(1, min(rows, tile_rows)), tiles_w


def _winograd_task_filters(g, rows):
    """Filters per forward task: all of the group's, unless its tile rows make fewer than
    ``_WINOGRAD_MIN_TASKS`` tasks (batch 1 on small planes: 16x16 has four tile rows, all in one
    task, 8x8 two); then a share of them in whole blocks of ``_WINOGRAD_FILTER_MULTIPLE``, for
    that many tasks. More tasks than that ran slower on two threads (each transforms the input
    again and runs its own 36 gemms: docs/performance.md). It does not depend on the thread
    count."""
    tasks = g.groups * -(-g.N * -(-g.OH // _winograd.TILE_SIZE) // rows)
    if tasks >= _WINOGRAD_MIN_TASKS:
        return g.Fg
    per_task = -(-g.Fg // -(-_WINOGRAD_MIN_TASKS // tasks))
    return min(g.Fg, _WINOGRAD_FILTER_MULTIPLE * -(-per_task // _WINOGRAD_FILTER_MULTIPLE))


def _winograd_run(x, U, b, g, y, threads):
    """y = conv2d(x, w) + b by the F(4x4, 3x3) kernel on w's transformed filters U: x, w, b
    finite, sizes checked non-degenerate."""
    rows, tiles_w = _winograd_band(g)
    if max(g.Fg + 15, g.Cg + 15, rows * tiles_w) > BLAS_INT_MAX:  # V's and M's rows: whole 16-lane vectors
        raise ValueError(f"conv2d sizes exceed what BLAS can index (C ints) for algo='winograd': {g}")
    filters = _winograd_task_filters(g, rows)
    with scratch("winograd", (threads, _winograd.workspace_size(g.Cg, filters, rows, tiles_w)), x.dtype) as work:
        _winograd.conv2d_forward(contiguous(x), U, contiguous(b), y, work, g, rows, filters, threads, g.pool, g.relu)


def _phase_split(a, dh, dw, out):
    """a (N, C, H, W) -> out (N * dh * dw, C, H / dh, W / dw): each image's dilation phases
    (rows r mod dh, columns s mod dw) as images (r, s) of it; a phase at a time, as one strided
    copy of all of them runs several times slower."""
    N, C, H, W = a.shape
    a6, o6 = a.reshape(N, C, H // dh, dh, W // dw, dw), out.reshape(N, dh, dw, C, H // dh, W // dw)
    for r in range(dh):
        for s in range(dw):
            o6[:, r, s] = a6[:, :, :, r, :, s]
    return out


def _phase_merge(phases, dh, dw, out):
    """The inverse of ``_phase_split``: phases (N * dh * dw, C, H / dh, W / dw) -> out (N, C, H, W)."""
    N, C, H, W = out.shape
    p6, o6 = phases.reshape(N, dh, dw, C, H // dh, W // dw), out.reshape(N, C, H // dh, dh, W // dw, dw)
    for r in range(dh):
        for s in range(dw):
            o6[:, :, :, r, :, s] = p6[:, r, s]
    return out


def _phased_winograd_forward(x, w, b, g, y):
    """A dilated forward as the undilated Winograd forward of its phase batch."""
    pg, dh, dw = dilation_phases(g), g.dilation_h, g.dilation_w
    with scratch("phases in", pg.x_shape, x.dtype) as xs, scratch("phases out", pg.y_shape, x.dtype) as ys:
        winograd_forward(_phase_split(x, dh, dw, xs), w, b, pg, (ys,))
        _phase_merge(ys, dh, dw, y)
    return (y,)


def winograd_forward(x, w, b, g, outs):
    """The forward, its epilogue (``g.pool``, ``g.relu``) fused into the output transform but on
    a dilated or degenerate problem."""
    (y,) = outs
    if (g.pool or g.relu) and ((g.dilation_h, g.dilation_w) != (1, 1) or _degenerate(x, w)):
        return _with_epilogue(winograd_forward, x, w, b, g, outs)
    if (g.dilation_h, g.dilation_w) != (1, 1):
        return _phased_winograd_forward(x, w, b, g, y)
    threads = _forward_threads(x, w, b, g, y, "winograd")
    if threads is None:
        return (y,)
    U = _winograd_filters(w, g)
    if U is None or not _finite(x):  # a tile's transforms spread a NaN or an infinity to all its outputs
        return im2col_forward(x, w, b, g, outs)
    _winograd_run(x, U, b, g, y, threads)
    return (y,)


# The data gradient is the forward kernel on dy: at stride 1, dx = conv2d(dy, w flipped 180
# degrees with each group's in- and out-channels swapped, padding 2 - p per side), for paddings
# p <= 2 (the spec's _cpu_winograd_declines refuses more).
def _winograd_input_geometry(g):
    """The forward geometry whose output is dx: dy's planes in, x's planes out."""
    return Conv2dGeometry(g.N, g.F, g.OH, g.OW, g.C, 3, 3, g.H, g.W, 1, 1, 2 - g.pad_top, 2 - g.pad_bottom,
                          2 - g.pad_left, 2 - g.pad_right, 1, 1, g.groups)


# The weight gradient by Winograd: dU[xi] = sum over tiles of (A dY A^T)[xi] V[xi]^T, then
# dW = G^T dU G. The tasks are summed in consecutive runs of fixed count, each on one thread into
# its own partial dU (36 Fg x Cg a group: 4 times w's size), added in order: _WINOGRAD_DW_RUNS
# runs, fewer where the tasks are fewer or the partials would pass _WINOGRAD_DW_BYTES, but two
# where there are two tasks, so that two threads share the work; never a count that depends on
# the threads.
_WINOGRAD_DW_RUNS = 4
_WINOGRAD_DW_BYTES = 64 << 20


def _winograd_dw_runs(g, itemsize):
    """Partial dU sums of the weight gradient: runs of consecutive tasks, one thread each."""
    rows, _ = _winograd_band(g)
    tasks = g.groups * -(-g.N * -(-g.OH // _winograd.TILE_SIZE) // rows)
    fit = _WINOGRAD_DW_BYTES // (36 * g.F * g.Cg * itemsize)
    return max(1, min(_WINOGRAD_DW_RUNS, tasks, max(2, fit)))


def _winograd_weight_grad(dy, x, g, dw, db, threads):
    """dw and db of a stride-1 3x3 convolution, dw by Winograd (x and dy finite, C-contiguous)."""
    rows, tiles_w = _winograd_band(g)
    if max(g.Fg + 15, g.Cg + 15, rows * tiles_w) > BLAS_INT_MAX:  # V's and M's rows: whole 16-lane vectors
        raise ValueError(f"conv2d sizes exceed what BLAS can index (C ints) for algo='winograd': {g}")
    runs = _winograd_dw_runs(g, x.dtype.itemsize)
    threads = min(threads, runs)
    dU = np.zeros((runs, g.groups, 36, g.Fg, g.Cg), dtype=x.dtype)
    with scratch("winograd", (threads, _winograd.workspace_size(g.Cg, g.Fg, rows, tiles_w)), x.dtype) as work:
        _winograd.conv2d_backward_weight(x, dy, dU, work, g, rows, threads)
    _winograd.filters_grad(dU, dw, threads_for(g.F * g.Cg * 36 * (runs + 9)))
    _winograd.bias_grad(dy.reshape(g.N, g.F, g.OH * g.OW), db, threads_for(dy.size))


def _phased_winograd_backward(dy, x, w, g, outs):
    """A dilated backward as the undilated Winograd backward of its phase batch: dx's phases are
    the phase batch's dx, dw and db its sums over all phases, which hold every output once."""
    dx, dw, db = outs
    pg, dh, dwl = dilation_phases(g), g.dilation_h, g.dilation_w
    with scratch("phases in", pg.x_shape, x.dtype) as xs, scratch("phases out", pg.y_shape, x.dtype) as dys, \
            scratch("phases grad", pg.x_shape if dx is not None else (0,), x.dtype) as dxs:
        winograd_backward(_phase_split(dy, dh, dwl, dys), _phase_split(x, dh, dwl, xs), w, pg,
                          (dxs if dx is not None else None, dw, db))
        if dx is not None:
            _phase_merge(dxs, dh, dwl, dx)
    return outs


def winograd_backward(dy, x, w, g, outs):
    dx, dw, db = outs
    if _degenerate(x, w):
        return _degenerate_backward(dy, outs)
    if (g.dilation_h, g.dilation_w) != (1, 1):
        return _phased_winograd_backward(dy, x, w, g, outs)
    if not _finite(w, dy):  # as in winograd_forward: the reference's NaNs need im2col's products
        return im2col_backward(dy, x, w, g, outs)
    dyc = contiguous(dy)
    if dx is not None:
        _winograd_run(dyc, _winograd_input_filters(w, g), None, _winograd_input_geometry(g), dx,
                      threads_for(g.flops // 2))
    # A NaN of x spreads over its tiles' transforms: im2col's products are the reference's.
    if _winograd_weight_grad_wins(g) and _finite(x):
        _winograd_weight_grad(dyc, contiguous(x), g, dw, db, threads_for(g.flops // 2))
    else:
        im2col_backward(dyc, x, w, replace(g, input_grad=False), (None, dw, db))
    return outs
