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
* The OpenMP runtime, by importing ``openmp_runtime``, with its own default wait policy (idle
  team threads spin a while, then sleep) or the user's (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``).
  Sleeping at once (``OMP_WAIT_POLICY=passive``) made every parallel region of a small layer pay
  the wake-up of a virtual CPU (cifar-stem's forward 1.7x, rnn-small's 2.2x on an idle machine);
  what spinning costs a loaded machine is avoided instead by running on no more threads than the
  other processes leave CPUs free (``fastlayers._cpu_load``). Measured: docs/performance.md,
  "Threads under load".

The variable is restored right after, so subprocesses and the other libraries loaded later see
the user's environment.
"""
import ctypes
import os


def _openblas_path():
    import scipy_openblas32

    return os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))


def _load_runtime_libraries():
    settings = {"OPENBLAS_NUM_THREADS": "1"}
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
