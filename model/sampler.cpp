// sampler.cpp: HF generate's sampling warpers (temperature, top-k, top-p) and a reproducible categorical draw.
#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "data/text.h"

static const float NEG_INF = -std::numeric_limits<float>::infinity();

void sampler_check(const SamplerConfig& config, int V) {
    if (!(config.temperature >= 0.0))
        throw GrpoError("sampler: temperature must be >= 0 (0 = greedy), got " + std::to_string(config.temperature));
    if (!(config.top_p >= 0.0 && config.top_p <= 1.0))
        throw GrpoError("sampler: top_p must be in [0, 1] (1 = off), got " + std::to_string(config.top_p));
    if (config.top_k < 0)
        throw GrpoError("sampler: top_k must be >= 0 (0 = off), got " + std::to_string(config.top_k));
    if (config.vocab_limit < 0 || config.vocab_limit > V)
        throw GrpoError("sampler: vocab_limit must be in [0, V = " + std::to_string(V) + "] (0 = no limit), got " +
                        std::to_string(config.vocab_limit));
    if (V < 1) throw GrpoError("sampler: empty logits row (V = " + std::to_string(V) + ")");
}

static int allowed_ids(const SamplerConfig& config, int V) { return config.vocab_limit > 0 ? config.vocab_limit : V; }

void sampler_warp(const float* logits, int V, const SamplerConfig& config, float* scores) {
    sampler_check(config, V);
    if (config.temperature == 0.0)
        throw GrpoError("sampler_warp: temperature 0 is greedy decoding, which has no distribution to warp");
    const int n = allowed_ids(config, V);
    // HF adds the temperature warper only when temperature != 1; dividing by 1.0f would change nothing anyway
    const float temperature = (float)config.temperature;
    for (int v = 0; v < V; v++) scores[v] = v < n ? logits[v] / temperature : NEG_INF;

    if (config.top_k > 0 && config.top_k < n) {
        // the k-th largest score; everything strictly below it goes
        std::vector<float> sorted(scores, scores + n);
        std::nth_element(sorted.begin(), sorted.begin() + (config.top_k - 1), sorted.end(), std::greater<float>());
        float kth = sorted[config.top_k - 1];
        for (int v = 0; v < n; v++)
            if (scores[v] < kth) scores[v] = NEG_INF;
    }

    if (config.top_p < 1.0 && std::any_of(scores, scores + n, [](float s) { return s != NEG_INF; })) {
        // the surviving ids in ascending score order (-inf ones would add exact zeros to the cumsum, so
        // leaving them out changes nothing)
        std::vector<int> order;
        for (int v = 0; v < n; v++)
            if (scores[v] != NEG_INF) order.push_back(v);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return scores[a] < scores[b]; });
        const float max_score = scores[order.back()];
        std::vector<float> probs(order.size());
        float sum = 0.0f;
        for (size_t j = 0; j < order.size(); j++) {
            probs[j] = std::exp(scores[order[j]] - max_score);
            sum += probs[j];
        }
        const float remove_at_or_below = (float)(1.0 - config.top_p);  // Python's 1 - top_p, cast to fp32
        float cumulative = 0.0f;
        for (size_t j = 0; j + 1 < order.size(); j++) {  // the last (highest) token always stays
            cumulative += probs[j] / sum;
            if (cumulative <= remove_at_or_below) scores[order[j]] = NEG_INF;
        }
    }
}

int sample_token(const float* logits, int V, const SamplerConfig& config, Rng& rng) {
    sampler_check(config, V);
    const int n = allowed_ids(config, V);
    if (config.temperature == 0.0) {
        int best = 0;
        for (int v = 1; v < n; v++)
            if (logits[v] > logits[best]) best = v;
        return best;
    }
    std::vector<float> scores(V);
    sampler_warp(logits, V, config, scores.data());
    // softmax over the kept ids, unnormalized: the draw compares against u * total instead
    float max_score = NEG_INF;
    for (int v = 0; v < n; v++) max_score = std::max(max_score, scores[v]);
    if (max_score == NEG_INF)
        throw GrpoError("sample_token: every allowed logit is -inf (ids 0.." + std::to_string(n - 1) +
                        "), so there is nothing to sample; check the logits row and vocab_limit");
    float total = 0.0f;
    int last_kept = 0;
    for (int v = 0; v < n; v++) {
        if (scores[v] == NEG_INF) continue;
        scores[v] = std::exp(scores[v] - max_score);
        total += scores[v];
        last_kept = v;
    }
    // inverse CDF: the first id whose cumulative weight exceeds u * total
    const float target = rng.next_float() * total;
    float cumulative = 0.0f;
    for (int v = 0; v < n; v++) {
        if (scores[v] == NEG_INF) continue;
        cumulative += scores[v];
        if (target < cumulative) return v;
    }
    return last_kept;  // rounding left target just at or above the final sum
}

bool is_stop_token(int id, const std::vector<int>& stop_ids) {
    return std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end();
}
