"""Compiled Cython kernels (sources in the repository's kernels/cpu/); use them through
fastlayers.backends.cpu.

Importing this package first loads the libraries the extensions link, from where they are
installed now, so that no path recorded at build time is needed (an editable install's build
environment is deleted after the build):

* OpenBLAS of the ``scipy-openblas32`` package (kernels/cpu/_blas.pxd), loaded by its full path.
  The extensions name it by its soname, which the dynamic loader then finds already loaded, as
  SciPy and NumPy do with the OpenBLAS they ship. It is loaded with ``OPENBLAS_NUM_THREADS=1``:
  the kernels call it from inside their own OpenMP threads, each on its own block, so its threads
  would oversubscribe the cores, and its idle workers busy-wait after start-up (~0.1 s), taking a
  core from our team. OpenBLAS reads the variable once, when it initialises, and then starts no
  worker thread at all. The library is ours alone (NumPy's and SciPy's BLAS are other libraries).
* The OpenMP runtime, by importing ``openmp_runtime``, with the wait policy of ``OPENMP_WAIT``
  (below) unless the user has set one (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``). It has effect
  only if the runtime is not loaded yet (by another library imported before fastlayers).

The variables are restored right after, so subprocesses and the other libraries loaded later see
the user's environment.
"""
import ctypes
import os

# Idle team threads sleep at once instead of spinning (libgomp spins about 0.1-0.3 ms after every
# parallel region and at every barrier by default): on a loaded machine a spinning thread takes
# the core that a descheduled team mate or another process needs, which multiplied the time of
# small layers, while waking sleeping threads costs microseconds per call. Chosen by measurement:
# docs/performance.md, "Threads under load" (tools/contention.py --sweep).
OPENMP_WAIT = {"OMP_WAIT_POLICY": "passive"}
_USER_OPENMP_WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _openblas_path():
    import scipy_openblas32

    return os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))


def _load_runtime_libraries():
    settings = {"OPENBLAS_NUM_THREADS": "1"}
    if not any(name in os.environ for name in _USER_OPENMP_WAIT):
        settings.update(OPENMP_WAIT)
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        path = _openblas_path()
        try:
            ctypes.CDLL(path)
        except OSError as exc:
            raise ImportError(f"cannot load scipy-openblas32's OpenBLAS from {path}: {exc}") from exc
        from . import openmp_runtime  # noqa: F401  (loads the OpenMP runtime now)
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


_load_runtime_libraries()
