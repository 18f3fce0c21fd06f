"""The lecture notes' kernel presets, and :func:`apply` to run one over a grey or RGB image.

The presets are the notes' "Kernel Matrix examples", with their values exactly as printed there,
plus three classic edge detectors. Filtering is :func:`fastlayers.conv2d` (cross-correlation, no
kernel flip), so it runs on whichever backend the dispatch picks.
"""
from __future__ import annotations

import numpy as np

from .ops._checks import FLOAT_DTYPES
from .functional import conv2d

__all__ = ["PRESETS", "get", "apply"]

PRESETS = {
    # "Unweighted 3x3 smoothing kernel"
    "smooth": [[1, 1, 1], [1, 1, 1], [1, 1, 1]],
    # "Weighted 3x3 smoothing kernel with Gaussian blur"
    "gaussian_blur": [[0, 1, 0], [1, 4, 1], [0, 1, 0]],
    # "Kernel to make image sharper"
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    # "Intensified sharper image"
    "sharpen_intense": [[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]],
    # Edge detectors ("Filter for detecting the sharp edges"): the Laplacian is the intensified
    # sharpen minus the identity; Sobel responds to vertical (x) or horizontal (y) edges.
    "edges": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
    "sobel_x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "sobel_y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
}


def get(name):
    """A fresh float64 copy of the preset kernel ``name`` (one of ``PRESETS``)."""
    try:
        return np.array(PRESETS[name], dtype=np.float64)
    except KeyError:
        raise ValueError(f"kernel must be one of {sorted(PRESETS)} or a 2-D array, got {name!r}") from None


def apply(image, kernel, normalize=True, padding="same", backend=None):
    """Filter a grey (H, W) or channels-last colour (H, W, C) image with one 2-D kernel.

    Parameters
    ----------
    image : array (H, W) or (H, W, C), any real dtype
        Integer images are filtered in float32, float images in their own dtype.
    kernel : str (a ``PRESETS`` name) or array (KH, KW)
    normalize : bool
        Divide the kernel by its sum when that sum is positive, so smoothing keeps the image's
        brightness (the notes' kernels are printed unnormalised: "to enhance intensity").
        Kernels summing to 1 (sharpen) or 0 (edge detectors) are unchanged.
    padding : "same" (output as large as the image, zeros beyond the border), "valid" or an int
    backend : as in :func:`fastlayers.conv2d`

    Returns
    -------
    Filtered image, float, channels as the input; not clipped (clip before display).
    """
    k = get(kernel) if isinstance(kernel, str) else np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2:
        raise ValueError(f"kernel must be 2-D (KH, KW), got shape {k.shape}")
    if normalize and k.sum() > 0:
        k = k / k.sum()
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
    if img.dtype.kind not in "biuf":
        raise TypeError(f"image must be a real numeric array, got dtype {img.dtype}")
    dtype = img.dtype if img.dtype in FLOAT_DTYPES else np.dtype(np.float32)
    # Each channel is one image of a batch with one input channel: one conv2d call for all.
    planes = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)
    x = np.ascontiguousarray(planes[:, None], dtype=dtype)
    y = conv2d(x, k[None, None].astype(dtype), padding=padding, backend=backend)[:, 0]
    return y[0] if img.ndim == 2 else np.moveaxis(y, 0, -1)
