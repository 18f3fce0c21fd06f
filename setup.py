"""Build the Cython kernels in kernels/cpu/ into fastlayers._cpu, with OpenMP where the compiler has it,
linked against the OpenBLAS of the scipy-openblas32 package (kernels/cpu/_blas.pxd says why).

Everything else about the package lives in pyproject.toml.

Build switches (environment variables):
  FASTLAYERS_DEBUG=1      Cython bounds/wraparound checks on, -O0 -g: for fuzzing and sanitizers.
  FASTLAYERS_NATIVE=1     add -march=native (faster on the build machine, not portable).
  FASTLAYERS_NO_OPENMP=1  build serially even where OpenMP is available.
  FASTLAYERS_EXTENSIONS=a,b  developer builds: compile only kernels/cpu/{a,b}.pyx
                          (python setup.py build_ext --inplace), leaving the others as built.
"""
import os
import shutil
import subprocess
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = Path("kernels") / "cpu"
DEBUG = os.environ.get("FASTLAYERS_DEBUG", "") not in ("", "0")
NATIVE = os.environ.get("FASTLAYERS_NATIVE", "") not in ("", "0")
ONLY = [s for s in os.environ.get("FASTLAYERS_EXTENSIONS", "").split(",") if s]


def _compiler_has_openmp(compiler):
    """Compile and link a tiny OpenMP program, as scikit-learn's build does."""
    if os.environ.get("FASTLAYERS_NO_OPENMP", "") not in ("", "0"):
        return False
    source = textwrap.dedent(
        """
        #include <omp.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            return n > 0 ? 0 : 1;
        }
        """
    )
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "check_openmp.c")
        with open(src, "w") as f:
            f.write(source)
        objects = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
        compiler.link_executable(objects, "check_openmp", output_dir=tmp, extra_postargs=["-fopenmp"])
        return subprocess.run([os.path.join(tmp, "check_openmp")]).returncode == 0
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExtWithOpenMP(build_ext):
    def build_extensions(self):
        openmp = _compiler_has_openmp(self.compiler)
        if not openmp:
            warnings.warn(
                "\n*** fastlayers: this compiler has no working OpenMP support; the CPU kernels are "
                "built SERIAL (one thread). Install a compiler with OpenMP (gcc, or clang with "
                "libomp) and rebuild for parallel kernels. ***\n"
            )
        for ext in self.extensions:
            if openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


def _openblas_link_args():
    """Compile and link against scipy-openblas32's cblas.h and library. No run path is recorded:
    fastlayers/_cpu/__init__.py loads the library from the installed package before the
    extensions (a build-time path dies with an isolated build environment)."""
    import scipy_openblas32

    return dict(include_dirs=[scipy_openblas32.get_include_dir()], library_dirs=[scipy_openblas32.get_lib_dir()],
                libraries=[scipy_openblas32.get_library()])


# Flags of single modules: the recurrent kernels' vectorised tanh (kernels/cpu/tanh_f32.h) needs
# its clamps as selects, relu's backward its x <= 0 test and the general max-pool its compares
# (kernels/cpu/max_pool2d_phases.h), which GCC makes only when
# comparisons cannot trap (else a branch, mispredicted on every other element of real data).
# im2col's row copies stay loops: as memcpy/memset calls they cost more than the copy on small planes.
# The optimisers' updates round every product and sum apart, as the NumPy expressions they match,
# and vectorise their square roots (no errno to set: the roots are of sums of squares).
MODULE_FLAGS = {"rnn": ["-fno-trapping-math"], "gated_rnn": ["-fno-trapping-math"], "relu": ["-fno-trapping-math"],
                "max_pool2d": ["-fno-trapping-math"], "im2col": ["-fno-tree-loop-distribute-patterns"],
                "optim": ["-ffp-contract=off", "-fno-math-errno"]}


def extensions():
    from Cython.Build import cythonize

    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    if NATIVE:
        opt.append("-march=native")
    blas = _openblas_link_args()
    exts = [
        Extension(
            f"fastlayers._cpu.{pyx.stem}",
            [str(pyx)],
            include_dirs=[np.get_include(), str(KERNELS)] + blas["include_dirs"],
            library_dirs=blas["library_dirs"],
            libraries=blas["libraries"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=list(opt) + MODULE_FLAGS.get(pyx.stem, []),
        )
        for pyx in sorted(KERNELS.glob("*.pyx"))
        if not ONLY or pyx.stem in ONLY
    ]
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "nonecheck": False,
        "embedsignature": True,
    }
    return cythonize(exts, compiler_directives=directives, include_path=[str(KERNELS)])


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtWithOpenMP})
