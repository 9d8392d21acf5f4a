// run_setup.h: what train_grpo and eval_gsm8k share before their loops: the base model (or the embedded tiny default, or a random preset), the GPU memory plan chosen from the free memory, and the backend --device asks for.
//
// Header-only on purpose: nvcc builds it into the GPU programs, and g++ builds it with -DGRPO_CPU_ONLY into
// their CPU-only twins, which have no CUDA backend to link.
#pragma once
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "data/json.h"
#include "data/text.h"
#include "model/backend.h"
#include "model/model_file.h"
#include "tokenizer/tokenizer.h"
#ifndef GRPO_CPU_ONLY
#include "kernels/cuda_common.cuh"
#include "model/gpu_model.h"
#endif

// The model at `path`; with an empty path, the embedded tiny random model (Qwen2.5's vocabulary, so the real
// tokenizer, prompts and rewards all run), announced loudly so nobody mistakes it for a trained model. The path
// random:PRESET (random:7B, random:0.5B, ...) makes random weights of that preset's shape, for benchmarks.
inline Qwen2Weights load_base_or_tiny(const std::string& path, bool quantize_nf4, uint64_t seed) {
    Qwen2Weights weights;
    const LinearFormat format = quantize_nf4 ? LinearFormat::NF4 : LinearFormat::BF16;
    if (path.empty()) {
        Qwen2Config tiny = qwen2_preset("tiny");
        tiny.V = 151936;  // Qwen2.5's embedding rows, so the real tokenizer fits
        tiny.source = "the embedded tiny default";
        weights = weights_random(tiny, format, seed);
        printf("\n*** no -m given: running the embedded TINY RANDOM model (V %d, C %d, L %d) through the whole pipeline.\n"
               "*** It learns nothing useful. For real work pass -m MODEL (see README: Getting Qwen2.5 weights).\n\n",
               tiny.V, tiny.C, tiny.L);
    } else if (path.compare(0, 7, "random:") == 0) {
        Qwen2Config cfg = qwen2_preset(path.substr(7));  // throws naming the presets
        cfg.source = path;
        weights = weights_random(cfg, format, seed);
        printf("\n*** -m %s: RANDOM WEIGHTS of the %s shape (%s linears), for timing only: nothing it generates "
               "or learns means anything.\n\n", path.c_str(), path.substr(7).c_str(), linear_format_name(format));
    } else {
        ModelLoadOptions options;
        options.quantize_nf4 = quantize_nf4;
        weights = load_model(path, options);
    }
    const Qwen2Config& cfg = weights.config;
    printf("model: %s, V %d C %d I %d L %d NH %d KVH %d HD %d, %s linears, %.1f MiB\n",
           path.empty() ? cfg.source.c_str() : path.c_str(), cfg.V, cfg.C, cfg.I, cfg.L, cfg.NH, cfg.KVH, cfg.HD,
           linear_format_name(weights.plan.format), weights.plan.total_bytes / 1048576.0);
    return weights;
}

// The tokenizer at `path`, refused when it has ids the model has no embedding row for.
inline Tokenizer load_tokenizer_for(const std::string& path, const Qwen2Config& cfg) {
    Tokenizer tokenizer = Tokenizer::load(path);
    if (tokenizer.vocab_size() > cfg.V)
        throw GrpoError(path + " has " + std::to_string(tokenizer.vocab_size()) + " tokens but the model's embedding has "
                        "only V = " + std::to_string(cfg.V) + " rows; use the model's own tokenizer");
    return tokenizer;
}

// ---- the GPU memory plan --------------------------------------------------------------------------------

// How much GPU memory a run may plan for: --gpu-memory-utilization (a share of the memory free at start, as
// vLLM's gpu_memory_utilization) or --max-gpu-memory (GiB), and an optional fixed micro-batch size.
struct GpuMemoryLimits {
    double utilization = 0.9;   // of the free memory; the rest is headroom for the CUDA context and libraries
    double max_gib = 0;         // > 0: plan for at most this many GiB instead (capped at what is free)
    int micro_batch_tokens = 0; // > 0: use exactly this many tokens per policy micro-batch; 0: the largest that fits
    int bf16_base_copy = -1;    // --bf16-base-copy: -1 auto (see make_backend), 0 off, 1 on
};

// A command-line number in [min, max], or one GrpoError naming the option, the range and the value.
inline double parse_number_option(const std::string& name, const char* value, double min, double max) {
    char* end = nullptr;
    errno = 0;
    double v = strtod(value, &end);
    if (errno || end == value || *end != '\0' || !(v >= min && v <= max))
        throw GrpoError("option " + name + ": expected a number in [" + json_number(min) + ", " + json_number(max) +
                        "], got '" + value + "'");
    return v;
}

