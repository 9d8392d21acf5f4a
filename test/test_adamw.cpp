// test_adamw.cpp: clip_grad_norm_, AdamW and the cosine schedule (lora/adamw.cpp) replaying the three optimizer steps of the PyTorch reference dumps.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "data/json.h"
#include "data/rng.h"
#include "data/text.h"
#include "lora/adamw.h"
#include "lora/lora.h"
#include "lora/peft.h"
#include "model/config.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "test/test_util.h"

static double meta_number(const JsonValue& obj, const std::string& key) {
    const JsonValue* v = obj.get(key);
    if (!v || !v->is_number()) throw GrpoError("dump meta: missing number " + key);
    return v->number;
}

// The dump's LoRA settings.
static LoraConfig dump_lora_config(const JsonValue& meta) {
    const JsonValue* lora = meta.get("lora");
    if (!lora) throw GrpoError("dump meta: missing lora");
    LoraConfig cfg;
    cfg.R = (int)meta_number(*lora, "r");
    cfg.alpha = (float)meta_number(*lora, "lora_alpha");
    const JsonValue* rs = lora->get("use_rslora");
    cfg.rslora = rs && rs->boolean;
    return cfg;
}

// Copies every dumped LoRA tensor PREFIX<name> into w's params or grads.
static void fill_from_dump(LoraWeights* w, const SafetensorsFile& dump, const std::string& prefix, std::vector<float>* buffer) {
    for (int l = 0; l < w->model.L; l++) {
        for (int s = 0; s < NUM_LINEAR; s++) {
            for (char matrix : {'A', 'B'}) {
                std::vector<float> values = tensor_to_f32(dump.get(prefix + ref_lora_name(l, s, matrix)));
                const LoraWeights::Slot& slot = w->slots[l][s];
                REQUIRE(values.size() == (matrix == 'A' ? (size_t)w->lora.R * slot.in : (size_t)slot.out * w->lora.R));
                memcpy(buffer->data() + (matrix == 'A' ? slot.a_offset : slot.b_offset), values.data(), values.size() * sizeof(float));
            }
        }
    }
}

// Distance in units in the last place between two floats (0 when equal).
static int64_t ulp_distance(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if (ia < 0) ia = INT32_MIN - ia;  // map the float order onto the integer order
    if (ib < 0) ib = INT32_MIN - ib;
    return std::llabs((int64_t)ia - (int64_t)ib);
}

