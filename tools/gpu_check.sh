#!/usr/bin/env bash
# One command for a machine with a CUDA GPU: build, the whole test suite on the real GPU (no
# simulator: tests/cuda/sim then runs on the device too, see tests/cuda/conftest.py), the GPU
# benchmark (bench/bench_cuda.py: the engine against PyTorch CUDA, and issue 5's targets), and one
# report with every figure and the pass/fail counts.
#
#   tools/gpu_check.sh                 # report in $OUT/gpu-report.md, or ./gpu-report/gpu-report.md
#   tools/gpu_check.sh --dry-run       # print the steps, run nothing, write the report skeleton
#   tools/gpu_check.sh -- tests/cuda   # pytest arguments after --: a subset of the suite
#
# Expects Python (3.11+) with numpy, Cython, setuptools, numba, numba-cuda, pytest and hypothesis;
# cupy and torch with CUDA are optional (their tests and comparison columns skip without them).
# Each step has a time limit, so the whole check ends within about 8 minutes; a step that fails or
# runs out of time is reported and the next one still runs. Exit status: 0 when every step passed.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python3}
REPORT_DIR=${OUT:-./gpu-report}
REPORT="$REPORT_DIR/gpu-report.md"
LOGS="$REPORT_DIR/logs"
# Seconds per step: together about 8 minutes at most on an H100/H200 node. The suite takes 11
# minutes on the loaded 2-core development machine; a free 16-core node runs it in a fraction.
GPU_LIMIT=30
BUILD_LIMIT=80
TESTS_LIMIT=300
BENCH_LIMIT=90
# bench_cuda's time cap per measurement (its default, 2 s, would need ~5 minutes for the table)
BENCH_BUDGET=0.2

dry_run=0
pytest_args=()
while (($#)); do
    case $1 in
        --dry-run) dry_run=1 ;;
        --) shift; pytest_args=("$@"); break ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (expected --dry-run, --help or -- PYTEST_ARGS...)" >&2; exit 2 ;;
    esac
    shift
done

mkdir -p "$LOGS" || exit 2
step_rows=()
failed_steps=0

# The command as one would type it: arguments with spaces or quotes in single quotes.
shell_words() {
    local word out=()
    for word in "$@"; do
        if [[ $word =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
            out+=("$word")
        else
            out+=("'${word//\'/\'\\\'\'}'")
        fi
    done
    printf '%s' "${out[*]}"
}

# run_step NAME LIMIT CMD...: run CMD with a time limit (SIGINT first, so pytest still writes its
# summary and JUnit file), its output in $LOGS/NAME.log; one row of the step table.
run_step() {
    local name=$1 limit=$2
    shift 2
    local log="$LOGS/$name.log" status start rc text
    text=$(shell_words "$@")
    if ((dry_run)); then
        printf '[dry-run] %s (limit %ss): %s\n' "$name" "$limit" "$text"
        step_rows+=("| $name | not run (dry run) | - | \`$text\` |")
        return 0
    fi
    echo "== $name (limit ${limit}s): $text"
    start=$(date +%s)
    timeout --signal=INT --kill-after=20 "$limit" "$@" >"$log" 2>&1
    rc=$?
    case $rc in
        0) status=passed ;;
        124|137) status="out of time (${limit}s)" ;;
        *) status="failed (exit $rc)" ;;
    esac
    ((rc == 0)) || failed_steps=$((failed_steps + 1))
    step_rows+=("| $name | $status | $(($(date +%s) - start)) | \`$text\` |")
    echo "   $status"
    return 0
}

# Numba reads this once at import: the suite must see the real GPU, never the simulator.
unset NUMBA_ENABLE_CUDASIM

run_step gpu "$GPU_LIMIT" "$PYTHON" -c \
    "from numba import cuda; assert cuda.is_available(), 'no usable CUDA GPU'; cuda.detect()"
run_step build "$BUILD_LIMIT" "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
run_step tests "$TESTS_LIMIT" "$PYTHON" -m pytest -q -p no:cacheprovider \
    --junitxml="$REPORT_DIR/junit.xml" "${pytest_args[@]}"
run_step bench_cuda "$BENCH_LIMIT" "$PYTHON" bench/bench_cuda.py --budget "$BENCH_BUDGET" \
    --json "$REPORT_DIR/bench_cuda.json"

# ---------------------------------------------------------------------------- the report
{
    echo "# fastlayers GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$( \
        git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)'), host $(hostname)"
    echo
    echo '```'
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -5
    else
        echo "nvidia-smi: not found"
    fi
    "$PYTHON" - <<'EOF' 2>&1
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "numba", "numba_cuda", "cupy", "torch"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # absent or broken: say which
        print(name, "not importable:", type(exc).__name__, exc)
EOF
    [[ -f $LOGS/gpu.log ]] && cat "$LOGS/gpu.log"
    echo '```'
    echo
    echo "## Steps"
    echo
    echo "| step | result | seconds | command |"
    echo "|---|---|---|---|"
    printf '%s\n' "${step_rows[@]}"
    echo
    echo "## Tests"
    echo
    if [[ -f $REPORT_DIR/junit.xml && $dry_run == 0 ]]; then
        "$PYTHON" - "$REPORT_DIR/junit.xml" <<'EOF'
import collections, sys
import xml.etree.ElementTree as ET

counts, by_area, failures, skips = collections.Counter(), collections.defaultdict(collections.Counter), [], collections.Counter()
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    outcome = "passed"
    for child in case:
        if child.tag in ("failure", "error"):
            outcome = "failed" if child.tag == "failure" else "error"
            failures.append(f"{case.get('classname')}::{case.get('name')}: {(child.get('message') or '').splitlines()[0][:200]}")
        elif child.tag == "skipped":
            outcome = "skipped"
            skips[(child.get("message") or "").splitlines()[0][:160]] += 1
    counts[outcome] += 1
    area = "tests/cuda/sim (on the GPU)" if ".cuda.sim." in case.get("classname", "") + "." else (
        "tests/cuda" if ".cuda." in case.get("classname", "") + "." else "other tests")
    by_area[area][outcome] += 1
order = ("passed", "failed", "error", "skipped")
print("| tests | " + " | ".join(order) + " |")
print("|---|" + "---|" * len(order))
for area in ("tests/cuda/sim (on the GPU)", "tests/cuda", "other tests"):
    print(f"| {area} | " + " | ".join(str(by_area[area][o]) for o in order) + " |")
print("| **all** | " + " | ".join(f"**{counts[o]}**" for o in order) + " |")
if failures:
    print("\nFailures and errors:\n")
    print("\n".join(f"- {f}" for f in failures))
if skips:
    print("\nSkip reasons (count):\n")
    print("\n".join(f"- {n} x {reason}" for reason, n in skips.most_common()))
EOF
    else
        echo "No JUnit file: the tests did not run (see the steps above)."
    fi
    echo
    echo "## bench_cuda"
    echo
    echo '```'
    if [[ -f $LOGS/bench_cuda.log ]]; then cat "$LOGS/bench_cuda.log"; else echo "(not run)"; fi
    echo '```'
    for name in build tests; do
        if [[ -f $LOGS/$name.log ]] && ! grep -q "| $name | passed |" <(printf '%s\n' "${step_rows[@]}"); then
            echo
            echo "## $name: last lines of its log"
            echo
            echo '```'
            tail -n 60 "$LOGS/$name.log"
            echo '```'
        fi
    done
} >"$REPORT"

echo "report: $REPORT"
((failed_steps == 0))
