// logprob.cu: lm_head GEMM (cuBLASLt) + per-row log-softmax and gather, forward and backward, one chunk of token rows at a time.
#include "kernels/logprob.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda_common.cuh"

// ------------------------------------------------------------------------------------------------------------
// CUDA kernels

// One block per logits row: 16-byte loads need 512 threads x ~37 vectors each at V = 152064.
constexpr int LOGPROB_ROW_THREADS = 512;

// Eight bf16 logits from one 16-byte load, as floats.
__device__ inline void load_bf16x8(float out[8], const __nv_bfloat16* p) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
    for (int k = 0; k < 4; k++) {
        float2 f = __bfloat1622float2(pairs[k]);
        out[2 * k] = f.x;
        out[2 * k + 1] = f.y;
    }
}

// A running softmax denominator is a pair (m, s) = (max so far, sum of exp(x - m)); merging two rescales
// the one with the smaller max, so no exp ever overflows and one pass over the row suffices.
__device__ inline void online_merge(float& m, float& s, float m2, float s2) {
    if (m2 > m) {
        s = s * expf(m - m2) + s2;  // m = -inf has s = 0, and 0 * exp(-inf) = 0
        m = m2;
    } else if (m2 != -INFINITY) {
        s = s + s2 * expf(m2 - m);
    }
}

// Merge the pairs of a whole block into thread 0's (m, s). The merge order is fixed, so the result is the
// same every run.
__device__ inline void block_merge(float& m, float& s) {
    __shared__ float shared_m[32], shared_s[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
    for (int offset = 16; offset > 0; offset /= 2)
        online_merge(m, s, __shfl_xor_sync(0xffffffffu, m, offset), __shfl_xor_sync(0xffffffffu, s, offset));
    if (lane == 0) {
        shared_m[warp] = m;
        shared_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < num_warps ? shared_m[lane] : -INFINITY;
        s = lane < num_warps ? shared_s[lane] : 0.0f;
        for (int offset = 16; offset > 0; offset /= 2)
            online_merge(m, s, __shfl_xor_sync(0xffffffffu, m, offset), __shfl_xor_sync(0xffffffffu, s, offset));
    }
}

// logp and lse of one logits row per block. x = logit / temperature is a true division as in TRL (not a
// multiply by 1/temperature), so x is bit-identical to the CPU reference's.
__global__ void logprob_rows_forward_kernel(float* logp, float* lse, const __nv_bfloat16* logits, const int* targets,
                                            const int* rows, int row0, int V, float temperature) {
    const int j = blockIdx.x;
    const int n = rows ? rows[j] : row0 + j;
    const __nv_bfloat16* row = logits + (size_t)j * V;
    float m = -INFINITY, s = 0.0f;
    if (V % 8 == 0) {  // every row starts 16-byte aligned
        for (int k = threadIdx.x * 8; k < V; k += blockDim.x * 8) {
            float x[8];
            load_bf16x8(x, row + k);
            float vec_max = -INFINITY;
            for (int q = 0; q < 8; q++) {
                x[q] = __fdiv_rn(x[q], temperature);
                vec_max = fmaxf(vec_max, x[q]);
            }
            if (vec_max > m) {
                s *= expf(m - vec_max);
                m = vec_max;
            }
            for (int q = 0; q < 8; q++) s += expf(x[q] - m);
        }
    } else {
        for (int k = threadIdx.x; k < V; k += blockDim.x)
            online_merge(m, s, __fdiv_rn(__bfloat162float(row[k]), temperature), 1.0f);
    }
    block_merge(m, s);
    if (threadIdx.x == 0) {
        float x_target = __fdiv_rn(__bfloat162float(row[targets[n]]), temperature);
        float log_sum = logf(s);
        logp[n] = (x_target - m) - log_sum;  // the CPU reference's order: (x - max) - log(sum)
        lse[n] = m + log_sum;
    }
}

// dlogits = dlogp * (onehot(target) - exp(x - lse)) / temperature, written over the logits row in bf16.
__global__ void logprob_rows_backward_kernel(__nv_bfloat16* logits, const float* dlogp, const float* lse,
                                             const int* targets, const int* rows, int row0, int V, float temperature) {
    const int j = blockIdx.x;
    const int n = rows ? rows[j] : row0 + j;
    __nv_bfloat16* row = logits + (size_t)j * V;
    const float g = dlogp[n];
    if (g == 0.0f) {  // masked tokens: nothing flows back, so skip the exps (the GEMM still reads the zeros)
        for (int k = threadIdx.x; k < V; k += blockDim.x) row[k] = __float2bfloat16_rn(0.0f);
        return;
    }
    const float row_lse = lse[n];
    const int target = targets[n];
    auto dlogit = [&](float logit, int k) {
        float p = expf(__fdiv_rn(logit, temperature) - row_lse);
        float onehot = k == target ? 1.0f : 0.0f;
        return __float2bfloat16_rn(__fdiv_rn(__fmul_rn(g, __fsub_rn(onehot, p)), temperature));
    };
    if (V % 8 == 0) {
        for (int k = threadIdx.x * 8; k < V; k += blockDim.x * 8) {
            float x[8];
            load_bf16x8(x, row + k);
            uint4 raw;
            __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(&raw);
            for (int q = 0; q < 8; q++) out[q] = dlogit(x[q], k + q);
            *reinterpret_cast<uint4*>(row + k) = raw;
        }
    } else {
        for (int k = threadIdx.x; k < V; k += blockDim.x) row[k] = dlogit(__bfloat162float(row[k]), k);
    }
}

// dst[j] = src[rows[j]] (gather = true) or dst[rows[j]] = src[j] (scatter), rows of C bf16 each.
__global__ void copy_rows_kernel(__nv_bfloat16* dst, const __nv_bfloat16* src, const int* rows, int C, bool gather) {
    const int j = blockIdx.x;
    const size_t from = gather ? (size_t)rows[j] : (size_t)j, to = gather ? (size_t)j : (size_t)rows[j];
    for (int c = threadIdx.x; c < C; c += blockDim.x) dst[to * C + c] = src[from * C + c];
}

// ------------------------------------------------------------------------------------------------------------
// kernel launchers

// A minimal cuBLASLt call private to this file (to be replaced by kernels/matmul's general wrapper):
// column-major D [m, n] = op(A) @ op(B), bf16 in and out, fp32 accumulation, D rounded once.
static size_t pointer_alignment(const void* p) {
    uintptr_t address = (uintptr_t)p;
    size_t alignment = 256;
    while (alignment > 2 && address % alignment != 0) alignment /= 2;
    return alignment;
}

static void lm_head_matmul(cublasLtHandle_t handle, bool transa, int m, int n, int k, const __nv_bfloat16* A, int lda,
                           const __nv_bfloat16* B, int ldb, __nv_bfloat16* D, int ldd, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream) {
    cublasLtMatmulDesc_t desc;
    cublasCheck(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t op_a = transa ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    cublasLtMatrixLayout_t layout_a, layout_b, layout_d;
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_a, CUDA_R_16BF, transa ? k : m, transa ? m : k, lda));
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_b, CUDA_R_16BF, k, n, ldb));
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_d, CUDA_R_16BF, m, n, ldd));
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                                     sizeof(workspace_bytes)));
    // chunk pointers are offsets into bigger buffers: tell the heuristic their true alignment
    uint32_t align_a = (uint32_t)pointer_alignment(A), align_b = (uint32_t)pointer_alignment(B),
             align_d = (uint32_t)pointer_alignment(D);
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                     sizeof(align_a)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                     sizeof(align_b)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                     sizeof(align_d)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                     sizeof(align_d)));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(handle, desc, layout_a, layout_b, layout_d, layout_d, pref, 1,
                                                &heuristic, &found));
    if (found == 0) {
        fprintf(stderr, "error: cuBLASLt has no bf16 algorithm for lm_head m=%d n=%d k=%d\n", m, n, k);
        exit(EXIT_FAILURE);
    }
    const float alpha = 1.0f, beta = 0.0f;
    cublasCheck(cublasLtMatmul(handle, desc, &alpha, A, layout_a, B, layout_b, &beta, D, layout_d, D, layout_d,
                               &heuristic.algo, workspace, workspace_bytes, stream));
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    cublasCheck(cublasLtMatrixLayoutDestroy(layout_a));
    cublasCheck(cublasLtMatrixLayoutDestroy(layout_b));
    cublasCheck(cublasLtMatrixLayoutDestroy(layout_d));
    cublasCheck(cublasLtMatmulDescDestroy(desc));
}

