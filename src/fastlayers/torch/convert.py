"""Swap torch.nn modules of a model for fastlayers' and back, in place."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch import nn

from .modules import GRU, LSTM, RNN, Conv2d, FusedReLU, MaxPool2d, ReLUMaxPool2d

__all__ = ["ConversionReport", "convert", "revert"]

FASTLAYERS_MODULES = {nn.Conv2d: Conv2d, nn.MaxPool2d: MaxPool2d, nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU}
# What convert(fuse=True) makes of a ReLU followed by a MaxPool2d, and what revert restores.
FUSED_MODULES = {FusedReLU: nn.ReLU, ReLUMaxPool2d: nn.MaxPool2d}
TORCH_MODULES = {**{fast: torch_cls for torch_cls, fast in FASTLAYERS_MODULES.items()}, **FUSED_MODULES}


@dataclass
class ConversionReport:
    """What :func:`convert` or :func:`revert` did: ``swapped`` lists (name, old class, new class),
    ``kept`` lists (name, class, reason) for every leaf module left as it was and every module of
    a swappable kind that was refused. The model itself is named ``""``."""

    swapped: list = field(default_factory=list)
    kept: list = field(default_factory=list)

    def __str__(self):
        lines = [f"swapped {len(self.swapped)}, kept {len(self.kept)}"]
        lines += [f"  swapped {name or '(model)'}: {old} -> {new}" for name, old, new in self.swapped]
        lines += [f"  kept    {name or '(model)'}: {cls} ({reason})" for name, cls, reason in self.kept]
        return "\n".join(lines)


def _qualified(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _swap(model, mapping, done, reason_for, leaf_reason):
    """Change the class of every module whose exact class is in ``mapping``: the classes differ
    only in ``forward``, so the module keeps its parameters (the same Parameter objects: an
    optimiser built before still updates them), buffers, hooks and identity. ``reason_for(target,
    module)`` may refuse a swap; modules of a class in ``done`` are reported as already swapped;
    other leaf modules are kept for ``leaf_reason(module)``."""
    report = ConversionReport()
    for name, module in model.named_modules():
        cls = type(module)
        target = mapping.get(cls)
        if target is not None:
            reason = reason_for(target, module)
        elif cls in done:
            reason = f"already {_qualified(cls)}"
        elif any(isinstance(module, kind) for kind in mapping):
            kind = next(kind for kind in mapping if isinstance(module, kind))
            reason = f"a subclass of {_qualified(kind)}: its forward may differ"
        elif next(module.children(), None) is None:
            reason = leaf_reason(module)
        else:
            continue  # a container: its leaves are reported
        if reason is None:
            module.__class__ = target
            report.swapped.append((name, _qualified(cls), _qualified(target)))
        else:
            report.kept.append((name, _qualified(cls), reason))
    return report


def convert(model, fuse=False):
    """Swap, in place, every torch.nn.Conv2d, MaxPool2d, RNN, LSTM and GRU of ``model`` (itself included) for
    fastlayers.torch's, which run fastlayers' kernels. Returns a :class:`ConversionReport`.

    Only modules of exactly these classes are swapped (a subclass may have its own forward); one
    whose configuration the kernels cannot run (e.g. RNN nonlinearity="relu", LSTM proj_size, CUDA parameters) is
    kept, and the report says why.

    ``fuse``: also run each torch.nn.ReLU that an nn.Sequential passes straight to a MaxPool2d as
    part of the pool's call (:func:`~fastlayers.torch.functional.relu_max_pool2d`: the ReLU on the
    pooled maxima, the same values and gradients but for a zero's sign): the pool becomes a
    :class:`~fastlayers.torch.modules.ReLUMaxPool2d`, the ReLU a
    :class:`~fastlayers.torch.modules.FusedReLU`, which passes its input through. A pair is kept
    where the pool returns indices, either module has hooks, or the ReLU is used elsewhere too
    (those would see the ReLU's input instead of its output), or the pool is used elsewhere too."""
    report = _swap(model, FASTLAYERS_MODULES, set(FASTLAYERS_MODULES.values()) | set(FUSED_MODULES),
                   lambda target, module: target.unsupported_reason(module), lambda module: "no fastlayers equivalent")
    if fuse:
        _fuse_relu_pools(model, report)
    return report


def _fuse_relu_pools(model, report):
    """``convert``'s ``fuse``: each ReLU -> MaxPool2d pair of a Sequential of ``model`` (the pool
    already swapped) as FusedReLU -> ReLUMaxPool2d, recorded in ``report``."""
    names = {id(m): name for name, m in model.named_modules()}
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    refused = set()
    for container in model.modules():
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container)
        for relu, pool in zip(children, children[1:]):
            if type(relu) is not nn.ReLU or type(pool) is not MaxPool2d:
                continue
            name = names[id(relu)]
            reason = _fusion_refusal(relu, pool, uses)
            if reason is not None:
                if name not in refused:  # a shared ReLU meets its pools more than once
                    refused.add(name)
                    report.kept = [k if k[0] != name else (name, k[1], f"{k[2]}; not fused: {reason}")
                                   for k in report.kept]
                continue
            report.kept = [k for k in report.kept if k[0] != name]  # kept as a leaf before: now swapped
            report.swapped.append((name, _qualified(nn.ReLU), _qualified(FusedReLU)))
            relu.__class__ = FusedReLU
            pool_name = names[id(pool)]
            earlier = [s for s in report.swapped if s[0] == pool_name]  # swapped by this call: one entry
            report.swapped = [s for s in report.swapped if s[0] != pool_name]
            report.swapped.append((pool_name, earlier[0][1] if earlier else _qualified(MaxPool2d),
                                   _qualified(ReLUMaxPool2d)))
            pool.__class__ = ReLUMaxPool2d


def _fusion_refusal(relu, pool, uses):
    """Why a ReLU -> MaxPool2d pair cannot run as one call, or None."""
    if pool.return_indices:
        return "the pool returns indices"
    for module, kind in ((relu, "ReLU"), (pool, "pool")):
        if uses[id(module)] > 1:  # its other uses would change too
            return f"the {kind} is used in several places"
        if any(getattr(module, hooks) for hooks in _HOOKS):
            return f"the {kind} has hooks"
    return None


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def revert(model):
    """The inverse of :func:`convert`: swap fastlayers.torch's modules back to torch.nn's, in place."""
    return _swap(model, TORCH_MODULES, set(FASTLAYERS_MODULES), lambda target, module: None,
                 lambda module: "not a fastlayers.torch module")
