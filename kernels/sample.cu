// sample.cu: the next token of each sequence drawn on the GPU: greedy argmax, or temperature + top-k + top-p (HF's semantics, exact kept set) found by radix selection over the row instead of a sort, then one seeded inverse-CDF draw; without top-k and top-p, a few rows are spread over many blocks.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/text.h"
#include "kernels/cuda_common.cuh"
#include "kernels/sample.cuh"

typedef __nv_bfloat16 bf16;
typedef unsigned long long u64;

// ------------------------------------------------------------------------------------------------
// CUDA kernels

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
#define RADIX_BITS 11  // 2048 bins per selection pass: a 32-bit score key takes 3 passes
#define MASS_ONE 1099511627776.0  // 2^40: fixed-point scale of exp(s - max) <= 1, so V terms fit 64 bits
// The split path: each thread owns one 8-id group, so a block covers SPLIT_CHUNK ids of its row (at most 512
// chunks, as V < 2^20: the last block's 256 threads hold two chunk sums each).
#define SPLIT_THREADS 256
#define SPLIT_WARPS (SPLIT_THREADS / 32)
#define SPLIT_CHUNK (SPLIT_THREADS * 8)
#define SPLIT_MAX_ROWS 65535  // a grid dimension: the split path's grid is (chunks, M)

struct SampleShared {
    u64 hist[1 << RADIX_BITS];
    u64 warp_vals[SAMPLE_WARPS];
    u64 result_below;
    unsigned result_key;
    int found;
    float fval;
    int ival;
};

// What every sampling kernel needs besides the logits: where each row's token goes, the stop handling, and what
// the draw of each row is a function of (sample.cuh).
struct DrawArgs {
    int* tokens;
    int* finished;  // nullptr: no row is finished
    const int* stop_ids;
    int num_stop;
    int pad_id;
    u64 seed;
    const int* seq_ids;  // nullptr: row m is sequence m
    int seq_offset;
    const int* steps;  // nullptr: step 0
};

// 16-byte loads need rows that start on 16 bytes: V a multiple of 8 and the logits aligned.
__device__ inline bool logits_vectorizable(const bf16* logits, int V) {
    return (V % 8 == 0) && ((reinterpret_cast<uintptr_t>(logits) & 15) == 0);
}

// Calls f(id, logit) for the ids id0 .. id0 + 7 below n (id0 a multiple of 8): one 16-byte load when the row
// allows it (vec), bf16 by bf16 at the ragged end (vocab_limit need not be a multiple of 8).
template <class F>
__device__ inline void for_each_logit_in_group(const bf16* row, int id0, int n, bool vec, F f) {
    if (vec && id0 + 8 <= n) {
        uint4 u = __ldg(reinterpret_cast<const uint4*>(row + id0));
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            f(id0 + 2 * i, __uint_as_float(w[i] << 16));
            f(id0 + 2 * i + 1, __uint_as_float(w[i] & 0xffff0000u));
        }
    } else {
        for (int id = id0; id < min(id0 + 8, n); id++) f(id, __bfloat162float(row[id]));
    }
}
// Calls f(id, logit) for every id < n of the row, thread t of the one-block kernel taking 8-id groups t, t + 1024, ...
template <class F>
__device__ inline void for_each_logit(const bf16* row, int n, bool vec, F f) {
    const int groups = (n + 7) / 8;
    for (int c = threadIdx.x; c < groups; c += SAMPLE_THREADS) for_each_logit_in_group(row, c * 8, n, vec, f);
}

