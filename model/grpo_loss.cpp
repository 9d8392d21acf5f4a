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

namespace {

// The masks' token counts: per row, and of the whole batch (each row summed in double, then the rows in order).
struct MaskCounts {
    std::vector<float> row_tokens;
    double tokens = 0.0;
};
MaskCounts mask_counts(int B, int Tc, const float* mask) {
    MaskCounts c;
    c.row_tokens.resize(B);
    for (int b = 0; b < B; b++) {
        double row = 0.0;
        for (int t = 0; t < Tc; t++) row += mask[(size_t)b * Tc + t];
        c.row_tokens[b] = (float)row;
        c.tokens += row;
    }
    return c;
}

// completion_mask.sum().clamp(min=1)
float token_count(const MaskCounts& c) { return std::max((float)c.tokens, 1.0f); }
// dr_grpo's constant divisor
float dr_grpo_normalizer(const GrpoLossConfig& config, int B) {
    return (float)((double)B * config.max_completion_length);
}

// d loss / d per_token_loss[b, t] = row_scale[b] * mask[b, t], in torch's backward order: the aggregation's scale of
// each row, which depends on the masks (and the config) alone
std::vector<float> row_scales(const GrpoLossConfig& config, int B, const MaskCounts& counts, float num_items) {
    const float GA = (float)config.grad_accum_steps;
    std::vector<float> scale(B);
    switch (config.loss_type) {
        case LossType::GRPO:
            for (int b = 0; b < B; b++) scale[b] = 1.0f / GA / (float)B / std::max(counts.row_tokens[b], 1.0f);
            break;
        case LossType::BNPO:
            std::fill(scale.begin(), scale.end(), 1.0f / GA / token_count(counts));
            break;
        case LossType::DR_GRPO:
            std::fill(scale.begin(), scale.end(), 1.0f / GA / dr_grpo_normalizer(config, B));
            break;
        case LossType::DAPO:
            std::fill(scale.begin(), scale.end(), 1.0f / num_items);
            break;
    }
    return scale;
}

// The elementwise constants, as TRL casts them
struct TokenLoss {
    bool use_kl;
    float beta, clip_low, clip_high;
    explicit TokenLoss(const GrpoLossConfig& config)
        : use_kl(config.beta != 0.0),
          beta((float)config.beta),
          clip_low((float)(1.0 - config.epsilon_low)),    // Python computes 1 - eps in double,
          clip_high((float)(1.0 + config.epsilon_high)) {}  // torch casts the bound to fp32
};

// Token i's importance ratio exp(logp - old_logp) (old_logp nullptr: logp itself, detached) and its clipped copy
struct TokenRatio {
    float lp, coef_1, coef_2;
};
TokenRatio token_ratio(const TokenLoss& k, size_t i, const float* logp, const float* old_logp) {
    TokenRatio r;
    r.lp = logp[i];
    const float old = old_logp ? old_logp[i] : r.lp;
    r.coef_1 = std::exp(r.lp - old);
    r.coef_2 = std::min(std::max(r.coef_1, k.clip_low), k.clip_high);
    return r;
}

// d loss / d logp of row b, given its scale: recomputing the cheap forward values rather than storing them
void backward_row(const TokenLoss& k, int b, int Tc, const float* logp, const float* old_logp, const float* ref_logp,
                  const float* mask, float A, float row_scale, float* dloss_dlogp) {
    for (int t = 0; t < Tc; t++) {
        size_t i = (size_t)b * Tc + t;
        const TokenRatio r = token_ratio(k, i, logp, old_logp);
        const float lp = r.lp, coef_1 = r.coef_1;
        float loss1 = coef_1 * A, loss2 = r.coef_2 * A;
        float d_per_token_loss = row_scale * mask[i];
        // per_token_loss = -min(loss1, loss2) + beta * kl
        float d_min = -d_per_token_loss;
        float d_loss1 = loss1 < loss2 ? d_min : loss1 > loss2 ? 0.0f : d_min / 2.0f;
        float d_loss2 = loss2 < loss1 ? d_min : loss2 > loss1 ? 0.0f : d_min / 2.0f;
        // coef_2 = clamp(coef_1): the gradient passes only inside the bounds (inclusive, as torch's clamp)
        bool inside = coef_1 >= k.clip_low && coef_1 <= k.clip_high;
        float d_coef_1 = d_loss1 * A + (inside ? d_loss2 * A : 0.0f);
        // coef_1 = exp(logp - old): old is detached, so logp gets all of it
        float d_logp = d_coef_1 * coef_1;
        if (k.use_kl) {
            // kl = exp(ref - logp) - (ref - logp) - 1
            float d_kl = d_per_token_loss * k.beta;
            float exp_term = std::exp(ref_logp[i] - lp);
            d_logp = d_logp + (-(d_kl * exp_term)) + d_kl;
        }
        dloss_dlogp[i] = d_logp;
    }
}

}  // namespace

