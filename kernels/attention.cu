// attention.cu: causal grouped-query flash attention on bf16 tensor cores (mma.sync m16n8k16): the forward with an online softmax over key tiles, and the FlashAttention-2 backward that recomputes the probabilities from the saved logsumexp; no T x T matrix is ever stored.
#include <cmath>
#include <cstdint>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/text.h"
#include "kernels/attention.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/mma.cuh"

typedef __nv_bfloat16 bf16;

// ------------------------------------------------------------------------------------------------
// CUDA kernels

// Every kernel runs 4 warps; each warp owns 16 rows of its block's tile (the M of one mma).
#define ATT_WARPS 4
#define ATT_THREADS (ATT_WARPS * 32)
// Query rows per forward / dq block and keys per tile everywhere: 4 warps x 16 rows.
#define ATT_TILE 64
// Queries per step of the dk/dv block: 32, not 64, so that its dk and dv accumulators (2 x 64 floats per
// thread at HD 128) plus the scores and dP tiles still fit in registers without spilling.
#define ATT_DKDV_QTILE 32
// Shared-memory rows are padded by 8 bf16 (16 bytes): row starts then fall 4 banks apart, so the 8 rows
// one fragment load touches hit 8 different bank groups.
#define ATT_PAD 8
// The lab (dev/cuda/attention.cu) compiles this file a second time with ATT_MASK_SHIFT 1, a deliberately
// broken causal mask that lets each query see one key too many, to show its validation catches such a bug.
#ifndef ATT_MASK_SHIFT
#define ATT_MASK_SHIFT 0
#endif
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// Sequence b's first row and length (see attention.cuh: uniform B x T, or FlashAttention's cu_seqlens).
__device__ inline void sequence_span(const int* cu_seqlens, int b, int T, int* start, int* len) {
    if (cu_seqlens) {
        *start = cu_seqlens[b];
        *len = cu_seqlens[b + 1] - cu_seqlens[b];
    } else {
        *start = b * T;
        *len = T;
    }
}

// The tensor-core products use mma_bf16_m16n8k16 (kernels/mma.cuh), whose header spells out the fragment layout.
__device__ inline uint32_t load_pair(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

__device__ inline uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) is the lower half
    return *reinterpret_cast<uint32_t*>(&v);
}

// A fragment: rows r0..r0+15, columns k0..k0+15 of a row-major shared tile X (row stride `stride`).
__device__ inline void load_a_frag(uint32_t a[4], const bf16* X, int stride, int r0, int k0) {
    int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const bf16* p = X + (r0 + g) * stride + k0 + 2 * t;
    a[0] = load_pair(p);
    a[1] = load_pair(p + 8 * stride);
    a[2] = load_pair(p + 8);
    a[3] = load_pair(p + 8 * stride + 8);
}

// B fragment with B[k][n] = Y[n0 + n][k0 + k]: the tile stores B's columns as its rows (K for q k^T, where
// n is the key and k the head dimension), so each register is two neighbours of one row.
__device__ inline void load_b_frag(uint32_t b[2], const bf16* Y, int stride, int n0, int k0) {
    int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const bf16* p = Y + (n0 + g) * stride + k0 + 2 * t;
    b[0] = load_pair(p);
    b[1] = load_pair(p + 8);
}

// B fragment with B[k][n] = X[k0 + k][n0 + n]: the tile stores B's rows as its rows (V for p v, where k is
// the key and n the head dimension). A register's two elements then sit in two rows, which ldmatrix.trans
// gathers: lanes 0-7 give the addresses of rows k0..k0+7 (-> b[0]), lanes 8-15 of rows k0+8..k0+15 (-> b[1]).
__device__ inline void load_b_frag_trans(uint32_t b[2], const bf16* X, int stride, int k0, int n0) {
    int lane = threadIdx.x & 31;
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(X + (k0 + (lane & 15)) * stride + n0);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(b[0]), "=r"(b[1])
                 : "r"(addr));
}

