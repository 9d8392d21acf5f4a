// decode_attention.cu: decode-time grouped-query attention over the bf16 KV cache (flash-decoding): one block per (sequence, KV head, split) scores its chunk of keys for the query heads sharing that KV head, softmaxes in fp32 and accumulates p v, on the tensor cores (version 2, the default) or on CUDA cores (version 1); a combine kernel merges the splits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/text.h"
#include "kernels/cuda_common.cuh"
#include "kernels/mma.cuh"
#include "kernels/decode_attention.cuh"

typedef __nv_bfloat16 bf16;

// ------------------------------------------------------------------------------------------------
// CUDA kernels

#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)
#define DEC_MAX_GROUP 8  // query heads per KV head held in registers
#define DEC_LOG2E 1.4426950408889634f
// The lab (dev/cuda/decode_attention.cu) compiles this file a second time with DEC_DROP_KEYS 1, a deliberately
// broken kernel that ignores each row's newest key (the classic off-by-one of a decode step), to show its
// validation catches it.
#ifndef DEC_DROP_KEYS
#define DEC_DROP_KEYS 0
#endif

// 8 bf16 of a 16-byte vector as floats (a bf16 is the top half of an fp32, so this is exact).
__device__ inline void unpack8(float f[8], uint4 u) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
    #pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

