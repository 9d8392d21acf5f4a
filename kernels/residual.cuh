// residual.cuh: launcher of the residual add h = round(x + y) (see rmsnorm.cuh for the add fused with the next norm).
#pragma once
#include <cstddef>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

// out [n] = round(x + y) in fp32, as HF's bf16 residual add. out may be x or y. n must be a multiple of 8.
// Its backward is the identity to both inputs, so it has no kernel: the residual stream's gradient is one bf16
// buffer that rmsnorm_backward(accumulate = true) adds each norm branch into (HF also keeps it in bf16).
void residual_forward(__nv_bfloat16* out, const __nv_bfloat16* x, const __nv_bfloat16* y, size_t n,
                      cudaStream_t stream);
