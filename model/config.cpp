// config.cpp: Qwen2 presets, the HF config.json reader, consistency checks and the checkpoint tensor list.
#include "model/config.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <sys/stat.h>

#include "data/json.h"
#include "data/text.h"
#include "model/safetensors.h"

// ---- presets ------------------------------------------------------------------------------------

// Qwen2.5 base/instruct shapes. max_position_embeddings is 32768 as in the Instruct releases (some base
// releases say 131072); it only bounds the RoPE table, and a real config.json overrides it anyway.
static Qwen2Config make_config(const char* name, int V, int C, int I, int L, int NH, int KVH, bool tied) {
    Qwen2Config cfg;
    cfg.V = V;
    cfg.C = C;
    cfg.I = I;
    cfg.L = L;
    cfg.NH = NH;
    cfg.KVH = KVH;
    cfg.HD = C / NH;
    cfg.tied_embeddings = tied;
    cfg.source = std::string("preset ") + name;
    return cfg;
}

struct Preset {
    const char* name;
    int V, C, I, L, NH, KVH;
    bool tied;
};
static const Preset kPresets[] = {
    {"0.5B", 151936, 896, 4864, 24, 14, 2, true},
    {"1.5B", 151936, 1536, 8960, 28, 12, 2, true},
    {"3B", 151936, 2048, 11008, 36, 16, 2, true},
    {"7B", 152064, 3584, 18944, 28, 28, 4, false},
    // Small enough for CPU tests, with GQA (NH / KVH = 2) and both embedding layouts.
    {"tiny", 512, 64, 128, 2, 4, 2, true},
    {"tiny-untied", 512, 64, 128, 2, 4, 2, false},
};

std::vector<std::string> qwen2_preset_names() {
    std::vector<std::string> names;
    for (const Preset& p : kPresets) names.push_back(p.name);
    return names;
}

