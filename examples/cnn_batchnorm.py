"""The digits CNN of cnn_digits.py with batch normalisation and dropout: Conv2D -> BatchNorm2d ->
ReLU -> MaxPool2D, twice, then Flatten -> Dropout -> Dense.

BatchNorm2d normalises each channel with the batch's statistics while training and with its
running statistics in eval mode; Dropout zeroes a random 30% of the features while training and
passes them through in eval mode. The training loop, the evaluation (eval mode, no_grad), the
cosine schedule and the checkpoint are cnn_digits.py's; the checkpoint holds the running
statistics too, so the model loaded from it scores the same.

    python examples/cnn_batchnorm.py OUT_DIR [--epochs 12] [--backend cpu|numpy]
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # the examples are scripts, not a package
import cnn_digits  # noqa: E402

from fastlayers import layers as L  # noqa: E402


def build_model(backend=None, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    kw = dict(backend=backend, dtype=dtype, rng=rng)
    return L.Sequential(
        L.Conv2D(1, 16, 3, padding=1, bias=False, **kw), L.BatchNorm2d(16, **kw), L.ReLU(**kw),
        L.MaxPool2D(2, **kw),                                                              # 16 x 4 x 4
        L.Conv2D(16, 32, 3, padding=1, bias=False, **kw), L.BatchNorm2d(32, **kw), L.ReLU(**kw),
        L.MaxPool2D(2, **kw),                                                              # 32 x 2 x 2
        L.Flatten(**kw), L.Dropout(0.3, **kw), L.Dense(32 * 2 * 2, 10, **kw),
    )


def train(epochs=12, seed=0, out_dir=None, backend=None, verbose=True):
    return cnn_digits.train(epochs, backend=backend, seed=seed, out_dir=out_dir, verbose=verbose, build=build_model,
                            name="cnn_batchnorm")


def main(argv=None):
    cnn_digits.main(argv, build=build_model, name="cnn_batchnorm", description=__doc__)


if __name__ == "__main__":
    main()