// ---- version 1: CUDA cores (the fallback) ---------------------------------------------------------------------
//
// Block (split, kv head, row m), 128 threads, G = NH/KVH query heads. Three phases over the chunk's n keys:
//   1. scores: thread j takes whole keys (one key row of HD*2 bytes from the cache) and dots it with all G
//      queries from shared memory (a broadcast read), so each key is read once for the whole group and no
//      cross-lane reduction is needed;
//   2. softmax: warp w takes heads w, w+4: max, p = exp2(s - max) in place, sum (fp32, log2 domain: q was
//      pre-scaled by HD^-0.5 * log2 e so exp2 is one instruction);
//   3. p v: thread (key lane, 8-dim column) streams value rows and accumulates the G outputs of its 8 dims,
//      then the key lanes are summed (shuffles within a warp, shared memory across warps).
// Shared: q [G][HD], scores [G][chunk], the cross-warp sums [DEC_WARPS][G][HD], stats [G][2] (all fp32).
template <int HD>
__global__ void __launch_bounds__(DEC_THREADS)
    decode_attention_kernel(bf16* out, float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                            const bf16* v_cache, const int* slots, const int* lens, int NH, int KVH, int max_T,
                            int chunk, float scale_log2) {
    constexpr int VECS = HD / 8;                 // 16-byte vectors per key row
    constexpr int KEY_LANES = DEC_THREADS / VECS;  // keys in flight per step of phase 3
    extern __shared__ uint4 dec_smem_raw[];  // uint4: 16-byte aligned for the float4 reads of q
    float* dec_smem = reinterpret_cast<float*>(dec_smem_raw);
    const int G = NH / KVH;
    float* q_s = dec_smem;               // [G][HD]
    float* s_s = q_s + G * HD;           // [G][chunk]
    float* red_s = s_s + G * chunk;      // [DEC_WARPS][G][HD]
    float* stat_s = red_s + DEC_WARPS * G * HD;  // [G][2]: max, sum

    const int split = blockIdx.x, kvh = blockIdx.y, m = blockIdx.z, splits = gridDim.x;
    const int len = lens[m] - DEC_DROP_KEYS, slot = slots ? slots[m] : m;
    const int k0 = split * chunk, n = min(len, k0 + chunk) - k0;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const size_t head_base = ((size_t)slot * KVH + kvh) * max_T * HD;  // this (slot, kv head)'s [max_T][HD]
    const bf16* k_head = k_cache + head_base + (size_t)k0 * HD;
    const bf16* v_head = v_cache + head_base + (size_t)k0 * HD;

    if (n <= 0 && splits == 1) {  // lens[m] < 1 breaks the contract; write zeros rather than garbage
        for (int i = tid; i < G * HD; i += DEC_THREADS) out[(size_t)m * NH * HD + (size_t)kvh * G * HD + i] = __float2bfloat16_rn(0.0f);
        return;
    }
    if (n <= 0) {  // a split past this row's length: an empty partial the combine step ignores
        for (int i = tid; i < G * HD; i += DEC_THREADS) {
            int g = i / HD, d = i % HD;
            part_o[(((size_t)m * NH + kvh * G + g) * splits + split) * HD + d] = 0.0f;
        }
        for (int g = tid; g < G; g += DEC_THREADS) {
            size_t idx = ((size_t)m * NH + kvh * G + g) * splits + split;
            part_ml[2 * idx] = -INFINITY;
            part_ml[2 * idx + 1] = 0.0f;
        }
        return;
    }

    for (int i = tid; i < G * HD; i += DEC_THREADS)
        q_s[i] = __bfloat162float(q[(size_t)m * NH * HD + (size_t)kvh * G * HD + i]) * scale_log2;
    __syncthreads();

    // phase 1: scores
    for (int j = tid; j < n; j += DEC_THREADS) {
        uint4 kv[VECS];
        const uint4* krow = reinterpret_cast<const uint4*>(k_head + (size_t)j * HD);
        #pragma unroll
        for (int c = 0; c < VECS; c++) kv[c] = __ldg(krow + c);  // all loads in flight before any math
        float s[DEC_MAX_GROUP];
        #pragma unroll
        for (int g = 0; g < DEC_MAX_GROUP; g++) s[g] = 0.0f;
        #pragma unroll
        for (int c = 0; c < VECS; c++) {
            float kf[8];
            unpack8(kf, kv[c]);
            #pragma unroll
            for (int g = 0; g < DEC_MAX_GROUP; g++) {
                if (g < G) {
                    const float4* qg = reinterpret_cast<const float4*>(q_s + g * HD + c * 8);
                    float4 a = qg[0], b = qg[1];
                    s[g] += a.x * kf[0] + a.y * kf[1] + a.z * kf[2] + a.w * kf[3] + b.x * kf[4] + b.y * kf[5] +
                            b.z * kf[6] + b.w * kf[7];
                }
            }
        }
        #pragma unroll
        for (int g = 0; g < DEC_MAX_GROUP; g++)
            if (g < G) s_s[g * chunk + j] = s[g];
    }
    __syncthreads();

    // phase 2: softmax statistics per head, probabilities in place
    for (int g = warp; g < G; g += DEC_WARPS) {
        float* sg = s_s + g * chunk;
        float mx = -INFINITY;
        for (int j = lane; j < n; j += 32) mx = fmaxf(mx, sg[j]);
        #pragma unroll
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        float sum = 0.0f;
        for (int j = lane; j < n; j += 32) {
            float p = exp2f(sg[j] - mx);
            sg[j] = p;
            sum += p;
        }
        #pragma unroll
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        if (lane == 0) {
            stat_s[2 * g] = mx;
            stat_s[2 * g + 1] = sum;
        }
    }
    __syncthreads();

    // phase 3: acc[g][e] = sum_j p[g][j] v[j][col*8 + e] over this thread's keys
    const int col = tid % VECS, key_lane = tid / VECS;
    float acc[DEC_MAX_GROUP][8];
    #pragma unroll
    for (int g = 0; g < DEC_MAX_GROUP; g++)
        #pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = 0.0f;
    constexpr int UNROLL = 4;  // value rows loaded together, for more bytes in flight per thread
    for (int j0 = key_lane; j0 < n; j0 += KEY_LANES * UNROLL) {
        uint4 vv[UNROLL];
        #pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int j = j0 + u * KEY_LANES;
            vv[u] = j < n ? __ldg(reinterpret_cast<const uint4*>(v_head + (size_t)j * HD) + col) : make_uint4(0, 0, 0, 0);
        }
        #pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int j = j0 + u * KEY_LANES;
            if (j >= n) break;
            float vf[8];
            unpack8(vf, vv[u]);
            #pragma unroll
            for (int g = 0; g < DEC_MAX_GROUP; g++) {
                if (g < G) {
                    float p = s_s[g * chunk + j];
                    #pragma unroll
                    for (int e = 0; e < 8; e++) acc[g][e] += p * vf[e];
                }
            }
        }
    }
    // sum the key lanes of one warp (lanes VECS apart hold the same column), then across warps
    #pragma unroll
    for (int off = VECS; off < 32; off <<= 1)
        #pragma unroll
        for (int g = 0; g < DEC_MAX_GROUP; g++)
            #pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], off);
    if (lane < VECS || VECS >= 32) {
        // lanes 0..VECS-1 of each warp hold the warp's sums (VECS <= 16 here: HD <= 128)
        #pragma unroll
        for (int g = 0; g < DEC_MAX_GROUP; g++)
            if (g < G)
                #pragma unroll
                for (int e = 0; e < 8; e++) red_s[(warp * G + g) * HD + col * 8 + e] = acc[g][e];
    }
    __syncthreads();
    for (int i = tid; i < G * HD; i += DEC_THREADS) {
        const int g = i / HD, d = i % HD, h = kvh * G + g;
        float o = 0.0f;
        #pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) o += red_s[w * G * HD + i];
        if (splits == 1) {
            out[(size_t)m * NH * HD + (size_t)h * HD + d] = __float2bfloat16_rn(o / stat_s[2 * g + 1]);
        } else {
            const size_t idx = ((size_t)m * NH + h) * splits + split;
            part_o[idx * HD + d] = o;
            if (d == 0) {
                part_ml[2 * idx] = stat_s[2 * g];
                part_ml[2 * idx + 1] = stat_s[2 * g + 1];
            }
        }
    }
}

