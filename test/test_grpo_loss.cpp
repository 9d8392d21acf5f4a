// test_grpo_loss.cpp: GRPO advantages, completion masks, every loss type with its gradient and the logged metrics, against the TRL dumps of dev/ref/qwen2_grpo_ref.py and hand-made cases.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <string>
#include <vector>

#include "data/json.h"
#include "data/text.h"
#include "model/grpo_loss.h"
#include "model/safetensors.h"
#include "test/test_util.h"

namespace {

const char* const DUMP_DTYPES[] = {"bfloat16", "float32"};
const char* const LOSS_NAMES[] = {"grpo", "bnpo", "dr_grpo", "dapo"};

std::string dump_path(const std::string& model, const std::string& dtype) {
    return REF_DIR + model + "/dump_" + dtype + ".safetensors";
}

std::vector<float> f32_tensor(const SafetensorsFile& file, const std::string& name, size_t expect_numel) {
    const TensorView& view = file.get(name);
    REQUIRE(view.dtype == "F32");
    REQUIRE((size_t)view.numel() == expect_numel);
    std::vector<float> out(expect_numel);
    std::memcpy(out.data(), view.data, view.nbytes);
    return out;
}

// Tolerance |ours - ref| <= abs + rel * |ref|, with the worst use of it kept for the summary line.
struct Tolerance {
    double abs, rel;
    double worst_error = 0.0, worst_fraction = 0.0;  // fraction of the allowed error used
    size_t compared = 0;
    bool ok(double ours, double ref) {
        double error = std::fabs(ours - ref), allowed = abs + rel * std::fabs(ref);
        compared++;
        worst_error = std::max(worst_error, error);
        worst_fraction = std::max(worst_fraction, error / allowed);
        return error <= allowed;
    }
};

// The inputs of TRL's loss as the dump holds them ([B, T - P] completion tokens).
struct LossDump {
    std::string where;
    int B = 0, Tc = 0;
    JsonValue meta;
    std::vector<float> logp, old_logp, ref_logp, mask, advantages;
    GrpoLossConfig config(LossType type) const {
        GrpoLossConfig c;
        c.loss_type = type;
        c.beta = meta.get("beta")->number;
        c.epsilon_low = meta.get("epsilon_low")->number;
        c.epsilon_high = meta.get("epsilon_high")->number;
        c.max_completion_length = (int)meta.get("max_completion_length")->number;
        c.grad_accum_steps = 1;  // the reference script does one backward per step
        return c;
    }
    float mask_sum() const {
        float n = 0.0f;
        for (float m : mask) n += m;
        return n;
    }
};

LossDump load_loss_dump(const SafetensorsFile& file, const std::string& where) {
    LossDump d;
    d.where = where;
    d.meta = json_parse(file.metadata().at("meta"), where + " meta");
    d.B = (int)d.meta.get("B")->number;
    d.Tc = (int)(d.meta.get("T")->number - d.meta.get("P")->number);
    size_t n = (size_t)d.B * d.Tc;
    d.logp = f32_tensor(file, "logp", n);
    d.old_logp = f32_tensor(file, "old_logp", n);
    d.ref_logp = f32_tensor(file, "ref_logp", n);
    d.mask = f32_tensor(file, "completion_mask", n);
    d.advantages = f32_tensor(file, "advantages", d.B);
    return d;
}

}  // namespace

// ---- the dumps -------------------------------------------------------------------------------------------