static size_t round_up_256(size_t bytes) { return (bytes + 255) / 256 * 256; }
static const size_t LOGPROB_WORKSPACE_BYTES = 32u << 20;  // cuBLASLt's recommendation for Hopper

// The scratch buffer's pieces, in order.
struct LogprobScratch {
    __nv_bfloat16 *logits, *h_chunk, *dh_chunk;
    void* workspace;
};
static LogprobScratch logprob_scratch(void* scratch, int chunk_rows, int V, int C) {
    char* p = (char*)scratch;
    LogprobScratch s;
    s.logits = (__nv_bfloat16*)p;
    p += round_up_256((size_t)chunk_rows * V * sizeof(__nv_bfloat16));
    s.h_chunk = (__nv_bfloat16*)p;
    p += round_up_256((size_t)chunk_rows * C * sizeof(__nv_bfloat16));
    s.dh_chunk = (__nv_bfloat16*)p;
    p += round_up_256((size_t)chunk_rows * C * sizeof(__nv_bfloat16));
    s.workspace = p;
    return s;
}

size_t logprob_scratch_bytes(int chunk_rows, int V, int C) {
    return round_up_256((size_t)chunk_rows * V * sizeof(__nv_bfloat16)) +
           2 * round_up_256((size_t)chunk_rows * C * sizeof(__nv_bfloat16)) + LOGPROB_WORKSPACE_BYTES;
}

