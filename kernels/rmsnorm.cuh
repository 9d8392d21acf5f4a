// rmsnorm.cuh: launchers of RMSNorm forward (alone or fused with the residual add before it) and its backward to the input.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

// out [N, C] = round(w * round(x * rstd)), rstd = 1/sqrt(mean(x^2) + eps) in fp32: HF's Qwen2RMSNorm in bf16.
// rstd [N] (fp32) is saved for the backward; pass nullptr when no backward follows (generation).
// C must be a multiple of 8. All pointers on the device.
void rmsnorm_forward(__nv_bfloat16* out, float* rstd, const __nv_bfloat16* x, const __nv_bfloat16* w, int N, int C,
                     float eps, cudaStream_t stream);

// The residual add and the RMSNorm after it in one pass, as every decoder layer needs twice:
// resid_out = round(x + y), then out = rmsnorm(resid_out) exactly as rmsnorm_forward would compute it.
// resid_out may be x (the residual stream updated in place); rstd may be nullptr.
void residual_rmsnorm_forward(__nv_bfloat16* resid_out, __nv_bfloat16* out, float* rstd, const __nv_bfloat16* x,
                              const __nv_bfloat16* y, const __nv_bfloat16* w, int N, int C, float eps,
                              cudaStream_t stream);

// The forward kernels one by one, for the lab and the tests (rmsnorm_forward and residual_rmsnorm_forward pick
// one by the number of rows): 2, one warp per row (training's many rows); 3, one block per row (up to 256 rows, a
// decode step). y == nullptr: no residual add (resid_out is not written). Version 3 falls back to 2 for rows wider
// than 32768.
void residual_rmsnorm_forward_version(int version, __nv_bfloat16* resid_out, __nv_bfloat16* out, float* rstd,
                                      const __nv_bfloat16* x, const __nv_bfloat16* y, const __nv_bfloat16* w, int N,
                                      int C, float eps, cudaStream_t stream);

// Backward to the input only (the norm weight is frozen), from the saved rstd:
// d = rstd * (w*dout) - rstd^3 * x * mean(w*dout*x). With accumulate, dx = round(dx + d) (the residual stream's
// gradient gains the norm branch, as in cpu_rmsnorm_backward); without, dx = round(d) and dx is never read.
void rmsnorm_backward(__nv_bfloat16* dx, const __nv_bfloat16* dout, const __nv_bfloat16* x, const float* rstd,
                      const __nv_bfloat16* w, int N, int C, bool accumulate, cudaStream_t stream);
