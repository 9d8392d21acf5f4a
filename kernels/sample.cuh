// sample.cuh: launchers that draw the next token of M sequences on the GPU from bf16 logits with HF's temperature, top-k and top-p semantics (model/sampler.cpp), a seeded counter-based random draw, and per-sequence stop handling.
#pragma once
#include <cstddef>
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
// tokens [M] (device int) receives the token, or -1 when every allowed logit of the row is -inf (sampling, also
// when one is +inf: exp(inf - inf) leaves the row no mass). A NaN logit is never drawn nor taken as the max.
// V must be < 2^20. Nothing is allocated.
//
// How the rows are drawn: greedy, top-k or top-p, no workspace, or more than 65535 rows: one 1024-thread block per
// row (sample_kernel). Otherwise (temperature > 0, no top-k, no top-p: the training default) the split path: each
// row cut into chunks of 2048 ids, a block each, in two launches (the chunks' max scores; then their masses, the
// row's last block drawing). It draws exactly the tokens the one-block kernel would: the max and the fixed-point
// masses do not depend on how the row is cut.
// workspace: device memory of at least sample_tokens_workspace_bytes(M, V) bytes, 8-byte aligned, or nullptr
// (then never the split path). It needs no initialization and holds nothing between calls; one stream at a time
// may use it. A workspace too small for the split path is a GrpoError, not a silent fallback.
size_t sample_tokens_workspace_bytes(int M, int V);
void sample_tokens(int* tokens, int* finished, const __nv_bfloat16* logits, int M, int V, const SamplerConfig& config,
                   uint64_t seed, const int* seq_ids, const int* steps, const int* stop_ids, int num_stop, int pad_id,
                   void* workspace, size_t workspace_bytes, cudaStream_t stream, int seq_offset = 0);

// Whether the split path can draw this configuration's rows (temperature > 0, no top-k that cuts the row, no top-p):
// sample_tokens' rule, for the lab and the tests.
bool sample_split_path_draws(const SamplerConfig& config, int V);

// The same with the path chosen, for the lab and the tests: version 1 the one-block kernel (any configuration; the
// workspace is not used), version 2 the split path (GrpoError when the configuration is greedy or has top-k or
// top-p, or the workspace is missing or too small), version 0 sample_tokens' own choice.
void sample_tokens_version(int version, int* tokens, int* finished, const __nv_bfloat16* logits, int M, int V,
                           const SamplerConfig& config, uint64_t seed, const int* seq_ids, const int* steps,
                           const int* stop_ids, int num_stop, int pad_id, void* workspace, size_t workspace_bytes,
                           cudaStream_t stream, int seq_offset = 0);
