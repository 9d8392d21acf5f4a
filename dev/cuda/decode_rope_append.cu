// decode_rope_append.cu (lab): a decode step's RoPE of q and k and its KV-cache append, as three launches and as one, validated bit for bit against cpu_decode_rope_append and timed at Qwen2.5-7B decode shapes.
// Build and run: make build/lab_decode_rope_append && ./build/lab_decode_rope_append
//
// Version 1 (separate, what decode_step launched before): rope_forward on q, rope_forward on k (both in place),
//   kv_cache_append: three launches, k written rotated and read back by the append.
// Version 2 (fused, kernels/decode_rope_append.cu, what decode_step launches): one thread per 8 pairs of one head
//   of one row, the row's q heads then its k heads; q rotated in place, k rotated straight into the cache with the
//   same chunks of v beside it. Same rotation code (rope_rotate8), so the same bits.
// Bytes: the op's own, counted once and the same for both versions: q read and written, k and v read, the new k
// and v rows written, each row's cos and sin rows, positions and slots. That is ~0.1 MB at M 6 and ~1.2 MB at
// M 64, a fraction of a microsecond at 4.27 TB/s: both versions are bound by launch and latency, which is what
// one launch instead of three saves. Each version is timed alone (time_kernel_ms) and as 28 calls replayed in a
// CUDA graph, a token step's layers (what generation replays), per call.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "dev/cuda/lab_common.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/decode_rope_append.cuh"
#include "kernels/kv_cache.cuh"
#include "kernels/rope.cuh"
#include "model/config.h"
#include "model/cpu_model.h"

typedef __nv_bfloat16 bf16;

// One layer's inputs on the device: q, k, v of M rows, the cache of S = M + 2 slots (GPU layout), the tables.
struct Buffers {
    bf16 *q, *k, *v, *k_cache, *v_cache, *cos_table, *sin_table;
    int *slots, *positions;
};

// Version 1 or 2 on b, as decode_step calls it.
static void run_version(int version, const Buffers& b, int M, int NH, int KVH, int HD, int max_T, cudaStream_t s) {
    if (version == 1) {
        rope_forward(b.q, b.q, b.positions, b.cos_table, b.sin_table, M, NH, HD, s);
        rope_forward(b.k, b.k, b.positions, b.cos_table, b.sin_table, M, KVH, HD, s);
        kv_cache_append(b.k_cache, b.v_cache, b.k, b.v, b.slots, b.positions, M, KVH, HD, max_T, s);
    } else {
        decode_rope_append(b.q, b.k_cache, b.v_cache, b.k, b.v, b.slots, b.positions, b.cos_table, b.sin_table, M, NH,
                           KVH, HD, max_T, s);
    }
}

static bf16* upload(const std::vector<bf16_bits>& bits) { return (bf16*)to_device(bits); }
static void download_into(std::vector<bf16_bits>* bits, const bf16* d) {
    *bits = to_host((const bf16_bits*)d, bits->size());
}

