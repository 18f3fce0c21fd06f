"""The benchmark case table, shared by bench/ and ``python -m fastlayers bench``.

Shapes are for float32 unless a run asks for another dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    name: str
    op: str  # "conv2d", "max_pool2d", "rnn", "lstm", "gru", or a model ("vgg")
    shape: tuple  # conv2d/max_pool2d and the models: (N, C, H, W); rnn, lstm, gru: (T, N, D, H)
    # conv2d: F, kernel_size, stride, padding (dilation, groups: 1 unless given); pool: kernel_size, stride, padding
    params: dict = field(default_factory=dict)
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

# Layers of real networks, outside the design table: the VGG-style model (MODEL_CASES below)
# (batch 32 and 1), ResNet-18's stem and 3x3 layers at batch 1, a ResNet-50 bottleneck 1x1,
# VGG-16's full-size layer, MobileNet's depthwise layers and a dilated layer.
# ``--cases layers`` selects them.
_PAD1 = dict(kernel_size=3, padding=1)
LAYER_CASES = (
    Case("vgg-conv1", "conv2d", (32, 3, 32, 32), dict(F=32, **_PAD1)),
    Case("vgg-conv2", "conv2d", (32, 32, 16, 16), dict(F=64, **_PAD1)),
    Case("vgg-conv3", "conv2d", (32, 64, 8, 8), dict(F=128, **_PAD1)),
    Case("vgg-conv1-n1", "conv2d", (1, 3, 32, 32), dict(F=32, **_PAD1)),
    Case("vgg-conv2-n1", "conv2d", (1, 32, 16, 16), dict(F=64, **_PAD1)),
    Case("vgg-conv3-n1", "conv2d", (1, 64, 8, 8), dict(F=128, **_PAD1)),
    Case("resnet18-stem-n1", "conv2d", (1, 3, 224, 224), dict(F=64, kernel_size=7, stride=2, padding=3)),
    Case("resnet18-64-n1", "conv2d", (1, 64, 56, 56), dict(F=64, **_PAD1)),
    Case("resnet18-256-n1", "conv2d", (1, 256, 14, 14), dict(F=256, **_PAD1)),
    Case("resnet18-512-n1", "conv2d", (1, 512, 7, 7), dict(F=512, **_PAD1)),
    Case("resnet50-1x1-n8", "conv2d", (8, 256, 56, 56), dict(F=64, kernel_size=1)),
    Case("vgg16-conv1_2-n2", "conv2d", (2, 64, 224, 224), dict(F=64, **_PAD1)),
    Case("mobilenet-dw32-n8", "conv2d", (8, 32, 112, 112), dict(F=32, groups=32, **_PAD1)),
    Case("mobilenet-dw512-n8", "conv2d", (8, 512, 14, 14), dict(F=512, groups=512, **_PAD1)),
    Case("dilated-256-n4", "conv2d", (4, 256, 28, 28), dict(F=256, kernel_size=3, padding=2, dilation=2)),
)

# Whole networks (fastlayers.benchmark.models): the VGG-style CNN of the layer cases above, its
# inference ("forward") at batch 32 and 1 and its training step ("backward") at batch 32.
# ``--cases models`` selects them.
MODEL_CASES = (
    Case("vgg-n32", "vgg", (32, 3, 32, 32)),
    Case("vgg-n1", "vgg", (1, 3, 32, 32)),
)

ALL_CASES = CASES + SWEEP_CASES + LAYER_CASES + MODEL_CASES
CASES_BY_NAME = {c.name: c for c in ALL_CASES}

# ``--quick``: every op and model, and both sweeps up to a size where the NumPy reference still takes about
# 2 s a call (resnet-28 at N=16): the whole run stays near a minute on a quiet 2-core machine.
QUICK_CASES = ("cifar-stem", "resnet-28-n1", "resnet-28-n4", "resnet-28-n16", "pool-56",
               "rnn-small-t10", "rnn-small-t25", "rnn-small", "lstm-small", "gru-small", "vgg-n32", "vgg-n1")


# Names that stand for a group of cases in ``--cases``.
CASE_GROUPS = {"all": tuple(c.name for c in ALL_CASES), "layers": tuple(c.name for c in LAYER_CASES),
               "models": tuple(c.name for c in MODEL_CASES)}


def expand_groups(names):
    """``names`` with each group name of ``CASE_GROUPS`` replaced by its cases, repeats dropped."""
    return list(dict.fromkeys(n for name in names for n in CASE_GROUPS.get(name, (name,))))


def cases_named(text, op):
    """The cases of ``op`` named in ``text`` (comma-separated; a group name of ``CASE_GROUPS``
    stands for its cases of ``op``), in that order; a ValueError names the names that are no
    case of ``op``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    names = list(dict.fromkeys(m for n in names for m in CASE_GROUPS.get(n, (n,))
                               if n not in CASE_GROUPS or CASES_BY_NAME[m].op == op))
    unknown = [n for n in names if n not in CASES_BY_NAME or CASES_BY_NAME[n].op != op]
    if unknown or not names:
        known = ", ".join(c.name for c in ALL_CASES if c.op == op)
        raise ValueError(f"--cases: {', '.join(unknown) or 'none given'}: not {op} cases; known: {known}")
    return [CASES_BY_NAME[n] for n in names]
