#!/usr/bin/env bash
# bench_policy.sh: on the GPU machine, the GRPO policy update at Qwen2.5-7B shapes (48 rollouts x 328 tokens) through grpo.cu and through HF transformers + PEFT (bf16) in the same call, with a comparison table last.
# Usage (repo root; carry dev/carry, which holds bench/hf_peft_grpo_step.py and catch2/): bash dev/bench_policy.sh
set -uo pipefail
out="${OUT:-/tmp}"
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,clocks.sm,memory.used --format=csv,noheader
make -j16 build/bench_policy_step > "$out/bench_build.log" 2>&1 || { grep -E "error" "$out/bench_build.log" | head -20; exit 1; }
: > "$out/bench.log"
# grpo.cu: micro-batches of 2048 tokens (the <= 8 GiB configuration) and of the whole batch (speed first)
for mb in 2048 16384; do
    ./build/bench_policy_step 7B 48 328 128 "$mb" 2>&1 | tee -a "$out/bench.log" | grep -E "RESULT|error|total"
done
# the peer: 8 prompts x 6 completions, prompt 128 + completion 200 = the same 48 x 328 tokens
python3 dev/carry/bench/hf_peft_grpo_step.py qwen2.5-7b:8:6:128:200:bf16 2>&1 | tee -a "$out/bench.log" | grep -E '^\{'
python3 - "$out/bench.log" <<'PY'
import json, sys
ours, peer = [], None
for line in open(sys.argv[1]):
    if line.startswith("RESULT "):
        ours.append(json.loads(line[7:]))
    elif line.startswith("{") and '"train_s"' in line:
        peer = json.loads(line)
flops = ours[0]["flops"] if ours else float("nan")  # the same work, counted once by bench_policy_step
print("\n================ policy update, Qwen2.5-7B shape, 48 x 328 tokens ================")
print(f"{'implementation':38s} {'step s':>8s} {'tokens/s':>9s} {'TFLOP/s':>8s} {'% of 800':>8s} {'GPU GiB':>8s}")
for r in ours:
    print(f"{'grpo.cu NF4, micro-batch ' + str(r['micro_batch_tokens']):38s} {r['step_s']:8.3f} {r['tokens_per_s']:9.0f} "
          f"{r['effective_tflops']:8.1f} {100 * r['share_of_800']:7.1f}% {r['gpu_memory_gib']:8.2f}")
if peer:
    t = peer["train_s"]
    print(f"{'HF transformers + PEFT bf16 (peer)':38s} {t:8.3f} {48 * 328 / t:9.0f} {flops / t / 1e12:8.1f} "
          f"{flops / t / 1e12 / 8:7.1f}% {peer['peak_gib']:8.2f}")
    for r in ours:
        print(f"speed-up over the peer, micro-batch {r['micro_batch_tokens']}: {t / r['step_s']:.2f}x")
PY
