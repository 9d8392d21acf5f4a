// loader.cpp: reads base weights from their files into one planned host buffer (see weights.h for the plan).
#include "model/loader.h"

#include <cstring>

#include "data/text.h"
#include "model/safetensors.h"

// Element i of a float tensor, widened to fp32 exactly; memcpy because the mapped data need not be aligned.
typedef float (*FloatElementReader)(const uint8_t* data, size_t i);
static float read_f32(const uint8_t* data, size_t i) {
    float f;
    memcpy(&f, data + 4 * i, 4);
    return f;
}
static float read_bf16(const uint8_t* data, size_t i) {
    bf16_bits b;
    memcpy(&b, data + 2 * i, 2);
    return bf16_to_f32(b);
}
static float read_f16(const uint8_t* data, size_t i) {
    uint16_t h;
    memcpy(&h, data + 2 * i, 2);
    return f16_to_f32(h);
}

// The reader for t's dtype, chosen once per tensor rather than per element.
static FloatElementReader float_element_reader(const TensorView& t) {
    if (t.dtype == "F32") return read_f32;
    if (t.dtype == "BF16") return read_bf16;
    if (t.dtype == "F16") return read_f16;
    throw GrpoError(t.file + ": tensor " + t.name + " is " + t.dtype +
                    ", expected BF16, F16 or F32; re-save it in bfloat16 (model weights) or float32 (a LoRA adapter)");
}

std::vector<float> tensor_to_f32(const TensorView& t) {
    const size_t n = (size_t)t.numel();
    std::vector<float> out(n);
    if (t.dtype == "F32") {
        memcpy(out.data(), t.data, n * 4);
    } else {
        FloatElementReader read = float_element_reader(t);
        for (size_t i = 0; i < n; i++) out[i] = read(t.data, i);
    }
    return out;
}

std::vector<bf16_bits> tensor_to_bf16(const TensorView& t) {
    const size_t n = (size_t)t.numel();
    std::vector<bf16_bits> out(n);
    if (t.dtype == "BF16") {
        memcpy(out.data(), t.data, n * 2);
    } else {
        FloatElementReader read = float_element_reader(t);
        for (size_t i = 0; i < n; i++) out[i] = f32_to_bf16(read(t.data, i));
    }
    return out;
}

bool is_linear_weight(const std::string& name) {
    return name.size() > 12 && name.compare(name.size() - 12, 12, "_proj.weight") == 0;
}

void weights_store_from_bf16(const WeightPlan& plan, const std::string& name, const std::vector<int64_t>& shape,
                             const bf16_bits* values, uint8_t* buffer) {
    if (plan.format == LinearFormat::NF4 && is_linear_weight(name)) {
        if (shape.size() != 2) throw GrpoError("tensor " + name + ": a linear weight must be 2-D, got " + shape_to_string(shape));
        NF4Tensor q;
        nf4_quantize(values, shape[0], shape[1], /*double_quant=*/true, &q);
        weights_store_nf4(plan, name, q, buffer);
    } else {
        weights_store_bf16(plan, name, values, shape_numel(shape), buffer);
    }
}

Qwen2Weights load_hf_dir(const std::string& dir, LinearFormat format) { return load_hf_dir(dir, format, LoadProgress()); }

Qwen2Weights load_hf_dir(const std::string& dir, LinearFormat format, const LoadProgress& progress) {
    Qwen2Config cfg = qwen2_config_load(dir);
    qwen2_config_validate(cfg);
    SafetensorsCheckpoint checkpoint(dir);
    qwen2_check_checkpoint(cfg, checkpoint);
    WeightPlan plan = weight_plan(cfg, format);
    std::shared_ptr<uint8_t> buffer = weights_alloc(plan);
    const std::vector<TensorSpec> specs = qwen2_tensor_specs(cfg);
    for (size_t i = 0; i < specs.size(); i++) {
        if (progress) progress(i, specs.size(), specs[i].name);
        std::vector<bf16_bits> values = tensor_to_bf16(checkpoint.get(specs[i].name));
        weights_store_from_bf16(plan, specs[i].name, specs[i].shape, values.data(), buffer.get());
    }
    return weights_from_buffer(plan, buffer.get(), buffer.get(), buffer);
}

Qwen2Weights weights_quantize_nf4(const Qwen2Weights& bf16, const LoadProgress& progress) {
    if (bf16.plan.format != LinearFormat::BF16) {
        throw GrpoError(bf16.config.source + ": the linears are already " + linear_format_name(bf16.plan.format) +
                        "; quantizing needs bf16 weights (an HF directory or a .bin written by dev/export_hf.py)");
    }
    WeightPlan plan = weight_plan(bf16.config, LinearFormat::NF4);
    std::shared_ptr<uint8_t> buffer = weights_alloc(plan);
    const std::vector<PlannedTensor>& tensors = bf16.plan.tensors;
    for (size_t i = 0; i < tensors.size(); i++) {
        const PlannedTensor& t = tensors[i];
        if (progress) progress(i, tensors.size(), t.name);
        weights_store_from_bf16(plan, t.name, t.shape, (const bf16_bits*)(bf16.buffer + t.offset), buffer.get());
    }
    return weights_from_buffer(plan, buffer.get(), buffer.get(), buffer);
}