TEST_CASE("every loss type and its gradient match TRL's, both models, both dtypes", "[grpo]") {
    // Loss: ours and torch's run the same fp32 elementwise ops on the same fp32 inputs; they differ in expf's
    // last bit (glibc vs CUDA, <= 2 ulp) and in how the masked sum is rounded. That sum adds per-token terms of
    // size |A|·ratio ~ 1 that cancel down to a loss of ~1e-3, so torch's fp32 rounding is a few ulps of the
    // terms (ulp(1) = 1.2e-7 per add, / the token count) rather than of the result (we sum in double):
    // abs 2e-7 + rel 2e-6.
    Tolerance loss_tol{2e-7, 2e-6};
    // Gradient: per element the same fp32 chain (scale · mask · A · ratio, plus the KL terms) with no sum
    // over tokens; autograd may add the three contributions to d logp in another order and CUDA's expf may
    // differ by an ulp or two: rel 2e-6 (~16 ulp), abs 1e-10 for values that cancel towards 0 (the
    // gradients are ~1e-3..1e-1, and exactly 0 on masked tokens).
    Tolerance grad_tol{1e-10, 2e-6};
    for (const char* model : REF_MODELS) {
        for (const char* dtype : DUMP_DTYPES) {
            std::string path = dump_path(model, dtype);
            SafetensorsFile file(path);
            LossDump d = load_loss_dump(file, path);
            const JsonValue* losses = d.meta.get("losses");
            REQUIRE(losses != nullptr);
            for (const char* name : LOSS_NAMES) {
                INFO(path << " loss_type " << name);
                GrpoLossConfig config = d.config(loss_type_from_name(name));
                std::vector<float> grad(d.logp.size());
                // dapo's num_items_in_batch: the reference has one micro-batch, so its own token count
                GrpoLossResult r = grpo_loss(config, d.B, d.Tc, d.logp.data(), d.old_logp.data(), d.ref_logp.data(),
                                             d.mask.data(), d.advantages.data(), d.mask_sum(), grad.data());
                double ref_loss = losses->get(name)->number;
                INFO("loss " << r.loss << " vs " << ref_loss);
                CHECK(loss_tol.ok(r.loss, ref_loss));
                std::vector<float> ref_grad = f32_tensor(file, std::string("dloss_dlogp.") + name, d.logp.size());
                size_t bad = 0;
                for (size_t i = 0; i < grad.size(); i++)
                    if (!grad_tol.ok(grad[i], ref_grad[i])) {
                        bad++;
                        UNSCOPED_INFO("d loss/d logp[" << i << "] = " << grad[i] << " vs " << ref_grad[i]);
                    }
                CHECK(bad == 0);
            }
        }
    }
    std::printf("[grpo] %zu losses vs TRL: worst |err| %.3g (%.0f%% of tolerance); %zu gradient values: worst |err| "
                "%.3g (%.0f%% of tolerance)\n",
                loss_tol.compared, loss_tol.worst_error, 100 * loss_tol.worst_fraction, grad_tol.compared,
                grad_tol.worst_error, 100 * grad_tol.worst_fraction);
}

TEST_CASE("advantages from rewards match TRL's for scale_rewards group, batch and none", "[grpo]") {
    // fp32 (r - mean) / (std + 1e-4) on O(1) rewards: the mean and std may each differ from torch's by an ulp,
    // so a few ulps of the O(1) result: abs 1e-6 + rel 1e-6.
    Tolerance tol{1e-6, 1e-6};
    for (const char* model : REF_MODELS) {
        for (const char* dtype : DUMP_DTYPES) {
            std::string path = dump_path(model, dtype);
            SafetensorsFile file(path);
            const TensorView& rewards_view = file.get("rewards");
            REQUIRE(rewards_view.shape.size() == 2);
            int num_groups = (int)rewards_view.shape[0], G = (int)rewards_view.shape[1];
            std::vector<float> rewards = f32_tensor(file, "rewards", (size_t)num_groups * G);
            for (const char* scale : {"group", "batch", "none"}) {
                INFO(path << " scale_rewards " << scale);
                std::vector<float> ours = grpo_advantages(rewards, num_groups, G, scale_rewards_from_name(scale));
                std::vector<float> ref = f32_tensor(file, std::string("advantages_from_rewards.") + scale, rewards.size());
                for (size_t i = 0; i < ref.size(); i++) {
                    INFO("advantage " << i << ": " << ours[i] << " vs " << ref[i]);
                    CHECK(tol.ok(ours[i], ref[i]));
                }
            }
        }
    }
    std::printf("[grpo] %zu advantages vs TRL: worst |err| %.3g (%.0f%% of tolerance)\n", tol.compared,
                tol.worst_error, 100 * tol.worst_fraction);
}

