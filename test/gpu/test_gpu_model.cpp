// test_gpu_model.cpp: the GPU model and backend (model/gpu_model.cu, model/gpu_backend.cu) against the HF/PEFT/TRL bf16 dumps and the CPU reference: hidden states, logits, log-probs, LoRA gradients, micro-batching, varlen packing, three AdamW steps and the memory plan.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "data/json.h"
#include "data/rng.h"
#include "kernels/cuda_common.cuh"
#include "lora/adamw.h"
#include "lora/peft.h"
#include "model/backend.h"
#include "model/cpu_model.h"
#include "model/gpu_model.h"
#include "model/grpo_loss.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "test/test_util.h"

namespace {

// One tiny reference model: its weights as bf16 (hf/) and as NF4 quantized on load (hf_orig/, which must give
// identical results), the PEFT adapter, and HF's bf16 run on the dumped batch.
struct RefModel {
    std::string name;
    Qwen2Weights bf16, nf4;
    LoraWeights lora;
    SafetensorsFile dump;
    JsonValue meta;
    int B = 0, T = 0, P = 0;
    float temperature = 0.0f;
    std::vector<int32_t> tokens;  // [B, T]
    std::vector<std::vector<int32_t>> prompts;

    explicit RefModel(const std::string& model)
        : name(model),
          bf16(load_hf_dir(REF_DIR + model + "/hf", LinearFormat::BF16)),
          nf4(load_hf_dir(REF_DIR + model + "/hf_orig", LinearFormat::NF4)),
          lora(peft_load(REF_DIR + model + "/adapter", bf16.config)),
          dump(REF_DIR + model + "/dump_bfloat16.safetensors") {
        meta = json_parse(dump.metadata().at("meta"), dump.path() + " metadata");
        B = (int)number("B");
        T = (int)number("T");
        P = (int)number("P");
        temperature = (float)number("temperature");
        const TensorView& ids = dump.get("input_ids");
        REQUIRE(ids.numel() == (int64_t)B * T);
        tokens.resize((size_t)B * T);
        memcpy(tokens.data(), ids.data, ids.nbytes);
        for (int b = 0; b < B; b++) prompts.emplace_back(&tokens[(size_t)b * T], &tokens[(size_t)b * T + P]);
    }
    double number(const std::string& key) const {
        const JsonValue* v = meta.get(key);
        INFO(dump.path() << ": meta has no number " << key);
        REQUIRE((v && v->is_number()));
        return v->number;
    }
    std::vector<float> get(const std::string& tensor) const { return tensor_to_f32(dump.get(tensor)); }
    std::vector<int32_t> sequence(int b) const {
        return std::vector<int32_t>(&tokens[(size_t)b * T], &tokens[(size_t)(b + 1) * T]);
    }
    // The dumped batch as rollouts: prompt = the first P tokens, completion = the other T - P.
    std::vector<Rollout> rollouts() const {
        std::vector<Rollout> out(B);
        for (int b = 0; b < B; b++) {
            out[b].prompt = &prompts[b];
            out[b].completion.assign(&tokens[(size_t)b * T + P], &tokens[(size_t)(b + 1) * T]);
        }
        return out;
    }
    const Qwen2Weights& weights(LinearFormat format) const { return format == LinearFormat::NF4 ? nf4 : bf16; }
};

// |ours - ref| <= abs + abs_of_rms * rms(ref) + rel * |ref|: errors that come from bf16 rounding flips cascading
// through later layers scale with the tensor's rms, not with each element (see test_cpu_model.cpp).
struct Tol {
    double abs = 0.0, abs_of_rms = 0.0, rel = 0.0;
};

double rms_of(const std::vector<float>& x) {
    double ss = 0.0;
    for (float v : x) ss += (double)v * v;
    return x.empty() ? 0.0 : std::sqrt(ss / x.size());
}

// Checks every element, prints the worst |diff|, its share of the tolerance and the share of bit-identical elements.
void expect_close(const std::string& what, const std::vector<float>& ours, const std::vector<float>& ref, Tol tol) {
    REQUIRE(ours.size() == ref.size());
    const double abs_tol = tol.abs + tol.abs_of_rms * rms_of(ref);
    double worst = 0.0, worst_ratio = 0.0;
    size_t bad = 0, exact = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        double diff = std::fabs((double)ours[i] - ref[i]), allowed = abs_tol + tol.rel * std::fabs(ref[i]);
        exact += ours[i] == ref[i];
        if (!(diff <= allowed)) bad++;  // NaN counts as bad
        if (!(diff <= worst)) worst = diff;
        if (!(diff / allowed <= worst_ratio)) worst_ratio = diff / allowed;
    }
    printf("  %-44s n=%-6zu max|diff| %.2e  diff/tol %.3f  exact %5.1f%%\n", what.c_str(), ref.size(), worst,
           worst_ratio, 100.0 * exact / std::max<size_t>(ref.size(), 1));
    INFO(what << ": " << bad << " of " << ref.size() << " elements outside tolerance, worst diff/tol " << worst_ratio);
    CHECK(bad == 0);
}

