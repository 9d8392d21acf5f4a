// test_decode.cpp: batched generation on the GPU: the KV cache writes, decode attention against cpu_attention_forward over a cache, and the sampler against sample_token / sampler_warp (greedy, kept sets, frequencies, stops, batching).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/rng.h"
#include "data/text.h"
#include "kernels/cuda_common.cuh"
#include "kernels/decode_attention.cuh"
#include "kernels/kv_cache.cuh"
#include "kernels/sample.cuh"
#include "model/cpu_model.h"
#include "model/sampler.h"
#include "quant/bf16.h"
#include "test/gpu/gpu_test_util.h"

namespace {

// ---- KV cache + decode attention --------------------------------------------------------------------------------

// B sequences with their cached lengths, in S slots: packed prefill rows (all but each sequence's last
// position) go in with kv_cache_write_prefill, the last position with kv_cache_append, as a decode step does.
struct DecodeProblem {
    int M, NH, KVH, HD, max_T, S;
    std::vector<int> lens, slots;
    std::vector<float> q, k_rows, v_rows;  // q [M, NH*HD]; k/v of sequence m: rows [M][max_T][KVH*HD] (floats)
    DeviceBf16 d_q, d_out, d_k_cache, d_v_cache;
    DeviceArray<int> d_slots, d_lens;

    // extra_T: cache positions past the longest sequence (a plan fixed for a longer final length)
    DecodeProblem(int M_, int NH_, int KVH_, int HD_, std::vector<int> lens_, uint64_t seed, int extra_T = 3)
        : M(M_), NH(NH_), KVH(KVH_), HD(HD_), lens(lens_) {
        max_T = *std::max_element(lens.begin(), lens.end()) + extra_T;
        S = M + 2;
        Rng rng(seed);
        slots = random_slots(M, S, rng);
        const int KV = KVH * HD;
        // q in [-2, 2]: scaled scores with std ~0.7, softmax rows neither flat nor one-hot (as test_attention)
        RandomBf16 rq((size_t)M * NH * HD, rng, -2.0f, 2.0f);
        RandomBf16 rk((size_t)M * max_T * KV, rng, -1.0f, 1.0f), rv((size_t)M * max_T * KV, rng, -1.0f, 1.0f);
        q = rq.values, k_rows = rk.values, v_rows = rv.values;
        d_q.assign(rq.bits);
        d_out.allocate((size_t)M * NH * HD);
        cudaCheck(cudaMemset(d_out.ptr, 0xff, d_out.n * 2));  // NaN: an unwritten output cannot pass
        const size_t cache = kv_cache_layer_elems(S, KVH, max_T, HD);
        d_k_cache.allocate(cache);
        d_v_cache.allocate(cache);
        cudaCheck(cudaMemset(d_k_cache.ptr, 0xff, cache * 2));  // NaN where nothing was written
        cudaCheck(cudaMemset(d_v_cache.ptr, 0xff, cache * 2));

        // prefill: the first lens-1 positions of each sequence, packed
        std::vector<int> cu{0};
        std::vector<bf16_bits> pk, pv;
        int longest = 0;
        for (int m = 0; m < M; m++) {
            const int n = lens[m] - 1;
            longest = std::max(longest, n);
            const size_t at = (size_t)m * max_T * KV;
            pk.insert(pk.end(), rk.bits.begin() + at, rk.bits.begin() + at + (size_t)n * KV);
            pv.insert(pv.end(), rv.bits.begin() + at, rv.bits.begin() + at + (size_t)n * KV);
            cu.push_back(cu.back() + n);
        }
        pk.resize(std::max<size_t>(pk.size(), 8));  // an all-length-1 batch has no prefill rows
        pv.resize(pk.size());
        DeviceBf16 d_pk(pk), d_pv(pv);
        DeviceArray<int> d_cu(cu);
        d_slots.assign(slots);
        kv_cache_write_prefill(d_k_cache.ptr, d_v_cache.ptr, d_pk.ptr, d_pv.ptr, d_cu.ptr, d_slots.ptr, M, longest, KVH,
                               HD, max_T, 0);
        // decode step: each sequence's last position appended at position lens-1
        std::vector<bf16_bits> nk, nv;
        std::vector<int> pos;
        for (int m = 0; m < M; m++) {
            const size_t at = ((size_t)m * max_T + lens[m] - 1) * KV;
            nk.insert(nk.end(), rk.bits.begin() + at, rk.bits.begin() + at + KV);
            nv.insert(nv.end(), rv.bits.begin() + at, rv.bits.begin() + at + KV);
            pos.push_back(lens[m] - 1);
        }
        DeviceBf16 d_nk(nk), d_nv(nv);
        DeviceArray<int> d_pos(pos);
        kv_cache_append(d_k_cache.ptr, d_v_cache.ptr, d_nk.ptr, d_nv.ptr, d_slots.ptr, d_pos.ptr, M, KVH, HD, max_T, 0);
        d_lens.assign(lens);
        cudaCheck(cudaDeviceSynchronize());
    }

