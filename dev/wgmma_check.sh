#!/usr/bin/env bash
# wgmma_check.sh: on the GPU machine, the wgmma path of decode_linear against its variants: the decode_linear GPU tests, the lab's layer graphs, Nsight Compute on the wgmma kernel (gate at 64 rows), and generation at batch 48 / 64 through bench_generate built with each variant's knobs (VARIANTS, default wgmma0 wgbar wgleast wgxax), last a short table.
# Usage (repo root, carry dev/carry for the Catch2 header): bash dev/wgmma_check.sh   (about 8 minutes with the build;
# PROBE=1 also runs the wgmma instruction probe, dev/cuda/wgmma_probe.cu; PROFILE=1 profiles a decode step of each)
set -uo pipefail
out="${OUT:-/tmp}"; T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
make -j16 CATCH_INC=dev/carry build/lab_wgmma_probe build/test_gpu build/bench_generate build/lab_decode_linear train_grpo \
    > "$out/wgmma_build.log" 2>&1 || { grep -E "error" "$out/wgmma_build.log" | head -20; exit 1; }
el built
variants="${VARIANTS:-wgmma0 wgbar wgleast wgxax}"
[ "${PROBE:-0}" = 1 ] && { timeout 120 ./build/lab_wgmma_probe; echo "lab_wgmma_probe rc $?"; }
timeout 200 ./build/test_gpu "[decode_linear],[gpu_generate],[gpu_model]" > "$out/wgmma_tests.log" 2>&1
echo "GPU tests rc $?"; grep -E "FAILED|failed" -A3 "$out/wgmma_tests.log" | head -20; tail -2 "$out/wgmma_tests.log"; el tests
timeout 240 ./build/lab_decode_linear > "$out/lab_decode_linear.txt" 2>&1; echo "lab_decode_linear rc $?"
grep -E "validation|FAIL" "$out/lab_decode_linear.txt" | head -5
grep -E "layer M=(48|64) graph(, wg[a-z0-9]+)? " "$out/lab_decode_linear.txt"; el lab
# Nsight Compute: the production wgmma kernel on gate (18,944 rows) at 64 rows (lab profile mode, its variant 3)
name="$out/prof_dlw_gate64"
timeout 120 ncu --clock-control none --kernel-name regex:dlw_kernel --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section SchedulerStats --section WarpStateStats \
    --section SourceCounters -f -o "$name" ./build/lab_decode_linear profile gate 3 64 > "$name.run.log" 2>&1 ||
    tail -5 "$name.run.log"
ncu -i "$name.ncu-rep" --page details > "$name.txt" 2>&1
grep -E "Duration|DRAM Throughput|Issued Warp|Active Warps Per|Registers Per|Waves Per" "$name.txt" | head -8; el ncu
# generation at 48 and 64 rows (8 x 6, 8 x 8): production against bench_generate built with each variant's knobs (as
# in the Makefile's DL_KNOBS_*), alternated twice (dev/ab_generate.sh, which leaves the builds in $out/ab_bench_NAME)
specs=()
for n in $variants; do
    specs+=("$n:$(make -s -f Makefile -f - print-knobs <<<"print-knobs: ; @echo \$(DL_KNOBS_$n)" 2>/dev/null)")
done
bash dev/ab_generate.sh 8x6,8x8 2 "${specs[@]}"; el benches
# PROFILE=1: where a decode step at batch 64 spends its kernel time, production and each variant (about 30 s each)
if [ "${PROFILE:-0}" = 1 ]; then
    for n in prod $variants; do
        b="$out/ab_bench_$n"; [ $n = prod ] && b=./build/bench_generate
        echo "== $n"; BENCH=$b timeout 100 bash dev/profile_decode_step.sh 64 2>&1 | head -8
    done
fi
el done
