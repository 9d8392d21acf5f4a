// matmul.cuh: launchers of the GEMMs of training: a small cuBLASLt wrapper and the LoRA linear layer (frozen bf16/NF4 base + rank-R adapter), forward and backward.
#pragma once
#include <cstddef>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "model/weights.h"

// ---- the cuBLASLt wrapper ------------------------------------------------------------------------------------

// The cuBLASLt handle, the caller's workspace and the matmul descriptors and algorithm picked for every shape
// seen so far (asking cuBLASLt's heuristic on every call would cost tens of microseconds of host time).
// One per device and host thread; not thread-safe.
struct MatmulContext;
// The workspace cuBLASLt gets (32 MiB: what NVIDIA recommends on Hopper; the split-K algorithms of the
// rank-R gradients use it).
size_t matmul_workspace_bytes();
// workspace: device memory of matmul_workspace_bytes(), owned by the caller and only used on the streams
// passed to the calls (one stream at a time).
MatmulContext* matmul_create(void* workspace, size_t workspace_bytes);
void matmul_destroy(MatmulContext* ctx);

// Row-major, bf16 operands, fp32 accumulation and fp32 alpha/beta:
//   d [M, N] = alpha * op(a) [M, K] . op(b) [K, N] + beta * d  (+ bias [N] broadcast over rows)
// op(a): a stored [M, K] with row stride lda; with trans_a, a stored [K, M] (op(a) = a^T), stride lda.
// op(b): b stored [K, N] with row stride ldb; with trans_b, b stored [N, K]: a weight [out, in] gives x W^T.
// d is bf16 or, with d_f32, fp32 (fp32 gradients accumulated with beta = 1); row stride ldd. beta = 0 never
// reads d. bias (bf16, only with a bf16 d) is added in fp32 before the one rounding of the result (cuBLAS's
// bias epilogue, as torch's F.linear does). Row strides let a call read or write a column slice of a wider
// matrix. All pointers on the device.
void matmul(MatmulContext* ctx, void* d, bool d_f32, int ldd, const __nv_bfloat16* a, bool trans_a, int lda,
            const __nv_bfloat16* b, bool trans_b, int ldb, int M, int N, int K, float alpha, float beta,
            const __nv_bfloat16* bias, cudaStream_t stream);

// ---- the LoRA linear layer -------------------------------------------------------------------------------------

// One frozen base linear and its adapter, as the GPU backend holds them (device pointers throughout):
// y = x W^T (+ bias) + scale * (x A^T) B^T.
struct LoraLinearGpu {
    // The base weight: model/weights.h's view of the GPU weight buffer (weights_from_buffer with the device copy
    // as target), BF16 (w) or NF4 (nf4, dequantized into the caller's scratch before each use), plus the bias.
    const LinearWeight* base = nullptr;
    // The adapter; A == nullptr means this linear has none. A and B are bf16 copies of the fp32 masters
    // (lora_to_bf16 after every optimizer step): the GEMMs run on the tensor cores in bf16 (see matmul.cu).
    // dA, dB are the fp32 gradients, accumulated into (beta = 1) like the CPU reference's.
    const __nv_bfloat16* A = nullptr;  // [R, in]
    const __nv_bfloat16* B = nullptr;  // [out, R]
    float* dA = nullptr;               // [R, in]
    float* dB = nullptr;               // [out, R]
};

// Linears that read the same input x are done as one group: q, k, v (G = 3) after the input norm, gate and up
// (G = 2) after the post-attention norm, o and down alone (G = 1). The group's rank-R products then share GEMMs:
// when the group's A copies are consecutive in memory (A[g] == A[0] + g*R*in for every g, e.g. the bf16 copy laid
// out as A_q A_k A_v), x A^T for the whole group is ONE GEMM into ax [N, G*R], and dx += d(ax) A is one GEMM with
// K = G*R; the same for dA with the gradients consecutive. Otherwise each linear gets its own GEMM (same result).

// Device scratch bytes a group needs for its dequantized NF4 weight (the largest NF4 linear; 0 when all are bf16).
size_t lora_linear_weight_scratch_bytes(const LoraLinearGpu* linears, int G);

// Forward of a group: y[g] [N, out_g] = round(x W_g^T + bias_g), then, for each linear with an adapter,
// y[g] = round(y[g] + scale * ax_g B_g^T), the second step a GEMM with beta = 1 into y[g]: the two roundings
// of PEFT's bf16 model (base output in bf16, adapter output added in fp32, the sum rounded once).
// x [N, in] bf16 is shared by the group; ax [N, G*R] bf16 receives x A_g^T in columns g*R.. (kept for the
// backward); w_scratch holds lora_linear_weight_scratch_bytes (nullptr when all bases are bf16).
void lora_linear_forward(MatmulContext* ctx, const LoraLinearGpu* linears, int G, const __nv_bfloat16* x, int N,
                         int R, float scale, __nv_bfloat16* const* y, __nv_bfloat16* ax, __nv_bfloat16* w_scratch,
                         cudaStream_t stream);

// Backward of a group, given dy[g] [N, out_g] (bf16), the forward's x and ax:
//   dB_g += scale * dy_g^T ax_g                 (fp32, beta = 1)
//   dax_g = scale * dy_g B_g                     (bf16 scratch dax [N, G*R])
//   dA_g += dax_g^T x                            (fp32, beta = 1)
//   dx    = [dx +] sum_g dy_g W_g + dax A        (bf16; with accumulate dx is added to, as the CPU reference does)
// The NF4 bases are dequantized again into w_scratch (a backend with the bf16 base copy passes bf16 bases instead).
void lora_linear_backward(MatmulContext* ctx, const LoraLinearGpu* linears, int G, const __nv_bfloat16* x, int N,
                          int R, float scale, const __nv_bfloat16* const* dy, const __nv_bfloat16* ax,
                          __nv_bfloat16* dx, bool accumulate, __nv_bfloat16* dax, __nv_bfloat16* w_scratch,
                          cudaStream_t stream);

// The bf16 copies of fp32 LoRA masters the GEMMs read: out[i] = bf16(in[i]), n values (after each AdamW step).
void lora_to_bf16(__nv_bfloat16* out, const float* in, size_t n, cudaStream_t stream);
