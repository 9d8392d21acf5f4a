#!/usr/bin/env bash
# check_gpu_train.sh: on the GPU machine, train_grpo's run-level behaviour on the CUDA backend with the tiny test model and a random 7B: NaN steps skipped with the optimizer untouched, gradient accumulation with --merge, the memory plan and its refusal, and two identical runs giving identical logs.
# Usage (repo root, with tokenizer/qwen2.5 carried): bash dev/check_gpu_train.sh (builds train_grpo and eval_gsm8k;
# prints one line per check, PASS or FAIL). A verdict reads the status of its check before any $(...) in its
# message runs, since a command substitution sets $? itself.
set -uo pipefail
out="${OUT:-/tmp}/train_checks"
rm -rf "$out"; mkdir -p "$out"
A="-m test/ref/qwen2/tiny_tied/hf --task token-range:0:64 -g 8 --max-completion-length 16 --lora-r 8"
verdict() { if [ "$2" = 0 ]; then echo "PASS $1"; else echo "FAIL $1"; fi; }
make -j16 train_grpo eval_gsm8k > "$out/build.log" 2>&1 || { grep -E "error" "$out/build.log" | head; echo "FAIL build"; exit 1; }

# 1. non-finite gradient norms on steps 3, 5, 6, 7: skipped, and the third in a row stops the run (exit 3)
./train_grpo --device cuda $A --prompts-per-step 2 --lr 1e-2 --warmup-ratio 0 --max-grad-norm 1 --beta 0.04 \
    --max-steps 8 --save-every 1 --out "$out/nan" --debug-nan-grad 3,5,6,7 > "$out/nan.log" 2>&1
rc=$?
[ $rc = 3 ] && [ "$(grep -c SKIPPED "$out/nan.log")" = 4 ]; verdict "NaN policy: 4 steps skipped, exit 3 (rc $rc)" $?
same=0; for f in adapter_model.safetensors optimizer.safetensors; do
    cmp -s "$out/nan/checkpoint-2/$f" "$out/nan/checkpoint-3/$f" || same=1
    cmp -s "$out/nan/checkpoint-3/$f" "$out/nan/checkpoint-4/$f" && same=1
done
verdict "NaN policy: skipped step 3 left adapters and AdamW state bit-identical, step 4 changed them" $same

# 2. gradient accumulation and the merged export
./train_grpo --device cuda $A --grad-accum 2 --max-steps 3 --out "$out/ga" --merge "$out/ga_merged" > "$out/ga.log" 2>&1
[ $? = 0 ] && [ -f "$out/ga_merged/model.safetensors" ]; verdict "--grad-accum 2 --merge" $?

# 3. the memory plan: printed, and a cap too small for the run refused at plan time with a suggestion
./train_grpo --device cuda -m random:7B --task random-prompts:128 --ignore-stop -g 6 --max-steps 1 \
    --max-completion-length 16 --out "$out/mp" > "$out/mp.log" 2>&1
[ $? = 0 ] && grep -q "GPU memory" "$out/mp.log"; verdict "memory plan printed for a random 7B run" $?
./train_grpo --device cuda -m random:7B --task random-prompts:128 -g 6 --max-steps 1 --max-gpu-memory 2 \
    --out "$out/mp2" > "$out/mp2.log" 2>&1
[ $? != 0 ] && grep -q "error" "$out/mp2.log"; ok=$?
verdict "memory cap of 2 GiB refused: $(grep -m1 error "$out/mp2.log" | cut -c1-150)" $ok