bool bit_identical(const std::string& what, const std::vector<float>& a, const std::vector<float>& b) {
    bool same = a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    if (!same) {
        double worst = 0.0;
        for (size_t i = 0; i < std::min(a.size(), b.size()); i++) worst = std::max(worst, std::fabs((double)a[i] - b[i]));
        printf("  %s: not bit-identical (max|diff| %.3e)\n", what.c_str(), worst);
    }
    return same;
}

// test_cpu_model.cpp's BF16 tolerances (CPU BF16 vs HF bf16: 6% of the rms + 4 bf16 steps for activations, 0.1 for
// log-probs, 10% of the rms + 5% for gradients), widened by one half for one difference of the GPU's: its flash
// attention (kernels/attention.cu) rounds the UNNORMALIZED probabilities exp(s - max) to bf16 before P V and divides
// by the row sum in fp32 afterwards, where HF's eager attention rounds the normalized probabilities. Each attention
// output then moves by about an ulp (the first layer's output is 30% bit-identical to HF's, the CPU's 98%), and
// that cascades like any other bf16 flip. Observed on the H200: up to 1.35x the CPU's allowance on logits, 1.54x on
// log-probs (0.154, varlen vs the CPU backend), 1.58x on gradients (one element of tiny_untied's layer-2 gate_proj
// lora_B; the gradients get twice the CPU's allowance); the GPU is as far from the CPU as from HF.
const Tol HIDDEN_TOL = {0.0, 0.09, 1.5 / 64};
const Tol LOGITS_TOL = {0.0, 0.09, 1.5 / 64};
const Tol LOGP_TOL = {0.2, 0.0, 0.0};
const Tol GRAD_TOL = {0.0, 0.2, 0.1};

struct ModelDeleter {
    void operator()(GpuModel* m) const { gpu_model_destroy(m); }
};
typedef std::unique_ptr<GpuModel, ModelDeleter> ModelPtr;

GpuOptions quiet_options(int max_tokens) {
    GpuOptions opt;
    opt.max_tokens = max_tokens;
    opt.logits_chunk_rows = 32;  // several chunks even for the tiny batches
    opt.print_memory_plan = false;
    return opt;
}

// Completion positions (temperature 0.7 tensors) out of a [B, T-1] array.
std::vector<float> completion_columns(const RefModel& r, const std::vector<float>& all) {
    std::vector<float> out;
    for (int b = 0; b < r.B; b++)
        for (int t = r.P - 1; t < r.T - 1; t++) out.push_back(all[(size_t)b * (r.T - 1) + t]);
    return out;
}

// The LoRA tensors of a gradient buffer in the dump's naming, one call of f per tensor.
template <typename F>
void for_each_lora_tensor(const LoraWeights& layout, const std::vector<float>& flat, F f) {
    for (int l = 0; l < layout.model.L; l++)
        for (int s = 0; s < NUM_LINEAR; s++) {
            const LoraWeights::Slot& slot = layout.slots[l][s];
            if (!slot.present) continue;
            size_t na = (size_t)layout.lora.R * slot.in, nb = (size_t)slot.out * layout.lora.R;
            f(ref_lora_name(l, s, 'A'), std::vector<float>(flat.begin() + slot.a_offset, flat.begin() + slot.a_offset + na));
            f(ref_lora_name(l, s, 'B'), std::vector<float>(flat.begin() + slot.b_offset, flat.begin() + slot.b_offset + nb));
        }
}

// The dump's tensors PREFIX + "layers.N.<module>.lora_<A|B>" in the flat LoraWeights layout of `layout`.
std::vector<float> dump_flat(const RefModel& r, const LoraWeights& layout, const std::string& prefix) {
    std::vector<float> flat(layout.params.size(), 0.0f);
    for (int l = 0; l < layout.model.L; l++)
        for (int s = 0; s < NUM_LINEAR; s++) {
            const LoraWeights::Slot& slot = layout.slots[l][s];
            if (!slot.present) continue;
            std::vector<float> a = r.get(prefix + ref_lora_name(l, s, 'A')), b = r.get(prefix + ref_lora_name(l, s, 'B'));
            REQUIRE(a.size() == (size_t)layout.lora.R * slot.in);
            REQUIRE(b.size() == (size_t)slot.out * layout.lora.R);
            std::copy(a.begin(), a.end(), flat.begin() + slot.a_offset);
            std::copy(b.begin(), b.end(), flat.begin() + slot.b_offset);
        }
    return flat;
}

}  // namespace

