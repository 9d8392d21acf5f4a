// grpo_loss.cuh: launcher for the GRPO loss on the GPU: per-token loss, d loss / d logp and the logged metrics, with model/grpo_loss.h's semantics.
#pragma once
#include <cstddef>

#include <cuda_runtime.h>

#include "model/grpo_loss.h"

// What grpo_loss returns, as floats the kernel writes to device memory (copy it back to log it).
struct GrpoLossGpuResult {
    float loss;
    float kl;  // 0 when beta = 0 (TRL does not log kl then)
    float clip_ratio_low_mean, clip_ratio_high_mean, clip_ratio_region_mean;
};

// Scratch bytes for a micro-batch of B completions (the per-row sums and scales).
size_t grpo_loss_scratch_bytes(int B);

// model/grpo_loss.h's grpo_loss on device arrays (row-major [B, Tc]; old_logp nullptr means logp itself,
// ref_logp may be nullptr only when beta = 0): writes *result, per_token_loss [B, Tc] (TRL's per_token_loss
// before masking; may be nullptr) and dloss_dlogp [B, Tc] (may be nullptr). One block does everything, so
// every sum has a fixed order and the result is the same run to run; the sums are doubles as on the CPU.
// Throws GrpoError on the arguments grpo_loss rejects.
void grpo_loss_cuda(GrpoLossGpuResult* result, float* per_token_loss, float* dloss_dlogp,
                    const GrpoLossConfig& config, int B, int Tc, const float* logp, const float* old_logp,
                    const float* ref_logp, const float* mask, const float* advantages, float num_items_in_batch,
                    void* scratch, cudaStream_t stream);
