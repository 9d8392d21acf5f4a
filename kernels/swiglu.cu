// swiglu.cu: SwiGLU out = round(round(silu(g)) * u) and its backward to g and u, 8 elements (16 bytes) per thread.
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda_common.cuh"
#include "kernels/swiglu.cuh"

// ---------------------------------------------------------------------------------------------------------------
// CUDA kernels

// silu in fp32 on the bf16 gate, g / (1 + exp(-g)) as PyTorch computes it, rounded to bf16 as HF's bf16 model
// stores it. The forward and the backward share this so the backward's a is bit-identical to the forward's.
__device__ __forceinline__ float silu_bf16(float g) { return __bfloat162float(__float2bfloat16_rn(g / (1.0f + expf(-g)))); }

__global__ void swiglu_forward_kernel(uint4* out, const uint4* g, const uint4* u, size_t n8) {
    grid_launch_dependents();  // a decode linear launched next may start loading its weights now
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n8) return;
    uint4 g_raw = g[idx], u_raw = u[idx], out_raw;
    const __nv_bfloat16* gv = (const __nv_bfloat16*)&g_raw;
    const __nv_bfloat16* uv = (const __nv_bfloat16*)&u_raw;
    __nv_bfloat16* ov = (__nv_bfloat16*)&out_raw;
    for (int k = 0; k < 8; k++) ov[k] = __float2bfloat16_rn(silu_bf16(__bfloat162float(gv[k])) * __bfloat162float(uv[k]));
    out[idx] = out_raw;
}

// No __restrict__: dg may alias g and du may alias u; each thread reads all of its chunk before writing.
__global__ void swiglu_backward_kernel(uint4* dg, uint4* du, const uint4* dout, const uint4* g, const uint4* u,
                                       size_t n8) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n8) return;
    uint4 d_raw = dout[idx], g_raw = g[idx], u_raw = u[idx], dg_raw, du_raw;
    const __nv_bfloat16* dv = (const __nv_bfloat16*)&d_raw;
    const __nv_bfloat16* gv = (const __nv_bfloat16*)&g_raw;
    const __nv_bfloat16* uv = (const __nv_bfloat16*)&u_raw;
    __nv_bfloat16* dgv = (__nv_bfloat16*)&dg_raw;
    __nv_bfloat16* duv = (__nv_bfloat16*)&du_raw;
    for (int k = 0; k < 8; k++) {
        float d = __bfloat162float(dv[k]), gk = __bfloat162float(gv[k]), uk = __bfloat162float(uv[k]);
        float s = 1.0f / (1.0f + expf(-gk));
        // silu'(g) = s + g s (1 - s) = s (1 + g (1 - s))
        dgv[k] = __float2bfloat16_rn(d * uk * s * (1.0f + gk * (1.0f - s)));
        duv[k] = __float2bfloat16_rn(d * silu_bf16(gk));
    }
    dg[idx] = dg_raw;
    du[idx] = du_raw;
}

// ---------------------------------------------------------------------------------------------------------------
// kernel launchers

static void check_swiglu_size(const char* who, size_t n) {
    if (n % 8 == 0) return;
    fprintf(stderr, "error: %s needs n = N*I a multiple of 8 (16-byte chunks), got n = %zu\n", who, n);
    exit(EXIT_FAILURE);
}

void swiglu_forward(__nv_bfloat16* out, const __nv_bfloat16* g, const __nv_bfloat16* u, size_t n,
                    cudaStream_t stream) {
    check_swiglu_size("swiglu_forward", n);
    if (n == 0) return;
    const int block_size = 256;
    size_t n8 = n / 8;
    unsigned grid = (unsigned)((n8 + block_size - 1) / block_size);
    swiglu_forward_kernel<<<grid, block_size, 0, stream>>>((uint4*)out, (const uint4*)g, (const uint4*)u, n8);
    cudaCheck(cudaGetLastError());
}

void swiglu_backward(__nv_bfloat16* dg, __nv_bfloat16* du, const __nv_bfloat16* dout, const __nv_bfloat16* g,
                     const __nv_bfloat16* u, size_t n, cudaStream_t stream) {
    check_swiglu_size("swiglu_backward", n);
    if (n == 0) return;
    const int block_size = 256;
    size_t n8 = n / 8;
    unsigned grid = (unsigned)((n8 + block_size - 1) / block_size);
    swiglu_backward_kernel<<<grid, block_size, 0, stream>>>((uint4*)dg, (uint4*)du, (const uint4*)dout,
                                                            (const uint4*)g, (const uint4*)u, n8);
    cudaCheck(cudaGetLastError());
}