TEST_CASE("kl and clip-ratio metrics on the dumps equal a direct double-precision count", "[grpo]") {
    // The reference script does not dump TRL's metrics, so each is recomputed here straight from its
    // definition (TRL's masked_batch_mean), in double. kl: fp32 vs double elementwise, rel 1e-5. The clip
    // ratios are counts / tokens; only a ratio within an ulp of a clip bound could flip, which the margin
    // check below rules out, so they must match to fp32 rounding.
    for (const char* model : REF_MODELS) {
        for (const char* dtype : DUMP_DTYPES) {
            std::string path = dump_path(model, dtype);
            SafetensorsFile file(path);
            LossDump d = load_loss_dump(file, path);
            GrpoLossConfig config = d.config(LossType::BNPO);
            GrpoLossResult r = grpo_loss(config, d.B, d.Tc, d.logp.data(), d.old_logp.data(), d.ref_logp.data(),
                                         d.mask.data(), d.advantages.data(), d.mask_sum(), nullptr);
            double tokens = 0, kl = 0, low = 0, high = 0, region = 0;
            for (int b = 0; b < d.B; b++) {
                for (int t = 0; t < d.Tc; t++) {
                    size_t i = (size_t)b * d.Tc + t;
                    if (d.mask[i] == 0.0f) continue;
                    double delta = (double)d.ref_logp[i] - d.logp[i];
                    double ratio = std::exp((double)d.logp[i] - d.old_logp[i]);
                    double A = d.advantages[b];
                    REQUIRE(std::fabs(ratio - (1 - config.epsilon_low)) > 1e-5);
                    REQUIRE(std::fabs(ratio - (1 + config.epsilon_high)) > 1e-5);
                    bool is_low = ratio < 1 - config.epsilon_low && A < 0;
                    bool is_high = ratio > 1 + config.epsilon_high && A > 0;
                    tokens += 1;
                    kl += std::exp(delta) - delta - 1;
                    low += is_low;
                    high += is_high;
                    region += is_low || is_high;
                }
            }
            INFO(path);
            REQUIRE(r.metrics.has_kl);
            CHECK(std::fabs(r.metrics.kl - kl / tokens) <= 1e-5 * (kl / tokens));
            CHECK(r.metrics.clip_ratio_low_mean == (float)(low / tokens));
            CHECK(r.metrics.clip_ratio_high_mean == (float)(high / tokens));
            CHECK(r.metrics.clip_ratio_region_mean == (float)(region / tokens));
            // the dump's perturbed old log-probs are there to exercise both clip branches
            CHECK(low > 0);
            CHECK(high > 0);
        }
    }
}

// ---- hand-made cases --------------------------------------------------------------------------------------

TEST_CASE("completion masks: stop in the middle, never stopping, empty", "[grpo]") {
    const std::vector<int> stop = {7, 9};
    const int Tc = 6;
    SECTION("a stop token in the middle: kept up to and including it, later tokens ignored") {
        for (bool mask_truncated : {false, true}) {
            CompletionMask c = completion_mask({3, 4, 9, 5, 7}, Tc, stop, mask_truncated);
            CHECK(c.stopped);
            CHECK(c.length == 3);
            CHECK(c.mask == std::vector<float>({1, 1, 1, 0, 0, 0}));
        }
    }
    SECTION("the stop token first") {
        CompletionMask c = completion_mask({7, 1, 2}, Tc, stop, true);
        CHECK(c.stopped);
        CHECK(c.length == 1);
        CHECK(c.mask == std::vector<float>({1, 0, 0, 0, 0, 0}));
    }
    SECTION("never stops: all tokens, or none with mask_truncated; the length is logged either way") {
        CompletionMask kept = completion_mask({1, 2, 3, 4, 5, 6}, Tc, stop, false);
        CHECK_FALSE(kept.stopped);
        CHECK(kept.length == 6);
        CHECK(kept.mask == std::vector<float>(Tc, 1.0f));
        CompletionMask masked = completion_mask({1, 2, 3, 4, 5, 6}, Tc, stop, true);
        CHECK_FALSE(masked.stopped);
        CHECK(masked.length == 6);
        CHECK(masked.mask == std::vector<float>(Tc, 0.0f));
        CompletionMask short_row = completion_mask({1, 2}, Tc, stop, false);
        CHECK(short_row.mask == std::vector<float>({1, 1, 0, 0, 0, 0}));
    }
    SECTION("an empty completion never stopped and masks nothing in") {
        for (bool mask_truncated : {false, true}) {
            CompletionMask c = completion_mask({}, Tc, stop, mask_truncated);
            CHECK_FALSE(c.stopped);
            CHECK(c.length == 0);
            CHECK(c.mask == std::vector<float>(Tc, 0.0f));
        }
    }
    SECTION("more tokens than the row holds is an error") {
        CHECK_THROWS_AS(completion_mask({1, 2, 3, 4, 5, 6, 7}, Tc, stop, false), GrpoError);
    }
    SECTION("completion metrics: mean length and the fraction that never stopped") {
        std::vector<CompletionMask> all = {completion_mask({3, 9}, Tc, stop, true),
                                           completion_mask({1, 2, 3, 4, 5, 6}, Tc, stop, true),
                                           completion_mask({7}, Tc, stop, true),
                                           completion_mask({1, 2, 3, 4, 5, 6}, Tc, stop, false)};
        CompletionMetrics m = completion_metrics(all);
        CHECK(m.mean_length == (2 + 6 + 1 + 6) / 4.0f);
        CHECK(m.clipped_ratio == 0.5f);
    }
}

