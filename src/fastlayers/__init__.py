"""fastlayers: fast neural-network layer kernels (conv2d, max_pool2d, RNN), forward and backward.

Backends: ``"numpy"`` (the reference), ``"cpu"`` (Cython + OpenMP) and ``"cuda"`` (Numba CUDA,
imported only when first used). See ``fastlayers.available_backends()``. The ops' specs (arguments,
geometry, kernels per backend) are in ``fastlayers.ops``; the design in docs/design.md.
"""
from . import backends, ops  # noqa: F401
from .backends import cpu as _cpu_backend  # noqa: F401  (loads the compiled kernels: a broken install warns now)
from ._dispatch import (available_backends, autotuned, clear_autotuned, get_num_threads, set_autotune, set_backend,
                        set_num_threads, threads, use_backend)
from .functional import (
    batch_norm,
    batch_norm_backward,
    conv2d,
    conv2d_backward,
    gru,
    gru_backward,
    gru_step,
    gru_step_backward,
    linear,
    linear_backward,
    lstm,
    lstm_backward,
    lstm_step,
    lstm_step_backward,
    max_pool2d,
    max_pool2d_backward,
    relu,
    relu_backward,
    rnn,
    rnn_backward,
    rnn_step,
    rnn_step_backward,
)
from . import augment, filters, init, layers, losses, optim  # NumPy only: keeps the import cheap
from .layers import is_grad_enabled, no_grad

from ._version import __version__


def release_workspaces():
    """Free the scratch buffers the CPU kernels keep cached between calls, in every thread, and
    return how many bytes that released. Each thread keeps one buffer per kind at the largest size
    it has needed (``rnn_backward`` one of T*N*H elements, conv2d its column tiles) until the
    thread ends; call this after a burst of large calls. Nothing to free if no CPU kernel ran."""
    import sys

    common = sys.modules.get("fastlayers.backends.cpu._common")
    return 0 if common is None else common.release_workspaces()

__all__ = [
    "augment",
    "autotuned",
    "available_backends",
    "backends",
    "batch_norm",
    "batch_norm_backward",
    "clear_autotuned",
    "conv2d",
    "conv2d_backward",
    "filters",
    "get_num_threads",
    "gru",
    "gru_backward",
    "gru_step",
    "gru_step_backward",
    "init",
    "is_grad_enabled",
    "layers",
    "linear",
    "linear_backward",
    "losses",
    "lstm",
    "lstm_backward",
    "lstm_step",
    "lstm_step_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "no_grad",
    "ops",
    "optim",
    "release_workspaces",
    "relu",
    "relu_backward",
    "rnn",
    "rnn_backward",
    "rnn_step",
    "rnn_step_backward",
    "set_autotune",
    "set_backend",
    "set_num_threads",
    "threads",
    "use_backend",
]
