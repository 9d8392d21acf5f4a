// gpu_generate.h: batched generation on the GPU: G completions of each prompt sampled through a bf16 KV cache (prefill by the training forward, then one decode step per token for every sequence at once).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "lora/lora.h"
#include "model/backend.h"
#include "model/config.h"
#include "model/gpu_model.h"
#include "model/sampler.h"

// Bytes of the generation allocation for options.max_rollouts sequences of up to options.max_sequence_length
// tokens: every layer's KV cache and one decode step's working set (activations, [rows, V] bf16 logits, the decode
// GEMMs' and attention's scratch); adds its lines to *plan. 0 when options.max_rollouts is 0.
size_t gpu_generation_plan(const Qwen2Config& cfg, const LoraConfig& lora, const GpuOptions& options,
                           GpuMemoryPlan* plan);

// Backend::generate on the GPU model (with its adapters): prompts.size() * G rollouts grouped by prompt, each the
// sampled ids up to and including the first stop id, or max_new_tokens ids. Each prompt runs through the forward
// once and its keys and values are copied to its G cache slots. Rollout n = first_rollout + p * G + g draws its
// t-th token with the uniform number splitmix64(seed, n, t) (kernels/sample.cuh), so a seed reproduces the
// rollouts, and a part of a larger batch (first_rollout = its first rollout's index there) draws its tokens. Finished
// sequences compute on a pad token and draw nothing until the unfinished ones fit in fewer 8-row tiles of the
// decode GEMMs; then they are compacted away (the draws do not change: they depend on n and t alone).
// Throws GrpoError when the request does not fit the model's GpuOptions::max_rollouts / max_sequence_length.
std::vector<Rollout> gpu_generate(GpuModel* model, const std::vector<std::vector<int32_t>>& prompts, int G,
                                  int max_new_tokens, const SamplerConfig& sampler, const std::vector<int>& stop_ids,
                                  uint64_t seed, int first_rollout = 0);