    // cpu_attention_forward as the KV-cache path calls it: one query at position len-1 over keys 0..len-1
    std::vector<float> reference() const {
        const int KV = KVH * HD;
        std::vector<float> out((size_t)M * NH * HD);
        for (int m = 0; m < M; m++)
            cpu_attention_forward(out.data() + (size_t)m * NH * HD, nullptr, q.data() + (size_t)m * NH * HD,
                                  k_rows.data() + (size_t)m * max_T * KV, v_rows.data() + (size_t)m * max_T * KV, 1, 1,
                                  lens[m] - 1, lens[m], NH, KVH, HD, CpuPrecision::FP32);
        return out;
    }
};

}  // namespace

TEST_CASE("kv cache: prefill rows and appended tokens land in their slots, nothing else is written",
          "[gpu][decode][decode_attention]") {
    DecodeProblem p(3, 4, 2, 32, {6, 18, 1}, 11);
    const std::vector<bf16_bits> kc = p.d_k_cache.download<bf16_bits>(), vc = p.d_v_cache.download<bf16_bits>();
    const int KV = p.KVH * p.HD;
    size_t written = 0, mismatched = 0;
    std::vector<char> expected(kc.size(), 0);
    for (int m = 0; m < p.M; m++)
        for (int t = 0; t < p.lens[m]; t++)
            for (int h = 0; h < p.KVH; h++)
                for (int d = 0; d < p.HD; d++) {
                    const size_t at = kv_cache_offset(p.slots[m], h, t, p.KVH, p.max_T, p.HD) + d;
                    const size_t src = ((size_t)m * p.max_T + t) * KV + h * p.HD + d;
                    expected[at] = 1;
                    written++;
                    if (kc[at] != f32_to_bf16(p.k_rows[src]) || vc[at] != f32_to_bf16(p.v_rows[src])) mismatched++;
                }
    size_t stray = 0;  // anything else must still hold the 0xffff fill
    for (size_t i = 0; i < kc.size(); i++)
        if (!expected[i] && (kc[i] != 0xffff || vc[i] != 0xffff)) stray++;
    printf("  kv cache: %zu elements placed, %zu wrong, %zu stray writes\n", written, mismatched, stray);
    CHECK(mismatched == 0);
    CHECK(stray == 0);
    CHECK_THROWS_AS(kv_cache_write_prefill(p.d_k_cache.ptr, p.d_v_cache.ptr, p.d_q.ptr, p.d_q.ptr, p.d_lens.ptr, nullptr,
                                           1, p.max_T + 1, p.KVH, p.HD, p.max_T, 0),
                    GrpoError);
}

// Both kernels (decode_attention.cu: version 2 on the tensor cores, the default; version 1 on CUDA cores, the
// fallback) keep the probabilities to within 2^-18 relative (version 2 carries each as a bf16 pair, hi + lo) like
// the FP32 reference, and round out to bf16 once: relative error <= 2^-8, bf16's unit roundoff, reached just above
// a power of two (the worst elements sit at ~0.95 of this bound for that reason); the abs term covers the rest,
// fp32 summation order, exp2f's few ulps and the 2^-18 of p, ~1e-6 of sums of |p v| <= 1. A bf16 rounding of p
// (the prefill kernel's, or a version 2 without its lo half) would move most elements an ulp, which the
// inexact-share bound catches (reordering alone flips ~1% of the roundings, outputs near 0).
namespace {
void check_decode(const char* name, const DecodeProblem& p, const std::vector<float>& ref) {
    check_close(name, download_floats(p.d_out), ref, 1e-5f, 1.0f / 256.0f, 0.1);
}
}  // namespace

TEST_CASE("decode attention over the KV cache matches cpu_attention_forward, every head size and split",
          "[gpu][decode][decode_attention]") {
    struct Shape { int NH, KVH, HD; const char* what; };
    const Shape shapes[] = {{4, 2, 16, "tiny HD 16"},   {4, 2, 32, "tiny HD 32"}, {14, 2, 64, "0.5B"},
                            {28, 4, 128, "7B"},         {8, 8, 64, "no GQA"},     {16, 2, 128, "group of 8"}};
    Rng rng(5);
    for (const Shape& sh : shapes) {
        const int M = 5, longest = 300;
        std::vector<int> lens{1, longest, 37, 64, 129};  // one key, the longest, partial and whole warps of keys
        DecodeProblem p(M, sh.NH, sh.KVH, sh.HD, lens, rng.next_u64());
        const std::vector<float> ref = p.reference();
        // scratch for any split count used here (no automatic plan takes more than one split per 32 keys)
        DeviceArray<char> scratch(decode_attention_scratch_bytes(M, sh.NH, sh.HD, (longest + 31) / 32));
        for (int version : {1, 2})
            for (int splits : {1, 0, 3, 7}) {
                cudaCheck(cudaMemset(p.d_out.ptr, 0xff, p.d_out.n * 2));
                decode_attention_forward_version(version, p.d_out.ptr, p.d_q.ptr, p.d_k_cache.ptr, p.d_v_cache.ptr,
                                                 p.d_slots.ptr, p.d_lens.ptr, M, sh.NH, sh.KVH, sh.HD, p.max_T, longest,
                                                 splits, scratch.ptr, 0);
                char name[96];
                snprintf(name, sizeof name, "v%d %s, %s splits", version, sh.what,
                         splits ? std::to_string(splits).c_str() : "auto");
                check_decode(name, p, ref);
            }
    }
}

