// bnb_format.cpp: reads bitsandbytes pre-quantized NF4 checkpoints into the NF4 weight plan and writes them from it.
#include "model/bnb_format.h"

#include <charconv>
#include <cstring>
#include <deque>
#include <map>
#include <sys/stat.h>

#include "data/json.h"
#include "data/text.h"
#include "model/safetensors.h"

static const char* kRequantize =
    "re-quantize the original bf16 model with `quantize --format bnb` (or load the bf16 HF directory with NF4 quantization)";

static std::string config_path(const std::string& dir) { return (dir.back() == '/' ? dir : dir + "/") + "config.json"; }

// The "quantization_config" object of DIR/config.json, or nullptr when there is none.
static const JsonValue* quantization_config(const JsonValue& config) {
    const JsonValue* q = config.is_object() ? config.get("quantization_config") : nullptr;
    return q && q->type != JsonValue::NUL ? q : nullptr;
}

bool bnb_is_quantized_dir(const std::string& dir) {
    struct stat st;
    const std::string path = config_path(dir);
    if (stat(path.c_str(), &st) != 0) return false;
    const JsonValue config = json_parse_file(path);
    const JsonValue* q = quantization_config(config);
    const JsonValue* method = q ? q->get("quant_method") : nullptr;
    return method && method->is_string() && method->string == "bitsandbytes";
}

// Refuses what the loader cannot represent before any tensor is read: 8-bit, FP4, no double quantization.
static void check_quantization_config(const std::string& dir) {
    const std::string path = config_path(dir);
    const JsonValue config = json_parse_file(path);
    const JsonValue* q = quantization_config(config);
    if (!q || !q->is_object()) throw GrpoError(path + ": no \"quantization_config\" object; this is not a bitsandbytes checkpoint");
    auto field = [&](const char* key) { return q->get(key); };
    const JsonValue* in_8bit = field("load_in_8bit");
    if (in_8bit && in_8bit->type == JsonValue::BOOL && in_8bit->boolean) {
        throw GrpoError(path + ": quantization_config.load_in_8bit is true; only 4-bit NF4 checkpoints are supported: " + kRequantize);
    }
    const JsonValue* quant_type = field("bnb_4bit_quant_type");
    if (quant_type && (!quant_type->is_string() || quant_type->string != "nf4")) {
        throw GrpoError(path + ": quantization_config.bnb_4bit_quant_type is " +
                        (quant_type->is_string() ? json_quote(quant_type->string) : std::string("not a string")) +
                        ", expected \"nf4\" (QLoRA's type; FP4 is not supported): " + kRequantize);
    }
    const JsonValue* double_quant = field("bnb_4bit_use_double_quant");
    if (double_quant && double_quant->type == JsonValue::BOOL && !double_quant->boolean) {
        throw GrpoError(path + ": quantization_config.bnb_4bit_use_double_quant is false; the weight plan stores the absmax "
                        "double-quantized (the QLoRA default): " + kRequantize);
    }
}

// The tensor NAME of a checkpoint with the given dtype, or a GrpoError naming the file and what to do.
static const TensorView& need_tensor(const SafetensorsCheckpoint& checkpoint, const std::string& name, const char* dtype,
                                     const std::string& what) {
    const TensorView* t = checkpoint.find(name);
    if (!t) {
        throw GrpoError(checkpoint.path() + ": tensor " + name + " is missing; expected " + dtype + " " + what +
                        " (a bitsandbytes NF4 checkpoint stores each linear as NAME, NAME.absmax, NAME.quant_map, "
                        "NAME.nested_absmax, NAME.nested_quant_map and NAME.quant_state.bitsandbytes__nf4): " + kRequantize);
    }
    if (t->dtype != dtype) {
        throw GrpoError(t->file + ": tensor " + name + " is " + t->dtype + ", expected " + dtype + " " + what + ": " + kRequantize);
    }
    return *t;
}

