# C-level pieces shared by the two conv2d kernels (im2col.pyx and conv2d_direct.pyx): the
# geometry as a struct, the range of output columns a kernel tap sees inside the input, and a
# reproducible vectorisable sum.
from cython cimport floating


ctypedef struct Conv2dShape:
    Py_ssize_t N, C, H, W, F, KH, KW, OH, OW
    Py_ssize_t SH, SW, PT, PL, DH, DW, G
    Py_ssize_t Cg, Fg, K  # channels and filters per group; K = Cg * KH * KW, one column's length


cdef inline Conv2dShape conv2d_shape(object g):
    """The struct of a validated fastlayers.ops.conv2d.Conv2dGeometry, built once per call."""
    cdef Conv2dShape s
    s.N, s.C, s.H, s.W, s.F = g.N, g.C, g.H, g.W, g.F
    s.KH, s.KW, s.OH, s.OW = g.KH, g.KW, g.OH, g.OW
    s.SH, s.SW, s.PT, s.PL = g.stride_h, g.stride_w, g.pad_top, g.pad_left
    s.DH, s.DW, s.G = g.dilation_h, g.dilation_w, g.groups
    s.Cg, s.Fg = g.C // g.groups, g.F // g.groups
    s.K = s.Cg * s.KH * s.KW
    return s


ctypedef struct TapColumns:
    Py_ssize_t iw0  # kernel column kw reads input column iw = ow * SW + iw0
    Py_ssize_t lo, hi  # the output columns ow in [lo, hi) read inside [0, W); lo == hi: none


cdef inline TapColumns tap_columns(const Conv2dShape* s, Py_ssize_t kw) noexcept nogil:
    """Where kernel column kw reads the input, and which output columns stay inside it.
    (A returned struct, not out-pointers: inside prange, Cython privatises assigned variables
    only, never those written through a pointer.)"""
    cdef TapColumns t
    t.iw0 = kw * s.DW - s.PL
    t.lo = (-t.iw0 + s.SW - 1) // s.SW if t.iw0 < 0 else 0
    t.hi = (s.W - 1 - t.iw0) // s.SW + 1 if s.W - 1 - t.iw0 >= 0 else 0
    if t.hi > s.OW:
        t.hi = s.OW
    if t.hi < t.lo:
        t.hi = t.lo
    return t


cdef enum:
    SUM_LANES = 16


cdef inline floating lane_sum(const floating* a, Py_ssize_t n) noexcept nogil:
    """Sum of a[0:n] in SUM_LANES interleaved partial sums (an element-wise inner loop the
    compiler vectorises without reassociating), added in a fixed order: reproducible bit for bit."""
    cdef floating acc[SUM_LANES]
    cdef Py_ssize_t i, j, block, full = n - n % SUM_LANES
    cdef floating total = 0
    for j in range(SUM_LANES):
        acc[j] = 0
    for block in range(n // SUM_LANES):
        for j in range(SUM_LANES):
            acc[j] += a[block * SUM_LANES + j]
    for j in range(SUM_LANES):
        total += acc[j]
    for i in range(full, n):
        total += a[i]
    return total
