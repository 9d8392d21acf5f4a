// sample.cuh: launcher that draws the next token of M sequences on the GPU from bf16 logits with HF's temperature, top-k and top-p semantics (model/sampler.cpp), a seeded counter-based random draw, and per-sequence stop handling.
#pragma once
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "model/sampler.h"

// logits [M, V] bf16: the decode step's lm_head output as HF has it (a bf16 model's logits are bf16, and HF's
// generate casts them to fp32 before the warpers, which is exact), so bf16 halves the bytes at no cost in
// fidelity. config as for sample_token (model/sampler.h), checked with sampler_check:
//   temperature 0: the argmax over ids < vocab_limit, the lowest id on ties (torch.argmax, sample_token);
//   otherwise the kept set is exactly sampler_warp's (ids >= vocab_limit removed, logits / temperature in
//   fp32, top-k keeping every tie of the k-th score, then top-p removing the ascending-order prefix, ties
//   ordered by id, whose cumulative probability is <= 1 - top_p, the highest token always kept), and one
//   token is drawn from the softmax over the kept set. The probabilities are summed as 40-bit fixed point in
//   64-bit integers, so the sums are exact and the draw is deterministic; a kept set can differ from the
//   fp32 CPU sampler's only where a cumulative probability lies within fp32 rounding of 1 - top_p.
// The uniform number of row m is a pure function of (seed, seq_offset + seq_ids[m], steps[m]) (splitmix64), so a
// sequence draws the same tokens however the sequences are batched, and a part of a larger batch (a data-parallel
// rank's share) draws what the whole batch would with seq_offset = its first sequence's index in the whole.
// seq_ids nullptr means m; steps nullptr means 0
// (pass the index of the draw within its sequence, e.g. the position the new token will take).
// Stop handling: finished [M] (device int, may be nullptr for none): a row with finished[m] != 0 draws
// nothing and gets pad_id; a row that draws one of stop_ids[0..num_stop) (device int) gets finished[m] = 1.
// tokens [M] (device int) receives the token, or -1 when every allowed logit of the row is -inf.
// V must be < 2^20. One 1024-thread block per row; nothing is allocated.
void sample_tokens(int* tokens, int* finished, const __nv_bfloat16* logits, int M, int V, const SamplerConfig& config,
                   uint64_t seed, const int* seq_ids, const int* steps, const int* stop_ids, int num_stop, int pad_id,
                   cudaStream_t stream, int seq_offset = 0);