GrpoLossResult grpo_loss(const GrpoLossConfig& config, int B, int Tc, const float* logp, const float* old_logp,
                         const float* ref_logp, const float* mask, const float* advantages,
                         float num_items_in_batch, float* dloss_dlogp) {
    check_loss_arguments("grpo_loss", config, B, Tc, ref_logp, num_items_in_batch);
    const TokenLoss k(config);
    const float GA = (float)config.grad_accum_steps;

    // forward: the per-token loss, its masked sums per row, and the metric sums
    std::vector<double> row_loss_sum(B, 0.0);
    double loss_sum = 0.0, kl_sum = 0.0, low_sum = 0.0, high_sum = 0.0, region_sum = 0.0;
    for (int b = 0; b < B; b++) {
        const float A = advantages[b];
        for (int t = 0; t < Tc; t++) {
            size_t i = (size_t)b * Tc + t;
            const TokenRatio r = token_ratio(k, i, logp, old_logp);
            const float lp = r.lp, coef_1 = r.coef_1;
            float per_token_loss = -std::min(coef_1 * A, r.coef_2 * A);
            float kl = 0.0f;
            if (k.use_kl) {
                float ref_minus_logp = ref_logp[i] - lp;
                kl = std::exp(ref_minus_logp) - ref_minus_logp - 1.0f;
                per_token_loss = per_token_loss + k.beta * kl;
            }
            float m = mask[i];
            row_loss_sum[b] += per_token_loss * m;
            kl_sum += kl * m;
            bool low_clipped = coef_1 < k.clip_low && A < 0.0f;
            bool high_clipped = coef_1 > k.clip_high && A > 0.0f;
            low_sum += low_clipped * m;
            high_sum += high_clipped * m;
            region_sum += (low_clipped || high_clipped) * m;
        }
        loss_sum += row_loss_sum[b];
    }
    const MaskCounts counts = mask_counts(B, Tc, mask);
    const float tokens = token_count(counts);

    // aggregation
    GrpoLossResult result;
    switch (config.loss_type) {
        case LossType::GRPO: {
            double mean_sum = 0.0;
            for (int b = 0; b < B; b++)  // an all-masked row contributes 0, not 0/0
                mean_sum += (float)row_loss_sum[b] / std::max(counts.row_tokens[b], 1.0f);
            result.loss = (float)mean_sum / (float)B / GA;
            break;
        }
        case LossType::BNPO:
            result.loss = (float)loss_sum / tokens / GA;
            break;
        case LossType::DR_GRPO:
            result.loss = (float)loss_sum / dr_grpo_normalizer(config, B) / GA;
            break;
        case LossType::DAPO:
            result.loss = (float)loss_sum / num_items_in_batch;
            break;
    }

    GrpoLossMetrics& metrics = result.metrics;
    metrics.has_kl = k.use_kl;
    metrics.kl = k.use_kl ? (float)kl_sum / tokens : 0.0f;
    metrics.clip_ratio_low_mean = (float)low_sum / tokens;
    metrics.clip_ratio_high_mean = (float)high_sum / tokens;
    metrics.clip_ratio_region_mean = (float)region_sum / tokens;

    if (dloss_dlogp == nullptr) return result;
    const std::vector<float> scale = row_scales(config, B, counts, num_items_in_batch);
    for (int b = 0; b < B; b++)
        backward_row(k, b, Tc, logp, old_logp, ref_logp, mask, advantages[b], scale[b], dloss_dlogp);
    return result;
}

void grpo_loss_grad_rows(const GrpoLossConfig& config, int B, int Tc, const float* logp, const float* old_logp,
                         const float* ref_logp, const float* mask, const float* advantages, float num_items_in_batch,
                         const std::vector<int>& rows, float* dloss_dlogp) {
    check_loss_arguments("grpo_loss_grad_rows", config, B, Tc, ref_logp, num_items_in_batch);
    for (int b : rows)
        if (b < 0 || b >= B)
            throw GrpoError("grpo_loss_grad_rows: row " + std::to_string(b) + " is outside the batch's " +
                            std::to_string(B) + " rows");
    const TokenLoss k(config);
    const std::vector<float> scale = row_scales(config, B, mask_counts(B, Tc, mask), num_items_in_batch);
    for (int b : rows) backward_row(k, b, Tc, logp, old_logp, ref_logp, mask, advantages[b], scale[b], dloss_dlogp);
}
