#!/usr/bin/env bash
# bench_generate.sh: on the GPU machine, batched generation at Qwen2.5-7B shape (prompt 256, 512 new tokens, stop tokens ignored) for batches of 6, 48 and 64 sequences (prompts x completions 1 x 6, 8 x 6, 8 x 8, the peer's shapes) through grpo.cu and through HF transformers + PEFT (bf16) generate() in the same call, with a comparison table last.
# Usage (repo root; carry dev/carry, which holds bench/hf_peft_grpo_step.py): [COPY_MIN_ROWS=N] bash dev/bench_generate.sh
# (ours runs twice: on the NF4 base, then with the bf16 base copy for decode steps of >= N rows, default 32, GpuOptions::bf16_copy_min_rows)
# Budget: most of one 10-minute device call (session 3's run fit in one with its build; 280 s was too few).
set -uo pipefail
out="${OUT:-/tmp}"
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,clocks.sm,memory.used --format=csv,noheader
make -j16 build/bench_generate > "$out/bench_build.log" 2>&1 || { grep -E "error" "$out/bench_build.log" | head -20; exit 1; }
: > "$out/bench.log"
# prompts x G as the peer runs them (GRPO's shape: each prompt prefilled once for its G completions); until session
# 16 ours ran M different prompts (6,48,64), each prefilled alone
./build/bench_generate 7B 256 512 1x6,8x6,8x8 2>&1 | tee -a "$out/bench.log" | grep -E "RESULT|error|total"
# again with the bf16 base copy (12.2 GiB more) for decode steps of >= COPY_MIN_ROWS rows, at the batches that
# reach it (default 32, GpuOptions' default: 48 and 64; COPY_MIN_ROWS=0 skips this run)
copy_rows="${COPY_MIN_ROWS:-32}"
copy_batches=$(python3 -c "print(','.join(s for s, m in (('1x6', 6), ('8x6', 48), ('8x8', 64)) if m >= $copy_rows))")
if [ "$copy_rows" -gt 0 ] && [ -n "$copy_batches" ]; then
    ./build/bench_generate 7B 256 512 "$copy_batches" "$copy_rows" 2>&1 | tee -a "$out/bench.log" |
        grep -E "RESULT|error|total"
fi
# the peer's generate(): prompts x G = 1 x 6, 8 x 6, 8 x 8 (it forces min_new_tokens = 512, so lengths are fixed), in
# one process (one import of torch); it runs two whole GRPO steps per shape (the first a warm-up), most of the time
python3 dev/carry/bench/hf_peft_grpo_step.py qwen2.5-7b:{1:6,8:6,8:8}:256:512:bf16 2>&1 | tee -a "$out/bench.log" |
    grep -E '^\{"model'

python3 - "$out/bench.log" <<'PY'
import json, sys
ours, peers = {}, {}
for line in open(sys.argv[1]):
    if line.startswith("RESULT "):
        r = json.loads(line[7:]); ours[(r["M"], r.get("copy_min_rows", 0))] = r
    elif line.startswith('{"model'):
        r = json.loads(line); peers[r["prompts"] * r["G"]] = r
print("\n================ generation, Qwen2.5-7B shape, prompt 256, 512 new tokens ================")
print("(tokens/s over the whole generate, prefill included, as the peer's; the decode step and its roofline share without the prefill)")
print(f"{'batch':>5s} {'shape':>5s} {'bf16 copy':>9s} {'grpo.cu tok/s':>14s} {'prefill ms':>10s} {'decode ms':>9s} {'roofline ms':>11s} {'% roofline':>10s} {'GiB':>6s} {'peer tok/s':>11s} {'speed-up':>9s}")
for M, copy in sorted(ours):
    r, p = ours[(M, copy)], peers.get(M)
    peer = p["gen_tok_per_s"] if p else float("nan")
    print(f"{M:5d} {'%dx%d' % (r['prompts'], r['G']):>5s} {('>= %d rows' % copy) if copy else 'no':>9s} {r['tokens_per_s']:14.0f} "
          f"{1e3 * r['prefill_s']:10.1f} {r['decode_step_ms']:9.3f} {r['roofline_step_ms']:11.3f} "
          f"{100 * r['decode_share_of_roofline']:9.1f}% {r['gpu_memory_gib']:6.2f} {peer:11.1f} {r['tokens_per_s'] / peer:8.1f}x")
PY