// The A fragment for k-step kk of P @ V, straight from the fp32 accumulators of P's 16x8 tiles 2kk and
// 2kk+1: the C layout of two neighbouring tiles is exactly the A layout of one 16x16 (FlashAttention-2's
// trick, so probabilities never leave registers). Rounding P to bf16 here is the kernel's one rounding of
// the probabilities; the row sums stay fp32.
__device__ inline void acc_to_a_frag(uint32_t a[4], const float lo[4], const float hi[4]) {
    a[0] = pack_bf16(lo[0], lo[1]);
    a[1] = pack_bf16(lo[2], lo[3]);
    a[2] = pack_bf16(hi[0], hi[1]);
    a[3] = pack_bf16(hi[2], hi[3]);
}

// Copies ROWS rows x HD columns of one head into a padded row-major shared tile [ROWS][HD + ATT_PAD]:
// src points at the head's first column in the sequence's row 0, rows `stride` elements apart; tile row r
// is sequence row row0 + r. Rows at or past `len` are zero-filled, so a partial tile computes on zeros,
// never on the next sequence's rows or past the end of the buffer.
template <int ROWS, int HD>
__device__ inline void load_tile(bf16* dst, const bf16* src, size_t stride, int row0, int len) {
    constexpr int CHUNKS = HD / 8;  // 16-byte vectors per row; consecutive threads read one row's vectors
    for (int i = threadIdx.x; i < ROWS * CHUNKS; i += ATT_THREADS) {
        int r = i / CHUNKS, c = (i % CHUNKS) * 8;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (row0 + r < len) val = *reinterpret_cast<const uint4*>(src + (size_t)(row0 + r) * stride + c);
        *reinterpret_cast<uint4*>(dst + r * (HD + ATT_PAD) + c) = val;
    }
}