# 4. determinism: the same run twice gives the same log, and a run resumed from checkpoint-2 repeats steps 3 and 4
#    of the uninterrupted one: every logged number except timings, and the checkpoint-4 files, bit for bit
metrics() {  # the log without its timing, throughput and memory fields, one "step key value" per line
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    for k, v in sorted(r.items()):
        if not k.startswith(("time", "step_time", "tokens_per_s", "memory")):
            print(r["step"], k, repr(v))' "$1"
}
B="$A --prompts-per-step 2 --lr 1e-2 --warmup-ratio 0 --max-grad-norm 1 --beta 0.04 --max-steps 4 --save-every 2"
for r in a b; do ./train_grpo --device cuda $B --out "$out/det_$r" > /dev/null 2>&1; metrics "$out/det_$r/log.jsonl" > "$out/det_$r.txt"; done
cmp -s "$out/det_a.txt" "$out/det_b.txt"; verdict "two identical GPU runs log identical metrics" $?
./train_grpo --device cuda $B --out "$out/det_r" --resume "$out/det_a/checkpoint-2" > "$out/resume.log" 2>&1
metrics "$out/det_r/log.jsonl" > "$out/det_r.txt"
grep -E "^[34] " "$out/det_a.txt" > "$out/det_a34.txt"
cmp -s "$out/det_a34.txt" "$out/det_r.txt"; verdict "resumed GPU run repeats steps 3-4 exactly" $?
diff "$out/det_a34.txt" "$out/det_r.txt" | head -12
same=0; for f in adapter_model.safetensors optimizer.safetensors; do
    cmp -s "$out/det_a/checkpoint-4/$f" "$out/det_r/checkpoint-4/$f" || same=1
done
verdict "resumed GPU run's checkpoint-4 is bit-identical" $same
# a run on small micro-batches, resumed without --micro-batch-tokens: the checkpoint's plan is taken again, so the
# resumed steps repeat the original's (a plan chosen again from the free memory would hold the whole step)
./train_grpo --device cuda $B --micro-batch-tokens 48 --out "$out/mb_a" > /dev/null 2>&1
./train_grpo --device cuda $B --out "$out/mb_r" --resume "$out/mb_a/checkpoint-2" > "$out/mb_resume.log" 2>&1
metrics "$out/mb_a/log.jsonl" | grep -E "^[34] " > "$out/mb_a34.txt"; metrics "$out/mb_r/log.jsonl" > "$out/mb_r.txt"
grep -q "micro-batch of 48 tokens" "$out/mb_resume.log" && grep -q '"gpu_micro_batch_tokens": 48' \
    "$out/mb_a/checkpoint-2/trainer_state.json" && cmp -s "$out/mb_a34.txt" "$out/mb_r.txt"
verdict "a resumed GPU run takes the checkpoint's memory plan (micro-batch 48) and repeats steps 3-4" $?

# 5. the embedded tiny default (no -m) runs the GSM8K pipeline on the GPU, and eval_gsm8k decodes on the GPU
./train_grpo --device cuda --max-steps 2 --max-completion-length 32 --out "$out/default" > "$out/default.log" 2>&1
[ $? = 0 ] && [ "$(wc -l < "$out/default/log.jsonl")" = 2 ]; verdict "train_grpo with the embedded tiny model (no -m), 2 GSM8K steps" $?
./eval_gsm8k --device cuda --limit 16 --batch 8 --max-new-tokens 32 --out "$out/eval.jsonl" > "$out/eval.log" 2>&1
[ $? = 0 ] && [ "$(wc -l < "$out/eval.jsonl" 2>/dev/null)" = 16 ]; ok=$?
verdict "eval_gsm8k --device cuda: 16 questions, one record each ($(tail -1 "$out/eval.log" | cut -c1-100))" $ok

# 6. data parallelism at world size 1 (issue 7): --world-size 1 --rank 0 logs what a run without them logs, and
#    writes the same adapter
./train_grpo --device cuda $B --world-size 1 --rank 0 --out "$out/w1" > "$out/w1.log" 2>&1
metrics "$out/w1/log.jsonl" > "$out/w1.txt"
cmp -s "$out/det_a.txt" "$out/w1.txt" && cmp -s "$out/det_a/checkpoint-4/adapter_model.safetensors" \
    "$out/w1/checkpoint-4/adapter_model.safetensors"
verdict "--world-size 1 equals a run without it (metrics and adapter)" $?
