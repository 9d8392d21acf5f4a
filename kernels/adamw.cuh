// adamw.cuh: launchers for the optimizer step on the GPU: AdamW over the flat fp32 LoRA buffers (bit-identical to lora/adamw.h's adamw_update) and clip_grad_norm_'s global norm and scaling.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "lora/adamw.h"

// adamw_update(params, grads, m, v, n, cfg, lr, step) on device buffers, bit for bit. grad_scale (device,
// one float) multiplies each gradient as it is read (pass clip_grad_norm's coefficient to fuse the clip into
// the step: g*coef then the update is exactly clip then update); nullptr reads the gradients as they are.
// 16-byte aligned buffers take the vectorized path. A NaN *grad_scale (grad_norm_cuda's coefficient when the
// norm is not finite) makes the call a no-op: the step is skipped and params, m and v keep their values.
void adamw_cuda(float* params, const float* grads, float* m, float* v, size_t n, const AdamWConfig& cfg, double lr,
                int64_t step, const float* grad_scale, cudaStream_t stream);

// Scratch bytes for grad_norm_cuda over num_tensors tensors of at most max_tensor_size floats each.
size_t grad_norm_scratch_bytes(int num_tensors, int64_t max_tensor_size);

// grad_global_norm + clip_grad_norm's coefficient, on device: norm_and_coef[0] = the 2-norm of the per-tensor
// 2-norms (each tensor's norm rounded to fp32, as torch's _foreach_norm), norm_and_coef[1] = min(1,
// max_norm / (norm + 1e-6)) in fp32 as torch evaluates it, or NaN when the norm is not finite (the skip signal). tensor_offsets (device, num_tensors + 1 entries)
// delimit consecutive tensors in grads (lora_tensor_sizes, accumulated). Two stages with fixed orders
// (per-chunk double sums, then one block), so the result is the same every run.
void grad_norm_cuda(float* norm_and_coef, const float* grads, const int64_t* tensor_offsets, int num_tensors,
                    int64_t max_tensor_size, double max_norm, void* scratch, cudaStream_t stream);

// grads[i] *= *coef for i < n (clip_grad_norm's last step, coef on the device).
void scale_grads_cuda(float* grads, size_t n, const float* coef, cudaStream_t stream);
