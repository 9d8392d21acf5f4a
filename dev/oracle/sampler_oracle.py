# sampler_oracle.py: an independent stdlib re-implementation of HF generate's TemperatureLogitsWarper, TopKLogitsWarper and TopPLogitsWarper, writing random logits rows and the token sets HF keeps, for test/test_sampler.cpp.
#
# Usage: python3 dev/oracle/sampler_oracle.py OUT.jsonl [NUM_CASES] [SEED]
# Each line: {"V", "logits": [fp32 values], "temperature", "top_k", "top_p", "vocab_limit",
#             "kept": [ids HF keeps, increasing], "margin": float, "boundary": bool}
# The warpers, as transformers/generation/logits_process.py writes them (fp32 tensors, Python float scalars):
#   temperature: scores / temperature (torch casts the scalar to fp32; fp32 division)
#   top-k:       scores < topk(scores, min(k, V))[-1] are removed (ties at the k-th score survive)
#   top-p:       sort ascending, softmax, cumsum; remove cumsum <= 1 - top_p, except the last (highest)
# Our sampler also removes ids >= vocab_limit first, as if the row ended there.
# Temperature and top-k are reproduced exactly: fp32 division is emulated by rounding the double quotient
# to fp32 (exact for one +-*/ step), and top-k only compares. Top-p's softmax and cumsum run in double here
# and in fp32 there, so a row whose cumulative sum passes within `margin` of 1 - top_p may legitimately
# differ; "boundary" marks rows with margin < 1e-4, which the test does not compare.
import json
import math
import random
import struct
import sys

BOUNDARY_MARGIN = 1e-4


def f32(x):
    """x rounded to the nearest fp32 value (as a Python float)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def warp(logits, temperature, top_k, top_p, vocab_limit):
    """Returns (kept ids, margin): HF's warpers on one fp32 row."""
    n = vocab_limit if vocab_limit > 0 else len(logits)
    scores = {}
    for v in range(n):
        scores[v] = logits[v] if temperature == 1.0 else f32(logits[v] / f32(temperature))
    if 0 < top_k < n:
        kth = sorted(scores.values(), reverse=True)[top_k - 1]
        scores = {v: s for v, s in scores.items() if not s < kth}
    margin = math.inf
    if top_p < 1.0:
        order = sorted(scores, key=lambda v: (scores[v], v))  # ascending; ties by id, as a stable sort
        top = scores[order[-1]]
        weights = [math.exp(scores[v] - top) for v in order]
        total = math.fsum(weights)
        threshold = f32(1.0 - top_p)
        cumulative = 0.0
        removed = set()
        for j, v in enumerate(order[:-1]):
            cumulative += weights[j] / total
            margin = min(margin, abs(cumulative - threshold))
            if cumulative <= threshold:
                removed.add(v)
        scores = {v: s for v, s in scores.items() if v not in removed}
    return sorted(scores), margin


def random_case(rng):
    V = rng.choice([1, 2, 3, 5, 8, 16, 64, 257])
    scale = rng.choice([0.5, 2.0, 6.0])
    tied = rng.random() < 0.35
    logits = []
    for _ in range(V):
        x = rng.gauss(0.0, scale)
        if tied:
            x = round(x * 2.0) / 2.0  # multiples of 0.5: many exact ties, all exact in fp32
        logits.append(f32(x))
    temperature = rng.choice([1.0, 1.0, 0.7, 0.3, 1.5, 0.9])
    top_k = rng.choice([0, 0, 1, 2, 3, 10, V, V + 7])
    top_p = rng.choice([1.0, 1.0, 0.95, 0.9, 0.8, 0.5, 0.2, 1e-6, 0.0])
    vocab_limit = rng.choice([0, 0, 0, V, max(1, V - 1), max(1, V // 2)])
    if rng.random() < 0.3 and vocab_limit > 0 and vocab_limit < V:
        logits[V - 1] = f32(max(logits) + 5.0)  # the largest logit sits in the forbidden tail
    return V, logits, temperature, top_k, top_p, vocab_limit


def main():
    if len(sys.argv) not in (2, 3, 4):
        sys.exit("usage: python3 dev/oracle/sampler_oracle.py OUT.jsonl [NUM_CASES] [SEED]")
    out_path = sys.argv[1]
    num_cases = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 20251129)
    with open(out_path, "w") as f:
        for _ in range(num_cases):
            V, logits, temperature, top_k, top_p, vocab_limit = random_case(rng)
            kept, margin = warp(logits, temperature, top_k, top_p, vocab_limit)
            record = {"V": V, "logits": logits, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                      "vocab_limit": vocab_limit, "kept": kept,
                      "margin": margin if math.isfinite(margin) else 1.0,
                      "boundary": margin < BOUNDARY_MARGIN}
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
