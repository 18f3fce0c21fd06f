"""Random data augmentation of NCHW batches: the notes' "generation of cat pictures via random
data augmentation".

The deterministic transforms (:func:`hflip`, :func:`rotate`, :func:`zoom`, :func:`shift`) take
one value per image (or one for all); the ``random_*`` functions draw one independent value per
image from ``rng`` (a seed or a ``numpy.random.Generator``), so a seed reproduces a batch exactly.
Rotation and zoom resample with bilinear interpolation; pixels that come from outside the image
are ``fill``. :func:`random_augment` composes flip, rotation, zoom and shift into one resampling
per image (one interpolation blur instead of three).
"""
from __future__ import annotations

import numpy as np

from .ops._checks import check_array, pair

__all__ = ["hflip", "rotate", "zoom", "shift", "random_hflip", "random_rotation", "random_zoom", "random_shift",
           "random_crop", "random_augment"]


def _batch(x):
    check_array("x", x, 4)
    return x


def _range(name, value, lo=None):
    a, b = (float(v) for v in value)
    if not a <= b or (lo is not None and a <= lo):
        raise ValueError(f"{name} must be a pair (low, high) with {lo if lo is not None else '-inf'} < low <= high, "
                         f"got {value}")
    return a, b


def hflip(x):
    """Mirror every image left-right."""
    return np.ascontiguousarray(_batch(x)[..., ::-1])


def random_hflip(x, p=0.5, rng=None):
    """Mirror each image left-right with probability ``p``."""
    x = _batch(x)
    rng = np.random.default_rng(rng)
    flip = rng.random(x.shape[0]) < p
    out = x.copy()
    out[flip] = x[flip][..., ::-1]
    return out


def _warp(x, inverse, offset, fill):
    """Bilinear resampling: output pixel (r, c) of image n reads the input at
    ``inverse[n] @ ((r, c) - centre - offset[n]) + centre``; outside the image reads ``fill``."""
    N, C, H, W = x.shape
    centre = np.array([(H - 1) / 2, (W - 1) / 2])
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    out_pos = np.stack([rows.ravel(), cols.ravel()]).astype(np.float64)  # (2, H*W)
    rel = out_pos[None] - centre[None, :, None] - offset[:, :, None]  # (N, 2, H*W)
    src = np.einsum("nij,njp->nip", inverse, rel) + centre[None, :, None]
    r, c = src[:, 0], src[:, 1]
    r0, c0 = np.floor(r), np.floor(c)
    fr, fc = r - r0, c - c0
    flat = x.reshape(N, C, H * W)
    out = np.zeros((N, C, H * W), dtype=np.float64)
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            rr, cc = r0 + dr, c0 + dc
            inside = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
            idx = (np.clip(rr, 0, H - 1) * W + np.clip(cc, 0, W - 1)).astype(np.intp)
            corner = np.take_along_axis(flat, idx[:, None, :], axis=2)
            out += (wr * wc)[:, None, :] * np.where(inside[:, None, :], corner, fill)
    return out.reshape(N, C, H, W).astype(x.dtype)


