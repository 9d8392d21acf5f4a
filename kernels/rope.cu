// rope.cu: HF's bf16 rotary tables and the rotate_half rotation of q or k (forward) and its transpose (backward), 8 pairs per thread.
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda_common.cuh"
#include "kernels/rope.cuh"

// ---------------------------------------------------------------------------------------------------------------
// CUDA kernels

// HF: freqs = inv_freq @ positions (fp32), emb = cat(freqs, freqs), cos/sin in fp32, then .to(bf16).
// The angle is a single fp32 product, so it is the same bits here as in PyTorch.
__global__ void rope_tables_kernel(__nv_bfloat16* cos_table, __nv_bfloat16* sin_table, const float* inv_freq,
                                   int T, int H2) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= T * H2) return;
    float angle = (float)(idx / H2) * inv_freq[idx % H2];
    cos_table[idx] = __float2bfloat16_rn(cosf(angle));
    sin_table[idx] = __float2bfloat16_rn(sinf(angle));
}

// One thread per 8 consecutive pairs (x1 = x[i], x2 = x[i + HD/2]) of one head of one token: two 16-byte loads
// of x, one each of cos and sin. rotate_half(x) = cat(-x2, x1), so per pair the forward is
// y1 = x1 c - x2 s, y2 = x2 c + x1 s, with HF's bf16 rounding of each product and of the sum; the backward
// (transpose) is dx1 = c dy1 + s dy2, dx2 = c dy2 - s dy1 in fp32, rounded once.
// No __restrict__: out may be x (in place); each thread reads its chunks before writing them.
__global__ void rope_kernel(__nv_bfloat16* out, const __nv_bfloat16* x, const int* pos,
                            const __nv_bfloat16* cos_table, const __nv_bfloat16* sin_table, int N, int H, int HD,
                            bool transpose) {
    const int H2 = HD / 2, chunks = H2 / 8;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * H * chunks) return;
    size_t head = idx / chunks;  // n * H + h
    int i = (int)(idx % chunks) * 8;
    int n = (int)(head / H);
    size_t first = head * HD + i, second = first + H2;
    size_t table = (size_t)pos[n] * H2 + i;

    uint4 x1_raw = *(const uint4*)(x + first), x2_raw = *(const uint4*)(x + second);
    uint4 c_raw = *(const uint4*)(cos_table + table), s_raw = *(const uint4*)(sin_table + table);
    const __nv_bfloat16* x1 = (const __nv_bfloat16*)&x1_raw;
    const __nv_bfloat16* x2 = (const __nv_bfloat16*)&x2_raw;
    const __nv_bfloat16* cv = (const __nv_bfloat16*)&c_raw;
    const __nv_bfloat16* sv = (const __nv_bfloat16*)&s_raw;
    uint4 y1_raw, y2_raw;
    __nv_bfloat16* y1 = (__nv_bfloat16*)&y1_raw;
    __nv_bfloat16* y2 = (__nv_bfloat16*)&y2_raw;
    for (int k = 0; k < 8; k++) {
        float a = __bfloat162float(x1[k]), b = __bfloat162float(x2[k]);
        float c = __bfloat162float(cv[k]), s = __bfloat162float(sv[k]);
        if (!transpose) {
            // q * cos and rotate_half(q) * sin are separate bf16 tensors in HF, then added in bf16
            y1[k] = __float2bfloat16_rn(__bfloat162float(__float2bfloat16_rn(a * c)) +
                                        __bfloat162float(__float2bfloat16_rn(-b * s)));
            y2[k] = __float2bfloat16_rn(__bfloat162float(__float2bfloat16_rn(b * c)) +
                                        __bfloat162float(__float2bfloat16_rn(a * s)));
        } else {
            y1[k] = __float2bfloat16_rn(c * a + s * b);
            y2[k] = __float2bfloat16_rn(c * b - s * a);
        }
    }
    *(uint4*)(out + first) = y1_raw;
    *(uint4*)(out + second) = y2_raw;
}

// ---------------------------------------------------------------------------------------------------------------
// kernel launchers

static void check_rope_head_dim(const char* who, int HD) {
    if (HD % 16 == 0) return;
    fprintf(stderr, "error: %s needs HD a multiple of 16 (16-byte chunks of each half), got HD = %d\n", who, HD);
    exit(EXIT_FAILURE);
}

void rope_tables(__nv_bfloat16* cos_table, __nv_bfloat16* sin_table, const float* inv_freq, int T, int HD,
                 cudaStream_t stream) {
    if (T == 0) return;
    const int block_size = 256;
    int total = T * (HD / 2);
    rope_tables_kernel<<<(total + block_size - 1) / block_size, block_size, 0, stream>>>(cos_table, sin_table,
                                                                                       inv_freq, T, HD / 2);
    cudaCheck(cudaGetLastError());
}

static void rope_launch(__nv_bfloat16* out, const __nv_bfloat16* x, const int* pos, const __nv_bfloat16* cos_table,
                        const __nv_bfloat16* sin_table, int N, int H, int HD, bool transpose, cudaStream_t stream) {
    if (N == 0 || H == 0) return;
    const int block_size = 256;
    size_t total = (size_t)N * H * (HD / 16);
    unsigned grid = (unsigned)((total + block_size - 1) / block_size);
    rope_kernel<<<grid, block_size, 0, stream>>>(out, x, pos, cos_table, sin_table, N, H, HD, transpose);
    cudaCheck(cudaGetLastError());
}

void rope_forward(__nv_bfloat16* out, const __nv_bfloat16* x, const int* pos, const __nv_bfloat16* cos_table,
                  const __nv_bfloat16* sin_table, int N, int H, int HD, cudaStream_t stream) {
    check_rope_head_dim("rope_forward", HD);
    rope_launch(out, x, pos, cos_table, sin_table, N, H, HD, false, stream);
}

void rope_backward(__nv_bfloat16* dx, const __nv_bfloat16* dout, const int* pos, const __nv_bfloat16* cos_table,
                   const __nv_bfloat16* sin_table, int N, int H, int HD, cudaStream_t stream) {
    check_rope_head_dim("rope_backward", HD);
    rope_launch(dx, dout, pos, cos_table, sin_table, N, H, HD, true, stream);
}
