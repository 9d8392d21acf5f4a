// cpu_model.h: the readable fp32 CPU reference of Qwen2 + LoRA (forward, chunked log-probs, KV cache, backward to LoRA) that every CUDA kernel is tested against.
#pragma once
#include <cstdint>
#include <vector>

#include "lora/lora.h"
#include "model/config.h"
#include "model/weights.h"
#include "quant/bf16.h"

// Where the arithmetic rounds. BF16 rounds every activation to bf16 exactly where HF's bf16 model does
// (so it can be compared with the bf16 dump); FP32 rounds nowhere (so it can be compared tightly with the
// fp32 dump, where HF ran the same bf16-valued weights in fp32). Accumulation is fp32 in both.
enum class CpuPrecision { FP32 = 0, BF16 = 1 };
const char* cpu_precision_name(CpuPrecision precision);

// An activation as HF stores it: rounded to bf16 in BF16 mode, untouched in FP32 mode.
inline float cpu_round(float x, CpuPrecision precision) {
    return precision == CpuPrecision::BF16 ? round_bf16(x) : x;
}

// ---- per-op functions (llm.c style): each is the reference its CUDA kernel is checked against ---------------
// N is a number of token rows. Every forward writes its output; every backward ADDS into its input gradients
// (several paths reach the same tensor: the residual stream, the base weight and the LoRA of one linear).
// The backward passes are plain fp32 and treat each bf16 rounding of the forward as the identity.

// out[n] = embed[tokens[n]] (bf16 rows, exact in fp32).
void cpu_embedding_forward(float* out, const int32_t* tokens, const bf16_bits* embed, int N, int C);

// RMSNorm: n = x / sqrt(mean(x^2) + eps), out = w * n. HF rounds n to bf16 before scaling by w.
// rstd [N] keeps 1/sqrt(mean(x^2) + eps) for the backward.
void cpu_rmsnorm_forward(float* out, float* rstd, const float* x, const bf16_bits* w, int N, int C, float eps,
                         CpuPrecision precision);
// dx += r * (w*dout) - r^3 * x * mean(w*dout*x): the derivative of x*r with r depending on every x.
void cpu_rmsnorm_backward(float* dx, const float* dout, const float* x, const float* rstd, const bf16_bits* w,
                          int N, int C);

// out [N, OUT] = in [N, IN] @ w^T (+ bias), fp32 sums, rounded once at the end (cuBLAS + bias epilogue).
void cpu_matmul_forward(float* out, const float* in, const bf16_bits* w, const bf16_bits* bias, int N, int IN,
                        int OUT, CpuPrecision precision);
// din [N, IN] += dout [N, OUT] @ w: the input gradient (the frozen weight gets none).
void cpu_matmul_backward(float* din, const float* dout, const bf16_bits* w, int N, int IN, int OUT);
// The weight of a base linear as bf16 [out, in]: `w` itself, or the NF4 codes dequantized into *scratch
// (one linear at a time: a real model never holds all of its weights dequantized).
const bf16_bits* cpu_linear_weight(const LinearWeight& lin, std::vector<bf16_bits>* scratch);

// LoRA on top of a base output y (in place): ax = A x [N, R]; y = y + scale * (B ax), all fp32 from the
// (bf16-valued) input, then rounded once: PEFT adds its fp32 adapter output to the bf16 base output.
void cpu_lora_forward(float* y, float* ax, const float* in, const float* A, const float* B, int N, int IN, int OUT,
                      int R, float scale, CpuPrecision precision);
// With dy the gradient of y: dB += scale * dy^T ax, d(ax) = scale * dy B, dA += d(ax)^T in, din += d(ax) A.
void cpu_lora_backward(float* din, float* dA, float* dB, const float* dy, const float* in, const float* ax,
                       const float* A, const float* B, int N, int IN, int OUT, int R, float scale);

// HF's inverse frequencies, 1 / theta^(2i/HD) in fp32, i < HD/2.
std::vector<float> cpu_rope_inv_freq(int HD, float theta);
// cos and sin of angle pos * inv_freq[i] for pos < T, [T, HD/2] each; HF rounds them to the model dtype.
void cpu_rope_tables(float* cos_out, float* sin_out, int T, int HD, float theta, CpuPrecision precision);
// RoPE in place on x [N, H, HD] at positions pos [N], with rotate_half(x) = cat(-x[HD/2:], x[:HD/2]):
// x' = x * cos + rotate_half(x) * sin (cos and sin repeat across the two halves).
void cpu_rope_forward(float* x, const int* pos, const float* cos_table, const float* sin_table, int N, int H,
                      int HD, CpuPrecision precision);
