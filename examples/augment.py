"""The notes' "generation of cat pictures via random data augmentation": one photograph, many
random variants (flip, rotation, zoom, shift) from :func:`fastlayers.augment.random_augment`.

Saves ``augment.png``: the original, then the augmented copies, in a grid.

    python examples/augment.py OUT_DIR [--count 11] [--seed 0]
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from fastlayers import augment

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # the examples are scripts, not a package
from _pictures import load_photo, save_png  # noqa: E402


def run(out_dir, count=11, seed=0, size=None):
    """Augment ``count`` copies of the cat; save the grid; return the batch and the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cat = np.ascontiguousarray(load_photo("chelsea", size).transpose(2, 0, 1)[None])  # a (1, 3, H, W) batch
    batch = augment.random_augment(np.repeat(cat, count, axis=0), rng=seed, flip=True, max_degrees=25,
                                   zoom_range=(0.8, 1.3), max_shift=(0.1 * cat.shape[2], 0.1 * cat.shape[3]),
                                   fill=1.0)
    images = np.concatenate([cat, batch])
    cols = 4
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3, rows * 2.1))
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(images):
            ax.imshow(np.clip(images[i].transpose(1, 2, 0), 0, 1))
            ax.set_title("original" if i == 0 else f"augmented {i}", fontsize=8)
    return batch, save_png(fig, out_dir, "augment.png", dpi=80)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--count", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _, path = run(args.out_dir, args.count, args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