TEST_CASE("adamw: clip + cosine schedule + AdamW replay the reference's three steps", "[adamw]") {
    for (const char* model_name : {"tiny_tied", "tiny_untied"}) {
        for (const char* dtype : {"float32", "bfloat16"}) {
            const std::string dir = REF_DIR + model_name;
            SafetensorsFile dump(dir + "/dump_" + dtype + ".safetensors");
            const JsonValue meta = json_parse(dump.metadata().at("meta"), dump.path());
            Qwen2Config cfg = qwen2_config_load(dir + "/hf");
            LoraWeights w = lora_create(cfg, dump_lora_config(meta));
            fill_from_dump(&w, dump, "step0.", &w.params);

            AdamWConfig adam;
            const JsonValue* betas = meta.get("betas");
            REQUIRE(betas);
            adam.beta1 = betas->array.at(0).number;
            adam.beta2 = betas->array.at(1).number;
            adam.eps = meta_number(meta, "adam_eps");
            adam.weight_decay = meta_number(meta, "weight_decay");
            const double base_lr = meta_number(meta, "lr"), max_norm = meta_number(meta, "max_grad_norm");
            const int64_t warmup = (int64_t)meta_number(meta, "warmup_steps"), total = (int64_t)meta_number(meta, "training_steps");
            const JsonValue* steps = meta.get("steps");
            REQUIRE(steps);
            REQUIRE(steps->array.size() == 3);

            for (int k = 1; k <= 3; k++) {
                INFO(model_name << " " << dtype << " step " << k);
                const JsonValue& step_meta = steps->array[k - 1];
                fill_from_dump(&w, dump, "step" + std::to_string(k) + "_grad.", &w.grads);
                float grad_norm = lora_clip_grad_norm(&w, max_norm);
                // torch sums the squares in fp32 on the GPU in its own order (per tensor, then across tensors):
                // a few fp32 ulps of a sum of ~10^4 positive terms; 1e-6 relative bounds that with margin.
                double ref_norm = meta_number(step_meta, "grad_norm");
                CHECK(std::fabs(grad_norm - ref_norm) <= 1e-6 * ref_norm);
                // The schedule is double arithmetic on both sides (Python floats, libm's cos): exact.
                double lr = cosine_schedule_lr(base_lr, k - 1, warmup, total);
                CHECK(lr == meta_number(step_meta, "lr"));
                lora_adamw_step(&w, adam, lr);
                CHECK(w.adam_step == k);

                size_t mismatches = 0, count = 0;
                int64_t worst_ulps = 0;
                double worst_abs = 0.0;
                for (int l = 0; l < cfg.L; l++) {
                    for (int s = 0; s < NUM_LINEAR; s++) {
                        for (char matrix : {'A', 'B'}) {
                            std::vector<float> ref = tensor_to_f32(dump.get("step" + std::to_string(k) + "." + ref_lora_name(l, s, matrix)));
                            const float* ours = matrix == 'A' ? w.A(l, s) : w.B(l, s);
                            for (size_t i = 0; i < ref.size(); i++) {
                                worst_abs = std::max(worst_abs, std::fabs((double)ours[i] - ref[i]));
                                worst_ulps = std::max(worst_ulps, ulp_distance(ours[i], ref[i]));
                                mismatches += ours[i] != ref[i];
                                count++;
                            }
                        }
                    }
                }
                // Bit for bit: adamw_update repeats torch's foreach CUDA kernels operation by operation (scalars
                // in double, nvcc's fused multiply-adds as std::fma), and each of those is an IEEE-exact fp32
                // operation. The one input computed differently is the clip coefficient (from a norm summed in
                // another order); it came out equal here. Had it moved by one ulp, parameters would move by up to
                // one ulp of their magnitude (1.5e-8, measured by nudging it), and this check would say so.
                INFO(mismatches << " of " << count << " parameters differ; worst " << worst_ulps << " ulps, " << worst_abs << " absolute");
                CHECK(mismatches == 0);
            }
        }
    }
}

TEST_CASE("adamw: the cosine schedule's spec points and the warmup ratio", "[adamw]") {
    const double base = 5e-6;
    // warmup: linear from 0, reaching base at step == warmup
    CHECK(cosine_schedule_lr(base, 0, 10, 100) == 0.0);
    CHECK(cosine_schedule_lr(base, 5, 10, 100) == base * 0.5);
    CHECK(cosine_schedule_lr(base, 10, 10, 100) == base);
    // half-way through the decay the cosine is cos(pi/2) ~ 6e-17, so the rate is base/2 to rounding
    CHECK(std::fabs(cosine_schedule_lr(base, 55, 10, 100) - base * 0.5) <= 1e-15 * base);
    // the last scheduled step is cos(pi) = -1 exactly: zero
    CHECK(cosine_schedule_lr(base, 100, 10, 100) == 0.0);
    // no warmup: the first update already runs at the full rate (max(1, warmup) avoids 0/0)
    CHECK(cosine_schedule_lr(base, 0, 0, 100) == base);
    // strictly decreasing after warmup
    for (int64_t s = 10; s < 100; s++) CHECK(cosine_schedule_lr(base, s + 1, 10, 100) < cosine_schedule_lr(base, s, 10, 100));

    // ceil(ratio * steps) with Python's float rounding: 100 * 0.07 is 7.000000000000001, so ceil gives 8
    CHECK(warmup_steps_from_ratio(0.1, 250) == 25);
    CHECK(warmup_steps_from_ratio(0.07, 100) == 8);
    CHECK(warmup_steps_from_ratio(0.1, 5) == 1);
    CHECK(warmup_steps_from_ratio(0.0, 100) == 0);
}