// The warped score logit / temperature in fp32 (IEEE division, as torch), with -0 made +0 so that the key
// order below treats the two zeros as the tie they are in the CPU's float comparisons.
__device__ inline float warp_score(float logit, float temperature) {
    float s = __fdiv_rn(logit, temperature);
    return s == 0.0f ? 0.0f : s;
}
// An unsigned key with the order of the floats: flip all bits of negatives, the sign bit of positives.
__device__ inline unsigned order_key(float s) {
    unsigned u = __float_as_uint(s);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ inline float from_order_key(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
// exp(s - max) as a 40-bit fixed-point integer: integer sums are exact and independent of order, so the
// top-p boundary and the draw come out the same on every run, and however the row is cut into blocks. A NaN
// score, and a +inf one (inf - inf), weighs 0 by an explicit test, not by the conversion: the first split-path test
// on the H200 drew those ids, so the conversion of NaN did not give 0. fmaxf passes over NaN in the max.
__device__ inline u64 mass_of(float s, float s_max) {
    const float e = expf(s - s_max);
    return e == e ? __double2ull_rn((double)e * MASS_ONE) : 0;
}

__device__ inline u64 splitmix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The draw of row m: the position u * kept_total (u uniform in [0, 1), a function of the seed, the sequence and
// the step alone) in the running kept mass. The token is the first id (increasing) whose running mass exceeds it.
// A kept_total of 0 gives a target no running mass reaches, so nothing is drawn.
__device__ inline u64 draw_target(const DrawArgs& args, int m, u64 kept_total) {
    const int seq = (args.seq_ids ? args.seq_ids[m] : m) + args.seq_offset, step = args.steps ? args.steps[m] : 0;
    const u64 bits = splitmix64(splitmix64(splitmix64(args.seed) ^ (u64)(unsigned)seq) ^ (u64)(unsigned)step);
    const double u = (double)(bits >> 11) * (1.0 / 9007199254740992.0);  // 53 bits in [0, 1)
    u64 target = (u64)(u * (double)kept_total);
    if (target >= kept_total) target = kept_total - 1;
    return target;
}
// Row m's token (-1: nothing could be drawn) goes out, and a stop id finishes the row.
__device__ inline void finish_row(const DrawArgs& args, int m, int token) {
    args.tokens[m] = token;
    if (args.finished)
        for (int i = 0; i < args.num_stop; i++)
            if (token == args.stop_ids[i]) args.finished[m] = 1;
}

// The mass of the 8-id group at id0, mass(id, logit) giving each token's.
template <class MassF>
__device__ inline u64 group_mass(const bf16* row, int id0, int n, bool vec, MassF mass) {
    u64 sum = 0;
    for_each_logit_in_group(row, id0, n, vec, [&](int id, float x) { sum += mass(id, x); });
    return sum;
}
// The first id of the 8-id group at id0 whose running mass from the group's start exceeds rel (-1 if none).
template <class MassF>
__device__ inline int first_crossing_in_group(const bf16* row, int id0, int n, u64 rel, MassF mass) {
    u64 cum = 0;
    for (int id = id0; id < min(id0 + 8, n); id++) {
        cum += mass(id, __bfloat162float(row[id]));
        if (rel < cum) return id;
    }
    return -1;
}

__device__ inline u64 warp_sum_u64(u64 v) {
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
// Block-wide reductions over WARPS warps, through warp_vals [WARPS] in shared memory.
template <int WARPS>
__device__ inline u64 block_sum_u64(u64 v, u64* warp_vals) {
    v = warp_sum_u64(v);
    __syncthreads();  // warp_vals may still be read by a previous reduction
    if ((threadIdx.x & 31) == 0) warp_vals[threadIdx.x >> 5] = v;
    __syncthreads();
    u64 total = 0;
    for (int w = 0; w < WARPS; w++) total += warp_vals[w];
    return total;
}
template <int WARPS>
__device__ inline float block_max(float v, u64* warp_vals) {
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) warp_vals[threadIdx.x >> 5] = __float_as_uint(v);
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < WARPS; w++) m = fmaxf(m, __uint_as_float((unsigned)warp_vals[w]));
    return m;
}
// The exclusive prefix sum of v over the block's threads in thread order.
template <int WARPS>
__device__ inline u64 block_exclusive_scan_u64(u64 v, u64* warp_vals) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u64 incl = v;
    #pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        u64 o = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += o;
    }
    __syncthreads();
    if (lane == 31) warp_vals[warp] = incl;
    __syncthreads();
    u64 before = 0;
    for (int w = 0; w < warp; w++) before += warp_vals[w];
    return before + incl - v;
}
// Weights in order over the block, thread t holding weights 2t and 2t+1 (w0, w1), after `base` of weight before
// them all: the one whose span of the running sum holds target (sum before it <= target < sum after it), if this
// thread holds it: 0 or 1, with *below the sum before it; else -1. Exactly one thread finds a target below the
// total (the sums are exact integers, so they only grow). Every thread of the block must call it.
template <int WARPS>
__device__ inline int pair_crossing(u64 w0, u64 w1, u64 base, u64 target, u64* warp_vals, u64* below) {
    const u64 before = base + block_exclusive_scan_u64<WARPS>(w0 + w1, warp_vals);
    if (w0 && before <= target && before + w0 > target) {
        *below = before;
        return 0;
    }
    if (w1 && before + w0 <= target && before + w0 + w1 > target) {
        *below = before + w0;
        return 1;
    }
    return -1;
}

