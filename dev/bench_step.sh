#!/usr/bin/env bash
# bench_step.sh: on the GPU machine, whole GRPO steps (generation + reference + policy update + AdamW) at Qwen2.5-7B shape through train_grpo and through HF transformers + PEFT (bf16) in the same call, completions forced to full length so the work is equal, with a comparison table last.
# Usage (repo root; carry dev/carry, which holds bench/hf_peft_grpo_step.py): bash dev/bench_step.sh
# Optional: MB_TOKENS=N fixes train_grpo's policy micro-batch (default: the largest that fits); GPU_MEM_GIB=X caps
# train_grpo's memory plan (--max-gpu-memory X: the micro-batch is then the largest under the cap), and a list
# (GPU_MEM_GIB=11,40) runs ours once per cap against the same peer run (a row each); SKIP_PEER=1.
# Ours: -m random:7B (random NF4 weights of the 7B shape), --task random-prompts:LEN (random ids in [100, 150000),
# as the peer's torch.randint), --ignore-stop (every completion runs to --max-completion-length, as the peer's
# min_new_tokens). The first step is a warm-up; the table shows the median of the others. Budget: ~6 minutes, and
# about 2 more for each further cap.
set -uo pipefail
out="${OUT:-/tmp}"
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,clocks.sm,memory.used,memory.total --format=csv,noheader
make -j16 train_grpo > "$out/bench_build.log" 2>&1 || { grep -E "error" "$out/bench_build.log" | head -20; exit 1; }
: > "$out/bench.log"
mb_flag=""
[ -n "${MB_TOKENS:-}" ] && mb_flag="--micro-batch-tokens $MB_TOKENS"
IFS=, read -r -a caps <<< "${GPU_MEM_GIB:-}"
[ ${#caps[@]} = 0 ] && caps=("")

# the GPU memory the whole process uses (CUDA context included), sampled every 200 ms while it runs
peak_used_mib() {  # $1: pid to watch; prints the peak of nvidia-smi's memory.used in MiB
    local peak=0 used
    while kill -0 "$1" 2>/dev/null; do
        used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
        [ "${used:-0}" -gt "$peak" ] && peak=$used
        sleep 0.2
    done
    echo "$peak"
}

# name prompts G prompt_len completion_len steps cap (GiB, or empty for none)
run_ours() {
    local name=$1 P=$2 G=$3 plen=$4 clen=$5 steps=$6 cap=$7 dir="$out/bench_step_$1${7:+_cap$7}"
    rm -rf "$dir"
    local base_mib
    base_mib=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    timeout 200 ./train_grpo -m random:7B --task "random-prompts:$plen" --ignore-stop -g "$G" --prompts-per-step "$P" \
        --max-completion-length "$clen" --max-steps "$steps" --save-every 100000 --sample-every 0 --out "$dir" \
        $mb_flag ${cap:+--max-gpu-memory $cap} > "$dir.stdout" 2>&1 &
    local pid=$!
    local peak
    peak=$(peak_used_mib $pid)
    wait $pid
    local rc=$?
    grep -E "GPU memory:|policy micro-batch|error|step [0-9]+/" "$dir.stdout" | cut -c1-220
    echo "OURS {\"name\": \"$name\", \"P\": $P, \"G\": $G, \"plen\": $plen, \"clen\": $clen, \"cap\": \"$cap\", \"rc\": $rc, \"log\": \"$dir/log.jsonl\", \"peak_used_gib\": $(python3 -c "print(round(($peak - $base_mib) / 1024, 2))")}" | tee -a "$out/bench.log"
}

for cap in "${caps[@]}"; do
    run_ours 1x6 1 6 128 200 5 "$cap"
    run_ours 8x8 8 8 256 512 3 "$cap"
done

# the peer: the same shapes, generation forced to full length (min_new_tokens), one warm-up iteration
if [ -z "${SKIP_PEER:-}" ]; then
    timeout 300 python3 dev/carry/bench/hf_peft_grpo_step.py qwen2.5-7b:1:6:128:200:bf16 qwen2.5-7b:8:8:256:512:bf16 2>&1 \
        | tee -a "$out/bench.log" | grep -E '^\{'
fi

python3 - "$out/bench.log" <<'PY'
import json, statistics, sys
ours, peers = {}, {}
for line in open(sys.argv[1]):
    if line.startswith("OURS "):
        r = json.loads(line[5:])
        try:
            log = [json.loads(l) for l in open(r["log"])]
        except OSError:
            log = []
        timed = log[1:] if len(log) > 1 else log
        r["steps"] = len(log)
        if timed:
            for key in ("step_time", "time/rollout", "time/reference", "time/train"):
                r[key] = statistics.median(x[key] for x in timed)
            r["plan_gib"] = timed[-1].get("memory/device_gib", float("nan"))
        ours[(r["P"], r["G"], r.get("cap", ""))] = r
    elif line.startswith('{"model'):
        p = json.loads(line)
        peers[(p["prompts"], p["G"])] = p
targets = {(1, 6): 20.0, (8, 8): 4.0}
print("\n================ whole GRPO step, Qwen2.5-7B shape, completions at full length ================")
print(f"{'shape':18s} {'impl':8s} {'step s':>7s} {'gen s':>7s} {'ref s':>6s} {'train s':>7s} {'compl tok/s':>11s} "
      f"{'GiB':>6s} {'speed-up':>9s} {'target':>7s} {'mem %':>6s}")
shown = set()
for key in sorted(ours, key=lambda k: (k[0], k[1], float(k[2] or "inf"))):
    r, p = ours[key], peers.get(key[:2])
    P, G, plen, clen = r["P"], r["G"], r["plen"], r["clen"]
    shape = f"{P}x{G} {plen}+{clen}" + (f" <={key[2]}G" if key[2] else "")
    if "step_time" not in r:
        print(f"{shape:18s} {'grpo.cu':8s} failed (rc {r['rc']}, {r['steps']} steps logged)")
        continue
    tokens = P * G * clen
    # memory: what the process held on the GPU at its peak, CUDA context included (the plan alone in brackets)
    mem = r["peak_used_gib"]
    speedup = p["step_s"] / r["step_time"] if p else float("nan")
    mem_share = 100 * mem / p["peak_gib"] if p else float("nan")
    print(f"{shape:18s} {'grpo.cu':8s} {r['step_time']:7.2f} {r['time/rollout']:7.2f} {r['time/reference']:6.2f} "
          f"{r['time/train']:7.2f} {tokens / r['step_time']:11.0f} {mem:6.2f} {speedup:8.2f}x {'>=' + str(targets.get(key[:2], '?')) + 'x':>7s} "
          f"{mem_share:5.0f}%   (plan {r['plan_gib']:.2f} GiB; target mem <= 50%)")
    if p and key[:2] not in shown:  # the peer's row once, under our first row of its shape
        shown.add(key[:2])
        print(f"{'':18s} {'peer':8s} {p['step_s']:7.2f} {p['gen_s']:7.2f} {p['ref_logp_s']:6.2f} {p['train_s']:7.2f} "
              f"{tokens / p['step_s']:11.0f} {p['peak_gib']:6.2f}")
PY