static void need_count(const TensorView& t, int64_t expected, const std::string& why) {
    if (t.numel() != expected) {
        throw GrpoError(t.file + ": tensor " + t.name + " has " + std::to_string(t.numel()) + " elements (shape " +
                        shape_to_string(t.shape) + "), expected " + std::to_string(expected) + " (" + why +
                        "); the checkpoint does not match its config: " + kRequantize);
    }
}

// One quantized linear [N, K] from its six bitsandbytes tensors, validated.
static NF4Tensor load_bnb_linear(const SafetensorsCheckpoint& checkpoint, const std::string& name, int64_t N, int64_t K) {
    const std::string state_name = name + ".quant_state.bitsandbytes__nf4";
    if (!checkpoint.find(state_name) && checkpoint.find(name + ".quant_state.bitsandbytes__fp4")) {
        throw GrpoError(checkpoint.path() + ": tensor " + name + " is FP4-quantized; only NF4 is supported: " + kRequantize);
    }
    const TensorView& state_tensor = need_tensor(checkpoint, state_name, "U8", "(the quant state as UTF-8 JSON)");
    const std::string where = state_tensor.file + ": tensor " + state_name;
    const JsonValue state = json_parse(std::string((const char*)state_tensor.data, state_tensor.nbytes), where);
    auto number = [&](const char* key) -> const JsonValue* {
        const JsonValue* v = state.get(key);
        return v && v->is_number() ? v : nullptr;
    };
    const JsonValue* quant_type = state.get("quant_type");
    if (!quant_type || !quant_type->is_string() || quant_type->string != "nf4") {
        throw GrpoError(where + ": quant_type is not \"nf4\"; only NF4 is supported: " + kRequantize);
    }
    const JsonValue* blocksize = number("blocksize");
    if (!blocksize || blocksize->number != NF4_BLOCK) {
        throw GrpoError(where + ": blocksize is " + (blocksize ? json_number(blocksize->number) : std::string("missing")) +
                        ", expected " + std::to_string(NF4_BLOCK) + " (QLoRA's block size, the one the kernels implement): " +
                        kRequantize);
    }
    const JsonValue* shape = state.get("shape");
    std::vector<int64_t> stored_shape;
    if (shape && shape->is_array())
        for (const JsonValue& d : shape->array) stored_shape.push_back(d.is_number() ? (int64_t)d.number : -1);
    if (stored_shape != std::vector<int64_t>{N, K}) {
        throw GrpoError(where + ": shape is " + (shape ? shape_to_string(stored_shape) : std::string("missing")) + ", expected " +
                        shape_to_string({N, K}) + " from config.json; the checkpoint does not match its config (another model size?)");
    }
    const TensorView* absmax_any = checkpoint.find(name + ".absmax");
    const JsonValue* nested_offset = number("nested_offset");
    if ((absmax_any && absmax_any->dtype == "F32") || !nested_offset) {
        throw GrpoError(where + ": quantized without double quantization (F32 absmax, no nested_offset); the weight plan "
                        "stores the absmax double-quantized, as QLoRA does: " + kRequantize);
    }
    const JsonValue* nested_blocksize = number("nested_blocksize");
    if (!nested_blocksize || nested_blocksize->number != NF4_NESTED_BLOCK) {
        throw GrpoError(where + ": nested_blocksize is " +
                        (nested_blocksize ? json_number(nested_blocksize->number) : std::string("missing")) + ", expected " +
                        std::to_string(NF4_NESTED_BLOCK) + ": " + kRequantize);
    }

    NF4Tensor q;
    q.rows = N;
    q.cols = K;
    q.double_quant = true;
    q.nested_offset = (float)nested_offset->number;  // printed from a float32, so the cast is exact
    const TensorView& packed = need_tensor(checkpoint, name, "U8", "(packed 4-bit codes)");
    need_count(packed, (N * K + 1) / 2, "two 4-bit codes per byte of a " + shape_to_string({N, K}) + " matrix");
    const TensorView& absmax = need_tensor(checkpoint, name + ".absmax", "U8", "(8-bit block absmax)");
    need_count(absmax, q.num_blocks(), "one per block of 64 weights");
    const TensorView& code = need_tensor(checkpoint, name + ".quant_map", "F32", "(the 16-entry NF4 code)");
    need_count(code, 16, "the 16 NF4 values");
    const TensorView& nested_absmax = need_tensor(checkpoint, name + ".nested_absmax", "F32", "(the nested absmax)");
    need_count(nested_absmax, q.num_nested_blocks(), "one per 256 blocks");
    const TensorView& nested_code = need_tensor(checkpoint, name + ".nested_quant_map", "F32", "(the 256-entry dynamic map)");
    need_count(nested_code, 256, "the 8-bit dynamic map");

    // memcpy throughout: safetensors data is only guaranteed to be byte-aligned
    q.packed.assign(packed.data, packed.data + packed.nbytes);
    q.absmax_q.assign(absmax.data, absmax.data + absmax.nbytes);
    q.nested_absmax.resize(nested_absmax.numel());
    memcpy(q.nested_absmax.data(), nested_absmax.data, nested_absmax.nbytes);
    memcpy(q.code, code.data, sizeof(q.code));
    memcpy(q.nested_code, nested_code.data, sizeof(q.nested_code));
    return q;
}

