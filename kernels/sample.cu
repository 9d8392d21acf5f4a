// sample.cu: the next token of each sequence drawn on the GPU: greedy argmax, or temperature + top-k + top-p (HF's semantics, exact kept set) found by radix selection over the row instead of a sort, then one seeded inverse-CDF draw.
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

struct SampleShared {
    u64 hist[1 << RADIX_BITS];
    u64 warp_vals[SAMPLE_WARPS];
    u64 result_below;
    unsigned result_key;
    int found;
    float fval;
    int ival;
};

// Calls f(id, logit) for every id < n of the row, thread t taking 8-id chunks t, t + 1024, ...: one 16-byte
// load per chunk when the row allows it (vec), bf16 by bf16 at the ragged end (vocab_limit need not be a
// multiple of 8).
template <class F>
__device__ inline void for_each_logit(const bf16* row, int n, bool vec, F f) {
    const int chunks = (n + 7) / 8;
    for (int c = threadIdx.x; c < chunks; c += SAMPLE_THREADS) {
        const int id0 = c * 8;
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
// top-p boundary and the draw come out the same on every run.
__device__ inline u64 mass_of(float s, float s_max) {
    return __double2ull_rn((double)expf(s - s_max) * MASS_ONE);
}

__device__ inline u64 splitmix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ inline u64 warp_sum_u64(u64 v) {
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
__device__ inline u64 block_sum_u64(u64 v, SampleShared& sh) {
    v = warp_sum_u64(v);
    __syncthreads();  // warp_vals may still be read by a previous reduction
    if ((threadIdx.x & 31) == 0) sh.warp_vals[threadIdx.x >> 5] = v;
    __syncthreads();
    u64 total = 0;
    for (int w = 0; w < SAMPLE_WARPS; w++) total += sh.warp_vals[w];
    return total;
}
__device__ inline float block_max(float v, SampleShared& sh) {
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh.warp_vals[threadIdx.x >> 5] = __float_as_uint(v);
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < SAMPLE_WARPS; w++) m = fmaxf(m, __uint_as_float((unsigned)sh.warp_vals[w]));
    return m;
}
// The exclusive prefix sum of v over the block's threads in thread order.
__device__ inline u64 block_exclusive_scan_u64(u64 v, SampleShared& sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u64 incl = v;
    #pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        u64 o = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += o;
    }
    __syncthreads();
    if (lane == 31) sh.warp_vals[warp] = incl;
    __syncthreads();
    u64 before = 0;
    for (int w = 0; w < warp; w++) before += sh.warp_vals[w];
    return before + incl - v;
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
        const u64 before = below + block_exclusive_scan_u64(h0 + h1, sh);
        if (h0 && before <= thr && before + h0 > thr) {
            sh.result_key = b0;
            sh.result_below = before;
            sh.found = 1;
        } else if (h1 && before + h0 <= thr && before + h0 + h1 > thr) {
            sh.result_key = b0 + 1;
            sh.result_below = before + h0;
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
__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(int* tokens, int* finished, const bf16* logits, int V, int n, float temperature, int top_k,
                  int top_p_on, float remove_frac, u64 seed, const int* seq_ids, int seq_offset, const int* steps,
                  const int* stop_ids, int num_stop, int pad_id) {
    __shared__ SampleShared sh;
    const int m = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (finished && finished[m]) {
        if (tid == 0) tokens[m] = pad_id;
        return;
    }
    const bf16* row = logits + (size_t)m * V;
    const bool vec = (V % 8 == 0) && ((reinterpret_cast<uintptr_t>(logits) & 15) == 0);
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
        s_max = block_max(s_max, sh);
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
            total = block_sum_u64(total, sh);

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
                    // the tied tokens at key_cut all weigh m_cut; the r lowest ids among them are removed
                    const u64 m_cut = mass_of(from_order_key(key_cut), s_max);
                    const u64 r = (thr - below) / m_cut;
                    if (r > 0) {
                        unsigned id_key = 0;
                        u64 unused;
                        const unsigned kc = key_cut;
                        radix_select(row, n, vec, 20, r,
                                     [&](int id, float x, unsigned* key, u64* w) {
                                         *key = (unsigned)id;
                                         *w = order_key(warp_score(x, temperature)) == kc ? 1 : 0;
                                     },
                                     &id_key, &unused, sh);
                        id_cut = (int)id_key;
                    }
                    kept_total = total - below - r * m_cut;
                }
            }

            // the draw: the first id (increasing) whose cumulative kept mass exceeds u * kept_total
            const int seq = (seq_ids ? seq_ids[m] : m) + seq_offset, step = steps ? steps[m] : 0;
            const u64 bits = splitmix64(splitmix64(splitmix64(seed) ^ (u64)(unsigned)seq) ^ (u64)(unsigned)step);
            const double u = (double)(bits >> 11) * (1.0 / 9007199254740992.0);  // 53 bits in [0, 1)
            u64 target = (u64)(u * (double)kept_total);
            if (target >= kept_total) target = kept_total - 1;
            auto kept_mass = [&](int id, float x) -> u64 {
                float s = warp_score(x, temperature);
                unsigned key = order_key(s);
                bool kept = key >= key_k && (key > key_cut || (key == key_cut && id >= id_cut));
                return kept ? mass_of(s, s_max) : 0;
            };
            // warp w owns the contiguous chunks [w*per_warp, (w+1)*per_warp): their sums in id order locate the
            // warp holding the target, which then scans its chunks 32 at a time
            const int chunks = (n + 7) / 8, per_warp = (chunks + SAMPLE_WARPS - 1) / SAMPLE_WARPS;
            const int c_begin = warp * per_warp, c_end = min(chunks, c_begin + per_warp);
            auto chunk_mass = [&](int c) -> u64 {
                u64 sum = 0;
                for (int id = c * 8; id < min(c * 8 + 8, n); id++) sum += kept_mass(id, __bfloat162float(row[id]));
                return sum;
            };
            u64 mine = 0;
            for (int c = c_begin + lane; c < c_end; c += 32) mine += chunk_mass(c);
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
                    const u64 cm = c < c_end ? chunk_mass(c) : 0;
                    u64 incl = cm;
                    #pragma unroll
                    for (int off = 1; off < 32; off <<= 1) {
                        u64 o = __shfl_up_sync(0xffffffffu, incl, off);
                        if (lane >= off) incl += o;
                    }
                    const bool here = cm > 0 && rel >= incl - cm && rel < incl;
                    if (here) {
                        u64 cum = incl - cm;
                        for (int id = c * 8; id < min(c * 8 + 8, n); id++) {
                            cum += kept_mass(id, __bfloat162float(row[id]));
                            if (rel < cum) { sh.ival = id; break; }
                        }
                    }
                    if (__any_sync(0xffffffffu, here)) break;
                    rel -= __shfl_sync(0xffffffffu, incl, 31);
                }
            }
            __syncthreads();
            token = sh.ival;
        }
    }
    if (tid == 0) {
        tokens[m] = token;
        if (finished)
            for (int i = 0; i < num_stop; i++)
                if (token == stop_ids[i]) finished[m] = 1;
    }
}