TEST_CASE("adamw: clipping scales to max_norm only when above it, and returns the norm before", "[adamw]") {
    Rng rng(7);
    std::vector<size_t> sizes = {3, 1000, 17, 250};
    std::vector<float> g(1270);
    for (float& x : g) x = 2.0f * rng.next_float() - 1.0f;
    double exact = 0.0;  // the independent oracle: one double sum over everything
    for (float x : g) exact += (double)x * x;
    exact = std::sqrt(exact);
    // only the fp32 roundings of the per-tensor norms and of the total: a few ulps
    CHECK(std::fabs(grad_global_norm(g.data(), sizes) - exact) <= 1e-6 * exact);

    std::vector<float> unclipped = g;
    float total = clip_grad_norm(unclipped.data(), sizes, 2.0 * exact);
    CHECK(std::fabs(total - exact) <= 1e-6 * exact);
    CHECK(unclipped == g);  // coefficient clamped to 1: untouched bit for bit

    std::vector<float> clipped = g;
    total = clip_grad_norm(clipped.data(), sizes, 0.1);
    CHECK(std::fabs(total - exact) <= 1e-6 * exact);
    // max_norm / (total + 1e-6): the 1e-6 lowers the result by 1e-6/total relative, plus fp32 rounding (1e-6)
    double after = grad_global_norm(clipped.data(), sizes);
    CHECK(std::fabs(after - 0.1) <= 0.1 * (1e-6 / exact + 1e-6));
}

TEST_CASE("adamw: twenty steps agree with the textbook formula in double", "[adamw]") {
    // An independent oracle: Loshchilov & Hutter's AdamW in double, with bias-corrected moments.
    AdamWConfig cfg;
    cfg.beta1 = 0.9, cfg.beta2 = 0.99, cfg.eps = 1e-8, cfg.weight_decay = 0.1;
    const size_t n = 512;
    Rng rng(11);
    std::vector<float> p(n), g(n), m(n, 0.0f), v(n, 0.0f);
    std::vector<double> pd(n), md(n, 0.0), vd(n, 0.0);
    for (size_t i = 0; i < n; i++) pd[i] = p[i] = rng.next_float() - 0.5f;
    double worst = 0.0;
    for (int64_t t = 1; t <= 20; t++) {
        double lr = cosine_schedule_lr(1e-2, t - 1, 3, 20);
        // every seventh gradient tiny, so that eps matters there
        for (size_t i = 0; i < n; i++) g[i] = (rng.next_float() - 0.5f) * (i % 7 == 0 ? 1e-6f : 1.0f);
        adamw_update(p.data(), g.data(), m.data(), v.data(), n, cfg, lr, t);
        for (size_t i = 0; i < n; i++) {
            pd[i] *= 1.0 - lr * cfg.weight_decay;
            md[i] = cfg.beta1 * md[i] + (1.0 - cfg.beta1) * g[i];
            vd[i] = cfg.beta2 * vd[i] + (1.0 - cfg.beta2) * (double)g[i] * g[i];
            double mhat = md[i] / (1.0 - std::pow(cfg.beta1, (double)t)), vhat = vd[i] / (1.0 - std::pow(cfg.beta2, (double)t));
            pd[i] -= lr * mhat / (std::sqrt(vhat) + cfg.eps);
            worst = std::max(worst, std::fabs(p[i] - pd[i]));
        }
    }
    // |p| <= 0.6, whose fp32 ulp is 6e-8: each step adds at most a few ulps of rounding to the drift
    INFO("worst |fp32 - double| after 20 steps: " << worst);
    CHECK(worst <= 20 * 4 * 6e-8);
}

TEST_CASE("adamw: the optimizer state file restores step, m and v exactly", "[adamw]") {
    LoraConfig lc;
    lc.R = 4;
    LoraWeights w = lora_create(qwen2_preset("tiny"), lc);
    Rng rng(3);
    for (size_t i = 0; i < w.num_params(); i++) {
        w.adam_m[i] = rng.next_float() - 0.5f;
        w.adam_v[i] = rng.next_float() * 1e-3f;
    }
    w.adam_step = 17;
    char tmpl[] = "/tmp/grpo_adamw_XXXXXX";
    REQUIRE(mkdtemp(tmpl));
    const std::string path = std::string(tmpl) + "/optimizer.safetensors";
    adamw_state_save(path, w);
    LoraWeights back = lora_create(qwen2_preset("tiny"), lc);
    adamw_state_load(path, &back);
    CHECK(back.adam_step == 17);
    CHECK(back.adam_m == w.adam_m);
    CHECK(back.adam_v == w.adam_v);

    lc.R = 8;  // another rank: refused, naming the file and both ranks
    LoraWeights other = lora_create(qwen2_preset("tiny"), lc);
    CHECK_THROWS_WITH(adamw_state_load(path, &other), Catch::Contains(path) && Catch::Contains("r=4") && Catch::Contains("r=8"));
    std::filesystem::remove_all(tmpl);
}
