// decode_attention.cu (lab): decode-time GQA attention over the bf16 KV cache, validated against cpu_attention_forward used as the KV-cache path calls it, and timed against the HBM roofline at Qwen2.5-7B decode shapes.
// Build and run: make build/lab_decode_attention && ./build/lab_decode_attention
//
// Both versions live in kernels/decode_attention.cu (decode_attention_forward_version picks one; the launcher the
// backend calls runs DECODE_ATT_DEFAULT_VERSION, 2):
// Version 1 (CUDA cores, the fallback): one block per (sequence, KV head, split), 128 threads, three phases: every
//   thread dots whole key rows with the group's queries read from shared memory (2 float4 loads per 8 FMAs, each
//   thread reading a 256-byte row: poorly coalesced), a [G][chunk] score buffer softmaxed in place, then p v.
//   Its plan splits the cache for ~2 blocks per SM, so it always pays the combine kernel.
// Version 2 (tensor cores, flash-decoding): the same blocks, 4 warps each taking 16-key tiles in turn, streamed
//   through shared memory with cp.async (3 tiles per warp, no block barrier in the loop); S = Q K^T and O += P V
//   on mma.sync m16n8k16 with the <= 8 query heads as the rows, an online softmax in fp32 registers, P carried as
//   bf16 hi + lo in the tile's otherwise idle rows (fp32-class probabilities at no extra mma), the warps merged in
//   shared memory at the end. Its plan takes no split once M * KVH blocks fill the SMs (one kernel), else ~2
//   blocks per SM. The "alt" line runs version 2 with the other choice (2 splits, or 1) to show what the plan buys.
// Bytes: the K and V rows read (M * KVH * len * HD * 2 bf16 each) + q read + out written; the roofline is those
// bytes at the measured 4.27 TB/s. Tolerance: see test/gpu/test_decode.cpp (abs 1e-5, rel 2^-8: the bf16
// rounding of out, at most 2^-8 relative, on top of fp32 reordering; both versions keep the probabilities to
// 2^-18 relative, like the FP32 reference).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "dev/cuda/lab_common.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/decode_attention.cuh"
#include "kernels/kv_cache.cuh"
#include "model/cpu_model.h"

// The deliberate break: the same kernels compiled again ignoring each row's newest key. Validation must reject it.
// (Every header kernels/decode_attention.cu includes is already included above, so only its own code lands here.)
#include <algorithm>
#include <cstdint>
#include "data/text.h"
#include "kernels/mma.cuh"
namespace mutant {
#define DEC_DROP_KEYS 1
#include "kernels/decode_attention.cu"
}  // namespace mutant

typedef void (*DecodeFn)(int, __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*,
                         const int*, const int*, int, int, int, int, int, int, int, void*, cudaStream_t);

struct Case { int M, NH, KVH, HD, len; };
struct Run { int version, splits; std::string label; };

