/* FL_CLONES: the one instruction-set policy of the C helpers. A function marked with it is
 * compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA) and the baseline (SSE2), and the loader
 * picks the version for the CPU it runs on (an ifunc: GCC on x86-64 Linux), so the default,
 * portable build still uses the wide vectors where they exist. Elsewhere, with other compilers or
 * with FL_NO_CLONES defined, it is the one baseline build (FASTLAYERS_NATIVE=1 in setup.py
 * compiles everything for the build machine instead). */
#ifndef FASTLAYERS_TARGET_CLONES_H
#define FASTLAYERS_TARGET_CLONES_H

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && !defined(FL_NO_CLONES)
#define FL_HAS_CLONES 1
#define FL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FL_CLONES
#endif

/* The instruction set FL_CLONES functions run with on this CPU: "x86-64-v4", "x86-64-v3" or
 * "baseline", the loader's choice made again here (it takes the first clone the CPU supports),
 * or what the compiler targeted where there are no clones. Python asks it to choose between
 * algorithms whose speed depends on the vector width. */
static inline const char *fl_clone_isa(void) {
#ifdef FL_HAS_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return "x86-64-v4";
    if (__builtin_cpu_supports("x86-64-v3"))
        return "x86-64-v3";
    return "baseline";
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
    return "x86-64-v4";
#elif defined(__AVX2__) && defined(__FMA__)
    return "x86-64-v3";
#else
    return "baseline";
#endif
}

#endif