TEST_CASE("gpu model: hidden states, logits and log-probs match HF bf16 and the CPU reference", "[gpu][gpu_model]") {
    for (const char* model : REF_MODELS) {
        RefModel r(model);
        const Qwen2Config& cfg = r.bf16.config;
        const int B = r.B, T = r.T, N = B * T, C = cfg.C, L = cfg.L;

        // the CPU reference in BF16 mode, once per model
        CpuActivations cpu_acts;
        cpu_forward_hidden(r.bf16, &r.lora, r.tokens.data(), B, T, CpuPrecision::BF16, &cpu_acts);
        std::vector<float> cpu_logits((size_t)N * cfg.V), cpu_logits_base(cpu_logits.size());
        cpu_forward_logits(r.bf16, &r.lora, r.tokens.data(), B, T, CpuPrecision::BF16, cpu_logits.data());
        cpu_forward_logits(r.bf16, nullptr, r.tokens.data(), B, T, CpuPrecision::BF16, cpu_logits_base.data());
        std::vector<float> cpu_logp_t1((size_t)B * (T - 1)), cpu_logp_t1_base(cpu_logp_t1.size());
        std::vector<float> cpu_logp_07(cpu_logp_t1.size()), cpu_ref_07(cpu_logp_t1.size());
        cpu_forward_logprobs(r.bf16, &r.lora, r.tokens.data(), B, T, 1.0f, CpuPrecision::BF16, cpu_logp_t1.data());
        cpu_forward_logprobs(r.bf16, nullptr, r.tokens.data(), B, T, 1.0f, CpuPrecision::BF16, cpu_logp_t1_base.data());
        cpu_forward_logprobs(r.bf16, &r.lora, r.tokens.data(), B, T, r.temperature, CpuPrecision::BF16, cpu_logp_07.data());
        cpu_forward_logprobs(r.bf16, nullptr, r.tokens.data(), B, T, r.temperature, CpuPrecision::BF16, cpu_ref_07.data());

        std::vector<std::vector<float>> bf16_results;  // every GPU output of the BF16 weights, for the NF4 run
        for (LinearFormat format : {LinearFormat::BF16, LinearFormat::NF4}) {
            printf("%s, GPU, %s linears:\n", model, linear_format_name(format));
            ModelPtr m(gpu_model_create(r.weights(format), r.lora, quiet_options(N)));
            std::vector<std::vector<float>> results;
            auto both = [&](const std::string& what, const std::vector<float>& ours, const std::vector<float>& hf,
                            const std::vector<float>& cpu, Tol tol) {
                expect_close(what + " vs HF", ours, hf, tol);
                expect_close(what + " vs CPU", ours, cpu, tol);
                results.push_back(ours);
            };
            GpuBatch all_rows, completion_rows;  // log-probs of every next token, or of the completion's only
            for (int b = 0; b < B; b++) {
                all_rows.add_sequence(r.sequence(b), 0, T - 1);
                completion_rows.add_sequence(r.sequence(b), r.P - 1, T - 1);
            }
            std::vector<float> logp;

            gpu_model_forward(m.get(), all_rows, true, 1.0f, &logp);
            std::vector<float> hf_hidden = r.get("hidden_states");
            REQUIRE(hf_hidden.size() == (size_t)(L + 2) * N * C);
            for (int i = 0; i <= L + 1; i++) {
                const std::vector<float>& cpu = i == 0 ? cpu_acts.layers[0].x
                                                : i <= L ? cpu_acts.layers[i - 1].out
                                                         : cpu_acts.final_norm;
                std::vector<float> hf(hf_hidden.begin() + (size_t)i * N * C, hf_hidden.begin() + (size_t)(i + 1) * N * C);
                both("hidden_states[" + std::to_string(i) + "]", gpu_model_hidden_state(m.get(), i), hf, cpu, HIDDEN_TOL);
            }
            both("logits", gpu_model_logits(m.get()), r.get("logits"), cpu_logits, LOGITS_TOL);
            both("logp_t1_lora", logp, r.get("logp_t1_lora"), cpu_logp_t1, LOGP_TOL);

            gpu_model_forward(m.get(), all_rows, false, 1.0f, &logp);
            both("logits_base", gpu_model_logits(m.get()), r.get("logits_base"), cpu_logits_base, LOGITS_TOL);
            both("logp_t1_base", logp, r.get("logp_t1_base"), cpu_logp_t1_base, LOGP_TOL);

            gpu_model_forward(m.get(), completion_rows, false, r.temperature, &logp);
            both("ref_logp (T 0.7, LoRA off)", logp, r.get("ref_logp"), completion_columns(r, cpu_ref_07), LOGP_TOL);
            gpu_model_forward(m.get(), completion_rows, true, r.temperature, &logp);
            both("logp (T 0.7, LoRA)", logp, r.get("logp"), completion_columns(r, cpu_logp_07), LOGP_TOL);

            // hf/ holds hf_orig/'s linears after the NF4 round trip and the GPU dequantizes bit-exactly, so the
            // NF4 model must reproduce the bf16 one bit for bit
            if (format == LinearFormat::BF16) {
                bf16_results = results;
            } else {
                REQUIRE(results.size() == bf16_results.size());
                for (size_t i = 0; i < results.size(); i++)
                    CHECK(bit_identical("NF4 vs BF16 output " + std::to_string(i), results[i], bf16_results[i]));
            }
        }
    }
}

