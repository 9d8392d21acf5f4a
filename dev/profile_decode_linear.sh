#!/usr/bin/env bash
# profile_decode_linear.sh: Nsight Compute on one launch of the streaming NF4 decode kernel (lab profile mode), with its per-instruction SASS counters, to see where its cycles go.
# Usage (GPU machine, repo root, after make build/lab_decode_linear): bash dev/profile_decode_linear.sh [LINEAR [VARIANT [M]]]
#   LINEAR: k, gate, down, q or o (default gate); VARIANT: an index of lab_decode_linear's profile table (default 3, the
#   production kernel on tiled codes); M: rows of x (default 6). Writes NAME.ncu-rep, NAME.txt (details) and
#   NAME_sass.csv to $OUT (or /tmp).
# --clock-control none: the GPU at its own clocks, as the benchmarks run it (ncu would otherwise lock base clocks).
set -uo pipefail
linear="${1:-gate}"
variant="${2:-3}"
M="${3:-6}"
out="${OUT:-/tmp}"
name="$out/profile_${linear}_${variant}_M${M}"
command -v ncu >/dev/null || { echo "profile_decode_linear: no ncu on this machine"; exit 1; }
[ -x build/lab_decode_linear ] || { echo "profile_decode_linear: build/lab_decode_linear is not built (make build/lab_decode_linear)"; exit 1; }
# launch 3 of the kernel: past the bit-for-bit check and the cold call, a warm one
ncu --clock-control none --kernel-name regex:stream --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section SchedulerStats \
    --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis --section SourceCounters \
    --metrics smsp__inst_executed.sum,smsp__sass_inst_executed_op_shared_ld.sum,smsp__sass_inst_executed_op_global_ld.sum,dram__bytes_read.sum,lts__t_bytes.sum,l1tex__t_bytes.sum \
    -f -o "$name" ./build/lab_decode_linear profile "$linear" "$variant" "$M" > "$name.run.log" 2>&1 ||
    { tail -20 "$name.run.log"; echo "profile_decode_linear: ncu failed"; exit 1; }
ncu -i "$name.ncu-rep" --page details > "$name.txt" 2>&1
ncu -i "$name.ncu-rep" --page source --csv --print-source sass > "${name}_sass.csv" 2>&1
echo "== $linear variant $variant M $M"
grep -E "Duration|DRAM Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|L1/TEX Hit Rate|L2 Hit Rate|Mem Busy|Max Bandwidth|Issued Warp|No Eligible|Active Warps Per|Registers Per|smsp__inst_executed.sum|op_shared_ld|op_global_ld|dram__bytes_read|lts__t_bytes|l1tex__t_bytes" "$name.txt" | head -40
