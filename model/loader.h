// loader.h: loading the frozen base model into its weight plan from an HF directory, a bitsandbytes NF4 directory or the project's .bin.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "model/weights.h"

// An HF model directory (config.json + model.safetensors or a sharded index). Tensors may be BF16, F16 or
// F32 (converted to bf16, rounding to nearest even). With format NF4 the seven linears of every layer are
// quantized on load exactly as bitsandbytes would. Throws GrpoError naming the file and tensor on any mismatch.
Qwen2Weights load_hf_dir(const std::string& dir, LinearFormat format);

// Called before each tensor is loaded or converted with its index (from 0), the count and its name, so
// programs can print progress on big models; loading a 7B model takes a while.
typedef std::function<void(size_t i, size_t n, const std::string& name)> LoadProgress;
// load_hf_dir, reporting progress (an empty progress is allowed).
Qwen2Weights load_hf_dir(const std::string& dir, LinearFormat format, const LoadProgress& progress);

// Stores a bf16 tensor of shape [rows, cols] (or [n]) into a planned buffer: as NF4 (quantized exactly as
// bitsandbytes would, with double quantization) when it is a linear weight and the plan is NF4, as bf16 otherwise.
void weights_store_from_bf16(const WeightPlan& plan, const std::string& name, const std::vector<int64_t>& shape,
                             const bf16_bits* values, uint8_t* buffer);
// The same weights with the linears quantized to NF4 (a new buffer); `bf16` must have BF16 linears.
Qwen2Weights weights_quantize_nf4(const Qwen2Weights& bf16, const LoadProgress& progress);
// True for the names bitsandbytes quantizes: the seven linears of a layer ("..._proj.weight").
bool is_linear_weight(const std::string& name);

// A BF16, F16 or F32 tensor's values as a copy: as fp32 (exact for every dtype), or as bf16 (F16 and F32
// rounded to nearest even). Throw GrpoError naming the file and tensor for any other dtype.
struct TensorView;
std::vector<float> tensor_to_f32(const TensorView& t);
std::vector<bf16_bits> tensor_to_bf16(const TensorView& t);
