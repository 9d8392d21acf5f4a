// bench_policy_step.cu: the GRPO policy update at a Qwen2.5 shape on one GPU (random NF4 base, LoRA on all seven projections): forward + backward + AdamW over a batch of rollouts; tokens/s, effective TFLOP/s, peak memory.
//
// Build and run on the GPU machine:  make build/bench_policy_step && ./build/bench_policy_step [7B|0.5B|...] [B T P MAX_TOKENS]
// (dev/bench_policy.sh runs it next to the HF + PEFT peer and prints the comparison.)
// The work, per step: for every micro-batch of whole sequences, the forward with LoRA to the completion tokens'
// log-probs, their loss gradient, and the backward to LoRA (each layer recomputed from its checkpoint); then
// one clipped AdamW update. Effective FLOPs are the usual 6 * N * tokens (N: linear parameters, lm_head
// included; the recompute is not counted) plus causal attention's forward and backward.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "data/rng.h"
#include "data/text.h"
#include "kernels/cuda_common.cuh"
#include "lora/lora.h"
#include "model/config.h"
#include "model/gpu_model.h"
#include "model/weights.h"

int main(int argc, char** argv) {
    try {
        std::string preset = argc > 1 ? argv[1] : "7B";
        int B = argc > 2 ? atoi(argv[2]) : 48, T = argc > 3 ? atoi(argv[3]) : 328, P = argc > 4 ? atoi(argv[4]) : 128;
        GpuOptions options;
        options.max_tokens = argc > 5 ? atoi(argv[5]) : 2048;  // micro-batch: the memory/speed trade-off
        Qwen2Config cfg = qwen2_preset(preset);
        LoraConfig lc;  // r = 32, alpha = 32 on all seven projections
        LoraWeights lora = lora_create(cfg, lc);
        lora_init_peft(&lora, 7);
        Rng rng(99);

        size_t free0 = 0, total = 0;
        cudaCheck(cudaMemGetInfo(&free0, &total));
        Qwen2Weights weights = weights_random(cfg, LinearFormat::NF4, 1234);
        GpuModel* model = gpu_model_create(weights, lora, options);

        // the rollouts: B sequences of T tokens, the last T - P are the completion
        std::vector<std::vector<int32_t>> seqs(B, std::vector<int32_t>(T));
        for (auto& s : seqs)
            for (int32_t& id : s) id = (int32_t)rng.next_below(151000);
        std::vector<GpuBatch> micro;
        for (int b = 0; b < B; b++) {
            if (micro.empty() || micro.back().num_tokens() + T > options.max_tokens) micro.emplace_back();
            micro.back().add_sequence(seqs[b], P - 1, T - 1);
        }
        std::vector<float> advantages(B);
        for (float& a : advantages) a = rng.next_float() * 2 - 1;
        const float completion_tokens = (float)B * (T - P);

        AdamWConfig adamw;
        adamw.beta2 = 0.99;
        adamw.weight_decay = 0.1;
        auto step = [&](int64_t t) {
            std::vector<float> logp, dlogp;
            int seq0 = 0;
            for (const GpuBatch& mb : micro) {
                gpu_model_forward(model, mb, true, 1.0f, &logp);
                // the policy-gradient term of the GRPO loss at ratio 1 (bnpo): d/dlogp = -A / tokens
                dlogp.resize(logp.size());
                int rows_per_seq = T - P;
                for (size_t j = 0; j < logp.size(); j++) dlogp[j] = -advantages[seq0 + j / rows_per_seq] / completion_tokens;
                gpu_model_backward(model, dlogp);
                seq0 += mb.num_sequences();
            }
            return gpu_model_optimizer_step(model, 5e-6, 0.1, adamw, t);
        };
        step(1);  // warm-up: cuBLASLt heuristics, first touches
        cudaCheck(cudaDeviceSynchronize());
        const int steps = 3;
        auto t0 = std::chrono::steady_clock::now();
        float norm = 0;
        for (int i = 0; i < steps; i++) norm = step(2 + i);
        cudaCheck(cudaDeviceSynchronize());
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
        size_t free1 = 0;
        cudaCheck(cudaMemGetInfo(&free1, &total));

        const double linear_params = linear_parameter_count(cfg);
        double tokens = (double)B * T;
        double attention_fwd = 4.0 * B * cfg.NH * (double)T * T * cfg.HD / 2;  // causal: half the T x T scores
        double flops = 6.0 * linear_params * tokens + 3.5 * attention_fwd;    // backward = 2.5 forwards
        double tflops = flops / seconds / 1e12;
        printf("RESULT {\"impl\": \"grpo.cu\", \"model\": \"%s\", \"B\": %d, \"T\": %d, \"micro_batch_tokens\": %d, "
               "\"micro_batches\": %zu, \"step_s\": %.4f, \"tokens_per_s\": %.0f, \"effective_tflops\": %.1f, "
               "\"share_of_800\": %.3f, \"gpu_memory_gib\": %.2f, \"plan_gib\": %.2f, \"grad_norm\": %.4g, \"flops\": %.6e}\n",
               preset.c_str(), B, T, options.max_tokens, micro.size(), seconds, tokens / seconds, tflops,
               tflops / 800.0, (free0 - free1) / 1073741824.0, gpu_model_memory_plan(model).total() / 1073741824.0,
               norm, flops);
        gpu_model_destroy(model);
        return 0;
    } catch (const GrpoError& e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
