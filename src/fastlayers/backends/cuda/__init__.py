"""The ``"cuda"`` backend: Numba CUDA kernels (``kernels/cuda``, installed as ``fastlayers._cuda``),
launched by one module per op family (``conv2d``, ``max_pool2d``, ``rnn``); ``_arrays`` holds what
they share (array detection, views, copies, workspaces, launch helpers).

Arrays: NumPy inputs are copied to the GPU and the results copied back into NumPy arrays (or the
caller's ``out``). GPU arrays (anything with ``__cuda_array_interface__``: Numba device arrays,
CuPy arrays, PyTorch CUDA tensors) are used in place, without a copy, and the results are Numba
device arrays (wrap them with ``cupy.asarray`` / ``torch.as_tensor(..., device="cuda")`` for free),
or the caller's GPU ``out`` buffers. Non-contiguous GPU inputs are copied once, on the GPU.

Numba is imported only when an op runs or ``availability()`` is asked, never by ``import
fastlayers``; each kernel is compiled on its first launch (per dtype), then cached in the process.
"""
from __future__ import annotations

import functools


@functools.cache
def availability():
    try:
        from numba import config, cuda
    except ImportError as exc:
        return False, f"numba is not installed ({exc}); pip install 'fastlayers[cuda]'"
    if config.ENABLE_CUDASIM:
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct, but very slow"
    if not cuda.is_available():
        why = " ".join(str(cuda.cuda_error() or "numba.cuda.is_available() is False").split())
        return False, f"no usable CUDA GPU/driver: {why}"
    name = cuda.get_current_device().name
    return True, f"GPU {name.decode() if isinstance(name, bytes) else name}"
