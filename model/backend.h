// backend.h: what the GRPO loop asks of a compute backend (rollouts, log-probs, the LoRA backward, the optimizer step), so the loop in train_grpo.cu is written once for the CPU reference and the CUDA engine.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/rng.h"
#include "lora/adamw.h"
#include "lora/lora.h"
#include "model/sampler.h"
#include "model/weights.h"

// One prompt followed by one sampled completion.
struct Rollout {
    const std::vector<int32_t>* prompt = nullptr;  // shared by the G completions of a group
    std::vector<int32_t> completion;               // sampled ids, the stop token included when one was drawn
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual const char* name() const = 0;

    // Samples G completions for every prompt, each until a stop id or max_new_tokens. Every call takes one number
    // from rng as its seed; rollout n = first_rollout + p * G + g then draws its t-th token from a uniform number
    // that depends on (seed, n, t) alone (generation_draw_rng), so a seed reproduces the same rollouts on the
    // same backend however they are batched. A caller that splits a batch of prompts into parts (accumulation
    // batches, the ranks of a data-parallel run) and generates each part with the same seed and first_rollout =
    // (index of its first prompt in the whole batch) * G gets exactly the rollouts of one call over the whole
    // batch. Returns prompts.size() * G rollouts, grouped by prompt.
    virtual std::vector<Rollout> generate(const std::vector<std::vector<int32_t>>& prompts, int G, int max_new_tokens,
                                          const SamplerConfig& sampler, const std::vector<int>& stop_ids, Rng& rng,
                                          int first_rollout = 0) = 0;

    // logp[n * Tc + t] = log softmax(logits / temperature)[completion[t]] for t < completion length, 0 beyond,
    // for every rollout n. with_lora false gives the reference model (the frozen base). With keep_for_backward the
    // backend keeps what backward() needs (only meaningful with LoRA).
    virtual void completion_logprobs(const std::vector<Rollout>& rollouts, int Tc, float temperature, bool with_lora,
                                     bool keep_for_backward, std::vector<float>* logp) = 0;

    // Adds d(sum dlogp * logp)/d(LoRA) to the LoRA gradients, for the rollouts of the last completion_logprobs
    // call made with keep_for_backward. dlogp has the same [N, Tc] layout as logp.
    virtual void backward(const std::vector<float>& dlogp) = 0;

    // The gradient of the loss with respect to the log-probs of some rollouts: rows are rollout indices, logp the
    // [N, Tc] log-probs (filled at least at those rows), and dlogp ([N, Tc]) is to be filled at those rows.
    using DlogpFn = std::function<void(const std::vector<int>& rows, const std::vector<float>& logp,
                                       std::vector<float>* dlogp)>;
    // The policy's log-probs (as completion_logprobs with LoRA gives them) and the LoRA backward of the loss, in
    // one pass: for each part of the rollouts the backend runs at once, dlogp_of is asked for that part's gradient
    // as soon as its log-probs are known, and backward adds it. That needs a row's gradient to depend on its own
    // log-probs only (GRPO's does: the normalizers come from the masks). The default is completion_logprobs(...,
    // keep_for_backward), dlogp_of over every row, then backward(); the CUDA backend, whose activations may hold
    // only a micro-batch of the rollouts, runs each micro-batch's backward right after its forward, where the
    // two-call form would forward every micro-batch but the last twice.
    virtual void policy_logprobs_backward(const std::vector<Rollout>& rollouts, int Tc, float temperature,
                                          const DlogpFn& dlogp_of, std::vector<float>* logp) {
        completion_logprobs(rollouts, Tc, temperature, true, true, logp);
        std::vector<int> rows(rollouts.size());
        for (size_t n = 0; n < rows.size(); n++) rows[n] = (int)n;
        std::vector<float> dlogp(logp->size(), 0.0f);
        dlogp_of(rows, *logp, &dlogp);
        backward(dlogp);
    }

    // Clips the global gradient norm to max_grad_norm, applies one AdamW step at lr, zeroes the gradients.
    // Returns the norm before clipping (what TRL logs as grad_norm). When that norm is not finite (NaN or inf:
    // some gradient overflowed) the step is skipped: parameters, moments and the step count stay as they were,
    // and the gradients are still zeroed, so the next step starts clean.
    virtual float optimizer_step(double lr, double max_grad_norm, const AdamWConfig& adamw) = 0;

    // Zeroes the accumulated gradients without an optimizer step (a step skipped before its last backward).
    virtual void discard_gradients() = 0;

    // Where the accumulated LoRA gradients live, for data-parallel training to sum them over the ranks before
    // optimizer_step: on the host (the CPU backend) or on the device, written by work queued on `stream` (a
    // cudaStream_t), in the LoraWeights layout either way.
    struct GradientBuffer {
        float* data = nullptr;
        size_t count = 0;
        bool on_device = false;
        void* stream = nullptr;
    };
    virtual GradientBuffer gradient_buffer() = 0;

    // Bytes this backend holds on its device for the run (the GPU's memory plan, all allocated at creation: its
    // peak); 0 for the host backend.
    virtual size_t device_memory_bytes() const { return 0; }

    // The adapters with their AdamW state, up to date on the host (for checkpoints).
    virtual const LoraWeights& lora() = 0;
};

// The random draw of rollout n's t-th token in a generate() call seeded with `seed`: an Rng whose next number is
// splitmix64(splitmix64(splitmix64(seed) ^ n) ^ t), the bits kernels/sample.cu draws on the GPU (Rng(x)'s first
// number is splitmix64(x)).
inline Rng generation_draw_rng(uint64_t seed, uint64_t n, uint64_t t) {
    auto splitmix64 = [](uint64_t x) { return Rng(x).next_u64(); };
    return Rng(splitmix64(splitmix64(seed) ^ n) ^ t);
}

// The CPU reference backend: plain C++, BF16 rounding where HF rounds (see model/cpu_model.h).
std::unique_ptr<Backend> make_cpu_backend(Qwen2Weights weights, LoraWeights lora);

// The CUDA backend (model/gpu_backend.cu, built by nvcc only): the host weights are uploaded as planned (NF4
// stays NF4), the GPU memory is allocated once for options.max_tokens tokens per micro-batch and, for generate(),
// a KV cache of options.max_rollouts sequences of options.max_sequence_length tokens; the plan is printed.
// Throws GrpoError when it does not fit.
struct GpuOptions;
std::unique_ptr<Backend> make_cuda_backend(Qwen2Weights host_weights, LoraWeights lora, const GpuOptions& options);
