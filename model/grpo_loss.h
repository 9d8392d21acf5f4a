// grpo_loss.h: GRPO's model-independent math as TRL's GRPOTrainer does it: completion masks, group-relative advantages, the clipped per-token loss with its KL penalty, its gradient with respect to the per-token log-probs, and the metrics TRL logs.
#pragma once
#include <string>
#include <vector>

// ---- completions ------------------------------------------------------------------------------------

// The loss mask of one sampled completion (TRL: completion_mask).
struct CompletionMask {
    std::vector<float> mask;  // [Tc]: 1 for the tokens the loss sees, 0 elsewhere
    int length = 0;           // tokens up to and including the first stop token (all of them when none),
                              // counted before mask_truncated zeroes the row, as TRL logs it
    bool stopped = false;     // whether a stop token was sampled
};

// tokens: the n sampled ids of one completion (n <= Tc; anything after the first stop token is ignored).
// The mask covers the tokens up to and including the first stop token; a completion that never stops
// (it hit max_completion_length) keeps all its tokens, or none when mask_truncated (TRL's
// mask_truncated_completions: its reward is still computed, but it teaches nothing). An empty completion
// never stopped and has an all-zero mask. Throws GrpoError when n > Tc.
CompletionMask completion_mask(const std::vector<int>& tokens, int Tc, const std::vector<int>& stop_ids,
                               bool mask_truncated);

// TRL's completions/mean_length (mean of CompletionMask::length) and completions/clipped_ratio (the
// fraction of completions that never stopped).
struct CompletionMetrics {
    float mean_length = 0.0f;
    float clipped_ratio = 0.0f;
};
CompletionMetrics completion_metrics(const std::vector<CompletionMask>& completions);

// ---- rewards to advantages ------------------------------------------------------------------------

// TRL's scale_rewards: what the group-centred reward is divided by (+ 1e-4).
//   GROUP: the std of the prompt's G rewards (the default)
//   BATCH: the std of every reward of the batch (the mean is still per group)
//   NONE:  nothing (the advantage is r - mean)
enum class ScaleRewards { GROUP, BATCH, NONE };
// "group" | "batch" | "none"; throws GrpoError naming the accepted values.
ScaleRewards scale_rewards_from_name(const std::string& name);

// rewards: [num_groups * G], prompt-major (completion g of prompt p at p*G + g), each already the weighted
// sum over the reward functions. Returns A_i = (r_i - mean of its group) / (std + 1e-4), std with Bessel's
// correction (n - 1). Throws GrpoError when rewards.size() != num_groups * G or G < 2 (a std needs 2).
std::vector<float> grpo_advantages(const std::vector<float>& rewards, int num_groups, int G, ScaleRewards scale);

// TRL's reward (mean reward), reward_std (the mean over completions of the std each was scaled by: the
// group std for group and none, the batch std for batch) and frac_reward_zero_std (the fraction of
// completions whose std is 0: groups where every completion got the same reward, which teach nothing).
struct RewardMetrics {
    float reward = 0.0f;
    float reward_std = 0.0f;
    float frac_reward_zero_std = 0.0f;
};
RewardMetrics grpo_reward_metrics(const std::vector<float>& rewards, int num_groups, int G, ScaleRewards scale);

// ---- the loss -------------------------------------------------------------------------------------------

// TRL's loss_type: how the masked per-token losses of a micro-batch of B completions become one number.
//   GRPO:    mean over each sequence's tokens, then mean over sequences (long completions count less per token)
//   BNPO:    sum over the micro-batch / its token count (Unsloth's default)
//   DR_GRPO: sum over the micro-batch / (B * max_completion_length), a constant: no length bias
//   DAPO:    sum over the micro-batch / the token count of the whole accumulated batch (num_items_in_batch)
enum class LossType { GRPO, BNPO, DR_GRPO, DAPO };
// "grpo" | "bnpo" | "dr_grpo" | "dapo"; throws GrpoError naming the accepted values.
LossType loss_type_from_name(const std::string& name);
const char* loss_type_name(LossType type);

