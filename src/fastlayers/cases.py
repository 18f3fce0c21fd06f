"""The benchmark case table, shared by bench/ and ``python -m fastlayers bench``.

Shapes are for float32 unless a run asks for another dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    name: str
    op: str  # "conv2d", "max_pool2d", "rnn", "lstm" or "gru"
    shape: tuple  # conv2d/max_pool2d: (N, C, H, W); rnn, lstm, gru: (T, N, D, H)
    params: dict = field(default_factory=dict)  # conv2d: F, kernel_size, stride, padding; pool: kernel_size, stride, padding
    # Cases of one sweep vary only shape[0] (N for conv2d, T for rnn): plots draw them as a line.
    sweep: str = ""


CASES = (
    Case("cifar-stem", "conv2d", (32, 3, 32, 32), dict(F=32, kernel_size=3, stride=1, padding=1)),
    Case("resnet-56", "conv2d", (32, 64, 56, 56), dict(F=64, kernel_size=3, stride=1, padding=1)),
    Case("resnet-28", "conv2d", (32, 128, 28, 28), dict(F=128, kernel_size=3, stride=1, padding=1), "resnet-28 batch"),
    Case("resnet-14", "conv2d", (8, 256, 14, 14), dict(F=256, kernel_size=3, stride=1, padding=1)),
    Case("lenet", "conv2d", (32, 1, 28, 28), dict(F=8, kernel_size=5, stride=1, padding=0)),
    Case("down-1x1", "conv2d", (16, 64, 56, 56), dict(F=128, kernel_size=1, stride=2, padding=0)),
    Case("pool-112", "max_pool2d", (32, 64, 112, 112), dict(kernel_size=2, stride=2)),
    Case("pool-56", "max_pool2d", (32, 128, 56, 56), dict(kernel_size=2, stride=2)),
    # ResNet's stem pool: overlapping 3x3 windows, stride 2, padded
    Case("pool-stem", "max_pool2d", (32, 64, 112, 112), dict(kernel_size=3, stride=2, padding=1)),
    Case("rnn-small", "rnn", (50, 32, 128, 256), sweep="rnn-small length"),
    Case("rnn-large", "rnn", (100, 64, 256, 512)),
    Case("lstm-small", "lstm", (50, 32, 128, 256)),
    Case("lstm-large", "lstm", (100, 64, 256, 512)),
    Case("gru-small", "gru", (50, 32, 128, 256)),
    Case("gru-large", "gru", (100, 64, 256, 512)),
)

# How cost grows with work: resnet-28 over the batch size N, rnn-small over the sequence length T
# (the sweeps also contain resnet-28 itself, N=32, and rnn-small itself, T=50).
SWEEP_CASES = tuple(
    Case(f"resnet-28-n{n}", "conv2d", (n, 128, 28, 28), dict(F=128, kernel_size=3, stride=1, padding=1), "resnet-28 batch")
    for n in (1, 4, 16, 64)
) + tuple(Case(f"rnn-small-t{t}", "rnn", (t, 32, 128, 256), sweep="rnn-small length") for t in (10, 25, 100))

ALL_CASES = CASES + SWEEP_CASES
CASES_BY_NAME = {c.name: c for c in ALL_CASES}

# ``--quick``: every op, and both sweeps up to a size where the NumPy reference still takes about
# 2 s a call (resnet-28 at N=16): the whole run stays near a minute on a quiet 2-core machine.
QUICK_CASES = ("cifar-stem", "resnet-28-n1", "resnet-28-n4", "resnet-28-n16", "pool-56",
               "rnn-small-t10", "rnn-small-t25", "rnn-small", "lstm-small", "gru-small")


def cases_named(text, op):
    """The cases of ``op`` named in ``text`` (comma-separated), in that order; a ValueError names
    the names that are no case of ``op``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES_BY_NAME or CASES_BY_NAME[n].op != op]
    if unknown or not names:
        known = ", ".join(c.name for c in ALL_CASES if c.op == op)
        raise ValueError(f"--cases: {', '.join(unknown) or 'none given'}: not {op} cases; known: {known}")
    return [CASES_BY_NAME[n] for n in names]
