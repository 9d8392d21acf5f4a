// run_setup.h: what train_grpo and eval_gsm8k share before their loops: the base model (or the embedded tiny default) and the backend --device asks for.
//
// Header-only on purpose: nvcc builds it into the GPU programs, and g++ builds it with -DGRPO_CPU_ONLY into
// their CPU-only twins, which have no CUDA backend to link.
#pragma once
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "data/text.h"
#include "model/backend.h"
#include "model/model_file.h"
#include "tokenizer/tokenizer.h"
#ifndef GRPO_CPU_ONLY
#include "kernels/cuda_common.cuh"
#include "model/gpu_model.h"
#endif

// The model at `path`; with an empty path, the embedded tiny random model (Qwen2.5's vocabulary, so the real
// tokenizer, prompts and rewards all run), announced loudly so nobody mistakes it for a trained model.
inline Qwen2Weights load_base_or_tiny(const std::string& path, bool quantize_nf4, uint64_t seed) {
    Qwen2Weights weights;
    if (path.empty()) {
        Qwen2Config tiny = qwen2_preset("tiny");
        tiny.V = 151936;  // Qwen2.5's embedding rows, so the real tokenizer fits
        tiny.source = "the embedded tiny default";
        weights = weights_random(tiny, quantize_nf4 ? LinearFormat::NF4 : LinearFormat::BF16, seed);
        printf("\n*** no -m given: running the embedded TINY RANDOM model (V %d, C %d, L %d) through the whole pipeline.\n"
               "*** It learns nothing useful. For real work pass -m MODEL (see README: Getting Qwen2.5 weights).\n\n",
               tiny.V, tiny.C, tiny.L);
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

// The backend for `device` ("cpu" or "cuda"), sized for up to `rollouts` sequences at once of at most
// longest_prompt + max_new_tokens tokens. Without a usable GPU the message says so and offers --device cpu.
inline std::unique_ptr<Backend> make_backend(const std::string& device, Qwen2Weights weights, LoraWeights lora,
                                             int rollouts, int longest_prompt, int max_new_tokens) {
    if (device == "cpu") return make_cpu_backend(std::move(weights), std::move(lora));
    if (device != "cuda") throw GrpoError("--device: expected cuda or cpu, got '" + device + "'");
#ifdef GRPO_CPU_ONLY
    (void)rollouts;
    (void)longest_prompt;
    (void)max_new_tokens;
    throw GrpoError("this build has no CUDA backend (built with -DGRPO_CPU_ONLY); use --device cpu, or the nvcc build");
#else
    int num_devices = 0;
    cudaError_t err = cudaGetDeviceCount(&num_devices);
    if (err != cudaSuccess || num_devices == 0)
        throw GrpoError(std::string("--device cuda: no usable CUDA device (") + cudaGetErrorString(err) +
                        "); run on a machine with an NVIDIA GPU, or pass --device cpu for a tiny model");
    // one micro-batch holds all the rollouts of a step when they fit the default token budget; a longest
    // possible rollout must always fit. The KV cache holds every rollout at its longest.
    GpuOptions gpu;
    const int longest = longest_prompt + max_new_tokens;
    gpu.max_tokens = std::max(longest, std::min(gpu.max_tokens, rollouts * longest));
    gpu.max_rollouts = rollouts;
    gpu.max_sequence_length = longest;
    return make_cuda_backend(std::move(weights), std::move(lora), gpu);
#endif
}