namespace {

// A small batch with every feature: a clipped-low token (A < 0), a clipped-high token (A > 0), a row with
// no tokens, and a reference that differs from the policy.
struct HandBatch {
    int B = 3, Tc = 4;
    std::vector<float> logp = {-1.0f, -2.0f, -0.5f, -3.0f,  //
                               -0.2f, -1.5f, -2.5f, -0.7f,  //
                               -1.1f, -0.9f, -4.0f, -2.2f};
    std::vector<float> old_logp = {-1.0f, -1.6f, -0.5f, -3.0f,  // token 1: ratio exp(-0.4) < 0.8, A < 0
                                   -0.6f, -1.5f, -2.5f, -0.7f,  // token 0: ratio exp(0.4) > 1.2, A > 0
                                   -1.1f, -0.9f, -4.0f, -2.2f};
    std::vector<float> ref_logp = {-1.2f, -1.8f, -0.4f, -2.9f,  //
                                   -0.3f, -1.4f, -2.6f, -0.9f,  //
                                   -1.0f, -1.0f, -3.5f, -2.0f};
    std::vector<float> mask = {1, 1, 1, 0,  //
                               1, 1, 1, 1,  //
                               0, 0, 0, 0};
    std::vector<float> advantages = {-0.5f, 1.25f, 0.75f};

    GrpoLossResult run(const GrpoLossConfig& config, std::vector<float>* grad, bool with_old = true,
                       bool with_ref = true, float num_items = 7.0f) const {
        grad->assign(logp.size(), NAN);
        return grpo_loss(config, B, Tc, logp.data(), with_old ? old_logp.data() : nullptr,
                         with_ref ? ref_logp.data() : nullptr, mask.data(), advantages.data(), num_items,
                         grad->data());
    }
};

GrpoLossConfig hand_config(LossType type) {
    GrpoLossConfig c;
    c.loss_type = type;
    c.beta = 0.04;
    c.epsilon_low = 0.2;
    c.epsilon_high = 0.2;
    c.max_completion_length = 10;
    return c;
}

}  // namespace

