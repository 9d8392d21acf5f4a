// test_decode_rope_append.cpp: a decode step's RoPE + KV-cache append in one launch (decode_rope_append) against the three launches it replaces (rope_forward on q and k, kv_cache_append) and against the CPU reference, bit for bit.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "data/rng.h"
#include "data/text.h"
#include "kernels/decode_rope_append.cuh"
#include "kernels/kv_cache.cuh"
#include "kernels/rope.cuh"
#include "model/cpu_model.h"
#include "quant/bf16.h"
#include "test/gpu/gpu_test_util.h"

namespace {

// One layer of a decode step: q, k, v of M rows and a cache of S slots that already holds random keys and values
// (so that a stray write and a missing one both change bits). Rows go to a shuffled subset of the slots, at
// positions that differ per row (0 and max_T - 1 among them); row bad_row sits at bad_position, outside
// [0, max_T). The tables have a row for position max_T, so the separate kernels can rotate that row without
// reading past them.
struct RopeAppendProblem {
    int M, NH, KVH, HD, max_T, S, bad_row;
    std::vector<int> slots, positions;
    RandomBf16 q, k, v, k_cache, v_cache;  // the caches in the GPU's layout [S][KVH][max_T][HD]
    std::vector<float> cos_table, sin_table;  // [max_T + 1, HD/2], bf16 values
    DeviceBf16 d_cos, d_sin;
    DeviceArray<int> d_slots, d_positions;

    RopeAppendProblem(int M_, int NH_, int KVH_, int HD_, int max_T_, int bad_position, Rng& rng)
        : M(M_), NH(NH_), KVH(KVH_), HD(HD_), max_T(max_T_), S(M_ + 3), bad_row(M_ / 2),
          q((size_t)M * NH * HD, rng, -3.0f, 3.0f), k((size_t)M * KVH * HD, rng, -3.0f, 3.0f),
          v((size_t)M * KVH * HD, rng, -3.0f, 3.0f), k_cache(kv_cache_layer_elems(S, KVH, max_T, HD), rng, -1.0f, 1.0f),
          v_cache(k_cache.values.size(), rng, -1.0f, 1.0f), cos_table((size_t)(max_T + 1) * HD / 2),
          sin_table(cos_table.size()) {
        slots = random_slots(M, S, rng);
        for (int m = 0; m < M; m++) positions.push_back((int)rng.next_below(max_T));
        positions[0] = max_T - 1;
        positions[M - 1] = 0;
        positions[bad_row] = bad_position;
        cpu_rope_tables(cos_table.data(), sin_table.data(), max_T + 1, HD, 1e6f, CpuPrecision::BF16);
        std::vector<float> c = cos_table, s = sin_table;
        d_cos.assign(to_bf16(c));
        d_sin.assign(to_bf16(s));
        d_slots.assign(slots);
        d_positions.assign(positions);
    }
};

// What a run leaves: q, k and both caches (GPU layout), as bits.
struct RopeAppendResult {
    std::vector<bf16_bits> q, k, k_cache, v_cache;
};

// fused: decode_rope_append; else the three launches decode_step made before it.
RopeAppendResult run_gpu(const RopeAppendProblem& p, bool fused) {
    DeviceBf16 q(p.q.bits), k(p.k.bits), v(p.v.bits), k_cache(p.k_cache.bits), v_cache(p.v_cache.bits);
    if (fused) {
        decode_rope_append(q.ptr, k_cache.ptr, v_cache.ptr, k.ptr, v.ptr, p.d_slots.ptr, p.d_positions.ptr, p.d_cos.ptr,
                           p.d_sin.ptr, p.M, p.NH, p.KVH, p.HD, p.max_T, 0);
    } else {
        rope_forward(q.ptr, q.ptr, p.d_positions.ptr, p.d_cos.ptr, p.d_sin.ptr, p.M, p.NH, p.HD, 0);
        rope_forward(k.ptr, k.ptr, p.d_positions.ptr, p.d_cos.ptr, p.d_sin.ptr, p.M, p.KVH, p.HD, 0);
        kv_cache_append(k_cache.ptr, v_cache.ptr, k.ptr, v.ptr, p.d_slots.ptr, p.d_positions.ptr, p.M, p.KVH, p.HD,
                        p.max_T, 0);
    }
    return {q.download<bf16_bits>(), k.download<bf16_bits>(), k_cache.download<bf16_bits>(),
            v_cache.download<bf16_bits>()};
}

// cpu_decode_rope_append in bf16 mode: q and both caches, the caches in the CPU's layout [S][max_T][KVH*HD].
RopeAppendResult run_cpu(const RopeAppendProblem& p) {
    std::vector<float> q = p.q.values;
    std::vector<float> k_cache = kv_cache_to_rows(p.k_cache.values, p.S, p.KVH, p.max_T, p.HD);
    std::vector<float> v_cache = kv_cache_to_rows(p.v_cache.values, p.S, p.KVH, p.max_T, p.HD);
    cpu_decode_rope_append(q.data(), k_cache.data(), v_cache.data(), p.k.values.data(), p.v.values.data(),
                           p.slots.data(), p.positions.data(), p.cos_table.data(), p.sin_table.data(), p.M, p.NH, p.KVH,
                           p.HD, p.max_T, CpuPrecision::BF16);
    return {to_bf16(q), {}, to_bf16(k_cache), to_bf16(v_cache)};
}

// How many elements of got differ from want in their bits, leaving out row skip_row (rows of row_elems elements;
// -1 leaves out nothing); printed under name.
size_t bits_differ(const char* name, const std::vector<bf16_bits>& got, const std::vector<bf16_bits>& want,
                   size_t row_elems = 1, int skip_row = -1) {
    REQUIRE(got.size() == want.size());
    size_t differ = 0;
    for (size_t i = 0; i < got.size(); i++)
        if (got[i] != want[i] && (int)(i / row_elems) != skip_row) differ++;
    printf("  %-44s %zu of %zu elements differ\n", name, differ, got.size());
    return differ;
}

}  // namespace

