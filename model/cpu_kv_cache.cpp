// cpu_kv_cache.cpp: generation on the CPU reference: prefill and decode steps over a per-layer key/value cache, returning the last position's logits; the cache append and a decode step's RoPE + append.
#include <algorithm>
#include <string>
#include <vector>

#include "data/text.h"
#include "model/cpu_model.h"

CpuKVCache cpu_kv_cache_create(const Qwen2Config& cfg, int B, int max_T) {
    CpuKVCache cache;
    cache.B = B;
    cache.max_T = max_T;
    cache.T = 0;
    size_t n = (size_t)cfg.L * B * max_T * cfg.KVH * cfg.HD;
    cache.k.assign(n, 0.0f);
    cache.v.assign(n, 0.0f);
    return cache;
}

void cpu_kv_cache_append(float* k_cache, float* v_cache, const float* k, const float* v, const int* slots,
                         const int* positions, int M, int KVD, int max_T) {
    for (int m = 0; m < M; m++) {
        const int slot = slots ? slots[m] : m, t = positions[m];
        if (t < 0 || t >= max_T) continue;
        const size_t dst = ((size_t)slot * max_T + t) * KVD, src = (size_t)m * KVD;
        std::copy(k + src, k + src + KVD, k_cache + dst);
        std::copy(v + src, v + src + KVD, v_cache + dst);
    }
}

void cpu_decode_rope_append(float* q, float* k_cache, float* v_cache, const float* k, const float* v,
                            const int* slots, const int* positions, const float* cos_table, const float* sin_table,
                            int M, int NH, int KVH, int HD, int max_T, CpuPrecision precision) {
    const int KVD = KVH * HD;
    std::vector<float> k_row(KVD);
    for (int m = 0; m < M; m++) {
        const int slot = slots ? slots[m] : m, t = positions[m];
        if (t < 0 || t >= max_T) continue;
        cpu_rope_forward(q + (size_t)m * NH * HD, &t, cos_table, sin_table, 1, NH, HD, precision);
        std::copy(k + (size_t)m * KVD, k + (size_t)(m + 1) * KVD, k_row.begin());
        cpu_rope_forward(k_row.data(), &t, cos_table, sin_table, 1, KVH, HD, precision);
        cpu_kv_cache_append(k_cache, v_cache, k_row.data(), v + (size_t)m * KVD, &slot, &t, 1, KVD, max_T);
    }
}

void cpu_kv_forward(const Qwen2Weights& weights, const LoraWeights* lora, CpuKVCache* cache, const int32_t* tokens,
                    int Tn, CpuPrecision precision, float* logits) {
    const Qwen2Config& cfg = weights.config;
    const int B = cache->B, C = cfg.C;
    if (Tn < 1 || cache->T + Tn > cache->max_T)
        throw GrpoError("KV cache: " + std::to_string(Tn) + " new positions after " + std::to_string(cache->T) +
                        " do not fit its " + std::to_string(cache->max_T) +
                        "; create the cache with max_T >= prompt + completion length");
    const size_t layer_size = (size_t)B * cache->max_T * cfg.KVH * cfg.HD;

    // one set of layer buffers, reused by every layer: generation keeps nothing for a backward
    CpuLayerActs acts;
    cpu_layer_acts_resize(&acts, cfg, lora, B, Tn, false);
    cpu_embedding_forward(acts.x.data(), tokens, weights.embed, B * Tn, C);
    for (int l = 0; l < cfg.L; l++) {
        cpu_layer_forward(weights, lora, l, B, Tn, cache->T, cache->k.data() + l * layer_size,
                          cache->v.data() + l * layer_size, cache->max_T, precision, &acts);
        acts.x.swap(acts.out);
    }
    cache->T += Tn;

    // every row is normed on its own, so norming only the last position of each sequence changes nothing
    std::vector<float> normed(C);
    float rstd;
    for (int b = 0; b < B; b++) {
        const float* last = acts.x.data() + ((size_t)b * Tn + Tn - 1) * C;
        cpu_rmsnorm_forward(normed.data(), &rstd, last, weights.final_norm, 1, C, cfg.rms_norm_eps, precision);
        cpu_logits_row(logits + (size_t)b * cfg.V, normed.data(), weights.lm_head, cfg.V, C, precision);
    }
}

void cpu_prefill(const Qwen2Weights& weights, const LoraWeights* lora, CpuKVCache* cache, const int32_t* tokens,
                 int T, CpuPrecision precision, float* logits) {
    cache->T = 0;
    cpu_kv_forward(weights, lora, cache, tokens, T, precision, logits);
}

void cpu_decode_step(const Qwen2Weights& weights, const LoraWeights* lora, CpuKVCache* cache, const int32_t* tokens,
                     CpuPrecision precision, float* logits) {
    cpu_kv_forward(weights, lora, cache, tokens, 1, precision, logits);
}
