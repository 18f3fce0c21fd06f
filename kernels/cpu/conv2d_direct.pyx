# conv2d by direct loops over NCHW, no column matrix: forward, dx and dw (the wrapper takes dw
# from im2col's GEMMs, 10-40x faster, where their sizes fit a C int; these loops index in 64 bits).
#
# Forward and dx are one computation, a "row convolution" (_conv_rows). A task takes a band of
# output rows of one image and group, copies the input rows the band reads into per-thread
# scratch, zero-padded on every side and with the columns split into `stride` phases, so that
# every kernel tap reads a contiguous run of it at a fixed offset; then each output row segment
# of up to two vectors is the sum over the taps (conv2d_direct_simd.h), FL_FB filters at a time
# with the accumulators in registers. dx is the forward of dy with each group's filters flipped
# and transposed, dy upsampled by the stride (zeros between its samples) in the padded copy.
#
# On AVX-512 the wrapper runs the forward and the stride-1 dx of planes narrower than a vector
# on the filter-vector kernel instead (_conv_fvec, conv2d_direct_fvec.h): vectors along blocks of
# filters, over one padded copy of the whole input, the same taps in the same order (less, where
# the weights are finite, the kernel rows that read only padding: their products are zeros).
#
# Each output element is owned by one task and summed in a fixed order: results are
# reproducible bit for bit and independent of the thread count.
#
# Bounds: sizes come from the conv2d spec (fastlayers.ops.conv2d) and the array shapes are checked by
# the wrapper (backends/cpu/conv2d.py); the band copy reads only rows and columns checked to be
# inside the input, and the kernel reads only inside the copy (RowConv says how wide it is); the
# filter-vector kernel reads only inside its padded copy, whose size its entry checks the
# scratch holds (fvec_scratch_bytes), and packed weights of the shape its entry checks, or w's
# first nf rows of a block (the filters there are) where its tasks pack them.
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from _conv2d cimport Conv2dShape, TapColumns, conv2d_shape, lane_sum, tap_columns

cdef extern from "conv2d_direct_simd.h" nogil:
    enum: FL_FB
    void fl_direct_block_float(const float* base, const ptrdiff_t* toff, ptrdiff_t ntaps,
                               ptrdiff_t in_step, const float* wp, const float* bias, float* out,
                               ptrdiff_t ld, ptrdiff_t out_step, int nf, int nvec, int lanes0,
                               int lanes1)
    void fl_direct_block_double(const double* base, const ptrdiff_t* toff, ptrdiff_t ntaps,
                                ptrdiff_t in_step, const double* wp, const double* bias,
                                double* out, ptrdiff_t ld, ptrdiff_t out_step, int nf, int nvec,
                                int lanes0, int lanes1)
    int fl_direct_wide_only
    int fl_direct_uses_avx2()

cdef extern from "max_pool2d_simd.h" nogil:
    # The epilogue's pool: one pair of output rows of a filter as a 2x2 plane (NULL indices).
    void fl_pool_plane_2x2_float(const float* x, float* y, int64_t* indices, Py_ssize_t W, Py_ssize_t OH,
                                 Py_ssize_t OW, bint stream, bint relu)
    void fl_pool_plane_2x2_double(const double* x, double* y, int64_t* indices, Py_ssize_t W, Py_ssize_t OH,
                                  Py_ssize_t OW, bint stream, bint relu)

cdef extern from "conv2d_direct_fvec.h" nogil:
    enum: FL_FVEC_MAX_POSITIONS
    void fl_fvec_block_float(const float* base, const ptrdiff_t* toff, const float* wp,
                             ptrdiff_t nruns, ptrdiff_t run_taps, ptrdiff_t run_stride,
                             const float* init, ptrdiff_t init_step, float* tmp, int np, int sw)
    void fl_fvec_block_double(const double* base, const ptrdiff_t* toff, const double* wp,
                              ptrdiff_t nruns, ptrdiff_t run_taps, ptrdiff_t run_stride,
                              const double* init, ptrdiff_t init_step, double* tmp, int np,
                              int sw)

cdef extern from "filter_tiles.h" nogil:
    int fl_pack_block_uint32_t(const uint32_t* w, ptrdiff_t ld, ptrdiff_t K, int nf, uint32_t* dst,
                               uint32_t exponent)
    int fl_pack_block_uint64_t(const uint64_t* w, ptrdiff_t ld, ptrdiff_t K, int nf, uint64_t* dst,
                               uint64_t exponent)

cdef extern from "target_clones.h" nogil:
    const char* fl_clone_isa()

cdef enum:
    VECTOR_BYTES = 64  # one vector of the block kernel; a row segment is at most two
    FVEC_BLOCK_BYTES = 128  # the filter-vector kernel's block of filters: two vectors
    FVEC_TASKS_PER_THREAD = 8  # enough for dynamic scheduling to even out the threads' work
    FVEC_PARTIAL_BYTES = 16384  # a thread's partial sums of a group of output rows (see _conv_fvec)
    FVEC_CHUNK_TAPS = 1024  # taps of one pass over a group of rows: 128 KiB of weights
    PACK_TAPS = 16  # taps per run of pack_filters (see there)

FILTER_BLOCK = FL_FB  # filters per register block of the row kernel: its packed weights' last axis
FILTER_VECTOR_BYTES = FVEC_BLOCK_BYTES  # a block of the filter-vector kernel's filters, in bytes
FVEC_MAX_COLUMNS = FVEC_PARTIAL_BYTES // FVEC_BLOCK_BYTES  # its output rows' widest: a row's partial sums


