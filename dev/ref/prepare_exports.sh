#!/usr/bin/env bash
# prepare_exports.sh: trains a tiny adapter with train_grpo (CPU), merges it, and scores both, into dev/carry/exports/ for dev/ref/check_exports.py.
# Usage (repo root, after `make build/train_grpo_cpu score merge_lora`): bash dev/ref/prepare_exports.sh
set -euo pipefail
out=dev/carry/exports
model=test/ref/qwen2/tiny_tied/hf
rm -rf "$out" && mkdir -p "$out"
cp -r "$model" "$out/base"
./build/train_grpo_cpu --device cpu -m "$model" --task token-range:0:64 -g 8 --prompts-per-step 2 \
    --max-completion-length 16 --lora-r 8 --lora-alpha 16 --lr 1e-2 --warmup-ratio 0 --max-grad-norm 1.0 \
    --beta 0.04 --max-steps 20 --save-every 100 --base bf16 --out "$out/run" > /dev/null
cp -r "$out/run/checkpoint-20" "$out/adapter"
./merge_lora "$model" "$out/adapter" "$out/merged" > /dev/null
python3 - "$out/ids.jsonl" <<'PY'
import random, sys, json
random.seed(0)
with open(sys.argv[1], "w") as f:
    for _ in range(4):
        f.write(json.dumps([random.randrange(384) for _ in range(24)]) + "\n")
PY
./score -m "$model" --adapter "$out/adapter" --precision fp32 "$out/ids.jsonl" > "$out/score_adapter_fp32.jsonl"
./score -m "$out/merged" --precision fp32 "$out/ids.jsonl" > "$out/score_merged_fp32.jsonl"
rm -rf "$out/run"
echo "prepared $out"
