// bench_cpu_model.cpp: tokens/s of the CPU reference model's forward (log-probs) and forward+backward, for the two tiny test models and a 0.5B-shaped config with random weights.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "data/rng.h"
#include "lora/lora.h"
#include "model/config.h"
#include "model/cpu_model.h"
#include "model/loader.h"
#include "model/weights.h"

static double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Random bf16 weights of a trained model's scale: norms 1, everything else uniform with std 1/sqrt(C).
static Qwen2Weights random_weights(const Qwen2Config& cfg, uint64_t seed) {
    WeightPlan plan = weight_plan(cfg, LinearFormat::BF16);
    std::shared_ptr<uint8_t> buffer = weights_alloc(plan);
    Rng rng(seed);
    float bound = std::sqrt(3.0f / cfg.C);
    for (const PlannedTensor& t : plan.tensors) {
        int64_t n = (int64_t)(t.bytes / sizeof(bf16_bits));
        bool norm = t.name.find("norm") != std::string::npos;
        std::vector<bf16_bits> values(n);
        for (int64_t i = 0; i < n; i++) values[i] = f32_to_bf16(norm ? 1.0f : (2.0f * rng.next_float() - 1.0f) * bound);
        weights_store_bf16(plan, t.name, values.data(), n, buffer.get());
    }
    return weights_from_buffer(plan, buffer.get(), buffer.get(), buffer);
}

// A LoRA on all seven linears with non-zero A and B, so the adapter path does real work.
static LoraWeights random_lora(const Qwen2Config& cfg, int R, uint64_t seed) {
    LoraConfig lc;
    lc.R = R;
    lc.alpha = 2.0f * R;
    LoraWeights lora = lora_create(cfg, lc);
    Rng rng(seed);
    for (float& p : lora.params) p = 0.02f * (2.0f * rng.next_float() - 1.0f);
    return lora;
}

// The best of `repeats` runs (the tiny models take milliseconds, so one run is mostly noise).
static void bench(const char* name, const Qwen2Weights& weights, const LoraWeights& lora_in, int B, int T,
                  CpuPrecision precision, int repeats) {
    LoraWeights lora = lora_in;
    std::vector<int32_t> tokens((size_t)B * T);
    Rng rng(7);
    for (int32_t& t : tokens) t = (int32_t)rng.next_below(weights.config.V);
    std::vector<float> logp((size_t)B * (T - 1)), dlogp(logp.size(), 0.01f);
    CpuActivations acts;

    double forward = INFINITY, backward = INFINITY;
    for (int r = 0; r < repeats; r++) {
        auto start = std::chrono::steady_clock::now();
        cpu_forward_logprobs(weights, &lora, tokens.data(), B, T, 0.7f, precision, logp.data(), &acts);
        forward = std::fmin(forward, seconds_since(start));
        start = std::chrono::steady_clock::now();
        cpu_backward_logprobs(weights, &lora, acts, dlogp.data());
        backward = std::fmin(backward, seconds_since(start));
    }
    printf("%-28s %-4s B=%d T=%-3d forward %8.1f tok/s   forward+backward %8.1f tok/s\n", name,
           cpu_precision_name(precision), B, T, B * T / forward, B * T / (forward + backward));
}

int main() {
    for (const char* model : {"tiny_tied", "tiny_untied"}) {
        Qwen2Weights weights = load_hf_dir(std::string("test/ref/qwen2/") + model + "/hf", LinearFormat::BF16);
        Qwen2Weights nf4 = load_hf_dir(std::string("test/ref/qwen2/") + model + "/hf_orig", LinearFormat::NF4);
        LoraWeights lora = random_lora(weights.config, 8, 1);
        for (CpuPrecision p : {CpuPrecision::FP32, CpuPrecision::BF16}) bench(model, weights, lora, 4, 64, p, 3);
        bench((std::string(model) + " (NF4)").c_str(), nf4, lora, 4, 64, CpuPrecision::FP32, 3);
    }

    // Qwen2.5-0.5B's widths (C 896, I 4864, 14 heads, 2 KV heads, HD 64) with 2 layers and a 16k vocabulary,
    // so one run takes seconds: the per-token cost is then ~1/12 of the real model's
    Qwen2Config cfg = qwen2_preset("0.5B");
    cfg.L = 2;
    cfg.V = 16384;
    cfg.source = "0.5B widths, 2 layers, V 16384";
    Qwen2Weights weights = random_weights(cfg, 3);
    LoraWeights lora = random_lora(cfg, 16, 4);
    bench("0.5B-wide, L=2, V=16k", weights, lora, 1, 32, CpuPrecision::FP32, 1);
    return 0;
}