TEST_CASE("decode attention splits a 1500-key cache, repeats its bits and rejects what it cannot do",
          "[gpu][decode][decode_attention]") {
    const int M = 2;
    DecodeProblem p(M, 28, 4, 128, {1500, 700}, 99);
    const std::vector<float> ref = p.reference();
    const int used = decode_attention_auto_splits(M, 4, 1500);
    CHECK(used >= 2);  // a chunk holds at most DECODE_ATT_MAX_CHUNK keys
    DeviceArray<char> scratch(decode_attention_scratch_bytes(M, 28, 128, (1500 + 31) / 32));
    decode_attention_forward(p.d_out.ptr, p.d_q.ptr, p.d_k_cache.ptr, p.d_v_cache.ptr, p.d_slots.ptr, p.d_lens.ptr, M,
                             28, 4, 128, p.max_T, 1500, 0, scratch.ptr, 0);
    check_decode("7B, 1500 keys", p, ref);
    // deterministic: no atomics and fixed summation orders, so a second launch gives the same bits
    const std::vector<bf16_bits> first = p.d_out.download<bf16_bits>();
    cudaCheck(cudaMemset(p.d_out.ptr, 0xff, p.d_out.n * 2));
    decode_attention_forward(p.d_out.ptr, p.d_q.ptr, p.d_k_cache.ptr, p.d_v_cache.ptr, p.d_slots.ptr, p.d_lens.ptr, M,
                             28, 4, 128, p.max_T, 1500, 0, scratch.ptr, 0);
    CHECK(p.d_out.download<bf16_bits>() == first);
    decode_attention_forward_version(1, p.d_out.ptr, p.d_q.ptr, p.d_k_cache.ptr, p.d_v_cache.ptr, p.d_slots.ptr,
                                     p.d_lens.ptr, M, 28, 4, 128, p.max_T, 1500, 0, scratch.ptr, 0);
    check_decode("v1 7B, 1500 keys", p, ref);
    CHECK_THROWS_AS(decode_attention_forward(p.d_out.ptr, p.d_q.ptr, p.d_k_cache.ptr, p.d_v_cache.ptr, p.d_slots.ptr,
                                             p.d_lens.ptr, M, 28, 4, 128, p.max_T, 1500, 1, scratch.ptr, 0),
                    GrpoError);  // 1500 keys in one block
    CHECK_THROWS_AS(decode_attention_forward(p.d_out.ptr, p.d_q.ptr, p.d_k_cache.ptr, p.d_v_cache.ptr, p.d_slots.ptr,
                                             p.d_lens.ptr, M, 28, 4, 96, p.max_T, 1500, 0, scratch.ptr, 0),
                    GrpoError);  // HD 96
    CHECK_THROWS_AS(decode_attention_forward(p.d_out.ptr, p.d_q.ptr, p.d_k_cache.ptr, p.d_v_cache.ptr, p.d_slots.ptr,
                                             p.d_lens.ptr, M, 36, 4, 128, p.max_T, 1500, 0, scratch.ptr, 0),
                    GrpoError);  // 9 query heads per KV head
    CHECK_THROWS_AS(decode_attention_forward_version(3, p.d_out.ptr, p.d_q.ptr, p.d_k_cache.ptr, p.d_v_cache.ptr,
                                                     p.d_slots.ptr, p.d_lens.ptr, M, 28, 4, 128, p.max_T, 1500, 0,
                                                     scratch.ptr, 0),
                    GrpoError);  // no version 3
}

TEST_CASE("decode attention planned for a longer final length: blocks past every row's length change nothing",
          "[gpu][decode][decode_attention]") {
    // A captured generation step keeps max_len at the request's final length while lens grow token by token: most
    // blocks then start past their row's length and must leave neutral partials (or, unsplit, just the real keys).
    const int M = 4, max_len = 1000;
    DecodeProblem p(M, 28, 4, 128, {5, 200, 77, 130}, 7, max_len - 200);
    REQUIRE(p.max_T == max_len);
    const std::vector<float> ref = p.reference();
    DeviceArray<char> scratch(decode_attention_scratch_bytes(M, 28, 128, (max_len + 31) / 32));
    for (int version : {1, 2})
        for (int splits : {0, 1, 4}) {
            cudaCheck(cudaMemset(p.d_out.ptr, 0xff, p.d_out.n * 2));
            decode_attention_forward_version(version, p.d_out.ptr, p.d_q.ptr, p.d_k_cache.ptr, p.d_v_cache.ptr,
                                             p.d_slots.ptr, p.d_lens.ptr, M, 28, 4, 128, p.max_T, max_len, splits,
                                             scratch.ptr, 0);
            char name[96];
            snprintf(name, sizeof name, "v%d max_len %d, %s splits", version, max_len,
                     splits ? std::to_string(splits).c_str() : "auto");
            check_decode(name, p, ref);
        }
}

