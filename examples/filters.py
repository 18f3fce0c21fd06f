"""The lecture notes' kernel presets on a real photograph (scikit-image's bundled cat, or camera).

Saves ``filters.png``: the picture, then each preset of ``fastlayers.filters`` applied to it with
:func:`fastlayers.filters.apply` (one conv2d over the colour channels), each titled with its
kernel matrix.

    python examples/filters.py OUT_DIR [--image chelsea|camera] [--size 300]
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from fastlayers import filters

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # the examples are scripts, not a package
from _pictures import load_photo, save_png  # noqa: E402

SHOWN = ("smooth", "gaussian_blur", "sharpen", "sharpen_intense", "edges", "sobel_x", "sobel_y")


def _display(filtered, kernel_name):
    """Edge responses are signed: show their magnitude (grey), scaled so the strongest 0.5% of
    pixels saturate; the other filters keep the image's [0, 1] range (clipped)."""
    if filters.get(kernel_name).sum() == 0:
        mag = np.abs(filtered) if filtered.ndim == 2 else np.abs(filtered).mean(axis=-1)
        return np.clip(mag / max(float(np.percentile(mag, 99.5)), 1e-12), 0.0, 1.0)
    return np.clip(filtered, 0.0, 1.0)


def run(out_dir, image="chelsea", size=None):
    """Apply every preset; save the grid; return {preset name: filtered image} and the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = load_photo(image, size)
    results = {name: filters.apply(img, name) for name in SHOWN}
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.2))
    grey = img.ndim == 2
    axes[0, 0].imshow(img, cmap="gray" if grey else None)
    axes[0, 0].set_title(f"input: skimage.data.{image}()", fontsize=9)
    for ax, name in zip(axes.ravel()[1:], SHOWN):
        ax.imshow(_display(results[name], name), cmap="gray", vmin=0, vmax=1)
        matrix = "\n".join(" ".join(f"{v:2g}" for v in row) for row in filters.get(name))
        ax.set_title(f"{name}\n{matrix}", fontsize=7, family="monospace")
    for ax in axes.ravel():
        ax.axis("off")
    return results, save_png(fig, out_dir, "filters.png", dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--image", choices=("chelsea", "camera"), default="chelsea")
    parser.add_argument("--size", type=int, default=None, help="cut the longer side down to about this many pixels")
    args = parser.parse_args(argv)
    _, path = run(args.out_dir, args.image, args.size)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
