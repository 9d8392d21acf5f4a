// cpu_forward.cpp: the CPU reference forward pass of Qwen2 + LoRA: decoder layers, final norm, logits and chunked per-token log-probs.
#include <vector>

#include "model/cpu_model.h"

void cpu_layer_acts_resize(CpuLayerActs* acts, const Qwen2Config& cfg, const LoraWeights* lora, int B, int Tq,
                           bool keep_probs) {
    size_t N = (size_t)B * Tq, QD = (size_t)cfg.NH * cfg.HD, KVD = (size_t)cfg.KVH * cfg.HD;
    acts->x.resize(N * cfg.C);
    acts->ln1.resize(N * cfg.C);
    acts->ln1_rstd.resize(N);
    acts->q.resize(N * QD);
    acts->k.resize(N * KVD);
    acts->v.resize(N * KVD);
    acts->probs.resize(keep_probs ? (size_t)B * cfg.NH * Tq * Tq : 0);
    acts->att.resize(N * QD);
    acts->x_mid.resize(N * cfg.C);
    acts->ln2.resize(N * cfg.C);
    acts->ln2_rstd.resize(N);
    acts->gate.resize(N * cfg.I);
    acts->up.resize(N * cfg.I);
    acts->act.resize(N * cfg.I);
    acts->mlp.resize(N * cfg.I);
    acts->out.resize(N * cfg.C);
    for (int s = 0; s < NUM_LINEAR; s++) {
        bool adapted = lora && lora->lora.has(s);
        acts->lora_ax[s].resize(adapted ? N * lora->lora.R : 0);
    }
}

// y = W x + b, plus scale * B (A x) when this linear has an adapter (the base output rounded first, as PEFT).
static void linear_forward(float* y, const float* x, int N, const Qwen2Weights& weights, const LoraWeights* lora,
                           int layer, int slot, CpuPrecision precision, CpuLayerActs* acts,
                           std::vector<bf16_bits>* scratch) {
    const LinearWeight& lin = weights.layers[layer].linear[slot];
    cpu_matmul_forward(y, x, cpu_linear_weight(lin, scratch), lin.bias, N, (int)lin.in, (int)lin.out, precision);
    if (lora && lora->slots[layer][slot].present)
        cpu_lora_forward(y, acts->lora_ax[slot].data(), x, lora->A(layer, slot), lora->B(layer, slot), N,
                         (int)lin.in, (int)lin.out, lora->lora.R, lora->lora.scale(), precision);
}

void cpu_layer_forward(const Qwen2Weights& weights, const LoraWeights* lora, int layer, int B, int Tq, int pos0,
                       float* k_cache, float* v_cache, int kv_T, CpuPrecision precision, CpuLayerActs* acts) {
    const Qwen2Config& cfg = weights.config;
    const LayerWeights& lw = weights.layers[layer];
    const int N = B * Tq, C = cfg.C, KVD = cfg.KVH * cfg.HD;
    std::vector<bf16_bits> scratch;  // one dequantized NF4 linear at a time
    std::vector<float> proj((size_t)N * C);  // the output of o_proj, then of down_proj

    // attention block: x_mid = x + o_proj(attention(rope(q), rope(k), v)) on the normed x
    cpu_rmsnorm_forward(acts->ln1.data(), acts->ln1_rstd.data(), acts->x.data(), lw.input_norm, N, C,
                        cfg.rms_norm_eps, precision);
    linear_forward(acts->q.data(), acts->ln1.data(), N, weights, lora, layer, LIN_Q, precision, acts, &scratch);
    linear_forward(acts->k.data(), acts->ln1.data(), N, weights, lora, layer, LIN_K, precision, acts, &scratch);
    linear_forward(acts->v.data(), acts->ln1.data(), N, weights, lora, layer, LIN_V, precision, acts, &scratch);
    std::vector<int> pos(N);
    for (int n = 0; n < N; n++) pos[n] = pos0 + n % Tq;
    std::vector<float> cos_table((size_t)(pos0 + Tq) * cfg.HD / 2), sin_table(cos_table.size());
    cpu_rope_tables(cos_table.data(), sin_table.data(), pos0 + Tq, cfg.HD, cfg.rope_theta, precision);
    cpu_rope_forward(acts->q.data(), pos.data(), cos_table.data(), sin_table.data(), N, cfg.NH, cfg.HD, precision);
    cpu_rope_forward(acts->k.data(), pos.data(), cos_table.data(), sin_table.data(), N, cfg.KVH, cfg.HD, precision);
    const float* k_all = acts->k.data();
    const float* v_all = acts->v.data();
    if (k_cache) {
        std::vector<int> seq(N);  // row n is token n % Tq of sequence n / Tq, at position pos[n]
        for (int n = 0; n < N; n++) seq[n] = n / Tq;
        cpu_kv_cache_append(k_cache, v_cache, acts->k.data(), acts->v.data(), seq.data(), pos.data(), N, KVD, kv_T);
        k_all = k_cache;
        v_all = v_cache;
    }
    cpu_attention_forward(acts->att.data(), acts->probs.empty() ? nullptr : acts->probs.data(), acts->q.data(), k_all,
                          v_all, B, Tq, pos0, kv_T, cfg.NH, cfg.KVH, cfg.HD, precision);
    linear_forward(proj.data(), acts->att.data(), N, weights, lora, layer, LIN_O, precision, acts, &scratch);
    cpu_residual_forward(acts->x_mid.data(), acts->x.data(), proj.data(), N * C, precision);

    // MLP block: out = x_mid + down_proj(silu(gate_proj(h)) * up_proj(h)), h the normed x_mid
    cpu_rmsnorm_forward(acts->ln2.data(), acts->ln2_rstd.data(), acts->x_mid.data(), lw.post_attention_norm, N, C,
                        cfg.rms_norm_eps, precision);
    linear_forward(acts->gate.data(), acts->ln2.data(), N, weights, lora, layer, LIN_GATE, precision, acts, &scratch);
    linear_forward(acts->up.data(), acts->ln2.data(), N, weights, lora, layer, LIN_UP, precision, acts, &scratch);
    cpu_swiglu_forward(acts->mlp.data(), acts->act.data(), acts->gate.data(), acts->up.data(), N, cfg.I, precision);
    linear_forward(proj.data(), acts->mlp.data(), N, weights, lora, layer, LIN_DOWN, precision, acts, &scratch);
    cpu_residual_forward(acts->out.data(), acts->x_mid.data(), proj.data(), N * C, precision);
}

