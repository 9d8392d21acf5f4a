#!/usr/bin/env bash
# device_check.sh: on the GPU machine, build the GPU tests and kernel labs for sm_90, run them (all, or those matching FILTER), and print a short table last.
# Usage (repo root, with dev/carry/catch2/catch.hpp carried): bash dev/device_check.sh [FILTER]
#   FILTER picks labs whose name contains it and GPU tests tagged [FILTER]; logs go to $OUT when set.
set -uo pipefail
filter="${1:-}"
out="${OUT:-/tmp}"
export NCCL_NVLS_ENABLE=0  # never NVLink multicast on these shared machines
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv,noheader
command -v make >/dev/null || { echo "device_check: no make on this machine"; exit 1; }
# with a FILTER, only the labs it names are built (each lab is one large translation unit); train_grpo always, since
# a generation test runs it
lab_targets=labs
if [ -n "$filter" ]; then
    lab_targets=$(ls dev/cuda/*"$filter"*.cu 2>/dev/null | sed 's#^dev/cuda/\(.*\)\.cu$#build/lab_\1#' | tr '\n' ' ')
fi
if ! make -j16 CATCH_INC=dev/carry train_grpo build/test_gpu $lab_targets > "$out/build.log" 2>&1; then
    grep -E "error|Error" "$out/build.log" | head -40
    echo "device_check: build failed (full log: $out/build.log)"
    exit 1
fi
status=0
tests_line="GPU tests: not run"
if [ -x build/test_gpu ]; then
    ./build/test_gpu ${filter:+"[$filter]"} > "$out/test_gpu.log" 2>&1 || status=1
    grep -E "FAILED|failed|with expansion|REQUIRE|CHECK" "$out/test_gpu.log" | head -30
    tests_line="GPU tests: $(tail -n 3 "$out/test_gpu.log" | grep -E "passed|failed|No tests" | tr -s ' ')"
fi
: > "$out/labs.log"
for lab in build/lab_*; do
    [ -x "$lab" ] || continue
    case "$lab" in *.d) continue ;; esac
    if [ -n "$filter" ] && [[ "$lab" != *"$filter"* ]]; then continue; fi
    echo "== $lab" >> "$out/labs.log"
    timeout 400 "$lab" >> "$out/labs.log" 2>&1 || { status=1; echo "  $lab exited non-zero" >> "$out/labs.log"; }
done
echo
echo "================ summary ================"
echo "$tests_line"
grep -E "^== |FAIL| ok|ms " "$out/labs.log" | cut -c1-130
exit $status