// ---- version 2: flash-decoding on the tensor cores ---------------------------------------------------------------
//
// Block (split, kv head, row m), DEC2_WARPS warps. The chunk's keys are cut into tiles of 16; warp w takes tiles
// w, w + DEC2_WARPS, ... (so the block's warps read neighbouring memory at the same time) and keeps its own online
// softmax; the warps are merged through shared memory at the end, in warp order (deterministic).
//
// Per tile, with mma.sync m16n8k16 (bf16 in, fp32 accumulate):
//   S = Q K^T: A = the G <= 8 query heads in rows 0..7 (rows 8..15 zero), B = 8 keys per n-tile, HD as the k
//      dimension. A dot product does not care about the order of its terms, so thread (g, c) reads 16 contiguous
//      bytes of its key row (and the same columns of its q row) and uses them for two k-steps: logical k (2c, 2c+1)
//      and (2c+8, 2c+9) of k-step 2l + i are physical columns 32l + 8c + 4i + (0, 1) and (2, 3).
//   O += P V: A = P of the 16 keys, with rows 0..7 the probabilities rounded to bf16 (hi) and rows 8..15 what that
//      rounding lost (lo = bf16(p - hi)), so the otherwise idle half of the tile carries p to ~16 bits: out then
//      matches fp32 probabilities to 2^-18 relative, like version 1, instead of HF's bf16 rounding of p (the
//      prefill kernel's), at no extra mma. The two halves are added when the warp finishes (rows g and g + 8 of C
//      are in the same thread). B = V: thread (g, c) reads key rows 2c, 2c+1, 2c+8, 2c+9 at 16 contiguous bytes
//      (columns slab*64 + 8g .. +7) and pairs them with byte permutes, so logical column n of n-tile (slab, j) is
//      physical column slab*64 + 8n + j and each thread ends up holding 16 contiguous output columns per slab.
// K and V tiles stream into shared memory with cp.async, DEC2_STAGES tiles per warp in flight, each warp waiting
// only on its own copies (no block barrier in the loop). Rows are XOR-swizzled in 16-byte units so that the
// fragment reads above hit 32 different banks per quarter warp (HD 64 and 128; smaller heads take the conflicts).
#define DEC2_WARPS 4
#define DEC2_THREADS (DEC2_WARPS * 32)
#define DEC2_KEYS 16   // keys per warp tile: the k of one P V mma
#define DEC2_STAGES 3  // tiles per warp in shared memory: two in flight while one is computed
#define DEC2_ROWS 8    // query heads per block held in the mma's rows (DEC_MAX_GROUP)

// Shared bytes of version 2: DEC2_STAGES K + V tiles per warp; the final merge reuses them.
template <int HD>
constexpr size_t dec2_smem_bytes() {
    return (size_t)DEC2_WARPS * DEC2_STAGES * 2 * DEC2_KEYS * HD * sizeof(bf16);
}

__device__ inline uint32_t dec_pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) is the lower half
    return *reinterpret_cast<uint32_t*>(&v);
}

// WORDS 32-bit words (4, 2 or 1: one 16-, 8- or 4-byte load) from p, aligned to their size.
template <int WORDS>
__device__ inline void dec_load_words(uint32_t* w, const bf16* p) {
    if constexpr (WORDS == 4) {
        uint4 u = *reinterpret_cast<const uint4*>(p);
        w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
    } else if constexpr (WORDS == 2) {
        uint2 u = *reinterpret_cast<const uint2*>(p);
        w[0] = u.x, w[1] = u.y;
    } else {
        w[0] = *reinterpret_cast<const uint32_t*>(p);
    }
}