void logprob_rows_forward_cuda(float* logp, float* lse, const __nv_bfloat16* logits, const int* targets,
                               const int* rows, int row0, int Mc, int V, float temperature, cudaStream_t stream) {
    if (Mc <= 0) return;
    logprob_rows_forward_kernel<<<Mc, LOGPROB_ROW_THREADS, 0, stream>>>(logp, lse, logits, targets, rows, row0, V,
                                                                         temperature);
    cudaCheck(cudaGetLastError());
}

void logprob_rows_backward_cuda(__nv_bfloat16* logits_to_dlogits, const float* dlogp, const float* lse,
                                const int* targets, const int* rows, int row0, int Mc, int V, float temperature,
                                cudaStream_t stream) {
    if (Mc <= 0) return;
    logprob_rows_backward_kernel<<<Mc, LOGPROB_ROW_THREADS, 0, stream>>>(logits_to_dlogits, dlogp, lse, targets,
                                                                          rows, row0, V, temperature);
    cudaCheck(cudaGetLastError());
}

// The chunk's logits [Mc, V] = h_chunk [Mc, C] @ lm_head^T: in column-major terms logits^T [V, Mc] =
// lm_head^T (lm_head [V, C] row-major is [C, V] column-major, transposed) @ h_chunk^T.
static void chunk_logits(const LogprobScratch& s, const __nv_bfloat16* h_chunk, const __nv_bfloat16* lm_head,
                         int Mc, int V, int C, cublasLtHandle_t handle, cudaStream_t stream) {
    lm_head_matmul(handle, true, V, Mc, C, lm_head, C, h_chunk, C, s.logits, V, s.workspace,
                   LOGPROB_WORKSPACE_BYTES, stream);
}

// The chunk's h rows: contiguous in h when all rows are processed, gathered into scratch otherwise.
static const __nv_bfloat16* chunk_h(const LogprobScratch& s, const __nv_bfloat16* h, const int* rows, int i0, int Mc,
                                    int C, cudaStream_t stream) {
    if (!rows) return h + (size_t)i0 * C;
    copy_rows_kernel<<<Mc, 256, 0, stream>>>(s.h_chunk, h, rows + i0, C, true);
    cudaCheck(cudaGetLastError());
    return s.h_chunk;
}

void logprob_forward_cuda(float* logp, float* lse, const __nv_bfloat16* h, const __nv_bfloat16* lm_head,
                          const int* targets, const int* rows, int M, int V, int C, float temperature, int chunk_rows,
                          void* scratch, cublasLtHandle_t handle, cudaStream_t stream) {
    LogprobScratch s = logprob_scratch(scratch, chunk_rows, V, C);
    for (int i0 = 0; i0 < M; i0 += chunk_rows) {
        const int Mc = std::min(chunk_rows, M - i0);
        chunk_logits(s, chunk_h(s, h, rows, i0, Mc, C, stream), lm_head, Mc, V, C, handle, stream);
        logprob_rows_forward_cuda(logp, lse, s.logits, targets, rows ? rows + i0 : nullptr, i0, Mc, V, temperature,
                                  stream);
    }
}

void logprob_backward_cuda(__nv_bfloat16* dh, const float* dlogp, const float* lse, const __nv_bfloat16* h,
                           const __nv_bfloat16* lm_head, const int* targets, const int* rows, int M, int N, int V,
                           int C, float temperature, int chunk_rows, void* scratch, cublasLtHandle_t handle,
                           cudaStream_t stream) {
    LogprobScratch s = logprob_scratch(scratch, chunk_rows, V, C);
    if (rows) cudaCheck(cudaMemsetAsync(dh, 0, (size_t)N * C * sizeof(__nv_bfloat16), stream));
    for (int i0 = 0; i0 < M; i0 += chunk_rows) {
        const int Mc = std::min(chunk_rows, M - i0);
        chunk_logits(s, chunk_h(s, h, rows, i0, Mc, C, stream), lm_head, Mc, V, C, handle, stream);
        logprob_rows_backward_cuda(s.logits, dlogp, lse, targets, rows ? rows + i0 : nullptr, i0, Mc, V,
                                   temperature, stream);
        // dh_chunk [Mc, C] = dlogits [Mc, V] @ lm_head [V, C]: column-major dh^T [C, Mc] = lm_head^T [C, V]
        // (lm_head row-major read as column-major, untransposed) @ dlogits^T [V, Mc]
        __nv_bfloat16* dh_chunk = rows ? s.dh_chunk : dh + (size_t)i0 * C;
        lm_head_matmul(handle, false, C, Mc, V, lm_head, C, s.logits, V, dh_chunk, C, s.workspace,
                       LOGPROB_WORKSPACE_BYTES, stream);
        if (rows) {
            copy_rows_kernel<<<Mc, 256, 0, stream>>>(dh, s.dh_chunk, rows + i0, C, false);
            cudaCheck(cudaGetLastError());
        }
    }
}