namespace {

// ---- sampling ---------------------------------------------------------------------------------------------------

// M rows of bf16 logits on the device and the floats they hold, for the CPU sampler.
struct LogitRows {
    int M, V;
    std::vector<float> values;
    std::vector<bf16_bits> bits;
    DeviceBf16 d;
    LogitRows(int M_, int V_, std::vector<float> v) : M(M_), V(V_), values(std::move(v)) {
        bits = to_bf16(values);
        d.assign(bits);
    }
};

// The GPU's tokens for rows (seq_ids, steps), default stop/finish handling off, with a workspace as the backend
// passes one (so configurations without top-k and top-p take the split path).
std::vector<int> gpu_sample(const LogitRows& rows, const SamplerConfig& cfg, uint64_t seed, const std::vector<int>& seq_ids,
                            const std::vector<int>& steps) {
    DeviceArray<int> tokens(rows.M), ids(seq_ids), st(steps);
    DeviceArray<char> workspace(sample_tokens_workspace_bytes(rows.M, rows.V));
    sample_tokens(tokens.ptr, nullptr, rows.d.ptr, rows.M, rows.V, cfg, seed, ids.ptr, st.ptr, nullptr, 0, -1,
                  workspace.ptr, workspace.n, 0);
    return tokens.download();
}

// Draws `rounds` x M tokens from M copies of one row (sequence ids 0..M-1, steps 0..rounds-1): counts per id.
std::vector<long> draw_counts(const std::vector<float>& row, int M, int rounds, const SamplerConfig& cfg, uint64_t seed) {
    const int V = (int)row.size();
    std::vector<float> all;
    for (int m = 0; m < M; m++) all.insert(all.end(), row.begin(), row.end());
    LogitRows rows(M, V, all);
    std::vector<long> counts(V, 0);
    std::vector<int> ids(M);
    std::iota(ids.begin(), ids.end(), 0);
    for (int r = 0; r < rounds; r++) {
        std::vector<int> tokens = gpu_sample(rows, cfg, seed, ids, std::vector<int>(M, r));
        for (int t : tokens) {
            REQUIRE(t >= 0);
            REQUIRE(t < V);
            counts[t]++;
        }
    }
    return counts;
}

// sampler_warp's kept set of a row and each kept token's probability (softmax over the kept, in double), plus
// the ids whose keep/remove decision lies within fp32 rounding of the top-p threshold: their cumulative
// probability (ascending order, ties by id, computed in double) is within 1e-5 of 1 - top_p. fp32 sums of up to
// 152064 terms drift by about that much, so the CPU and GPU may decide these either way.
struct KeptSet {
    std::vector<float> scores;
    std::vector<double> prob;
    std::vector<char> ambiguous;
    int kept = 0;
};
KeptSet kept_set(const std::vector<float>& row, const SamplerConfig& cfg) {
    const int V = (int)row.size();
    KeptSet ks;
    ks.scores.resize(V);
    sampler_warp(row.data(), V, cfg, ks.scores.data());
    ks.prob.assign(V, 0.0);
    ks.ambiguous.assign(V, 0);
    double mx = -INFINITY, sum = 0.0;
    for (float s : ks.scores) mx = std::max(mx, (double)s);
    for (int v = 0; v < V; v++)
        if (ks.scores[v] != -INFINITY) {
            ks.prob[v] = std::exp((double)ks.scores[v] - mx);
            sum += ks.prob[v];
            ks.kept++;
        }
    for (double& p : ks.prob) p /= sum;
    if (cfg.top_p < 1.0) {
        // the top-k survivors' cumulative probabilities in ascending order
        const int n = cfg.vocab_limit > 0 ? cfg.vocab_limit : V;
        std::vector<float> after_k(V);
        SamplerConfig no_p = cfg;
        no_p.top_p = 1.0;
        sampler_warp(row.data(), V, no_p, after_k.data());
        std::vector<int> order;
        double total = 0.0, mk = -INFINITY;
        for (int v = 0; v < n; v++)
            if (after_k[v] != -INFINITY) { order.push_back(v); mk = std::max(mk, (double)after_k[v]); }
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return after_k[a] < after_k[b]; });
        for (int v : order) total += std::exp(after_k[v] - mk);
        double cum = 0.0;
        const double thr = (double)(float)(1.0 - cfg.top_p);
        for (size_t j = 0; j + 1 < order.size(); j++) {  // the last (highest) token is kept whatever its sum
            cum += std::exp(after_k[order[j]] - mk) / total;
            if (std::fabs(cum - thr) < 1e-5) ks.ambiguous[order[j]] = 1;
        }
    }
    return ks;
}

// No removed token is ever drawn; every kept token expected at least 20 times is drawn (e^-20: never by chance).
void check_kept(const char* what, const std::vector<float>& row, const SamplerConfig& cfg, int M, int rounds) {
    INFO(what);
    const KeptSet ks = kept_set(row, cfg);
    const std::vector<long> counts = draw_counts(row, M, rounds, cfg, 1234);
    const double draws = (double)M * rounds;
    long removed_drawn = 0, kept_missing = 0, kept_checked = 0, ambiguous = 0;
    for (size_t v = 0; v < row.size(); v++) {
        if (ks.ambiguous[v]) { ambiguous++; continue; }
        if (ks.scores[v] == -INFINITY && counts[v] > 0) removed_drawn++;
        if (ks.scores[v] != -INFINITY && ks.prob[v] * draws >= 20.0) {
            kept_checked++;
            if (counts[v] == 0) kept_missing++;
        }
    }
    printf("  %-40s kept %d of %zu; %ld removed ids drawn, %ld of %ld likely kept ids never drawn, %ld ambiguous\n", what,
           ks.kept, row.size(), removed_drawn, kept_missing, kept_checked, ambiguous);
    CHECK(removed_drawn == 0);
    CHECK(kept_missing == 0);
    CHECK(kept_checked > 0);
    CHECK(ambiguous <= 2 + ks.kept / 1000);  // a handful at most, or the check says little
}

