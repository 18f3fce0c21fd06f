"""What the picture examples (filters.py, augment.py) share: a bundled photograph, and a figure
written as a PNG."""
from __future__ import annotations

import pathlib

import numpy as np


def load_photo(name="chelsea", size=None):
    """A bundled scikit-image photograph as float32 (H, W[, 3]) in [0, 1], its longer side cut
    down to about ``size`` pixels by striding (None: full size)."""
    from skimage import data

    img = getattr(data, name)().astype(np.float32) / 255.0
    if size is not None:
        step = max(1, max(img.shape[:2]) // size)
        img = img[::step, ::step]
    return np.ascontiguousarray(img)


def save_png(fig, out_dir, filename, dpi):
    """Lay ``fig`` out, write it to ``out_dir``/``filename`` (making the folder), close it; return
    the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
