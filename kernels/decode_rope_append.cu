// decode_rope_append.cu: a decode step's RoPE of q and k and the append of k and v to the KV cache in one launch instead of three (rope_forward twice, kv_cache_append), with the same bits.
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/text.h"
#include "kernels/cuda_common.cuh"
#include "kernels/decode_rope_append.cuh"
#include "kernels/kv_cache.cuh"
#include "kernels/rope.cuh"

typedef __nv_bfloat16 bf16;

// ------------------------------------------------------------------------------------------------
// CUDA kernels

// One thread per 8 pairs (a 16-byte chunk of each half) of one head of one row, the NH q heads of a row first, then
// its KVH k heads: at 7B (32 heads x 8 chunks) one block of 256 threads is one row. A q thread rotates in place, as
// rope_kernel does; a k thread rotates into the cache and also moves the same two chunks of v, so k and v of a
// row share one bounds check and one address (kv_cache_append_target, kv_cache_offset). The rotation is
// rope_rotate8, rope_kernel's own, hence the same bits.
__global__ void decode_rope_append_kernel(bf16* q, bf16* k_cache, bf16* v_cache, const bf16* k, const bf16* v,
                                          const int* slots, const int* positions, const bf16* cos_table,
                                          const bf16* sin_table, int M, int NH, int KVH, int HD, int max_T) {
    const int H2 = HD / 2, chunks = H2 / 8, H = NH + KVH;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)M * H * chunks) return;
    const size_t head = idx / chunks;  // m * (NH + KVH) + h
    const int i = (int)(idx % chunks) * 8;
    const int m = (int)(head / H), h = (int)(head % H);
    int slot, t;
    // out of range: the cache append writes nothing, and the rotation of q would read a table row that need not exist
    if (!kv_cache_append_target(slots, positions, m, max_T, &slot, &t)) return;
    const size_t table = (size_t)t * H2 + i;
    uint4 y1, y2;
    if (h < NH) {
        bf16* x = q + ((size_t)m * NH + h) * HD + i;
        rope_rotate8(&y1, &y2, *(const uint4*)x, *(const uint4*)(x + H2), cos_table, sin_table, table, false);
        *(uint4*)x = y1;
        *(uint4*)(x + H2) = y2;
        return;
    }
    const int kh = h - NH;
    const size_t src = ((size_t)m * KVH + kh) * HD + i;
    const size_t dst = kv_cache_offset(slot, kh, t, KVH, max_T, HD) + i;
    rope_rotate8(&y1, &y2, *(const uint4*)(k + src), *(const uint4*)(k + src + H2), cos_table, sin_table, table,
                 false);
    *(uint4*)(k_cache + dst) = y1;
    *(uint4*)(k_cache + dst + H2) = y2;
    *(uint4*)(v_cache + dst) = *(const uint4*)(v + src);
    *(uint4*)(v_cache + dst + H2) = *(const uint4*)(v + src + H2);
}

// ------------------------------------------------------------------------------------------------
// kernel launchers

void decode_rope_append(bf16* q, bf16* k_cache, bf16* v_cache, const bf16* k, const bf16* v, const int* slots,
                        const int* positions, const bf16* cos_table, const bf16* sin_table, int M, int NH, int KVH,
                        int HD, int max_T, cudaStream_t stream) {
    if (M < 0 || NH < 1 || KVH < 1 || HD < 16 || HD % 16 != 0 || max_T < 1)
        throw GrpoError("decode_rope_append: need M >= 0, NH >= 1, KVH >= 1, HD a multiple of 16 (16-byte chunks of "
                        "each half) and max_T >= 1, got M " + std::to_string(M) + ", NH " + std::to_string(NH) +
                        ", KVH " + std::to_string(KVH) + ", HD " + std::to_string(HD) + ", max_T " +
                        std::to_string(max_T));
    if (M == 0) return;
    const int block_size = 256;
    const size_t total = (size_t)M * (NH + KVH) * (HD / 16);
    decode_rope_append_kernel<<<(unsigned)((total + block_size - 1) / block_size), block_size, 0, stream>>>(
        q, k_cache, v_cache, k, v, slots, positions, cos_table, sin_table, M, NH, KVH, HD, max_T);
    cudaCheck(cudaGetLastError());
}
