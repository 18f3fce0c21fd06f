"""Tile sizes, the ``jit`` wrapper and launch configurations: the one place to tune them."""
from __future__ import annotations

from numba import config, cuda

SIMULATOR = bool(config.ENABLE_CUDASIM)

# Tiled GEMM: a block of GEMM_BLOCK_X x GEMM_BLOCK_Y threads computes a TILE_M x TILE_N tile of C,
# each thread a THREAD_M x THREAD_N register tile (rows tx + BLOCK_X*i, columns ty + BLOCK_Y*j, so
# neighbouring threads touch neighbouring rows: coalesced stores along M, conflict-free shared
# reads); K advances TILE_K at a time through shared memory.
THREAD_M = 4
THREAD_N = 4
GEMM_BLOCK_X = 16
GEMM_BLOCK_Y = 16
TILE_M = GEMM_BLOCK_X * THREAD_M
TILE_N = GEMM_BLOCK_Y * THREAD_N
TILE_K = 8
GEMM_THREADS = GEMM_BLOCK_X * GEMM_BLOCK_Y

# Split-K (used where M x N is small and K long, e.g. weight gradients): aim for this many blocks,
# but give every split at least SPLIT_K_MIN_CHUNK terms of K.
SPLIT_K_TARGET_BLOCKS = 264  # two waves on a 132-SM H100
SPLIT_K_MIN_CHUNK = 512

# Direct conv2d: one thread per output pixel, the filter staged through shared memory in chunks.
DIRECT_BLOCK = 128
DIRECT_W_CHUNK = 1024

ELEMENTWISE_BLOCK = 256
REDUCE_BLOCK = 128  # a power of two: the shared-memory tree halves it

_MAX_GRID = (2**31 - 1, 65535, 65535)


def jit(**options):
    """``cuda.jit`` with the options the simulator rejects (``lineinfo``, ``launch_bounds``)
    dropped under ``NUMBA_ENABLE_CUDASIM=1``."""
    if SIMULATOR:
        options.pop("lineinfo", None)
        options.pop("launch_bounds", None)
    return cuda.jit(**options)


def _cdiv(a, b):
    return -(-a // b)


def split_k(M, N, K, groups=1):
    """Number of K splits and the K chunk per split for a GEMM of this shape."""
    tiles = max(1, _cdiv(M, TILE_M) * _cdiv(N, TILE_N) * groups)  # an empty output still has one
    splits = max(1, min(_cdiv(SPLIT_K_TARGET_BLOCKS, tiles), _cdiv(K, SPLIT_K_MIN_CHUNK)))
    chunk = _cdiv(_cdiv(max(K, 1), splits), TILE_K) * TILE_K
    return _cdiv(max(K, 1), chunk), chunk


def launch_config(kind, *sizes):
    """(grid, block) of a launch.

    kind "gemm": sizes (M, N, batches) -> a block per TILE_M x TILE_N tile, batches along z;
    kind "elementwise": sizes (threads,) -> 1-D blocks of ELEMENTWISE_BLOCK;
    kind "direct": sizes (planes, pixels) -> DIRECT_BLOCK pixels of one output plane per block;
    kind "reduce": sizes (outputs,) -> one REDUCE_BLOCK block per output.
    Raises ValueError when the problem exceeds CUDA's grid limits."""
    if kind == "gemm":
        M, N, batches = sizes
        grid, block = (_cdiv(M, TILE_M), _cdiv(N, TILE_N), batches), (GEMM_BLOCK_X, GEMM_BLOCK_Y)
    elif kind == "elementwise":
        grid, block = (_cdiv(sizes[0], ELEMENTWISE_BLOCK),), (ELEMENTWISE_BLOCK,)
    elif kind == "direct":
        planes, pixels = sizes
        grid, block = (planes * _cdiv(pixels, DIRECT_BLOCK),), (DIRECT_BLOCK,)
    elif kind == "reduce":
        grid, block = (sizes[0],), (REDUCE_BLOCK,)
    else:
        raise ValueError(f"unknown launch kind {kind!r}")
    for extent, limit in zip(grid, _MAX_GRID):
        if extent > limit:
            raise ValueError(f"{kind} launch needs a grid of {grid} blocks, beyond CUDA's limits {_MAX_GRID}")
    return tuple(max(e, 1) for e in grid), block
