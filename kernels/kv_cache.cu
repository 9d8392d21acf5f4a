// kv_cache.cu: scatters packed prefill keys/values and each decode step's new key/value into the head-major bf16 cache of batched generation.
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/text.h"
#include "kernels/cuda_common.cuh"
#include "kernels/kv_cache.cuh"

typedef __nv_bfloat16 bf16;

// ------------------------------------------------------------------------------------------------
// CUDA kernels

// One thread moves one 16-byte vector (8 dims) of one (row, head) of both k and v. Grid: x over a
// sequence's rows x KVH x HD/8 vectors, y the sequence. Consecutive threads take consecutive vectors of a
// source row, so the reads are coalesced; each write is a full 16 bytes of a cache row.
__global__ void kv_cache_prefill_kernel(bf16* k_cache, bf16* v_cache, const bf16* k, const bf16* v,
                                        const int* cu_seqlens, const int* slots, int KVH, int HD, int max_T) {
    const int b = blockIdx.y;
    const int start = cu_seqlens[b], len = cu_seqlens[b + 1] - start;
    const int vecs_per_row = KVH * HD / 8;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = i / vecs_per_row, c = (i % vecs_per_row) * 8;  // c: column in the row [KVH*HD]
    if (t >= len) return;
    const int slot = slots ? slots[b] : b, h = c / HD, d = c % HD;
    const size_t src = (size_t)(start + t) * KVH * HD + c;
    const size_t dst = kv_cache_offset(slot, h, t, KVH, max_T, HD) + d;
    *reinterpret_cast<uint4*>(k_cache + dst) = *reinterpret_cast<const uint4*>(k + src);
    *reinterpret_cast<uint4*>(v_cache + dst) = *reinterpret_cast<const uint4*>(v + src);
}

__global__ void kv_cache_append_kernel(bf16* k_cache, bf16* v_cache, const bf16* k_new, const bf16* v_new,
                                       const int* slots, const int* positions, int M, int KVH, int HD, int max_T) {
    const int vecs_per_row = KVH * HD / 8;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int m = i / vecs_per_row, c = (i % vecs_per_row) * 8;
    if (m >= M) return;
    int slot, t;
    if (!kv_cache_append_target(slots, positions, m, max_T, &slot, &t)) return;
    const size_t src = (size_t)m * KVH * HD + c;
    const size_t dst = kv_cache_offset(slot, c / HD, t, KVH, max_T, HD) + c % HD;
    *reinterpret_cast<uint4*>(k_cache + dst) = *reinterpret_cast<const uint4*>(k_new + src);
    *reinterpret_cast<uint4*>(v_cache + dst) = *reinterpret_cast<const uint4*>(v_new + src);
}

// ------------------------------------------------------------------------------------------------
// kernel launchers

static void check_kv_sizes(const char* who, int KVH, int HD, int max_T) {
    if (KVH < 1 || HD < 8 || HD % 8 != 0 || max_T < 1)
        throw GrpoError(std::string(who) + ": need KVH >= 1, HD a multiple of 8 and max_T >= 1 (rows move as 16-byte "
                        "vectors), got KVH " + std::to_string(KVH) + ", HD " + std::to_string(HD) + ", max_T " +
                        std::to_string(max_T));
}

void kv_cache_write_prefill(bf16* k_cache, bf16* v_cache, const bf16* k, const bf16* v, const int* cu_seqlens,
                            const int* slots, int B, int T, int KVH, int HD, int max_T, cudaStream_t stream) {
    check_kv_sizes("kv_cache_write_prefill", KVH, HD, max_T);
    if (B < 0 || T < 0 || T > max_T)
        throw GrpoError("kv_cache_write_prefill: the longest prompt T = " + std::to_string(T) +
                        " does not fit the cache's max_T = " + std::to_string(max_T) +
                        "; size the cache for prompt + completion length");
    if (B == 0 || T == 0) return;
    const int threads = 256;
    const long long vecs = (long long)T * KVH * HD / 8;
    dim3 grid((unsigned)((vecs + threads - 1) / threads), B);
    kv_cache_prefill_kernel<<<grid, threads, 0, stream>>>(k_cache, v_cache, k, v, cu_seqlens, slots, KVH, HD, max_T);
    cudaCheck(cudaGetLastError());
}

void kv_cache_append(bf16* k_cache, bf16* v_cache, const bf16* k_new, const bf16* v_new, const int* slots,
                     const int* positions, int M, int KVH, int HD, int max_T, cudaStream_t stream) {
    check_kv_sizes("kv_cache_append", KVH, HD, max_T);
    if (M <= 0) return;
    const int threads = 256;
    const long long vecs = (long long)M * KVH * HD / 8;
    kv_cache_append_kernel<<<(unsigned)((vecs + threads - 1) / threads), threads, 0, stream>>>(
        k_cache, v_cache, k_new, v_new, slots, positions, M, KVH, HD, max_T);
    cudaCheck(cudaGetLastError());
}