// Uniform logits already rounded to bf16: the GPU samples the bf16 row, so the CPU reference must see the same
// values (ties among them decide top-k and top-p boundaries).
std::vector<float> uniform_row(int V, Rng& rng, float lo, float hi) {
    std::vector<float> row(V);
    fill_uniform(row, rng, lo, hi);
    to_bf16(row);
    return row;
}

}  // namespace

TEST_CASE("GPU greedy decoding equals sample_token's argmax, lowest id on ties, never past vocab_limit",
          "[gpu][decode][decode_sample]") {
    const int M = 6, V = 152064, limit = 151665;
    Rng rng(21);
    std::vector<float> all((size_t)M * V);
    fill_uniform(all, rng, -8.0f, 8.0f);  // bf16 spacing near 8 is 1/32: the maximum is tied on most rows
    all[(size_t)1 * V + 151700] = 50.0f;   // row 1: the largest logit is a padding id
    for (int id : {9000, 700, 150000}) all[(size_t)2 * V + id] = 20.0f;  // row 2: a three-way tie
    for (int v = 0; v < V; v++) all[(size_t)3 * V + v] = 1.0f;           // row 3: all equal
    for (int v = 0; v < V; v++) all[(size_t)4 * V + v] = -INFINITY;     // row 4: all -inf (sample_token: id 0)
    LogitRows rows(M, V, all);
    SamplerConfig cfg;
    cfg.temperature = 0.0;
    cfg.vocab_limit = limit;
    const std::vector<int> got = gpu_sample(rows, cfg, 7, std::vector<int>(M, 0), std::vector<int>(M, 0));
    int ties = 0;
    for (int m = 0; m < M; m++) {
        const float* row = rows.values.data() + (size_t)m * V;
        Rng unused(0);
        const int want = sample_token(row, V, cfg, unused);
        ties += std::count(row, row + limit, row[want]) > 1;
        INFO("row " << m);
        CHECK(got[m] == want);
    }
    printf("  greedy: %d rows, %d with a tied maximum\n", M, ties);
    CHECK(ties >= 3);
}

TEST_CASE("GPU top-k / top-p keep exactly sampler_warp's set", "[gpu][decode][decode_sample]") {
    Rng rng(77);
    SamplerConfig cfg;
    cfg.temperature = 0.7;
    cfg.top_k = 20;
    check_kept("top-k 20, T 0.7", uniform_row(1000, rng, -2.0f, 2.0f), cfg, 64, 100);

    cfg = SamplerConfig();
    cfg.top_p = 0.9;
    check_kept("top-p 0.9, T 1", uniform_row(2000, rng, -4.0f, 8.0f), cfg, 64, 100);

    cfg = SamplerConfig();
    cfg.temperature = 0.6;
    cfg.top_k = 50;
    cfg.top_p = 0.8;
    check_kept("top-k 50 + top-p 0.8, T 0.6", uniform_row(3000, rng, -3.0f, 3.0f), cfg, 64, 100);

    // few distinct values: ties straddle both the k-th score and the top-p boundary (then ids decide)
    std::vector<float> tied(600);
    for (float& x : tied) x = (float)rng.next_below(6);
    cfg = SamplerConfig();
    cfg.top_k = 150;
    check_kept("ties: top-k 150", tied, cfg, 64, 100);
    cfg.top_k = 0;
    cfg.top_p = 0.5;
    check_kept("ties: top-p 0.5", tied, cfg, 64, 100);

    // all equal, top-p 0.5: the lower-id half is removed (stable ascending order)
    cfg = SamplerConfig();
    cfg.top_p = 0.5;
    check_kept("all equal: top-p 0.5", std::vector<float>(64, 0.25f), cfg, 64, 40);

    // top-p 0: only the highest score stays, the highest id among its ties
    std::vector<float> row = uniform_row(500, rng, -1.0f, 1.0f);
    for (int id : {17, 230, 401}) row[id] = 3.0f;
    cfg = SamplerConfig();
    cfg.top_p = 0.0;
    check_kept("top-p 0", row, cfg, 64, 10);

    // the Qwen vocabulary: padding ids hold the largest logits and must never be drawn
    row = uniform_row(152064, rng, -4.0f, 4.0f);
    for (int i = 0; i < 40; i++) row[rng.next_below(2000) * 7] = 9.0f + (float)rng.next_below(4);
    for (int id = 151665; id < 152064; id += 13) row[id] = 30.0f;
    cfg = SamplerConfig();
    cfg.temperature = 0.9;
    cfg.top_p = 0.95;
    cfg.vocab_limit = 151665;
    check_kept("V 152064, top-p 0.95, vocab_limit", row, cfg, 64, 100);
    cfg.top_p = 1.0;
    cfg.top_k = 30;
    check_kept("V 152064, top-k 30, vocab_limit", row, cfg, 64, 100);
}

