// cpu_backward.cpp: the CPU reference backward pass, from dloss/dlogp through lm_head, every layer and the residual stream to the LoRA gradients.
#include <vector>

#include "model/cpu_model.h"

// The input gradient of y = W x + b + scale * B (A x) flows through the frozen W and through the adapter;
// the adapter's own gradients go to lora->grads.
static void linear_backward(float* dx, const float* dy, const float* x, int N, const Qwen2Weights& weights,
                            LoraWeights* lora, int layer, int slot, const CpuLayerActs& acts,
                            std::vector<bf16_bits>* scratch) {
    const LinearWeight& lin = weights.layers[layer].linear[slot];
    cpu_matmul_backward(dx, dy, cpu_linear_weight(lin, scratch), N, (int)lin.in, (int)lin.out);
    if (lora && lora->slots[layer][slot].present)
        cpu_lora_backward(dx, lora->dA(layer, slot), lora->dB(layer, slot), dy, x, acts.lora_ax[slot].data(),
                          lora->A(layer, slot), lora->B(layer, slot), N, (int)lin.in, (int)lin.out, lora->lora.R,
                          lora->lora.scale());
}

// One decoder layer backwards: d_resid holds dloss/d(layer output) on entry and dloss/d(layer input) on exit.
static void layer_backward(const Qwen2Weights& weights, LoraWeights* lora, int layer, const CpuActivations& all,
                           std::vector<float>* d_resid) {
    const Qwen2Config& cfg = weights.config;
    const LayerWeights& lw = weights.layers[layer];
    const CpuLayerActs& acts = all.layers[layer];
    const int B = all.B, T = all.T, N = B * T, C = cfg.C, I = cfg.I;
    const size_t QD = (size_t)cfg.NH * cfg.HD, KVD = (size_t)cfg.KVH * cfg.HD;
    std::vector<bf16_bits> scratch;

    // MLP block, out = x_mid + down(silu(gate(h)) * up(h)): the residual passes d_out straight to x_mid
    const std::vector<float>& d_out = *d_resid;
    std::vector<float> d_x_mid = d_out;
    std::vector<float> d_mlp((size_t)N * I, 0.0f), d_gate((size_t)N * I, 0.0f), d_up((size_t)N * I, 0.0f);
    std::vector<float> d_ln2((size_t)N * C, 0.0f);
    linear_backward(d_mlp.data(), d_out.data(), acts.mlp.data(), N, weights, lora, layer, LIN_DOWN, acts, &scratch);
    cpu_swiglu_backward(d_gate.data(), d_up.data(), d_mlp.data(), acts.gate.data(), acts.up.data(), acts.act.data(),
                        N, I);
    linear_backward(d_ln2.data(), d_gate.data(), acts.ln2.data(), N, weights, lora, layer, LIN_GATE, acts, &scratch);
    linear_backward(d_ln2.data(), d_up.data(), acts.ln2.data(), N, weights, lora, layer, LIN_UP, acts, &scratch);
    cpu_rmsnorm_backward(d_x_mid.data(), d_ln2.data(), acts.x_mid.data(), acts.ln2_rstd.data(),
                         lw.post_attention_norm, N, C);

    // attention block, x_mid = x + o(attention(rope(q(h)), rope(k(h)), v(h))), h the normed x
    std::vector<float> d_x = d_x_mid;
    std::vector<float> d_att(N * QD, 0.0f), dq(N * QD, 0.0f), dk(N * KVD, 0.0f), dv(N * KVD, 0.0f);
    std::vector<float> d_ln1((size_t)N * C, 0.0f);
    linear_backward(d_att.data(), d_x_mid.data(), acts.att.data(), N, weights, lora, layer, LIN_O, acts, &scratch);
    cpu_attention_backward(dq.data(), dk.data(), dv.data(), d_att.data(), acts.probs.data(), acts.q.data(),
                           acts.k.data(), acts.v.data(), B, T, cfg.NH, cfg.KVH, cfg.HD);
    std::vector<int> pos(N);
    for (int n = 0; n < N; n++) pos[n] = n % T;
    std::vector<float> cos_table((size_t)T * cfg.HD / 2), sin_table(cos_table.size());
    cpu_rope_tables(cos_table.data(), sin_table.data(), T, cfg.HD, cfg.rope_theta, all.precision);
    cpu_rope_backward(dq.data(), pos.data(), cos_table.data(), sin_table.data(), N, cfg.NH, cfg.HD);
    cpu_rope_backward(dk.data(), pos.data(), cos_table.data(), sin_table.data(), N, cfg.KVH, cfg.HD);
    linear_backward(d_ln1.data(), dq.data(), acts.ln1.data(), N, weights, lora, layer, LIN_Q, acts, &scratch);
    linear_backward(d_ln1.data(), dk.data(), acts.ln1.data(), N, weights, lora, layer, LIN_K, acts, &scratch);
    linear_backward(d_ln1.data(), dv.data(), acts.ln1.data(), N, weights, lora, layer, LIN_V, acts, &scratch);
    cpu_rmsnorm_backward(d_x.data(), d_ln1.data(), acts.x.data(), acts.ln1_rstd.data(), lw.input_norm, N, C);
    d_resid->swap(d_x);
}

void cpu_backward_logprobs(const Qwen2Weights& weights, LoraWeights* lora, const CpuActivations& acts,
                           const float* dlogp) {
    const Qwen2Config& cfg = weights.config;
    const int B = acts.B, T = acts.T, N = B * T, C = cfg.C, V = cfg.V;

    // lm_head, one position at a time: recompute its logits, dlogits = dlogp (onehot - p) / temperature
    std::vector<float> d_norm((size_t)N * C, 0.0f);
    std::vector<float> logits(V), probs(V), dlogits(V);
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T - 1; t++) {
            float g = dlogp[(size_t)b * (T - 1) + t];
            if (g == 0.0f) continue;  // masked tokens: nothing flows back
            size_t n = (size_t)b * T + t;
            cpu_logits_row(logits.data(), acts.final_norm.data() + n * C, weights.lm_head, V, C, acts.precision);
            cpu_logprob_forward(logits.data(), V, acts.tokens[n + 1], acts.temperature, probs.data());
            cpu_logprob_backward(dlogits.data(), probs.data(), V, acts.tokens[n + 1], g, acts.temperature);
            cpu_matmul_backward(d_norm.data() + n * C, dlogits.data(), weights.lm_head, 1, C, V);
        }
    }

    std::vector<float> d_resid((size_t)N * C, 0.0f);
    cpu_rmsnorm_backward(d_resid.data(), d_norm.data(), acts.layers[cfg.L - 1].out.data(), acts.final_rstd.data(),
                         weights.final_norm, N, C);
    for (int l = cfg.L - 1; l >= 0; l--) layer_backward(weights, lora, l, acts, &d_resid);
    // d_resid now holds dloss/d(embeddings): the embedding table is frozen, so it stops here
}
