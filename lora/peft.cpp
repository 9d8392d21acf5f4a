// peft.cpp: PEFT adapter directories: adapter_config.json (read with refusals, written in PEFT's layout) and adapter_model.safetensors.
#include "lora/peft.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>
#include <sys/stat.h>

#include "data/atomic_file.h"
#include "data/json.h"
#include "data/text.h"
#include "model/loader.h"
#include "model/safetensors.h"

static const char* kConfigFile = "adapter_config.json";
static const char* kTensorFile = "adapter_model.safetensors";

static std::string join_path(const std::string& dir, const std::string& file) {
    return dir.empty() || dir.back() == '/' ? dir + file : dir + "/" + file;
}

static std::string join_names(const std::vector<std::string>& names) {
    std::string out;
    for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
}

static bool is_directory(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// ---- adapter_config.json --------------------------------------------------------------------------

static std::string describe(const JsonValue& v) {
    if (v.is_string()) return json_quote(v.string);
    if (v.is_number()) return json_number(v.number);
    if (v.type == JsonValue::BOOL) return v.boolean ? "true" : "false";
    if (v.is_array()) return "a list of " + std::to_string(v.array.size()) + (v.array.size() == 1 ? " item" : " items");
    if (v.is_object()) return "an object with " + std::to_string(v.object.size()) + " entries";
    return "null";
}

// "Not set" in PEFT's files is null, false, an empty list or an empty object, depending on the field.
static bool is_unset(const JsonValue* v) {
    if (!v || v->type == JsonValue::NUL) return true;
    if (v->type == JsonValue::BOOL) return !v->boolean;
    if (v->is_array()) return v->array.empty();
    if (v->is_object()) return v->object.empty();
    return false;
}

PeftAdapterConfig peft_read_config(const std::string& path) {
    const std::string file = is_directory(path) ? join_path(path, kConfigFile) : path;
    struct stat st;
    if (stat(file.c_str(), &st) != 0) {
        throw GrpoError(file + ": cannot open: " + strerror(errno) + "; pass a PEFT adapter directory (it holds " +
                        kConfigFile + " and " + kTensorFile + ")");
    }
    const JsonValue root = json_parse_file(file);
    if (!root.is_object()) throw GrpoError(file + ": expected a JSON object (a PEFT adapter_config.json), got " + root.type_name());
    auto fail = [&](const std::string& field, const std::string& problem, const std::string& todo) {
        throw GrpoError(file + ": field \"" + field + "\" " + problem + "; " + todo);
    };
    auto field = [&](const char* key) -> const JsonValue* {
        const JsonValue* v = root.get(key);
        return v && v->type != JsonValue::NUL ? v : nullptr;
    };

    const JsonValue* peft_type = field("peft_type");
    if (!peft_type || !peft_type->is_string() || peft_type->string != "LORA") {
        fail("peft_type", peft_type ? "is " + describe(*peft_type) + ", expected \"LORA\"" : "is missing, expected \"LORA\"",
             "only LoRA adapters are supported");
    }
    const JsonValue* task_type = field("task_type");
    if (task_type && (!task_type->is_string() || task_type->string != "CAUSAL_LM")) {
        fail("task_type", "is " + describe(*task_type) + ", expected \"CAUSAL_LM\"",
             "only adapters for causal language models (Qwen2ForCausalLM) are supported");
    }

    // What PEFT can express but this trainer does not implement: refuse rather than silently train or merge
    // something else. Each entry: the field, and what to do about it.
    static const std::pair<const char*, const char*> kUnsupported[] = {
        {"use_dora", "DoRA is not implemented; use a plain LoRA adapter (use_dora false)"},
        {"fan_in_fan_out", "only nn.Linear layers (fan_in_fan_out false) exist in Qwen2"},
        {"layers_to_transform", "adapters on a subset of layers are not implemented; target every layer"},
        {"rank_pattern", "per-module ranks are not implemented; use one r for every module"},
        {"alpha_pattern", "per-module alphas are not implemented; use one lora_alpha for every module"},
        {"modules_to_save", "fully trained extra modules are not implemented; save an adapter without modules_to_save"},
        {"lora_bias", "LoRA biases are not implemented; use lora_bias false"},
        {"exclude_modules", "excluded modules are not implemented; list the targets in target_modules instead"},
        {"target_parameters", "adapters on raw parameters are not implemented; use target_modules"},
        {"layer_replication", "layer replication is not implemented"},
        {"trainable_token_indices", "trainable token embeddings are not implemented"},
        {"use_qalora", "QA-LoRA is not implemented; use a plain LoRA adapter"},
    };
    for (const auto& [key, todo] : kUnsupported) {
        const JsonValue* v = root.get(key);
        if (!is_unset(v)) fail(key, "is " + describe(*v) + ", which this trainer does not implement", todo);
    }
    // These initialisations also rewrite the base weights (W - B A), so the adapter is only correct on top of
    // the modified base that PEFT saved alongside it, not on the original model.
    const JsonValue* init = field("init_lora_weights");
    if (init && init->is_string() && init->string != "gaussian" && init->string != "orthogonal") {
        fail("init_lora_weights", "is " + describe(*init) + ", an initialisation that modifies the base weights",
             "convert the adapter to a plain LoRA first (PEFT's save_pretrained with "
             "path_initial_model_for_weight_conversion), then set init_lora_weights to true");
    }
    const JsonValue* bias = field("bias");
    if (bias && (!bias->is_string() || bias->string != "none")) {
        fail("bias", "is " + describe(*bias) + ", expected \"none\"", "trainable biases are not implemented; use bias \"none\"");
    }

    PeftAdapterConfig out;
    const JsonValue* r = field("r");
    if (!r || !r->is_number() || r->number != std::floor(r->number) || r->number < 1 || r->number > 65536) {
        fail("r", r ? "is " + describe(*r) + ", expected a positive integer" : "is missing, expected a positive integer (the rank)",
             "use the adapter_config.json saved with the adapter");
    }
    out.lora.R = (int)r->number;
    const JsonValue* alpha = field("lora_alpha");
    if (!alpha || !alpha->is_number() || !(alpha->number > 0) || !std::isfinite(alpha->number)) {
        fail("lora_alpha", alpha ? "is " + describe(*alpha) + ", expected a positive number" : "is missing, expected a positive number",
             "use the adapter_config.json saved with the adapter");
    }
    out.lora.alpha = (float)alpha->number;
    const JsonValue* rslora = field("use_rslora");
    if (rslora && rslora->type != JsonValue::BOOL) fail("use_rslora", "is " + describe(*rslora) + ", expected true or false", "fix the file");
    out.lora.rslora = rslora && rslora->boolean;
    const JsonValue* dropout = field("lora_dropout");
    if (dropout && (!dropout->is_number() || dropout->number < 0 || dropout->number >= 1)) {
        fail("lora_dropout", "is " + describe(*dropout) + ", expected a number in [0, 1)", "fix the file");
    }
    out.lora_dropout = dropout ? dropout->number : 0.0;
    const JsonValue* base = field("base_model_name_or_path");
    if (base && base->is_string()) out.base_model_name_or_path = base->string;

    const JsonValue* targets = field("target_modules");
    const std::string known = join_names(lora_target_names((1u << NUM_LINEAR) - 1));
    if (!targets) fail("target_modules", "is missing", "list the adapted modules, e.g. [\"q_proj\", \"v_proj\"]");
    if (targets->is_string()) {
        // A string is a regular expression to PEFT; "all-linear" is its one special value.
        if (targets->string != "all-linear") {
            fail("target_modules", "is the pattern " + describe(*targets) + ", which this trainer does not interpret",
                 "give a list of module names instead (" + known + ")");
        }
        out.lora.targets = (1u << NUM_LINEAR) - 1;
    } else if (targets->is_array() && !targets->array.empty()) {
        out.lora.targets = 0;
        for (const JsonValue& t : targets->array) {
            int slot = t.is_string() ? lora_slot_of_module(t.string) : -1;
            if (slot < 0) fail("target_modules", "holds " + describe(t) + ", which is not a Qwen2 linear", "use names from " + known);
            out.lora.targets |= 1u << slot;
        }
    } else {
        fail("target_modules", "is " + describe(*targets) + ", expected a non-empty list of module names", "use names from " + known);
    }
    return out;
}

std::string peft_config_json(const LoraConfig& lora, const std::string& base_model_name_or_path) {
    std::string targets;
    for (const std::string& name : lora_target_names(lora.targets)) targets += (targets.empty() ? "" : ",") + std::string("\n    ") + json_quote(name);
    // Keys sorted, as PEFT's json.dumps(sort_keys=True) writes them.
    std::string j = "{\n";
    j += "  \"alpha_pattern\": {},\n";
    j += "  \"base_model_name_or_path\": " + (base_model_name_or_path.empty() ? std::string("null") : json_quote(base_model_name_or_path)) + ",\n";
    j += "  \"bias\": \"none\",\n";
    j += "  \"fan_in_fan_out\": false,\n";
    j += "  \"inference_mode\": true,\n";
    j += "  \"init_lora_weights\": true,\n";
    j += "  \"layers_pattern\": null,\n";
    j += "  \"layers_to_transform\": null,\n";
    j += "  \"lora_alpha\": " + json_number_f32(lora.alpha) + ",\n";
    j += "  \"lora_bias\": false,\n";
    j += "  \"lora_dropout\": 0.0,\n";
    j += "  \"modules_to_save\": null,\n";
    j += "  \"peft_type\": \"LORA\",\n";
    j += "  \"r\": " + std::to_string(lora.R) + ",\n";
    j += "  \"rank_pattern\": {},\n";
    j += "  \"revision\": null,\n";
    j += "  \"target_modules\": [" + targets + "\n  ],\n";
    j += "  \"task_type\": \"CAUSAL_LM\",\n";
    j += "  \"use_dora\": false,\n";
    j += std::string("  \"use_rslora\": ") + (lora.rslora ? "true" : "false") + "\n";
    j += "}";
    return j;
}

// ---- loading and saving ---------------------------------------------------------------------------

LoraWeights peft_load(const std::string& dir, const Qwen2Config& model, PeftAdapterConfig* config_out) {
    const std::string config_path = join_path(dir, kConfigFile);
    PeftAdapterConfig config = peft_read_config(config_path);
    const std::string tensor_path = join_path(dir, kTensorFile);
    struct stat st;
    if (stat(tensor_path.c_str(), &st) != 0) {
        const std::string reason = strerror(errno);  // before the next stat can change errno
        bool pickle = stat(join_path(dir, "adapter_model.bin").c_str(), &st) == 0;
        throw GrpoError(tensor_path + ": cannot open: " + reason +
                        (pickle ? "; the adapter is a pickled adapter_model.bin, which is not read: re-save it with "
                                  "save_pretrained(safe_serialization=True)"
                                : "; a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors"));
    }
    SafetensorsFile file(tensor_path);
    LoraWeights w = lora_create(model, config.lora);
    const std::string config_says = "(" + config_path + ": r=" + std::to_string(config.lora.R) + ")";

    std::set<std::string> expected;
    for (int l = 0; l < model.L; l++) {
        for (int s = 0; s < NUM_LINEAR; s++) {
            const LoraWeights::Slot& slot = w.slots[l][s];
            if (!slot.present) continue;
            for (char matrix : {'A', 'B'}) {
                const std::string key = lora_peft_key(l, s, matrix);
                expected.insert(key);
                std::vector<int64_t> shape = matrix == 'A' ? std::vector<int64_t>{config.lora.R, slot.in}
                                                           : std::vector<int64_t>{slot.out, config.lora.R};
                const char* dims = matrix == 'A' ? "[r, in_features]" : "[out_features, r]";
                const TensorView* t = file.find(key);
                if (!t) {
                    throw GrpoError(tensor_path + ": tensor " + key + " is missing; expected " + shape_to_string(shape) + " " +
                                    dims + " because target_modules lists " + LINEAR_NAMES[s] + " " + config_says +
                                    "; the adapter is incomplete or was made for a model with fewer layers");
                }
                if (t->shape != shape) {
                    throw GrpoError(tensor_path + ": tensor " + key + " has shape " + shape_to_string(t->shape) + ", expected " +
                                    shape_to_string(shape) + " " + dims + " " + config_says + " for " + model.source +
                                    "; the adapter was trained for another model or rank");
                }
                std::vector<float> values = tensor_to_f32(*t);
                memcpy(matrix == 'A' ? w.A(l, s) : w.B(l, s), values.data(), values.size() * sizeof(float));
            }
        }
    }
    for (const TensorView& t : file.tensors()) {
        if (!expected.count(t.name)) {
            throw GrpoError(tensor_path + ": unexpected tensor " + t.name + " " + shape_to_string(t.shape) +
                            "; for " + model.source + " (" + std::to_string(model.L) + " layers) with target_modules [" +
                            join_names(lora_target_names(config.lora.targets)) + "] only their lora_A/lora_B weights are expected; the adapter does not match this model or its config");
        }
    }
    if (config_out) *config_out = config;
    return w;
}

void peft_save(const std::string& dir, const LoraWeights& w, const std::string& base_model_name_or_path) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw GrpoError(dir + ": cannot create the adapter directory: " + ec.message() + "; choose another output path");
    std::vector<TensorToWrite> tensors;
    for (int l = 0; l < w.model.L; l++) {
        for (int s = 0; s < NUM_LINEAR; s++) {
            const LoraWeights::Slot& slot = w.slots[l][s];
            if (!slot.present) continue;
            TensorToWrite a{lora_peft_key(l, s, 'A'), "F32", {w.lora.R, slot.in}, w.A(l, s), (size_t)w.lora.R * slot.in * 4};
            TensorToWrite b{lora_peft_key(l, s, 'B'), "F32", {slot.out, w.lora.R}, w.B(l, s), (size_t)slot.out * w.lora.R * 4};
            tensors.push_back(a);
            tensors.push_back(b);
        }
    }
    safetensors_write(join_path(dir, kTensorFile), tensors, {{"format", "pt"}});
    write_file_atomic(join_path(dir, kConfigFile), peft_config_json(w.lora, base_model_name_or_path) + "\n");
}