// Scalars are doubles because they are Python floats in TRL; torch casts each to fp32 where it meets a
// tensor (clamp bounds 1 - epsilon, beta * kl), and grpo_loss does the same casts.
struct GrpoLossConfig {
    LossType loss_type = LossType::BNPO;
    double beta = 0.001;               // KL weight; 0 drops the KL term and needs no reference log-probs
    double epsilon_low = 0.2;          // the ratio is clipped to [1 - epsilon_low, 1 + epsilon_high]
    double epsilon_high = 0.2;
    int max_completion_length = 200;   // DR_GRPO's normalizer
    int grad_accum_steps = 1;          // GRPO, BNPO and DR_GRPO are divided by it; DAPO's normalizer already
                                       // counts the whole accumulated batch, so TRL does not divide DAPO again
};

// TRL's names: kl, clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean. Each is a mean over
// the masked tokens (Σ x·mask / max(Σ mask, 1)). A token is low-clipped when ratio < 1 - epsilon_low and
// A < 0, high-clipped when ratio > 1 + epsilon_high and A > 0: the cases where the clip removes the gradient.
struct GrpoLossMetrics {
    bool has_kl = false;  // TRL logs kl only when beta != 0
    float kl = 0.0f;
    float clip_ratio_low_mean = 0.0f;
    float clip_ratio_high_mean = 0.0f;
    float clip_ratio_region_mean = 0.0f;
};

struct GrpoLossResult {
    float loss = 0.0f;
    GrpoLossMetrics metrics;
};

// One micro-batch of B completions, each Tc completion tokens (row-major [B, Tc] arrays):
//   logp      log-probs of the sampled tokens under the policy (logits / temperature, log-softmax, gather)
//   old_logp  the same under the policy that sampled them; nullptr means logp itself (num_iterations = 1,
//             where TRL uses logp.detach(): the ratio is exactly 1 but its gradient is not 0)
//   ref_logp  the same under the reference (LoRA off); may be nullptr only when beta = 0
//   mask      completion masks, 0 or 1
//   advantages [B]
//   num_items_in_batch: DAPO's normalizer, the mask sum of the whole accumulated batch (ignored otherwise)
// loss_t = -min(ratio·A, clip(ratio, 1 - eps_low, 1 + eps_high)·A) + beta·KL_t, ratio = exp(logp - old_logp),
// KL_t = exp(ref - logp) - (ref - logp) - 1, aggregated by config.loss_type. When dloss_dlogp is not
// nullptr it receives d loss / d logp [B, Tc], following torch's autograd step by step (at a tie between the
// clipped and unclipped terms torch's min sends half the gradient to each). Elementwise math is fp32 in
// TRL's order; the sums are accumulated in double (see grpo_loss.cpp). Throws GrpoError on bad arguments.
GrpoLossResult grpo_loss(const GrpoLossConfig& config, int B, int Tc, const float* logp, const float* old_logp,
                         const float* ref_logp, const float* mask, const float* advantages,
                         float num_items_in_batch, float* dloss_dlogp);

// d loss / d logp at the given rows only, the same bits as grpo_loss's dloss_dlogp there; the other rows of
// dloss_dlogp are not touched. A row's gradient needs its own log-probs, its advantage and the masks (the loss's
// normalizers count the masks' tokens), so the other rows of logp, old_logp and ref_logp are never read: a backend
// can ask for a micro-batch's rows as soon as it has their log-probs (train_grpo.cu's fused policy pass), in time
// proportional to those rows. Throws GrpoError on grpo_loss's bad arguments and on a row outside [0, B).
void grpo_loss_grad_rows(const GrpoLossConfig& config, int B, int Tc, const float* logp, const float* old_logp,
                         const float* ref_logp, const float* mask, const float* advantages, float num_items_in_batch,
                         const std::vector<int>& rows, float* dloss_dlogp);

// The arguments grpo_loss rejects, checked by every implementation of it (the GPU's grpo_loss_cuda too): throws
// GrpoError, its message starting with `caller`, when B or Tc < 1, beta != 0 without ref_logp,
// grad_accum_steps < 1, dr_grpo with max_completion_length < 1, or dapo with num_items_in_batch <= 0.
void check_loss_arguments(const char* caller, const GrpoLossConfig& config, int B, int Tc, const float* ref_logp,
                          float num_items_in_batch);