TEST_CASE("GPU sampling frequencies match the kept softmax (chi-square at a fixed seed)", "[gpu][decode][decode_sample]") {
    Rng rng(3);
    const std::vector<float> row = uniform_row(1000, rng, -1.0f, 1.0f);
    SamplerConfig cfg;
    cfg.temperature = 0.7;
    cfg.top_k = 20;
    const KeptSet ks = kept_set(row, cfg);
    const int M = 64, rounds = 200;
    const std::vector<long> counts = draw_counts(row, M, rounds, cfg, 99);
    const double draws = (double)M * rounds;
    double chi2 = 0.0, min_expected = 1e300;
    for (size_t v = 0; v < row.size(); v++) {
        if (ks.scores[v] == -INFINITY) continue;
        const double e = ks.prob[v] * draws;
        min_expected = std::min(min_expected, e);
        chi2 += (counts[v] - e) * (counts[v] - e) / e;
    }
    // the 0.999 quantile of chi-square with kept-1 degrees of freedom (Wilson-Hilferty; z = 3.09)
    const double df = ks.kept - 1, z = 3.09;
    const double bound = df * std::pow(1.0 - 2.0 / (9.0 * df) + z * std::sqrt(2.0 / (9.0 * df)), 3.0);
    printf("  chi-square over %d kept ids, %.0f draws: %.2f (0.999 bound %.2f, smallest expected count %.0f)\n", ks.kept,
           draws, chi2, bound, min_expected);
    REQUIRE(min_expected >= 5.0);  // the chi-square approximation needs it
    CHECK(chi2 < bound);
}

TEST_CASE("GPU sampling: stop ids finish sequences, finished ones draw nothing, batching changes no draw",
          "[gpu][decode][decode_sample]") {
    const int V = 300, M = 6, pad = -2;  // no id: a finished row's token cannot be mistaken for a draw
    std::vector<float> all((size_t)M * V);
    Rng rng(8);
    fill_uniform(all, rng, -1.0f, 1.0f);
    const int stop_of_row[M] = {-1, 5, 5, 7, 7, -1};  // the greedy token of rows 1-4 is a stop id
    for (int m = 0; m < M; m++)
        if (stop_of_row[m] >= 0) all[(size_t)m * V + stop_of_row[m]] = 5.0f;
    LogitRows rows(M, V, all);
    DeviceArray<int> tokens(M), finished(std::vector<int>{0, 1, 0, 0, 1, 0}), stops(std::vector<int>{5, 7});
    SamplerConfig cfg;
    cfg.temperature = 0.0;
    sample_tokens(tokens.ptr, finished.ptr, rows.d.ptr, M, V, cfg, 1, nullptr, nullptr, stops.ptr, 2, pad, nullptr, 0,
                  0);
    const std::vector<int> tok = tokens.download(), fin = finished.download();
    CHECK(tok[1] == pad);  // finished before: no draw
    CHECK(tok[4] == pad);
    CHECK(tok[2] == 5);
    CHECK(tok[3] == 7);
    CHECK(fin == std::vector<int>{0, 1, 1, 1, 1, 0});
    CHECK(tok[0] != pad);
    CHECK(tok[5] != pad);

    // a sequence's draw depends on (seed, its id, its step) only: batched, alone, or in another order
    cfg = SamplerConfig();
    cfg.temperature = 1.0;
    cfg.top_p = 0.95;
    std::vector<float> flat((size_t)M * V);
    fill_uniform(flat, rng, -0.5f, 0.5f);  // flat rows: hundreds of candidates, so equal draws are no accident
    LogitRows batch(M, V, flat);
    const std::vector<int> ids{40, 41, 42, 43, 44, 45}, steps{3, 9, 0, 12, 5, 7};
    const std::vector<int> together = gpu_sample(batch, cfg, 2024, ids, steps);
    CHECK(gpu_sample(batch, cfg, 2024, ids, steps) == together);
    int equal_to_neighbour = 0;
    for (int m = 0; m < M; m++) {
        LogitRows one(1, V, std::vector<float>(flat.begin() + (size_t)m * V, flat.begin() + (size_t)(m + 1) * V));
        CHECK(gpu_sample(one, cfg, 2024, {ids[m]}, {steps[m]})[0] == together[m]);
        equal_to_neighbour += gpu_sample(one, cfg, 2024, {ids[m]}, {steps[m] + 1})[0] == together[m];
    }
    CHECK(equal_to_neighbour <= 1);  // the next step is a different draw
    CHECK_THROWS_AS(gpu_sample(batch, SamplerConfig{1.0, 1.5, 0, 0}, 1, ids, steps), GrpoError);
}