TEST_CASE("gpu backend: LoRA gradients of the bnpo loss match HF bf16 and the CPU backend", "[gpu][gpu_model]") {
    for (const char* model : REF_MODELS) {
        RefModel r(model);
        const int Tc = r.T - r.P;
        std::vector<Rollout> rollouts = r.rollouts();
        std::vector<float> dloss = r.get("dloss_dlogp.bnpo");
        REQUIRE(dloss.size() == (size_t)r.B * Tc);

        std::unique_ptr<Backend> cpu = make_cpu_backend(r.bf16, r.lora);
        std::vector<float> cpu_logp;
        cpu->completion_logprobs(rollouts, Tc, r.temperature, true, true, &cpu_logp);
        cpu->backward(dloss);
        const std::vector<float> cpu_grads = cpu->lora().grads;

        std::vector<float> bf16_grads;
        for (LinearFormat format : {LinearFormat::BF16, LinearFormat::NF4}) {
            printf("%s, GPU backend, %s linears, bnpo gradients:\n", model, linear_format_name(format));
            std::unique_ptr<Backend> gpu = make_cuda_backend(r.weights(format), r.lora, quiet_options(r.B * r.T));
            std::vector<float> logp;
            gpu->completion_logprobs(rollouts, Tc, r.temperature, true, true, &logp);
            expect_close("logp vs HF", logp, r.get("logp"), LOGP_TOL);
            expect_close("logp vs CPU backend", logp, cpu_logp, LOGP_TOL);
            gpu->backward(dloss);
            const LoraWeights& lora = gpu->lora();
            std::vector<float> hf_grads = dump_flat(r, lora, "grad.");
            std::vector<std::vector<float>> hf_tensors, cpu_tensors;
            for_each_lora_tensor(lora, hf_grads, [&](const std::string&, std::vector<float> t) { hf_tensors.push_back(t); });
            for_each_lora_tensor(lora, cpu_grads, [&](const std::string&, std::vector<float> t) { cpu_tensors.push_back(t); });
            size_t i = 0;
            for_each_lora_tensor(lora, lora.grads, [&](const std::string& name, std::vector<float> ours) {
                expect_close("grad." + name + " vs HF", ours, hf_tensors[i], GRAD_TOL);
                expect_close("grad." + name + " vs CPU", ours, cpu_tensors[i], GRAD_TOL);
                i++;
            });
            if (format == LinearFormat::BF16) bf16_grads = lora.grads;
            else CHECK(bit_identical("NF4 vs BF16 gradients", lora.grads, bf16_grads));
        }
    }
}

