// gpu_backend.cu: the Backend interface on one GPU: batched KV-cache generation (model/gpu_generate.cu), rollouts packed into micro-batches for log-probs and the LoRA backward, the optimizer step on the device.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "data/text.h"
#include "kernels/matmul.cuh"
#include "model/backend.h"
#include "model/gpu_generate.h"
#include "model/gpu_model.h"

namespace {

// One micro-batch of whole rollouts, and where each of its log-prob rows goes in the [N, Tc] output.
struct MicroBatch {
    GpuBatch batch;
    std::vector<size_t> out_index;  // row j of batch.rows -> n * Tc + t
};

class CudaBackend : public Backend {
public:
    CudaBackend(const Qwen2Weights& host_weights, LoraWeights lora, const GpuOptions& options)
        : lora_(std::move(lora)) {
        model_ = gpu_model_create(host_weights, lora_, options);
    }
    ~CudaBackend() override { gpu_model_destroy(model_); }

    const char* name() const override { return "cuda"; }

    std::vector<Rollout> generate(const std::vector<std::vector<int32_t>>& prompts, int G, int max_new_tokens,
                                  const SamplerConfig& sampler, const std::vector<int>& stop_ids, Rng& rng,
                                  int first_rollout) override {
        // one draw of the run's Rng per call seeds the GPU's counter-based draws (kernels/sample.cuh), so a run
        // resumed with the saved Rng state reproduces its rollouts; they are numbered in the whole batch
        // (first_rollout on), so a data-parallel rank's share draws the tokens of one call over the whole batch
        return gpu_generate(model_, prompts, G, max_new_tokens, sampler, stop_ids, rng.next_u64(), first_rollout);
    }

    void completion_logprobs(const std::vector<Rollout>& rollouts, int Tc, float temperature, bool with_lora,
                             bool keep_for_backward, std::vector<float>* logp) override {
        if (keep_for_backward && !with_lora)
            throw GrpoError("completion_logprobs: keep_for_backward needs with_lora (the backward is to LoRA)");
        std::vector<MicroBatch> batches = pack(rollouts, Tc);
        logp->assign(rollouts.size() * (size_t)Tc, 0.0f);
        uint64_t last_id = 0;
        std::vector<float> rows_logp;
        for (const MicroBatch& mb : batches) {
            last_id = gpu_model_forward(model_, mb.batch, with_lora, temperature, &rows_logp);
            for (size_t j = 0; j < rows_logp.size(); j++) (*logp)[mb.out_index[j]] = rows_logp[j];
        }
        if (keep_for_backward) {
            // Only the last micro-batch's checkpoints stay on the GPU; backward() runs it first, without a
            // re-forward when nothing else ran in between, and recomputes the forward of the others.
            kept_ = std::move(batches);
            kept_id_ = last_id;
            kept_temperature_ = temperature;
            kept_size_ = rollouts.size() * (size_t)Tc;
            kept_valid_ = true;
        }
    }

    void backward(const std::vector<float>& dlogp) override {
        if (!kept_valid_ || dlogp.size() != kept_size_)
            throw GrpoError("backward: no matching completion_logprobs(..., keep_for_backward) call before it");
        std::vector<float> rows_dlogp, unused;
        for (size_t i = kept_.size(); i-- > 0;) {
            const MicroBatch& mb = kept_[i];
            bool resident = i + 1 == kept_.size() && gpu_model_resident_id(model_) == kept_id_;
            if (!resident) gpu_model_forward(model_, mb.batch, true, kept_temperature_, &unused);
            rows_dlogp.resize(mb.out_index.size());
            for (size_t j = 0; j < rows_dlogp.size(); j++) rows_dlogp[j] = dlogp[mb.out_index[j]];
            gpu_model_backward(model_, rows_dlogp);
        }
    }

    void policy_logprobs_backward(const std::vector<Rollout>& rollouts, int Tc, float temperature,
                                  const DlogpFn& dlogp_of, std::vector<float>* logp) override {
        std::vector<MicroBatch> batches = pack(rollouts, Tc);
        if (batches.size() <= 1) {  // one micro-batch: its forward stays resident for the backward anyway
            Backend::policy_logprobs_backward(rollouts, Tc, temperature, dlogp_of, logp);
            return;
        }
        kept_valid_ = false;  // backward() has nothing to run after this
        logp->assign(rollouts.size() * (size_t)Tc, 0.0f);
        std::vector<float> dlogp(logp->size(), 0.0f), rows_logp, rows_dlogp;
        for (const MicroBatch& mb : batches) {
            gpu_model_forward(model_, mb.batch, true, temperature, &rows_logp);
            std::vector<int> rows;  // the micro-batch's rollouts, from where their log-probs go
            for (size_t j = 0; j < rows_logp.size(); j++) {
                (*logp)[mb.out_index[j]] = rows_logp[j];
                const int n = (int)(mb.out_index[j] / (size_t)Tc);
                if (rows.empty() || rows.back() != n) rows.push_back(n);
            }
            dlogp_of(rows, *logp, &dlogp);
            rows_dlogp.resize(mb.out_index.size());
            for (size_t j = 0; j < rows_dlogp.size(); j++) rows_dlogp[j] = dlogp[mb.out_index[j]];
            gpu_model_backward(model_, rows_dlogp);
        }
    }