namespace {

// Rows for the split path's comparison with the one-block kernel, kind m % 8 for row m (kind 0 alone when M = 1):
enum SplitRowKind {
    FLAT,         // uniform in [-1, 1]: hundreds of candidates, so a draw lands deep in the running mass
    PEAKED,       // uniform in [-6, 6] and 40 strong candidates (padding ids past vocab_limit the strongest)
    ONE_FINITE,   // -inf but for one id, the first stop id: always drawn, and it finishes the row
    TIED_MAX,     // five ids tied at the maximum, the rest negligible: the running mass in id order picks one
    HAS_NAN,      // flat with a NaN: never drawn
    FINISHED,     // finished before the call: pad, nothing drawn
    ALL_NEG_INF,  // nothing to draw: -1
    HAS_POS_INF,  // a +inf logit leaves the row no mass: -1
    KINDS
};
// The rows' logits; kinds[m] each row's kind, specials[m] its ids that matter (the ONE_FINITE id, the TIED_MAX ids,
// the HAS_NAN id).
std::vector<float> split_rows(int M, int V, int n, int stop_id, Rng& rng, std::vector<int>* kinds,
                              std::vector<std::vector<int>>* specials) {
    std::vector<float> all((size_t)M * V);
    kinds->assign(M, FLAT);
    specials->assign(M, {});
    for (int m = 0; m < M; m++) {
        float* row = all.data() + (size_t)m * V;
        const int kind = M == 1 ? FLAT : m % KINDS;
        (*kinds)[m] = kind;
        std::vector<int>& ids = (*specials)[m];
        for (int v = 0; v < V; v++) row[v] = -1.0f + 2.0f * rng.next_float();
        if (kind == PEAKED) {
            for (int v = 0; v < V; v++) row[v] = -6.0f + 12.0f * rng.next_float();
            for (int i = 0; i < 40; i++) row[rng.next_below(n)] = 12.0f + 6.0f * rng.next_float();
            for (int v = n; v < V; v++) row[v] = 30.0f;
        } else if (kind == ONE_FINITE) {
            for (int v = 0; v < V; v++) row[v] = -INFINITY;
            row[stop_id] = 0.5f;
            ids.push_back(stop_id);
        } else if (kind == TIED_MAX) {
            // the rest so far below that their fixed-point masses are 0: every draw lands on a tied id
            for (int v = 0; v < V; v++) row[v] = -60.0f + 20.0f * rng.next_float();
            for (int i = 0; i < 5; i++) ids.push_back(rng.next_below(n));
            for (int id : ids) row[id] = 3.0f;
        } else if (kind == HAS_NAN) {
            ids.push_back(rng.next_below(n));
            row[ids[0]] = NAN;
        } else if (kind == ALL_NEG_INF) {
            for (int v = 0; v < V; v++) row[v] = -INFINITY;
        } else if (kind == HAS_POS_INF) {
            row[rng.next_below(n)] = INFINITY;
        }
    }
    return all;
}

}  // namespace