void cpu_forward_hidden(const Qwen2Weights& weights, const LoraWeights* lora, const int32_t* tokens, int B, int T,
                        CpuPrecision precision, CpuActivations* acts) {
    const Qwen2Config& cfg = weights.config;
    const int N = B * T;
    acts->B = B;
    acts->T = T;
    acts->precision = precision;
    acts->tokens.assign(tokens, tokens + N);
    acts->layers.resize(cfg.L);
    for (int l = 0; l < cfg.L; l++) cpu_layer_acts_resize(&acts->layers[l], cfg, lora, B, T, true);

    cpu_embedding_forward(acts->layers[0].x.data(), tokens, weights.embed, N, cfg.C);
    for (int l = 0; l < cfg.L; l++) {
        if (l > 0) acts->layers[l].x = acts->layers[l - 1].out;
        cpu_layer_forward(weights, lora, l, B, T, 0, nullptr, nullptr, T, precision, &acts->layers[l]);
    }
    acts->final_norm.resize((size_t)N * cfg.C);
    acts->final_rstd.resize(N);
    cpu_rmsnorm_forward(acts->final_norm.data(), acts->final_rstd.data(), acts->layers[cfg.L - 1].out.data(),
                        weights.final_norm, N, cfg.C, cfg.rms_norm_eps, precision);
}

void cpu_forward_logits(const Qwen2Weights& weights, const LoraWeights* lora, const int32_t* tokens, int B, int T,
                        CpuPrecision precision, float* logits) {
    const Qwen2Config& cfg = weights.config;
    CpuActivations acts;
    cpu_forward_hidden(weights, lora, tokens, B, T, precision, &acts);
    for (int n = 0; n < B * T; n++)
        cpu_logits_row(logits + (size_t)n * cfg.V, acts.final_norm.data() + (size_t)n * cfg.C, weights.lm_head, cfg.V,
                       cfg.C, precision);
}

void cpu_forward_logprobs(const Qwen2Weights& weights, const LoraWeights* lora, const int32_t* tokens, int B, int T,
                          float temperature, CpuPrecision precision, float* logp, CpuActivations* acts) {
    const Qwen2Config& cfg = weights.config;
    CpuActivations local;
    if (!acts) acts = &local;
    cpu_forward_hidden(weights, lora, tokens, B, T, precision, acts);
    acts->temperature = temperature;
    // one position's V logits at a time: a real vocabulary (152k) times B*T positions would not fit
    std::vector<float> logits(cfg.V);
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T - 1; t++) {
            size_t n = (size_t)b * T + t;
            cpu_logits_row(logits.data(), acts->final_norm.data() + n * cfg.C, weights.lm_head, cfg.V, cfg.C,
                           precision);
            logp[(size_t)b * (T - 1) + t] = cpu_logprob_forward(logits.data(), cfg.V, tokens[n + 1], temperature,
                                                                nullptr);
        }
    }
}
