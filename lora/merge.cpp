// merge.cpp: LoRA merged into bf16 (or dequantized NF4) base linears, and the merged model written as an HF directory.
#include "lora/merge.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <vector>

#include "data/atomic_file.h"
#include "data/json.h"
#include "data/text.h"
#include "lora/peft.h"
#include "model/config.h"
#include "model/safetensors.h"

void lora_merge_linear(const LinearWeight& base, const float* A, const float* B, int R, float scale, bf16_bits* out) {
    const int64_t out_features = base.out, in_features = base.in;
    if (base.format == LinearFormat::NF4) {
        nf4_view_dequantize(base.nf4, out);
    } else {
        memcpy(out, base.w, (size_t)out_features * in_features * sizeof(bf16_bits));
    }
    // One output row at a time: row o of B @ A is sum_r B[o, r] * A[r, :], accumulated in double over the
    // rows of A (contiguous, so the inner loop vectorizes) and rounded to fp32 once.
    std::vector<double> row(in_features);
    for (int64_t o = 0; o < out_features; o++) {
        std::fill(row.begin(), row.end(), 0.0);
        for (int r = 0; r < R; r++) {
            const double b = B[o * R + r];
            const float* a = A + (int64_t)r * in_features;
            for (int64_t i = 0; i < in_features; i++) row[i] += b * a[i];
        }
        bf16_bits* w = out + o * in_features;
        for (int64_t i = 0; i < in_features; i++) {
            float delta = (float)row[i] * scale;
            w[i] = f32_to_bf16(bf16_to_f32(w[i]) + delta);
        }
    }
}

// ---- config.json ------------------------------------------------------------------------------------

// A JSON value that holds token ids: a number, or a list of numbers (Qwen2.5-Instruct's eos_token_id is a list
// in generation_config.json, a number in config.json).
static bool write_token_ids(const JsonValue& v, std::string* out) {
    if (v.is_number()) {
        *out = json_number(v.number);
        return true;
    }
    if (!v.is_array()) return false;
    *out = "[";
    for (size_t i = 0; i < v.array.size(); i++) {
        if (!v.array[i].is_number()) return false;
        *out += (i ? ", " : "") + json_number(v.array[i].number);
    }
    *out += "]";
    return true;
}

// rope_theta as transformers writes it (1000000.0), or the shortest float when not integral.
static std::string json_float_field(float x) {
    if (x == std::floor(x) && std::fabs(x) < 1e15f) {
        char buf[40];
        snprintf(buf, sizeof(buf), "%.1f", (double)x);
        return buf;
    }
    return json_number_f32(x);
}

std::string qwen2_config_json(const Qwen2Config& cfg, const std::string& source_config) {
    std::vector<std::pair<std::string, std::string>> fields = {
        {"architectures", "[\"Qwen2ForCausalLM\"]"},
        {"attention_dropout", "0.0"},
        {"dtype", "\"bfloat16\""},  // transformers >= 5
        {"hidden_act", "\"silu\""},
        {"hidden_size", std::to_string(cfg.C)},
        {"initializer_range", "0.02"},
        {"intermediate_size", std::to_string(cfg.I)},
        {"max_position_embeddings", std::to_string(cfg.max_position_embeddings)},
        {"max_window_layers", std::to_string(cfg.L)},
        {"model_type", "\"qwen2\""},
        {"num_attention_heads", std::to_string(cfg.NH)},
        {"num_hidden_layers", std::to_string(cfg.L)},
        {"num_key_value_heads", std::to_string(cfg.KVH)},
        {"rms_norm_eps", json_number_f32(cfg.rms_norm_eps)},
        {"rope_parameters", "{\"rope_theta\": " + json_float_field(cfg.rope_theta) + ", \"rope_type\": \"default\"}"},
        {"rope_theta", json_float_field(cfg.rope_theta)},
        {"sliding_window", "null"},
        {"tie_word_embeddings", cfg.tied_embeddings ? "true" : "false"},
        {"torch_dtype", "\"bfloat16\""},  // transformers < 5
        {"use_cache", "true"},
        {"use_sliding_window", "false"},
        {"vocab_size", std::to_string(cfg.V)},
    };
    // Qwen2 derives the head size from hidden_size / num_attention_heads unless told otherwise.
    if (cfg.HD != cfg.C / cfg.NH) fields.push_back({"head_dim", std::to_string(cfg.HD)});
    if (!source_config.empty()) {
        const JsonValue src = json_parse_file(source_config);
        for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
            const JsonValue* v = src.get(key);
            std::string text;
            if (v && write_token_ids(*v, &text)) fields.push_back({key, text});
        }
    }
    std::sort(fields.begin(), fields.end());
    std::string j = "{\n";
    for (size_t i = 0; i < fields.size(); i++) {
        j += "  " + json_quote(fields[i].first) + ": " + fields[i].second + (i + 1 < fields.size() ? ",\n" : "\n");
    }
    return j + "}\n";
}

