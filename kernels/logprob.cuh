// logprob.cuh: launchers for lm_head + log-softmax + gather over chunks of token rows (forward and backward), never holding the full [N, V] logits.
#pragma once
#include <cstddef>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

// Indexing: everything per token row is indexed by its row n of h [N, C] (the hidden states after the final
// norm): targets[n] (the next token), logp[n], lse[n], dlogp[n], dh[n]. `rows` (device, M entries) lists the
// rows to process, each at most once, in any order; nullptr means all rows 0..M-1 (then M = N). Rows not
// listed are not touched in the forward. Only completion tokens need log-probs, so the backend lists those.
//
// Logits are computed chunk_rows rows at a time into a scratch [chunk_rows, V] bf16 buffer by a cuBLASLt GEMM
// (fp32 accumulation, rounded once to bf16 as HF's bf16 lm_head output), then one block per row does
// x = logit / temperature, lse = logsumexp(x), logp = x[target] - lse. At Qwen2.5-7B (V = 152064) a chunk of
// 1024 rows is 311 MB of logits (2048 rows: 623 MB); 1024 rows keeps the GEMM compute-bound (each chunk
// re-reads the 1.09 GB lm_head, 2*1024 flops per weight byte pair, ~5x the H200's flop/byte balance).

// Bytes of scratch the two launchers need: the logits chunk, a gathered h chunk and a dh chunk (used only
// when rows is given), and a cuBLASLt workspace. 256-byte aligned pieces.
size_t logprob_scratch_bytes(int chunk_rows, int V, int C);

// logp[n] = log softmax(h[n] @ lm_head^T / temperature)[targets[n]] and lse[n] (the logsumexp of the
// scaled logits, kept for the backward) for every listed row n. h [N, C], lm_head [V, C] bf16 (the tied
// embedding or the untied head). handle: a cuBLASLt handle the caller owns.
void logprob_forward_cuda(float* logp, float* lse, const __nv_bfloat16* h, const __nv_bfloat16* lm_head,
                          const int* targets, const int* rows, int M, int V, int C, float temperature, int chunk_rows,
                          void* scratch, cublasLtHandle_t handle, cudaStream_t stream);

// Given dlogp[n] for the listed rows and the forward's lse, WRITES dh [N, C] bf16 (the gradient of h; the
// frozen lm_head gets none): dlogits = dlogp * (onehot(target) - softmax(x)) / temperature in bf16 (HF's
// logits gradient dtype), recomputing each chunk's logits, then dh = dlogits @ lm_head. Rows that are not
// listed get dh = 0 (when rows is given, dh is zeroed first, so N is its row count). Rows with dlogp = 0
// skip the softmax (their dlogits row is just zeroed); to skip their GEMM work too, leave them off `rows`.
void logprob_backward_cuda(__nv_bfloat16* dh, const float* dlogp, const float* lse, const __nv_bfloat16* h,
                           const __nv_bfloat16* lm_head, const int* targets, const int* rows, int M, int N, int V,
                           int C, float temperature, int chunk_rows, void* scratch, cublasLtHandle_t handle,
                           cudaStream_t stream);

// The row kernels alone, on one chunk of Mc logits rows [Mc, V] bf16 already in memory (for the lab, tests
// and any caller that has its own logits): chunk row j belongs to token row n = rows ? rows[j] : row0 + j.
void logprob_rows_forward_cuda(float* logp, float* lse, const __nv_bfloat16* logits, const int* targets,
                               const int* rows, int row0, int Mc, int V, float temperature, cudaStream_t stream);
// In place: the logits chunk becomes the dlogits chunk.
void logprob_rows_backward_cuda(__nv_bfloat16* logits_to_dlogits, const float* dlogp, const float* lse,
                                const int* targets, const int* rows, int row0, int Mc, int V, float temperature,
                                cudaStream_t stream);
