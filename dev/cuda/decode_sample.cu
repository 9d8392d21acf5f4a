// decode_sample.cu (lab): GPU sampling of M rows of Qwen2.5 logits (greedy, temperature, top-k, top-p), validated against sample_token / sampler_warp and timed at V = 152064 for M = 6, 48, 64.
// Build and run: make build/lab_decode_sample && ./build/lab_decode_sample
//
// Version 1 (kernels/sample.cu, the launcher the backend calls): one 1024-thread block per row, no sort. Greedy is
//   one argmax pass. Sampling: a max pass; top-k as a radix selection of the k-th largest score (3 histogram
//   passes of 11 bits over the order-preserving key of the fp32 score); the kept mass in 40-bit fixed point; top-p
//   as a radix selection of the first kept token in ascending (score, id) order weighted by mass (3 passes, and 2
//   more over the ids when the boundary score is tied); the draw: per-warp sums over contiguous id ranges, then one
//   warp scans its range. 1 + 3 + 1 + 3 + 2 = 10 passes over the row, all but the first mostly from L2.
// Bytes: the bf16 logits read once (M * V * 2); the share printed is of 4.27 TB/s for that single read, so it
//   says how far the many passes and the one-block-per-row parallelism are from a streaming kernel.
// Validation: greedy tokens equal sample_token's exactly; every sampled token is in sampler_warp's kept set of its
//   row (the frequency and coverage checks are in test/gpu/test_decode.cpp).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "dev/cuda/lab_common.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/sample.cuh"
#include "model/sampler.h"

struct Named { const char* name; SamplerConfig cfg; };

int main() {
    const int V = 152064, limit = 151665, M_MAX = 64;
    Rng rng(77);
    // logit-like rows: a broad body and a few dozen strong candidates, so top-p keeps a few hundred ids
    std::vector<float> logits((size_t)M_MAX * V);
    fill_uniform(logits, rng, -6.0f, 6.0f);
    for (int m = 0; m < M_MAX; m++)
        for (int i = 0; i < 40; i++) logits[(size_t)m * V + rng.next_below(limit)] = 12.0f + 6.0f * rng.next_float();
    std::vector<bf16_bits> bits = to_bf16(logits);
    __nv_bfloat16* d_logits = (__nv_bfloat16*)to_device(bits);
    int *d_tokens, *d_seq, *d_steps;
    cudaCheck(cudaMalloc(&d_tokens, M_MAX * sizeof(int)));
    std::vector<int> seq(M_MAX);
    for (int m = 0; m < M_MAX; m++) seq[m] = m;
    d_seq = to_device(seq);
    d_steps = to_device(std::vector<int>(M_MAX, 0));

    auto config = [&](double t, int k, double p) {
        SamplerConfig c;
        c.temperature = t;
        c.top_k = k;
        c.top_p = p;
        c.vocab_limit = limit;
        return c;
    };
    const Named configs[] = {{"greedy", config(0.0, 0, 1.0)},
                             {"T 1", config(1.0, 0, 1.0)},
                             {"T 0.7 top-k 50", config(0.7, 50, 1.0)},
                             {"T 1 top-p 0.95", config(1.0, 0, 0.95)},
                             {"T 0.7 top-k 50 top-p 0.9", config(0.7, 50, 0.9)}};
    bool all_ok = true;
    for (const Named& nc : configs) {
        printf("%s (V %d, vocab_limit %d)\n", nc.name, V, limit);
        // validation on all 64 rows
        sample_tokens(d_tokens, nullptr, d_logits, M_MAX, V, nc.cfg, 1, d_seq, d_steps, nullptr, 0, -1, 0);
        std::vector<int> got = to_host(d_tokens, M_MAX);
        int bad = 0;
        std::vector<float> scores(V);
        for (int m = 0; m < M_MAX; m++) {
            const float* row = logits.data() + (size_t)m * V;
            if (nc.cfg.temperature == 0.0) {
                Rng unused(0);
                bad += got[m] != sample_token(row, V, nc.cfg, unused);
            } else {
                sampler_warp(row, V, nc.cfg, scores.data());
                bad += got[m] < 0 || got[m] >= V || scores[got[m]] == -INFINITY;
            }
        }
        printf("  %-28s %s: %d of %d rows drew %s\n", "v1 validation", bad ? "FAIL" : "ok", bad, M_MAX,
               nc.cfg.temperature == 0.0 ? "another token than sample_token" : "a token sampler_warp removes");
        all_ok &= bad == 0;
        for (int M : {6, 48, 64}) {
            float ms = time_kernel_ms(
                [&]() { sample_tokens(d_tokens, nullptr, d_logits, M, V, nc.cfg, 1, d_seq, d_steps, nullptr, 0, -1, 0); });
            std::string label = "v1 M " + std::to_string(M);
            report(label.c_str(), ms, (double)M * V * 2, 0);
        }
    }
    cudaFree(d_logits); cudaFree(d_tokens); cudaFree(d_seq); cudaFree(d_steps);
    printf("%s\n", all_ok ? "decode sample: all versions ok" : "decode sample: FAIL");
    return all_ok ? 0 : 1;
}