// cp.async of 16 bytes, or 16 zero bytes when !valid (keys past the row's length: their rows in the cache may
// hold anything, even NaN, and 0 * NaN would poison the sum).
__device__ inline void dec_cp_async16(void* smem, const void* global, bool valid) {
    const uint32_t dst = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ inline void dec_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int PENDING>
__device__ inline void dec_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory"); }

// Element offset of (row, col) in a [DEC2_KEYS][HD] tile, 16-byte unit swizzled. K: thread (g, c) reads row g at
// unit 4l + c, a quarter warp two neighbouring rows: odd rows flip unit bit 2. V: a quarter warp reads rows 2c + r
// (c = 0..3) at units 2q, 2q+1: row pair c flips unit bits 1-2 by c. Both need 8 units per row (HD >= 64).
template <int HD>
__device__ inline int dec2_k_at(int row, int col) {
    const int unit = HD >= 64 ? (col >> 3) ^ ((row & 1) << 2) : (col >> 3);
    return row * HD + unit * 8 + (col & 7);
}
template <int HD>
__device__ inline int dec2_v_at(int row, int col) {
    const int unit = HD >= 64 ? (col >> 3) ^ (((row >> 1) & 3) << 1) : (col >> 3);
    return row * HD + unit * 8 + (col & 7);
}

template <int HD>
__global__ void __launch_bounds__(DEC2_THREADS)
    decode_attention_tc_kernel(bf16* out, float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                               const bf16* v_cache, const int* slots, const int* lens, int NH, int KVH, int max_T,
                               int chunk, float scale_log2) {
    grid_launch_dependents();  // the o projection launched next may start loading its weights now
    constexpr int KV_VEC = HD >= 32 ? 8 : 4;        // bf16 per thread and read of a K (or q) row
    constexpr int K_READS = HD / (4 * KV_VEC);      // reads per K row and thread
    constexpr int K_WORDS = HD / 8;                 // words per K row and thread: 2 per k-step
    constexpr int VW = HD >= 64 ? 8 : HD / 8;       // V columns per thread and slab
    constexpr int SLABS = HD / (8 * VW);            // 8 threads x VW columns per slab
    constexpr int NT = HD / 8;                      // n-tiles of the output: SLABS * VW
    constexpr int UNITS = HD / 8;                   // 16-byte units per K / V row
    constexpr int TILE = DEC2_KEYS * HD;            // elements of one K (or V) tile
    extern __shared__ uint4 dec2_smem_raw[];
    bf16* smem = reinterpret_cast<bf16*>(dec2_smem_raw);

    const int G = NH / KVH;
    const int split = blockIdx.x, kvh = blockIdx.y, m = blockIdx.z, splits = gridDim.x;
    const int len = lens[m] - DEC_DROP_KEYS, slot = slots ? slots[m] : m;
    const int k0 = split * chunk, n = min(len, k0 + chunk) - k0;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;

    if (n <= 0 && splits == 1) {  // lens[m] < 1 breaks the contract; write zeros rather than garbage
        for (int i = tid; i < G * HD; i += DEC2_THREADS) out[(size_t)m * NH * HD + (size_t)kvh * G * HD + i] = __float2bfloat16_rn(0.0f);
        return;
    }
    if (n <= 0) {  // a split past this row's length: an empty partial the combine step ignores
        for (int i = tid; i < G * HD; i += DEC2_THREADS) {
            const int gi = i / HD, d = i % HD;
            part_o[(((size_t)m * NH + kvh * G + gi) * splits + split) * HD + d] = 0.0f;
        }
        for (int gi = tid; gi < G; gi += DEC2_THREADS) {
            const size_t idx = ((size_t)m * NH + kvh * G + gi) * splits + split;
            part_ml[2 * idx] = -INFINITY;
            part_ml[2 * idx + 1] = 0.0f;
        }
        return;
    }

    const size_t head_base = ((size_t)slot * KVH + kvh) * max_T * HD;  // this (slot, kv head)'s [max_T][HD]
    const bf16* k_chunk = k_cache + head_base + (size_t)k0 * HD;
    const bf16* v_chunk = v_cache + head_base + (size_t)k0 * HD;
    const int tiles = (n + DEC2_KEYS - 1) / DEC2_KEYS;
    const int my_tiles = warp < tiles ? (tiles - warp + DEC2_WARPS - 1) / DEC2_WARPS : 0;
    bf16* warp_smem = smem + (size_t)warp * DEC2_STAGES * 2 * TILE;

    // Tile i of this warp (keys (warp + i * DEC2_WARPS) * 16 .. + 15 of the chunk) into stage i % DEC2_STAGES.
    // Always one commit, even for no copy, so that the group count below stays the tile count.
    auto issue = [&](int i) {
        if (i < my_tiles) {
            const int key0 = (warp + i * DEC2_WARPS) * DEC2_KEYS;
            bf16* ks = warp_smem + (i % DEC2_STAGES) * 2 * TILE;
            bf16* vs = ks + TILE;
            for (int u = lane; u < DEC2_KEYS * UNITS; u += 32) {
                const int row = u / UNITS, col = (u % UNITS) * 8;
                const bool valid = key0 + row < n;
                const size_t src = (size_t)(valid ? key0 + row : 0) * HD + col;
                dec_cp_async16(ks + dec2_k_at<HD>(row, col), k_chunk + src, valid);
                dec_cp_async16(vs + dec2_v_at<HD>(row, col), v_chunk + src, valid);
            }
        }
        dec_cp_async_commit();
    };
    #pragma unroll
    for (int i = 0; i < DEC2_STAGES - 1; i++) issue(i);

    // q of head g (rows g >= G stay zero) as the A operand, in the permuted k order described above; read while
    // the first tiles are on their way.
    uint32_t qa[K_WORDS];
    {
        const bf16* q_row = q + (size_t)m * NH * HD + (size_t)(kvh * G + g) * HD;
        #pragma unroll
        for (int r = 0; r < K_READS; r++) {
            if (g < G) {
                dec_load_words<KV_VEC / 2>(qa + r * (KV_VEC / 2), q_row + r * 4 * KV_VEC + c * KV_VEC);
            } else {
                #pragma unroll
                for (int w = 0; w < KV_VEC / 2; w++) qa[r * (KV_VEC / 2) + w] = 0u;
            }
        }
    }

    float o[NT][4];  // rows g: sum p_hi v, rows g + 8: sum p_lo v, of head g
    #pragma unroll
    for (int nt = 0; nt < NT; nt++)
        #pragma unroll
        for (int e = 0; e < 4; e++) o[nt][e] = 0.0f;
    float row_max = -INFINITY;  // of head g's scaled scores so far, log2 domain
    float row_sum = 0.0f;       // this thread's share of sum exp2(s - row_max)

    for (int i = 0; i < my_tiles; i++) {
        issue(i + DEC2_STAGES - 1);                // into the stage tile i - 1 used (done: __syncwarp below)
        dec_cp_async_wait<DEC2_STAGES - 1>();      // this lane's copies of tile i have landed
        __syncwarp();                              // and every other lane's
        const bf16* ks = warp_smem + (i % DEC2_STAGES) * 2 * TILE;
        const bf16* vs = ks + TILE;
        const int key0 = (warp + i * DEC2_WARPS) * DEC2_KEYS;

        // s = q k^T: heads x 16 keys, two n-tiles of 8 keys (key 8j + g read by this thread)
        float s[2][4];
        #pragma unroll
        for (int j = 0; j < 2; j++) {
            uint32_t kb[K_WORDS];
            #pragma unroll
            for (int r = 0; r < K_READS; r++)
                dec_load_words<KV_VEC / 2>(kb + r * (KV_VEC / 2), ks + dec2_k_at<HD>(8 * j + g, r * 4 * KV_VEC + c * KV_VEC));
            #pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = 0.0f;
            #pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                const uint32_t a[4] = {qa[2 * kk], 0u, qa[2 * kk + 1], 0u};
                const uint32_t b[2] = {kb[2 * kk], kb[2 * kk + 1]};
                mma_bf16_m16n8k16(s[j], a, b);
            }
        }
        // Scale into the log2 domain (exp2 is one instruction); keys past the chunk's end score -inf. Only
        // s[j][0..1] (row g) are heads; s[j][2..3] are the zero rows and are ignored.
        #pragma unroll
        for (int j = 0; j < 2; j++)
            #pragma unroll
            for (int e = 0; e < 2; e++) s[j][e] = key0 + 8 * j + 2 * c + e < n ? s[j][e] * scale_log2 : -INFINITY;

        // Online softmax. The tile's first key is always valid, so the quad's max is finite.
        float tile_max = fmaxf(row_max, fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1])));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));  // the quad holds one head
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        const float correction = exp2f(row_max - tile_max);  // exp2(-inf) = 0 on the first tile
        row_max = tile_max;
        row_sum *= correction;
        #pragma unroll
        for (int nt = 0; nt < NT; nt++)
            #pragma unroll
            for (int e = 0; e < 4; e++) o[nt][e] *= correction;
        float p[2][2];
        #pragma unroll
        for (int j = 0; j < 2; j++)
            #pragma unroll
            for (int e = 0; e < 2; e++) {
                p[j][e] = exp2f(s[j][e] - tile_max);
                row_sum += p[j][e];
            }
        // P as hi (rows 0..7) + lo (rows 8..15): keys 2c, 2c+1 from n-tile 0, keys 2c+8, 2c+9 from n-tile 1
        uint32_t pa[4];
        {
            float hi[2][2], lo[2][2];
            #pragma unroll
            for (int j = 0; j < 2; j++)
                #pragma unroll
                for (int e = 0; e < 2; e++) {
                    hi[j][e] = __bfloat162float(__float2bfloat16_rn(p[j][e]));
                    lo[j][e] = p[j][e] - hi[j][e];  // exact in fp32
                }
            pa[0] = dec_pack_bf16(hi[0][0], hi[0][1]);
            pa[1] = dec_pack_bf16(lo[0][0], lo[0][1]);
            pa[2] = dec_pack_bf16(hi[1][0], hi[1][1]);
            pa[3] = dec_pack_bf16(lo[1][0], lo[1][1]);
        }
        // o += p v: V rows 2c, 2c+1 (b[0]) and 2c+8, 2c+9 (b[1]), columns slab*8*VW + g*VW + j
        #pragma unroll
        for (int slab = 0; slab < SLABS; slab++) {
            const int col = slab * 8 * VW + g * VW;
            uint32_t v0[VW / 2], v1[VW / 2], v8[VW / 2], v9[VW / 2];
            dec_load_words<VW / 2>(v0, vs + dec2_v_at<HD>(2 * c, col));
            dec_load_words<VW / 2>(v1, vs + dec2_v_at<HD>(2 * c + 1, col));
            dec_load_words<VW / 2>(v8, vs + dec2_v_at<HD>(2 * c + 8, col));
            dec_load_words<VW / 2>(v9, vs + dec2_v_at<HD>(2 * c + 9, col));
            #pragma unroll
            for (int j = 0; j < VW; j++) {
                const uint32_t sel = (j & 1) ? 0x7632u : 0x5410u;  // the high or the low halves of two words
                const uint32_t b[2] = {__byte_perm(v0[j / 2], v1[j / 2], sel), __byte_perm(v8[j / 2], v9[j / 2], sel)};
                mma_bf16_m16n8k16(o[slab * VW + j], pa, b);
            }
        }
        __syncwarp();  // every lane is done with this stage before it is refilled
    }
    dec_cp_async_wait<0>();  // only empty groups can remain; nothing may land after the merge reuses the buffers

    // Merge the warps: each writes its max, sum and unnormalized output of heads 0..7 to shared memory.
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
    __syncthreads();  // every warp is done with its stages
    float* red_o = reinterpret_cast<float*>(smem);                // [DEC2_WARPS][DEC2_ROWS][HD]
    float* red_m = red_o + DEC2_WARPS * DEC2_ROWS * HD;           // [DEC2_WARPS][DEC2_ROWS]
    float* red_l = red_m + DEC2_WARPS * DEC2_ROWS;                // [DEC2_WARPS][DEC2_ROWS]
    {
        float* my_o = red_o + (warp * DEC2_ROWS + g) * HD;
        #pragma unroll
        for (int slab = 0; slab < SLABS; slab++)
            #pragma unroll
            for (int j = 0; j < VW; j++) {
                const int nt = slab * VW + j, col = slab * 8 * VW + 2 * c * VW + j;
                my_o[col] = o[nt][0] + o[nt][2];       // logical column 2c: hi + lo
                my_o[col + VW] = o[nt][1] + o[nt][3];  // logical column 2c + 1
            }
        if (c == 0) {
            red_m[warp * DEC2_ROWS + g] = row_max;  // -inf, sum 0 and o 0 for a warp without tiles
            red_l[warp * DEC2_ROWS + g] = row_sum;
        }
    }
    __syncthreads();
    for (int i = tid; i < G * HD; i += DEC2_THREADS) {
        const int gi = i / HD, d = i % HD, h = kvh * G + gi;
        float mx = -INFINITY;
        #pragma unroll
        for (int w = 0; w < DEC2_WARPS; w++) mx = fmaxf(mx, red_m[w * DEC2_ROWS + gi]);  // finite: warp 0 has a key
        float sum = 0.0f, acc = 0.0f;
        #pragma unroll
        for (int w = 0; w < DEC2_WARPS; w++) {
            const float scale = exp2f(red_m[w * DEC2_ROWS + gi] - mx);  // 0 for a warp without keys
            sum += red_l[w * DEC2_ROWS + gi] * scale;
            acc += red_o[(w * DEC2_ROWS + gi) * HD + d] * scale;
        }
        if (splits == 1) {
            out[(size_t)m * NH * HD + (size_t)h * HD + d] = __float2bfloat16_rn(acc / sum);
        } else {
            const size_t idx = ((size_t)m * NH + h) * splits + split;
            part_o[idx * HD + d] = acc;
            if (d == 0) {
                part_ml[2 * idx] = mx;
                part_ml[2 * idx + 1] = sum;
            }
        }
    }
}

