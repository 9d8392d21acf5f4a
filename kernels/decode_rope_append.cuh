// decode_rope_append.cuh: launcher of a decode step's RoPE and KV-cache append in one kernel: q rotated in place, k rotated on its way into the cache, v copied next to it.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

// q [M, NH*HD], k and v [M, KVH*HD]: the new token of each of M decode rows. For row m, at position positions[m]
// of slot slots[m] (device int[M] each; slots nullptr means slot m), this does what
//     rope_forward(q, q, ...NH...); rope_forward(k, k, ...KVH...); kv_cache_append(k_cache, v_cache, k, v, ...)
// do, with the same bits, in one launch: q is rotated in place, k is rotated into the cache at the place
// kv_cache_append writes it (kernels/kv_cache.cuh), and v is copied next to it. k itself is only read (it keeps
// the unrotated values). A row whose position is outside [0, max_T) is left alone entirely: nothing is written for
// it, q included, and its table row is not read; so cos_table and sin_table ([>= max_T, HD/2], rope_tables) need only
// cover the cache. Throws GrpoError on bad sizes; HD a multiple of 16 (16-byte chunks of each half) and 16-byte
// aligned pointers.
void decode_rope_append(__nv_bfloat16* q, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache, const __nv_bfloat16* k,
                        const __nv_bfloat16* v, const int* slots, const int* positions,
                        const __nv_bfloat16* cos_table, const __nv_bfloat16* sin_table, int M, int NH, int KVH,
                        int HD, int max_T, cudaStream_t stream);
