// residual.cu: the residual add out = round(x + y) on bf16 activations, 8 elements (16 bytes) per thread.
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda_common.cuh"
#include "kernels/residual.cuh"

// ---------------------------------------------------------------------------------------------------------------
// CUDA kernels

// No __restrict__: out may alias x or y, and each thread reads its chunk before writing it.
__global__ void residual_forward_kernel(uint4* out, const uint4* x, const uint4* y, size_t n8) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n8) return;
    uint4 x_raw = x[idx], y_raw = y[idx], out_raw;
    const __nv_bfloat16* xv = (const __nv_bfloat16*)&x_raw;
    const __nv_bfloat16* yv = (const __nv_bfloat16*)&y_raw;
    __nv_bfloat16* ov = (__nv_bfloat16*)&out_raw;
    for (int k = 0; k < 8; k++) ov[k] = __float2bfloat16_rn(__bfloat162float(xv[k]) + __bfloat162float(yv[k]));
    out[idx] = out_raw;
}

// ---------------------------------------------------------------------------------------------------------------
// kernel launchers

void residual_forward(__nv_bfloat16* out, const __nv_bfloat16* x, const __nv_bfloat16* y, size_t n,
                      cudaStream_t stream) {
    if (n % 8 != 0) {
        fprintf(stderr, "error: residual_forward needs n a multiple of 8 (16-byte chunks), got n = %zu\n", n);
        exit(EXIT_FAILURE);
    }
    if (n == 0) return;
    const int block_size = 256;
    size_t n8 = n / 8;
    unsigned grid = (unsigned)((n8 + block_size - 1) / block_size);
    residual_forward_kernel<<<grid, block_size, 0, stream>>>((uint4*)out, (const uint4*)x, (const uint4*)y, n8);
    cudaCheck(cudaGetLastError());
}
