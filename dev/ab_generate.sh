#!/usr/bin/env bash
# ab_generate.sh: on the GPU machine, generation with production's decode_linear against variants of it (other DL_CFG_* knobs, or another decode_linear.cu), alternated round by round, so that each difference is measured in one call on one machine.
# Usage (repo root): bash dev/ab_generate.sh SHAPES ROUNDS VARIANT...
#   SHAPES: bench_generate's batches (e.g. 8x8 or 8x6,6x6); ROUNDS: how many times each build runs them, alternated
#   VARIANT: NAME:KNOBS (kernels/decode_linear.cu built with those -D flags) or NAME@FILE (that decode_linear.cu, e.g.
#   a copy of main's; keep it outside kernels/, which the Makefile compiles whole), each linked into bench_generate
#   with this tree's other objects.
#   e.g. bash dev/ab_generate.sh 8x6,6x6 2 "from49:-DDL_CFG_WGMMA_MIN_M=48"   (session 16, call 5's comparison,
#   which ran as a script outside the repository; this one was written after it and has not run on the GPU yet)
# Prints one line a build and batch: the decode step alone (decode_step_ms) and tokens/s with the prefill.
set -uo pipefail
[ $# -ge 3 ] || { sed -n 3,10p "$0"; exit 2; }
shapes="$1"; rounds="$2"; shift 2
out="${OUT:-/tmp}"; T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
make -j16 build/bench_generate > "$out/ab_build.log" 2>&1 || { grep -E "error" "$out/ab_build.log" | head -20; exit 1; }
# the GPU objects bench_generate links, but decode_linear's, from the Makefile (build/model/ also holds the CPU tools'
# objects, each with a main, once they are built)
objs=$(make -s -f Makefile -f - gpu-objs <<<'gpu-objs: ; @echo $(filter-out $(BUILD)/kernels/decode_linear.o,$(KERNEL_OBJS))')
names=()
for spec in "$@"; do
    if [[ "$spec" == *@* ]]; then name="${spec%%@*}"; src="${spec#*@}"; knobs=""
    else name="${spec%%:*}"; src=kernels/decode_linear.cu; knobs="${spec#*:}"; fi
    names+=("$name")
    # decode_linear.cu as the Makefile builds it for sm_90a (the wgmma path), then bench_generate around it
    ( nvcc -O2 -std=c++17 -gencode arch=compute_90a,code=sm_90a -DDL_SM90A=1 $knobs -I. -c "$src" -o "$out/ab_dl_$name.o" &&
      nvcc -O2 -std=c++17 -arch=sm_90 -I. dev/bench_generate.cu $objs "$out/ab_dl_$name.o" build/libgrpo.a \
          -o "$out/ab_bench_$name" -lcublasLt ) > "$out/ab_build_$name.log" 2>&1 &
done
wait
el built
row() {  # name, binary
    timeout 120 "$2" 7B 256 512 "$shapes" 2>&1 | grep -E "RESULT|error" | python3 -c '
import json, sys
for line in sys.stdin:
    if not line.startswith("RESULT "):
        print(f"{sys.argv[1]:>12s} {line.strip()}")
        continue
    r = json.loads(line[7:])
    n, g, ms, tps = r["prompts"], r["G"], r["decode_step_ms"], r["tokens_per_s"]
    print(f"{sys.argv[1]:>12s} {n:3d}x{g:<2d} decode_step_ms={ms:.3f} tokens_per_s={tps:.0f}")
' "$1"
}
for ((round = 1; round <= rounds; round++)); do
    row prod ./build/bench_generate
    for name in "${names[@]}"; do
        if [ -x "$out/ab_bench_$name" ]; then row "$name" "$out/ab_bench_$name"
        else echo "$name: not built"; tail -5 "$out/ab_build_$name.log"; fi
    done
    el "round $round"
done