// Merges the splits of one (row, head): each partial is rescaled from its own max to the common one.
// Block (row * NH + head), HD threads, one output dim each.
__global__ void decode_attention_combine_kernel(bf16* out, const float* part_o, const float* part_ml, int splits,
                                                int HD) {
    grid_launch_dependents();  // the o projection launched next may start loading its weights now
    const size_t mh = blockIdx.x;
    const float* ml = part_ml + mh * splits * 2;
    float mx = -INFINITY;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, ml[2 * s]);
    const int d = threadIdx.x;
    float sum = 0.0f, o = 0.0f;
    for (int s = 0; s < splits; s++) {
        if (ml[2 * s + 1] == 0.0f) continue;  // an empty split (past the row's length)
        float w = exp2f(ml[2 * s] - mx);
        sum += ml[2 * s + 1] * w;
        o += part_o[(mh * splits + s) * HD + d] * w;
    }
    out[mh * HD + d] = __float2bfloat16_rn(sum > 0.0f ? o / sum : 0.0f);
}

// ------------------------------------------------------------------------------------------------
// kernel launchers

// The kernel decode_attention_forward runs: 2 (tensor cores) or 1 (the CUDA-core kernel, to fall back to).
#define DECODE_ATT_DEFAULT_VERSION 2

// Keys per block for a split count: whole warps of keys for version 1, whole 16-key tiles for version 2 (its warps
// then differ by at most one tile).
static int plan_chunk(int version, int max_len, int splits) {
    const int unit = version == 1 ? 32 : DEC2_KEYS;
    return ((max_len + splits - 1) / splits + unit - 1) / unit * unit;
}