// ------------------------------------------------------------------------------------------------
// kernel launchers

void sample_tokens(int* tokens, int* finished, const bf16* logits, int M, int V, const SamplerConfig& config,
                   uint64_t seed, const int* seq_ids, const int* steps, const int* stop_ids, int num_stop, int pad_id,
                   cudaStream_t stream, int seq_offset) {
    sampler_check(config, V);
    if (V >= (1 << 20))
        throw GrpoError("sample_tokens: V = " + std::to_string(V) + " must be below 2^20 (ids are 20-bit radix keys)");
    if (num_stop > 0 && !stop_ids) throw GrpoError("sample_tokens: num_stop > 0 needs stop_ids");
    if (M <= 0) return;
    const int n = config.vocab_limit > 0 ? config.vocab_limit : V;
    // HF casts the Python floats to fp32 where they meet the fp32 scores; sampler_warp does the same
    const float temperature = (float)config.temperature;
    const float remove_frac = (float)(1.0 - config.top_p);
    const int top_p_on = config.top_p < 1.0 ? 1 : 0;
    sample_kernel<<<M, SAMPLE_THREADS, 0, stream>>>(tokens, finished, logits, V, n, temperature, config.top_k, top_p_on,
                                                    remove_frac, (u64)seed, seq_ids, seq_offset, steps, stop_ids, num_stop,
                                                    pad_id);
    cudaCheck(cudaGetLastError());
}