// Radix selection: over the candidates (weight w > 0; key_weight(id, logit, &key, &w) says both), the
// smallest 32-bit key K whose cumulative weight (all candidates with key <= K) exceeds thr, plus the weight
// strictly below K. Digits of RADIX_BITS from the top of key_bits: each pass histograms the weights of the
// candidates that share the digits chosen so far and picks the bin where the running sum crosses thr.
// Returns false when the total weight is <= thr. Weights are integers (counts or fixed-point masses).
template <class KW>
__device__ bool radix_select(const bf16* row, int n, bool vec, int key_bits, u64 thr, KW key_weight, unsigned* key_out,
                             u64* below_out, SampleShared& sh) {
    u64 prefix = 0, below = 0;
    int shift = key_bits;
    while (shift > 0) {
        const int width = min(RADIX_BITS, shift);
        shift -= width;
        const int bins = 1 << width, high = shift + width;
        for (int i = threadIdx.x; i < bins; i += SAMPLE_THREADS) sh.hist[i] = 0;
        if (threadIdx.x == 0) sh.found = 0;
        __syncthreads();
        for_each_logit(row, n, vec, [&](int id, float logit) {
            unsigned key;
            u64 w;
            key_weight(id, logit, &key, &w);
            if (w && ((u64)key >> high) == prefix) atomicAdd(&sh.hist[(key >> shift) & (bins - 1)], w);
        });
        __syncthreads();
        // thread t owns bins 2t and 2t+1 (bins <= 2048 = 2 x 1024)
        const int b0 = 2 * threadIdx.x;
        const u64 h0 = b0 < bins ? sh.hist[b0] : 0, h1 = b0 + 1 < bins ? sh.hist[b0 + 1] : 0;
        u64 at;
        const int which = pair_crossing<SAMPLE_WARPS>(h0, h1, below, thr, sh.warp_vals, &at);
        if (which >= 0) {
            sh.result_key = b0 + which;
            sh.result_below = at;
            sh.found = 1;
        }
        __syncthreads();
        if (!sh.found) return false;
        prefix = (prefix << width) | sh.result_key;
        below = sh.result_below;
        __syncthreads();  // every thread has read the result before the next pass clears it
    }
    *key_out = (unsigned)prefix;
    *below_out = below;
    return true;
}