// Forward. Block (query tile, head h, sequence b); warp w owns query rows m0 + 16w .. m0 + 16w + 15 and
// walks the key tiles 0..query tile (causal) keeping, per row, the running max (log2 domain), the running
// sum of exp and the unnormalized output in registers.
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS)
    attention_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                             const int* cu_seqlens, int T, int NH, int KVH, float scale) {
    constexpr int STRIDE = HD + ATT_PAD;
    extern __shared__ uint4 att_smem[];  // uint4: 16-byte aligned for the vector copies
    bf16* Qs = reinterpret_cast<bf16*>(att_smem);  // [ATT_TILE][STRIDE] this block's queries
    bf16* Ks = Qs + ATT_TILE * STRIDE;              // [ATT_TILE][STRIDE] the current key tile
    bf16* Vs = Ks + ATT_TILE * STRIDE;              // [ATT_TILE][STRIDE] its values

    const int b = blockIdx.z, h = blockIdx.y, kvh = h / (NH / KVH);
    // The last query tiles see the most keys: start them first so the short ones fill the tail.
    const int q_tile = gridDim.x - 1 - blockIdx.x;
    int start, len;
    sequence_span(cu_seqlens, b, T, &start, &len);
    const int m0 = q_tile * ATT_TILE;
    if (m0 >= len) return;
    const size_t q_stride = (size_t)NH * HD, kv_stride = (size_t)KVH * HD;
    const bf16* q_seq = q + (size_t)start * q_stride + h * HD;
    const bf16* k_seq = k + (size_t)start * kv_stride + kvh * HD;
    const bf16* v_seq = v + (size_t)start * kv_stride + kvh * HD;

    const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const int wrow0 = warp * 16;                        // the warp's first row in the tile
    const int row[2] = {m0 + wrow0 + g, m0 + wrow0 + g + 8};  // the two query rows this thread holds
    const float scale_log2 = scale * LOG2E;             // exp(x) = exp2(x log2 e): exp2 is one instruction

    load_tile<ATT_TILE, HD>(Qs, q_seq, q_stride, m0, len);

    float o[HD / 8][4];  // the warp's 16 x HD output, 8 columns per mma tile
    #pragma unroll
    for (int dt = 0; dt < HD / 8; dt++)
        #pragma unroll
        for (int e = 0; e < 4; e++) o[dt][e] = 0.0f;
    float row_max[2] = {-INFINITY, -INFINITY};  // of the scaled scores, log2 domain
    float row_sum[2] = {0.0f, 0.0f};            // this thread's share of sum exp2(s - row_max)

    for (int kt = 0; kt <= q_tile; kt++) {
        const int n0 = kt * ATT_TILE;
        __syncthreads();  // every warp is done with the previous K, V tiles
        load_tile<ATT_TILE, HD>(Ks, k_seq, kv_stride, n0, len);
        load_tile<ATT_TILE, HD>(Vs, v_seq, kv_stride, n0, len);
        __syncthreads();

        // s = q k^T for the warp's 16 rows x 64 keys
        float s[ATT_TILE / 8][4];
        #pragma unroll
        for (int j = 0; j < ATT_TILE / 8; j++)
            #pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t a[4];
            load_a_frag(a, Qs, STRIDE, wrow0, kk * 16);
            #pragma unroll
            for (int j = 0; j < ATT_TILE / 8; j++) {
                uint32_t bf[2];
                load_b_frag(bf, Ks, STRIDE, j * 8, kk * 16);
                mma_bf16_m16n8k16(s[j], a, bf);
            }
        }
        // Scale into the log2 domain; only the diagonal tile has keys after some of its queries.
        #pragma unroll
        for (int j = 0; j < ATT_TILE / 8; j++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = n0 + j * 8 + 2 * t + (e & 1);
                s[j][e] = (kt == q_tile && key > row[e >> 1] + ATT_MASK_SHIFT) ? -INFINITY : s[j][e] * scale_log2;
            }

        // Online softmax: raise the running max, rescale what was summed under the old one.
        #pragma unroll
        for (int r = 0; r < 2; r++) {
            float tile_max = row_max[r];
            #pragma unroll
            for (int j = 0; j < ATT_TILE / 8; j++) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
            // The 4 lanes of a quad (same g) hold the same row.
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 2));
            // A row with every key masked so far keeps max -inf; subtracting 0 instead keeps exp2 at 0, not NaN.
            const float base = tile_max == -INFINITY ? 0.0f : tile_max;
            const float correction = exp2f(row_max[r] - base);  // exp2(-inf) = 0 on the first tile
            row_max[r] = tile_max;
            row_sum[r] *= correction;
            #pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                o[dt][2 * r] *= correction;
                o[dt][2 * r + 1] *= correction;
            }
            #pragma unroll
            for (int j = 0; j < ATT_TILE / 8; j++) {
                s[j][2 * r] = exp2f(s[j][2 * r] - base);
                s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - base);
                row_sum[r] += s[j][2 * r] + s[j][2 * r + 1];
            }
        }

        // o += p v, p straight from the score registers
        #pragma unroll
        for (int kk = 0; kk < ATT_TILE / 16; kk++) {
            uint32_t a[4];
            acc_to_a_frag(a, s[2 * kk], s[2 * kk + 1]);
            #pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                uint32_t bf[2];
                load_b_frag_trans(bf, Vs, STRIDE, kk * 16, dt * 8);
                mma_bf16_m16n8k16(o[dt], a, bf);
            }
        }
    }

    #pragma unroll
    for (int r = 0; r < 2; r++) {
        float sum = row_sum[r];
        sum += __shfl_xor_sync(0xffffffff, sum, 1);
        sum += __shfl_xor_sync(0xffffffff, sum, 2);
        if (row[r] >= len) continue;
        const float inv = 1.0f / sum;
        bf16* out_row = out + (size_t)(start + row[r]) * q_stride + h * HD;
        #pragma unroll
        for (int dt = 0; dt < HD / 8; dt++)
            *reinterpret_cast<uint32_t*>(out_row + dt * 8 + 2 * t) =
                pack_bf16(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
        // logsumexp of the scaled scores, natural log: ln(2^max * sum) = (max + log2 sum) ln 2
        if (t == 0) lse[((size_t)b * NH + h) * T + row[r]] = (row_max[r] + log2f(sum)) * LN2;
    }
}

