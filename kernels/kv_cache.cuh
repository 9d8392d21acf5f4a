// kv_cache.cuh: launchers that fill the bf16 key/value cache of batched generation: the prefill's packed rows scattered into cache slots, and one new token appended per sequence per decode step; the cache's addressing (host and device) and its rows in the CPU reference's layout.
#pragma once
#include <cstddef>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

// kv_cache_offset serves host code (tests, labs) and every kernel that writes the cache, so it is compiled for
// both when nvcc reads this header.
#ifdef __CUDACC__
#define KV_CACHE_HOST_DEVICE __host__ __device__
#else
#define KV_CACHE_HOST_DEVICE
#endif

// The cache of one layer: k_cache and v_cache, each [S][KVH][max_T][HD] bf16 (S sequence slots). Head-major
// inside a slot so that decode attention, which reads one (slot, KV head) at a time, streams one contiguous
// [len, HD] block per head: no strided gather, and every key row is one run of HD*2 bytes. Keys are stored
// after RoPE (each at its own position), so decoding never rotates a cached key again.
// Element (slot s, head h, position t, dim d) is at ((s*KVH + h)*max_T + t)*HD + d: kv_cache_offset says so.
KV_CACHE_HOST_DEVICE inline size_t kv_cache_offset(int slot, int h, int t, int KVH, int max_T, int HD) {
    return (((size_t)slot * KVH + h) * max_T + t) * HD;
}
inline size_t kv_cache_layer_elems(int S, int KVH, int max_T, int HD) { return (size_t)S * KVH * max_T * HD; }

// A downloaded cache layer [S][KVH][max_T][HD] in the CPU reference's layout [S][max_T][KVH*HD] (CpuKVCache,
// cpu_kv_cache_append), so that tests and labs compare the two element by element.
template <typename T>
std::vector<T> kv_cache_to_rows(const std::vector<T>& cache, int S, int KVH, int max_T, int HD) {
    std::vector<T> rows(cache.size());
    for (int s = 0; s < S; s++)
        for (int h = 0; h < KVH; h++)
            for (int t = 0; t < max_T; t++)
                for (int d = 0; d < HD; d++)
                    rows[((size_t)s * max_T + t) * KVH * HD + h * HD + d] =
                        cache[kv_cache_offset(s, h, t, KVH, max_T, HD) + d];
    return rows;
}

// Prefill: k, v [N, KVH*HD] packed varlen rows (the training forward's layout, k after RoPE) of B sequences,
// sequence b being rows [cu_seqlens[b], cu_seqlens[b+1]) (device int[B+1], FlashAttention's convention);
// its row i goes to position i of slot slots[b] (device int[B]; nullptr means slot b). T is the longest
// length (host: it sizes the grid) and must be <= max_T. Throws GrpoError on bad sizes; HD % 8 == 0 and
// 16-byte aligned pointers (rows move as 16-byte vectors).
void kv_cache_write_prefill(__nv_bfloat16* k_cache, __nv_bfloat16* v_cache, const __nv_bfloat16* k,
                            const __nv_bfloat16* v, const int* cu_seqlens, const int* slots, int B, int T, int KVH,
                            int HD, int max_T, cudaStream_t stream);

// Decode step: k_new, v_new [M, KVH*HD] (k after RoPE at its own position), row m written at position
// positions[m] of slot slots[m] (device int[M] each; slots nullptr means slot m). A position must be < max_T;
// the caller tracks lengths (the new length is positions[m] + 1). A row whose position is outside [0, max_T)
// writes nothing (kv_cache_append_target).
void kv_cache_append(__nv_bfloat16* k_cache, __nv_bfloat16* v_cache, const __nv_bfloat16* k_new,
                     const __nv_bfloat16* v_new, const int* slots, const int* positions, int M, int KVH, int HD,
                     int max_T, cudaStream_t stream);

#ifdef __CUDACC__
// Where decode row m's new key and value go: slot (slots nullptr: slot m) and position t, or false when the
// position is outside [0, max_T). A launcher cannot see device positions, so every kernel that appends (kv_cache.cu,
// decode_rope_append.cu) asks here and never writes out of bounds.
__device__ __forceinline__ bool kv_cache_append_target(const int* slots, const int* positions, int m, int max_T,
                                                       int* slot, int* t) {
    *t = positions[m];
    *slot = slots ? slots[m] : m;
    return *t >= 0 && *t < max_T;
}
#endif
