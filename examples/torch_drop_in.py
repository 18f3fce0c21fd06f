"""fastlayers as a drop-in for a PyTorch model: a small torchvision-style CNN written with
torch.nn is converted with ``fastlayers.torch.convert`` and trained for a few steps, and the time
per training step is printed with PyTorch's CPU kernels and with fastlayers'.

Both models start from the same weights and see the same batches, so their losses agree to
float32 rounding (printed side by side). Time on a machine that other work shares is noisy:
compare the two figures of one run, not runs of different days.

    python examples/torch_drop_in.py [--batch 32] [--size 32] [--steps 10]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import fastlayers.torch as flt


def small_cnn(num_classes=10, width=32):
    """A VGG-style stack (conv-relu pairs, max-pooling) with an average-pooled linear head."""
    def stage(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

    return nn.Sequential(*stage(3, width), *stage(width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, num_classes))


def train(model, batches, lr=0.05):
    """SGD steps over ``batches``; returns (losses, seconds per step after the first)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses, times = [], []
    for x, y in batches:
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    steady = times[1:] or times  # the first step also allocates and warms up both libraries
    return losses, sorted(steady)[len(steady) // 2]


def run(batch=32, size=32, steps=10, width=32, seed=0, verbose=True):
    """Train the torch.nn model and its converted copy on the same batches; return a dict with
    both loss curves, the conversion report and the median seconds per step of each."""
    torch.manual_seed(seed)
    model = small_cnn(width=width)
    converted = copy.deepcopy(model)
    report = flt.convert(converted)
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
               for _ in range(steps)]
    torch_losses, torch_step = train(model, batches)
    fl_losses, fl_step = train(converted, batches)
    if verbose:
        print(report)
        print(f"batch {batch} x 3 x {size} x {size}, {steps} SGD steps, {torch.get_num_threads()} threads")
        for i, (a, b) in enumerate(zip(torch_losses, fl_losses)):
            print(f"  step {i}: loss torch.nn {a:.6f}  fastlayers {b:.6f}")
        print(f"median time per step: torch.nn {torch_step * 1e3:.1f} ms, fastlayers {fl_step * 1e3:.1f} ms "
              f"({torch_step / fl_step:.2f}x)")
    return dict(report=report, torch_losses=torch_losses, fastlayers_losses=fl_losses,
                torch_step_s=torch_step, fastlayers_step_s=fl_step)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=32, help="channels of the first stage")
    args = parser.parse_args(argv)
    run(args.batch, args.size, args.steps, args.width)


if __name__ == "__main__":
    main()
