// decode_sample.cu (lab): GPU sampling of M rows of Qwen2.5 logits (greedy, temperature, top-k, top-p), validated against sample_token / sampler_warp and the split path against the one-block kernel, timed at V = 152064.
// Build and run: make build/lab_decode_sample && ./build/lab_decode_sample
//
// Version 1 (kernels/sample.cu's sample_kernel, every configuration): one 1024-thread block per row, no sort.
//   Greedy is one argmax pass. Sampling: a max pass; top-k as a radix selection of the k-th largest score (3
//   histogram passes of 11 bits over the order-preserving key of the fp32 score); the kept mass in 40-bit fixed
//   point; top-p as a radix selection of the first kept token in ascending (score, id) order weighted by mass (3
//   passes, and 2 more over the ids when the boundary score is tied); the draw: per-warp sums over contiguous id
//   ranges, then one warp scans its range. 1 + 3 + 1 + 3 + 2 = 10 passes over the row, all but the first mostly
//   from L2.
// Version 2 (the split path, what sample_tokens runs for temperature > 0 without top-k and top-p, the training
//   default, on fewer rows than fill the GPU with version 1): each row cut into chunks of 2048 ids, a 256-thread
//   block each (75 a row at vocab_limit 151665). A max kernel writes each chunk's max score; a mass kernel,
//   launched as its programmatic dependent, writes each chunk's mass, and the row's last block to finish finds
//   the chunk, the 8-id group and the id where the running mass crosses the draw's target. 2 passes over the row
//   (the second from L2), 16-byte loads, two launches.
// Bytes: the bf16 logits read once (M * V * 2); the share printed is of 4.27 TB/s for that single read, so it
//   says how far the passes and the launches are from a streaming kernel.
// Validation: greedy tokens equal sample_token's exactly; every sampled token is in sampler_warp's kept set of its
//   row (the frequency and coverage checks are in test/gpu/test_decode.cpp); version 2's tokens equal version 1's.
// The split path's rows at M = 132 to 1056 (one to eight rows per SM of the H200; version 1 fills the GPU at 264)
// are there to check sample.cu's rule, the split path at every M: in session 8 version 2 won at every M up to 264;
// session 10 added 528 and 1056.
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
    setvbuf(stdout, nullptr, _IONBF, 0);  // every line out even if a case aborts
    const int V = 152064, limit = 151665, M_MAX = 64, M_BENCH = 1056;
    Rng rng(77);
    // logit-like rows: a broad body and a few dozen strong candidates, so top-p keeps a few hundred ids
    std::vector<float> logits((size_t)M_MAX * V);
    fill_uniform(logits, rng, -6.0f, 6.0f);
    for (int m = 0; m < M_MAX; m++)
        for (int i = 0; i < 40; i++) logits[(size_t)m * V + rng.next_below(limit)] = 12.0f + 6.0f * rng.next_float();
    std::vector<bf16_bits> bits = to_bf16(logits);
    // M_MAX distinct rows, validated; the benchmark's larger M repeat them
    __nv_bfloat16* d_logits = nullptr;
    cudaCheck(cudaMalloc(&d_logits, (size_t)M_BENCH * V * sizeof(bf16_bits)));
    for (int m = 0; m < M_BENCH; m += M_MAX)
        cudaCheck(cudaMemcpy(d_logits + (size_t)m * V, bits.data(),
                             (size_t)std::min(M_MAX, M_BENCH - m) * V * sizeof(bf16_bits), cudaMemcpyHostToDevice));
    int *d_tokens, *d_seq, *d_steps;
    cudaCheck(cudaMalloc(&d_tokens, M_BENCH * sizeof(int)));
    std::vector<int> seq(M_BENCH);
    for (int m = 0; m < M_BENCH; m++) seq[m] = m;
    d_seq = to_device(seq);
    d_steps = to_device(std::vector<int>(M_BENCH, 0));
    const size_t ws_bytes = sample_tokens_workspace_bytes(M_BENCH, V);
    void* d_ws = nullptr;
    cudaCheck(cudaMalloc(&d_ws, ws_bytes));
    cudaStream_t stream;
    cudaCheck(cudaStreamCreate(&stream));
    auto run = [&](int version, const SamplerConfig& cfg, int M, cudaStream_t s) {
        sample_tokens_version(version, d_tokens, nullptr, d_logits, M, V, cfg, 1, d_seq, d_steps, nullptr, 0, -1, d_ws,
                              ws_bytes, s);
    };

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
        const bool split = sample_split_path_draws(nc.cfg, V);
        // validation on all 64 rows
        run(1, nc.cfg, M_MAX, 0);
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
        if (split) {
            // version 2 over several draws (steps) of every row: the very tokens of version 1, and kept ones
            const int STEPS = 8;
            int differ = 0, removed = 0;
            std::vector<std::vector<float>> kept(M_MAX, std::vector<float>(V));
            for (int m = 0; m < M_MAX; m++) sampler_warp(logits.data() + (size_t)m * V, V, nc.cfg, kept[m].data());
            for (int step = 0; step < STEPS; step++) {
                cudaCheck(cudaMemcpy(d_steps, std::vector<int>(M_MAX, step).data(), M_MAX * sizeof(int),
                                     cudaMemcpyHostToDevice));
                run(1, nc.cfg, M_MAX, 0);
                const std::vector<int> one_block = to_host(d_tokens, M_MAX);
                run(2, nc.cfg, M_MAX, 0);
                const std::vector<int> split_tokens = to_host(d_tokens, M_MAX);
                for (int m = 0; m < M_MAX; m++) {
                    const int t = split_tokens[m];
                    differ += t != one_block[m];
                    removed += t < 0 || t >= V || kept[m][t] == -INFINITY;
                }
            }
            cudaCheck(cudaMemset(d_steps, 0, M_BENCH * sizeof(int)));
            printf("  %-28s %s: %d of %d draws differ from v1's, %d drew a token sampler_warp removes\n",
                   "v2 split validation", differ || removed ? "FAIL" : "ok", differ, STEPS * M_MAX, removed);
            all_ok &= differ == 0 && removed == 0;
        }
        if (!split)
            for (int M : {6, 48, 64}) {
                float ms = time_kernel_ms([&]() { run(1, nc.cfg, M, 0); });
                std::string label = "v1 M " + std::to_string(M);
                report(label.c_str(), ms, (double)M * V * 2, 0);
            }
        else  // both versions, alone and as a one-call CUDA graph (what a decode step replays)
            for (int M : {1, 6, 48, 64, 132, 264, 528, 1056}) {
                const double bytes = (double)M * V * 2;
                const std::string m = " M " + std::to_string(M);
                report(("v1" + m).c_str(), time_kernel_ms([&]() { run(1, nc.cfg, M, 0); }), bytes, 0);
                report(("v1" + m + ", graph").c_str(),
                       time_as_graph(stream, [&](cudaStream_t s) { run(1, nc.cfg, M, s); }), bytes, 0);
                report(("v2 split" + m).c_str(), time_kernel_ms([&]() { run(2, nc.cfg, M, 0); }), bytes, 0);
                report(("v2 split" + m + ", graph").c_str(),
                       time_as_graph(stream, [&](cudaStream_t s) { run(2, nc.cfg, M, s); }), bytes, 0);
            }
    }
    cudaCheck(cudaStreamDestroy(stream));
    cudaFree(d_logits); cudaFree(d_tokens); cudaFree(d_seq); cudaFree(d_steps); cudaFree(d_ws);
    printf("%s\n", all_ok ? "decode sample: all versions ok" : "decode sample: FAIL");
    return all_ok ? 0 : 1;
}