TEST_CASE("gpu backend: varlen rollouts in one or several micro-batches give the CPU backend's results",
          "[gpu][gpu_model]") {
    for (const char* model : REF_MODELS) {
        RefModel r(model);
        const int V = r.bf16.config.V;
        // prompts and completions of different lengths: a one-token prompt, an empty completion (no log-probs,
        // no gradient), and one 90-token sequence that spans two of attention's 64-row tiles
        const int prompt_len[] = {1, 3, 8, 12, 20, 5, 2};
        const int completion_len[] = {16, 1, 0, 9, 70, 5, 33};
        const int R = 7, Tc = 70;
        Rng rng(4242);
        std::vector<std::vector<int32_t>> prompts(R);
        std::vector<Rollout> rollouts(R);
        int total = 0;
        for (int n = 0; n < R; n++) {
            for (int t = 0; t < prompt_len[n]; t++) prompts[n].push_back((int32_t)rng.next_below(V));
            rollouts[n].prompt = &prompts[n];
            for (int t = 0; t < completion_len[n]; t++) rollouts[n].completion.push_back((int32_t)rng.next_below(V));
            if (completion_len[n] > 0) total += prompt_len[n] + completion_len[n];
        }
        std::vector<float> dlogp((size_t)R * Tc);
        for (float& d : dlogp) d = rng.next_float() * 2.0f - 1.0f;

        std::unique_ptr<Backend> cpu = make_cpu_backend(r.bf16, r.lora);
        std::vector<float> cpu_logp;
        cpu->completion_logprobs(rollouts, Tc, r.temperature, true, true, &cpu_logp);
        cpu->backward(dlogp);
        const std::vector<float> cpu_grads = cpu->lora().grads;

        // one micro-batch of all 177 tokens, then budgets that split them into several (90 = the longest alone)
        std::vector<float> one_logp, one_grads;
        for (int max_tokens : {total, 100, 90}) {
            printf("%s, GPU backend, varlen, micro-batches of at most %d tokens:\n", model, max_tokens);
            std::unique_ptr<Backend> gpu = make_cuda_backend(r.nf4, r.lora, quiet_options(max_tokens));
            std::vector<float> logp, ref_logp;
            gpu->completion_logprobs(rollouts, Tc, r.temperature, true, true, &logp);
            for (int n = 0; n < R; n++)  // nothing is written past a completion's end
                for (int t = completion_len[n]; t < Tc; t++) CHECK(logp[(size_t)n * Tc + t] == 0.0f);
            expect_close("logp vs CPU backend", logp, cpu_logp, LOGP_TOL);
            // the GRPO loop's order: a reference forward (LoRA off, not kept) may run between the kept forward and
            // backward, so backward() must notice that the kept checkpoints are gone and recompute them
            gpu->completion_logprobs(rollouts, Tc, r.temperature, false, false, &ref_logp);
            gpu->backward(dlogp);
            std::vector<float> grads = gpu->lora().grads;
            std::vector<std::vector<float>> cpu_tensors;
            for_each_lora_tensor(r.lora, cpu_grads, [&](const std::string&, std::vector<float> t) { cpu_tensors.push_back(t); });
            size_t i = 0;
            for_each_lora_tensor(r.lora, grads, [&](const std::string& name, std::vector<float> ours) {
                expect_close("grad." + name + " vs CPU", ours, cpu_tensors[i++], GRAD_TOL);
            });
            if (max_tokens == total) {
                one_logp = logp;
                one_grads = grads;
                // the same calls on a fresh backend, backward straight after the kept forward: bit-identical
                // (every kernel is deterministic, and the resident micro-batch needs no re-forward)
                std::unique_ptr<Backend> again = make_cuda_backend(r.nf4, r.lora, quiet_options(max_tokens));
                again->completion_logprobs(rollouts, Tc, r.temperature, true, true, &logp);
                again->backward(dlogp);
                CHECK(bit_identical("log-probs, run twice", logp, one_logp));
                CHECK(bit_identical("gradients, with and without the re-forward", again->lora().grads, one_grads));
            } else {
                // sequences are independent, so each log-prob should not depend on its neighbours; a GEMM of another
                // row count may still pick another cuBLASLt kernel (another summation order), and the gradients
                // are summed per micro-batch first: a few bf16 flips at most, and fp32 sums in another order
                expect_close("logp vs one micro-batch", logp, one_logp, {2e-2, 0.0, 0.0});
                expect_close("gradients vs one micro-batch", grads, one_grads, {0.0, 1e-2, 1e-2});
                printf("  log-probs %s, gradients %s to one micro-batch\n",
                       logp == one_logp ? "bit-identical" : "close", grads == one_grads ? "bit-identical" : "close");
                // the fused pass (the GRPO loop's): each micro-batch's backward right after its forward. Its
                // forwards are the same launches, so the same log-probs; dlogp_of must be asked once for every
                // rollout with a completion, after its log-probs are in; the gradients are the same sums in
                // another micro-batch order
                std::unique_ptr<Backend> fused = make_cuda_backend(r.nf4, r.lora, quiet_options(max_tokens));
                std::vector<int> asked(R, 0);
                int calls = 0;
                bool filled = true;
                std::vector<float> fused_logp;
                fused->policy_logprobs_backward(
                    rollouts, Tc, r.temperature,
                    [&](const std::vector<int>& rows, const std::vector<float>& lp, std::vector<float>* d) {
                        calls++;
                        for (int n : rows) {
                            asked[n]++;
                            for (int t = 0; t < completion_len[n]; t++)
                                filled = filled && lp[(size_t)n * Tc + t] == logp[(size_t)n * Tc + t];
                            for (int t = 0; t < Tc; t++) (*d)[(size_t)n * Tc + t] = dlogp[(size_t)n * Tc + t];
                        }
                    },
                    &fused_logp);
                CHECK(calls > 1);  // these budgets cut the rollouts into several micro-batches
                CHECK(filled);
                for (int n = 0; n < R; n++) CHECK(asked[n] == (completion_len[n] > 0 ? 1 : 0));
                CHECK(bit_identical("log-probs, fused pass", fused_logp, logp));
                expect_close("gradients, fused pass vs forward then backward", fused->lora().grads, grads,
                             {0.0, 1e-3, 1e-3});
            }
        }
    }
}