TEST_CASE("grpo: an all-masked row counts as a sequence with loss 0 and gets no gradient", "[grpo]") {
    HandBatch h;
    std::vector<float> grad;
    GrpoLossResult r = h.run(hand_config(LossType::GRPO), &grad);
    CHECK(std::isfinite(r.loss));
    for (int t = 0; t < h.Tc; t++) CHECK(grad[2 * h.Tc + t] == 0.0f);
    // the row is in the mean over B = 3 sequences: dropping it would change the divisor to 2
    HandBatch two = h;
    two.B = 2;
    std::vector<float> grad2;
    GrpoLossResult r2 = two.run(hand_config(LossType::GRPO), &grad2);
    CHECK(r.loss == Approx(r2.loss * 2.0f / 3.0f).epsilon(1e-6));
    // an all-zero batch: every loss type gives 0, not 0/0
    HandBatch empty = h;
    std::fill(empty.mask.begin(), empty.mask.end(), 0.0f);
    for (LossType type : {LossType::GRPO, LossType::BNPO, LossType::DR_GRPO}) {
        GrpoLossResult e = empty.run(hand_config(type), &grad);
        CHECK(e.loss == 0.0f);
        for (float g : grad) CHECK(g == 0.0f);
        CHECK(e.metrics.kl == 0.0f);
    }
}

TEST_CASE("a row's gradient depends on its own log-probs and the masks alone", "[grpo]") {
    // what the fused policy pass relies on (train_grpo.cu's dlogp_of): the loop asks for a micro-batch's rows while
    // the other rows' log-probs are still zeros (not yet computed) or hold anything else
    for (LossType type : {LossType::GRPO, LossType::BNPO, LossType::DR_GRPO, LossType::DAPO}) {
        INFO(loss_type_name(type));
        HandBatch h;
        std::vector<float> grad;
        h.run(hand_config(type), &grad, false);
        for (int row = 0; row < h.B; row++) {
            for (int other_values = 0; other_values < 2; other_values++) {
                HandBatch changed = h;
                for (int b = 0; b < h.B; b++)
                    for (int t = 0; b != row && t < h.Tc; t++) {
                        float& v = changed.logp[(size_t)b * h.Tc + t];
                        v = other_values == 0 ? 0.0f : v + 0.37f;
                    }
                std::vector<float> grad_changed;
                changed.run(hand_config(type), &grad_changed, false);
                for (int t = 0; t < h.Tc; t++) {
                    const size_t i = (size_t)row * h.Tc + t;
                    CHECK(std::memcmp(&grad[i], &grad_changed[i], sizeof(float)) == 0);
                }
            }
        }
    }
}

TEST_CASE("grpo_loss_grad_rows gives grpo_loss's gradient at the rows asked for and reads or writes no other", "[grpo]") {
    const float untouched = 12345.0f;
    for (LossType type : {LossType::GRPO, LossType::BNPO, LossType::DR_GRPO, LossType::DAPO})
        for (bool with_old : {false, true}) {
            INFO(loss_type_name(type) << (with_old ? ", with old log-probs" : ", old = logp"));
            HandBatch h;
            const GrpoLossConfig config = hand_config(type);
            std::vector<float> whole;
            h.run(config, &whole, with_old);
            for (const std::vector<int>& rows : std::vector<std::vector<int>>{{0}, {2}, {1, 0}, {0, 1, 2}, {}}) {
                // the other rows' log-probs are NaN: a gradient that read them would not be finite
                HandBatch part = h;
                for (int b = 0; b < h.B; b++)
                    if (std::find(rows.begin(), rows.end(), b) == rows.end())
                        for (int t = 0; t < h.Tc; t++) {
                            part.logp[(size_t)b * h.Tc + t] = NAN;
                            part.old_logp[(size_t)b * h.Tc + t] = NAN;
                            part.ref_logp[(size_t)b * h.Tc + t] = NAN;
                        }
                std::vector<float> got(whole.size(), untouched);
                grpo_loss_grad_rows(config, h.B, h.Tc, part.logp.data(), with_old ? part.old_logp.data() : nullptr,
                                    part.ref_logp.data(), h.mask.data(), h.advantages.data(), 7.0f, rows, got.data());
                for (int b = 0; b < h.B; b++) {
                    const bool asked = std::find(rows.begin(), rows.end(), b) != rows.end();
                    for (int t = 0; t < h.Tc; t++) {
                        const size_t i = (size_t)b * h.Tc + t;
                        INFO("row " << b << ", token " << t);
                        if (asked)
                            CHECK(std::memcmp(&got[i], &whole[i], sizeof(float)) == 0);
                        else
                            CHECK(got[i] == untouched);
                    }
                }
            }
        }
    HandBatch h;
    std::vector<float> grad(h.logp.size());
    CHECK_THROWS_WITH(grpo_loss_grad_rows(hand_config(LossType::GRPO), h.B, h.Tc, h.logp.data(), nullptr,
                                          h.ref_logp.data(), h.mask.data(), h.advantages.data(), 7.0f, {3},
                                          grad.data()),
                      Catch::Contains("row 3 is outside the batch's 3 rows"));
}

