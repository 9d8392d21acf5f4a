// config.h: the Qwen2 architecture hyperparameters (presets and HF config.json) and the tensors a checkpoint must hold.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

class SafetensorsCheckpoint;

struct Qwen2Config {
    int V = 0;    // vocabulary size (rows of the embedding and of lm_head)
    int C = 0;    // hidden size (channels)
    int I = 0;    // MLP intermediate size
    int L = 0;    // layers
    int NH = 0;   // query heads
    int KVH = 0;  // key/value heads (grouped-query attention: NH / KVH query heads share one)
    int HD = 0;   // head dimension
    float rope_theta = 1e6f;
    float rms_norm_eps = 1e-6f;
    bool tied_embeddings = true;  // lm_head reuses model.embed_tokens.weight, and the checkpoint has no lm_head
    bool qkv_bias = true;         // always true for Qwen2: q/k/v projections have biases, o_proj does not
    int max_position_embeddings = 32768;
    std::string dtype = "bfloat16";  // the checkpoint's torch dtype: bfloat16, float16 or float32
    std::string source;              // preset name or config.json path, for messages
};

// "0.5B", "1.5B", "3B", "7B" (Qwen2.5) and "tiny" / "tiny-untied" (for tests). Throws GrpoError listing the
// names on an unknown one.
Qwen2Config qwen2_preset(const std::string& name);
std::vector<std::string> qwen2_preset_names();

// Reads an HF config.json (path to the file, or to the model directory holding it). Takes rope_theta from
// the top level (published Qwen2.5 files) or from "rope_parameters" (transformers >= 5). Refuses what this
// trainer does not implement (sliding-window attention, scaled RoPE, other model types or activations) and
// missing fields, with a GrpoError naming the file, the field, what was expected and what to do.
Qwen2Config qwen2_config_load(const std::string& path);
// The same from JSON text; where names it in messages.
Qwen2Config qwen2_config_parse(const std::string& json_text, const std::string& where);

// Checks internal consistency (positive sizes, C % NH == 0, NH % KVH == 0, even HD for RoPE, ...);
// throws GrpoError naming config.source and the offending fields.
void qwen2_config_validate(const Qwen2Config& cfg);

// A tensor an HF Qwen2 checkpoint must contain.
struct TensorSpec {
    std::string name;
    std::vector<int64_t> shape;  // linear weights are [out_features, in_features]
    std::string dims;            // the shape in dimension letters, "[I, C]", for messages
};
// Every tensor of an HF Qwen2 checkpoint for cfg, in model order (embedding, layer 0..L-1, norm, lm_head).
// 12 per layer, plus embed_tokens, norm, and lm_head when untied.
std::vector<TensorSpec> qwen2_tensor_specs(const Qwen2Config& cfg);
// Throws GrpoError naming the first tensor of qwen2_tensor_specs that the checkpoint lacks or holds with
// another shape (expected and actual), or holds in a dtype that is not floating point. Extra tensors are allowed.
void qwen2_check_checkpoint(const Qwen2Config& cfg, const SafetensorsCheckpoint& checkpoint);