// The transpose of that rotation, in place on the gradient: dx = dx' * cos + rotate_half^T(dx' * sin).
void cpu_rope_backward(float* dx, const int* pos, const float* cos_table, const float* sin_table, int N, int H,
                       int HD);

// Causal grouped-query attention. q [B*Tq, NH*HD]: query i of sequence b is at position pos0 + i and attends
// keys 0..pos0+i of k, v [B, kv_T, KVH*HD] (kv_T >= pos0 + Tq: the batch's own keys, or a KV cache). Query head
// h uses key/value head h / (NH/KVH). scores = (q . k) / sqrt(HD), softmax in fp32, out = p @ v [B*Tq, NH*HD].
// probs [B, NH, Tq, pos0+Tq] (zero above the diagonal) is kept for the backward; nullptr skips it.
void cpu_attention_forward(float* out, float* probs, const float* q, const float* k, const float* v, int B, int Tq,
                           int pos0, int kv_T, int NH, int KVH, int HD, CpuPrecision precision);
// Training shape only (pos0 = 0, kv_T = T). Softmax backward ds = p * (dp - sum(p * dp)); the NH/KVH query
// heads sharing one key/value head all add into its dk, dv.
void cpu_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q,
                            const float* k, const float* v, int B, int T, int NH, int KVH, int HD);

// SwiGLU: a = silu(g) = g * sigmoid(g) (rounded), out = a * u (rounded). a [N, I] is kept for the backward.
void cpu_swiglu_forward(float* out, float* a, const float* g, const float* u, int N, int I, CpuPrecision precision);
// dg += dout * u * silu'(g), du += dout * a, with silu'(g) = s * (1 + g * (1 - s)), s = sigmoid(g).
void cpu_swiglu_backward(float* dg, float* du, const float* dout, const float* g, const float* u, const float* a,
                         int N, int I);

// out = round(x + y): the residual add.
void cpu_residual_forward(float* out, const float* x, const float* y, int N, CpuPrecision precision);

// The logits of one position: logits [V] = lm_head [V, C] @ x [C], rounded as HF's lm_head output.
void cpu_logits_row(float* logits, const float* x, const bf16_bits* lm_head, int V, int C, CpuPrecision precision);
// log softmax(logits / temperature)[target] of one position (fp32 with max subtraction, the sum in double).
// When probs is given it receives softmax(logits / temperature) for the backward.
float cpu_logprob_forward(const float* logits, int V, int target, float temperature, float* probs);
// dlogits = dlogp * (onehot(target) - probs) / temperature.
void cpu_logprob_backward(float* dlogits, const float* probs, int V, int target, float dlogp, float temperature);

// ---- the model --------------------------------------------------------------------------------------------------

// What one decoder layer keeps for the backward, for all N = B*T tokens. Fine for tests and small batches
// only (attention probabilities are B*NH*T*T floats): the GPU backend recomputes each layer instead.
struct CpuLayerActs {
    std::vector<float> x;                 // [N, C] the residual stream entering the layer
    std::vector<float> ln1, ln1_rstd;     // [N, C], [N] input RMSNorm
    std::vector<float> q, k, v;           // [N, NH*HD], [N, KVH*HD] x2; q and k after RoPE
    std::vector<float> probs;             // [B, NH, T, T] attention probabilities
    std::vector<float> att;               // [N, NH*HD] attention output, the input of o_proj
    std::vector<float> x_mid;             // [N, C] the residual stream after attention
    std::vector<float> ln2, ln2_rstd;     // [N, C], [N] post-attention RMSNorm
    std::vector<float> gate, up, act, mlp;  // [N, I] each: gate, up, silu(gate), silu(gate) * up
    std::vector<float> out;               // [N, C] the residual stream leaving the layer
    std::vector<float> lora_ax[NUM_LINEAR];  // [N, R] A x of each adapted linear
};

struct CpuActivations {
    int B = 0, T = 0;
    CpuPrecision precision = CpuPrecision::FP32;
    float temperature = 1.0f;
    std::vector<int32_t> tokens;          // [B*T]
    std::vector<CpuLayerActs> layers;     // [L]
    std::vector<float> final_norm, final_rstd;  // [N, C], [N]: the input of lm_head
};

// Sizes the buffers of *acts for B*Tq tokens (probs only when keep_probs: the KV cache path skips them).
void cpu_layer_acts_resize(CpuLayerActs* acts, const Qwen2Config& cfg, const LoraWeights* lora, int B, int Tq,
                           bool keep_probs);
