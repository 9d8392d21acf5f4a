// merge.h: folding a LoRA adapter into the base weights (W' = bf16(W + scale * B A), as PEFT's merge_and_unload) and exporting the result as an HF model directory.
#pragma once
#include <string>

#include "lora/lora.h"
#include "model/weights.h"

// W' = bf16(float(W) + scale * (B @ A)) for one linear, into out [base.out * base.in]. The delta is formed in
// fp32 (each B@A entry summed in double and rounded once, the correctly rounded fp32 product), scaled in
// fp32, added to W in fp32 and rounded to bf16 once: what PEFT's merge does to a bf16 base, where
// `weight.data += delta` promotes to fp32. An NF4 base is dequantized to bf16 first (bitsandbytes'
// dequantize_4bit), so the result is the merged model in bf16. A [R, in], B [out, R]; base must be host memory.
void lora_merge_linear(const LinearWeight& base, const float* A, const float* B, int R, float scale, bf16_bits* out);

// config.json for cfg in transformers' format: model_type "qwen2", architectures ["Qwen2ForCausalLM"], the
// sizes, rms_norm_eps, rope_theta both at the top level (transformers 4) and in rope_parameters (5), tied
// embeddings, dtype bfloat16. `source_config` (optional, an HF config.json path) supplies the token ids
// (bos_token_id, eos_token_id, pad_token_id) that Qwen2Config does not hold.
std::string qwen2_config_json(const Qwen2Config& cfg, const std::string& source_config = "");

// Writes DIR (created if missing) as an HF model directory: config.json and model.safetensors (bf16, HF
// tensor names, no lm_head when the embeddings are tied), every file atomically. The seven linears of every
// layer are merged with `lora` (nullptr: exported as they are, NF4 ones dequantized). When source_dir is
// given, its token ids go into config.json and its generation_config.json and tokenizer files are copied,
// so the directory loads and generates like the original. Throws GrpoError when lora was made for another
// model shape. base must be host weights (load_hf_dir, or a .bin read into host memory).
void export_merged_hf_dir(const std::string& dir, const Qwen2Weights& base, const LoraWeights* lora,
                          const std::string& source_dir = "");
