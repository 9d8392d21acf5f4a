// sampler.h: picks the next token from one row of logits as HF generate(do_sample=True) does (temperature, top-k, top-p), with one draw from our seeded Rng.
#pragma once
#include <vector>

#include "data/rng.h"

// Doubles where HF has Python floats: torch casts them to fp32 where they meet the fp32 logits, and so do we.
struct SamplerConfig {
    double temperature = 1.0;  // logits / temperature; 0 means greedy (argmax, no random draw)
    double top_p = 1.0;        // nucleus sampling; 1 = off
    int top_k = 0;             // keep the k largest; 0 = off
    int vocab_limit = 0;       // never sample ids >= vocab_limit (0 = no limit). Qwen2.5's embedding has
                               // rows past the tokenizer's last id (151664) that are padding, not tokens
};

// Throws GrpoError naming the bad field (temperature < 0, top_p outside [0, 1], top_k < 0, vocab_limit
// outside [0, V]).
void sampler_check(const SamplerConfig& config, int V);

// HF's warpers applied to one row, in generate's order: ids >= vocab_limit removed, then logits / temperature,
// then top-k (every token whose score is >= the k-th largest survives, so ties at the k-th score all stay),
// then top-p (HF's TopPLogitsWarper: sort ascending, softmax, cumulative sum, remove the tokens whose
// cumulative probability is <= 1 - top_p, always keep the highest). scores[v] receives the warped score of
// every kept token and -inf for every removed one. Needs temperature > 0. Ties in the top-p sort are broken
// by id (torch.sort(stable=True)'s order; HF's unstable sort leaves it unspecified). Math in fp32, as HF
// runs the warpers on fp32 logits.
void sampler_warp(const float* logits, int V, const SamplerConfig& config, float* scores);

// The next token: argmax over the allowed ids when temperature = 0 (the first on ties, like torch.argmax;
// the Rng is not touched), otherwise sampler_warp, softmax over the kept tokens and one inverse-CDF draw with
// rng.next_float(), walking the ids in increasing order in fp32. The same seed gives the same tokens on
// every machine that computes expf the same way.
int sample_token(const float* logits, int V, const SamplerConfig& config, Rng& rng);

// Whether id ends a completion (stop ids: chat_stop_token_ids in tokenizer/chat_template.h).
bool is_stop_token(int id, const std::vector<int>& stop_ids);