// Validates (and when timed, benchmarks) the versions on one shape; only_version > 0 runs just that version.
static bool run_case(const Case& c, Rng& rng, DecodeFn fn = decode_attention_forward_version, bool timed = true,
                     int only_version = 0) {
    const int M = c.M, NH = c.NH, KVH = c.KVH, HD = c.HD, L = c.len, max_T = L;
    std::vector<float> q((size_t)M * NH * HD), kc(kv_cache_layer_elems(M, KVH, max_T, HD)), vc(kc.size());
    fill_uniform(q, rng, -2.0f, 2.0f);
    fill_uniform(kc, rng);
    fill_uniform(vc, rng);
    std::vector<bf16_bits> qb = to_bf16(q), kb = to_bf16(kc), vb = to_bf16(vc);
    __nv_bfloat16* d_q = (__nv_bfloat16*)to_device(qb);
    __nv_bfloat16* d_k = (__nv_bfloat16*)to_device(kb);
    __nv_bfloat16* d_v = (__nv_bfloat16*)to_device(vb);
    __nv_bfloat16* d_out;
    cudaCheck(cudaMalloc(&d_out, (size_t)M * NH * HD * 2));
    int* d_lens = to_device(std::vector<int>(M, L));
    const int auto_splits = decode_attention_auto_splits(M, KVH, L);
    // enough for any plan here: neither version's automatic choice exceeds one split per 32 keys
    const int most_splits = std::max(2, (L + 31) / 32);
    void* d_scratch;
    cudaCheck(cudaMalloc(&d_scratch, std::max<size_t>(16, decode_attention_scratch_bytes(M, NH, HD, most_splits))));

    // the CPU reference on three rows (first, middle, last): the cache rows of a slot back in [len, KVH*HD] order
    const int check_rows[3] = {0, M / 2, M - 1};
    std::vector<float> ref((size_t)3 * NH * HD), kseq((size_t)L * KVH * HD), vseq(kseq.size());
    for (int i = 0; i < 3; i++) {
        const int m = check_rows[i];
        for (int t = 0; t < L; t++)
            for (int h = 0; h < KVH; h++)
                for (int d = 0; d < HD; d++) {
                    kseq[((size_t)t * KVH + h) * HD + d] = kc[kv_cache_offset(m, h, t, KVH, max_T, HD) + d];
                    vseq[((size_t)t * KVH + h) * HD + d] = vc[kv_cache_offset(m, h, t, KVH, max_T, HD) + d];
                }
        cpu_attention_forward(ref.data() + (size_t)i * NH * HD, nullptr, q.data() + (size_t)m * NH * HD, kseq.data(),
                              vseq.data(), 1, 1, L - 1, L, NH, KVH, HD, CpuPrecision::FP32);
    }
    printf("M %2d, len %4d (NH %d, KVH %d, HD %d): default plan %d split%s\n", M, L, NH, KVH, HD, auto_splits,
           auto_splits > 1 ? "s" : "");
    const double bytes = (double)M * KVH * L * HD * 2 * 2 + 2.0 * M * NH * HD * 2;
    std::vector<Run> runs = {{1, 0, "v1 cuda cores, auto plan"},
                             {2, 0, "v2 tensor cores, " + std::to_string(auto_splits) + " split" + (auto_splits > 1 ? "s" : "")}};
    const int alt = auto_splits > 1 ? 1 : 2;  // the other side of the plan's choice
    if (timed && (alt > 1 || L <= DECODE_ATT_MAX_CHUNK))
        runs.push_back({2, alt, "v2 alt, " + std::to_string(alt) + " split" + (alt > 1 ? "s" : "")});
    bool ok = true;
    for (const Run& r : runs) {
        if (only_version > 0 && r.version != only_version) continue;
        auto launch = [&]() {
            fn(r.version, d_out, d_q, d_k, d_v, nullptr, d_lens, M, NH, KVH, HD, max_T, L, r.splits, d_scratch, 0);
        };
        cudaCheck(cudaMemset(d_out, 0xff, (size_t)M * NH * HD * 2));
        launch();
        std::vector<float> got = bf16_to_floats(to_host((bf16_bits*)d_out, (size_t)M * NH * HD)), sub;
        for (int m : check_rows) sub.insert(sub.end(), got.begin() + (size_t)m * NH * HD, got.begin() + (size_t)(m + 1) * NH * HD);
        ok &= validate(r.label.c_str(), sub.data(), ref.data(), ref.size(), 1e-5f, 1.0f / 256.0f);
        if (timed) report(r.label.c_str(), time_kernel_ms(launch), bytes, 0);
    }
    if (timed) printf("  %-28s %9.4f ms  (the KV bytes at 4.27 TB/s)\n", "roofline", bytes / 4.27e9);
    cudaFree(d_q); cudaFree(d_k); cudaFree(d_v); cudaFree(d_out); cudaFree(d_lens); cudaFree(d_scratch);
    return ok;
}

int main() {
    setvbuf(stdout, nullptr, _IONBF, 0);  // every line out even if a case aborts
    Rng rng(2025);
    bool ok = true;
    for (int M : {6, 48, 64})
        for (int L : {256, 512, 768}) ok &= run_case({M, 28, 4, 128, L}, rng);  // Qwen2.5-7B
    ok &= run_case({64, 14, 2, 64, 512}, rng);                                  // Qwen2.5-0.5B
    ok &= run_case({64, 28, 4, 128, 2048}, rng);                                // a long cache: splits forced
    ok &= run_case({5, 4, 2, 16, 300}, rng);                                    // the small-head path
    printf("\ndeliberate break (the newest key ignored; its FAIL lines are expected):\n");
    bool caught = true;
    for (int version : {1, 2}) {
        const bool rejected = !run_case({6, 28, 4, 128, 256}, rng, mutant::decode_attention_forward_version, false, version);
        printf("  %-28s %s\n", ("v" + std::to_string(version) + " mutant rejected").c_str(),
               rejected ? "ok" : "FAIL: validation accepted a dropped key");
        caught &= rejected;
    }
    ok &= caught;
    printf("%s\n", ok ? "decode attention: all versions ok" : "decode attention: FAIL");
    return ok ? 0 : 1;
}
