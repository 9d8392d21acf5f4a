// decode_attention.cuh: launchers of decode-time grouped-query attention: one new query token per sequence against that sequence's bf16 KV cache, split over the cache length (flash-decoding) when there are too few sequences to fill the GPU.
#pragma once
#include <cstddef>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

// q, out [M, NH*HD] bf16 (q after RoPE at its own position); k_cache, v_cache one layer's cache in
// kv_cache.cuh's layout [S][KVH][max_T][HD]. Row m reads slot slots[m] (device int[M]; nullptr: slot m) and
// attends positions 0..lens[m]-1 (device int[M], 1 <= lens[m] <= max_len; the new token's key and value
// already appended). Query head h reads KV head h / (NH/KVH); scores scaled by HD^-0.5; softmax and all
// accumulation in fp32, the probabilities kept to within 2^-18 relative (never rounded to bf16: the tensor-core
// kernel carries each as a pair of bf16, hi + lo); out rounded to bf16 once. Deterministic (no atomics; every sum
// in a fixed order). The launch (grid, shared memory) depends on the host arguments only, never on lens, so a CUDA
// graph captured with a fixed max_len replays correctly: blocks past a row's length exit early.
// HD must be 16, 32, 64 or 128 and NH/KVH at most 8 (every Qwen2.5 model: 7B has 7), else GrpoError.
//
// The work is cut into (row, KV head, split) blocks; each block handles up to DECODE_ATT_MAX_CHUNK keys of one
// row and the NH/KVH query heads sharing that KV head, so each cached key and value is read once for all of
// them. With splits > 1 every block writes an unnormalized partial output plus its max and sum to scratch and
// a second kernel combines them (flash-decoding); with 1 split the block writes out directly.
#define DECODE_ATT_MAX_CHUNK 1024

// The number of splits the launcher uses when num_splits = 0: none when M * KVH blocks already give every SM one
// (then the combine kernel is not launched), else enough for about two blocks per SM; never a split shorter than
// 64 keys nor a chunk longer than DECODE_ATT_MAX_CHUNK. max_len is a host-side upper bound of lens (the longest
// prompt + the steps decoded so far).
int decode_attention_auto_splits(int M, int KVH, int max_len);

// Bytes of scratch for a given split count (0 when splits = 1): fp32 partial outputs [M, NH, splits, HD] and
// their (max, sum) [M, NH, splits, 2]. Size it once for the run with decode_attention_auto_splits(M, KVH, max_T)
// (the auto choice never grows past it for shorter lengths).
size_t decode_attention_scratch_bytes(int M, int NH, int HD, int splits);

// num_splits = 0 picks decode_attention_auto_splits; otherwise it is used as given (>= 1, and
// ceil(max_len / num_splits) <= DECODE_ATT_MAX_CHUNK). scratch may be nullptr when the split count is 1.
void decode_attention_forward(__nv_bfloat16* out, const __nv_bfloat16* q, const __nv_bfloat16* k_cache,
                              const __nv_bfloat16* v_cache, const int* slots, const int* lens, int M, int NH,
                              int KVH, int HD, int max_T, int max_len, int num_splits, void* scratch,
                              cudaStream_t stream);

// The same with the kernel chosen: version 2 is the tensor-core kernel decode_attention_forward runs (mma.sync
// flash-decoding), version 1 the CUDA-core kernel kept as the fallback (DECODE_ATT_DEFAULT_VERSION in
// decode_attention.cu switches the default). num_splits = 0 picks that version's own automatic split count, which
// for version 1 may differ from decode_attention_auto_splits; for the lab and the tests.
void decode_attention_forward_version(int version, __nv_bfloat16* out, const __nv_bfloat16* q,
                                      const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, const int* slots,
                                      const int* lens, int M, int NH, int KVH, int HD, int max_T, int max_len,
                                      int num_splits, void* scratch, cudaStream_t stream);
