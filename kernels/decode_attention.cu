// decode_attention.cu: decode-time grouped-query attention over the bf16 KV cache: one block per (sequence, KV head, split) scores all keys of its chunk for the query heads sharing that KV head, softmaxes them in fp32 and accumulates p v; a combine kernel merges the splits (flash-decoding).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/text.h"
#include "kernels/cuda_common.cuh"
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

// Merges the splits of one (row, head): each partial is rescaled from its own max to the common one.
// Block (row * NH + head), HD threads, one output dim each.
__global__ void decode_attention_combine_kernel(bf16* out, const float* part_o, const float* part_ml, int splits,
                                                int HD) {
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

static int sm_count() {
    static int count = 0;
    if (count == 0) {
        int dev = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev));
    }
    return count;
}

int decode_attention_auto_splits(int M, int KVH, int max_len) {
    if (M < 1 || KVH < 1 || max_len < 1) return 1;
    const int min_splits = (max_len + DECODE_ATT_MAX_CHUNK - 1) / DECODE_ATT_MAX_CHUNK;
    const int want = (2 * sm_count() + M * KVH - 1) / (M * KVH);  // ~2 blocks per SM
    const int most = (max_len + 63) / 64;                            // splits of at least 64 keys
    int splits = std::max(min_splits, std::min(want, most));
    // round the chunk up to whole warps of keys, then drop splits that would start past max_len
    int chunk = (max_len + splits - 1) / splits;
    chunk = (chunk + 31) / 32 * 32;
    return (max_len + chunk - 1) / chunk;
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

void decode_attention_forward(bf16* out, const bf16* q, const bf16* k_cache, const bf16* v_cache, const int* slots,
                              const int* lens, int M, int NH, int KVH, int HD, int max_T, int max_len, int num_splits,
                              void* scratch, cudaStream_t stream) {
    if (KVH < 1 || NH % KVH != 0 || NH / KVH > DEC_MAX_GROUP)
        throw GrpoError("decode_attention_forward: NH = " + std::to_string(NH) + " must be a multiple of KVH = " +
                        std::to_string(KVH) + " with at most " + std::to_string(DEC_MAX_GROUP) +
                        " query heads per KV head");
    if (max_len < 1 || max_len > max_T)
        throw GrpoError("decode_attention_forward: max_len = " + std::to_string(max_len) +
                        " must be in [1, max_T = " + std::to_string(max_T) + "] (the longest cached length)");
    if (M <= 0) return;
    const int splits = num_splits > 0 ? num_splits : decode_attention_auto_splits(M, KVH, max_len);
    const int chunk = ((max_len + splits - 1) / splits + 31) / 32 * 32;
    if (chunk > DECODE_ATT_MAX_CHUNK)
        throw GrpoError("decode_attention_forward: " + std::to_string(splits) + " splits of " + std::to_string(max_len) +
                        " keys exceed " + std::to_string(DECODE_ATT_MAX_CHUNK) + " keys per block; use more splits "
                        "(or 0 for the automatic choice)");
    if (splits > 1 && !scratch)
        throw GrpoError("decode_attention_forward: " + std::to_string(splits) +
                        " splits need scratch of decode_attention_scratch_bytes bytes");
    float* part_o = splits > 1 ? static_cast<float*>(scratch) : nullptr;
    float* part_ml = splits > 1 ? part_o + (size_t)M * NH * splits * HD : nullptr;
    switch (HD) {
        case 16: launch_decode<16>(out, part_o, part_ml, q, k_cache, v_cache, slots, lens, M, NH, KVH, max_T, chunk, splits, stream); break;
        case 32: launch_decode<32>(out, part_o, part_ml, q, k_cache, v_cache, slots, lens, M, NH, KVH, max_T, chunk, splits, stream); break;
        case 64: launch_decode<64>(out, part_o, part_ml, q, k_cache, v_cache, slots, lens, M, NH, KVH, max_T, chunk, splits, stream); break;
        case 128: launch_decode<128>(out, part_o, part_ml, q, k_cache, v_cache, slots, lens, M, NH, KVH, max_T, chunk, splits, stream); break;
        default:
            throw GrpoError("decode_attention_forward: HD = " + std::to_string(HD) +
                            " is not supported (16, 32, 64 or 128)");
    }
    if (splits > 1) {
        decode_attention_combine_kernel<<<M * NH, HD, 0, stream>>>(out, part_o, part_ml, splits, HD);
        cudaCheck(cudaGetLastError());
    }
}
