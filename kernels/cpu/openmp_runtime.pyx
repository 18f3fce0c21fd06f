# The OpenMP runtime the kernels were compiled against, as Python sees it: its own default team
# size (omp_get_max_threads: OMP_NUM_THREADS, threadpoolctl's user_api="openmp" limit) for
# fastlayers.get_num_threads(). Built without OpenMP, it reports one thread.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int openmp_max_threads(void) { return omp_get_max_threads(); }
    #define OPENMP_BUILT 1
    #else
    static int openmp_max_threads(void) { return 1; }
    #define OPENMP_BUILT 0
    #endif
    """
    int openmp_max_threads() noexcept nogil
    int OPENMP_BUILT


BUILT_WITH_OPENMP = bool(OPENMP_BUILT)


def max_threads():
    """OpenMP's team size for a parallel region without a num_threads clause, in this thread."""
    return openmp_max_threads()