TEST_CASE("dr_grpo divides the masked sum by B * max_completion_length", "[grpo]") {
    HandBatch h;
    std::vector<float> grad_bnpo, grad_dr;
    GrpoLossConfig dr = hand_config(LossType::DR_GRPO);
    GrpoLossResult bnpo = h.run(hand_config(LossType::BNPO), &grad_bnpo);
    GrpoLossResult r = h.run(dr, &grad_dr);
    // both share the masked sum: bnpo = sum / 7 tokens, dr_grpo = sum / (3 * 10)
    const float tokens = 7.0f, normalizer = (float)(h.B * dr.max_completion_length);
    CHECK(r.loss == Approx(bnpo.loss * tokens / normalizer).epsilon(1e-6));
    for (size_t i = 0; i < grad_dr.size(); i++) CHECK(grad_dr[i] == Approx(grad_bnpo[i] * tokens / normalizer).epsilon(1e-6));
    // and it is the constant, not the tokens, that it divides by
    dr.max_completion_length = 40;
    std::vector<float> grad_dr40;
    GrpoLossResult r40 = h.run(dr, &grad_dr40);
    CHECK(r40.loss == Approx(r.loss / 4.0f).epsilon(1e-6));
}

TEST_CASE("gradient accumulation divides grpo, bnpo and dr_grpo but not dapo", "[grpo]") {
    HandBatch h;
    for (LossType type : {LossType::GRPO, LossType::BNPO, LossType::DR_GRPO, LossType::DAPO}) {
        INFO(loss_type_name(type));
        GrpoLossConfig one = hand_config(type), four = hand_config(type);
        four.grad_accum_steps = 4;
        std::vector<float> grad1, grad4;
        GrpoLossResult r1 = h.run(one, &grad1), r4 = h.run(four, &grad4);
        // TRL divides by current_gradient_accumulation_steps, except for dapo whose normalizer
        // (num_items_in_batch) already counts the tokens of all accumulated micro-batches
        float divisor = type == LossType::DAPO ? 1.0f : 4.0f;
        CHECK(r4.loss == Approx(r1.loss / divisor).epsilon(1e-6));
        for (size_t i = 0; i < grad1.size(); i++) CHECK(grad4[i] == Approx(grad1[i] / divisor).epsilon(1e-6).margin(1e-12));
        // the metrics are per micro-batch and do not depend on accumulation
        CHECK(r4.metrics.kl == r1.metrics.kl);
    }
    // dapo: a micro-batch of 7 tokens out of an accumulated 28 is divided by 28
    std::vector<float> grad7, grad28;
    GrpoLossResult d7 = h.run(hand_config(LossType::DAPO), &grad7, true, true, 7.0f);
    GrpoLossResult d28 = h.run(hand_config(LossType::DAPO), &grad28, true, true, 28.0f);
    GrpoLossResult bnpo = h.run(hand_config(LossType::BNPO), &grad7);
    CHECK(d7.loss == Approx(bnpo.loss).epsilon(1e-6));
    CHECK(d28.loss == Approx(d7.loss / 4.0f).epsilon(1e-6));
}