TEST_CASE("gpu backend: three AdamW steps of the bnpo loss match HF bf16 and the CPU backend", "[gpu][gpu_model]") {
    for (const char* model : REF_MODELS) {
        RefModel r(model);
        const int B = r.B, Tc = r.T - r.P;
        std::vector<Rollout> rollouts = r.rollouts();
        std::vector<float> old_logp = r.get("old_logp"), ref_logp = r.get("ref_logp");
        std::vector<float> mask = r.get("completion_mask"), advantages = r.get("advantages");
        float num_items = 0;
        for (float m : mask) num_items += m;
        GrpoLossConfig loss_cfg;
        const JsonValue* loss_type = r.meta.get("train_loss_type");
        REQUIRE(loss_type);
        loss_cfg.loss_type = loss_type_from_name(loss_type->string);
        loss_cfg.beta = r.number("beta");
        loss_cfg.epsilon_low = r.number("epsilon_low");
        loss_cfg.epsilon_high = r.number("epsilon_high");
        loss_cfg.max_completion_length = (int)r.number("max_completion_length");
        AdamWConfig adamw;
        adamw.beta1 = r.meta.get("betas")->array[0].number;
        adamw.beta2 = r.meta.get("betas")->array[1].number;
        adamw.eps = r.number("adam_eps");
        adamw.weight_decay = r.number("weight_decay");

        std::unique_ptr<Backend> gpu = make_cuda_backend(r.nf4, r.lora, quiet_options(B * r.T));
        std::unique_ptr<Backend> cpu = make_cpu_backend(r.bf16, r.lora);
        double lr_sum = 0.0;
        for (int step = 1; step <= (int)r.number("adam_steps"); step++) {
            const JsonValue& want = r.meta.get("steps")->array[step - 1];
            double lr = cosine_schedule_lr(r.number("lr"), step - 1, (int64_t)r.number("warmup_steps"),
                                           (int64_t)r.number("training_steps"));
            lr_sum += lr;
            double loss[2], norm[2];
            Backend* backends[2] = {gpu.get(), cpu.get()};
            for (int k = 0; k < 2; k++) {
                std::vector<float> logp, dlogp((size_t)B * Tc);
                backends[k]->completion_logprobs(rollouts, Tc, r.temperature, true, true, &logp);
                loss[k] = grpo_loss(loss_cfg, B, Tc, logp.data(), old_logp.data(), ref_logp.data(), mask.data(),
                                    advantages.data(), num_items, dlogp.data()).loss;
                backends[k]->backward(dlogp);
                norm[k] = backends[k]->optimizer_step(lr, r.number("max_grad_norm"), adamw);
            }
            const double hf_loss = want.get("loss")->number, hf_norm = want.get("grad_norm")->number;
            printf("%s step %d (lr %g): loss GPU %.6f CPU %.6f HF %.6f, grad_norm GPU %.5f CPU %.5f HF %.5f\n", model,
                   step, lr, loss[0], loss[1], hf_loss, norm[0], norm[1], hf_norm);
            // the loss is ~1e-2 made of per-token terms ~1 that cancel, each moved by the log-probs' bf16 error
            // (observed vs HF: CPU 4e-3, GPU 1.3e-2); the norm sums every gradient (vs HF: CPU 1.5%, GPU 4.7%)
            CHECK(std::fabs(loss[0] - hf_loss) <= 0.02);
            CHECK(std::fabs(norm[0] - hf_norm) <= 0.08 * hf_norm);

            // Adam's update is about lr * sign(gradient) in the first steps, whatever the gradient's size, so a
            // gradient within its bf16 error of zero can flip its parameter's update: each parameter may be off by
            // up to about 2 * (sum of lr so far) (a little more: m/sqrt(v) can exceed 1 after the first step). What
            // must hold is that the steps move the adapters with HF's: ours end clearly closer to HF's than the
            // starting point is (a wrong lr, sign or schedule lands as far away as the start, or further). Observed
            // GPU vs HF after step 3: rms 2.3e-3 (CPU vs HF: 6e-4; the flash attention's rounding above flips more
            // small gradients); worst ratio to HF's own move expected at tiny_tied's step 2, where ~10% of the first
            // updates flip (about 0.65).
            const LoraWeights& ours = gpu->lora();
            const LoraWeights& theirs = cpu->lora();
            CHECK(ours.adam_step == step);
            const std::vector<float> hf_params = dump_flat(r, ours, "step" + std::to_string(step) + ".");
            double start_rms = 0.0;  // how far HF's adapters have moved from the start: what we must follow
            for (size_t i = 0; i < hf_params.size(); i++) start_rms += std::pow((double)r.lora.params[i] - hf_params[i], 2);
            start_rms = std::sqrt(start_rms / std::max<size_t>(hf_params.size(), 1));
            for (int vs = 0; vs < 2; vs++) {
                const std::vector<float>& ref = vs == 0 ? hf_params : theirs.params;  // the same flat layout
                REQUIRE(ref.size() == ours.params.size());
                double worst = 0.0, ss = 0.0;
                size_t total = ref.size();
                for (size_t i = 0; i < total; i++) {
                    double d = std::fabs((double)ours.params[i] - ref[i]);
                    worst = std::max(worst, d);
                    ss += d * d;
                }
                double rms = std::sqrt(ss / std::max<size_t>(total, 1));
                printf("  LoRA after step %d vs %s: max|diff| %.3g (lr sum %.3g), rms %.3g (HF's move from the start: "
                       "rms %.3g)\n", step, vs == 0 ? "HF" : "CPU", worst, lr_sum, rms, start_rms);
                CHECK(worst <= 2.5 * lr_sum + 1e-6);
                CHECK(rms <= 0.8 * start_rms + 1e-7);
            }
        }
    }
}