// Version 1: enough splits for ~2 blocks per SM, minus those the chunk rounding leaves past max_len. Version 2:
// none once there is a block per SM (two such blocks fit an SM at once and keep enough bytes in flight, and the
// combine kernel's launch and traffic are saved), else ~2 blocks per SM; a split the rounding leaves empty exits
// at once, and keeping it makes the count never decrease as max_len grows, so scratch sized for the longest length
// covers every shorter one. Both: no split under 64 keys, no chunk over DECODE_ATT_MAX_CHUNK keys.
static int auto_splits_for(int version, int M, int KVH, int max_len) {
    if (M < 1 || KVH < 1 || max_len < 1) return 1;
    const int min_splits = (max_len + DECODE_ATT_MAX_CHUNK - 1) / DECODE_ATT_MAX_CHUNK;
    const int blocks = M * KVH, sms = cuda_sm_count();
    // version 2: measured on the H200 (lab, 7B heads), 24 blocks (M = 6) with one split beat 4..11 splits at
    // 256..768 keys (the combine launch costs more than the idle SMs), so it splits only tiny batches, and no
    // split under 256 keys
    const int want = version != 1 && blocks >= 16 ? 1 : (2 * sms + blocks - 1) / blocks;
    const int most = version != 1 ? (max_len + 255) / 256 : (max_len + 63) / 64;
    const int splits = std::max(min_splits, std::min(want, most));
    if (version != 1) return splits;
    const int chunk = plan_chunk(version, max_len, splits);
    return (max_len + chunk - 1) / chunk;
}