// A command-line integer in [min, max] (written as any number: 1e3 is 1000), or one GrpoError naming the option.
inline int parse_int_option(const std::string& name, const char* value, long min, long max) {
    double v = parse_number_option(name, value, (double)min, (double)max);
    if (v != std::floor(v)) throw GrpoError("option " + name + ": expected an integer, got '" + value + "'");
    return (int)v;
}

// --bf16-base-copy's value as GpuMemoryLimits::bf16_base_copy.
inline int parse_bf16_base_copy(const std::string& mode) {
    if (mode == "auto") return -1;
    if (mode == "on") return 1;
    if (mode == "off") return 0;
    throw GrpoError("--bf16-base-copy: expected auto, on or off, got '" + mode + "'");
}

struct MicroBatchChoice {
    int max_tokens = 0;     // tokens per policy micro-batch
    size_t plan_bytes = 0;  // the whole plan's bytes at that size
    bool base_copy = false; // with the bf16 base copy (GpuOptions::bf16_base_copy)
};

// The pure sizing decision, kept apart from the GPU so a CPU test can drive it with made-up numbers:
// plan_bytes(t) is the memory plan's total with t tokens per micro-batch (non-decreasing in t, the KV cache and
// weights included). Returns the largest t in [min_tokens, max_tokens] whose plan fits budget_bytes (more tokens
// per micro-batch: fewer, larger GEMMs and no re-forward before the backward); a fixed size (fixed_tokens > 0)
// is only checked. When even min_tokens (one longest rollout per micro-batch) does not fit, throws one GrpoError
// naming the need, the limit (budget_detail says where it came from) and what to lower.
inline MicroBatchChoice choose_micro_batch_tokens(const std::function<size_t(int)>& plan_bytes, size_t budget_bytes,
                                                  const std::string& budget_detail, int min_tokens, int max_tokens,
                                                  int fixed_tokens = 0) {
    auto gib = [](size_t bytes) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%.2f GiB", bytes / 1073741824.0);
        return std::string(buf);
    };
    if (fixed_tokens > 0) {
        if (fixed_tokens < min_tokens)
            throw GrpoError("--micro-batch-tokens " + std::to_string(fixed_tokens) + " is less than the longest "
                            "possible rollout (" + std::to_string(min_tokens) + " tokens: the longest prompt + "
                            "--max-completion-length); raise it or lower the lengths");
        min_tokens = max_tokens = fixed_tokens;
    }
    max_tokens = std::max(min_tokens, max_tokens);
    const size_t smallest = plan_bytes(min_tokens);
    if (smallest > budget_bytes)
        throw GrpoError("GPU memory: the smallest plan (weights, LoRA state, the KV cache for every rollout of a "
                        "step, and a policy micro-batch of " + std::to_string(min_tokens) + " tokens) needs " +
                        gib(smallest) + " but the limit is " + gib(budget_bytes) + " (" + budget_detail +
                        "); lower -g, --prompts-per-step, --max-prompt-length or --max-completion-length, or raise "
                        "--gpu-memory-utilization / --max-gpu-memory if the GPU has room");
    // binary search for the largest fitting size: plan_bytes is non-decreasing in the token count
    int lo = min_tokens, hi = max_tokens;  // plan_bytes(lo) fits
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (plan_bytes(mid) <= budget_bytes) lo = mid;
        else hi = mid - 1;
    }
    return {lo, plan_bytes(lo)};
}

// The micro-batch and whether to hold the bf16 base copy: plan_bytes(t, copy) is the plan's total with t tokens per
// micro-batch, with or without the copy. copy_mode 0 never holds it, 1 always (the micro-batch shrinks to make
// room), -1 (auto) holds it when it fits beside the micro-batch chosen without it: the copy speeds every GEMM and
// most decode steps, but never at the price of a smaller micro-batch, which would cost a forward more per step.
inline MicroBatchChoice choose_gpu_plan(const std::function<size_t(int, bool)>& plan_bytes, size_t budget_bytes,
                                        const std::string& budget_detail, int min_tokens, int max_tokens,
                                        int fixed_tokens, int copy_mode) {
    const bool copy_first = copy_mode == 1;
    MicroBatchChoice choice = choose_micro_batch_tokens([&](int t) { return plan_bytes(t, copy_first); }, budget_bytes,
                                                        budget_detail, min_tokens, max_tokens, fixed_tokens);
    choice.base_copy = copy_first;
    if (copy_mode == -1) {
        const size_t with_copy = plan_bytes(choice.max_tokens, true);
        if (with_copy <= budget_bytes) {
            choice.plan_bytes = with_copy;
            choice.base_copy = true;
        }
    }
    return choice;
}