TEST_CASE("GPU sampling: the split path draws exactly the one-block kernel's tokens", "[gpu][decode][decode_sample]") {
    // With no top-k and no top-p the draw needs only the row's max and its masses summed in id order, exact integers
    // however the row is cut: the split path must give the same token (and finish the same rows) bit for bit.
    struct Case { int V; SamplerConfig cfg; const char* what; };
    auto config = [](double t, int k, int limit) {
        SamplerConfig c;
        c.temperature = t;
        c.top_k = k;
        c.vocab_limit = limit;
        return c;
    };
    const Case cases[] = {
        {152064, config(1.0, 0, 151665), "V 152064, T 1, vocab_limit 151665 (16-byte loads, ragged last chunk)"},
        {152064, config(0.7, 0, 0), "V 152064, T 0.7"},
        {5001, config(1.0, 0, 0), "V 5001, T 1 (element loads: V not a multiple of 8; 3 chunks)"},
        {5001, config(1.3, 6000, 4097), "V 5001, T 1.3, vocab_limit 4097 (1 id in the last chunk), top-k past n"},
    };
    const int pad = -2, stop_id = 77;
    const uint64_t seeds[] = {1, 2024, 99991};
    const int rounds = 4;
    for (const Case& c : cases)
        for (int M : {1, 6, 64}) {
            const int n = c.cfg.vocab_limit > 0 ? c.cfg.vocab_limit : c.V;
            Rng rng(1000 + M);
            std::vector<int> kinds;
            std::vector<std::vector<int>> specials;
            LogitRows rows(M, c.V, split_rows(M, c.V, n, stop_id, rng, &kinds, &specials));
            std::vector<int> finished0(M), seq_ids(M);
            for (int m = 0; m < M; m++) {
                finished0[m] = kinds[m] == FINISHED;
                seq_ids[m] = 3 * m + 11;
            }
            DeviceArray<int> stops(std::vector<int>{stop_id, 5});
            DeviceArray<int> ids(seq_ids);
            // garbage in the workspace: the split path must need no set-up
            DeviceArray<char> workspace(sample_tokens_workspace_bytes(M, c.V));
            cudaCheck(cudaMemset(workspace.ptr, 0xff, workspace.n));
            long draws = 0, differ = 0, wrong = 0;
            std::vector<std::vector<int>> flat_tokens(M);
            for (uint64_t seed : seeds)
                for (int round = 0; round < rounds; round++) {
                    std::vector<int> steps(M);
                    for (int m = 0; m < M; m++) steps[m] = round * 5 + m % 3;
                    DeviceArray<int> st(steps);
                    std::vector<int> tok[3], fin[3];
                    for (int version = 0; version < 3; version++) {  // 0: sample_tokens' own choice, the split path
                        DeviceArray<int> tokens(M), finished(finished0);
                        sample_tokens_version(version, tokens.ptr, finished.ptr, rows.d.ptr, M, c.V, c.cfg, seed,
                                              ids.ptr, st.ptr, stops.ptr, 2, pad, workspace.ptr, workspace.n, 0);
                        tok[version] = tokens.download();
                        fin[version] = finished.download();
                    }
                    for (int m = 0; m < M; m++) {
                        draws++;
                        differ += tok[2][m] != tok[1][m] || fin[2][m] != fin[1][m] || tok[0][m] != tok[2][m] ||
                                  fin[0][m] != fin[2][m];
                        const int t = tok[2][m];
                        const std::vector<int>& sp = specials[m];
                        bool ok = true;
                        switch (kinds[m]) {
                        case ONE_FINITE: ok = t == stop_id && fin[2][m] == 1; break;
                        case TIED_MAX: ok = std::find(sp.begin(), sp.end(), t) != sp.end(); break;
                        case HAS_NAN: ok = t >= 0 && t < n && t != sp[0]; break;
                        case FINISHED: ok = t == pad && fin[2][m] == 1; break;
                        case ALL_NEG_INF:
                        case HAS_POS_INF: ok = t == -1; break;
                        default: ok = t >= 0 && t < n; break;
                        }
                        if (!ok && wrong < 3)
                            printf("    unexpected: row %d of kind %d drew %d (finished %d)\n", m, kinds[m], t,
                                   fin[2][m]);
                        wrong += !ok;
                        if (kinds[m] == FLAT) flat_tokens[m].push_back(t);
                    }
                }
            // the split path did run: it wrote its workspace (whatever its layout)
            const std::vector<char> ws_after = workspace.download();
            CHECK(std::count(ws_after.begin(), ws_after.end(), (char)0xff) < (long)ws_after.size());
            // flat rows: the draws of one row must be spread (equal tokens would make the comparison say little)
            long repeated = 0;
            for (std::vector<int>& t : flat_tokens) {
                std::sort(t.begin(), t.end());
                repeated += (long)(t.end() - std::unique(t.begin(), t.end()));
            }
            printf("  split path, %s, M %d: %ld draws, %ld differ from the one-block kernel, %ld unexpected, "
                   "%ld repeats on flat rows\n", c.what, M, draws, differ, wrong, repeated);
            INFO(c.what << ", M " << M);
            CHECK(differ == 0);
            CHECK(wrong == 0);
            CHECK(repeated <= 2);
        }
}

TEST_CASE("GPU sampling: the split path refuses what it cannot draw", "[gpu][decode][decode_sample]") {
    const int M = 6, V = 1000;
    Rng rng(5);
    LogitRows rows(M, V, uniform_row(M * V, rng, -1.0f, 1.0f));
    DeviceArray<int> tokens(M);
    const size_t need = sample_tokens_workspace_bytes(M, V);
    DeviceArray<char> workspace(need + 8);  // room for a misaligned start
    auto split = [&](const SamplerConfig& cfg, void* ws, size_t bytes) {
        sample_tokens_version(2, tokens.ptr, nullptr, rows.d.ptr, M, V, cfg, 1, nullptr, nullptr, nullptr, 0, -1, ws,
                              bytes, 0);
    };
    SamplerConfig cfg;
    split(cfg, workspace.ptr, workspace.n);  // the default configuration: fine
    CHECK(tokens.download()[0] >= 0);
    SamplerConfig greedy = cfg, top_k = cfg, top_p = cfg;
    greedy.temperature = 0.0;
    top_k.top_k = 50;
    top_p.top_p = 0.9;
    CHECK_THROWS_AS(split(greedy, workspace.ptr, workspace.n), GrpoError);
    CHECK_THROWS_AS(split(top_k, workspace.ptr, workspace.n), GrpoError);
    CHECK_THROWS_AS(split(top_p, workspace.ptr, workspace.n), GrpoError);
    CHECK_THROWS_AS(split(cfg, nullptr, 0), GrpoError);
    CHECK_THROWS_AS(split(cfg, workspace.ptr, need - 1), GrpoError);
    CHECK_THROWS_AS(split(cfg, workspace.ptr + 4, need), GrpoError);  // large enough, not 8-byte aligned
    CHECK_THROWS_AS(sample_tokens_version(3, tokens.ptr, nullptr, rows.d.ptr, M, V, cfg, 1, nullptr, nullptr, nullptr,
                                          0, -1, nullptr, 0, 0),
                    GrpoError);
    CHECK_THROWS_AS(sample_tokens_workspace_bytes(-1, V), GrpoError);
    // a workspace too small for M is an error even when sample_tokens chooses the path itself
    CHECK_THROWS_AS(sample_tokens(tokens.ptr, nullptr, rows.d.ptr, M, V, cfg, 1, nullptr, nullptr, nullptr, 0, -1,
                                  workspace.ptr, sample_tokens_workspace_bytes(M - 1, V), 0),
                    GrpoError);
}