TEST_CASE("decode_rope_append gives the bits of rope_forward x2 + kv_cache_append and of the CPU reference",
          "[gpu][decode][decode_rope_append]") {
    struct Shape { int M, NH, KVH, HD, max_T; const char* what; };
    const Shape shapes[] = {{7, 28, 4, 128, 300, "7B"}, {64, 28, 4, 128, 40, "7B, M 64"}, {5, 4, 2, 32, 40, "small"},
                            {4, 2, 1, 16, 12, "HD 16 (one chunk a half)"}};
    Rng rng(31);
    for (const Shape& sh : shapes)
        for (int past_end : {1, 0}) {
            const int bad_position = past_end ? sh.max_T : -1;
            INFO(sh.what << ", the bad row at position " << bad_position);
            printf("== %s, M %d, the bad row at position %d\n", sh.what, sh.M, bad_position);
            const RopeAppendProblem p(sh.M, sh.NH, sh.KVH, sh.HD, sh.max_T, bad_position, rng);
            const size_t QD = (size_t)sh.NH * sh.HD, KVD = (size_t)sh.KVH * sh.HD;
            const RopeAppendResult fused = run_gpu(p, true), cpu = run_cpu(p);

            // against the CPU reference: every element, the bad row included (left alone on both sides)
            CHECK(bits_differ("q vs CPU", fused.q, cpu.q) == 0);
            CHECK(bits_differ("k cache vs CPU",
                              kv_cache_to_rows(fused.k_cache, p.S, p.KVH, p.max_T, p.HD), cpu.k_cache) == 0);
            CHECK(bits_differ("v cache vs CPU",
                              kv_cache_to_rows(fused.v_cache, p.S, p.KVH, p.max_T, p.HD), cpu.v_cache) == 0);
            // k is only read; the bad row's q keeps its values
            CHECK(bits_differ("k unchanged", fused.k, p.k.bits) == 0);
            std::vector<bf16_bits> bad_q(fused.q.begin() + p.bad_row * QD, fused.q.begin() + (p.bad_row + 1) * QD);
            CHECK(bits_differ("the bad row's q unchanged", bad_q,
                              std::vector<bf16_bits>(p.q.bits.begin() + p.bad_row * QD,
                                                     p.q.bits.begin() + (p.bad_row + 1) * QD)) == 0);
            // not vacuous: q was rotated and the rows in range were written. Row 0 alone, at max_T - 1, moves over
            // half of its q (the slowest pairs turn by less than a bf16 step, and position 0 by the identity); a
            // cache element keeps its bits only where a random old value meets the new one by chance, and no
            // element past the M - 1 rows' may change.
            const size_t q_moved = bits_differ("q moved (expected)", fused.q, p.q.bits);
            const size_t k_moved = bits_differ("k cache written (expected)", fused.k_cache, p.k_cache.bits);
            const size_t v_moved = bits_differ("v cache written (expected)", fused.v_cache, p.v_cache.bits);
            CHECK(q_moved >= QD / 2);
            CHECK(k_moved >= (size_t)(sh.M - 1) * KVD * 9 / 10);
            CHECK(k_moved <= (size_t)(sh.M - 1) * KVD);
            CHECK(v_moved >= (size_t)(sh.M - 1) * KVD * 9 / 10);
            CHECK(v_moved <= (size_t)(sh.M - 1) * KVD);

            // against the separate kernels, whose rotation of a position past the end reads the tables' extra row
            // (before the table, at -1, it would read outside them: not run)
            if (!past_end) continue;
            const RopeAppendResult separate = run_gpu(p, false);
            CHECK(bits_differ("q vs separate (bad row left out)", fused.q, separate.q, QD, p.bad_row) == 0);
            CHECK(bits_differ("k cache vs separate", fused.k_cache, separate.k_cache) == 0);
            CHECK(bits_differ("v cache vs separate", fused.v_cache, separate.v_cache) == 0);
        }
}

