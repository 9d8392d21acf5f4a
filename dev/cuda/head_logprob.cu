// head_logprob.cu: lab for the chunked lm_head + log-softmax + gather (forward and backward): validation against the CPU chain and timing of the GEMMs and row kernels at Qwen2.5-7B's training shape.
// Build and run: make build/lab_head_logprob && ./build/lab_head_logprob
// Versions of the forward row kernel (one block per logits row):
//   v1 (here): two passes over the row, max then sum of exps, one bf16 per thread per step
//   v2 (kernels/logprob.cu): one pass with a running (max, sum) pair per thread, 16-byte loads
// The backward row kernel (kernels/logprob.cu) is one pass: dlogits = dlogp (onehot - exp(x - lse)) / T in place.
// The GEMMs are cuBLASLt (bf16 in/out, fp32 accumulation), timed inside the whole launchers: the GEMM share is
// the launcher's time minus the row kernels' time per chunk. Flops 2*N*V*C per GEMM; row kernel bytes: the
// logits chunk read (and, backward, written) once.
#include "dev/cuda/lab_common.cuh"
#include "kernels/logprob.cuh"
#include "model/cpu_model.h"

// ---- version 1 -----------------------------------------------------------------------------------------------

__device__ float block_reduce(float x, bool is_max) {
    __shared__ float shared[32];
    for (int offset = 16; offset > 0; offset /= 2) {
        float y = __shfl_xor_sync(0xffffffffu, x, offset);
        x = is_max ? fmaxf(x, y) : x + y;
    }
    if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = x;
    __syncthreads();
    x = is_max ? -INFINITY : 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) x = is_max ? fmaxf(x, shared[w]) : x + shared[w];
    __syncthreads();  // shared is reused by the next call
    return x;
}

__global__ void rows_forward_v1(float* logp, float* lse, const __nv_bfloat16* logits, const int* targets, int row0,
                                int V, float temperature) {
    const int n = row0 + blockIdx.x;
    const __nv_bfloat16* row = logits + (size_t)blockIdx.x * V;
    float m = -INFINITY;
    for (int k = threadIdx.x; k < V; k += blockDim.x) m = fmaxf(m, __fdiv_rn(__bfloat162float(row[k]), temperature));
    m = block_reduce(m, true);
    float s = 0.0f;
    for (int k = threadIdx.x; k < V; k += blockDim.x) s += expf(__fdiv_rn(__bfloat162float(row[k]), temperature) - m);
    s = block_reduce(s, false);
    if (threadIdx.x == 0) {
        float log_sum = logf(s);
        logp[n] = (__fdiv_rn(__bfloat162float(row[targets[n]]), temperature) - m) - log_sum;
        lse[n] = m + log_sum;
    }
}

// ---- helpers -------------------------------------------------------------------------------------------------

static std::vector<bf16_bits> random_bf16_bits(size_t n, Rng& rng, float lo, float hi) {
    std::vector<bf16_bits> bits(n);
    for (size_t i = 0; i < n; i++) bits[i] = f32_to_bf16(lo + (hi - lo) * rng.next_float());
    return bits;
}

struct Shape {
    int N, C, V, chunk_rows;
    std::vector<int> check_rows;  // rows checked against the CPU chain (each costs ~2 V*C scalar MACs on the CPU)
    bool bench;
};