Qwen2Config qwen2_preset(const std::string& name) {
    for (const Preset& p : kPresets) {
        if (name == p.name) return make_config(p.name, p.V, p.C, p.I, p.L, p.NH, p.KVH, p.tied);
    }
    std::string known;
    for (const std::string& n : qwen2_preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw GrpoError("unknown model preset \"" + name + "\"; use one of " + known + ", or a config.json");
}

// ---- config.json ------------------------------------------------------------------------------

static const char* kUseOwnConfig = "use the config.json that came with the checkpoint";

// One config.json field, with messages that name the file and the field.
struct ConfigReader {
    const JsonValue& root;
    const std::string& where;

    // nullptr when absent or JSON null (HF writes null for "not set").
    const JsonValue* optional(const JsonValue& obj, const std::string& key) const {
        const JsonValue* v = obj.get(key);
        return v && v->type != JsonValue::NUL ? v : nullptr;
    }
    [[noreturn]] void fail(const std::string& field, const std::string& problem, const std::string& todo) const {
        throw GrpoError(where + ": field \"" + field + "\" " + problem + "; " + todo);
    }
    int positive_int(const JsonValue& v, const std::string& field) const {
        if (!v.is_number() || v.number != std::floor(v.number) || v.number < 1 || v.number > 2147483647.0) {
            fail(field, "must be a positive integer, got " + describe(v), kUseOwnConfig);
        }
        return (int)v.number;
    }
    int required_int(const std::string& field, const std::string& meaning) const {
        const JsonValue* v = optional(root, field);
        if (!v) fail(field, "is missing; expected a positive integer (" + meaning + ")", kUseOwnConfig);
        return positive_int(*v, field);
    }
    float positive_float(const JsonValue& v, const std::string& field) const {
        if (!v.is_number() || !(v.number > 0) || !std::isfinite(v.number)) {
            fail(field, "must be a positive number, got " + describe(v), kUseOwnConfig);
        }
        return (float)v.number;
    }
    bool optional_bool(const std::string& field, bool fallback) const {
        const JsonValue* v = optional(root, field);
        if (!v) return fallback;
        if (v->type != JsonValue::BOOL) fail(field, "must be true or false, got " + describe(*v), kUseOwnConfig);
        return v->boolean;
    }
    static std::string describe(const JsonValue& v) {
        if (v.is_string()) return json_quote(v.string);
        if (v.is_number()) return json_number(v.number);
        if (v.type == JsonValue::BOOL) return v.boolean ? "true" : "false";
        return std::string("a JSON ") + v.type_name();
    }
    // "type" is the pre-4.45 transformers spelling of "rope_type".
    std::string rope_type(const JsonValue& obj) const {
        const JsonValue* t = optional(obj, "rope_type");
        if (!t) t = optional(obj, "type");
        return t && t->is_string() ? t->string : "default";
    }
};

static Qwen2Config qwen2_config_from_json(const JsonValue& root, const std::string& where) {
    if (!root.is_object()) throw GrpoError(where + ": expected a JSON object (an HF config.json), got " + root.type_name());
    ConfigReader r{root, where};

    const JsonValue* model_type = r.optional(root, "model_type");
    if (!model_type) r.fail("model_type", "is missing; expected \"qwen2\"", kUseOwnConfig);
    if (!model_type->is_string() || model_type->string != "qwen2") {
        r.fail("model_type", "is " + r.describe(*model_type) + ", expected \"qwen2\"",
               "this trainer implements Qwen2/Qwen2.5 only; point it at a Qwen2.5 checkpoint");
    }
    const JsonValue* act = r.optional(root, "hidden_act");
    if (act && (!act->is_string() || act->string != "silu")) {
        r.fail("hidden_act", "is " + r.describe(*act) + ", expected \"silu\"", "only the SwiGLU MLP of Qwen2 is implemented");
    }
    if (r.optional_bool("use_sliding_window", false)) {
        r.fail("use_sliding_window", "is true, expected false",
               "sliding-window attention is not implemented; set it to false (Qwen2.5 releases ship it false)");
    }

    Qwen2Config cfg;
    cfg.source = where;
    cfg.C = r.required_int("hidden_size", "C, the hidden size");
    cfg.I = r.required_int("intermediate_size", "I, the MLP width");
    cfg.L = r.required_int("num_hidden_layers", "L, the number of layers");
    cfg.NH = r.required_int("num_attention_heads", "NH, the query heads");
    cfg.KVH = r.required_int("num_key_value_heads", "KVH, the key/value heads");
    cfg.V = r.required_int("vocab_size", "V, the vocabulary size");
    cfg.max_position_embeddings = r.required_int("max_position_embeddings", "the longest sequence");
    const JsonValue* head_dim = r.optional(root, "head_dim");
    cfg.HD = head_dim ? r.positive_int(*head_dim, "head_dim") : cfg.C / cfg.NH;

    const JsonValue* eps = r.optional(root, "rms_norm_eps");
    if (!eps) r.fail("rms_norm_eps", "is missing; expected a positive number (1e-6 for Qwen2.5)", kUseOwnConfig);
    cfg.rms_norm_eps = r.positive_float(*eps, "rms_norm_eps");
    // Qwen2Config's own default (not PretrainedConfig's): untied unless the file says otherwise.
    cfg.tied_embeddings = r.optional_bool("tie_word_embeddings", false);

    // RoPE: transformers >= 5 writes {"rope_parameters": {"rope_theta", "rope_type"}}, older files a top-level
    // rope_theta plus an optional rope_scaling. Only plain (unscaled) RoPE is implemented.
    const JsonValue* top_theta = r.optional(root, "rope_theta");
    const JsonValue* params = r.optional(root, "rope_parameters");
    const JsonValue* scaling = r.optional(root, "rope_scaling");
    const JsonValue* theta = top_theta;
    std::string theta_field = "rope_theta";
    for (const auto& [field, obj] : {std::make_pair("rope_parameters", params), std::make_pair("rope_scaling", scaling)}) {
        if (!obj) continue;
        if (!obj->is_object()) r.fail(field, "must be an object, got " + r.describe(*obj), kUseOwnConfig);
        if (r.rope_type(*obj) != "default") {
            r.fail(std::string(field) + ".rope_type", "is \"" + r.rope_type(*obj) + "\", expected \"default\"",
                   "scaled RoPE (yarn, dynamic, linear, ...) is not implemented; use the checkpoint's unscaled config");
        }
        const JsonValue* nested = r.optional(*obj, "rope_theta");
        if (!nested) continue;
        if (theta && r.positive_float(*theta, theta_field) != r.positive_float(*nested, std::string(field) + ".rope_theta")) {
            r.fail(std::string(field) + ".rope_theta", "is " + r.describe(*nested) + " but " + theta_field + " is " +
                   r.describe(*theta), "keep one value; they must agree");
        }
        theta = nested;
        theta_field = std::string(field) + ".rope_theta";
    }
    if (!theta) {
        r.fail("rope_theta", "is missing (neither top-level nor in rope_parameters); expected a positive number (1000000 for Qwen2.5)",
               kUseOwnConfig);
    }
    cfg.rope_theta = r.positive_float(*theta, theta_field);

    // transformers >= 5 renamed torch_dtype to dtype.
    const char* dtype_field = r.optional(root, "dtype") ? "dtype" : "torch_dtype";
    const JsonValue* dtype = r.optional(root, dtype_field);
    if (!dtype) r.fail("torch_dtype", "is missing (and so is \"dtype\"); expected \"bfloat16\", \"float16\" or \"float32\"", kUseOwnConfig);
    if (!dtype->is_string()) r.fail(dtype_field, "must be a string, got " + r.describe(*dtype), kUseOwnConfig);
    cfg.dtype = dtype->string;

    qwen2_config_validate(cfg);
    return cfg;
}

Qwen2Config qwen2_config_load(const std::string& path) {
    struct stat st;
    bool is_dir = stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    std::string file = is_dir ? (path.back() == '/' ? path : path + "/") + "config.json" : path;
    if (stat(file.c_str(), &st) != 0) {
        throw GrpoError(file + ": cannot open: " + strerror(errno) + "; pass the HF model directory or its config.json");
    }
    return qwen2_config_from_json(json_parse_file(file), file);
}

Qwen2Config qwen2_config_parse(const std::string& json_text, const std::string& where) {
    return qwen2_config_from_json(json_parse(json_text, where), where);
}

// ---- consistency ------------------------------------------------------------------------------

void qwen2_config_validate(const Qwen2Config& cfg) {
    const std::string& where = cfg.source;
    auto fail = [&](const std::string& problem) {
        throw GrpoError(where + ": " + problem + "; fix the config (or use a preset: 0.5B, 1.5B, 3B, 7B)");
    };
    const std::pair<const char*, int> sizes[] = {
        {"vocab_size (V)", cfg.V}, {"hidden_size (C)", cfg.C}, {"intermediate_size (I)", cfg.I},
        {"num_hidden_layers (L)", cfg.L}, {"num_attention_heads (NH)", cfg.NH},
        {"num_key_value_heads (KVH)", cfg.KVH}, {"head_dim (HD)", cfg.HD},
        {"max_position_embeddings", cfg.max_position_embeddings},
    };
    for (const auto& [field, value] : sizes) {
        if (value <= 0) fail(std::string(field) + " = " + std::to_string(value) + ", expected a positive integer");
    }
    if (cfg.C % cfg.NH != 0) {
        fail("hidden_size (C) = " + std::to_string(cfg.C) + " is not a multiple of num_attention_heads (NH) = " +
             std::to_string(cfg.NH));
    }
    if (cfg.NH % cfg.KVH != 0) {
        fail("num_attention_heads (NH) = " + std::to_string(cfg.NH) + " is not a multiple of num_key_value_heads (KVH) = " +
             std::to_string(cfg.KVH) + " (grouped-query attention shares each KV head among NH / KVH query heads)");
    }
    if (cfg.HD % 2 != 0) fail("head_dim (HD) = " + std::to_string(cfg.HD) + " is odd; RoPE rotates pairs of dimensions");
    if (!(cfg.rope_theta > 0) || !std::isfinite(cfg.rope_theta)) fail("rope_theta must be a positive number");
    if (!(cfg.rms_norm_eps > 0) || !std::isfinite(cfg.rms_norm_eps)) fail("rms_norm_eps must be a positive number");
    if (!cfg.qkv_bias) fail("qkv_bias is false, but every Qwen2 model has q/k/v biases");
    if (cfg.dtype != "bfloat16" && cfg.dtype != "float16" && cfg.dtype != "float32") {
        fail("torch_dtype \"" + cfg.dtype + "\" is not one of bfloat16, float16, float32");
    }
}

// ---- the tensors of a checkpoint ----------------------------------------------------------------

std::vector<TensorSpec> qwen2_tensor_specs(const Qwen2Config& cfg) {
    const int64_t V = cfg.V, C = cfg.C, I = cfg.I, Q = (int64_t)cfg.NH * cfg.HD, KV = (int64_t)cfg.KVH * cfg.HD;
    std::vector<TensorSpec> specs;
    specs.push_back({"model.embed_tokens.weight", {V, C}, "[V, C]"});
    for (int l = 0; l < cfg.L; l++) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        specs.push_back({p + "input_layernorm.weight", {C}, "[C]"});
        specs.push_back({p + "self_attn.q_proj.weight", {Q, C}, "[NH*HD, C]"});
        specs.push_back({p + "self_attn.q_proj.bias", {Q}, "[NH*HD]"});
        specs.push_back({p + "self_attn.k_proj.weight", {KV, C}, "[KVH*HD, C]"});
        specs.push_back({p + "self_attn.k_proj.bias", {KV}, "[KVH*HD]"});
        specs.push_back({p + "self_attn.v_proj.weight", {KV, C}, "[KVH*HD, C]"});
        specs.push_back({p + "self_attn.v_proj.bias", {KV}, "[KVH*HD]"});
        specs.push_back({p + "self_attn.o_proj.weight", {C, Q}, "[C, NH*HD]"});
        specs.push_back({p + "post_attention_layernorm.weight", {C}, "[C]"});
        specs.push_back({p + "mlp.gate_proj.weight", {I, C}, "[I, C]"});
        specs.push_back({p + "mlp.up_proj.weight", {I, C}, "[I, C]"});
        specs.push_back({p + "mlp.down_proj.weight", {C, I}, "[C, I]"});
    }
    specs.push_back({"model.norm.weight", {C}, "[C]"});
    if (!cfg.tied_embeddings) specs.push_back({"lm_head.weight", {V, C}, "[V, C]"});
    return specs;
}

void qwen2_check_checkpoint(const Qwen2Config& cfg, const SafetensorsCheckpoint& checkpoint) {
    const std::string todo = "; the checkpoint does not match " + cfg.source + " (another model size?): " + kUseOwnConfig;
    for (const TensorSpec& spec : qwen2_tensor_specs(cfg)) {
        const TensorView* t = checkpoint.find(spec.name);
        if (!t) {
            throw GrpoError(checkpoint.path() + ": tensor " + spec.name + " is missing; expected shape " + spec.dims + " = " +
                            shape_to_string(spec.shape) + todo);
        }
        if (t->shape != spec.shape) {
            throw GrpoError(t->file + ": tensor " + spec.name + " has shape " + shape_to_string(t->shape) + ", expected " +
                            spec.dims + " = " + shape_to_string(spec.shape) + todo);
        }
        if (t->dtype != "BF16" && t->dtype != "F16" && t->dtype != "F32") {
            throw GrpoError(t->file + ": tensor " + spec.name + " is " + t->dtype +
                            ", expected BF16, F16 or F32; quantized checkpoints are not supported, use the original bf16 release");
        }
    }
}
