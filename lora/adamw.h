// adamw.h: the optimizer step as the HF Trainer runs it: clip_grad_norm_, torch.optim.AdamW and transformers' cosine schedule with warmup.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "lora/lora.h"

// Hyperparameters in double: torch keeps them as Python floats and does the scalar arithmetic
// (1 - lr*wd, lr / bias correction, ...) in double before the fp32 kernels see the results.
// The defaults are torch.optim.AdamW's.
struct AdamWConfig {
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 1e-2;
};

// The scalars of AdamW update number `step` at lr. torch computes them in double (Python floats) and each reaches
// the fp32 kernels rounded once; adamw_update and the GPU's adamw_cuda both take them from here, which keeps the
// two bit-identical.
struct AdamWStepConstants {
    float decay;                  // 1 - lr * weight_decay: decoupled weight decay, applied first
    float lerp_weight;            // 1 - beta1
    float beta2, one_minus_beta2;
    float step_size;              // -lr / (1 - beta1^step)
    float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
    float eps;
};
AdamWStepConstants adamw_step_constants(const AdamWConfig& cfg, double lr, int64_t step);

// One AdamW update of n fp32 parameters in place, following torch's multi-tensor (foreach) path operation
// by operation: p *= 1 - lr*wd; m = lerp(m, g, 1 - beta1); v = v*beta2 + (1 - beta2)*g*g;
// p += -(lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps). `step` is t, the 1-based count of
// this update (torch increments state["step"] before using it). lr 0 still moves m and v.
void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, const AdamWConfig& cfg, double lr,
                  int64_t step);

// adamw_update over the whole adapter: w->adam_step += 1, then one update of params from grads.
void lora_adamw_step(LoraWeights* w, const AdamWConfig& cfg, double lr);

// The 2-norm of all gradients as torch.nn.utils.clip_grad_norm_ computes it: each tensor's norm (in fp32),
// then the norm of those norms. tensor_sizes: consecutive tensors that together cover grads.
float grad_global_norm(const float* grads, const std::vector<size_t>& tensor_sizes);
// clip_grad_norm_: grads *= min(1, max_norm / (total + 1e-6)), evaluated in fp32 as torch does; returns
// the total before clipping (what the Trainer logs as grad_norm).
float clip_grad_norm(float* grads, const std::vector<size_t>& tensor_sizes, double max_norm);
// The same over an adapter's gradients, tensor by tensor (lora_tensor_sizes).
float lora_clip_grad_norm(LoraWeights* w, double max_norm);

// transformers' get_cosine_schedule_with_warmup (num_cycles 0.5): the learning rate of update number `step`,
// counting from 0 for the first update. base * step / max(1, warmup) while step < warmup, then
// base * max(0, 0.5 * (1 + cos(pi * progress))) with progress = (step - warmup) / max(1, total - warmup).
double cosine_schedule_lr(double base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps);
// TRL / HF TrainingArguments: warmup_steps = ceil(warmup_ratio * max_steps).
int64_t warmup_steps_from_ratio(double warmup_ratio, int64_t max_steps);

// The optimizer state to resume a run exactly: adam_step, adam_m and adam_v, in one safetensors file
// (tensors "adam_m", "adam_v" F32 [n]; metadata "adam_step", "lora_r", "num_params"). Written atomically.
void adamw_state_save(const std::string& path, const LoraWeights& w);
// Reads it back into w (laid out for the same model and adapter config); throws GrpoError naming the file
// when the parameter count or rank differs.
void adamw_state_load(const std::string& path, LoraWeights* w);
