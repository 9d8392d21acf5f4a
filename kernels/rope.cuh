// rope.cuh: launchers of the rotary embedding: HF's bf16 cos/sin tables and the rotate_half rotation of q or k, forward and backward.
#pragma once
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