// One block per row. Passes over the row (each a read of its V bf16, mostly from L2 after the first):
// max (or argmax) 1, top-k 3, total mass 1, top-p 3 (+2 when the boundary score is tied), draw 2.
// Two blocks per SM (32 registers): the shape the kernel had when the decode-step profile timed it (0.11 ms a
// step at batch 6); left to itself ptxas now gives it 62 registers and one block per SM, which no one has timed.
__global__ void __launch_bounds__(SAMPLE_THREADS, 2)
    sample_kernel(DrawArgs args, const bf16* logits, int V, int n, float temperature, int top_k, int top_p_on,
                  float remove_frac) {
    __shared__ SampleShared sh;
    const int m = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (args.finished && args.finished[m]) {
        if (tid == 0) args.tokens[m] = args.pad_id;
        return;
    }
    const bf16* row = logits + (size_t)m * V;
    const bool vec = logits_vectorizable(logits, V);
    int token = -1;

    if (temperature == 0.0f) {
        // greedy: the largest logit, the lowest id among equals (torch.argmax, sample_token)
        float best = -INFINITY;
        int best_id = INT_MAX;
        for_each_logit(row, n, vec, [&](int id, float x) {
            if (x > best || (x == best && id < best_id)) { best = x; best_id = id; }
        });
        #pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            float ob = __shfl_xor_sync(0xffffffffu, best, off);
            int oi = __shfl_xor_sync(0xffffffffu, best_id, off);
            if (ob > best || (ob == best && oi < best_id)) { best = ob; best_id = oi; }
        }
        if (lane == 0) sh.hist[warp] = ((u64)__float_as_uint(best) << 32) | (unsigned)best_id;
        __syncthreads();
        if (tid == 0) {
            for (int w = 0; w < SAMPLE_WARPS; w++) {
                float ob = __uint_as_float((unsigned)(sh.hist[w] >> 32));
                int oi = (int)(unsigned)sh.hist[w];
                if (ob > best || (ob == best && oi < best_id)) { best = ob; best_id = oi; }
            }
            sh.ival = best_id;
        }
        __syncthreads();
        token = sh.ival;
    } else {
        float s_max = -INFINITY;
        for_each_logit(row, n, vec, [&](int, float x) { s_max = fmaxf(s_max, warp_score(x, temperature)); });
        s_max = block_max<SAMPLE_WARPS>(s_max, sh.warp_vals);
        if (s_max == -INFINITY) {
            token = -1;  // every allowed logit is -inf: nothing to draw (sample_token throws here)
        } else {
            // top-k: the k-th largest score counting repeats = the (n-k)-th smallest (0-based): the first key
            // whose count of keys at or below it exceeds n - k. Every score >= it stays.
            unsigned key_k = 0;  // no top-k: every key passes
            if (top_k > 0 && top_k < n) {
                u64 unused;
                radix_select(row, n, vec, 32, (u64)(n - top_k),
                             [&](int, float x, unsigned* key, u64* w) { *key = order_key(warp_score(x, temperature)); *w = 1; },
                             &key_k, &unused, sh);
            }
            u64 total = 0;
            for_each_logit(row, n, vec, [&](int, float x) {
                float s = warp_score(x, temperature);
                if (order_key(s) >= key_k) total += mass_of(s, s_max);
            });
            total = block_sum_u64<SAMPLE_WARPS>(total, sh.warp_vals);

            // top-p: in ascending (score, id) order, remove the prefix whose cumulative mass is <= thr. The first
            // kept token is (key_cut, id_cut): every score above key_cut stays, and of the tokens tied at
            // key_cut those with id >= id_cut.
            unsigned key_cut = 0;
            int id_cut = 0;
            u64 kept_total = total;
            if (top_p_on) {
                const u64 thr = (u64)floor((double)remove_frac * (double)total);
                u64 below = 0;
                bool found = radix_select(row, n, vec, 32, thr,
                                          [&](int, float x, unsigned* key, u64* w) {
                                              float s = warp_score(x, temperature);
                                              *key = order_key(s);
                                              *w = *key >= key_k ? mass_of(s, s_max) : 0;
                                          },
                                          &key_cut, &below, sh);
                if (!found) {
                    // even the whole mass is <= thr: only the last token in the order stays, the highest score
                    // with the highest id among its ties
                    key_cut = order_key(s_max);
                    int last = -1;
                    for_each_logit(row, n, vec, [&](int id, float x) {
                        if (order_key(warp_score(x, temperature)) == key_cut) last = max(last, id);
                    });
                    #pragma unroll
                    for (int off = 16; off > 0; off >>= 1) last = max(last, __shfl_xor_sync(0xffffffffu, last, off));
                    __syncthreads();
                    if (lane == 0) sh.warp_vals[warp] = (u64)(last + 1);
                    __syncthreads();
                    int most = 0;
                    for (int w = 0; w < SAMPLE_WARPS; w++) most = max(most, (int)sh.warp_vals[w] - 1);
                    id_cut = most;
                    kept_total = mass_of(s_max, s_max);
                } else {
                    // the tied tokens at key_cut all weigh m_cut; the `removed` lowest ids among them go
                    const u64 m_cut = mass_of(from_order_key(key_cut), s_max);
                    const u64 removed = (thr - below) / m_cut;
                    if (removed > 0) {
                        unsigned id_key = 0;
                        u64 unused;
                        const unsigned kc = key_cut;
                        radix_select(row, n, vec, 20, removed,
                                     [&](int id, float x, unsigned* key, u64* w) {
                                         *key = (unsigned)id;
                                         *w = order_key(warp_score(x, temperature)) == kc ? 1 : 0;
                                     },
                                     &id_key, &unused, sh);
                        id_cut = (int)id_key;
                    }
                    kept_total = total - below - removed * m_cut;
                }
            }

            // the draw: the first id (increasing) whose cumulative kept mass exceeds the target
            const u64 target = draw_target(args, m, kept_total);
            auto kept_mass = [&](int id, float x) -> u64 {
                float s = warp_score(x, temperature);
                unsigned key = order_key(s);
                bool kept = key >= key_k && (key > key_cut || (key == key_cut && id >= id_cut));
                return kept ? mass_of(s, s_max) : 0;
            };
            // warp w owns the contiguous 8-id groups [w*per_warp, (w+1)*per_warp): their sums in id order locate
            // the warp holding the target, which then scans its groups 32 at a time
            const int groups = (n + 7) / 8, per_warp = (groups + SAMPLE_WARPS - 1) / SAMPLE_WARPS;
            const int c_begin = warp * per_warp, c_end = min(groups, c_begin + per_warp);
            u64 mine = 0;
            for (int c = c_begin + lane; c < c_end; c += 32) mine += group_mass(row, c * 8, n, vec, kept_mass);
            mine = warp_sum_u64(mine);
            __syncthreads();
            if (lane == 0) sh.warp_vals[warp] = mine;
            __syncthreads();
            u64 before = 0;
            for (int w = 0; w < warp; w++) before += sh.warp_vals[w];
            if (tid == 0) sh.ival = -1;
            __syncthreads();
            if (mine > 0 && target >= before && target < before + mine) {
                u64 rel = target - before;
                for (int base = c_begin; base < c_end; base += 32) {
                    const int c = base + lane;
                    const u64 cm = c < c_end ? group_mass(row, c * 8, n, vec, kept_mass) : 0;
                    u64 incl = cm;
                    #pragma unroll
                    for (int off = 1; off < 32; off <<= 1) {
                        u64 o = __shfl_up_sync(0xffffffffu, incl, off);
                        if (lane >= off) incl += o;
                    }
                    const bool here = cm > 0 && rel >= incl - cm && rel < incl;
                    if (here) sh.ival = first_crossing_in_group(row, c * 8, n, rel - (incl - cm), kept_mass);
                    if (__any_sync(0xffffffffu, here)) break;
                    rel -= __shfl_sync(0xffffffffu, incl, 31);
                }
            }
            __syncthreads();
            token = sh.ival;
        }
    }
    if (tid == 0) finish_row(args, m, token);
}

