#!/usr/bin/env bash
# profile_decode_step.sh: every kernel of one whole decode step (7B shape) timed by Nsight Compute, summed by kernel, to see where a token step's time goes beyond the linears.
# Usage (GPU machine, repo root): [BENCH=path] [CACHE=none] bash dev/profile_decode_step.sh [M [COPY_MIN_ROWS]]
#   M: the batch (default 6); COPY_MIN_ROWS: bench_generate's fifth argument (0: NF4 base; 32: the bf16 copy at
#   M >= 32). Generates 8 tokens after a 256-token prompt and reports the last whole decode step: the kernels
#   between the last two launches of the embedding gather that starts each step. Writes the raw CSV to $OUT.
# ncu serializes the kernels, so the sum of their durations is the step's time without launch gaps: the difference
# to bench_generate's step time is what the gaps between kernels cost.
set -uo pipefail
M="${1:-6}"
copy="${2:-0}"
out="${OUT:-/tmp}"
command -v ncu >/dev/null || { echo "profile_decode_step: no ncu on this machine"; exit 1; }
# BENCH: another build of bench_generate to profile (dev/wgmma_check.sh's variants); by default this tree's, built here
bench="${BENCH:-./build/bench_generate}"
if [ -z "${BENCH:-}" ]; then
    make -j16 build/bench_generate > "$out/profile_build.log" 2>&1 || { grep error "$out/profile_build.log" | head; exit 1; }
fi
csv="$out/decode_step_M${M}.csv"
# Only the timed generation is profiled (BENCH_GENERATE_PROFILE: cudaProfilerStart/Stop, and its prefill in one
# micro-batch, about 1,200 kernels at 7B): skipping 2,000 kernels of it passes the prefill, and 1,300 more hold two
# whole decode steps of the NF4 base (370 kernels at M 6, 482 at M 64); on the bf16 copy a step has over 650, so
# set COUNT=2000. ncu takes about 13 ms a profiled kernel. (Skipping by a count from the program's start, session
# 8, missed: bench_generate's own prefill then ran one prompt at a time, 1,100 kernels a prompt, so where the decode
# steps start grew with M.)
# CACHE=none: caches kept between kernels (ncu flushes them by default), nearer to a step in a graph, where a kernel
# finds what the kernel before left in L2
BENCH_GENERATE_PROFILE=1 ncu --clock-control none --cache-control "${CACHE:-all}" --profile-from-start off \
    --launch-skip 2000 --launch-count "${COUNT:-1300}" --metrics gpu__time_duration.sum --csv --print-units base \
    "$bench" 7B 256 8 "$M" "$copy" > "$csv" 2> "$out/profile_ncu.log" ||
    { tail -20 "$out/profile_ncu.log"; echo "profile_decode_step: ncu failed"; exit 1; }
python3 - "$csv" "$M" <<'PY'
import csv, sys, collections
rows = []
with open(sys.argv[1]) as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    if r.get("Metric Name") == "gpu__time_duration.sum":
        rows.append((r["Kernel Name"], float(r["Metric Value"].replace(",", "")) / 1000.0))  # ns -> us
starts = [i for i, (name, _) in enumerate(rows) if "embedding_forward_kernel" in name]
# a whole decode step: between two gathers, with the decode attention (on the bf16 copy cuBLASLt runs the linears)
# and none of the prefill's dequantization (a prefill also starts with the gather)
steps = [rows[a:b] for a, b in zip(starts, starts[1:])
         if any("decode_attention" in n for n, _ in rows[a:b]) and not any("nf4_dequantize" in n for n, _ in rows[a:b])]
if not steps:
    names = collections.Counter(name.split("(")[0][:60] for name, _ in rows)
    print("\n".join(f"{n:6d} {name}" for name, n in names.most_common(25)))
    sys.exit(f"profile_decode_step: no whole decode step among the {len(rows)} kernels profiled "
             f"({len(starts)} embedding gathers); move --launch-skip")
step = steps[-1]
by_name = collections.OrderedDict()
for name, us in step:
    short = name.replace("void ", "").split("(")[0][:70]
    n, t = by_name.get(short, (0, 0.0))
    by_name[short] = (n + 1, t + us)
total = sum(us for _, us in step)
print(f"one decode step at M {sys.argv[2]}: {len(step)} kernels, {total / 1000:.3f} ms of kernel time (no gaps)")
print(f"{'kernel':70s} {'launches':>8s} {'us':>9s} {'share':>6s}")
for short, (n, t) in sorted(by_name.items(), key=lambda kv: -kv[1][1]):
    print(f"{short:70s} {n:8d} {t:9.1f} {100 * t / total:5.1f}%")
PY