// Backward, step 1: D = rowsum(dout * out) per query row and head, the softmax backward's subtrahend
// (sum_s p_s dp_s = dout . out). One warp per (row, head); HD/64 bf16 pairs per lane.
template <int HD>
__global__ void attention_backward_rowdot_kernel(float* D, const bf16* dout, const bf16* out,
                                                 const int* cu_seqlens, int T, int NH) {
    const int b = blockIdx.y, lane = threadIdx.x & 31;
    const int item = blockIdx.x * ATT_WARPS + (threadIdx.x >> 5);
    const int row = item / NH, h = item % NH;
    int start, len;
    sequence_span(cu_seqlens, b, T, &start, &len);
    if (row >= len) return;
    const size_t offset = (size_t)(start + row) * NH * HD + h * HD;
    float sum = 0.0f;
    for (int d = 2 * lane; d < HD; d += 64) {
        float2 dy = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(dout + offset + d));
        float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(out + offset + d));
        sum += dy.x * y.x + dy.y * y.y;
    }
    for (int m = 16; m > 0; m >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, m);
    if (lane == 0) D[((size_t)b * NH + h) * T + row] = sum;
}

// Backward, step 2: dq. Block (query tile, head h, sequence b), laid out like the forward; per key tile it
// recomputes p = exp(s - lse) and dp = dout v^T, forms ds = p (dp - D) and accumulates dq += ds k, so each
// dq row is summed in one block's registers: no atomics, deterministic.
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS)
    attention_backward_dq_kernel(bf16* dq, const float* D, const bf16* dout, const float* lse, const bf16* q,
                                 const bf16* k, const bf16* v, const int* cu_seqlens, int T, int NH, int KVH,
                                 float scale) {
    constexpr int STRIDE = HD + ATT_PAD;
    extern __shared__ uint4 att_smem[];
    bf16* Qs = reinterpret_cast<bf16*>(att_smem);  // [ATT_TILE][STRIDE]
    bf16* dOs = Qs + ATT_TILE * STRIDE;             // [ATT_TILE][STRIDE]
    bf16* Ks = dOs + ATT_TILE * STRIDE;             // [ATT_TILE][STRIDE]
    bf16* Vs = Ks + ATT_TILE * STRIDE;              // [ATT_TILE][STRIDE]

    const int b = blockIdx.z, h = blockIdx.y, kvh = h / (NH / KVH);
    const int q_tile = gridDim.x - 1 - blockIdx.x;  // longest first, as in the forward
    int start, len;
    sequence_span(cu_seqlens, b, T, &start, &len);
    const int m0 = q_tile * ATT_TILE;
    if (m0 >= len) return;
    const size_t q_stride = (size_t)NH * HD, kv_stride = (size_t)KVH * HD;
    const bf16* k_seq = k + (size_t)start * kv_stride + kvh * HD;
    const bf16* v_seq = v + (size_t)start * kv_stride + kvh * HD;

    const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const int wrow0 = warp * 16;
    const int row[2] = {m0 + wrow0 + g, m0 + wrow0 + g + 8};
    const float scale_log2 = scale * LOG2E;
    float row_lse2[2], row_D[2];  // lse in the log2 domain; rows past the end get 0 (never written)
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        size_t at = ((size_t)b * NH + h) * T + row[r];
        row_lse2[r] = row[r] < len ? lse[at] * LOG2E : 0.0f;
        row_D[r] = row[r] < len ? D[at] : 0.0f;
    }

    load_tile<ATT_TILE, HD>(Qs, q + (size_t)start * q_stride + h * HD, q_stride, m0, len);
    load_tile<ATT_TILE, HD>(dOs, dout + (size_t)start * q_stride + h * HD, q_stride, m0, len);

    float acc[HD / 8][4];  // dq / scale for the warp's 16 rows
    #pragma unroll
    for (int dt = 0; dt < HD / 8; dt++)
        #pragma unroll
        for (int e = 0; e < 4; e++) acc[dt][e] = 0.0f;

    for (int kt = 0; kt <= q_tile; kt++) {
        const int n0 = kt * ATT_TILE;
        __syncthreads();
        load_tile<ATT_TILE, HD>(Ks, k_seq, kv_stride, n0, len);
        load_tile<ATT_TILE, HD>(Vs, v_seq, kv_stride, n0, len);
        __syncthreads();

        // s = q k^T and dp = dout v^T, both 16 rows x 64 keys
        float s[ATT_TILE / 8][4], dp[ATT_TILE / 8][4];
        #pragma unroll
        for (int j = 0; j < ATT_TILE / 8; j++)
            #pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = dp[j][e] = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t aq[4], ado[4];
            load_a_frag(aq, Qs, STRIDE, wrow0, kk * 16);
            load_a_frag(ado, dOs, STRIDE, wrow0, kk * 16);
            #pragma unroll
            for (int j = 0; j < ATT_TILE / 8; j++) {
                uint32_t bf[2];
                load_b_frag(bf, Ks, STRIDE, j * 8, kk * 16);
                mma_bf16_m16n8k16(s[j], aq, bf);
                load_b_frag(bf, Vs, STRIDE, j * 8, kk * 16);
                mma_bf16_m16n8k16(dp[j], ado, bf);
            }
        }
        // p = exp(scale s - lse) (0 after the diagonal), then ds = p (dp - D), kept in s
        #pragma unroll
        for (int j = 0; j < ATT_TILE / 8; j++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int r = e >> 1, key = n0 + j * 8 + 2 * t + (e & 1);
                float p = key > row[r] + ATT_MASK_SHIFT ? 0.0f : exp2f(s[j][e] * scale_log2 - row_lse2[r]);
                s[j][e] = p * (dp[j][e] - row_D[r]);
            }
        // acc += ds k: ds from registers, k read as B[key][d]
        #pragma unroll
        for (int kk = 0; kk < ATT_TILE / 16; kk++) {
            uint32_t a[4];
            acc_to_a_frag(a, s[2 * kk], s[2 * kk + 1]);
            #pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                uint32_t bf[2];
                load_b_frag_trans(bf, Ks, STRIDE, kk * 16, dt * 8);
                mma_bf16_m16n8k16(acc[dt], a, bf);
            }
        }
    }

    #pragma unroll
    for (int r = 0; r < 2; r++) {
        if (row[r] >= len) continue;
        bf16* dq_row = dq + (size_t)(start + row[r]) * q_stride + h * HD;
        #pragma unroll
        for (int dt = 0; dt < HD / 8; dt++)  // d score / d q = scale k: the scale applied once, here
            *reinterpret_cast<uint32_t*>(dq_row + dt * 8 + 2 * t) =
                pack_bf16(acc[dt][2 * r] * scale, acc[dt][2 * r + 1] * scale);
    }
}