Qwen2Weights bnb_load_dir(const std::string& dir, const LoadProgress& progress) {
    Qwen2Config cfg = qwen2_config_load(dir);
    check_quantization_config(dir);
    cfg.dtype = "bfloat16";  // the tensors that are not quantized are bf16 (checked below)
    SafetensorsCheckpoint checkpoint(dir);
    WeightPlan plan = weight_plan(cfg, LinearFormat::NF4);
    std::shared_ptr<uint8_t> buffer = weights_alloc(plan);
    const std::vector<TensorSpec> specs = qwen2_tensor_specs(cfg);
    for (size_t i = 0; i < specs.size(); i++) {
        const TensorSpec& spec = specs[i];
        if (progress) progress(i, specs.size(), spec.name);
        if (is_linear_weight(spec.name)) {
            weights_store_nf4(plan, spec.name, load_bnb_linear(checkpoint, spec.name, spec.shape[0], spec.shape[1]), buffer.get());
            continue;
        }
        const TensorView* t = checkpoint.find(spec.name);
        if (!t) {
            throw GrpoError(checkpoint.path() + ": tensor " + spec.name + " is missing; expected shape " + spec.dims + " = " +
                            shape_to_string(spec.shape) + "; the checkpoint does not match " + cfg.source);
        }
        if (t->shape != spec.shape) {
            throw GrpoError(t->file + ": tensor " + spec.name + " has shape " + shape_to_string(t->shape) + ", expected " +
                            spec.dims + " = " + shape_to_string(spec.shape) + "; the checkpoint does not match " + cfg.source +
                            " (another model size?)");
        }
        std::vector<bf16_bits> values = tensor_to_bf16(*t);  // throws for a non-float dtype
        weights_store_bf16(plan, spec.name, values.data(), (int64_t)values.size(), buffer.get());
    }
    return weights_from_buffer(plan, buffer.get(), buffer.get(), buffer);
}

