// bench_generate.cu: batched generation at a Qwen2.5 shape on one GPU (random NF4 base, LoRA r=32 on all seven projections): tokens/s, time per decode step against the memory roofline, memory.
//
// Build and run on the GPU machine:
//   make build/bench_generate && ./build/bench_generate [7B] [PROMPT_LEN] [NEW_TOKENS] [BATCH,BATCH,...] [COPY_MIN_ROWS]
// A batch is M (M different prompts, one completion each) or NxG (N prompts, G completions each: GRPO's shape, and the
// peer's in dev/bench_generate.sh, whose prompts are prefilled once each). (dev/bench_generate.sh runs it next to the
// HF + PEFT peer's generate.) COPY_MIN_ROWS > 0 holds the bf16 base
// copy (GpuOptions::bf16_base_copy) and runs decode steps of at least that many rows on it; the roofline stays the
// NF4 one (the bytes a step must read with the NF4 base), so the share shows what the copy buys against it. Stop tokens are ignored, so every
// sequence runs to NEW_TOKENS and the work is the same for every implementation. A decode step must read every
// weight once and every sequence's KV cache, so the roofline of a step is max(bytes / 4.27 TB/s, FLOPs / 800
// TFLOP/s). step_ms includes the prefill, amortized over the new tokens, and share_of_roofline is against it; prefill_s
// is a run of the same batch that stops after the first token, decode_step_ms = (seconds - prefill_s) / (NEW_TOKENS - 1)
// the decode steps alone, and decode_share_of_roofline the roofline's share of that (the issue's time per decode step
// against the roofline).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include "data/rng.h"
#include "data/text.h"
#include "kernels/cuda_common.cuh"
#include "lora/lora.h"
#include "model/gpu_generate.h"
#include "model/gpu_model.h"
#include "model/weights.h"