TEST_CASE("decode_rope_append rejects sizes it cannot do", "[gpu][decode][decode_rope_append]") {
    Rng rng(32);
    const RopeAppendProblem p(3, 4, 2, 32, 16, 16, rng);
    DeviceBf16 q(p.q.bits), k(p.k.bits), v(p.v.bits), k_cache(p.k_cache.bits), v_cache(p.v_cache.bits);
    auto launch = [&](int M, int NH, int KVH, int HD, int max_T) {
        decode_rope_append(q.ptr, k_cache.ptr, v_cache.ptr, k.ptr, v.ptr, p.d_slots.ptr, p.d_positions.ptr, p.d_cos.ptr,
                           p.d_sin.ptr, M, NH, KVH, HD, max_T, 0);
    };
    CHECK_THROWS_AS(launch(3, 4, 2, 24, 16), GrpoError);  // HD not a multiple of 16
    CHECK_THROWS_AS(launch(3, 4, 2, 8, 16), GrpoError);   // HD 8: half a chunk a half
    CHECK_THROWS_AS(launch(3, 0, 2, 32, 16), GrpoError);
    CHECK_THROWS_AS(launch(3, 4, 0, 32, 16), GrpoError);
    CHECK_THROWS_AS(launch(3, 4, 2, 32, 0), GrpoError);
    CHECK_THROWS_AS(launch(-1, 4, 2, 32, 16), GrpoError);
    launch(0, 4, 2, 32, 16);  // no rows: nothing to do, nothing written
    CHECK(bits_differ("M 0 leaves the k cache", k_cache.download<bf16_bits>(), p.k_cache.bits) == 0);
}