    float optimizer_step(double lr, double max_grad_norm, const AdamWConfig& adamw) override {
        lora_.adam_step++;  // torch increments state["step"] before the update uses it
        // a non-finite norm makes the fused AdamW kernel a no-op on the device (grad_norm_cuda hands it a NaN clip
        // coefficient, kernels/adamw.cuh); the gradients are zeroed either way, and the step count is taken back
        float norm = gpu_model_optimizer_step(model_, lr, max_grad_norm, adamw, lora_.adam_step);
        if (!std::isfinite(norm)) lora_.adam_step--;
        return norm;
    }

    void discard_gradients() override {
        // rare (a step skipped for a non-finite loss after some of its backwards): a round trip through the host
        // keeps gpu_model's interface as it is
        gpu_model_lora_download(model_, &lora_);
        std::fill(lora_.grads.begin(), lora_.grads.end(), 0.0f);
        gpu_model_lora_upload(model_, lora_);
    }

    GradientBuffer gradient_buffer() override {
        // The device gradients are one fp32 array in the host LoraWeights layout (gpu_model.cu's LoRA allocation);
        // gpu_model.h hands out pointers into it per linear only, so its start is found from the first adapter's dA
        // and that adapter's offset in the layout.
        GradientBuffer b;
        b.on_device = true;
        b.stream = gpu_model_parts(model_).stream;
        b.count = lora_.grads.size();
        for (int l = 0; l < (int)lora_.slots.size() && !b.data; l++)
            for (int s = 0; s < NUM_LINEAR && !b.data; s++) {
                if (!lora_.slots[l][s].present) continue;
                LoraLinearGpu linear;
                gpu_model_linear_group(model_, l, s, 1, true, &linear);
                b.data = linear.dA - lora_.slots[l][s].a_offset;
            }
        return b;
    }

    size_t device_memory_bytes() const override { return gpu_model_memory_plan(model_).total(); }

    const LoraWeights& lora() override {
        gpu_model_lora_download(model_, &lora_);
        return lora_;
    }

private:
    // Rollouts in order, each as prompt + completion, into micro-batches of at most max_tokens tokens. The rows
    // are the completion's positions: log p(completion[t]) is read at the token before it, row P - 1 + t.
    std::vector<MicroBatch> pack(const std::vector<Rollout>& rollouts, int Tc) const {
        const GpuOptions& options = gpu_model_options(model_);
        std::vector<MicroBatch> batches;
        int tokens = 0, longest = 0;
        for (size_t n = 0; n < rollouts.size(); n++) {
            const Rollout& r = rollouts[n];
            if (r.completion.empty()) continue;  // no log-prob to compute, nothing to differentiate
            if ((int)r.completion.size() > Tc) throw GrpoError("completion_logprobs: a completion is longer than Tc");
            if (!r.prompt || r.prompt->empty())
                throw GrpoError("completion_logprobs: rollout " + std::to_string(n) + " has no prompt token to "
                                "predict its first completion token from");
            std::vector<int32_t> sequence(*r.prompt);
            sequence.insert(sequence.end(), r.completion.begin(), r.completion.end());
            const int len = (int)sequence.size(), P = (int)r.prompt->size();
            if (!gpu_batch_fits(options, len, 1, len))
                throw GrpoError("completion_logprobs: rollout " + std::to_string(n) + " has " + std::to_string(len) +
                                " tokens but a micro-batch holds " + std::to_string(options.max_tokens) +
                                "; raise GpuOptions::max_tokens or lower --max-prompt-length / "
                                "--max-completion-length");
            if (batches.empty() || !gpu_batch_fits(options, tokens + len, batches.back().batch.num_sequences() + 1,
                                                   std::max(longest, len))) {
                batches.emplace_back();
                tokens = longest = 0;
            }
            MicroBatch& mb = batches.back();
            mb.batch.add_sequence(sequence, P - 1, len - 1);
            for (size_t t = 0; t < r.completion.size(); t++) mb.out_index.push_back(n * Tc + t);
            tokens += len;
            longest = std::max(longest, len);
        }
        return batches;
    }

    GpuModel* model_ = nullptr;
    LoraWeights lora_;  // the host copy: up to date after lora(); the device holds the truth
    std::vector<MicroBatch> kept_;
    uint64_t kept_id_ = 0;
    float kept_temperature_ = 1.0f;
    size_t kept_size_ = 0;
    bool kept_valid_ = false;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(Qwen2Weights host_weights, LoraWeights lora, const GpuOptions& options) {
    // the weights live on the GPU from here on: the host copy is released when this function returns
    return std::unique_ptr<Backend>(new CudaBackend(host_weights, std::move(lora), options));
}
