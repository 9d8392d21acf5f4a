// grpo_loss.cpp: GRPO's completion masks, advantages, loss, loss gradient and metrics, following TRL's GRPOTrainer operation by operation.
#include "model/grpo_loss.h"

#include <algorithm>
#include <cmath>

#include "data/text.h"
#include "model/sampler.h"

// Precision: every elementwise step is fp32 in TRL's order (the reference ran in fp32 torch), with the
// same casts of Python scalars to fp32. Sums are the exception: torch reduces with tree / cascade sums
// (and its CPU std accumulates in double), which are more accurate than a left-to-right fp32 loop. A double
// accumulator rounded once to fp32 is within half an ulp of the exact sum, so it agrees with torch's result
// to about an ulp whatever order torch used, and stays that way for batches of thousands of tokens.

// ---- completions ------------------------------------------------------------------------------------

CompletionMask completion_mask(const std::vector<int>& tokens, int Tc, const std::vector<int>& stop_ids,
                               bool mask_truncated) {
    if ((int)tokens.size() > Tc)
        throw GrpoError("completion_mask: the completion has " + std::to_string(tokens.size()) +
                        " tokens but the mask row holds only Tc = " + std::to_string(Tc) +
                        "; pass Tc >= the number of sampled tokens");
    CompletionMask out;
    out.mask.assign(Tc, 0.0f);
    out.length = (int)tokens.size();
    for (size_t t = 0; t < tokens.size(); t++) {
        if (is_stop_token(tokens[t], stop_ids)) {
            out.length = (int)t + 1;  // the stop token itself is trained on: it is how the model learns to stop
            out.stopped = true;
            break;
        }
    }
    if (out.stopped || !mask_truncated)
        std::fill(out.mask.begin(), out.mask.begin() + out.length, 1.0f);
    return out;
}

CompletionMetrics completion_metrics(const std::vector<CompletionMask>& completions) {
    CompletionMetrics m;
    if (completions.empty()) return m;
    double length_sum = 0.0;
    int never_stopped = 0;
    for (const CompletionMask& c : completions) {
        length_sum += c.length;
        if (!c.stopped) never_stopped++;
    }
    m.mean_length = (float)(length_sum / completions.size());
    m.clipped_ratio = (float)((double)never_stopped / completions.size());
    return m;
}

// ---- rewards to advantages ------------------------------------------------------------------------

ScaleRewards scale_rewards_from_name(const std::string& name) {
    if (name == "group") return ScaleRewards::GROUP;
    if (name == "batch") return ScaleRewards::BATCH;
    if (name == "none") return ScaleRewards::NONE;
    throw GrpoError("scale_rewards: unknown value \"" + name + "\"; expected group, batch or none");
}

static void check_reward_shape(const std::vector<float>& rewards, int num_groups, int G) {
    if (G < 2 || num_groups < 1)
        throw GrpoError("GRPO advantages need at least 1 prompt and G >= 2 completions per prompt (the group std "
                        "has n - 1 in its denominator); got " + std::to_string(num_groups) + " prompts, G = " +
                        std::to_string(G));
    if (rewards.size() != (size_t)num_groups * G)
        throw GrpoError("GRPO advantages: expected num_groups * G = " + std::to_string((size_t)num_groups * G) +
                        " rewards, got " + std::to_string(rewards.size()));
}

// torch's x.mean() and x.std() (Bessel) over n consecutive fp32 values, each rounded to fp32 once.
static void mean_std(const float* x, int n, float* mean, float* std) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += x[i];
    double mean_exact = sum / n;
    double squares = 0.0;
    for (int i = 0; i < n; i++) squares += (x[i] - mean_exact) * (x[i] - mean_exact);
    *mean = (float)mean_exact;
    *std = (float)std::sqrt(squares / (n - 1));
}

// Per completion: its group's mean and the std TRL scales it by (TRL's mean_grouped_rewards and std_rewards,
// both repeated per completion). With scale NONE the std is the group's, which TRL still logs.
static void reward_baselines(const std::vector<float>& rewards, int num_groups, int G, ScaleRewards scale,
                             std::vector<float>* mean, std::vector<float>* std) {
    check_reward_shape(rewards, num_groups, G);
    mean->resize(rewards.size());
    std->resize(rewards.size());
    float batch_mean, batch_std;
    mean_std(rewards.data(), (int)rewards.size(), &batch_mean, &batch_std);
    for (int p = 0; p < num_groups; p++) {
        float group_mean, group_std;
        mean_std(rewards.data() + (size_t)p * G, G, &group_mean, &group_std);
        for (int g = 0; g < G; g++) {
            (*mean)[(size_t)p * G + g] = group_mean;
            (*std)[(size_t)p * G + g] = scale == ScaleRewards::BATCH ? batch_std : group_std;
        }
    }
}

