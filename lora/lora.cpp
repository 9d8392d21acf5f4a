// lora.cpp: the LoRA buffer layout, PEFT's initialisation and the PEFT module/tensor names.
#include "lora/lora.h"

#include <cmath>

#include "data/rng.h"
#include "data/text.h"

float LoraConfig::scale() const {
    // rsLoRA (Kalajdzievski 2023) keeps the update's magnitude independent of the rank.
    // In double and rounded once, as PEFT's Python float scaling reaches the fp32 kernels.
    return (float)(rslora ? alpha / std::sqrt((double)R) : (double)alpha / R);
}

LoraWeights lora_create(const Qwen2Config& model, const LoraConfig& lora) {
    if (lora.R < 1) throw GrpoError("LoRA rank r must be at least 1, got " + std::to_string(lora.R));
    if (!(lora.alpha > 0) || !std::isfinite(lora.alpha)) {
        throw GrpoError("LoRA alpha must be a positive number, got " + std::to_string(lora.alpha));
    }
    if ((lora.targets & ((1u << NUM_LINEAR) - 1)) == 0 || (lora.targets >> NUM_LINEAR) != 0) {
        throw GrpoError("LoRA targets must be a non-empty subset of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj");
    }
    LoraWeights w;
    w.lora = lora;
    w.model = model;
    w.slots.assign(model.L, std::vector<LoraWeights::Slot>(NUM_LINEAR));
    size_t offset = 0;
    for (int l = 0; l < model.L; l++) {
        for (int s = 0; s < NUM_LINEAR; s++) {
            if (!lora.has(s)) continue;
            LoraWeights::Slot& slot = w.slots[l][s];
            slot.present = true;
            slot.out = linear_out_features(model, s);
            slot.in = linear_in_features(model, s);
            slot.a_offset = offset;
            offset += (size_t)lora.R * slot.in;
            slot.b_offset = offset;
            offset += (size_t)slot.out * lora.R;
        }
    }
    w.params.assign(offset, 0.0f);
    w.grads.assign(offset, 0.0f);
    w.adam_m.assign(offset, 0.0f);
    w.adam_v.assign(offset, 0.0f);
    return w;
}

void lora_init_peft(LoraWeights* w, uint64_t seed) {
    Rng rng(seed);
    std::fill(w->params.begin(), w->params.end(), 0.0f);
    for (int l = 0; l < w->model.L; l++) {
        for (int s = 0; s < NUM_LINEAR; s++) {
            const LoraWeights::Slot& slot = w->slots[l][s];
            if (!slot.present) continue;
            // kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in)
            double bound = 1.0 / std::sqrt((double)slot.in);
            float* A = w->A(l, s);
            for (int64_t i = 0; i < (int64_t)w->lora.R * slot.in; i++) {
                A[i] = (float)((2.0 * rng.next_float() - 1.0) * bound);
            }
        }
    }
    std::fill(w->grads.begin(), w->grads.end(), 0.0f);
    std::fill(w->adam_m.begin(), w->adam_m.end(), 0.0f);
    std::fill(w->adam_v.begin(), w->adam_v.end(), 0.0f);
    w->adam_step = 0;
}

std::vector<size_t> lora_tensor_sizes(const LoraWeights& w) {
    std::vector<size_t> sizes;
    for (int l = 0; l < w.model.L; l++) {
        for (int s = 0; s < NUM_LINEAR; s++) {
            const LoraWeights::Slot& slot = w.slots[l][s];
            if (!slot.present) continue;
            sizes.push_back((size_t)w.lora.R * slot.in);
            sizes.push_back((size_t)slot.out * w.lora.R);
        }
    }
    return sizes;
}

int lora_slot_of_module(const std::string& module_name) {
    for (int s = 0; s < NUM_LINEAR; s++)
        if (module_name == LINEAR_NAMES[s]) return s;
    return -1;
}

std::vector<std::string> lora_target_names(unsigned targets) {
    std::vector<std::string> names;
    for (int s = 0; s < NUM_LINEAR; s++)
        if ((targets >> s) & 1u) names.push_back(LINEAR_NAMES[s]);
    return names;
}

std::string lora_peft_key(int layer, int slot, char matrix) {
    return "base_model.model.model.layers." + std::to_string(layer) + "." + linear_parent(slot) + "." +
           LINEAR_NAMES[slot] + ".lora_" + std::string(1, matrix) + ".weight";
}
