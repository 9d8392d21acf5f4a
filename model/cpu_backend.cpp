// cpu_backend.cpp: the Backend interface on the CPU reference model: KV-cache sampling, per-rollout log-probs and backward, AdamW.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "data/text.h"
#include "model/backend.h"
#include "model/cpu_model.h"

namespace {

// The CPU backend runs each rollout as its own sequence (B = 1, no padding): slow but obviously right,
// which is what a reference is for.
class CpuBackend : public Backend {
public:
    CpuBackend(Qwen2Weights weights, LoraWeights lora) : weights_(std::move(weights)), lora_(std::move(lora)) {}

    const char* name() const override { return "cpu"; }

    std::vector<Rollout> generate(const std::vector<std::vector<int32_t>>& prompts, int G, int max_new_tokens,
                                  const SamplerConfig& sampler, const std::vector<int>& stop_ids, Rng& rng,
                                  int first_rollout) override {
        const int V = weights_.config.V;
        const uint64_t seed = rng.next_u64();  // one number per call, as on the GPU
        std::vector<Rollout> rollouts;
        for (size_t p = 0; p < prompts.size(); p++) {
            const std::vector<int32_t>& prompt = prompts[p];
            if (prompt.empty()) throw GrpoError("generate: an empty prompt has no position to continue from");
            // the G completions of a prompt share one prefill: the prompt is the same for all of them
            CpuKVCache cache = cpu_kv_cache_create(weights_.config, G, (int)prompt.size() + max_new_tokens);
            std::vector<int32_t> batch_prompt;
            for (int g = 0; g < G; g++) batch_prompt.insert(batch_prompt.end(), prompt.begin(), prompt.end());
            std::vector<float> logits((size_t)G * V);
            cpu_prefill(weights_, &lora_, &cache, batch_prompt.data(), (int)prompt.size(), kPrecision, logits.data());
            std::vector<Rollout> group(G);
            std::vector<bool> done(G, false);
            std::vector<int32_t> next(G);
            for (int t = 0; t < max_new_tokens; t++) {
                bool all_done = true;
                for (int g = 0; g < G; g++) {
                    // a finished completion keeps feeding its last token so the batch stays rectangular
                    if (done[g]) { next[g] = group[g].completion.back(); continue; }
                    // the draw depends on the rollout's index in the whole batch and on t alone (see generate())
                    Rng draw = generation_draw_rng(seed, (uint64_t)first_rollout + p * G + g, (uint64_t)t);
                    int id = sample_token(logits.data() + (size_t)g * V, V, sampler, draw);
                    group[g].completion.push_back(id);
                    next[g] = id;
                    done[g] = is_stop_token(id, stop_ids);
                    all_done = all_done && done[g];
                }
                if (all_done || t + 1 == max_new_tokens) break;
                cpu_decode_step(weights_, &lora_, &cache, next.data(), kPrecision, logits.data());
            }
            for (Rollout& r : group) {
                r.prompt = &prompt;
                rollouts.push_back(std::move(r));
            }
        }
        return rollouts;
    }

    void completion_logprobs(const std::vector<Rollout>& rollouts, int Tc, float temperature, bool with_lora,
                             bool keep_for_backward, std::vector<float>* logp) override {
        logp->assign(rollouts.size() * (size_t)Tc, 0.0f);
        if (keep_for_backward) {
            kept_.assign(rollouts.size(), CpuActivations());
            completion_lengths_.assign(rollouts.size(), 0);
        }
        for (size_t n = 0; n < rollouts.size(); n++) {
            const Rollout& r = rollouts[n];
            if (r.completion.empty()) continue;
            if ((int)r.completion.size() > Tc) throw GrpoError("completion_logprobs: a completion is longer than Tc");
            std::vector<int32_t> tokens(*r.prompt);
            tokens.insert(tokens.end(), r.completion.begin(), r.completion.end());
            int T = (int)tokens.size(), P = (int)r.prompt->size();
            std::vector<float> all(T - 1);
            cpu_forward_logprobs(weights_, with_lora ? &lora_ : nullptr, tokens.data(), 1, T, temperature, kPrecision,
                                 all.data(), keep_for_backward ? &kept_[n] : nullptr);
            // all[t] is log p(tokens[t+1]): the completion starts at t = P - 1
            memcpy(logp->data() + n * Tc, all.data() + P - 1, r.completion.size() * sizeof(float));
            if (keep_for_backward) completion_lengths_[n] = (int)r.completion.size();
        }
        kept_rollouts_ = keep_for_backward ? rollouts.size() : 0;
        kept_Tc_ = Tc;
    }

    void backward(const std::vector<float>& dlogp) override {
        if (kept_rollouts_ == 0 || dlogp.size() != kept_rollouts_ * (size_t)kept_Tc_)
            throw GrpoError("backward: no matching completion_logprobs(..., keep_for_backward) call before it");
        for (size_t n = 0; n < kept_rollouts_; n++) {
            const CpuActivations& acts = kept_[n];
            if (acts.T == 0) continue;  // an empty completion has nothing to differentiate
            int T = acts.T, Tcomp = completion_lengths_[n];
            std::vector<float> d(T - 1, 0.0f);  // zero on the prompt: the loss sees completion tokens only
            memcpy(d.data() + (T - 1 - Tcomp), dlogp.data() + n * kept_Tc_, Tcomp * sizeof(float));
            cpu_backward_logprobs(weights_, &lora_, acts, d.data());
        }
    }

    float optimizer_step(double lr, double max_grad_norm, const AdamWConfig& adamw) override {
        float norm = lora_clip_grad_norm(&lora_, max_grad_norm);
        if (std::isfinite(norm)) lora_adamw_step(&lora_, adamw, lr);  // else skipped: see Backend::optimizer_step
        discard_gradients();
        return norm;
    }

    void discard_gradients() override { std::fill(lora_.grads.begin(), lora_.grads.end(), 0.0f); }

    GradientBuffer gradient_buffer() override {
        GradientBuffer b;
        b.data = lora_.grads.data();
        b.count = lora_.grads.size();
        return b;
    }

    const LoraWeights& lora() override { return lora_; }

private:
    static constexpr CpuPrecision kPrecision = CpuPrecision::BF16;  // train as HF's bf16 model computes
    Qwen2Weights weights_;
    LoraWeights lora_;
    std::vector<CpuActivations> kept_;
    std::vector<int> completion_lengths_;  // of the kept rollouts
    size_t kept_rollouts_ = 0;
    int kept_Tc_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(Qwen2Weights weights, LoraWeights lora) {
    return std::unique_ptr<Backend>(new CpuBackend(std::move(weights), std::move(lora)));
}
