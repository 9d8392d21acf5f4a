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
// of x, one each of cos and sin, rotated by rope_rotate8 (rope.cuh).
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
    uint4 y1, y2;
    rope_rotate8(&y1, &y2, *(const uint4*)(x + first), *(const uint4*)(x + second), cos_table, sin_table,
                 (size_t)pos[n] * H2 + i, transpose);
    *(uint4*)(out + first) = y1;
    *(uint4*)(out + second) = y2;
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
