// weights.h: the frozen Qwen2 base weights in one flat buffer laid out by a memory plan, with per-layer views (bf16 or NF4 linears).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "quant/bf16.h"
#include "quant/nf4.h"

// How the seven linear weights of every layer are stored. Embeddings, norms, biases and lm_head are
// always bf16: quantizing them saves little and costs accuracy (bitsandbytes does the same).
enum class LinearFormat { BF16 = 0, NF4 = 1 };
const char* linear_format_name(LinearFormat format);

// The seven linears of a layer, in HF order; they are also the LoRA targets.
enum LinearSlot { LIN_Q, LIN_K, LIN_V, LIN_O, LIN_GATE, LIN_UP, LIN_DOWN, NUM_LINEAR };
// HF module names: "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj".
extern const char* const LINEAR_NAMES[NUM_LINEAR];
// "self_attn" for q/k/v/o, "mlp" for gate/up/down: the HF parent module.
const char* linear_parent(int slot);
// out and in features of a slot: q [NH*HD, C], k/v [KVH*HD, C], o [C, NH*HD], gate/up [I, C], down [C, I].
int64_t linear_out_features(const Qwen2Config& cfg, int slot);
int64_t linear_in_features(const Qwen2Config& cfg, int slot);

// The N of the usual 6 * N * tokens training FLOPs: every linear weight of every layer plus lm_head
// (an embedding lookup does no multiply).
double linear_parameter_count(const Qwen2Config& cfg);

// A frozen base linear layer, y = x W^T + b with W [out, in] row-major.
struct LinearWeight {
    int64_t out = 0, in = 0;
    LinearFormat format = LinearFormat::BF16;
    const bf16_bits* w = nullptr;     // BF16 only
    NF4View nf4;                      // NF4 only
    const bf16_bits* bias = nullptr;  // q, k, v (Qwen2 has qkv bias); nullptr for the others
};

struct LayerWeights {
    const bf16_bits* input_norm = nullptr;           // [C], RMSNorm before attention
    const bf16_bits* post_attention_norm = nullptr;  // [C], RMSNorm before the MLP
    LinearWeight linear[NUM_LINEAR];
};

// One tensor's place in the flat buffer. NF4 linears take four entries: NAME (packed codes, U8 [out*in/2]),
// NAME.absmax (U8 [blocks]), NAME.nested_absmax (F32 [nested blocks]) and NAME.quant_tables
// (F32 [1 + 16 + 256]: the nested offset, the NF4 code, the nested dynamic map).
struct PlannedTensor {
    std::string name;            // the HF name ("model.layers.3.self_attn.q_proj.weight") plus the suffixes above
    std::string dtype;           // "BF16", "U8" or "F32"
    std::vector<int64_t> shape;
    size_t offset = 0;           // from the start of the buffer, a multiple of WEIGHT_ALIGN
    size_t bytes = 0;
};

// Every tensor starts on a 256-byte boundary: enough for any vector load on the CPU or the GPU.
#define WEIGHT_ALIGN 256

// The memory plan (llm.c style): the tensors of a model, in a fixed order (embedding; per layer the input
// norm, q, k, v with biases, o, the post-attention norm, gate, up, down; the final norm; lm_head when untied),
// each at a fixed offset. The same plan lays out the .bin file, the host buffer and the one GPU allocation.
struct WeightPlan {
    Qwen2Config config;
    LinearFormat format = LinearFormat::BF16;
    std::vector<PlannedTensor> tensors;
    size_t total_bytes = 0;
    const PlannedTensor* find(const std::string& name) const;
};
WeightPlan weight_plan(const Qwen2Config& cfg, LinearFormat format);

// The base model: pointers into a buffer laid out by `plan`, and what keeps that buffer alive.
struct Qwen2Weights {
    Qwen2Config config;
    WeightPlan plan;
    const bf16_bits* embed = nullptr;       // [V, C]
    std::vector<LayerWeights> layers;       // [L]
    const bf16_bits* final_norm = nullptr;  // [C]
    const bf16_bits* lm_head = nullptr;     // [V, C]; the same pointer as embed when the embeddings are tied
    const uint8_t* buffer = nullptr;        // the start of the planned buffer
    std::shared_ptr<const void> owner;      // the mapped file or heap buffer behind `buffer`
};

// Views of a planned buffer. `host_buffer` is read for the NF4 offsets (a view holds them by value);
// the pointers are made relative to `target_buffer`, which may be the same buffer or its copy in GPU memory.
Qwen2Weights weights_from_buffer(const WeightPlan& plan, const uint8_t* host_buffer, const uint8_t* target_buffer,
                                 std::shared_ptr<const void> owner);

// Filling a planned host buffer. Each throws GrpoError if `name` is not in the plan or the sizes disagree.
void weights_store_bf16(const WeightPlan& plan, const std::string& name, const bf16_bits* values, int64_t count,
                        uint8_t* buffer);
// A quantized linear (double quantization required): packed codes, absmax bytes, nested absmax and the tables.
void weights_store_nf4(const WeightPlan& plan, const std::string& name, const NF4Tensor& t, uint8_t* buffer);
// A zeroed heap buffer of plan.total_bytes, aligned to WEIGHT_ALIGN; the shared_ptr frees it.
std::shared_ptr<uint8_t> weights_alloc(const WeightPlan& plan);

// A model of the given shape with random weights, for benchmarks and smoke runs: bf16 tensors uniform in
// +-0.02 (norms 1); with NF4, random codes and absmax bytes under bitsandbytes' tables (quantizing random bf16
// weights would take minutes at 7B and change nothing a benchmark measures). Deterministic for a seed.
Qwen2Weights weights_random(const Qwen2Config& cfg, LinearFormat format, uint64_t seed);