// The split path (temperature > 0, no top-k, no top-p): the draw needs only the row's max score and the running
// sum of masses in id order, and both come out exactly the same however the row is cut (fmaxf and integer sums
// do not depend on order), so each row is cut into chunks of SPLIT_CHUNK ids, a block each, and draws exactly
// sample_kernel's token. Two launches over a grid of (chunks, rows): the first writes each chunk's max score;
// the second reads the row's max from them and writes its chunk's mass, and the last block of the row to finish
// (an arrival counter per row, as decode_linear's split-K) finds the chunk whose span of the running mass holds
// the target, then the 8-id group in it, then the id.
struct SplitScratch {
    u64* chunk_mass;   // [M][chunks]
    float* chunk_max;  // [M][chunks]
    int* arrived;      // [M]: the row's blocks done with their chunk mass (the max kernel zeroes it)
};

__global__ void __launch_bounds__(SPLIT_THREADS)
    sample_split_max_kernel(DrawArgs args, const bf16* logits, int V, int n, float temperature, SplitScratch ws) {
    __shared__ u64 warp_vals[SPLIT_WARPS];
    grid_launch_dependents();  // the draw kernel's blocks may get ready; they wait for this grid to finish
    const int chunk = blockIdx.x, m = blockIdx.y, chunks = gridDim.x;
    // zeroed here rather than left zero by the last launch: the workspace needs no set-up and survives an abort
    if (chunk == 0 && threadIdx.x == 0) ws.arrived[m] = 0;
    if (args.finished && args.finished[m]) return;
    float s_max = -INFINITY;
    for_each_logit_in_group(logits + (size_t)m * V, chunk * SPLIT_CHUNK + threadIdx.x * 8, n,
                            logits_vectorizable(logits, V),
                            [&](int, float x) { s_max = fmaxf(s_max, warp_score(x, temperature)); });
    s_max = block_max<SPLIT_WARPS>(s_max, warp_vals);
    if (threadIdx.x == 0) ws.chunk_max[(size_t)m * chunks + chunk] = s_max;
}