// One decoder layer: acts->x [B*Tq, C] in, acts->out out, token i of sequence b at position pos0 + i.
// Without a cache (k_cache nullptr, pos0 = 0) attention reads this batch's own keys; with one, the layer
// first writes its keys and values into k_cache, v_cache [B, kv_T, KVH*HD] at positions pos0.. and attends
// to everything there. The full forward and the KV-cache path share it, so their arithmetic is identical.
void cpu_layer_forward(const Qwen2Weights& weights, const LoraWeights* lora, int layer, int B, int Tq, int pos0,
                       float* k_cache, float* v_cache, int kv_T, CpuPrecision precision, CpuLayerActs* acts);

// The forward pass to the final norm: hidden states for B sequences of T tokens (positions 0..T-1, no
// padding). lora may be nullptr (LoRA off: the GRPO reference model). Fills *acts (layer inputs, the final
// norm output at acts->final_norm, and everything the backward needs).
void cpu_forward_hidden(const Qwen2Weights& weights, const LoraWeights* lora, const int32_t* tokens, int B, int T,
                        CpuPrecision precision, CpuActivations* acts);
// Full logits [B, T, V] (tests and small inputs only).
void cpu_forward_logits(const Qwen2Weights& weights, const LoraWeights* lora, const int32_t* tokens, int B, int T,
                        CpuPrecision precision, float* logits);
// Per-token log-probs logp [B, T-1]: logp[b][t] = log softmax(logits[b][t] / temperature)[tokens[b][t+1]],
// one position's V logits at a time. With acts non-null everything for cpu_backward_logprobs is kept there.
void cpu_forward_logprobs(const Qwen2Weights& weights, const LoraWeights* lora, const int32_t* tokens, int B, int T,
                          float temperature, CpuPrecision precision, float* logp, CpuActivations* acts = nullptr);
// Given dloss/dlogp [B, T-1], ADDS dloss/dA and dloss/dB into lora->grads (the base weights are frozen).
// acts must come from cpu_forward_logprobs with this lora.
void cpu_backward_logprobs(const Qwen2Weights& weights, LoraWeights* lora, const CpuActivations& acts,
                           const float* dlogp);

// Keys (after RoPE) and values of every layer for B sequences, up to max_T positions each, for generation.
struct CpuKVCache {
    int B = 0, max_T = 0;
    int T = 0;                   // positions filled so far, the same for every sequence
    std::vector<float> k, v;     // [L, B, max_T, KVH*HD]
};
CpuKVCache cpu_kv_cache_create(const Qwen2Config& cfg, int B, int max_T);
// One layer's cache k_cache, v_cache [S, max_T, KVD]: row m of k, v [M, KVD] goes to position positions[m] of
// sequence slots[m] (slots nullptr: sequence m). A position outside [0, max_T) writes nothing, as the GPU's
// kv_cache_append (whose launcher cannot see device positions) does.
void cpu_kv_cache_append(float* k_cache, float* v_cache, const float* k, const float* v, const int* slots,
                         const int* positions, int M, int KVD, int max_T);
// A decode step's RoPE and cache append, what the GPU's decode_rope_append does in one launch: for each row m whose
// position is in [0, max_T), q [M, NH*HD] rotated in place (cpu_rope_forward) and k [M, KVH*HD] rotated on its way
// into the cache (k itself is left as it is) with v's row next to it (cpu_kv_cache_append). A row whose position
// is outside [0, max_T) is left alone entirely: the tables need only cover [0, max_T).
void cpu_decode_rope_append(float* q, float* k_cache, float* v_cache, const float* k, const float* v,
                            const int* slots, const int* positions, const float* cos_table, const float* sin_table,
                            int M, int NH, int KVH, int HD, int max_T, CpuPrecision precision);
// Runs Tn new tokens per sequence (tokens [B, Tn]) at positions cache->T.., appends their keys and values and
// writes the logits of the last new position of each sequence, logits [B, V]. Throws GrpoError when the
// cache would overflow. cpu_prefill starts from an empty cache; cpu_decode_step adds one token per sequence.
void cpu_kv_forward(const Qwen2Weights& weights, const LoraWeights* lora, CpuKVCache* cache, const int32_t* tokens,
                    int Tn, CpuPrecision precision, float* logits);
void cpu_prefill(const Qwen2Weights& weights, const LoraWeights* lora, CpuKVCache* cache, const int32_t* tokens,
                 int T, CpuPrecision precision, float* logits);
void cpu_decode_step(const Qwen2Weights& weights, const LoraWeights* lora, CpuKVCache* cache, const int32_t* tokens,
                     CpuPrecision precision, float* logits);