int decode_attention_auto_splits(int M, int KVH, int max_len) {
    return auto_splits_for(DECODE_ATT_DEFAULT_VERSION, M, KVH, max_len);
}

size_t decode_attention_scratch_bytes(int M, int NH, int HD, int splits) {
    if (splits <= 1) return 0;
    return (size_t)M * NH * splits * (HD + 2) * sizeof(float);
}

template <int HD>
static void launch_decode(bf16* out, float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                          const bf16* v_cache, const int* slots, const int* lens, int M, int NH, int KVH, int max_T,
                          int chunk, int splits, cudaStream_t stream) {
    const int G = NH / KVH;
    const size_t smem = ((size_t)G * HD + (size_t)G * chunk + (size_t)DEC_WARPS * G * HD + 2 * G) * sizeof(float);
    static bool opted_in = false;  // above 48 KB a kernel must ask for its shared memory (once per kernel)
    if (!opted_in) {
        const size_t most = ((size_t)DEC_MAX_GROUP * (HD + DECODE_ATT_MAX_CHUNK + DEC_WARPS * HD + 2)) * sizeof(float);
        cudaCheck(cudaFuncSetAttribute(decode_attention_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)most));
        opted_in = true;
    }
    const float scale_log2 = (float)(1.0 / std::sqrt((double)HD)) * DEC_LOG2E;
    dim3 grid(splits, KVH, M);
    decode_attention_kernel<HD><<<grid, DEC_THREADS, smem, stream>>>(out, part_o, part_ml, q, k_cache, v_cache, slots,
                                                                     lens, NH, KVH, max_T, chunk, scale_log2);
    cudaCheck(cudaGetLastError());
}

