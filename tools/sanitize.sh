#!/usr/bin/env bash
# Build the CPU kernels with Cython bounds checks (FASTLAYERS_DEBUG=1) and AddressSanitizer into a
# throwaway copy of the working tree, then run the reliability suite against that build.
# The checkout's own build is left alone.
#
#   tools/sanitize.sh [DIR] [pytest args...]     DIR defaults to a fresh mktemp -d
#   FASTLAYERS_LONG_EXAMPLES=1000 tools/sanitize.sh /tmp/fl-san --hypothesis-profile=long
#
# ASan must be linked by the compiler driver itself (CC=...): setup.py's OpenMP probe links a test
# program without LDFLAGS, so CFLAGS/LDFLAGS alone would make it fail and build the kernels serial.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$(mktemp -d)}"
shift || true
mkdir -p "$dir"
(cd "$src" && tar --exclude=./.git --exclude='*.so' --exclude=./build --exclude='*.egg-info' \
    --exclude=.hypothesis --exclude=__pycache__ --exclude='./kernels/cpu/*.c' -cf - .) | tar -xf - -C "$dir"
cd "$dir"
CC="gcc -fsanitize=address -fno-omit-frame-pointer" FASTLAYERS_DEBUG=1 \
    python setup.py -q build_ext --inplace 2>&1 | tee build.log | grep -i "serial\|error" || true
# Python's allocator, NumPy's and the kernels' all go through malloc, where ASan watches them.
# allocator_may_return_null: the huge-request tests expect MemoryError, not ASan's abort.
# pytest captures fd 2, where ASan reports: -s keeps a report visible if a kernel is caught.
# The RSS test is left out: ASan's quarantine holds freed memory, so RSS grows by design.
LD_PRELOAD="$(gcc -print-file-name=libasan.so)" \
ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 PYTHONMALLOC=malloc PYTHONPATH="$dir/src" \
    python -m pytest -s -q -p no:cacheprovider tests/test_fuzz.py tests/test_threads.py \
    tests/test_determinism.py tests/test_memory.py -k "not rss_flat" "$@"
