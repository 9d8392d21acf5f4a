// test_grpo_step.cpp: three whole GRPO training steps on the CPU reference (forward, loss, backward, clipping, AdamW) against HF + PEFT + TRL's.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "data/json.h"
#include "lora/adamw.h"
#include "lora/peft.h"
#include "model/cpu_model.h"
#include "model/grpo_loss.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "test/test_util.h"

namespace {

std::vector<float> floats(const SafetensorsFile& dump, const std::string& name) {
    return tensor_to_f32(dump.get(name));
}

}  // namespace

// Everything below runs in FP32 against dump_float32, where HF ran the same weights in fp32: the only
// differences left are summation orders, so this checks that the pieces are wired together as TRL's are
// (which log-probs the loss sees, the temperature, the normalizer, clipping before AdamW, the schedule).
TEST_CASE("three GRPO steps on the CPU reference match HF + PEFT + TRL", "[grpo_step]") {
    for (const char* model : REF_MODELS) {
        const std::string root = REF_DIR + model;
        SafetensorsFile dump(root + "/dump_float32.safetensors");
        JsonValue meta = json_parse(dump.metadata().at("meta"), root + " meta");
        const int B = (int)meta.get("B")->number, T = (int)meta.get("T")->number, P = (int)meta.get("P")->number;
        const int Tc = T - P;
        const float temperature = (float)meta.get("temperature")->number;

        Qwen2Weights weights = load_hf_dir(root + "/hf", LinearFormat::BF16);
        LoraWeights lora = peft_load(root + "/adapter", weights.config);
        std::vector<int32_t> tokens(B * T);
        memcpy(tokens.data(), dump.get("input_ids").data, tokens.size() * sizeof(int32_t));
        std::vector<float> old_logp = floats(dump, "old_logp"), ref_logp = floats(dump, "ref_logp");
        std::vector<float> mask = floats(dump, "completion_mask"), advantages = floats(dump, "advantages");
        float num_items = 0;
        for (float m : mask) num_items += m;

        GrpoLossConfig loss_cfg;
        loss_cfg.loss_type = loss_type_from_name(meta.get("train_loss_type")->string);
        loss_cfg.beta = meta.get("beta")->number;
        loss_cfg.epsilon_low = meta.get("epsilon_low")->number;
        loss_cfg.epsilon_high = meta.get("epsilon_high")->number;
        loss_cfg.max_completion_length = (int)meta.get("max_completion_length")->number;
        AdamWConfig adamw;
        adamw.beta1 = meta.get("betas")->array[0].number;
        adamw.beta2 = meta.get("betas")->array[1].number;
        adamw.eps = meta.get("adam_eps")->number;
        adamw.weight_decay = meta.get("weight_decay")->number;

        for (int step = 1; step <= (int)meta.get("adam_steps")->number; step++) {
            const JsonValue& want = meta.get("steps")->array[step - 1];
            CpuActivations acts;
            std::vector<float> all((size_t)B * (T - 1)), logp((size_t)B * Tc), dlogp((size_t)B * Tc);
            cpu_forward_logprobs(weights, &lora, tokens.data(), B, T, temperature, CpuPrecision::FP32, all.data(), &acts);
            for (int b = 0; b < B; b++)  // the completion's log-probs start at position P - 1
                memcpy(&logp[b * Tc], &all[b * (T - 1) + P - 1], Tc * sizeof(float));
            GrpoLossResult result = grpo_loss(loss_cfg, B, Tc, logp.data(), old_logp.data(), ref_logp.data(),
                                              mask.data(), advantages.data(), num_items, dlogp.data());
            std::vector<float> dall(all.size(), 0.0f);
            for (int b = 0; b < B; b++) memcpy(&dall[b * (T - 1) + P - 1], &dlogp[b * Tc], Tc * sizeof(float));
            cpu_backward_logprobs(weights, &lora, acts, dall.data());
            float grad_norm = lora_clip_grad_norm(&lora, meta.get("max_grad_norm")->number);
            double lr = cosine_schedule_lr(meta.get("lr")->number, step - 1, (int64_t)meta.get("warmup_steps")->number,
                                           (int64_t)meta.get("training_steps")->number);
            lora_adamw_step(&lora, adamw, lr);
            std::fill(lora.grads.begin(), lora.grads.end(), 0.0f);

            // The loss is ~1e-3 made of per-token terms ~1 that cancel; log-probs agree to ~5e-6 (test_cpu_model),
            // so 3e-5 absolute. The gradient norm is a sum over all LoRA gradients, each within ~1e-4 relative.
            double loss_err = std::fabs(result.loss - want.get("loss")->number);
            double norm_err = std::fabs(grad_norm - want.get("grad_norm")->number) / want.get("grad_norm")->number;
            CHECK(lr == want.get("lr")->number);
            // Adam divides by sqrt(v), so a parameter's update hardly depends on its gradient's size: gradients
            // that agree to 1e-4 relative give updates that agree to about lr * 1e-4. A gradient within its error of
            // zero can flip the update's sign, so a handful of parameters may differ by up to 2 * lr; count those.
            double worst = 0;
            size_t beyond = 0, total = 0;
            for (int l = 0; l < weights.config.L; l++) {
                for (int s = 0; s < NUM_LINEAR; s++) {
                    for (char which : {'A', 'B'}) {
                        std::vector<float> ref = floats(dump, "step" + std::to_string(step) + "." + ref_lora_name(l, s, which));
                        const float* ours = which == 'A' ? lora.A(l, s) : lora.B(l, s);
                        for (size_t i = 0; i < ref.size(); i++) {
                            double d = std::fabs(ours[i] - ref[i]);
                            worst = std::max(worst, d);
                            beyond += d > 1e-6 + 1e-3 * lr;
                            total++;
                        }
                    }
                }
            }
            printf("[grpo_step] %s step %d: loss err %.2g, grad_norm rel err %.2g, lr %g, LoRA max |diff| %.2g, "
                   "%zu of %zu beyond 1e-6 + 1e-3*lr\n", model, step, loss_err, norm_err, lr, worst, beyond, total);
            CHECK(loss_err <= 3e-5);
            CHECK(norm_err <= 1e-3);
            CHECK(worst <= 2 * lr + 1e-6);
            CHECK(beyond <= total / 1000);
        }
    }
}
