// rope.cuh: launchers of the rotary embedding: HF's bf16 cos/sin tables and the rotate_half rotation of q or k, forward and backward (and, for kernels, the rotation of 8 pairs).
#pragma once
#include <cstddef>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

// cos, sin [T, HD/2] bf16 for positions 0..T-1: angle = t * inv_freq[i] in fp32, cos/sin in fp32 rounded to bf16,
// as HF's Qwen2RotaryEmbedding. inv_freq [HD/2] (fp32, on the device) comes from cpu_rope_inv_freq, which
// reproduces HF's fp32 inverse frequencies; the tables are built once per run.
void rope_tables(__nv_bfloat16* cos_table, __nv_bfloat16* sin_table, const float* inv_freq, int T, int HD,
                 cudaStream_t stream);

// x [N, H*HD] (q with H = NH, k with H = KVH) rotated at per-token positions pos [N] (each < the tables' T):
// out = round(round(x*cos) + round(rotate_half(x)*sin)), HF's bf16 apply_rotary_pos_emb. out may be x (in place).
// HD must be a multiple of 16 (16-byte chunks of each half).
void rope_forward(__nv_bfloat16* out, const __nv_bfloat16* x, const int* pos, const __nv_bfloat16* cos_table,
                  const __nv_bfloat16* sin_table, int N, int H, int HD, cudaStream_t stream);

// The transpose rotation on a gradient, fp32 math rounded once: per pair dx1 = c*dy1 + s*dy2, dx2 = c*dy2 - s*dy1.
// dx may be dout (in place).
void rope_backward(__nv_bfloat16* dx, const __nv_bfloat16* dout, const int* pos, const __nv_bfloat16* cos_table,
                   const __nv_bfloat16* sin_table, int N, int H, int HD, cudaStream_t stream);

#ifdef __CUDACC__
// The rotation of 8 consecutive pairs, for every kernel that rotates (rope.cu, decode_rope_append.cu), so that
// all of them give the same bits. x1 = x[i..i+8) and x2 = x[i+HD/2..i+HD/2+8) of one head as two 16-byte chunks;
// table = pos * HD/2 + i indexes the pairs' cos and sin. rotate_half(x) = cat(-x2, x1), so per pair the forward is
// y1 = x1 c - x2 s, y2 = x2 c + x1 s, with HF's bf16 rounding of each product and of the sum; the transpose
// (backward) is y1 = c x1 + s x2, y2 = c x2 - s x1 in fp32, rounded once.
__device__ __forceinline__ void rope_rotate8(uint4* y1_raw, uint4* y2_raw, uint4 x1_raw, uint4 x2_raw,
                                             const __nv_bfloat16* cos_table, const __nv_bfloat16* sin_table,
                                             size_t table, bool transpose) {
    const uint4 c_raw = *(const uint4*)(cos_table + table), s_raw = *(const uint4*)(sin_table + table);
    const __nv_bfloat16* x1 = (const __nv_bfloat16*)&x1_raw;
    const __nv_bfloat16* x2 = (const __nv_bfloat16*)&x2_raw;
    const __nv_bfloat16* cv = (const __nv_bfloat16*)&c_raw;
    const __nv_bfloat16* sv = (const __nv_bfloat16*)&s_raw;
    __nv_bfloat16* y1 = (__nv_bfloat16*)y1_raw;
    __nv_bfloat16* y2 = (__nv_bfloat16*)y2_raw;
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
}
#endif