template <int HD>
static void launch_decode_tc(bf16* out, float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                             const bf16* v_cache, const int* slots, const int* lens, int M, int NH, int KVH, int max_T,
                             int chunk, int splits, cudaStream_t stream) {
    constexpr size_t smem = dec2_smem_bytes<HD>();
    static_assert((size_t)DEC2_WARPS * DEC2_ROWS * (HD + 2) * sizeof(float) <= smem, "the merge reuses the stages");
    static bool opted_in = false;  // above 48 KB a kernel must ask for its shared memory (once per kernel)
    if (!opted_in) {
        cudaCheck(cudaFuncSetAttribute(decode_attention_tc_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)smem));
        opted_in = true;
    }
    const float scale_log2 = (float)(1.0 / std::sqrt((double)HD)) * DEC_LOG2E;
    dim3 grid(splits, KVH, M);
    decode_attention_tc_kernel<HD><<<grid, DEC2_THREADS, smem, stream>>>(out, part_o, part_ml, q, k_cache, v_cache,
                                                                         slots, lens, NH, KVH, max_T, chunk, scale_log2);
    cudaCheck(cudaGetLastError());
}

// Both public launchers in one (static: the lab compiles this file again inside a namespace, where a call to a
// public name would match the header's declaration too).
static void decode_forward(int version, bf16* out, const bf16* q, const bf16* k_cache, const bf16* v_cache,
                           const int* slots, const int* lens, int M, int NH, int KVH, int HD, int max_T, int max_len,
                           int num_splits, void* scratch, cudaStream_t stream) {
    if (version != 1 && version != 2)
        throw GrpoError("decode_attention_forward_version: version = " + std::to_string(version) + " must be 1 or 2");
    if (KVH < 1 || NH % KVH != 0 || NH / KVH > DEC_MAX_GROUP)
        throw GrpoError("decode_attention_forward: NH = " + std::to_string(NH) + " must be a multiple of KVH = " +
                        std::to_string(KVH) + " with at most " + std::to_string(DEC_MAX_GROUP) +
                        " query heads per KV head");
    if (max_len < 1 || max_len > max_T)
        throw GrpoError("decode_attention_forward: max_len = " + std::to_string(max_len) +
                        " must be in [1, max_T = " + std::to_string(max_T) + "] (the longest cached length)");
    if (HD != 16 && HD != 32 && HD != 64 && HD != 128)
        throw GrpoError("decode_attention_forward: HD = " + std::to_string(HD) +
                        " is not supported (16, 32, 64 or 128)");
    if (M <= 0) return;
    const int splits = num_splits > 0 ? num_splits : auto_splits_for(version, M, KVH, max_len);
    const int chunk = plan_chunk(version, max_len, splits);
    if (chunk > DECODE_ATT_MAX_CHUNK)
        throw GrpoError("decode_attention_forward: " + std::to_string(splits) + " splits of " + std::to_string(max_len) +
                        " keys exceed " + std::to_string(DECODE_ATT_MAX_CHUNK) + " keys per block; use more splits "
                        "(or 0 for the automatic choice)");
    if (splits > 1 && !scratch)
        throw GrpoError("decode_attention_forward: " + std::to_string(splits) +
                        " splits need scratch of decode_attention_scratch_bytes bytes");
    float* part_o = splits > 1 ? static_cast<float*>(scratch) : nullptr;
    float* part_ml = splits > 1 ? part_o + (size_t)M * NH * splits * HD : nullptr;
    auto launch = version == 1 ? (HD == 16 ? launch_decode<16> : HD == 32 ? launch_decode<32> : HD == 64 ? launch_decode<64> : launch_decode<128>)
                               : (HD == 16 ? launch_decode_tc<16> : HD == 32 ? launch_decode_tc<32> : HD == 64 ? launch_decode_tc<64> : launch_decode_tc<128>);
    launch(out, part_o, part_ml, q, k_cache, v_cache, slots, lens, M, NH, KVH, max_T, chunk, splits, stream);
    if (splits > 1) {
        decode_attention_combine_kernel<<<M * NH, HD, 0, stream>>>(out, part_o, part_ml, splits, HD);
        cudaCheck(cudaGetLastError());
    }
}

void decode_attention_forward_version(int version, bf16* out, const bf16* q, const bf16* k_cache, const bf16* v_cache,
                                      const int* slots, const int* lens, int M, int NH, int KVH, int HD, int max_T,
                                      int max_len, int num_splits, void* scratch, cudaStream_t stream) {
    decode_forward(version, out, q, k_cache, v_cache, slots, lens, M, NH, KVH, HD, max_T, max_len, num_splits, scratch,
                   stream);
}

void decode_attention_forward(bf16* out, const bf16* q, const bf16* k_cache, const bf16* v_cache, const int* slots,
                              const int* lens, int M, int NH, int KVH, int HD, int max_T, int max_len, int num_splits,
                              void* scratch, cudaStream_t stream) {
    decode_forward(DECODE_ATT_DEFAULT_VERSION, out, q, k_cache, v_cache, slots, lens, M, NH, KVH, HD, max_T, max_len,
                   num_splits, scratch, stream);
}
