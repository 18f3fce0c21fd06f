"""Where the CUDA tests can run."""
import functools
import os

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")


@functools.cache
def real_gpu():
    """Whether a real CUDA GPU is usable here (never under the simulator)."""
    if SIMULATOR:
        return False
    try:
        from numba import cuda
    except ImportError:
        return False
    return cuda.is_available()
