// lora.h: trainable LoRA adapters (A [R, in], B [out, R], fp32) on the seven linears of every layer, in one flat buffer with their gradients and AdamW moments.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

struct LoraConfig {
    int R = 32;              // rank
    float alpha = 32.0f;
    bool rslora = false;     // scale alpha/sqrt(R) instead of alpha/R
    unsigned targets = (1u << NUM_LINEAR) - 1;  // bit s set: slot s (LIN_Q..LIN_DOWN) has an adapter
    float scale() const;     // alpha / R, or alpha / sqrt(R) with rslora
    bool has(int slot) const { return (targets >> slot) & 1u; }
};

// y = W x + b + scale * B (A x). A has R rows of `in`, B has `out` rows of R.
// params, grads, adam_m and adam_v share one layout: for each layer, for each targeted slot, A then B,
// packed with no gaps (so params.size() is exactly the number of trainable parameters).
struct LoraWeights {
    LoraConfig lora;
    Qwen2Config model;
    struct Slot {
        bool present = false;
        int64_t out = 0, in = 0;
        size_t a_offset = 0, b_offset = 0;  // in floats, into params (and grads, adam_m, adam_v)
    };
    std::vector<std::vector<Slot>> slots;  // [L][NUM_LINEAR]
    std::vector<float> params, grads, adam_m, adam_v;
    int64_t adam_step = 0;  // AdamW updates applied so far (torch's state["step"]); checkpointed with m and v

    float* A(int layer, int slot) { return params.data() + slots[layer][slot].a_offset; }
    float* B(int layer, int slot) { return params.data() + slots[layer][slot].b_offset; }
    const float* A(int layer, int slot) const { return params.data() + slots[layer][slot].a_offset; }
    const float* B(int layer, int slot) const { return params.data() + slots[layer][slot].b_offset; }
    float* dA(int layer, int slot) { return grads.data() + slots[layer][slot].a_offset; }
    float* dB(int layer, int slot) { return grads.data() + slots[layer][slot].b_offset; }
    size_t num_params() const { return params.size(); }
};

// The layout for a model and an adapter config, everything zero. Throws GrpoError on R < 1, a non-positive
// alpha or an empty target set.
LoraWeights lora_create(const Qwen2Config& model, const LoraConfig& lora);

// PEFT's default initialisation (init_lora_weights=True): A ~ uniform(-1/sqrt(in), 1/sqrt(in)), which is
// kaiming_uniform_(a=sqrt(5)), and B = 0, so the adapter starts as an exact no-op. A is drawn from Rng(seed)
// layer by layer, slot by slot, row-major. Also clears grads, the moments and the step count.
void lora_init_peft(LoraWeights* w, uint64_t seed);

// The sizes of the tensors in buffer order (A then B for every present slot): clip_grad_norm_ takes the norm
// per tensor first, then the norm of those.
std::vector<size_t> lora_tensor_sizes(const LoraWeights& w);

// "q_proj" -> LIN_Q ...; -1 for a name that is not one of the seven.
int lora_slot_of_module(const std::string& module_name);
// The HF module names of the targeted slots in slot order: ["q_proj", ..., "down_proj"].
std::vector<std::string> lora_target_names(unsigned targets);
// PEFT's tensor name for layer N, slot s, matrix 'A' or 'B':
// "base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight".
std::string lora_peft_key(int layer, int slot, char matrix);
