# check_exports.py: loads what grpo.cu writes (a PEFT adapter from train_grpo, a merged HF directory from merge_lora) with HF PEFT and transformers, and compares their log-probs with grpo.cu's `score`.
#
# Run on the GPU machine after dev/device_check_exports.sh has prepared dev/carry/exports/ here:
#   python3 dev/ref/check_exports.py dev/carry/exports
# It expects base/ (HF dir), adapter/ (train_grpo's checkpoint), merged/ (merge_lora's output), ids.jsonl, and
# score_adapter_fp32.jsonl / score_merged_fp32.jsonl (`score --precision fp32` on the same ids). Exit 1 on a mismatch.
import json
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

TOLERANCE = 3e-5  # fp32 on both sides: only summation order differs (see test/test_score.cpp)


def logps(model, ids):
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    return torch.gather(torch.log_softmax(logits[:, :-1], -1), 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def compare(name, ours_path, theirs):
    ours = torch.tensor([json.loads(line) for line in open(ours_path)], dtype=torch.float32)
    worst = (ours - theirs.cpu()).abs().max().item()
    ok = worst <= TOLERANCE
    print(f"{name}: max |grpo.cu - HF| = {worst:.3g} (tolerance {TOLERANCE}) {'PASS' if ok else 'FAIL'}")
    return ok


def main():
    root = sys.argv[1]
    ids = torch.tensor([json.loads(line) for line in open(os.path.join(root, "ids.jsonl"))]).cuda()
    base = AutoModelForCausalLM.from_pretrained(os.path.join(root, "base"), dtype=torch.float32,
                                                attn_implementation="eager").cuda()
    peft_model = PeftModel.from_pretrained(base, os.path.join(root, "adapter")).cuda()
    ok = compare("train_grpo's adapter in HF PEFT", os.path.join(root, "score_adapter_fp32.jsonl"), logps(peft_model, ids))
    merged = AutoModelForCausalLM.from_pretrained(os.path.join(root, "merged"), dtype=torch.float32,
                                                  attn_implementation="eager").cuda()
    ok &= compare("merge_lora's directory in transformers", os.path.join(root, "score_merged_fp32.jsonl"),
                  logps(merged, ids))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