// Backward, step 3: dk and dv. Block (key tile, key/value head kvh, sequence b); warp w owns keys
// n0 + 16w .. n0 + 16w + 15 and works in the transposed frame (keys as rows): for every query head of the
// group and every query tile at or after the key tile, s^T = k q^T, p^T = exp(s^T - lse), dp^T = v dout^T,
// ds^T = p^T (dp^T - D), then dv += p^T dout and dk += ds^T q. One block owns each dk/dv row for all NH/KVH
// heads that share it, so the sum over the group happens in registers: no atomics, deterministic.
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS)
    attention_backward_dkdv_kernel(bf16* dk, bf16* dv, const float* D, const bf16* dout, const float* lse,
                                   const bf16* q, const bf16* k, const bf16* v, const int* cu_seqlens, int T,
                                   int NH, int KVH, float scale) {
    constexpr int STRIDE = HD + ATT_PAD;
    constexpr int QT = ATT_DKDV_QTILE;
    extern __shared__ uint4 att_smem[];
    bf16* Ks = reinterpret_cast<bf16*>(att_smem);  // [ATT_TILE][STRIDE] this block's keys
    bf16* Vs = Ks + ATT_TILE * STRIDE;              // [ATT_TILE][STRIDE] and values
    bf16* Qs = Vs + ATT_TILE * STRIDE;              // [QT][STRIDE] the current query tile
    bf16* dOs = Qs + QT * STRIDE;                   // [QT][STRIDE] its output gradient
    float* lse2_s = reinterpret_cast<float*>(dOs + QT * STRIDE);  // [QT] its lse, log2 domain
    float* D_s = lse2_s + QT;                                     // [QT] its D

    const int b = blockIdx.z, kvh = blockIdx.y, group = NH / KVH;
    const int key_tile = blockIdx.x;  // tile 0 sees every query: the longest blocks start first
    int start, len;
    sequence_span(cu_seqlens, b, T, &start, &len);
    const int n0 = key_tile * ATT_TILE;
    if (n0 >= len) return;
    const size_t q_stride = (size_t)NH * HD, kv_stride = (size_t)KVH * HD;

    const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const int wkey0 = warp * 16;  // the warp's first key in the tile
    const int key[2] = {n0 + wkey0 + g, n0 + wkey0 + g + 8};
    const float scale_log2 = scale * LOG2E;

    load_tile<ATT_TILE, HD>(Ks, k + (size_t)start * kv_stride + kvh * HD, kv_stride, n0, len);
    load_tile<ATT_TILE, HD>(Vs, v + (size_t)start * kv_stride + kvh * HD, kv_stride, n0, len);

    float dk_acc[HD / 8][4], dv_acc[HD / 8][4];  // the warp's 16 keys x HD
    #pragma unroll
    for (int dt = 0; dt < HD / 8; dt++)
        #pragma unroll
        for (int e = 0; e < 4; e++) dk_acc[dt][e] = dv_acc[dt][e] = 0.0f;

    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const bf16* q_seq = q + (size_t)start * q_stride + h * HD;
        const bf16* dout_seq = dout + (size_t)start * q_stride + h * HD;
        const size_t stats = ((size_t)b * NH + h) * T;  // this head's rows of lse and D
        // Causal: only queries at or after this tile's first key see it.
        for (int m0 = n0; m0 < len; m0 += QT) {
            __syncthreads();  // every warp is done with the previous query tile
            load_tile<QT, HD>(Qs, q_seq, q_stride, m0, len);
            load_tile<QT, HD>(dOs, dout_seq, q_stride, m0, len);
            if (threadIdx.x < QT) {
                int row = m0 + threadIdx.x;
                lse2_s[threadIdx.x] = row < len ? lse[stats + row] * LOG2E : 0.0f;
                D_s[threadIdx.x] = row < len ? D[stats + row] : 0.0f;
            }
            __syncthreads();

            // s^T = k q^T and dp^T = v dout^T: 16 keys x QT queries
            float s[QT / 8][4], dp[QT / 8][4];
            #pragma unroll
            for (int j = 0; j < QT / 8; j++)
                #pragma unroll
                for (int e = 0; e < 4; e++) s[j][e] = dp[j][e] = 0.0f;
            #pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                uint32_t ak[4], av[4];
                load_a_frag(ak, Ks, STRIDE, wkey0, kk * 16);
                load_a_frag(av, Vs, STRIDE, wkey0, kk * 16);
                #pragma unroll
                for (int j = 0; j < QT / 8; j++) {
                    uint32_t bf[2];
                    load_b_frag(bf, Qs, STRIDE, j * 8, kk * 16);
                    mma_bf16_m16n8k16(s[j], ak, bf);
                    load_b_frag(bf, dOs, STRIDE, j * 8, kk * 16);
                    mma_bf16_m16n8k16(dp[j], av, bf);
                }
            }
            // p^T (0 where the key comes after the query or the query is past the end), ds^T = p^T (dp^T - D)
            #pragma unroll
            for (int j = 0; j < QT / 8; j++)
                #pragma unroll
                for (int e = 0; e < 4; e++) {
                    int qi = j * 8 + 2 * t + (e & 1), query = m0 + qi;
                    bool visible = key[e >> 1] <= query + ATT_MASK_SHIFT && query < len;
                    float p = visible ? exp2f(s[j][e] * scale_log2 - lse2_s[qi]) : 0.0f;
                    s[j][e] = p;
                    dp[j][e] = p * (dp[j][e] - D_s[qi]);
                }
            // dv += p^T dout and dk += ds^T q, the queries as the reduction dimension
            #pragma unroll
            for (int kk = 0; kk < QT / 16; kk++) {
                uint32_t ap[4], ads[4];
                acc_to_a_frag(ap, s[2 * kk], s[2 * kk + 1]);
                acc_to_a_frag(ads, dp[2 * kk], dp[2 * kk + 1]);
                #pragma unroll
                for (int dt = 0; dt < HD / 8; dt++) {
                    uint32_t bf[2];
                    load_b_frag_trans(bf, dOs, STRIDE, kk * 16, dt * 8);
                    mma_bf16_m16n8k16(dv_acc[dt], ap, bf);
                    load_b_frag_trans(bf, Qs, STRIDE, kk * 16, dt * 8);
                    mma_bf16_m16n8k16(dk_acc[dt], ads, bf);
                }
            }
        }
    }

    #pragma unroll
    for (int r = 0; r < 2; r++) {
        if (key[r] >= len) continue;
        size_t at = (size_t)(start + key[r]) * kv_stride + kvh * HD;
        #pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            *reinterpret_cast<uint32_t*>(dk + at + dt * 8 + 2 * t) =
                pack_bf16(dk_acc[dt][2 * r] * scale, dk_acc[dt][2 * r + 1] * scale);
            *reinterpret_cast<uint32_t*>(dv + at + dt * 8 + 2 * t) = pack_bf16(dv_acc[dt][2 * r], dv_acc[dt][2 * r + 1]);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// kernel launchers

static void attention_check_shape(const char* who, int B, int T, int NH, int KVH, int HD) {
    if (HD != 16 && HD != 32 && HD != 64 && HD != 128)
        throw GrpoError(std::string(who) + ": head dimension " + std::to_string(HD) +
                        " is not supported (the kernels are built for 64 and 128, Qwen2.5's sizes, and 16 and 32, "
                        "the tiny test models')");
    if (KVH <= 0 || NH % KVH != 0)
        throw GrpoError(std::string(who) + ": " + std::to_string(NH) + " query heads is not a multiple of " +
                        std::to_string(KVH) + " key/value heads");
    if (B <= 0 || T <= 0)
        throw GrpoError(std::string(who) + ": empty batch (B " + std::to_string(B) + ", T " + std::to_string(T) + ")");
}

static float attention_scale(int HD) { return (float)(1.0 / std::sqrt((double)HD)); }  // as the CPU reference

static int ceil_div(int a, int b) { return (a + b - 1) / b; }

template <int HD>
static void attention_forward_hd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                 const int* cu_seqlens, int B, int T, int NH, int KVH, cudaStream_t stream) {
    const size_t smem = 3 * ATT_TILE * (HD + ATT_PAD) * sizeof(bf16);
    cudaCheck(cudaFuncSetAttribute(attention_forward_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid(ceil_div(T, ATT_TILE), NH, B);
    attention_forward_kernel<HD><<<grid, ATT_THREADS, smem, stream>>>(out, lse, q, k, v, cu_seqlens, T, NH, KVH,
                                                                      attention_scale(HD));
    cudaCheck(cudaGetLastError());
}

void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int* cu_seqlens,
                       int B, int T, int NH, int KVH, int HD, cudaStream_t stream) {
    attention_check_shape("attention_forward", B, T, NH, KVH, HD);
    switch (HD) {
    case 16: attention_forward_hd<16>(out, lse, q, k, v, cu_seqlens, B, T, NH, KVH, stream); break;
    case 32: attention_forward_hd<32>(out, lse, q, k, v, cu_seqlens, B, T, NH, KVH, stream); break;
    case 64: attention_forward_hd<64>(out, lse, q, k, v, cu_seqlens, B, T, NH, KVH, stream); break;
    default: attention_forward_hd<128>(out, lse, q, k, v, cu_seqlens, B, T, NH, KVH, stream); break;
    }
}

size_t attention_backward_scratch_bytes(int B, int T, int NH) { return (size_t)B * NH * T * sizeof(float); }

template <int HD>
static void attention_backward_hd(bf16* dq, bf16* dk, bf16* dv, float* D, const bf16* dout, const bf16* out,
                                  const float* lse, const bf16* q, const bf16* k, const bf16* v,
                                  const int* cu_seqlens, int B, int T, int NH, int KVH, cudaStream_t stream) {
    const float scale = attention_scale(HD);
    dim3 rowdot_grid(ceil_div(T * NH, ATT_WARPS), B);
    attention_backward_rowdot_kernel<HD><<<rowdot_grid, ATT_THREADS, 0, stream>>>(D, dout, out, cu_seqlens, T, NH);
    cudaCheck(cudaGetLastError());

    const size_t dq_smem = 4 * ATT_TILE * (HD + ATT_PAD) * sizeof(bf16);
    cudaCheck(cudaFuncSetAttribute(attention_backward_dq_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)dq_smem));
    dim3 dq_grid(ceil_div(T, ATT_TILE), NH, B);
    attention_backward_dq_kernel<HD><<<dq_grid, ATT_THREADS, dq_smem, stream>>>(dq, D, dout, lse, q, k, v, cu_seqlens,
                                                                                T, NH, KVH, scale);
    cudaCheck(cudaGetLastError());

    const size_t dkdv_smem = (2 * ATT_TILE + 2 * ATT_DKDV_QTILE) * (HD + ATT_PAD) * sizeof(bf16) +
                             2 * ATT_DKDV_QTILE * sizeof(float);
    cudaCheck(cudaFuncSetAttribute(attention_backward_dkdv_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)dkdv_smem));
    dim3 dkdv_grid(ceil_div(T, ATT_TILE), KVH, B);
    attention_backward_dkdv_kernel<HD><<<dkdv_grid, ATT_THREADS, dkdv_smem, stream>>>(
        dk, dv, D, dout, lse, q, k, v, cu_seqlens, T, NH, KVH, scale);
    cudaCheck(cudaGetLastError());
}

void attention_backward(bf16* dq, bf16* dk, bf16* dv, void* scratch, const bf16* dout, const bf16* out,
                        const float* lse, const bf16* q, const bf16* k, const bf16* v, const int* cu_seqlens, int B,
                        int T, int NH, int KVH, int HD, cudaStream_t stream) {
    attention_check_shape("attention_backward", B, T, NH, KVH, HD);
    float* D = static_cast<float*>(scratch);
    switch (HD) {
    case 16: attention_backward_hd<16>(dq, dk, dv, D, dout, out, lse, q, k, v, cu_seqlens, B, T, NH, KVH, stream); break;
    case 32: attention_backward_hd<32>(dq, dk, dv, D, dout, out, lse, q, k, v, cu_seqlens, B, T, NH, KVH, stream); break;
    case 64: attention_backward_hd<64>(dq, dk, dv, D, dout, out, lse, q, k, v, cu_seqlens, B, T, NH, KVH, stream); break;
    default: attention_backward_hd<128>(dq, dk, dv, D, dout, out, lse, q, k, v, cu_seqlens, B, T, NH, KVH, stream); break;
    }
}
