#!/usr/bin/env bash
# bench_multi_gpu.sh: data-parallel GRPO on N GPUs against one (issue 7): step throughput and scaling efficiency, and the loss curve of one global batch on N GPUs against one GPU.
# Usage (repo root, on a machine with N GPUs, after make train_grpo): bash dev/bench_multi_gpu.sh [N]
#   Three runs of STEPS steps, each at Qwen2.5-7B shape with random NF4 weights (MODEL), random prompts of
#   PROMPT_LEN ids and completions forced to COMPLETION_LEN tokens (so every step does the same work):
#     one:    1 GPU,  PROMPTS prompts x G a step
#     dp:     N GPUs, N * PROMPTS prompts a step (PROMPTS a rank), launched by hand with --world-size/--rank
#     global: 1 GPU,  N * PROMPTS prompts a step, the same seed as dp
#   Scaling efficiency = throughput on N GPUs / (N x throughput on one) = (median step of one) / (median step of
#   dp), the first step (warm-up) left out. The loss curve: dp against global, step by step.
#   DEVICE=cpu MODEL= PROMPT_LEN=8 COMPLETION_LEN=8 G=4 PROMPTS=1 bash dev/bench_multi_gpu.sh 2  tries the script
#   itself on the CPU backend with the embedded tiny model.
set -uo pipefail
N="${1:-2}"
out="${OUT:-/tmp}/multi_gpu"
device="${DEVICE:-cuda}"
model="${MODEL-random:7B}"
steps="${STEPS:-4}"
G="${G:-8}"
prompts="${PROMPTS:-8}"
export NCCL_NVLS_ENABLE=0  # never NVLink multicast on these shared machines
rm -rf "$out"
mkdir -p "$out"
[ "$device" = cuda ] && nvidia-smi --query-gpu=index,name,memory.used --format=csv,noheader
common=(--device "$device" --task "random-prompts:${PROMPT_LEN:-256}" --ignore-stop -g "$G"
        --max-completion-length "${COMPLETION_LEN:-512}" --max-steps "$steps" --save-every 1000 --sample-every 0
        --seed 11)
[ -n "$model" ] && common+=(-m "$model")

./train_grpo "${common[@]}" --prompts-per-step "$prompts" --out "$out/one" > "$out/one.log" 2>&1 \
    || { tail -5 "$out/one.log"; echo "bench_multi_gpu: the one-GPU run failed ($out/one.log)"; exit 1; }
pids=()
for ((r = N - 1; r >= 1; r--)); do
    ./train_grpo "${common[@]}" --prompts-per-step $((N * prompts)) --world-size "$N" --rank "$r" \
        --out "$out/dp" > "$out/dp_rank$r.log" 2>&1 &
    pids+=($!)
done
./train_grpo "${common[@]}" --prompts-per-step $((N * prompts)) --world-size "$N" --rank 0 --out "$out/dp" \
    > "$out/dp_rank0.log" 2>&1
status=$?
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ $status = 0 ] || { tail -5 "$out"/dp_rank*.log; echo "bench_multi_gpu: the $N-GPU run failed"; exit 1; }
./train_grpo "${common[@]}" --prompts-per-step $((N * prompts)) --out "$out/global" > "$out/global.log" 2>&1 \
    || { tail -5 "$out/global.log"; echo "bench_multi_gpu: the one-GPU run of the global batch failed"; exit 1; }

python3 - "$out" "$N" <<'PY'
import json, statistics, sys
out, N = sys.argv[1], int(sys.argv[2])
def log(name):
    return [json.loads(line) for line in open(f"{out}/{name}/log.jsonl")]
one, dp, glob = log("one"), log("dp"), log("global")
def median_step(records):
    times = [r["step_time"] for r in records[1:]] or [records[0]["step_time"]]
    return statistics.median(times)
t1, tn, tg = median_step(one), median_step(dp), median_step(glob)
print(f"\n================ data parallel, {N} GPUs ================")
print(f"median step: 1 GPU {t1:.3f} s ({len(one)} steps); {N} GPUs, {N}x the prompts {tn:.3f} s; "
      f"1 GPU with the {N}x batch {tg:.3f} s")
print(f"scaling efficiency (weak: {N}x the work in {tn / t1:.3f}x the time): {100 * t1 / tn:.1f}% (target >= 90%)")
print(f"speed-up on the same global batch: {tg / tn:.2f}x of an ideal {N}x")
keys = ["loss", "reward", "grad_norm", "kl", "completions/mean_length"]
print(f"\nloss curve, {N} GPUs against 1 GPU on the same global batch and seed:")
print(f"{'step':>4s} " + " ".join(f"{k:>24s}" for k in keys))
worst = {k: 0.0 for k in keys}
for a, b in zip(dp, glob):
    cells = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            cells.append(f"{'-':>24s}")
            continue
        rel = abs(x - y) / max(abs(y), 1e-12)
        worst[k] = max(worst[k], rel)
        cells.append(f"{x:11.4g} {y:11.4g}")
    print(f"{a['step']:4d} " + " ".join(cells))
print("largest relative difference: " + ", ".join(f"{k} {worst[k]:.2e}" for k in keys))
PY