static bool run_shape(const Shape& S, cublasLtHandle_t lt) {
    const int N = S.N, C = S.C, V = S.V;
    const float temperature = 0.7f;
    printf("lm_head log-probs N=%d C=%d V=%d, chunks of %d rows (%.0f MB of bf16 logits each)\n", N, C, V,
           S.chunk_rows, (double)S.chunk_rows * V * 2 / 1e6);
    Rng rng(1000 + C);
    std::vector<float> h((size_t)N * C);
    fill_uniform(h, rng, -2.0f, 2.0f);
    std::vector<bf16_bits> h_bits = to_bf16(h);
    // weights ~0.05 give logits of a few units: peaked enough that the softmax is not uniform
    std::vector<bf16_bits> W = random_bf16_bits((size_t)V * C, rng, -0.06f, 0.06f);
    std::vector<int> targets(N);
    std::vector<float> dlogp(N);
    for (int n = 0; n < N; n++) {
        targets[n] = (int)rng.next_below(V);
        dlogp[n] = n % 10 == 9 ? 0.0f : rng.next_float() - 0.5f;  // some masked tokens
    }
    bf16_bits* d_h = to_device(h_bits);
    bf16_bits* d_W = to_device(W);
    int* d_targets = to_device(targets);
    float *d_dlogp = to_device(dlogp), *d_logp = nullptr, *d_lse = nullptr;
    bf16_bits* d_dh = nullptr;
    void* scratch = nullptr;
    const int max_chunk = std::max(S.chunk_rows, 2048);
    cudaCheck(cudaMalloc(&d_logp, N * sizeof(float)));
    cudaCheck(cudaMalloc(&d_lse, N * sizeof(float)));
    cudaCheck(cudaMalloc(&d_dh, (size_t)N * C * sizeof(bf16_bits)));
    cudaCheck(cudaMalloc(&scratch, logprob_scratch_bytes(max_chunk, V, C)));
    auto forward = [&](int chunk_rows) {
        logprob_forward_cuda(d_logp, d_lse, (const __nv_bfloat16*)d_h, (const __nv_bfloat16*)d_W, d_targets, nullptr, N,
                             V, C, temperature, chunk_rows, scratch, lt, 0);
    };
    auto backward = [&](int chunk_rows) {
        logprob_backward_cuda((__nv_bfloat16*)d_dh, d_dlogp, d_lse, (const __nv_bfloat16*)d_h,
                              (const __nv_bfloat16*)d_W, d_targets, nullptr, N, N, V, C, temperature, chunk_rows,
                              scratch, lt, 0);
    };
    forward(S.chunk_rows);
    backward(S.chunk_rows);
    std::vector<float> logp = to_host(d_logp, N);
    std::vector<bf16_bits> dh_bits = to_host(d_dh, (size_t)N * C);

    // the CPU chain on the checked rows: logits (bf16 mode), log-prob, dlogits, dh += dlogits W
    bool ok = true;
    std::vector<float> logits(V), probs(V), dlogits(V), got_logp, ref_logp, got_dh, ref_dh;
    double worst_logp = 0.0;
    for (int n : S.check_rows) {
        const float* x = h.data() + (size_t)n * C;
        cpu_logits_row(logits.data(), x, W.data(), V, C, CpuPrecision::BF16);
        float ref = cpu_logprob_forward(logits.data(), V, targets[n], temperature, probs.data());
        // one bf16 step of the target logit (fp32 sums in another order can round either way) + 1e-4
        double allowed = 1e-4 + bf16_ulp(logits[targets[n]]) / temperature;
        double err = std::fabs(logp[n] - ref);
        worst_logp = std::max(worst_logp, err / allowed);
        if (!(err <= allowed)) ok = false;
        std::vector<float> dh_ref(C, 0.0f);
        if (dlogp[n] != 0.0f) {
            cpu_logprob_backward(dlogits.data(), probs.data(), V, targets[n], dlogp[n], temperature);
            cpu_matmul_backward(dh_ref.data(), dlogits.data(), W.data(), 1, C, V);
        }
        for (int c = 0; c < C; c++) {
            got_dh.push_back(bf16_to_f32(dh_bits[(size_t)n * C + c]));
            ref_dh.push_back(dh_ref[c]);
        }
    }
    printf("  %-28s %s: worst %.2f of tolerance over %zu rows\n", "logp (chunked launcher)", ok ? "ok" : "FAIL",
           worst_logp, S.check_rows.size());
    float max_dh = 0.0f;
    for (float x : ref_dh) max_dh = std::max(max_dh, std::fabs(x));
    // dlogits and dh each rounded to bf16, the V-long sum in another order
    ok = validate("dh (chunked launcher)", got_dh.data(), ref_dh.data(), got_dh.size(), 1e-2f * max_dh, 1e-2f) && ok;

    // row kernels alone on one chunk of random logits, both versions against cpu_logprob_forward
    const int Mc = std::min(S.chunk_rows, N);
    std::vector<float> chunk((size_t)Mc * V);
    fill_uniform(chunk, rng, -8.0f, 8.0f);
    std::vector<bf16_bits> chunk_bits = to_bf16(chunk);
    bf16_bits* d_chunk = to_device(chunk_bits);
    float *d_logp1 = nullptr, *d_lse1 = nullptr;
    cudaCheck(cudaMalloc(&d_logp1, N * sizeof(float)));
    cudaCheck(cudaMalloc(&d_lse1, N * sizeof(float)));
    rows_forward_v1<<<Mc, 512>>>(d_logp1, d_lse1, (const __nv_bfloat16*)d_chunk, d_targets, 0, V, temperature);
    cudaCheck(cudaGetLastError());
    logprob_rows_forward_cuda(d_logp, d_lse, (const __nv_bfloat16*)d_chunk, d_targets, nullptr, 0, Mc, V, temperature, 0);
    std::vector<float> v1 = to_host(d_logp1, Mc), v2 = to_host(d_logp, Mc), ref_rows;
    const int row_checks = std::min(Mc, 64);
    for (int j = 0; j < row_checks; j++)
        ref_rows.push_back(cpu_logprob_forward(chunk.data() + (size_t)j * V, V, targets[j], temperature, nullptr));
    // same logits in: fp32 sums of exps vs the CPU's double sum, ~1e-6 relative on lse
    ok = validate("row fwd v1 logp", v1.data(), ref_rows.data(), row_checks, 2e-5f, 0.0f) && ok;
    ok = validate("row fwd v2 logp", v2.data(), ref_rows.data(), row_checks, 2e-5f, 0.0f) && ok;

    if (S.bench) {
        const double row_bytes = (double)Mc * V * 2 + Mc * 8.0;
        float v1_ms = time_kernel_ms([&] {
            rows_forward_v1<<<Mc, 512>>>(d_logp1, d_lse1, (const __nv_bfloat16*)d_chunk, d_targets, 0, V, temperature);
        });
        report("row fwd v1 (two-pass)", v1_ms, row_bytes, 0);
        float v2_ms = time_kernel_ms([&] {
            logprob_rows_forward_cuda(d_logp, d_lse, (const __nv_bfloat16*)d_chunk, d_targets, nullptr, 0, Mc, V,
                                      temperature, 0);
        });
        report("row fwd v2 (online, 16B)", v2_ms, row_bytes, 0);
        float bwd_ms = time_kernel_ms([&] {
            logprob_rows_backward_cuda((__nv_bfloat16*)d_chunk, d_dlogp, d_lse, d_targets, nullptr, 0, Mc, V,
                                       temperature, 0);
        });
        report("row bwd (in place)", bwd_ms, 2.0 * Mc * V * 2, 0);
        const double gemm_flops = 2.0 * N * (double)V * C;
        const double chunks = (double)N / Mc;
        for (int chunk_rows : {S.chunk_rows, 2048}) {
            printf("  -- chunks of %d rows (scratch %.0f MB)\n", chunk_rows, logprob_scratch_bytes(chunk_rows, V, C) / 1e6);
            float fwd_ms = time_kernel_ms([&] { forward(chunk_rows); }, 7);
            report("forward (GEMM + rows)", fwd_ms, 0, gemm_flops);
            report("forward GEMM share", fwd_ms - (float)(chunks * v2_ms), 0, gemm_flops);
            float bwd_total = time_kernel_ms([&] { backward(chunk_rows); }, 7);
            report("backward (2 GEMMs + rows)", bwd_total, 0, 2 * gemm_flops);
            report("backward GEMMs share", bwd_total - (float)(chunks * bwd_ms), 0, 2 * gemm_flops);
        }
    }
    cudaFree(d_h);
    cudaFree(d_W);
    cudaFree(d_targets);
    cudaFree(d_dlogp);
    cudaFree(d_logp);
    cudaFree(d_lse);
    cudaFree(d_dh);
    cudaFree(scratch);
    cudaFree(d_chunk);
    cudaFree(d_logp1);
    cudaFree(d_lse1);
    return ok;
}

int main() {
    cublasLtHandle_t lt;
    cublasCheck(cublasLtCreate(&lt));
    bool ok = true;
    // Qwen2.5-0.5B's head on a few hundred rows (chunks of 128: a partial last chunk), then 7B's training shape
    ok = run_shape({300, 896, 151936, 128, {0, 127, 128, 299}, false}, lt) && ok;
    ok = run_shape({48 * 328, 3584, 152064, 1024, {0, 7777, 48 * 328 - 1}, true}, lt) && ok;
    cublasLtDestroy(lt);
    printf("%s\n", ok ? "all versions ok" : "FAIL: a version disagrees with the CPU reference");
    return ok ? 0 : 1;
}
