// attention.cuh: launchers for causal grouped-query flash attention (forward saving the logsumexp, FlashAttention-2 backward) on bf16 tensor cores.
#pragma once
#include <cstddef>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

// Layout, shared by both directions (the CPU reference's, model/cpu_model.h):
//   q, out, dq, dout [N, NH*HD] bf16 (q after RoPE); k, v, dk, dv [N, KVH*HD] bf16; query head h reads
//   key/value head h / (NH/KVH); score scale HD^-0.5; causal within each sequence; fp32 accumulation.
//   Sequence b is the rows [start_b, start_b + len_b):
//     cu_seqlens == nullptr: start_b = b*T, len_b = T, N = B*T (the training batch);
//     cu_seqlens (device int[B+1], cu_seqlens[0] = 0, non-decreasing; FlashAttention's varlen convention):
//       start_b = cu_seqlens[b], len_b = cu_seqlens[b+1] - cu_seqlens[b] <= T, so packed rollouts of
//       different lengths waste no work on padding; T is then the longest length. Rows outside every
//       sequence are neither read nor written.
//   lse [B, NH, T] fp32: the natural-log logsumexp of each query row's scaled scores (row i of sequence b,
//   head h at (b*NH + h)*T + i; rows i >= len_b are not written).
// HD must be 16, 32, 64 or 128 (Qwen2.5 uses 64 and 128, the tiny test models 16 and 32) and NH a multiple of
// KVH (anything else throws GrpoError). Every pointer must be 16-byte aligned (rows are read as 16-byte vectors).
// Nothing is allocated; all launches go on `stream`.

// out = softmax(q k^T * HD^-0.5, causal) v, and lse for the backward.
void attention_forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,
                       const __nv_bfloat16* v, const int* cu_seqlens, int B, int T, int NH, int KVH, int HD,
                       cudaStream_t stream);

// Bytes of device scratch attention_backward needs: D = rowsum(dout * out), fp32 [B, NH, T].
size_t attention_backward_scratch_bytes(int B, int T, int NH);

// dq [N, NH*HD], dk and dv [N, KVH*HD] (each dk/dv row summed over the NH/KVH query heads sharing that
// key/value head) are written, not accumulated into. out and lse are the forward's. Deterministic: no
// atomics, so the same inputs give bit-identical gradients.
void attention_backward(__nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv, void* scratch,
                        const __nv_bfloat16* dout, const __nv_bfloat16* out, const float* lse,
                        const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                        const int* cu_seqlens, int B, int T, int NH, int KVH, int HD, cudaStream_t stream);