TEST_CASE("gpu model: the printed memory plan is what cudaMalloc takes, and what does not fit says so",
          "[gpu][gpu_model]") {
    Qwen2Weights weights = load_hf_dir(REF_DIR + "tiny_untied/hf_orig", LinearFormat::NF4);
    LoraConfig lc;
    lc.R = 8;
    LoraWeights lora = lora_create(weights.config, lc);
    GpuOptions opt;
    opt.max_tokens = 8192;
    cudaCheck(cudaFree(0));  // the context exists before the first measurement
    size_t free_before = 0, free_after = 0, total = 0;
    cudaCheck(cudaMemGetInfo(&free_before, &total));
    ModelPtr m(gpu_model_create(weights, lora, opt));  // prints the table
    cudaCheck(cudaMemGetInfo(&free_after, &total));
    const double planned = (double)gpu_model_memory_plan(m.get()).total(), taken = (double)free_before - free_after;
    printf("memory plan total %.1f MiB, cudaMemGetInfo sees %.1f MiB taken\n", planned / 1048576.0, taken / 1048576.0);
    // the driver hands out whole 2 MiB pages per allocation, and cuBLASLt's handles and the kernels' modules
    // (loaded on first launch) take a few MiB more
    CHECK(std::fabs(taken - planned) <= 64.0 * 1048576.0);
    m.reset();

    opt.max_tokens = 1 << 27;  // ~0.6 TB of activations for this model
    opt.print_memory_plan = false;
    std::string message = error_of([&] { gpu_model_create(weights, lora, opt); });
    INFO(message);
    CHECK(message.find("GPU out of memory: the activations and scratch need") != std::string::npos);
    CHECK(message.find("max_tokens") != std::string::npos);
    // and the failure left nothing behind: a model of the first size still fits
    opt.max_tokens = 8192;
    ModelPtr again(gpu_model_create(weights, lora, opt));
    CHECK(again != nullptr);
}

TEST_CASE("gpu model: the memory plan of Qwen2.5-7B with QLoRA r 32 (arithmetic only)", "[gpu_model]") {
    Qwen2Config cfg = qwen2_preset("7B");
    WeightPlan plan = weight_plan(cfg, LinearFormat::NF4);
    LoraConfig lc;  // r 32, alpha 32, all seven linears: train_grpo's defaults
    GpuOptions opt;
    Nf4LinearSizes nf4;
    for (int s = 0; s < NUM_LINEAR; s++) {
        const int64_t elements = linear_out_features(cfg, s) * linear_in_features(cfg, s);
        nf4.largest = std::max(nf4.largest, elements);
        nf4.copy_bytes += (size_t)cfg.L * (((size_t)elements * 2 + 255) / 256 * 256);
    }
    GpuMemoryPlan mem = gpu_memory_plan(cfg, plan.total_bytes, nf4, lc, opt);
    printf("Qwen2.5-7B, NF4, %d tokens per micro-batch (a step of 48 rollouts x 328 tokens = 15744 fits in one):\n%s",
           opt.max_tokens, gpu_memory_plan_table(mem).c_str());
    CHECK(mem.total() < (size_t)40 << 30);  // leaves an H200 (141 GB) room for the generation's KV cache
    // with the bf16 base copy: 12.2 GiB more, less the dequantization scratch it makes unnecessary
    GpuOptions with_copy = opt;
    with_copy.bf16_base_copy = true;
    GpuMemoryPlan copy = gpu_memory_plan(cfg, plan.total_bytes, nf4, lc, with_copy);
    printf("with the bf16 base copy:\n%s", gpu_memory_plan_table(copy).c_str());
    CHECK(copy.base_copy_bytes == nf4.copy_bytes);
    CHECK(nf4.copy_bytes > (size_t)12 << 30);
    CHECK(copy.total() == mem.total() + nf4.copy_bytes - ((size_t)nf4.largest * 2 + 255) / 256 * 256);
}

