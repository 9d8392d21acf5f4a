// weights.cpp: the memory plan of the base weights (every tensor's offset in one flat buffer) and the per-layer views into it.
#include "model/weights.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "data/rng.h"
#include "data/text.h"
#include "model/safetensors.h"

const char* const LINEAR_NAMES[NUM_LINEAR] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

const char* linear_format_name(LinearFormat format) { return format == LinearFormat::NF4 ? "nf4" : "bf16"; }

const char* linear_parent(int slot) { return slot <= LIN_O ? "self_attn" : "mlp"; }

int64_t linear_out_features(const Qwen2Config& cfg, int slot) {
    switch (slot) {
        case LIN_Q: return (int64_t)cfg.NH * cfg.HD;
        case LIN_K: case LIN_V: return (int64_t)cfg.KVH * cfg.HD;
        case LIN_O: case LIN_DOWN: return cfg.C;
        default: return cfg.I;  // gate, up
    }
}

int64_t linear_in_features(const Qwen2Config& cfg, int slot) {
    switch (slot) {
        case LIN_O: return (int64_t)cfg.NH * cfg.HD;
        case LIN_DOWN: return cfg.I;
        default: return cfg.C;
    }
}

double linear_parameter_count(const Qwen2Config& cfg) {
    double per_layer = 0;
    for (int s = 0; s < NUM_LINEAR; s++) per_layer += (double)linear_out_features(cfg, s) * linear_in_features(cfg, s);
    return per_layer * cfg.L + (double)cfg.V * cfg.C;
}

const PlannedTensor* WeightPlan::find(const std::string& name) const {
    for (const PlannedTensor& t : tensors)
        if (t.name == name) return &t;
    return nullptr;
}

