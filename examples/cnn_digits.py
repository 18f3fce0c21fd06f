"""A small CNN trained on scikit-learn's bundled 8x8 handwritten digits (no download).

Conv2D -> ReLU -> MaxPool2D -> Conv2D -> ReLU -> MaxPool2D -> Flatten -> Dense, trained with Adam
on 75% of the 1797 digits and tested on the other 25%. Prints the loss, the accuracies and the
time of every epoch, and saves ``digits_filters.png``: the learned first-layer filters and the
feature maps they make of one test digit (the notes' "depth in convolution layer", for real).

    python examples/cnn_digits.py OUT_DIR [--epochs 12] [--backend cpu|numpy]
"""
from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import fastlayers as fl
from fastlayers import layers as L


def load_data(seed=0, dtype=np.float32):
    """Digits scaled to [0, 1] as (N, 1, 8, 8), split 75/25 stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(dtype)[:, None]
    return train_test_split(x, digits.target, test_size=0.25, stratify=digits.target, random_state=seed)


def build_model(backend=None, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    kw = dict(backend=backend, dtype=dtype, rng=rng)
    return L.Sequential(
        L.Conv2D(1, 16, 3, padding=1, **kw), L.ReLU(**kw), L.MaxPool2D(2, **kw),    # 16 x 4 x 4
        L.Conv2D(16, 32, 3, padding=1, **kw), L.ReLU(**kw), L.MaxPool2D(2, **kw),   # 32 x 2 x 2
        L.Flatten(**kw), L.Dense(32 * 2 * 2, 10, **kw),
    )


def accuracy(model, x, y, batch_size=512):
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model.forward(x[i : i + batch_size]).argmax(axis=1) == y[i : i + batch_size]).sum())
    return correct / len(x)


def train(epochs=12, batch_size=32, lr=3e-3, backend=None, seed=0, out_dir=None, verbose=True):
    """Train and evaluate; returns a dict with the model, the final accuracies and the epoch times."""
    x_train, x_test, y_train, y_test = load_data(seed)
    model = build_model(backend, seed=seed)
    opt = fl.optim.Adam(model, lr=lr)
    rng = np.random.default_rng(seed)
    epoch_seconds = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(x_train))
        total = 0.0
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            loss, dlogits = fl.losses.softmax_cross_entropy(model.forward(x_train[batch]), y_train[batch])
            model.backward(dlogits)
            opt.step()
            total += float(loss) * len(batch)
        epoch_seconds.append(time.perf_counter() - start)
        if verbose:
            print(f"epoch {epoch:2d}  loss {total / len(order):.4f}  train acc {accuracy(model, x_train, y_train):.4f}"
                  f"  test acc {accuracy(model, x_test, y_test):.4f}  {epoch_seconds[-1]:.2f} s")
    result = dict(model=model, train_accuracy=accuracy(model, x_train, y_train),
                  test_accuracy=accuracy(model, x_test, y_test), epoch_seconds=epoch_seconds)
    if out_dir is not None:
        result["picture"] = save_feature_maps(model, x_test[0], y_test[0], pathlib.Path(out_dir))
    return result


def save_feature_maps(model, digit, label, out_dir):
    """The learned first-layer filters (top row) and their ReLU feature maps of ``digit`` (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conv = model[0]
    maps = model[1].forward(conv.forward(digit[None]))[0]
    filters = conv.params["w"][:, 0]
    count = len(filters)
    fig, axes = plt.subplots(2, count + 1, figsize=((count + 1) * 0.8, 2.0))
    axes[0, 0].imshow(digit[0], cmap="gray_r")
    axes[0, 0].set_title(f"digit {label}", fontsize=7)
    limit = abs(filters).max()
    for f in range(count):
        axes[0, f + 1].imshow(filters[f], cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[1, f + 1].imshow(maps[f], cmap="viridis")
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    axes[1, 0].axis("off")
    fig.suptitle("First Conv2D layer after training: its 16 filters (top) give a depth-16 stack of "
                 "feature maps of the digit (bottom)", fontsize=9)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "digits_filters.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--backend", choices=("cpu", "numpy"), default=None,
                        help="backend of conv2d/max_pool2d (default: the dispatch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = train(args.epochs, backend=args.backend, seed=args.seed, out_dir=args.out_dir)
    print(f"test accuracy {result['test_accuracy']:.4f}; median epoch {np.median(result['epoch_seconds']):.2f} s "
          f"(backend {args.backend or 'auto'}); picture: {result['picture']}")


if __name__ == "__main__":
    main()