std::vector<float> grpo_advantages(const std::vector<float>& rewards, int num_groups, int G, ScaleRewards scale) {
    std::vector<float> mean, std;
    reward_baselines(rewards, num_groups, G, scale, &mean, &std);
    std::vector<float> advantages(rewards.size());
    for (size_t i = 0; i < rewards.size(); i++) {
        advantages[i] = rewards[i] - mean[i];
        // 1e-4 keeps a zero-std group finite: all its advantages are 0 and it contributes only the KL term
        if (scale != ScaleRewards::NONE) advantages[i] = advantages[i] / (std[i] + (float)1e-4);
    }
    return advantages;
}

RewardMetrics grpo_reward_metrics(const std::vector<float>& rewards, int num_groups, int G, ScaleRewards scale) {
    std::vector<float> mean, std;
    reward_baselines(rewards, num_groups, G, scale, &mean, &std);
    double reward_sum = 0.0, std_sum = 0.0;
    int zero_std = 0;
    for (size_t i = 0; i < rewards.size(); i++) {
        reward_sum += mean[i];
        std_sum += std[i];
        // torch.isclose(std, 0) with its defaults (atol 1e-8, rtol 1e-5): |std| <= 1e-8
        if (std::fabs(std[i]) <= 1e-8) zero_std++;
    }
    RewardMetrics m;
    m.reward = (float)(reward_sum / rewards.size());
    m.reward_std = (float)(std_sum / rewards.size());
    m.frac_reward_zero_std = (float)((double)zero_std / rewards.size());
    return m;
}

// ---- the loss -------------------------------------------------------------------------------------------

LossType loss_type_from_name(const std::string& name) {
    if (name == "grpo") return LossType::GRPO;
    if (name == "bnpo") return LossType::BNPO;
    if (name == "dr_grpo") return LossType::DR_GRPO;
    if (name == "dapo") return LossType::DAPO;
    throw GrpoError("loss_type: unknown value \"" + name + "\"; expected grpo, bnpo, dr_grpo or dapo");
}

const char* loss_type_name(LossType type) {
    switch (type) {
        case LossType::GRPO: return "grpo";
        case LossType::BNPO: return "bnpo";
        case LossType::DR_GRPO: return "dr_grpo";
        case LossType::DAPO: return "dapo";
    }
    return "?";
}

void check_loss_arguments(const char* caller, const GrpoLossConfig& config, int B, int Tc, const float* ref_logp,
                          float num_items_in_batch) {
    const std::string where = std::string(caller) + ": ";
    if (B < 1 || Tc < 1)
        throw GrpoError(where + "need B >= 1 and Tc >= 1, got B = " + std::to_string(B) + ", Tc = " +
                        std::to_string(Tc));
    if (config.beta != 0.0 && ref_logp == nullptr)
        throw GrpoError(where + "beta = " + std::to_string(config.beta) + " needs the reference log-probs "
                        "(ref_logp is null); compute them with LoRA off, or set beta = 0");
    if (config.grad_accum_steps < 1)
        throw GrpoError(where + "grad_accum_steps must be >= 1, got " + std::to_string(config.grad_accum_steps));
    if (config.loss_type == LossType::DR_GRPO && config.max_completion_length < 1)
        throw GrpoError(where + "dr_grpo divides by B * max_completion_length; max_completion_length must be "
                        ">= 1, got " + std::to_string(config.max_completion_length));
    if (config.loss_type == LossType::DAPO && !(num_items_in_batch > 0.0f))
        throw GrpoError(where + "dapo divides by num_items_in_batch (the completion tokens of the whole "
                        "accumulated batch), which must be > 0, got " + std::to_string(num_items_in_batch));
}