namespace {

// The NF4 scalars stored with every quantized linear, as floats: the nested offset, the 16-entry NF4 code
// and the 256-entry dynamic map. Kept per tensor because a loaded checkpoint's stored maps are authoritative.
const int64_t kQuantTableFloats = 1 + 16 + 256;

struct PlanBuilder {
    WeightPlan plan;
    void add(const std::string& name, const std::string& dtype, std::vector<int64_t> shape, size_t itemsize) {
        PlannedTensor t;
        t.name = name;
        t.dtype = dtype;
        t.shape = std::move(shape);
        int64_t numel = 1;
        for (int64_t d : t.shape) numel *= d;
        t.bytes = (size_t)numel * itemsize;
        t.offset = (plan.total_bytes + WEIGHT_ALIGN - 1) / WEIGHT_ALIGN * WEIGHT_ALIGN;
        plan.total_bytes = t.offset + t.bytes;
        plan.tensors.push_back(std::move(t));
    }
    void add_bf16(const std::string& name, std::vector<int64_t> shape) { add(name, "BF16", std::move(shape), 2); }
    void add_linear(const std::string& name, int64_t out, int64_t in, LinearFormat format) {
        if (format == LinearFormat::BF16) {
            add_bf16(name, {out, in});
            return;
        }
        int64_t n = out * in;
        int64_t blocks = (n + NF4_BLOCK - 1) / NF4_BLOCK;
        int64_t nested_blocks = (blocks + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK;
        add(name, "U8", {(n + 1) / 2}, 1);
        add(name + ".absmax", "U8", {blocks}, 1);
        add(name + ".nested_absmax", "F32", {nested_blocks}, 4);
        add(name + ".quant_tables", "F32", {kQuantTableFloats}, 4);
    }
};

std::string layer_prefix(int l) { return "model.layers." + std::to_string(l) + "."; }

std::string linear_name(int l, int slot) {
    return layer_prefix(l) + linear_parent(slot) + "." + LINEAR_NAMES[slot] + ".weight";
}

}  // namespace

WeightPlan weight_plan(const Qwen2Config& cfg, LinearFormat format) {
    PlanBuilder b;
    b.plan.config = cfg;
    b.plan.format = format;
    b.add_bf16("model.embed_tokens.weight", {cfg.V, cfg.C});
    for (int l = 0; l < cfg.L; l++) {
        b.add_bf16(layer_prefix(l) + "input_layernorm.weight", {cfg.C});
        for (int s = LIN_Q; s <= LIN_O; s++) {
            b.add_linear(linear_name(l, s), linear_out_features(cfg, s), linear_in_features(cfg, s), format);
            if (s != LIN_O && cfg.qkv_bias)
                b.add_bf16(layer_prefix(l) + "self_attn." + LINEAR_NAMES[s] + ".bias", {linear_out_features(cfg, s)});
        }
        b.add_bf16(layer_prefix(l) + "post_attention_layernorm.weight", {cfg.C});
        for (int s = LIN_GATE; s <= LIN_DOWN; s++)
            b.add_linear(linear_name(l, s), linear_out_features(cfg, s), linear_in_features(cfg, s), format);
    }
    b.add_bf16("model.norm.weight", {cfg.C});
    if (!cfg.tied_embeddings) b.add_bf16("lm_head.weight", {cfg.V, cfg.C});
    return b.plan;
}

Qwen2Weights weights_from_buffer(const WeightPlan& plan, const uint8_t* host_buffer, const uint8_t* target_buffer,
                                 std::shared_ptr<const void> owner) {
    const Qwen2Config& cfg = plan.config;
    auto entry = [&](const std::string& name) -> const PlannedTensor& {
        const PlannedTensor* t = plan.find(name);
        // the plan is built from the same config, so a miss is a bug in this file, not bad input
        if (!t) throw GrpoError("weight plan has no tensor " + name + " (internal error)");
        return *t;
    };
    auto bf16_at = [&](const std::string& name) { return (const bf16_bits*)(target_buffer + entry(name).offset); };

    Qwen2Weights w;
    w.config = cfg;
    w.plan = plan;
    w.buffer = target_buffer;
    w.owner = std::move(owner);
    w.embed = bf16_at("model.embed_tokens.weight");
    w.layers.resize(cfg.L);
    for (int l = 0; l < cfg.L; l++) {
        LayerWeights& layer = w.layers[l];
        layer.input_norm = bf16_at(layer_prefix(l) + "input_layernorm.weight");
        layer.post_attention_norm = bf16_at(layer_prefix(l) + "post_attention_layernorm.weight");
        for (int s = 0; s < NUM_LINEAR; s++) {
            LinearWeight& lin = layer.linear[s];
            std::string name = linear_name(l, s);
            lin.out = linear_out_features(cfg, s);
            lin.in = linear_in_features(cfg, s);
            lin.format = plan.format;
            if (s <= LIN_V && cfg.qkv_bias) lin.bias = bf16_at(layer_prefix(l) + "self_attn." + LINEAR_NAMES[s] + ".bias");
            if (plan.format == LinearFormat::BF16) {
                lin.w = bf16_at(name);
                continue;
            }
            const PlannedTensor& tables = entry(name + ".quant_tables");
            NF4View& q = lin.nf4;
            q.rows = lin.out;
            q.cols = lin.in;
            q.double_quant = true;
            q.packed = target_buffer + entry(name).offset;
            q.absmax_q = target_buffer + entry(name + ".absmax").offset;
            q.nested_absmax = (const float*)(target_buffer + entry(name + ".nested_absmax").offset);
            memcpy(&q.nested_offset, host_buffer + tables.offset, sizeof(float));
            q.code = (const float*)(target_buffer + tables.offset) + 1;
            q.nested_code = q.code + 16;
            q.default_code = nf4_is_default_code((const float*)(host_buffer + tables.offset) + 1);
        }
    }
    w.final_norm = bf16_at("model.norm.weight");
    w.lm_head = cfg.tied_embeddings ? w.embed : bf16_at("lm_head.weight");
    return w;
}

static const PlannedTensor& planned(const WeightPlan& plan, const std::string& name, const char* dtype, size_t bytes) {
    const PlannedTensor* t = plan.find(name);
    if (!t) throw GrpoError("tensor " + name + " is not part of this model's weight plan (" + plan.config.source + ")");
    if (t->dtype != dtype || t->bytes != bytes)
        throw GrpoError("tensor " + name + ": the plan expects " + t->dtype + " " + shape_to_string(t->shape) + " (" +
                        std::to_string(t->bytes) + " bytes), got " + dtype + " with " + std::to_string(bytes) + " bytes");
    return *t;
}

void weights_store_bf16(const WeightPlan& plan, const std::string& name, const bf16_bits* values, int64_t count,
                        uint8_t* buffer) {
    const PlannedTensor& t = planned(plan, name, "BF16", (size_t)count * 2);
    memcpy(buffer + t.offset, values, t.bytes);
}

void weights_store_nf4(const WeightPlan& plan, const std::string& name, const NF4Tensor& q, uint8_t* buffer) {
    nf4_check(q);
    if (!q.double_quant)
        throw GrpoError("tensor " + name + ": NF4 without double quantization cannot be stored in the weight plan; "
                        "re-quantize it with `quantize` (double quantization is the QLoRA default)");
    const PlannedTensor& packed = planned(plan, name, "U8", q.packed.size());
    const PlannedTensor& absmax = planned(plan, name + ".absmax", "U8", q.absmax_q.size());
    const PlannedTensor& nested = planned(plan, name + ".nested_absmax", "F32", q.nested_absmax.size() * 4);
    const PlannedTensor& tables = planned(plan, name + ".quant_tables", "F32", kQuantTableFloats * 4);
    memcpy(buffer + packed.offset, q.packed.data(), packed.bytes);
    memcpy(buffer + absmax.offset, q.absmax_q.data(), absmax.bytes);
    memcpy(buffer + nested.offset, q.nested_absmax.data(), nested.bytes);
    float* table = (float*)(buffer + tables.offset);
    table[0] = q.nested_offset;
    memcpy(table + 1, q.code, 16 * sizeof(float));
    memcpy(table + 17, q.nested_code, 256 * sizeof(float));
}

std::shared_ptr<uint8_t> weights_alloc(const WeightPlan& plan) {
    size_t bytes = (plan.total_bytes + WEIGHT_ALIGN - 1) / WEIGHT_ALIGN * WEIGHT_ALIGN;
    uint8_t* p = (uint8_t*)aligned_alloc(WEIGHT_ALIGN, bytes > 0 ? bytes : WEIGHT_ALIGN);
    if (!p) throw GrpoError("out of host memory: the weights need " + std::to_string(plan.total_bytes) + " bytes");
    memset(p, 0, bytes);
    return std::shared_ptr<uint8_t>(p, free);
}

Qwen2Weights weights_random(const Qwen2Config& cfg, LinearFormat format, uint64_t seed) {
    WeightPlan plan = weight_plan(cfg, format);
    std::shared_ptr<uint8_t> buffer = weights_alloc(plan);
    Rng rng(seed);
    float code[16], nested[256];
    nf4_default_code(code);
    nf4_default_nested_code(nested);
    for (const PlannedTensor& t : plan.tensors) {
        uint8_t* p = buffer.get() + t.offset;
        bool tables = t.name.size() > 13 && t.name.compare(t.name.size() - 13, 13, ".quant_tables") == 0;
        if (tables) {
            float* table = (float*)p;
            table[0] = 0.01f;  // nested offset
            memcpy(table + 1, code, sizeof(code));
            memcpy(table + 17, nested, sizeof(nested));
        } else if (t.dtype == "F32") {  // nested absmax
            for (size_t i = 0; i < t.bytes / 4; i++) ((float*)p)[i] = 0.005f;
        } else if (t.dtype == "U8") {  // packed codes and absmax bytes, 8 random bytes per draw
            for (size_t i = 0; i < t.bytes; i += 8) {
                uint64_t r = rng.next_u64();
                memcpy(p + i, &r, std::min<size_t>(8, t.bytes - i));
            }
        } else {
            bool norm = t.name.find("norm") != std::string::npos;
            bf16_bits* values = (bf16_bits*)p;
            for (size_t i = 0; i < t.bytes / 2; i++) values[i] = f32_to_bf16(norm ? 1.0f : 0.04f * (rng.next_float() - 0.5f));
        }
    }
    return weights_from_buffer(plan, buffer.get(), buffer.get(), buffer);
}
