// loader.h: loading the frozen base model into its weight plan from an HF directory, a bitsandbytes NF4 directory or the project's .bin.
#pragma once
#include <string>
#include <vector>

#include "model/weights.h"

// An HF model directory (config.json + model.safetensors or a sharded index). Tensors may be BF16, F16 or
// F32 (converted to bf16, rounding to nearest even). With format NF4 the seven linears of every layer are
// quantized on load exactly as bitsandbytes would. Throws GrpoError naming the file and tensor on any mismatch.
Qwen2Weights load_hf_dir(const std::string& dir, LinearFormat format);

// The tensor as bf16 values (a copy; converted from F16/F32 when needed). Throws GrpoError for other dtypes.
struct TensorView;
std::vector<bf16_bits> tensor_to_bf16(const TensorView& t);
