// peft.h: LoRA adapters on disk in Hugging Face PEFT's format (adapter_model.safetensors + adapter_config.json), saved atomically and loaded with full checks.
#pragma once
#include <string>
#include <vector>

#include "lora/lora.h"

struct TensorView;

// What adapter_config.json says, as far as this trainer implements it.
struct PeftAdapterConfig {
    LoraConfig lora;               // r, lora_alpha, use_rslora, target_modules
    double lora_dropout = 0.0;     // read, never applied: PEFT's eval mode (and merging) ignores it too
    std::string base_model_name_or_path;  // empty when the file has null
};

// Reads an adapter_config.json (the file, or the adapter directory holding it). Accepts target_modules as a
// list of the seven Qwen2 linear names (or PEFT's "all-linear") and refuses every PEFT feature this trainer
// does not implement (DoRA, biases, fan_in_fan_out, layers_to_transform, rank/alpha patterns,
// modules_to_save, ...) with a GrpoError naming the file, the field, what it holds and what to do.
PeftAdapterConfig peft_read_config(const std::string& path);

// Loads DIR/adapter_config.json and DIR/adapter_model.safetensors for `model`. Tensors may be BF16, F16 or
// F32 (converted to fp32 exactly). Every tensor the config implies must be there with shape A [r, in],
// B [out, r], and nothing else may be: a GrpoError names the file, the tensor, the expected and the actual
// shape. grads and the AdamW moments come back zero (an adapter file holds no optimizer state).
// `config_out`, when given, receives the parsed adapter_config.json.
LoraWeights peft_load(const std::string& dir, const Qwen2Config& model, PeftAdapterConfig* config_out = nullptr);

// Writes w's params as a PEFT adapter into DIR (created if missing): adapter_model.safetensors (fp32, PEFT's
// key names) and adapter_config.json, each atomically (temp file + rename), so that
// PeftModel.from_pretrained(base, DIR) loads it. base_model_name_or_path may be empty (written as null).
void peft_save(const std::string& dir, const LoraWeights& w, const std::string& base_model_name_or_path = "");

// The adapter_config.json text peft_save writes (PEFT's own layout: sorted keys, 2-space indent).
std::string peft_config_json(const LoraConfig& lora, const std::string& base_model_name_or_path);
