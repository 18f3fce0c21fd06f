"""Tensors in and out of fastlayers' kernels, without copies where the memory allows it.

A CPU tensor that is C-contiguous, float32 or float64, with no lazy conjugate or negative bit, is
handed to the kernels as the NumPy view ``Tensor.numpy()`` gives of its memory; the kernels' NumPy
results come back through ``torch.from_numpy``, which wraps the same memory. Any other strided
CPU tensor (a transposed view, channels-last memory, a slice) is first copied to C-contiguous
memory with ``Tensor.contiguous()``, here and nowhere else, so the copy is visible in one place.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def as_array(name, tensor):
    """The NumPy view of ``tensor`` (detached) for a fastlayers kernel; a copy only where the
    tensor's memory is not C-contiguous."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_cpu:
        raise TypeError(
            f"{name} is on {tensor.device}, but fastlayers.torch runs CPU tensors only "
            f"(its CUDA path is not built yet); move it with .cpu() or use torch.nn's module"
        )
    if tensor.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {tensor.layout}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype torch.float32 or torch.float64, got {tensor.dtype}")
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.is_conj() or tensor.is_neg():
        tensor = tensor.resolve_conj().resolve_neg()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    return tensor.numpy()


def as_tensor(array):
    """The tensor over a kernel's NumPy result (same memory)."""
    return torch.from_numpy(array)