TEST_CASE("gpu backend: time a GRPO step's log-probs and backward at Qwen2.5-0.5B's shape (random weights)",
          "[.][gpu_model]") {
    // Hidden (run it with the [gpu_model] filter): it measures the choice backward() makes. The kept micro-batch's
    // checkpoints let backward() skip a forward; when another forward ran in between (the reference model), it
    // recomputes one. 48 rollouts of 128 + 200 tokens (15744, one micro-batch), bf16 linears.
    Qwen2Config cfg = qwen2_preset("0.5B");
    WeightPlan plan = weight_plan(cfg, LinearFormat::BF16);
    std::shared_ptr<uint8_t> buffer = weights_alloc(plan);
    Rng rng(7);
    for (const PlannedTensor& t : plan.tensors) {
        bf16_bits* p = (bf16_bits*)(buffer.get() + t.offset);
        const bool norm = t.name.find("norm") != std::string::npos;
        for (size_t i = 0; i < t.bytes / sizeof(bf16_bits); i++)
            p[i] = f32_to_bf16(norm ? 1.0f : (float)((int64_t)(rng.next_u64() >> 40) - (1 << 23)) * (0.04f / (1 << 23)));
    }
    Qwen2Weights weights = weights_from_buffer(plan, buffer.get(), buffer.get(), buffer);
    LoraWeights lora = lora_create(cfg, LoraConfig());
    lora_init_peft(&lora, 1);
    std::fill(lora.params.begin(), lora.params.end(), 0.01f);  // B != 0, so every gradient path is live
    GpuOptions opt;
    opt.print_memory_plan = true;
    std::unique_ptr<Backend> gpu = make_cuda_backend(weights, lora, opt);

    const int num_prompts = 8, G = 6, Tp = 128, Tc = 200;
    std::vector<std::vector<int32_t>> prompts(num_prompts, std::vector<int32_t>(Tp));
    for (auto& p : prompts)
        for (int32_t& id : p) id = (int32_t)rng.next_below(cfg.V);
    std::vector<Rollout> rollouts;
    for (const auto& p : prompts)
        for (int g = 0; g < G; g++) {
            Rollout r;
            r.prompt = &p;
            for (int t = 0; t < Tc; t++) r.completion.push_back((int32_t)rng.next_below(cfg.V));
            rollouts.push_back(r);
        }
    std::vector<float> logp, ref_logp, dlogp(rollouts.size() * Tc, 1e-3f);
    auto ms_since = [](std::chrono::steady_clock::time_point t0) {
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    };
    for (int rep = 0; rep < 2; rep++) {  // the first pass pays cuBLASLt's algorithm choices
        auto t0 = std::chrono::steady_clock::now();
        gpu->completion_logprobs(rollouts, Tc, 1.0f, false, false, &ref_logp);
        double ref_ms = ms_since(t0);
        t0 = std::chrono::steady_clock::now();
        gpu->completion_logprobs(rollouts, Tc, 1.0f, true, true, &logp);
        double fwd_ms = ms_since(t0);
        t0 = std::chrono::steady_clock::now();
        gpu->backward(dlogp);
        double bwd_resident_ms = ms_since(t0);
        gpu->completion_logprobs(rollouts, Tc, 1.0f, false, false, &ref_logp);  // evicts the kept checkpoints
        t0 = std::chrono::steady_clock::now();
        gpu->backward(dlogp);
        double bwd_recompute_ms = ms_since(t0);
        t0 = std::chrono::steady_clock::now();
        float norm = gpu->optimizer_step(1e-6, 0.1, AdamWConfig());
        double opt_ms = ms_since(t0);
        printf("0.5B, %zu rollouts x %d tokens: ref forward %.1f ms, policy forward %.1f ms, backward %.1f ms with "
               "the kept checkpoints, %.1f ms with a re-forward, optimizer %.1f ms (grad norm %.3g)\n",
               rollouts.size(), Tp + Tc, ref_ms, fwd_ms, bwd_resident_ms, bwd_recompute_ms, opt_ms, norm);
        CHECK(std::isfinite(norm));
        CHECK(std::all_of(logp.begin(), logp.end(), [](float x) { return std::isfinite(x); }));
    }
}