def _rotation_inverse(degrees):
    """Inverse of a counterclockwise rotation (as displayed, row axis pointing down) in (row, col)."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    # forward: row' = c*row - s*col, col' = s*row + c*col; the inverse is its transpose
    return np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)


def _per_image(name, value, n):
    try:
        v = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))
    except (ValueError, TypeError):
        v = None
    if v is None or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be a finite number or one per image ({n} values), got {value!r}")
    return v


def rotate(x, degrees, fill=0.0):
    """Rotate each image about its centre by ``degrees`` (a number, or one per image;
    positive: counterclockwise as displayed)."""
    x = _batch(x)
    angles = _per_image("degrees", degrees, x.shape[0])
    return _warp(x, _rotation_inverse(angles), np.zeros((x.shape[0], 2)), fill)


def zoom(x, scale, fill=0.0):
    """Scale each image about its centre by ``scale`` (a number, or one per image; > 1 zooms in:
    the centre enlarged to the full size; < 1 zooms out)."""
    x = _batch(x)
    scale = _per_image("scale", scale, x.shape[0])
    if np.any(scale <= 0):
        raise ValueError(f"scale must be > 0, got {scale.min()}")
    return _warp(x, np.eye(2)[None] / scale[:, None, None], np.zeros((x.shape[0], 2)), fill)


def random_rotation(x, max_degrees, rng=None, fill=0.0):
    """Rotate each image by an angle drawn uniformly from ``[-max_degrees, max_degrees]``."""
    x = _batch(x)
    rng = np.random.default_rng(rng)
    return rotate(x, rng.uniform(-max_degrees, max_degrees, x.shape[0]), fill)


def random_zoom(x, zoom_range=(0.8, 1.25), rng=None, fill=0.0):
    """Zoom each image by a factor drawn log-uniformly from ``zoom_range`` (see :func:`zoom`)."""
    x = _batch(x)
    lo, hi = _range("zoom_range", zoom_range, lo=0.0)
    rng = np.random.default_rng(rng)
    return zoom(x, np.exp(rng.uniform(np.log(lo), np.log(hi), x.shape[0])), fill)


def shift(x, rows, cols, fill=0.0):
    """Translate each image by whole pixels: ``rows`` down and ``cols`` right (ints, or one per
    image; negative values go up/left). Uncovered pixels are ``fill``."""
    x = _batch(x)
    N, _, H, W = x.shape
    dr = np.broadcast_to(np.asarray(rows), (N,))
    dc = np.broadcast_to(np.asarray(cols), (N,))
    if dr.dtype.kind not in "iu" or dc.dtype.kind not in "iu":
        raise TypeError(f"rows and cols must be integers, got dtypes {dr.dtype} and {dc.dtype}")
    out = np.full_like(x, fill)
    for n in range(N):
        r, c = int(dr[n]), int(dc[n])
        src_r, dst_r = slice(max(0, -r), min(H, H - r)), slice(max(0, r), min(H, H + r))
        src_c, dst_c = slice(max(0, -c), min(W, W - c)), slice(max(0, c), min(W, W + c))
        out[n, :, dst_r, dst_c] = x[n, :, src_r, src_c]
    return out


def random_shift(x, max_shift, rng=None, fill=0.0):
    """Translate each image by whole pixels drawn uniformly from ``[-max_shift, max_shift]``
    (an int, or a pair (rows, cols))."""
    x = _batch(x)
    mh, mw = pair("max_shift", max_shift, 0)
    rng = np.random.default_rng(rng)
    N = x.shape[0]
    return shift(x, rng.integers(-mh, mh + 1, N), rng.integers(-mw, mw + 1, N), fill)


def random_crop(x, size, padding=0, rng=None, fill=0.0):
    """Crop each image (after padding it by ``padding`` pixels of ``fill`` on every side) to
    ``size`` (int or pair) at a uniformly drawn position."""
    x = _batch(x)
    oh, ow = pair("size", size, 1)
    ph, pw = pair("padding", padding, 0)
    N, _, H, W = x.shape
    if oh > H + 2 * ph or ow > W + 2 * pw:
        raise ValueError(f"size {oh}x{ow} is larger than the padded image {H + 2 * ph}x{W + 2 * pw}")
    rng = np.random.default_rng(rng)
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    top = rng.integers(0, H + 2 * ph - oh + 1, N)
    left = rng.integers(0, W + 2 * pw - ow + 1, N)
    return np.stack([padded[n, :, top[n] : top[n] + oh, left[n] : left[n] + ow] for n in range(N)])


def random_augment(x, rng=None, flip=True, max_degrees=0.0, zoom_range=(1.0, 1.0), max_shift=0.0, fill=0.0):
    """Flip (with probability 1/2 if ``flip``), rotate, zoom and shift each image, in one
    bilinear resampling. ``max_shift`` is in pixels (float, or a pair (rows, cols)); the other
    arguments are those of the single transforms."""
    x = _batch(x)
    lo, hi = _range("zoom_range", zoom_range, lo=0.0)
    rng = np.random.default_rng(rng)
    N = x.shape[0]
    mh, mw = (float(m) for m in (max_shift if isinstance(max_shift, (tuple, list)) else (max_shift,) * 2))
    mirror = np.where(rng.random(N) < 0.5, -1.0, 1.0) if flip else np.ones(N)
    angles = rng.uniform(-max_degrees, max_degrees, N)
    scale = np.exp(rng.uniform(np.log(lo), np.log(hi), N))
    offset = np.stack([rng.uniform(-mh, mh, N), rng.uniform(-mw, mw, N)], axis=1)
    # forward map: flip, then rotate and scale, then shift; inverse = flip . rotate^-1 / scale
    flips = np.zeros((N, 2, 2))
    flips[:, 0, 0], flips[:, 1, 1] = 1.0, mirror
    inverse = flips @ _rotation_inverse(angles) / scale[:, None, None]
    return _warp(x, inverse, offset, fill)