static bool run_case(int M, const Qwen2Config& cfg, int max_T, Rng& rng, cudaStream_t stream) {
    const int NH = cfg.NH, KVH = cfg.KVH, HD = cfg.HD, S = M + 2;
    const size_t QD = (size_t)NH * HD, KVD = (size_t)KVH * HD, cache = kv_cache_layer_elems(S, KVH, max_T, HD);
    printf("== M %d (NH %d, KVH %d, HD %d), cache of %d slots x %d positions\n", M, NH, KVH, HD, S, max_T);
    std::vector<float> q(M * QD), k(M * KVD), v(M * KVD), kc(cache), vc(cache);
    fill_uniform(q, rng, -3.0f, 3.0f);
    fill_uniform(k, rng, -3.0f, 3.0f);
    fill_uniform(v, rng, -3.0f, 3.0f);
    fill_uniform(kc, rng);
    fill_uniform(vc, rng);
    const std::vector<bf16_bits> qb = to_bf16(q), kb = to_bf16(k), vb = to_bf16(v);
    const std::vector<bf16_bits> kcb = to_bf16(kc), vcb = to_bf16(vc);
    const std::vector<int> slots = random_slots(M, S, rng);
    std::vector<int> positions(M);
    for (int& t : positions) t = (int)rng.next_below(max_T);
    std::vector<float> cos_table((size_t)max_T * HD / 2), sin_table(cos_table.size());
    cpu_rope_tables(cos_table.data(), sin_table.data(), max_T, HD, cfg.rope_theta, CpuPrecision::BF16);

    // the CPU reference, the caches in its layout [S][max_T][KVD]
    std::vector<float> ref_q = q, ref_kc = kv_cache_to_rows(kc, S, KVH, max_T, HD);
    std::vector<float> ref_vc = kv_cache_to_rows(vc, S, KVH, max_T, HD);
    cpu_decode_rope_append(ref_q.data(), ref_kc.data(), ref_vc.data(), k.data(), v.data(), slots.data(),
                           positions.data(), cos_table.data(), sin_table.data(), M, NH, KVH, HD, max_T,
                           CpuPrecision::BF16);

    Buffers b;
    b.cos_table = upload(to_bf16(cos_table));
    b.sin_table = upload(to_bf16(sin_table));
    b.slots = to_device(slots);
    b.positions = to_device(positions);
    b.k_cache = b.v_cache = b.q = b.k = b.v = nullptr;
    const double bytes = M * (QD * 2 * 2 + KVD * 2 * 4 + HD / 2 * 2 * 2 + 8.0);
    const char* names[3] = {"", "v1 separate (3 launches)", "v2 fused (1 launch)"};
    bool ok = true;
    for (int version : {1, 2}) {
        for (bf16* p : {b.q, b.k, b.v, b.k_cache, b.v_cache}) cudaCheck(cudaFree(p));
        // fresh inputs: the timed runs below rotate q (and version 1 k) again and again
        b.q = upload(qb);
        b.k = upload(kb);
        b.v = upload(vb);
        b.k_cache = upload(kcb);
        b.v_cache = upload(vcb);
        run_version(version, b, M, NH, KVH, HD, max_T, 0);
        std::vector<bf16_bits> got_q(qb.size()), got_kc(cache), got_vc(cache);
        download_into(&got_q, b.q);
        download_into(&got_kc, b.k_cache);
        download_into(&got_vc, b.v_cache);
        // exact bf16 products and HF's roundings on both sides: bit-equal
        std::vector<float> got = bf16_to_floats(got_q);
        ok &= validate((std::string(names[version]) + " q").c_str(), got.data(), ref_q.data(), got.size(), 0, 0);
        got = bf16_to_floats(kv_cache_to_rows(got_kc, S, KVH, max_T, HD));
        ok &= validate("  k cache", got.data(), ref_kc.data(), got.size(), 0, 0);
        got = bf16_to_floats(kv_cache_to_rows(got_vc, S, KVH, max_T, HD));
        ok &= validate("  v cache", got.data(), ref_vc.data(), got.size(), 0, 0);

        report(names[version], time_kernel_ms([&] { run_version(version, b, M, NH, KVH, HD, max_T, 0); }), bytes, 0);
        const float ms = time_as_graph(stream, [&](cudaStream_t s) {
                             for (int l = 0; l < cfg.L; l++) run_version(version, b, M, NH, KVH, HD, max_T, s);
                         }) / cfg.L;
        report("  per layer, a step's graph", ms, bytes, 0);
    }
    for (void* p : {(void*)b.q, (void*)b.k, (void*)b.v, (void*)b.k_cache, (void*)b.v_cache, (void*)b.cos_table,
                    (void*)b.sin_table, (void*)b.slots, (void*)b.positions})
        cudaCheck(cudaFree(p));
    return ok;
}

int main() {
    setvbuf(stdout, nullptr, _IONBF, 0);  // every line out even if a case aborts
    Rng rng(2026);
    const Qwen2Config q7 = qwen2_preset("7B");
    cudaStream_t stream;
    cudaCheck(cudaStreamCreate(&stream));
    bool ok = true;
    for (int M : {6, 64}) ok &= run_case(M, q7, 512, rng, stream);  // 7B, a 128 + 200 token request fits 512
    cudaCheck(cudaStreamDestroy(stream));
    printf("%s\n", ok ? "decode rope append: all versions ok" : "decode rope append: FAIL");
    return ok ? 0 : 1;
}
