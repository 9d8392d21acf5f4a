// loader.cpp: reads base weights from their files into one planned host buffer (see weights.h for the plan).
#include "model/loader.h"

#include <cstring>

#include "data/text.h"
#include "model/safetensors.h"

std::vector<bf16_bits> tensor_to_bf16(const TensorView& t) {
    size_t n = (size_t)t.numel();
    std::vector<bf16_bits> out(n);
    if (t.dtype == "BF16") {
        memcpy(out.data(), t.data, n * 2);  // memcpy: the mapped data need not be 2-byte aligned
    } else if (t.dtype == "F32") {
        for (size_t i = 0; i < n; i++) {
            float f;
            memcpy(&f, t.data + 4 * i, 4);
            out[i] = f32_to_bf16(f);
        }
    } else if (t.dtype == "F16") {
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, t.data + 2 * i, 2);
            // IEEE half to float: rebias the exponent; subnormal halves become normal floats
            uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
            if (exp == 0x1F) bits = sign | 0x7F800000u | (mant << 13);
            else if (exp != 0) bits = sign | ((exp + 112) << 23) | (mant << 13);
            else if (mant == 0) bits = sign;
            else {
                int shift = 0;
                while (!(mant & 0x400)) { mant <<= 1; shift++; }
                bits = sign | ((uint32_t)(113 - shift) << 23) | ((mant & 0x3FF) << 13);
            }
            float f;
            memcpy(&f, &bits, 4);
            out[i] = f32_to_bf16(f);
        }
    } else {
        throw GrpoError(t.file + ": tensor " + t.name + " is " + t.dtype +
                        ", expected BF16, F16 or F32 weights; re-export the model in bfloat16");
    }
    return out;
}

static bool is_linear_weight(const std::string& name) {
    return name.size() > 12 && name.compare(name.size() - 12, 12, "_proj.weight") == 0;
}

Qwen2Weights load_hf_dir(const std::string& dir, LinearFormat format) {
    Qwen2Config cfg = qwen2_config_load(dir);
    qwen2_config_validate(cfg);
    SafetensorsCheckpoint checkpoint(dir);
    qwen2_check_checkpoint(cfg, checkpoint);
    WeightPlan plan = weight_plan(cfg, format);
    std::shared_ptr<uint8_t> buffer = weights_alloc(plan);
    for (const TensorSpec& spec : qwen2_tensor_specs(cfg)) {
        const TensorView& view = checkpoint.get(spec.name);
        std::vector<bf16_bits> values = tensor_to_bf16(view);
        if (format == LinearFormat::NF4 && is_linear_weight(spec.name)) {
            NF4Tensor q;
            nf4_quantize(values.data(), spec.shape[0], spec.shape[1], /*double_quant=*/true, &q);
            weights_store_nf4(plan, spec.name, q, buffer.get());
        } else {
            weights_store_bf16(plan, spec.name, values.data(), (int64_t)values.size(), buffer.get());
        }
    }
    return weights_from_buffer(plan, buffer.get(), buffer.get(), buffer);
}