GrpoLossResult grpo_loss(const GrpoLossConfig& config, int B, int Tc, const float* logp, const float* old_logp,
                         const float* ref_logp, const float* mask, const float* advantages,
                         float num_items_in_batch, float* dloss_dlogp) {
    check_loss_arguments("grpo_loss", config, B, Tc, ref_logp, num_items_in_batch);
    const bool use_kl = config.beta != 0.0;
    const float beta = (float)config.beta;
    const float clip_low = (float)(1.0 - config.epsilon_low);    // Python computes 1 - eps in double,
    const float clip_high = (float)(1.0 + config.epsilon_high);  // torch casts the bound to fp32
    const float GA = (float)config.grad_accum_steps;

    // forward: the per-token loss, its masked sums per row, and the metric sums
    std::vector<double> row_loss_sum(B, 0.0);
    std::vector<float> row_tokens(B, 0.0f);
    double loss_sum = 0.0, tokens = 0.0, kl_sum = 0.0, low_sum = 0.0, high_sum = 0.0, region_sum = 0.0;
    for (int b = 0; b < B; b++) {
        const float A = advantages[b];
        double row_tokens_exact = 0.0;
        for (int t = 0; t < Tc; t++) {
            size_t i = (size_t)b * Tc + t;
            float lp = logp[i];
            float old = old_logp ? old_logp[i] : lp;
            float coef_1 = std::exp(lp - old);
            float coef_2 = std::min(std::max(coef_1, clip_low), clip_high);
            float per_token_loss = -std::min(coef_1 * A, coef_2 * A);
            float kl = 0.0f;
            if (use_kl) {
                float ref_minus_logp = ref_logp[i] - lp;
                kl = std::exp(ref_minus_logp) - ref_minus_logp - 1.0f;
                per_token_loss = per_token_loss + beta * kl;
            }
            float m = mask[i];
            row_loss_sum[b] += per_token_loss * m;
            row_tokens_exact += m;
            kl_sum += kl * m;
            bool low_clipped = coef_1 < clip_low && A < 0.0f;
            bool high_clipped = coef_1 > clip_high && A > 0.0f;
            low_sum += low_clipped * m;
            high_sum += high_clipped * m;
            region_sum += (low_clipped || high_clipped) * m;
        }
        row_tokens[b] = (float)row_tokens_exact;
        loss_sum += row_loss_sum[b];
        tokens += row_tokens_exact;
    }
    const float token_count = std::max((float)tokens, 1.0f);  // completion_mask.sum().clamp(min=1)

    // aggregation; d loss / d per_token_loss[b, t] = row_scale[b] * mask[b, t], in torch's backward order
    GrpoLossResult result;
    std::vector<float> row_scale(B);
    switch (config.loss_type) {
        case LossType::GRPO: {
            double mean_sum = 0.0;
            for (int b = 0; b < B; b++) {
                float n = std::max(row_tokens[b], 1.0f);  // an all-masked row contributes 0, not 0/0
                mean_sum += (float)row_loss_sum[b] / n;
                row_scale[b] = 1.0f / GA / (float)B / n;
            }
            result.loss = (float)mean_sum / (float)B / GA;
            break;
        }
        case LossType::BNPO:
            result.loss = (float)loss_sum / token_count / GA;
            std::fill(row_scale.begin(), row_scale.end(), 1.0f / GA / token_count);
            break;
        case LossType::DR_GRPO: {
            float normalizer = (float)((double)B * config.max_completion_length);
            result.loss = (float)loss_sum / normalizer / GA;
            std::fill(row_scale.begin(), row_scale.end(), 1.0f / GA / normalizer);
            break;
        }
        case LossType::DAPO:
            result.loss = (float)loss_sum / num_items_in_batch;
            std::fill(row_scale.begin(), row_scale.end(), 1.0f / num_items_in_batch);
            break;
    }

    GrpoLossMetrics& metrics = result.metrics;
    metrics.has_kl = use_kl;
    metrics.kl = use_kl ? (float)kl_sum / token_count : 0.0f;
    metrics.clip_ratio_low_mean = (float)low_sum / token_count;
    metrics.clip_ratio_high_mean = (float)high_sum / token_count;
    metrics.clip_ratio_region_mean = (float)region_sum / token_count;

    if (dloss_dlogp == nullptr) return result;
    // backward, recomputing the cheap forward values rather than storing them
    for (int b = 0; b < B; b++) {
        const float A = advantages[b];
        for (int t = 0; t < Tc; t++) {
            size_t i = (size_t)b * Tc + t;
            float lp = logp[i];
            float old = old_logp ? old_logp[i] : lp;
            float coef_1 = std::exp(lp - old);
            float coef_2 = std::min(std::max(coef_1, clip_low), clip_high);
            float loss1 = coef_1 * A, loss2 = coef_2 * A;
            float d_per_token_loss = row_scale[b] * mask[i];
            // per_token_loss = -min(loss1, loss2) + beta * kl
            float d_min = -d_per_token_loss;
            float d_loss1 = loss1 < loss2 ? d_min : loss1 > loss2 ? 0.0f : d_min / 2.0f;
            float d_loss2 = loss2 < loss1 ? d_min : loss2 > loss1 ? 0.0f : d_min / 2.0f;
            // coef_2 = clamp(coef_1): the gradient passes only inside the bounds (inclusive, as torch's clamp)
            bool inside = coef_1 >= clip_low && coef_1 <= clip_high;
            float d_coef_1 = d_loss1 * A + (inside ? d_loss2 * A : 0.0f);
            // coef_1 = exp(logp - old): old is detached, so logp gets all of it
            float d_logp = d_coef_1 * coef_1;
            if (use_kl) {
                // kl = exp(ref - logp) - (ref - logp) - 1
                float d_kl = d_per_token_loss * beta;
                float exp_term = std::exp(ref_logp[i] - lp);
                d_logp = d_logp + (-(d_kl * exp_term)) + d_kl;
            }
            dloss_dlogp[i] = d_logp;
        }
    }
    return result;
}
