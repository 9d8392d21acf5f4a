// adamw.cpp: torch.optim.AdamW (foreach order of operations), clip_grad_norm_, the cosine schedule, and the optimizer-state file.
#include "lora/adamw.h"

#include <cmath>
#include <cstring>
#include <map>

#include "data/text.h"
#include "model/safetensors.h"

AdamWStepConstants adamw_step_constants(const AdamWConfig& cfg, double lr, int64_t step) {
    const double bias_correction1 = 1.0 - std::pow(cfg.beta1, (double)step);
    const double bias_correction2 = 1.0 - std::pow(cfg.beta2, (double)step);
    AdamWStepConstants s;
    s.decay = (float)(1.0 - lr * cfg.weight_decay);
    s.lerp_weight = (float)(1.0 - cfg.beta1);
    s.beta2 = (float)cfg.beta2;
    s.one_minus_beta2 = (float)(1.0 - cfg.beta2);
    s.step_size = (float)(-(lr / bias_correction1));
    s.bias_correction2_sqrt = (float)std::sqrt(bias_correction2);
    s.eps = (float)cfg.eps;
    return s;
}

void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, const AdamWConfig& cfg, double lr,
                  int64_t step) {
    const AdamWStepConstants s = adamw_step_constants(cfg, lr, step);
    // torch's CUDA kernels compute a + s*b as one fused multiply-add (nvcc contracts them), so the three
    // marked lines use std::fma, which rounds once on every machine; with separate roundings the result
    // drifts from torch's by an ulp of the parameter on about one element in six.
    for (size_t i = 0; i < n; i++) {
        float g = grads[i];
        float p = params[i] * s.decay;
        // torch.lerp with a weight below 0.5 computes start + weight * (end - start)
        float mi = std::fma(s.lerp_weight, g - m[i], m[i]);                // fused: lerp
        float vi = v[i] * s.beta2;
        vi = std::fma(s.one_minus_beta2, g * g, vi);                       // fused: addcmul
        // the bias corrections divide the denominator (not v) and scale the step, as torch does
        float denom = std::sqrt(vi) / s.bias_correction2_sqrt + s.eps;
        params[i] = std::fma(s.step_size, mi / denom, p);                  // fused: addcdiv
        m[i] = mi;
        v[i] = vi;
    }
}

void lora_adamw_step(LoraWeights* w, const AdamWConfig& cfg, double lr) {
    w->adam_step += 1;
    adamw_update(w->params.data(), w->grads.data(), w->adam_m.data(), w->adam_v.data(), w->params.size(), cfg, lr,
                 w->adam_step);
}

float grad_global_norm(const float* grads, const std::vector<size_t>& tensor_sizes) {
    // Each tensor's norm is an fp32 result in torch (_foreach_norm), so it is rounded to float here too;
    // the sums themselves run in double so that the only rounding is those of torch's outputs.
    double total_sq = 0.0;
    size_t offset = 0;
    for (size_t size : tensor_sizes) {
        double sq = 0.0;
        for (size_t i = 0; i < size; i++) sq += (double)grads[offset + i] * grads[offset + i];
        float norm = (float)std::sqrt(sq);
        total_sq += (double)norm * norm;
        offset += size;
    }
    return (float)std::sqrt(total_sq);
}

float clip_grad_norm(float* grads, const std::vector<size_t>& tensor_sizes, double max_norm) {
    float total = grad_global_norm(grads, tensor_sizes);
    // torch: clip_coef = max_norm / (total + 1e-6) on an fp32 tensor; a scalar divided by a tensor is
    // tensor.reciprocal() * scalar, then clamped to at most 1 and multiplied into every gradient (even when 1).
    float coef = (1.0f / (total + (float)1e-6)) * (float)max_norm;
    if (coef > 1.0f) coef = 1.0f;
    size_t n = 0;
    for (size_t size : tensor_sizes) n += size;
    for (size_t i = 0; i < n; i++) grads[i] *= coef;
    return total;
}

float lora_clip_grad_norm(LoraWeights* w, double max_norm) {
    return clip_grad_norm(w->grads.data(), lora_tensor_sizes(*w), max_norm);
}

double cosine_schedule_lr(double base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps) {
    if (step < warmup_steps) return base_lr * ((double)step / (double)std::max<int64_t>(1, warmup_steps));
    double progress = (double)(step - warmup_steps) / (double)std::max<int64_t>(1, total_steps - warmup_steps);
    const double num_cycles = 0.5;  // half a cosine: from base down to 0 at total_steps
    return base_lr * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * num_cycles * 2.0 * progress)));
}

int64_t warmup_steps_from_ratio(double warmup_ratio, int64_t max_steps) {
    return (int64_t)std::ceil((double)max_steps * warmup_ratio);
}

void adamw_state_save(const std::string& path, const LoraWeights& w) {
    size_t n = w.params.size();
    std::vector<TensorToWrite> tensors = {
        {"adam_m", "F32", {(int64_t)n}, w.adam_m.data(), n * sizeof(float)},
        {"adam_v", "F32", {(int64_t)n}, w.adam_v.data(), n * sizeof(float)},
    };
    std::map<std::string, std::string> meta = {{"adam_step", std::to_string(w.adam_step)},
                                               {"lora_r", std::to_string(w.lora.R)},
                                               {"num_params", std::to_string(n)}};
    safetensors_write(path, tensors, meta);
}

void adamw_state_load(const std::string& path, LoraWeights* w) {
    SafetensorsFile file(path);
    auto meta = [&](const std::string& key) -> std::string {
        auto it = file.metadata().find(key);
        if (it == file.metadata().end()) {
            throw GrpoError(path + ": metadata \"" + key + "\" is missing; this is not an optimizer state written by adamw_state_save");
        }
        return it->second;
    };
    size_t n = w->params.size();
    if (meta("num_params") != std::to_string(n) || meta("lora_r") != std::to_string(w->lora.R)) {
        throw GrpoError(path + ": optimizer state for " + meta("num_params") + " parameters at r=" + meta("lora_r") + ", expected " +
                        std::to_string(n) + " at r=" + std::to_string(w->lora.R) +
                        "; resume with the model and LoRA settings of the run that wrote it");
    }
    for (const char* name : {"adam_m", "adam_v"}) {
        const TensorView& t = file.get(name);
        if (t.dtype != "F32" || t.shape != std::vector<int64_t>{(int64_t)n}) {
            throw GrpoError(path + ": tensor " + name + " is " + t.dtype + " " + shape_to_string(t.shape) + ", expected F32 [" +
                            std::to_string(n) + "]");
        }
        memcpy(std::string(name) == "adam_m" ? w->adam_m.data() : w->adam_v.data(), t.data, n * sizeof(float));
    }
    const std::string step = meta("adam_step");
    char* end = nullptr;
    long long value = strtoll(step.c_str(), &end, 10);
    if (step.empty() || *end != '\0' || value < 0) {
        throw GrpoError(path + ": metadata \"adam_step\" is \"" + step + "\", expected a non-negative integer");
    }
    w->adam_step = value;
}
