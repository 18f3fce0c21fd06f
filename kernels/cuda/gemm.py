"""The shared-memory tiled GEMM with register blocking that every GEMM-shaped kernel is made of.

``make_gemm(a_index, b_index, store, dtype)`` returns a kernel computing, for each batch ``grp``
(a conv group) and K-split ``split`` (both along grid z), ``C[m, n] = sum_k A[m, k] * B[k, n]``
over the split's range of k, where the operands are never materialised:

* ``a_index(geo, grp, m, k)`` / ``b_index(geo, grp, k, n)`` return the flat index of the element
  in ``a`` / ``b``, or -1 for an implicit zero (padding, a stride gap);
* ``store(c, p, q, geo, grp, split, m, n, acc)`` writes the result (the epilogue: bias, tanh, ...).

Kernel arguments: ``(a, b, c, p, q, geo, M, N, K, k_chunk)``: 1-D C-ordered arrays a, b, c, p, q
(p, q: epilogue operands, possibly empty), ``geo`` a tuple of GEO_LEN int64 (the caller's sizes and
offsets), and K split into chunks of ``k_chunk`` (a multiple of TILE_K).
"""
from __future__ import annotations

from numba import cuda

from .launch import (
    GEMM_BLOCK_X,
    GEMM_BLOCK_Y,
    GEMM_THREADS,
    THREAD_M,
    THREAD_N,
    TILE_K,
    TILE_M,
    TILE_N,
    jit,
)

GEO_LEN = 16


def _make_stage(index, width, k_first):
    """A device function that stages one TILE_K x ``width`` tile of an operand into shared memory
    ``tile`` (implicit zeros as 0): element (kk, rr) is the operand's element at row r0 + rr and
    k0 + kk along K, ``index(geo, grp, k, r)`` if ``k_first`` else ``index(geo, grp, r, k)``, for
    r0 + rr < rows and k0 + kk < k_end; consecutive threads take consecutive rr."""

    @cuda.jit(device=True, inline=True)
    def stage(tile, src, geo, grp, tid, r0, rows, k0, k_end):
        for e in range(tid, TILE_K * width, GEMM_THREADS):
            kk = e // width
            rr = e - kk * width
            idx = -1
            if r0 + rr < rows and k0 + kk < k_end:
                if k_first:
                    idx = index(geo, grp, k0 + kk, r0 + rr)
                else:
                    idx = index(geo, grp, r0 + rr, k0 + kk)
            if idx >= 0:
                tile[kk, rr] = src[idx]
            else:
                tile[kk, rr] = 0

    return stage


def make_gemm(a_index, b_index, store, dtype):
    stage_a = _make_stage(a_index, TILE_M, False)
    stage_b = _make_stage(b_index, TILE_N, True)

    @jit(lineinfo=True, launch_bounds=GEMM_THREADS)
    def gemm(a, b, c, p, q, geo, M, N, K, k_chunk):
        # Block (tile_m, tile_n, grp * splits + split); thread (tx, ty) owns rows
        # m0 + tx + GEMM_BLOCK_X * i and columns n0 + ty + GEMM_BLOCK_Y * j.
        sa = cuda.shared.array((TILE_K, TILE_M), dtype)
        sb = cuda.shared.array((TILE_K, TILE_N), dtype)
        acc = cuda.local.array((THREAD_M, THREAD_N), dtype)
        ra = cuda.local.array(THREAD_M, dtype)
        rb = cuda.local.array(THREAD_N, dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * GEMM_BLOCK_X + tx
        m0 = cuda.blockIdx.x * TILE_M
        n0 = cuda.blockIdx.y * TILE_N
        splits = max(1, (K + k_chunk - 1) // k_chunk)  # K = 0: one split, acc = 0
        grp = cuda.blockIdx.z // splits
        split = cuda.blockIdx.z - grp * splits
        k_begin = split * k_chunk
        k_end = min(K, k_begin + k_chunk)
        for i in range(THREAD_M):
            for j in range(THREAD_N):
                acc[i, j] = 0
        for k0 in range(k_begin, k_end, TILE_K):
            # Stage the A and B tiles; consecutive threads take consecutive m (A) / n (B).
            stage_a(sa, a, geo, grp, tid, m0, M, k0, k_end)
            stage_b(sb, b, geo, grp, tid, n0, N, k0, k_end)
            cuda.syncthreads()
            for kk in range(TILE_K):
                for i in range(THREAD_M):
                    ra[i] = sa[kk, tx + GEMM_BLOCK_X * i]
                for j in range(THREAD_N):
                    rb[j] = sb[kk, ty + GEMM_BLOCK_Y * j]
                for i in range(THREAD_M):
                    for j in range(THREAD_N):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()
        for i in range(THREAD_M):
            m = m0 + tx + GEMM_BLOCK_X * i
            if m < M:
                for j in range(THREAD_N):
                    n = n0 + ty + GEMM_BLOCK_Y * j
                    if n < N:
                        store(c, p, q, geo, grp, split, m, n, acc[i, j])

    return gemm