def pack_filters(const floating[:, :, :] w, floating[:, :, :, ::1] packed, int num_threads):
    """w (G, O, K), any strides -> packed (G, ceil(O / B), K, B), B = packed.shape[3] (the row
    kernel's FILTER_BLOCK, or the filter-vector kernel's FILTER_VECTOR_BYTES / itemsize): each
    group's filters in blocks of B, filter-fastest (the kernels read a tap's B weights from
    consecutive memory), zero past the last filter. In compiled code, as the kernels' inputs
    are: a strided NumPy copy of this transpose costs more than a small layer's convolution.
    Parallel over blocks. The filter-vector kernel's blocks, where w's taps are consecutive, go
    by tiles transposed in registers (filter_tiles.h); other blocks by runs of PACK_TAPS taps,
    whose PACK_TAPS x B corner (2 KiB for 32 floats) stays in L1 while the B filters' rows are
    read along it: a whole block (half a MiB for 512 channels at 3x3) would not, and runs of
    64-256 taps ran 2-2.5x slower (the filters' rows, K apart, fall into few cache sets)."""
    cdef Py_ssize_t G = w.shape[0], O = w.shape[1], K = w.shape[2]
    cdef Py_ssize_t fb = packed.shape[3]
    cdef Py_ssize_t blocks = (O + fb - 1) // fb if fb > 0 else -1
    cdef Py_ssize_t task, gi, blk, run, k0, k1, k, i, f
    cdef Py_ssize_t step = w.strides[2] // <Py_ssize_t>sizeof(floating)  # between taps
    cdef bint tiles = _tiles_pack(w, fb)
    cdef const floating* src
    cdef floating* dst
    _check_packing(G, O, K, packed.shape[0], packed.shape[1], packed.shape[2], fb, num_threads)
    for task in prange(G * blocks, nogil=True, schedule="static", num_threads=num_threads):
        gi = task // blocks
        blk = task % blocks
        if tiles:
            _pack_block(&w[gi, blk * fb, 0], w.strides[1] // sizeof(floating), K,
                        <int>min(fb, O - blk * fb), &packed[gi, blk, 0, 0])
            continue
        for run in range((K + PACK_TAPS - 1) // PACK_TAPS):
            k0 = run * PACK_TAPS
            k1 = min(k0 + PACK_TAPS, K)
            dst = &packed[gi, blk, 0, 0]
            for i in range(fb):
                f = blk * fb + i
                if f < O:
                    src = &w[gi, f, 0]
                    for k in range(k0, k1):
                        dst[k * fb + i] = src[k * step]
                else:
                    for k in range(k0, k1):
                        dst[k * fb + i] = 0


cdef bint _tiles_pack(const floating[:, :, :] w, Py_ssize_t fb):
    """Whether the register tiles pack these blocks: the filter-vector kernel's, of consecutive taps."""
    return fb == FVEC_BLOCK_BYTES // sizeof(floating) and (w.shape[2] <= 1 or w.strides[2] == sizeof(floating))


cdef _check_packing(Py_ssize_t G, Py_ssize_t O, Py_ssize_t K, Py_ssize_t pg, Py_ssize_t pblocks,
                    Py_ssize_t pk, Py_ssize_t fb, int num_threads):
    blocks = (O + fb - 1) // fb if fb > 0 else -1
    if pg != G or pblocks != blocks or pk != K:
        raise ValueError(f"packed must have shape {(G, blocks, K, fb)}, got {(pg, pblocks, pk, fb)}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")


cdef inline bint _pack_block(const floating* w, Py_ssize_t ld, Py_ssize_t K, int nf,
                             floating* dst) noexcept nogil:
    """Packs one filter-vector block (filter_tiles.h); whether its values are all finite."""
    if floating is float:
        return fl_pack_block_uint32_t(<const uint32_t*>w, ld, K, nf, <uint32_t*>dst, 0x7f800000U)
    else:
        return fl_pack_block_uint64_t(<const uint64_t*>w, ld, K, nf, <uint64_t*>dst,
                                      0x7ff0000000000000ULL)


def vector_isa():
    """The instruction set the block kernel runs with on this CPU: "x86-64-v4" (AVX-512),
    "x86-64-v3" (AVX2, FMA) or "baseline"."""
    return fl_clone_isa().decode("ascii")


def use_wide_vectors(bint only):
    """Tests: run the 64-byte kernel (its baseline clone here) even where the AVX2 passes would
    run. Returns the previous setting."""
    global fl_direct_wide_only
    previous = bool(fl_direct_wide_only)
    fl_direct_wide_only = only
    return previous


def runs_avx2_passes():
    """Whether the block kernel runs as AVX2 passes of 32-byte chunks on this CPU."""
    return bool(fl_direct_uses_avx2())


ctypedef struct RowConv:
    # out[n, g*Co + o, r, q] = bias[g*Co + o] + sum over taps (c, kh, kw) of
    #   wt[g, o, c, kh, kw] * src[n, g*Cs + c, th / UH, tw / UW]
    # with th = r*SH + kh*DH - PT, tw = q*SW + kw*DW - PL, where both divide and land inside.
    Py_ssize_t N, G
    Py_ssize_t Cs, Hs, Ws  # source channels per group and plane
    Py_ssize_t Co, Ho, Wo  # outputs per group and plane
    Py_ssize_t KH, KW, SH, SW, UH, UW, DH, DW, PT, PL
    Py_ssize_t K  # taps per group, Cs * KH * KW
    Py_ssize_t band  # output rows per task
    Py_ssize_t BH  # rows of a band's padded copy: (band - 1) * SH + (KH - 1) * DH + 1
    Py_ssize_t Wq  # columns of one phase of a padded row: vector reads past Wo stay inside


cdef Py_ssize_t _lanes(Py_ssize_t itemsize) noexcept nogil:
    return VECTOR_BYTES // itemsize


cdef RowConv _row_conv(Py_ssize_t N, Py_ssize_t G, Py_ssize_t Cs, Py_ssize_t Hs, Py_ssize_t Ws,
                       Py_ssize_t Co, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t KH, Py_ssize_t KW,
                       Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t UH, Py_ssize_t UW,
                       Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t PT, Py_ssize_t PL,
                       Py_ssize_t band, Py_ssize_t itemsize):
    cdef RowConv r
    cdef Py_ssize_t VL = 2 * _lanes(itemsize)
    r.N, r.G, r.Cs, r.Hs, r.Ws, r.Co, r.Ho, r.Wo = N, G, Cs, Hs, Ws, Co, Ho, Wo
    r.KH, r.KW, r.SH, r.SW, r.UH, r.UW, r.DH, r.DW, r.PT, r.PL = KH, KW, SH, SW, UH, UW, DH, DW, PT, PL
    r.K = Cs * KH * KW
    r.band = max(1, min(band, Ho))
    r.BH = (r.band - 1) * SH + (KH - 1) * DH + 1
    # the last segment reads a whole vector pair from column (Wo rounded down to VL), tap offsets
    # reach (KW - 1) * DW / SW further
    r.Wq = (Wo + VL - 1) // VL * VL + ((KW - 1) * DW) // SW + 1
    return r


cdef RowConv _forward_rows(object g, Py_ssize_t band, Py_ssize_t itemsize):
    return _row_conv(g.N, g.groups, g.C // g.groups, g.H, g.W, g.F // g.groups, g.OH, g.OW,
                     g.KH, g.KW, g.stride_h, g.stride_w, 1, 1, g.dilation_h, g.dilation_w,
                     g.pad_top, g.pad_left, band, itemsize)


cdef RowConv _backward_input_rows(object g, Py_ssize_t band, Py_ssize_t itemsize):
    """dx as a row convolution of dy: dx row ih reads dy row (ih + PT - kh*DH) / SH, which with
    the kernel flipped (kh' = KH-1-kh) is ih + kh'*DH - ((KH-1)*DH - PT), upsampled by SH."""
    return _row_conv(g.N, g.groups, g.F // g.groups, g.OH, g.OW, g.C // g.groups, g.H, g.W,
                     g.KH, g.KW, 1, 1, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w,
                     (g.KH - 1) * g.dilation_h - g.pad_top, (g.KW - 1) * g.dilation_w - g.pad_left,
                     band, itemsize)


def scratch_bytes(object geometry, Py_ssize_t band, bint backward_input, Py_ssize_t itemsize):
    """Bytes of per-thread scratch _conv_rows needs (tap offsets and a band's padded copy),
    rounded up to a cache line. The copy holds every row and column phase of the band's padded
    input, so it grows with the stride and the dilation: the wrapper bounds it."""
    cdef RowConv r = (_backward_input_rows(geometry, band, itemsize) if backward_input
                      else _forward_rows(geometry, band, itemsize))
    # In Python ints: with strides and dilations near 2**31 the product passes 2**63.
    nbytes = <object>r.K * sizeof(ptrdiff_t) + <object>r.Cs * r.BH * r.SW * r.Wq * itemsize
    return (nbytes + 63) // 64 * 64


cdef inline bint _row_is_read(Py_ssize_t br, const RowConv* r) noexcept nogil:
    """Whether some output row of the band reads copy row br: br = i*SH + kh*DH, i < band."""
    cdef Py_ssize_t kh, t
    for kh in range(r.KH):
        t = br - kh * r.DH
        if t >= 0 and t % r.SH == 0 and t // r.SH < r.band:
            return True
    return False


cdef inline bint _phase_is_read(Py_ssize_t p, const RowConv* r) noexcept nogil:
    """Whether some kernel column reads column phase p: (kw*DW) % SW == p."""
    cdef Py_ssize_t kw
    for kw in range(r.KW):
        if (kw * r.DW) % r.SW == p:
            return True
    return False


cdef void _copy_band(const floating* src, floating* dst, Py_ssize_t row0,
                     const RowConv* r) noexcept nogil:
    """dst (Cs, BH, SW, Wq) = the source rows band row0 reads: dst[c, br, p, j] is the
    (upsampled) source at row row0 * SH - PT + br, column j * SW + p - PL; zero outside. Rows no
    output reads (between the rows a stride skips) and column phases no tap reads are left as
    they are."""
    cdef Py_ssize_t c, br, p, j, m, th, lo, hi
    cdef floating* d
    cdef const floating* s
    for br in range(r.BH):
        if not _row_is_read(br, r):
            continue
        th = row0 * r.SH - r.PT + br
        for c in range(r.Cs):
            d = dst + (c * r.BH + br) * r.SW * r.Wq
            memset(d, 0, r.SW * r.Wq * sizeof(floating))
            if th < 0 or th % r.UH != 0 or th // r.UH >= r.Hs:
                continue
            s = src + (c * r.Hs + th // r.UH) * r.Ws
            if r.UW > 1:  # (then SW == 1) source column m lands at m * UW + PL
                for m in range(r.Ws):
                    j = m * r.UW + r.PL
                    if 0 <= j < r.Wq:
                        d[j] = s[m]
                continue
            for p in range(r.SW):
                if not _phase_is_read(p, r):
                    continue
                # the j with 0 <= j*SW + p - PL < Ws
                lo = max(0, (r.PL - p + r.SW - 1) // r.SW) if r.PL - p > 0 else 0
                hi = min(r.Wq, (r.Ws - 1 + r.PL - p) // r.SW + 1) if r.Ws - 1 + r.PL - p >= 0 else 0
                if r.SW == 1:
                    if hi > lo:
                        memcpy(d + lo, s + lo - r.PL, (hi - lo) * sizeof(floating))
                else:
                    for j in range(lo, hi):
                        d[p * r.Wq + j] = s[j * r.SW + p - r.PL]


cdef void _conv_rows(const floating* src, const floating* wp, const floating* bp, floating* out,
                     const RowConv* r, unsigned char* scratch, Py_ssize_t scratch_stride,
                     int num_threads, Py_ssize_t pool_at=0, bint relu=False) noexcept nogil:
    """out (N, G*Co, Ho, Wo) from src (N, G*Cs, Hs, Ws). ``wp`` holds the weights packed as
    (G, ceil(Co / FL_FB), K, FL_FB), zero-padded, tap k = (c*KH + kh)*KW + kw; ``bp`` the bias as
    (G, ceil(Co / FL_FB), FL_FB). Parallel over bands of output rows; ``scratch`` gives each
    thread ``scratch_stride`` bytes (scratch_bytes). ``pool_at`` > 0 (rows wider than a vector
    and even bands only): out is instead (N, G*Co, Ho // 2, Wo // 2), the 2x2 stride-2 max-pool of
    the convolution, each pair of output rows computed into the thread's scratch from byte
    ``pool_at`` on (2 Co Wo values) and pooled there by max_pool2d's plane kernel, then (``relu``)
    through a ReLU; bands start on even rows, and an odd last row is not computed."""
    cdef Py_ssize_t L = _lanes(sizeof(floating))
    cdef Py_ssize_t OHW = r.Ho * r.Wo
    cdef Py_ssize_t bands = (r.Ho + r.band - 1) // r.band
    cdef Py_ssize_t row_step = r.SH * r.SW * r.Wq  # between output rows, in the copy
    cdef Py_ssize_t POW = r.Wo // 2, POHW = (r.Ho // 2) * (r.Wo // 2)
    cdef Py_ssize_t task, n, g, row0, row1, oh, c, kh, kw, k, q, half, f
    cdef int nvec
    cdef floating* copy
    cdef floating* pair
    cdef ptrdiff_t* toff
    cdef unsigned char* mine
    for task in prange(r.N * r.G * bands, nogil=True, schedule="dynamic", num_threads=num_threads):
        mine = scratch + threadid() * scratch_stride
        toff = <ptrdiff_t*>mine
        copy = <floating*>(mine + r.K * sizeof(ptrdiff_t))
        n = task // (r.G * bands)
        g = (task // bands) % r.G
        row0 = (task % bands) * r.band
        _copy_band(src + (n * r.G + g) * r.Cs * r.Hs * r.Ws, copy, row0, r)
        # tap (c, kh, kw) reads phase (kw*DW) % SW of row kh*DH, from column (kw*DW) // SW
        for c in range(r.Cs):
            for kh in range(r.KH):
                for kw in range(r.KW):
                    k = (c * r.KH + kh) * r.KW + kw
                    q = kw * r.DW
                    toff[k] = ((c * r.BH + kh * r.DH) * r.SW + q % r.SW) * r.Wq + q // r.SW
        row1 = min(row0 + r.band, r.Ho)
        if pool_at:
            pair = <floating*>(mine + pool_at)
            for oh in range(row0, row1 - 1, 2):
                for half in range(2):
                    _wide_row(copy + (oh + half - row0) * row_step, toff, wp, bp, pair + half * r.Wo, 2 * r.Wo, g, r)
                for f in range(r.Co):
                    if floating is float:
                        fl_pool_plane_2x2_float(pair + f * 2 * r.Wo, out + ((n * r.G + g) * r.Co + f) * POHW
                                                + oh // 2 * POW, NULL, r.Wo, 1, POW, False, relu)
                    else:
                        fl_pool_plane_2x2_double(pair + f * 2 * r.Wo, out + ((n * r.G + g) * r.Co + f) * POHW
                                                 + oh // 2 * POW, NULL, r.Wo, 1, POW, False, relu)
        elif r.Wo <= L:
            # narrow rows: the kernel's two vectors are the same columns of two output rows
            for oh in range(row0, row1, 2):
                nvec = 2 if oh + 1 < row1 else 1
                _blocks(copy + (oh - row0) * row_step, toff, row_step, wp, bp,
                        out + (n * r.G + g) * r.Co * OHW + oh * r.Wo, r.Wo, nvec, r.Wo, r.Wo, g, r, OHW)
        else:
            for oh in range(row0, row1):
                _wide_row(copy + (oh - row0) * row_step, toff, wp, bp, out + (n * r.G + g) * r.Co * OHW + oh * r.Wo,
                          OHW, g, r)


cdef inline void _wide_row(const floating* row, const ptrdiff_t* toff, const floating* wp, const floating* bp,
                           floating* out, Py_ssize_t ld, Py_ssize_t g, const RowConv* r) noexcept nogil:
    """One output row wider than a vector, of every filter of group g (``ld`` values between two
    filters' rows), from its band copy's ``row``: segments of two vectors along the row."""
    cdef Py_ssize_t L = _lanes(sizeof(floating))
    cdef Py_ssize_t seg, ow0, nl
    for seg in range((r.Wo + 2 * L - 1) // (2 * L)):
        ow0 = seg * 2 * L
        nl = min(2 * L, r.Wo - ow0)
        _blocks(row + ow0, toff, L, wp, bp, out + ow0, L, 2 if nl > L else 1, min(L, nl), nl - L, g, r, ld)


cdef inline void _blocks(const floating* base, const ptrdiff_t* toff, Py_ssize_t in_step,
                         const floating* wp, const floating* bp, floating* out, Py_ssize_t out_step,
                         int nvec, Py_ssize_t lanes0, Py_ssize_t lanes1, Py_ssize_t g,
                         const RowConv* r, Py_ssize_t ld) noexcept nogil:
    """Every filter block of group g for one placement of the kernel's vectors; ``ld``: values
    between two filters' outputs."""
    cdef Py_ssize_t nfb = (r.Co + FL_FB - 1) // FL_FB
    cdef Py_ssize_t fb
    for fb in range(nfb):
        _block(base, toff, r.K, in_step, wp + (g * nfb + fb) * r.K * FL_FB, bp + (g * nfb + fb) * FL_FB,
               out + fb * FL_FB * ld, ld, out_step, <int>min(FL_FB, r.Co - fb * FL_FB),
               nvec, <int>lanes0, <int>lanes1)


cdef inline void _block(const floating* base, const ptrdiff_t* toff, Py_ssize_t ntaps,
                        Py_ssize_t in_step, const floating* wp, const floating* bias, floating* out,
                        Py_ssize_t ld, Py_ssize_t out_step, int nf, int nvec, int lanes0,
                        int lanes1) noexcept nogil:
    if floating is float:
        fl_direct_block_float(base, toff, ntaps, in_step, wp, bias, out, ld, out_step, nf, nvec, lanes0, lanes1)
    else:
        fl_direct_block_double(base, toff, ntaps, in_step, wp, bias, out, ld, out_step, nf, nvec, lanes0, lanes1)


cdef inline Py_ssize_t _fvec_filters(Py_ssize_t itemsize) noexcept nogil:
    return FVEC_BLOCK_BYTES // itemsize


cdef inline Py_ssize_t _padded_rows(const RowConv* r) noexcept nogil:
    """Rows of the filter-vector kernel's padded source plane: those the output rows read."""
    return (r.Ho - 1) * r.SH + (r.KH - 1) * r.DH + 1


cdef inline Py_ssize_t _padded_cols(const RowConv* r) noexcept nogil:
    return (r.Wo - 1) * r.SW + (r.KW - 1) * r.DW + 1


def fvec_scratch_bytes(object geometry, bint backward_input, Py_ssize_t itemsize, int num_threads):
    """Bytes of scratch _conv_fvec needs: tap offsets, the zero-padded copy of the whole input
    (or of dy), each thread's block of outputs and of bias, and its chunk of packed weights
    (conv2d_forward_fvec_unpacked); parts rounded up to cache lines."""
    cdef RowConv r = (_backward_input_rows(geometry, 1, itemsize) if backward_input
                      else _forward_rows(geometry, 1, itemsize))
    return _fvec_bytes(&r, itemsize, num_threads)


cdef object _fvec_bytes(const RowConv* r, Py_ssize_t itemsize, int num_threads):
    # In Python ints, as scratch_bytes: no product can wrap.
    cdef object padded = <object>r.N * r.G * r.Cs * _padded_rows(r) * _padded_cols(r)
    return sum((nbytes + 63) // 64 * 64 for nbytes in
               (r.K * sizeof(ptrdiff_t), padded * itemsize,
                num_threads * (FVEC_PARTIAL_BYTES + FVEC_BLOCK_BYTES + _chunk_bytes(r))))


cdef inline Py_ssize_t _chunk_channels(const RowConv* r) noexcept nogil:
    """The source channels of one chunk (see _conv_fvec): about FVEC_CHUNK_TAPS taps, the chunks
    of one size but the last."""
    cdef Py_ssize_t chunks = (r.Cs * r.KH * r.KW + FVEC_CHUNK_TAPS - 1) // FVEC_CHUNK_TAPS
    return (r.Cs + chunks - 1) // chunks


cdef inline Py_ssize_t _chunk_bytes(const RowConv* r) noexcept nogil:
    """A chunk's packed weights: a block of filters at each of its taps, rounded up to cache lines."""
    return (_chunk_channels(r) * r.KH * r.KW * FVEC_BLOCK_BYTES + 63) // 64 * 64


cdef void _pad_plane(const floating* src, floating* padded, Py_ssize_t plane,
                     const RowConv* r) noexcept nogil:
    """padded[plane] (Hp, Wp) = source plane ``plane`` at rows PT.., columns PL.., zero elsewhere
    (Hp, Wp: _padded_rows, _padded_cols; source rows and columns past them, and PT or PL < 0,
    are cropped)."""
    cdef Py_ssize_t Hp = _padded_rows(r), Wp = _padded_cols(r)
    cdef Py_ssize_t lo = max(0, r.PL), hi = min(Wp, r.Ws + r.PL)
    cdef Py_ssize_t row, th
    cdef floating* d
    for row in range(Hp):
        d = padded + (plane * Hp + row) * Wp
        th = row - r.PT
        if th < 0 or th >= r.Hs or hi <= lo:
            memset(d, 0, Wp * sizeof(floating))
            continue
        memset(d, 0, lo * sizeof(floating))
        memcpy(d + lo, src + (plane * r.Hs + th) * r.Ws + lo - r.PL, (hi - lo) * sizeof(floating))
        memset(d + hi, 0, (Wp - hi) * sizeof(floating))


cdef void _conv_fvec(const floating* src, const floating* wp, const floating* w,
                     const floating* bias, floating* out, const RowConv* r, unsigned char* scratch,
                     bint skip_padding, int num_threads) noexcept nogil:
    """out (N, G*Co, Ho, Wo) from src (N, G*Cs, Hs, Ws), not upsampled (UH = UW = 1), SW = 1 or 2,
    by the filter-vector kernel (conv2d_direct_fvec.h): ``wp`` holds the weights packed as
    (G, ceil(Co / B), K, B), B = _fvec_filters, zero-padded, tap k = (c*KH + kh)*KW + kw; or,
    where ``w`` is not NULL, ``w`` holds them unpacked, (G*Co, K), and each task packs the chunk
    of its block it is about to use into its scratch (filter_tiles.h): a call then reads the
    weights once, from w, with no packing kept between calls to be checked against w.
    ``bias`` the G*Co biases or NULL (zeros); ``scratch`` is laid out as fvec_scratch_bytes says. The
    input is padded once; a kernel call is one block of B filters by one run of up to
    FL_FVEC_MAX_POSITIONS columns of one output row (a row's runs of even widths), over one
    chunk of the input channels. With ``skip_padding`` an output row leaves out the kernel rows
    that read only padding (products of a weight and a zero: the caller's weights are finite;
    from unpacked weights, where the chunk packed is).
    Which task computes an output does not change its bits: results do not depend on the thread
    count."""
    cdef Py_ssize_t B = _fvec_filters(sizeof(floating))
    cdef Py_ssize_t Wp = _padded_cols(r)
    cdef Py_ssize_t P = _padded_rows(r) * Wp, OHW = r.Ho * r.Wo
    cdef Py_ssize_t nfb = (r.Co + B - 1) // B
    cdef Py_ssize_t runs = (r.Wo + FL_FVEC_MAX_POSITIONS - 1) // FL_FVEC_MAX_POSITIONS
    cdef Py_ssize_t pairs = r.N * r.G * nfb
    cdef Py_ssize_t bands = min(r.Ho, (FVEC_TASKS_PER_THREAD * num_threads + pairs - 1) // pairs)
    cdef Py_ssize_t band = (r.Ho + bands - 1) // bands
    # Rows whose partial sums fit FVEC_PARTIAL_BYTES go through the channels together, in chunks
    # of about FVEC_CHUNK_TAPS taps: the chunk's packed weights stay in L2 for all of the rows
    # (a block of 512 channels' 3x3 weights, 576 KiB, did not: 81 against 97 GFLOP/s a thread).
    cdef Py_ssize_t group_rows = max(1, FVEC_PARTIAL_BYTES // (r.Wo * B * sizeof(floating)))
    cdef Py_ssize_t KHW = r.KH * r.KW
    cdef Py_ssize_t chunk = _chunk_channels(r)
    cdef Py_ssize_t chunks = (r.Cs + chunk - 1) // chunk
    cdef Py_ssize_t thread_bytes = FVEC_PARTIAL_BYTES + FVEC_BLOCK_BYTES + _chunk_bytes(r)
    cdef ptrdiff_t* toff = <ptrdiff_t*>scratch
    cdef floating* padded = <floating*>(scratch + (r.K * sizeof(ptrdiff_t) + 63) // 64 * 64)
    cdef unsigned char* partials = (<unsigned char*>padded
                                    + (r.N * r.G * r.Cs * P * sizeof(floating) + 63) // 64 * 64)
    cdef Py_ssize_t task, plane, g, fb, oh, oh0, oh1, row0, row1, run, ow0, np, c, c0, c1, kh, kw, i, p, nf
    cdef Py_ssize_t kh0, kh1, first, rows_group, ci
    cdef bint skip
    cdef floating* partial
    cdef floating* chunk_w
    cdef const floating* chunk_base
    cdef floating* block_bias
    cdef floating* part
    cdef floating* dst
    cdef const floating* block_w
    for c in range(r.Cs):
        for kh in range(r.KH):
            for kw in range(r.KW):
                toff[(c * r.KH + kh) * r.KW + kw] = c * P + kh * r.DH * Wp + kw * r.DW
    # One team for both loops (a small layer's call is as short as two team starts); the
    # padding loop's barrier ends before any task reads it. A task is a band of whole output
    # rows of one block of filters: threads writing runs of one row would share its cache lines
    # (measured: 2 threads no faster than 1). About FVEC_TASKS_PER_THREAD tasks a thread, fewer
    # where the (plane, filter block) pairs are fewer (a band is at least one row).
    with parallel(num_threads=num_threads):
        for c in prange(r.N * r.G * r.Cs, schedule="static"):
            _pad_plane(src, padded, c, r)
        for task in prange(r.N * r.G * nfb * bands, schedule="dynamic"):
            partial = <floating*>(partials + threadid() * thread_bytes)
            block_bias = partial + FVEC_PARTIAL_BYTES // sizeof(floating)  # zero past nf
            chunk_w = block_bias + FVEC_BLOCK_BYTES // sizeof(floating)
            fb = (task // bands) % nfb
            plane = task // (bands * nfb)
            g = plane % r.G
            nf = min(B, r.Co - fb * B)
            block_w = wp + (g * nfb + fb) * r.K * B if w == NULL else NULL
            for i in range(B):
                block_bias[i] = bias[g * r.Co + fb * B + i] if bias != NULL and i < nf else 0
            row0 = (task % bands) * band
            row1 = min(row0 + band, r.Ho)
            for rows_group in range((row1 - row0 + group_rows - 1) // group_rows):
                oh0 = row0 + rows_group * group_rows
                oh1 = min(oh0 + group_rows, row1)
                for ci in range(chunks):
                    c0 = ci * chunk
                    c1 = min(c0 + chunk, r.Cs)
                    skip = skip_padding
                    chunk_base = block_w + c0 * KHW * B if w == NULL else chunk_w  # at tap c0 * KHW
                    if w != NULL:
                        skip = _pack_block(w + (g * r.Co + fb * B) * r.K + c0 * KHW, r.K,
                                           (c1 - c0) * KHW, <int>nf, chunk_w) and skip
                    for oh in range(oh0, oh1):
                        kh0, kh1 = 0, r.KH
                        if skip:
                            kh0, kh1 = _rows_inside(oh, r)
                        first = c0 * KHW + kh0 * r.KW  # the first tap of the chunk's run
                        for run in range(runs):
                            ow0 = run * r.Wo // runs
                            np = (run + 1) * r.Wo // runs - ow0
                            part = partial + ((oh - oh0) * r.Wo + ow0) * B
                            _fvec_block(padded + plane * r.Cs * P + oh * r.SH * Wp + ow0 * r.SW,
                                        toff + first, chunk_base + (first - c0 * KHW) * B,
                                        c1 - c0 if kh1 - kh0 < r.KH else 1,
                                        (kh1 - kh0) * r.KW if kh1 - kh0 < r.KH else (c1 - c0) * KHW,
                                        KHW, block_bias if c0 == 0 else part, 0 if c0 == 0 else B,
                                        part, <int>np, <int>r.SW)
                for oh in range(oh0, oh1):
                    dst = out + (plane * r.Co + fb * B) * OHW + oh * r.Wo
                    part = partial + (oh - oh0) * r.Wo * B
                    for i in range(nf):
                        for p in range(r.Wo):
                            dst[i * OHW + p] = part[p * B + i]


cdef inline (Py_ssize_t, Py_ssize_t) _rows_inside(Py_ssize_t oh, const RowConv* r) noexcept nogil:
    """The kernel rows [kh0, kh1) output row oh reads inside the source (the others read only
    padding rows): 0 <= oh*SH + kh*DH - PT < Hs; kh1 <= kh0 where none does."""
    cdef Py_ssize_t top = r.PT - oh * r.SH  # kh*DH >= top
    cdef Py_ssize_t kh0 = max(0, (top + r.DH - 1) // r.DH) if top > 0 else 0
    cdef Py_ssize_t kh1 = min(r.KH, (r.Hs - 1 + top) // r.DH + 1) if r.Hs - 1 + top >= 0 else 0
    return kh0, max(kh0, kh1)


cdef inline void _fvec_block(const floating* base, const ptrdiff_t* toff, const floating* wp,
                             Py_ssize_t nruns, Py_ssize_t run_taps, Py_ssize_t run_stride,
                             const floating* init, Py_ssize_t init_step, floating* tmp,
                             int np, int sw) noexcept nogil:
    if floating is float:
        fl_fvec_block_float(base, toff, wp, nruns, run_taps, run_stride, init, init_step, tmp, np, sw)
    else:
        fl_fvec_block_double(base, toff, wp, nruns, run_taps, run_stride, init, init_step, tmp, np, sw)


def fvec_runs(object geometry, bint backward_input):
    """Whether the filter-vector kernel runs this problem: a column stride of 1 or 2 (a constant
    of its kernels), and for dx a forward of stride 1 (its dy is not upsampled)."""
    if backward_input:
        return geometry.stride_h == 1 and geometry.stride_w == 1
    return geometry.stride_w <= 2


cdef RowConv _fvec_rows(object geometry, bint backward_input, Py_ssize_t itemsize,
                        const unsigned char[::1] scratch, int num_threads) except *:
    """The row convolution of a problem the filter-vector kernel runs, once the scratch is
    checked to hold it."""
    if not fvec_runs(geometry, backward_input):
        raise ValueError(f"the filter-vector kernel runs column strides 1 and 2 forward and stride 1 "
                         f"backward, got stride {(geometry.stride_h, geometry.stride_w)}"
                         + (" backward" if backward_input else " forward"))
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    cdef RowConv r = (_backward_input_rows(geometry, 1, itemsize) if backward_input
                      else _forward_rows(geometry, 1, itemsize))
    if r.Wo > FVEC_MAX_COLUMNS:  # a thread's partial sums hold a whole output row
        raise ValueError(f"the filter-vector kernel takes output rows of at most {FVEC_MAX_COLUMNS} columns, "
                         f"got {r.Wo}")
    need = _fvec_bytes(&r, itemsize, num_threads)
    if scratch.shape[0] < need:
        raise ValueError(f"scratch must hold {need} bytes, got {scratch.shape[0]}")
    return r


def conv2d_forward_fvec(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] packed_w,
                        const floating[::1] b, floating[:, :, :, ::1] y, unsigned char[::1] scratch,
                        object geometry, bint skip_padding, int num_threads):
    """y = conv2d(x, w) + b by the filter-vector kernel (fvec_runs), with the weights packed by
    the wrapper in blocks of FILTER_VECTOR_BYTES / itemsize (see _conv_fvec); b: F biases, or
    none (an empty array) for zeros. skip_padding: leave out the products of weights and padding
    rows (w finite: they are zeros)."""
    cdef RowConv r = _fvec_rows(geometry, False, sizeof(floating), scratch, num_threads)
    _check_packed(packed_w, &r)
    _check_bias(b, geometry)
    _conv_fvec(&x[0, 0, 0, 0], &packed_w[0, 0, 0, 0], NULL, &b[0] if b.shape[0] else NULL,
               &y[0, 0, 0, 0], &r, &scratch[0], skip_padding, num_threads)


def conv2d_forward_fvec_unpacked(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                                 const floating[::1] b, floating[:, :, :, ::1] y,
                                 unsigned char[::1] scratch, object geometry, int num_threads):
    """conv2d_forward_fvec with w (F, C / groups, KH, KW) as given, each task packing the
    chunks of its block of filters (see _conv_fvec); the padding rows' products are left out
    where a chunk's weights are finite."""
    cdef RowConv r = _fvec_rows(geometry, False, sizeof(floating), scratch, num_threads)
    want = (geometry.F, geometry.C // geometry.groups, geometry.KH, geometry.KW)
    got = (w.shape[0], w.shape[1], w.shape[2], w.shape[3])
    if got != want:
        raise ValueError(f"w must have shape {want}, got {got}")
    _check_bias(b, geometry)
    _conv_fvec(&x[0, 0, 0, 0], NULL, &w[0, 0, 0, 0], &b[0] if b.shape[0] else NULL,
               &y[0, 0, 0, 0], &r, &scratch[0], True, num_threads)


cdef _check_bias(const floating[::1] b, object geometry):
    if b.shape[0] not in (0, geometry.F):
        raise ValueError(f"b must hold {geometry.F} biases or none, got {b.shape[0]}")


def conv2d_backward_input_fvec(const floating[:, :, :, ::1] dy,
                               const floating[:, :, :, ::1] packed_wt, floating[:, :, :, ::1] dx,
                               unsigned char[::1] scratch, object geometry, bint skip_padding,
                               int num_threads):
    """dx of y = conv2d(x, w) at stride 1 given dy by the filter-vector kernel, with the flipped,
    transposed weights packed by the wrapper; skip_padding as in conv2d_forward_fvec."""
    cdef RowConv r = _fvec_rows(geometry, True, sizeof(floating), scratch, num_threads)
    _check_packed(packed_wt, &r)
    _conv_fvec(&dy[0, 0, 0, 0], &packed_wt[0, 0, 0, 0], NULL, NULL, &dx[0, 0, 0, 0], &r,
               &scratch[0], skip_padding, num_threads)


cdef _check_packed(const floating[:, :, :, ::1] packed, const RowConv* r):
    cdef Py_ssize_t B = _fvec_filters(sizeof(floating))
    want = (r.G, (r.Co + B - 1) // B, r.K, B)
    got = (packed.shape[0], packed.shape[1], packed.shape[2], packed.shape[3])
    if got != want:
        raise ValueError(f"packed weights must have shape {want}, got {got}")


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] packed_w,
                   const floating[:, :, ::1] packed_b, floating[:, :, :, ::1] y,
                   unsigned char[:, ::1] scratch, object geometry, Py_ssize_t band, int num_threads,
                   bint pool=False, bint relu=False):
    """y = conv2d(x, w) + b with the weights and bias packed by the wrapper (see _conv_rows).
    ``pool``: y (N, F, OH // 2, OW // 2) is the 2x2 stride-2 max-pool of the convolution, then
    (``relu``) its ReLU: for output rows wider than a vector (``pools``) and an even ``band`` (or
    one of all the rows), the scratch ``pooled_scratch_bytes`` a thread."""
    cdef RowConv r = _forward_rows(geometry, band, sizeof(floating))
    cdef Py_ssize_t pool_at = 0
    if pool:
        if not pools(geometry, sizeof(floating)) or (r.band % 2 and r.band < r.Ho):
            raise ValueError(f"the pooled direct forward takes rows wider than {_lanes(sizeof(floating))} "
                             f"values and an even band (or all rows), got {r.Wo} and {r.band}")
        if y.shape[0] != r.N or y.shape[1] != r.G * r.Co or y.shape[2] != r.Ho // 2 or y.shape[3] != r.Wo // 2:
            raise ValueError(f"y must be ({r.N}, {r.G * r.Co}, {r.Ho // 2}, {r.Wo // 2})")
        pool_at = scratch_bytes(geometry, band, False, sizeof(floating))
        if scratch.shape[1] < pooled_scratch_bytes(geometry, band, sizeof(floating)):
            raise ValueError(f"scratch must have {pooled_scratch_bytes(geometry, band, sizeof(floating))} bytes a thread")
    _conv_rows(&x[0, 0, 0, 0], &packed_w[0, 0, 0, 0], &packed_b[0, 0, 0], &y[0, 0, 0, 0], &r,
               &scratch[0, 0], scratch.shape[1], num_threads, pool_at, relu)


def pools(object geometry, Py_ssize_t itemsize):
    """Whether conv2d_forward pools this forward itself (its output rows wider than a vector)."""
    return geometry.OW > _lanes(itemsize) and geometry.OH >= 2


def pooled_scratch_bytes(object geometry, Py_ssize_t band, Py_ssize_t itemsize):
    """scratch_bytes of the pooled forward: and a pair of output rows of all the group's filters."""
    return scratch_bytes(geometry, band, False, itemsize) + (2 * geometry.Fg * geometry.OW * itemsize + 63) // 64 * 64


def conv2d_backward_input(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] packed_wt,
                          const floating[:, :, ::1] zeros, floating[:, :, :, ::1] dx,
                          unsigned char[:, ::1] scratch, object geometry, Py_ssize_t band,
                          int num_threads):
    """dx of y = conv2d(x, w) given dy, with the flipped, transposed weights packed by the
    wrapper and a zero bias."""
    cdef RowConv r = _backward_input_rows(geometry, band, sizeof(floating))
    _conv_rows(&dy[0, 0, 0, 0], &packed_wt[0, 0, 0, 0], &zeros[0, 0, 0], &dx[0, 0, 0, 0], &r,
               &scratch[0, 0], scratch.shape[1], num_threads)


def conv2d_backward_weight(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                           floating[:, :, :, ::1] dw, floating[::1] db, floating[:, ::1] workspace,
                           object geometry, int num_threads):
    """dw and db of y = conv2d(x, w) + b given dy, parallel over (filter, channel) pairs; each
    owns dw[f, c] (and the c == 0 task db[f]). A tap's products are gathered element-wise into
    the running thread's row of ``workspace`` (num_threads x OW) over all images and output rows,
    then lane-summed: vectorised, and in a fixed order."""
    cdef Conv2dShape s = conv2d_shape(geometry)
    cdef TapColumns cols
    cdef Py_ssize_t task, f, cg, gi, n, kh, kw, oh, ih, ow
    cdef floating* acc
    cdef const floating* x_row
    cdef const floating* dy_row
    cdef floating total
    for task in prange(s.F * s.Cg, nogil=True, schedule="dynamic", num_threads=num_threads):
        f = task // s.Cg
        cg = task % s.Cg
        gi = f // s.Fg
        acc = &workspace[threadid(), 0]
        for kh in range(s.KH):
            for kw in range(s.KW):
                cols = tap_columns(&s, kw)
                memset(acc, 0, s.OW * sizeof(floating))
                for n in range(s.N):
                    for oh in range(s.OH):
                        ih = oh * s.SH - s.PT + kh * s.DH
                        if 0 <= ih < s.H:
                            x_row = &x[n, gi * s.Cg + cg, ih, 0] + cols.iw0
                            dy_row = &dy[n, f, oh, 0]
                            if s.SW == 1:
                                for ow in range(cols.lo, cols.hi):
                                    acc[ow] += dy_row[ow] * x_row[ow]
                            else:
                                for ow in range(cols.lo, cols.hi):
                                    acc[ow] += dy_row[ow] * x_row[ow * s.SW]
                dw[f, cg, kh, kw] = lane_sum(acc, s.OW)
        if cg == 0:
            total = 0
            for n in range(s.N):
                total = total + lane_sum(&dy[n, f, 0, 0], s.OH * s.OW)
            db[f] = total