int main(int argc, char** argv) {
    try {
        std::string preset = argc > 1 ? argv[1] : "7B";
        int P = argc > 2 ? atoi(argv[2]) : 256, new_tokens = argc > 3 ? atoi(argv[3]) : 512;
        struct Batch {
            int prompts, G;
        };
        std::vector<Batch> batches;
        std::stringstream list(argc > 4 ? argv[4] : "6,48,64");
        for (std::string item; std::getline(list, item, ',');) {
            const size_t x = item.find('x');
            Batch b = {atoi(item.substr(0, x).c_str()), x == std::string::npos ? 1 : atoi(item.substr(x + 1).c_str())};
            if (b.prompts < 1 || b.G < 1) {
                fprintf(stderr, "error: bench_generate: a batch is M or NxG with M, N, G >= 1, got '%s'\n", item.c_str());
                return 1;
            }
            batches.push_back(b);
        }
        int max_M = 0, max_prompts = 0;
        for (const Batch& b : batches) max_M = std::max(max_M, b.prompts * b.G), max_prompts = std::max(max_prompts, b.prompts);
        const int copy_min_rows = argc > 5 ? atoi(argv[5]) : 0;

        Qwen2Config cfg = qwen2_preset(preset);
        LoraConfig lc;  // r = 32, alpha = 32 on all seven projections
        LoraWeights lora = lora_create(cfg, lc);
        lora_init_peft(&lora, 7);
        Qwen2Weights weights = weights_random(cfg, LinearFormat::NF4, 1234);
        GpuOptions options;
        // BENCH_GENERATE_PROFILE=1 (dev/profile_decode_step.sh): Nsight Compute sees only the timed generation
        // (cudaProfilerStart/Stop), whose prefill is one micro-batch, so that its decode steps come after a fixed count
        // of kernels whatever M
        const bool profile = getenv("BENCH_GENERATE_PROFILE") != nullptr;
        // The prefill takes every prompt of a batch in one micro-batch, as train_grpo's does (its micro-batch, planned
        // from the free memory, holds thousands of tokens). Until session 16 it took one prompt at a time: 64 prompts
        // of 256 tokens took 1.04 s, 2.03 ms of each of 512 steps (each prompt dequantizes every NF4 linear again).
        options.max_tokens = P * max_prompts;
        options.max_rollouts = max_M;
        options.max_sequence_length = P + new_tokens;
        options.bf16_base_copy = copy_min_rows > 0;
        options.bf16_copy_min_rows = std::max(1, copy_min_rows);
        size_t free0 = 0, total = 0;
        cudaCheck(cudaMemGetInfo(&free0, &total));
        GpuModel* model = gpu_model_create(weights, lora, options);
        size_t free1 = 0;
        cudaCheck(cudaMemGetInfo(&free1, &total));

        // what one decode step must read: the weights once, and on average half of the final KV cache per sequence
        double weight_bytes = (double)weights.plan.total_bytes - (double)cfg.V * cfg.C * 2;  // embedding rows: one each
        const double linear_params = linear_parameter_count(cfg);
        Rng rng(42);
        SamplerConfig sampler;  // temperature 1, top-p 1, top-k off: the peer's settings
        sampler.vocab_limit = cfg.V - 64;
        for (const Batch& batch : batches) {
            const int M = batch.prompts * batch.G, G = batch.G;
            std::vector<std::vector<int32_t>> prompts(batch.prompts, std::vector<int32_t>(P));
            for (auto& p : prompts)
                for (int32_t& id : p) id = (int32_t)rng.next_below(150000);
            gpu_generate(model, prompts, G, 8, sampler, {}, 1);  // warm-up: first touches, cuBLASLt heuristics
            cudaCheck(cudaDeviceSynchronize());
            auto timed = [&](int tokens, std::vector<Rollout>* out) {
                auto t0 = std::chrono::steady_clock::now();
                std::vector<Rollout> rollouts = gpu_generate(model, prompts, G, tokens, sampler, {}, 2);
                cudaCheck(cudaDeviceSynchronize());
                if (out) *out = std::move(rollouts);
                return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            };
            const double prefill_seconds = profile ? 0.0 : timed(1, nullptr);
            if (profile) cudaCheck(cudaProfilerStart());
            std::vector<Rollout> out;
            const double seconds = timed(new_tokens, &out);
            if (profile) cudaCheck(cudaProfilerStop());
            size_t generated = 0;
            for (const Rollout& r : out) generated += r.completion.size();
            double kv_bytes = (double)M * (P + new_tokens / 2.0) * cfg.L * 2.0 * cfg.KVH * cfg.HD * 2;
            double step_bytes = weight_bytes + kv_bytes;
            double step_flops = 2.0 * linear_params * M;
            double roofline_ms = std::max(step_bytes / 4.27e12, step_flops / 800e12) * 1e3;
            double step_ms = seconds * 1e3 / new_tokens;
            double decode_step_ms = new_tokens > 1 ? (seconds - prefill_seconds) * 1e3 / (new_tokens - 1) : 0.0;
            printf("RESULT {\"impl\": \"grpo.cu\", \"model\": \"%s\", \"M\": %d, \"prompts\": %d, \"G\": %d, "
                   "\"prompt\": %d, \"new_tokens\": %d, \"generated\": %zu, \"seconds\": %.3f, \"tokens_per_s\": %.0f, "
                   "\"step_ms\": %.3f, \"prefill_s\": %.4f, \"decode_step_ms\": %.3f, \"roofline_step_ms\": %.3f, "
                   "\"share_of_roofline\": %.3f, \"decode_share_of_roofline\": %.3f, \"gpu_memory_gib\": %.2f, "
                   "\"copy_min_rows\": %d}\n",
                   preset.c_str(), M, batch.prompts, G, P, new_tokens, generated, seconds, generated / seconds, step_ms,
                   prefill_seconds, decode_step_ms, roofline_ms, roofline_ms / step_ms,
                   decode_step_ms > 0 ? roofline_ms / decode_step_ms : 0.0, (free0 - free1) / 1073741824.0, copy_min_rows);
            fflush(stdout);
        }
        gpu_model_destroy(model);
        return 0;
    } catch (const GrpoError& e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
