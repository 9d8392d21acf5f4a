// bnb_format.h: bitsandbytes pre-quantized NF4 checkpoints (what transformers saves for a load_in_4bit model): reading into the NF4 weight plan, and writing.
#pragma once
#include <string>

#include "model/loader.h"
#include "model/weights.h"

// Per linear weight NAME ("model.layers.0.mlp.up_proj.weight", [N, K] in the model) the file holds
// (bitsandbytes' QuantState.as_dict(packed=True), double quantization):
//   NAME                                   U8  [N*K/2, 1]  the packed 4-bit codes
//   NAME.absmax                            U8  [N*K/64]    absmax of each block of 64, 8-bit quantized
//   NAME.quant_map                         F32 [16]        the NF4 code
//   NAME.nested_absmax                     F32 [blocks/256] the scale of each block of 256 absmax values
//   NAME.nested_quant_map                  F32 [256]       the dynamic map the absmax bytes index
//   NAME.quant_state.bitsandbytes__nf4     U8  [len]       UTF-8 JSON {"quant_type": "nf4", "blocksize": 64,
//       "dtype": "bfloat16", "shape": [N, K], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": x}
// Every other tensor (embeddings, norms, biases, lm_head when untied) is stored as is (bf16). The stored maps and
// offset are authoritative: they are copied into the plan, not replaced by our defaults.

// True when DIR/config.json has "quantization_config" with "quant_method": "bitsandbytes".
bool bnb_is_quantized_dir(const std::string& dir);

// Loads a bitsandbytes NF4 directory (config.json with quantization_config + model.safetensors or shards) into
// the NF4 weight plan. Validates quant_type nf4, blocksize 64, nested_blocksize 256, every shape against the
// config and every size; a checkpoint without double quantization (F32 absmax) is refused with a message
// saying to re-quantize with `quantize`. Throws GrpoError naming the file and the tensor.
Qwen2Weights bnb_load_dir(const std::string& dir, const LoadProgress& progress = LoadProgress());

// Writes NF4 weights (host buffer) as one safetensors file in the layout above, with metadata {"format": "pt"}
// as transformers writes it; for a tied model there is no lm_head. Atomic (PATH.tmp, then rename).
void bnb_save(const std::string& path, const Qwen2Weights& nf4_weights);

// Python's repr() of a float (what json.dumps prints): the shortest decimal that round-trips the double,
// in fixed notation when the decimal exponent is in [-4, 16), else like "1e-05" / "1.5e+16".
std::string python_float_repr(double x);