// ---- the HF directory ---------------------------------------------------------------------------------

static std::string linear_weight_name(int layer, int slot) {
    return "model.layers." + std::to_string(layer) + "." + linear_parent(slot) + "." + LINEAR_NAMES[slot] + ".weight";
}

void export_merged_hf_dir(const std::string& dir, const Qwen2Weights& base, const LoraWeights* lora,
                          const std::string& source_dir) {
    const Qwen2Config& cfg = base.config;
    if (lora) {
        const Qwen2Config& m = lora->model;
        if (m.L != cfg.L || m.C != cfg.C || m.I != cfg.I || m.NH != cfg.NH || m.KVH != cfg.KVH || m.HD != cfg.HD) {
            throw GrpoError("the LoRA adapter was made for " + m.source + " (L=" + std::to_string(m.L) + ", C=" + std::to_string(m.C) +
                            ", I=" + std::to_string(m.I) + ") but the base model is " + cfg.source + " (L=" + std::to_string(cfg.L) +
                            ", C=" + std::to_string(cfg.C) + ", I=" + std::to_string(cfg.I) + "); merge it into the model it was trained on");
        }
    }
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw GrpoError(dir + ": cannot create the output directory: " + ec.message() + "; choose another output path");

    // Merged (or dequantized) linears need their own storage; everything else is written from the plan's buffer.
    std::vector<std::vector<bf16_bits>> merged;
    merged.reserve((size_t)cfg.L * NUM_LINEAR);
    std::vector<TensorToWrite> tensors;
    for (const TensorSpec& spec : qwen2_tensor_specs(cfg)) {
        int layer = -1, slot = -1;
        for (int l = 0; l < cfg.L && slot < 0; l++)
            for (int s = 0; s < NUM_LINEAR; s++)
                if (spec.name == linear_weight_name(l, s)) { layer = l; slot = s; break; }
        TensorToWrite t{spec.name, "BF16", spec.shape, nullptr, (size_t)shape_numel(spec.shape) * sizeof(bf16_bits)};
        const LinearWeight* linear = slot >= 0 ? &base.layers[layer].linear[slot] : nullptr;
        bool with_lora = linear && lora && lora->slots[layer][slot].present;
        if (linear && (with_lora || linear->format == LinearFormat::NF4)) {
            merged.emplace_back((size_t)shape_numel(spec.shape));
            if (with_lora) {
                lora_merge_linear(*linear, lora->A(layer, slot), lora->B(layer, slot), lora->lora.R, lora->lora.scale(), merged.back().data());
            } else {
                nf4_view_dequantize(linear->nf4, merged.back().data());
            }
            t.data = merged.back().data();
        } else {
            const PlannedTensor* planned = base.plan.find(spec.name);
            if (!planned || planned->dtype != "BF16" || planned->bytes != t.nbytes) {
                throw GrpoError("export: tensor " + spec.name + " is not a bf16 tensor of the base model's weight plan (a bug)");
            }
            t.data = base.buffer + planned->offset;
        }
        tensors.push_back(t);
    }
    const std::string source_config = source_dir.empty() ? "" : source_dir + "/config.json";
    safetensors_write(dir + "/model.safetensors", tensors, {{"format", "pt"}});
    write_file_atomic(dir + "/config.json", qwen2_config_json(cfg, source_config));
    if (!source_dir.empty()) {
        for (const char* file : {"generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                                 "special_tokens_map.json", "added_tokens.json"}) {
            const std::string from = source_dir + "/" + file;
            if (std::filesystem::exists(from)) write_file_atomic(dir + "/" + file, read_file(from));
        }
    }
}
