"""A small CNN trained on scikit-learn's bundled 8x8 handwritten digits (no download).

Conv2D -> ReLU -> MaxPool2D -> Conv2D -> ReLU -> MaxPool2D -> Flatten -> Dense, trained with Adam
and a cosine learning-rate schedule on 75% of the 1797 digits and tested on the other 25%
(evaluation in eval mode, under no_grad: nothing kept for a backward). Prints the loss, the
accuracies and the time of every epoch, writes a checkpoint (``model.save``) after each epoch and
checks that a fresh model loaded from the last one scores the same, and saves
``digits_filters.png``: the learned first-layer filters and the feature maps they make of one
test digit (the notes' "depth in convolution layer", for real).

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
    """The CNN; the convolutions, each followed by ReLU, start from He (Kaiming) normal weights and
    zero biases rather than PyTorch's default uniform ones: a better test accuracy here."""
    rng = np.random.default_rng(seed)
    kw = dict(backend=backend, dtype=dtype, rng=rng)
    model = L.Sequential(
        L.Conv2D(1, 16, 3, padding=1, **kw), L.ReLU(**kw), L.MaxPool2D(2, **kw),    # 16 x 4 x 4
        L.Conv2D(16, 32, 3, padding=1, **kw), L.ReLU(**kw), L.MaxPool2D(2, **kw),   # 32 x 2 x 2
        L.Flatten(**kw), L.Dense(32 * 2 * 2, 10, **kw),
    )
    for conv in (model[0], model[3]):
        fl.init.kaiming_normal_(conv.params["w"], nonlinearity="relu", rng=rng)
        fl.init.zeros_(conv.params["b"])
    return model


def accuracy(model, x, y, batch_size=512):
    """Share of correct predictions, in eval mode (the model is put back in its mode after)."""
    was_training = model.training
    model.eval()
    correct = 0
    with fl.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model.forward(x[i : i + batch_size]).argmax(axis=1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)


def train_epoch(model, opt, x, y, batch_size, rng):
    """One pass over (x, y) in random mini-batches; returns the mean loss."""
    model.train()
    order = rng.permutation(len(x))
    total = 0.0
    for i in range(0, len(order), batch_size):
        batch = order[i : i + batch_size]
        opt.zero_grad()
        loss, dlogits = fl.losses.softmax_cross_entropy(model.forward(x[batch]), y[batch])
        model.backward(dlogits, input_grad=False)  # the images need no gradient
        opt.step()
        total += float(loss) * len(batch)
    return total / len(order)


def train(epochs=12, batch_size=32, lr=3e-3, backend=None, seed=0, out_dir=None, verbose=True, build=build_model,
          name="cnn_digits"):
    """Train and evaluate the model ``build(backend, seed=...)`` makes; returns a dict with the
    model, the final accuracies and the epoch times. The checkpoint is OUT_DIR/NAME.npz."""
    x_train, x_test, y_train, y_test = load_data(seed)
    model = build(backend, seed=seed)
    opt = fl.optim.Adam(model, lr=lr)
    schedule = fl.optim.CosineAnnealingLR(opt, T_max=epochs)
    rng = np.random.default_rng(seed)
    checkpoint = None if out_dir is None else pathlib.Path(out_dir) / f"{name}.npz"
    epoch_seconds = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        loss = train_epoch(model, opt, x_train, y_train, batch_size, rng)
        schedule.step()
        epoch_seconds.append(time.perf_counter() - start)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            model.save(checkpoint)
        if verbose:
            print(f"epoch {epoch:2d}  loss {loss:.4f}  train acc {accuracy(model, x_train, y_train):.4f}"
                  f"  test acc {accuracy(model, x_test, y_test):.4f}  {epoch_seconds[-1]:.2f} s")
    result = dict(model=model, train_accuracy=accuracy(model, x_train, y_train),
                  test_accuracy=accuracy(model, x_test, y_test), epoch_seconds=epoch_seconds)
    if checkpoint is not None:
        restored = build(backend, seed=seed + 1)
        restored.load(checkpoint)
        result["checkpoint"], result["restored_test_accuracy"] = checkpoint, accuracy(restored, x_test, y_test)
        result["picture"] = save_feature_maps(model, x_test[0], y_test[0], pathlib.Path(out_dir))
    return result


def save_feature_maps(model, digit, label, out_dir):
    """The learned first-layer filters (top row) and their feature maps of ``digit`` after the
    first ReLU (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conv = model[0]
    first_relu = next(i for i, layer in enumerate(model.layers) if isinstance(layer, L.ReLU))
    was_training = model.training
    with fl.no_grad():
        maps = L.Sequential(*model.layers[: first_relu + 1]).eval().forward(digit[None])[0]
    model.train(was_training)
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


def main(argv=None, build=build_model, name="cnn_digits", description=__doc__):
    """The command line of this example, and of others that train another ``build`` the same way."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--backend", choices=("cpu", "numpy"), default=None,
                        help="backend of conv2d/max_pool2d (default: the dispatch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = train(args.epochs, backend=args.backend, seed=args.seed, out_dir=args.out_dir, build=build, name=name)
    print(f"test accuracy {result['test_accuracy']:.4f} ({result['restored_test_accuracy']:.4f} from the checkpoint "
          f"{result['checkpoint']}); median epoch {np.median(result['epoch_seconds']):.2f} s "
          f"(backend {args.backend or 'auto'}); picture: {result['picture']}")


if __name__ == "__main__":
    main()
