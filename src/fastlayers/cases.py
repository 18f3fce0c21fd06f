"""The benchmark case table (DESIGN.md), shared by bench/ and ``python -m fastlayers bench``.

Shapes are for float32 unless a run asks for another dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    name: str
    op: str  # "conv2d", "max_pool2d" or "rnn"
    shape: tuple  # conv2d/max_pool2d: (N, C, H, W); rnn: (T, N, D, H)
    params: dict = field(default_factory=dict)  # conv2d: F, kernel_size, stride, padding; pool: kernel_size, stride


CASES = (
    Case("cifar-stem", "conv2d", (32, 3, 32, 32), dict(F=32, kernel_size=3, stride=1, padding=1)),
    Case("resnet-56", "conv2d", (32, 64, 56, 56), dict(F=64, kernel_size=3, stride=1, padding=1)),
    Case("resnet-28", "conv2d", (32, 128, 28, 28), dict(F=128, kernel_size=3, stride=1, padding=1)),
    Case("resnet-14", "conv2d", (8, 256, 14, 14), dict(F=256, kernel_size=3, stride=1, padding=1)),
    Case("lenet", "conv2d", (32, 1, 28, 28), dict(F=8, kernel_size=5, stride=1, padding=0)),
    Case("down-1x1", "conv2d", (16, 64, 56, 56), dict(F=128, kernel_size=1, stride=2, padding=0)),
    Case("pool-112", "max_pool2d", (32, 64, 112, 112), dict(kernel_size=2, stride=2)),
    Case("pool-56", "max_pool2d", (32, 128, 56, 56), dict(kernel_size=2, stride=2)),
    Case("rnn-small", "rnn", (50, 32, 128, 256)),
    Case("rnn-large", "rnn", (100, 64, 256, 512)),
)

CASES_BY_NAME = {c.name: c for c in CASES}