// Launched as a programmatic dependent of the max kernel: its blocks may start while that kernel finishes and
// wait (grid_dependency_wait) before they read what it wrote. The logits were written before the max kernel
// started, and the max kernel never writes finished, so both may be read before the wait.
__global__ void __launch_bounds__(SPLIT_THREADS)
    sample_split_draw_kernel(DrawArgs args, const bf16* logits, int V, int n, float temperature, SplitScratch ws) {
    __shared__ u64 warp_vals[SPLIT_WARPS];
    __shared__ u64 rel_in_chunk;
    __shared__ int is_last, found_chunk, token;
    const int chunk = blockIdx.x, m = blockIdx.y, chunks = gridDim.x, tid = threadIdx.x;
    // Every block of a row reads finished[m] before it arrives at the counter, and only the last to arrive may
    // set it, so no block of the row sees the row finish under it.
    if (args.finished && args.finished[m]) {
        if (chunk == 0 && tid == 0) args.tokens[m] = args.pad_id;
        return;
    }
    grid_dependency_wait();
    float s_max = -INFINITY;
    for (int c = tid; c < chunks; c += SPLIT_THREADS)
        s_max = fmaxf(s_max, __ldcg(&ws.chunk_max[(size_t)m * chunks + c]));
    s_max = block_max<SPLIT_WARPS>(s_max, warp_vals);
    if (s_max == -INFINITY) {  // every allowed logit is -inf: nothing to draw, as sample_kernel
        if (chunk == 0 && tid == 0) finish_row(args, m, -1);
        return;
    }
    const bf16* row = logits + (size_t)m * V;
    const bool vec = logits_vectorizable(logits, V);
    auto mass = [&](int, float x) -> u64 { return mass_of(warp_score(x, temperature), s_max); };
    const u64 my_mass = block_sum_u64<SPLIT_WARPS>(group_mass(row, chunk * SPLIT_CHUNK + tid * 8, n, vec, mass),
                                                   warp_vals);
    // publish the chunk's mass; the fences make every block's mass visible to the last block to arrive
    if (tid == 0) {
        ws.chunk_mass[(size_t)m * chunks + chunk] = my_mass;
        __threadfence();
        is_last = atomicAdd(&ws.arrived[m], 1) == chunks - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();

    // the chunk holding the target: thread t holds chunks 2t and 2t+1 (chunks <= 512; from L2, as other blocks
    // wrote them)
    const int c0 = 2 * tid;
    const u64 w0 = c0 < chunks ? __ldcg(&ws.chunk_mass[(size_t)m * chunks + c0]) : 0;
    const u64 w1 = c0 + 1 < chunks ? __ldcg(&ws.chunk_mass[(size_t)m * chunks + c0 + 1]) : 0;
    const u64 target = draw_target(args, m, block_sum_u64<SPLIT_WARPS>(w0 + w1, warp_vals));
    if (tid == 0) {
        found_chunk = -1;  // stays so when the row's total mass is 0 (a +inf logit): as sample_kernel, no token
        token = -1;
    }
    u64 below;
    const int which = pair_crossing<SPLIT_WARPS>(w0, w1, 0, target, warp_vals, &below);
    if (which >= 0) {
        found_chunk = c0 + which;
        rel_in_chunk = target - below;
    }
    __syncthreads();
    if (found_chunk >= 0) {
        // the 8-id group of the chunk holding it (thread t's group is the first of its pair, the second is
        // empty), then the id in that group
        const int id0 = found_chunk * SPLIT_CHUNK + tid * 8;
        const u64 rel = rel_in_chunk;
        if (pair_crossing<SPLIT_WARPS>(group_mass(row, id0, n, vec, mass), 0, 0, rel, warp_vals, &below) == 0)
            token = first_crossing_in_group(row, id0, n, rel - below, mass);
    }
    __syncthreads();
    if (tid == 0) finish_row(args, m, token);
}

// ------------------------------------------------------------------------------------------------
// kernel launchers

static int split_chunks(int n) { return (n + SPLIT_CHUNK - 1) / SPLIT_CHUNK; }

// The workspace of M rows of `chunks` chunks: chunk masses first (8-byte aligned), then chunk maxima, then counters.
static size_t split_workspace_bytes(int M, int chunks) {
    return (size_t)M * chunks * (sizeof(u64) + sizeof(float)) + (size_t)M * sizeof(int);
}

size_t sample_tokens_workspace_bytes(int M, int V) {
    if (M < 0 || V < 1)
        throw GrpoError("sample_tokens_workspace_bytes: M = " + std::to_string(M) + " and V = " + std::to_string(V) +
                        " must be >= 0 and >= 1");
    return split_workspace_bytes(M, split_chunks(V));  // vocab_limit <= V: never more chunks than V's
}

// The split path takes every row count it can draw. Measured (dev/cuda/decode_sample.cu, H200, session 8): faster
// at every M tried, 0.012 / 0.014 / 0.040 / 0.072 / 0.132 ms against the one-block kernel's 0.098 / 0.116 / 0.117 /
// 0.124 / 0.199 at M 1 / 6 / 64 / 132 / 264 (where one block a row fills the GPU); session 10: 0.252 / 0.489 against
// 0.371 / 0.702 at M 528 / 1056. (Before, the one-block kernel took M >= 264, untimed above it.)
bool sample_split_path_draws(const SamplerConfig& config, int V) {
    const int n = config.vocab_limit > 0 ? config.vocab_limit : V;
    // sample_kernel's own tests: greedy when the fp32 temperature is 0, a selection pass when top-k cuts the row
    return (float)config.temperature != 0.0f && !(config.top_k > 0 && config.top_k < n) && !(config.top_p < 1.0);
}

void sample_tokens_version(int version, int* tokens, int* finished, const bf16* logits, int M, int V,
                           const SamplerConfig& config, uint64_t seed, const int* seq_ids, const int* steps,
                           const int* stop_ids, int num_stop, int pad_id, void* workspace, size_t workspace_bytes,
                           cudaStream_t stream, int seq_offset) {
    sampler_check(config, V);
    if (V >= (1 << 20))
        throw GrpoError("sample_tokens: V = " + std::to_string(V) + " must be below 2^20 (ids are 20-bit radix keys)");
    if (M < 0) throw GrpoError("sample_tokens: M = " + std::to_string(M) + " rows must be >= 0");
    if (num_stop > 0 && !stop_ids) throw GrpoError("sample_tokens: num_stop > 0 needs stop_ids");
    if (version < 0 || version > 2)
        throw GrpoError("sample_tokens_version: version = " + std::to_string(version) + " must be 0, 1 or 2");
    const int n = config.vocab_limit > 0 ? config.vocab_limit : V;
    // HF casts the Python floats to fp32 where they meet the fp32 scores; sampler_warp does the same
    const float temperature = (float)config.temperature;
    const float remove_frac = (float)(1.0 - config.top_p);
    const int top_p_on = config.top_p < 1.0 ? 1 : 0;
    const bool splittable = sample_split_path_draws(config, V);
    if (version == 0) version = splittable && workspace && M <= SPLIT_MAX_ROWS ? 2 : 1;
    const int chunks = split_chunks(n);
    if (version == 2) {
        if (!splittable)
            throw GrpoError("sample_tokens: the split path draws only with temperature > 0, no top-k and no top-p");
        const size_t need = split_workspace_bytes(M, chunks);
        if (!workspace || workspace_bytes < need)
            throw GrpoError("sample_tokens: the split path needs a workspace of " + std::to_string(need) +
                            " bytes for M = " + std::to_string(M) + " rows of " + std::to_string(n) + " ids, got " +
                            std::to_string(workspace ? workspace_bytes : 0));
        if ((uintptr_t)workspace % 8 != 0) throw GrpoError("sample_tokens: the workspace must be 8-byte aligned");
        if (M > SPLIT_MAX_ROWS)
            throw GrpoError("sample_tokens: the split path takes at most " + std::to_string(SPLIT_MAX_ROWS) +
                            " rows (a grid dimension), got " +
                            std::to_string(M));
    }
    if (M == 0) return;
    const DrawArgs args{tokens, finished, stop_ids, num_stop, pad_id, (u64)seed, seq_ids, seq_offset, steps};
    if (version == 1) {
        sample_kernel<<<M, SAMPLE_THREADS, 0, stream>>>(args, logits, V, n, temperature, config.top_k, top_p_on,
                                                        remove_frac);
        cudaCheck(cudaGetLastError());
        return;
    }
    SplitScratch ws;
    ws.chunk_mass = (u64*)workspace;
    ws.chunk_max = (float*)(ws.chunk_mass + (size_t)M * chunks);
    ws.arrived = (int*)(ws.chunk_max + (size_t)M * chunks);
    const dim3 grid(chunks, M);
    sample_split_max_kernel<<<grid, SPLIT_THREADS, 0, stream>>>(args, logits, V, n, temperature, ws);
    cudaCheck(cudaGetLastError());
    launch_dependent(sample_split_draw_kernel, grid, dim3(SPLIT_THREADS), 0, stream, args, logits, V, n, temperature,
                     ws);
}

void sample_tokens(int* tokens, int* finished, const bf16* logits, int M, int V, const SamplerConfig& config,
                   uint64_t seed, const int* seq_ids, const int* steps, const int* stop_ids, int num_stop, int pad_id,
                   void* workspace, size_t workspace_bytes, cudaStream_t stream, int seq_offset) {
    sample_tokens_version(0, tokens, finished, logits, M, V, config, seed, seq_ids, steps, stop_ids, num_stop, pad_id,
                          workspace, workspace_bytes, stream, seq_offset);
}