// The backend for `device` ("cpu" or "cuda"), sized for up to `rollouts` sequences at once of at most
// longest_prompt + max_new_tokens tokens. Without a usable GPU the message says so and offers --device cpu.
// With `limits` the policy micro-batch is the largest that fits the limits (choose_micro_batch_tokens) and
// the choice is printed (and stored in *chosen); without, one micro-batch holds a step's rollouts up to the
// default token budget.
inline std::unique_ptr<Backend> make_backend(const std::string& device, Qwen2Weights weights, LoraWeights lora,
                                             int rollouts, int longest_prompt, int max_new_tokens,
                                             const GpuMemoryLimits* limits = nullptr,
                                             MicroBatchChoice* chosen = nullptr) {
    if (device == "cpu") return make_cpu_backend(std::move(weights), std::move(lora));
    if (device != "cuda") throw GrpoError("--device: expected cuda or cpu, got '" + device + "'");
#ifdef GRPO_CPU_ONLY
    (void)rollouts;
    (void)longest_prompt;
    (void)max_new_tokens;
    (void)limits;
    (void)chosen;
    throw GrpoError("this build has no CUDA backend (built with -DGRPO_CPU_ONLY); use --device cpu, or the nvcc build");
#else
    int num_devices = 0;
    cudaError_t err = cudaGetDeviceCount(&num_devices);
    if (err != cudaSuccess || num_devices == 0)
        throw GrpoError(std::string("--device cuda: no usable CUDA device (") + cudaGetErrorString(err) +
                        "); run on a machine with an NVIDIA GPU, or pass --device cpu for a tiny model");
    // The KV cache holds every rollout at its longest; a longest possible rollout must always fit a micro-batch.
    GpuOptions gpu;
    const int longest = longest_prompt + max_new_tokens;
    const int64_t whole_step = (int64_t)rollouts * longest;
    gpu.max_rollouts = rollouts;
    gpu.max_sequence_length = longest;
    if (!limits) {
        gpu.max_tokens = std::max(longest, (int)std::min<int64_t>(gpu.max_tokens, whole_step));
        return make_cuda_backend(std::move(weights), std::move(lora), gpu);
    }
    size_t free_bytes = 0, total_bytes = 0;
    cudaCheck(cudaMemGetInfo(&free_bytes, &total_bytes));
    size_t budget = (size_t)(limits->utilization * (double)free_bytes);
    char detail[160];
    snprintf(detail, sizeof(detail), "%.2f GiB free x --gpu-memory-utilization %g", free_bytes / 1073741824.0,
             limits->utilization);
    if (limits->max_gib > 0) {
        budget = std::min(free_bytes, (size_t)(limits->max_gib * 1073741824.0));
        snprintf(detail, sizeof(detail), "--max-gpu-memory %g GiB, %.2f GiB free", limits->max_gib,
                 free_bytes / 1073741824.0);
    }
    const Nf4LinearSizes nf4 = nf4_linear_sizes(weights);
    auto plan_bytes = [&](int tokens, bool copy) {
        GpuOptions o = gpu;
        o.max_tokens = tokens;
        o.bf16_base_copy = copy;
        return gpu_memory_plan(weights.config, weights.plan.total_bytes, nf4, lora.lora, o).total();
    };
    // the whole step in one micro-batch is the most that helps; 1M tokens keeps every index in an int
    const int most = (int)std::min<int64_t>(std::max<int64_t>(whole_step, longest), 1 << 20);
    // auto: only where decode steps read the copy (a step's rollouts reach bf16_copy_min_rows); below, it would
    // only spare the training GEMMs their dequantization (1x6 at 7B: 0.17 -> 0.15 s a step) for 12 GiB more
    const bool decode_reads_copy = rollouts >= gpu.bf16_copy_min_rows;
    int copy_mode = nf4.copy_bytes > 0 ? limits->bf16_base_copy : 0;
    if (copy_mode == -1 && !decode_reads_copy) copy_mode = 0;
    MicroBatchChoice choice = choose_gpu_plan(plan_bytes, budget, detail, longest, most, limits->micro_batch_tokens,
                                              copy_mode);
    gpu.max_tokens = choice.max_tokens;
    gpu.bf16_base_copy = choice.base_copy;
    if (chosen) *chosen = choice;
    char copy_rows[128];
    snprintf(copy_rows, sizeof(copy_rows), "off (%d rollouts a step: decode steps read it from %d; --bf16-base-copy on "
             "forces it)", rollouts, gpu.bf16_copy_min_rows);
    printf("GPU memory: limit %.2f GiB (%s); policy micro-batch %d tokens (%s); bf16 base copy %s; plan %.2f GiB\n",
           budget / 1073741824.0, detail, gpu.max_tokens,
           gpu.max_tokens >= whole_step ? "a whole step at its longest in one" : "the largest that fits",
           nf4.copy_bytes == 0 ? "not needed (bf16 base)"
           : choice.base_copy  ? (limits->bf16_base_copy == 1 ? "on" : "on (it fits)")
           : limits->bf16_base_copy == 0 ? "off"
           : !decode_reads_copy ? copy_rows
                                : "off (it does not fit beside the micro-batch; --bf16-base-copy on forces it)",
           choice.plan_bytes / 1073741824.0);
    return make_cuda_backend(std::move(weights), std::move(lora), gpu);
#endif
}