std::string python_float_repr(double x) {
    if (x != x) return "NaN";  // json.dumps spellings; never produced for real checkpoints
    if (x == 1.0 / 0.0) return "Infinity";
    if (x == -1.0 / 0.0) return "-Infinity";
    // The shortest round-tripping digits (what Python's repr picks too), as "d.ddde+XX".
    char buf[64];
    std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), x, std::chars_format::scientific);
    std::string sci(buf, r.ptr);
    std::string sign;
    if (sci[0] == '-') {
        sign = "-";
        sci.erase(0, 1);
    }
    size_t e = sci.find('e');
    std::string digits = sci.substr(0, 1) + (e > 1 ? sci.substr(2, e - 2) : "");
    const int exponent = std::stoi(sci.substr(e + 1));
    const int decpt = exponent + 1;  // digits = 0.DIGITS x 10^decpt
    const int n = (int)digits.size();
    std::string out;
    if (decpt > -4 && decpt <= 16) {  // CPython's float_repr_style 'short' rule
        if (decpt <= 0) out = "0." + std::string(-decpt, '0') + digits;
        else if (decpt >= n) out = digits + std::string(decpt - n, '0') + ".0";
        else out = digits.substr(0, decpt) + "." + digits.substr(decpt);
    } else {
        char exp_text[16];
        snprintf(exp_text, sizeof(exp_text), "e%c%02d", exponent < 0 ? '-' : '+', exponent < 0 ? -exponent : exponent);
        out = digits.substr(0, 1) + (n > 1 ? "." + digits.substr(1) : "") + exp_text;
    }
    return sign + out;
}

// bitsandbytes' quant state JSON, formatted as Python's json.dumps writes it (", " and ": " separators).
static std::string quant_state_json(int64_t N, int64_t K, float nested_offset) {
    return "{\"quant_type\": \"nf4\", \"blocksize\": " + std::to_string(NF4_BLOCK) + ", \"dtype\": \"bfloat16\", \"shape\": [" +
           std::to_string(N) + ", " + std::to_string(K) + "], \"nested_blocksize\": " + std::to_string(NF4_NESTED_BLOCK) +
           ", \"nested_dtype\": \"float32\", \"nested_offset\": " + python_float_repr(nested_offset) + "}";
}

void bnb_save(const std::string& path, const Qwen2Weights& weights) {
    const WeightPlan& plan = weights.plan;
    if (plan.format != LinearFormat::NF4) {
        throw GrpoError(path + ": the bitsandbytes layout holds NF4 linears, these weights are " + linear_format_name(plan.format) +
                        " (a bug in the caller: quantize first)");
    }
    std::vector<TensorToWrite> tensors;
    std::deque<std::string> states;  // a deque: the tensors point into its strings, which must not move
    auto at = [&](const PlannedTensor& t) { return (const void*)(weights.buffer + t.offset); };
    std::map<std::string, std::vector<int64_t>> model_shape;
    for (const TensorSpec& spec : qwen2_tensor_specs(weights.config)) model_shape[spec.name] = spec.shape;
    for (const PlannedTensor& t : plan.tensors) {
        if (t.dtype == "BF16") {
            tensors.push_back({t.name, "BF16", t.shape, at(t), t.bytes});
            continue;
        }
        if (!is_linear_weight(t.name)) continue;  // a linear's companions, written with it below
        const PlannedTensor& absmax = *plan.find(t.name + ".absmax");
        const PlannedTensor& nested_absmax = *plan.find(t.name + ".nested_absmax");
        const PlannedTensor& tables = *plan.find(t.name + ".quant_tables");
        const float* table = (const float*)at(tables);  // [nested offset, code[16], nested code[256]]
        const std::vector<int64_t>& shape = model_shape.at(t.name);  // the plan stores the codes flat
        tensors.push_back({t.name, "U8", {(int64_t)t.bytes, 1}, at(t), t.bytes});
        tensors.push_back({t.name + ".absmax", "U8", absmax.shape, at(absmax), absmax.bytes});
        tensors.push_back({t.name + ".quant_map", "F32", {16}, table + 1, 16 * sizeof(float)});
        tensors.push_back({t.name + ".nested_absmax", "F32", nested_absmax.shape, at(nested_absmax), nested_absmax.bytes});
        tensors.push_back({t.name + ".nested_quant_map", "F32", {256}, table + 17, 256 * sizeof(float)});
        states.push_back(quant_state_json(shape[0], shape[1], table[0]));
        tensors.push_back({t.name + ".quant_state.bitsandbytes__nf4", "U8", {(int64_t)states.back().size()},
                           states.back().data(), states.back().size()});
    }
    safetensors_write(path, tensors, {{"format", "pt"}});
}
