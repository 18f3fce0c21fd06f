"""Compiled Cython kernels (sources in the repository's kernels/cpu/); use them through fastlayers.backends.cpu."""