TEST_CASE("beta = 0 needs no reference and drops the KL term", "[grpo]") {
    HandBatch h;
    GrpoLossConfig config = hand_config(LossType::BNPO);
    config.beta = 0.0;
    std::vector<float> grad_no_ref, grad_ref;
    GrpoLossResult no_ref = h.run(config, &grad_no_ref, true, false);
    GrpoLossResult with_ref = h.run(config, &grad_ref, true, true);
    CHECK_FALSE(no_ref.metrics.has_kl);
    CHECK(no_ref.loss == with_ref.loss);
    CHECK(grad_no_ref == grad_ref);
    // without old log-probs too (num_iterations = 1) the ratio is exactly 1, so loss_t = -A:
    // bnpo = -Σ_b A_b n_b / N and d loss / d logp_t = -A_b / N on every masked token (1 - ratio's gradient)
    GrpoLossResult plain = h.run(config, &grad_ref, false, false);
    const float N = 7.0f;
    CHECK(plain.loss == Approx(-(h.advantages[0] * 3 + h.advantages[1] * 4) / N).epsilon(1e-6));
    for (int b = 0; b < h.B; b++)
        for (int t = 0; t < h.Tc; t++)
            CHECK(grad_ref[b * h.Tc + t] == Approx(-h.advantages[b] * h.mask[b * h.Tc + t] / N).epsilon(1e-6));
    CHECK(plain.metrics.clip_ratio_region_mean == 0.0f);
    // a non-zero beta without a reference is an error that says what to do
    config.beta = 0.04;
    CHECK_THROWS_AS(h.run(config, &grad_ref, true, false), GrpoError);
}

TEST_CASE("clip ratios count exactly the tokens the clip silences", "[grpo]") {
    HandBatch h;
    std::vector<float> grad;
    GrpoLossResult r = h.run(hand_config(LossType::BNPO), &grad);
    // one low-clipped token (row 0, t 1) and one high-clipped (row 1, t 0) among 7 masked tokens
    CHECK(r.metrics.clip_ratio_low_mean == 1.0f / 7.0f);
    CHECK(r.metrics.clip_ratio_high_mean == 1.0f / 7.0f);
    CHECK(r.metrics.clip_ratio_region_mean == 2.0f / 7.0f);
    // where the clip is active the policy term has no gradient: only the KL term's remains
    const float beta = 0.04f, N = 7.0f;
    for (size_t i : {size_t(1), size_t(4)}) {
        float d = h.ref_logp[i] - h.logp[i];
        CHECK(grad[i] == Approx(beta * (1.0f - std::exp(d)) / N).epsilon(1e-5));
    }
}

TEST_CASE("reward metrics and bad arguments", "[grpo]") {
    // group 0 varies, group 1 is constant: half of the completions sit in a zero-std group
    std::vector<float> rewards = {0.0f, 1.0f, 2.0f, 3.0f, 5.0f, 5.0f, 5.0f, 5.0f};
    RewardMetrics m = grpo_reward_metrics(rewards, 2, 4, ScaleRewards::GROUP);
    CHECK(m.frac_reward_zero_std == 0.5f);
    CHECK(m.reward == Approx(26.0 / 8));
    CHECK(m.reward_std == Approx(std::sqrt(5.0 / 3.0) / 2));  // group stds sqrt(5/3) and 0, averaged
    RewardMetrics batch = grpo_reward_metrics(rewards, 2, 4, ScaleRewards::BATCH);
    CHECK(batch.frac_reward_zero_std == 0.0f);
    // a zero-std group's advantages are exactly 0
    std::vector<float> adv = grpo_advantages(rewards, 2, 4, ScaleRewards::GROUP);
    for (int g = 4; g < 8; g++) CHECK(adv[g] == 0.0f);
    CHECK_THROWS_AS(grpo_advantages(rewards, 3, 4, ScaleRewards::GROUP), GrpoError);
    CHECK_THROWS_AS(grpo_advantages(rewards, 8, 1, ScaleRewards::GROUP), GrpoError);
    CHECK_THROWS_AS(scale_rewards_from_name("groups"), GrpoError);
    CHECK_THROWS_AS(loss_type_from_name("ppo"), GrpoError);
    for (const char* name : LOSS_NAMES) CHECK(std::string(loss_type_name(loss_type_from_name(name))) == name);
    HandBatch h;
    std::vector<float> grad;
    CHECK_THROWS_AS(h.run(hand_config(LossType::DAPO), &grad, true, true, 0.0f), GrpoError);
    GrpoLossConfig bad = hand_config(LossType::BNPO);
    bad.grad_accum_steps = 0;
    CHECK_THROWS_AS(h.run(bad, &grad), GrpoError);
}
