// test_attention.cpp: the flash attention kernels (forward, backward, packed sequences) against the CPU reference cpu_attention_forward/backward.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/rng.h"
#include "data/text.h"
#include "kernels/attention.cuh"
#include "kernels/cuda_common.cuh"
#include "model/cpu_model.h"
#include "quant/bf16.h"
#include "test/gpu/gpu_test_util.h"

namespace {

// One attention problem on the GPU: bf16 inputs (and the floats they round to, for the CPU), outputs
// poisoned with NaN so an unwritten element cannot pass.
struct AttentionProblem {
    int B, T, NH, KVH, HD, N = 0;
    std::vector<int> starts, lens;
    std::vector<float> q, k, v, dout;
    __nv_bfloat16 *d_q, *d_k, *d_v, *d_dout, *d_out, *d_dq, *d_dk, *d_dv;
    float* d_lse;
    void* d_scratch;
    int* d_cu_seqlens = nullptr;

    // lens empty: B sequences of length T; otherwise packed sequences of these lengths (T = the longest).
    AttentionProblem(int B_, int T_, int NH_, int KVH_, int HD_, const std::vector<int>& seq_lens, uint64_t seed)
        : B(B_), T(T_), NH(NH_), KVH(KVH_), HD(HD_) {
        for (int b = 0; b < B; b++) {
            starts.push_back(N);
            lens.push_back(seq_lens.empty() ? T : seq_lens[b]);
            N += lens.back();
        }
        Rng rng(seed);
        // q in [-2, 2] so the scaled scores have std ~0.7: softmax rows neither flat nor one-hot.
        d_q = upload(q, (size_t)N * NH * HD, 2.0f, rng);
        d_k = upload(k, (size_t)N * KVH * HD, 1.0f, rng);
        d_v = upload(v, (size_t)N * KVH * HD, 1.0f, rng);
        d_dout = upload(dout, (size_t)N * NH * HD, 1.0f, rng);
        d_out = poisoned((size_t)N * NH * HD);
        d_dq = poisoned((size_t)N * NH * HD);
        d_dk = poisoned((size_t)N * KVH * HD);
        d_dv = poisoned((size_t)N * KVH * HD);
        cudaCheck(cudaMalloc(&d_lse, (size_t)B * NH * T * sizeof(float)));
        cudaCheck(cudaMalloc(&d_scratch, attention_backward_scratch_bytes(B, T, NH)));
        if (!seq_lens.empty()) {
            std::vector<int> cu(starts);
            cu.push_back(N);
            cudaCheck(cudaMalloc(&d_cu_seqlens, cu.size() * sizeof(int)));
            cudaCheck(cudaMemcpy(d_cu_seqlens, cu.data(), cu.size() * sizeof(int), cudaMemcpyHostToDevice));
        }
    }
    ~AttentionProblem() {
        for (void* p : {(void*)d_q, (void*)d_k, (void*)d_v, (void*)d_dout, (void*)d_out, (void*)d_dq, (void*)d_dk,
                        (void*)d_dv, (void*)d_lse, d_scratch, (void*)d_cu_seqlens})
            cudaFree(p);
    }
    AttentionProblem(const AttentionProblem&) = delete;
    AttentionProblem& operator=(const AttentionProblem&) = delete;

    static __nv_bfloat16* upload(std::vector<float>& host, size_t n, float range, Rng& rng) {
        host.resize(n);
        std::vector<bf16_bits> bits(n);
        for (size_t i = 0; i < n; i++) {
            bits[i] = f32_to_bf16(range * (2.0f * rng.next_float() - 1.0f));
            host[i] = bf16_to_f32(bits[i]);
        }
        __nv_bfloat16* d = nullptr;
        cudaCheck(cudaMalloc(&d, n * 2));
        cudaCheck(cudaMemcpy(d, bits.data(), n * 2, cudaMemcpyHostToDevice));
        return d;
    }
    static __nv_bfloat16* poisoned(size_t n) {
        __nv_bfloat16* d = nullptr;
        cudaCheck(cudaMalloc(&d, n * 2));
        cudaCheck(cudaMemset(d, 0xFF, n * 2));  // 0xFFFF is a bf16 NaN
        return d;
    }

    void forward() { attention_forward(d_out, d_lse, d_q, d_k, d_v, d_cu_seqlens, B, T, NH, KVH, HD, 0); }
    void backward() {
        attention_backward(d_dq, d_dk, d_dv, d_scratch, d_dout, d_out, d_lse, d_q, d_k, d_v, d_cu_seqlens, B, T, NH,
                           KVH, HD, 0);
    }
};

std::vector<bf16_bits> download(const __nv_bfloat16* d, size_t n) {
    std::vector<bf16_bits> bits(n);
    cudaCheck(cudaMemcpy(bits.data(), d, n * 2, cudaMemcpyDeviceToHost));
    return bits;
}

std::vector<float> download_floats(const __nv_bfloat16* d, size_t n) { return bf16_to_floats(download(d, n)); }

// The gradients' absolute tolerance, 2^-7 of the tensor's largest element, with a floor of 1e-4 for tensors
// the reference has at exactly 0: with a single key the softmax has nothing to trade, so dq = dk = 0 there,
// while the GPU's dp and D (the same dot product summed in two orders, fp32) leave ~1e-7.
float grad_abs_tol(const std::vector<float>& ref) { return std::fmax(max_abs(ref) / 128, 1e-4f); }

// The GPU's out, dq, dk, dv against the CPU reference in FP32, sequence by sequence (each its own causal
// problem at positions 0..len-1). The flash kernels round each probability to bf16 once (for p v, and ds for
// dq/dk), as SDPA's flash path does, where the CPU's BF16 mode instead rounds like HF's eager attention; so
// the comparison is against FP32 with tolerances sized to those roundings:
//   out: abs 4e-3, rel 4e-3: the bf16 p changes out by at most 2^-9 max|v| = 2^-9 (inputs in [-1, 1]) and
//     rounding out to bf16 by 2^-9 |out|; twice that bound.
//   dq, dk, dv: abs 2^-7 max|ref|, rel 2^-8: sums of products with one bf16-rounded factor (p or ds, within
//     2^-9 relative, errors of random sign), then rounded to bf16; a bf16 emulation of exactly these roundings
//     stays at 0.25-0.4 of this (dev/cuda/attention.cu says more).
void check_against_cpu(AttentionProblem& P) {
    P.forward();
    P.backward();
    cudaCheck(cudaDeviceSynchronize());
    const size_t qw = (size_t)P.NH * P.HD, kvw = (size_t)P.KVH * P.HD;
    std::vector<float> out = download_floats(P.d_out, P.N * qw), dq = download_floats(P.d_dq, P.N * qw);
    std::vector<float> dk = download_floats(P.d_dk, P.N * kvw), dv = download_floats(P.d_dv, P.N * kvw);

    std::vector<float> ref_out(P.N * qw), ref_dq(P.N * qw, 0.0f), ref_dk(P.N * kvw, 0.0f), ref_dv(P.N * kvw, 0.0f);
    for (int b = 0; b < P.B; b++) {
        const int T = P.lens[b];
        const size_t s = P.starts[b];
        std::vector<float> probs((size_t)P.NH * T * T);
        cpu_attention_forward(&ref_out[s * qw], probs.data(), &P.q[s * qw], &P.k[s * kvw], &P.v[s * kvw], 1, T, 0, T,
                              P.NH, P.KVH, P.HD, CpuPrecision::FP32);
        cpu_attention_backward(&ref_dq[s * qw], &ref_dk[s * kvw], &ref_dv[s * kvw], &P.dout[s * qw], probs.data(),
                               &P.q[s * qw], &P.k[s * kvw], &P.v[s * kvw], 1, T, P.NH, P.KVH, P.HD);
    }
    check_close("out", out, ref_out, 4e-3f, 4e-3f);
    check_close("dq", dq, ref_dq, grad_abs_tol(ref_dq), 1.0f / 256);
    check_close("dk", dk, ref_dk, grad_abs_tol(ref_dk), 1.0f / 256);
    check_close("dv", dv, ref_dv, grad_abs_tol(ref_dv), 1.0f / 256);
}

}  // namespace

TEST_CASE("flash attention forward and backward match the CPU reference", "[gpu][attention]") {
    // T not a multiple of the 64-row tiles; one token; Qwen2.5-0.5B's heads (14/2, HD 64) and 7B's (28/4, HD 128).
    SECTION("HD 64, 2 query heads per KV head, partial tiles") {
        AttentionProblem P(2, 70, 4, 2, 64, {}, 1);
        check_against_cpu(P);
    }
    SECTION("Qwen2.5-0.5B heads") {
        AttentionProblem P(1, 130, 14, 2, 64, {}, 2);
        check_against_cpu(P);
    }
    SECTION("Qwen2.5-7B heads") {
        AttentionProblem P(2, 96, 28, 4, 128, {}, 3);
        check_against_cpu(P);
    }
    SECTION("a single token attends only to itself") {
        AttentionProblem P(3, 1, 4, 1, 128, {}, 4);
        check_against_cpu(P);
    }
}

TEST_CASE("flash attention on packed sequences of different lengths (cu_seqlens)", "[gpu][attention]") {
    SECTION("HD 64") {
        AttentionProblem P(5, 150, 4, 2, 64, {37, 64, 1, 150, 90}, 5);
        check_against_cpu(P);
    }
    SECTION("HD 128") {
        AttentionProblem P(4, 129, 8, 2, 128, {129, 65, 3, 100}, 6);
        check_against_cpu(P);
    }
}

TEST_CASE("flash attention gradients are bit-reproducible", "[gpu][attention]") {
    // No atomics anywhere: two runs on the same inputs must agree bit for bit.
    AttentionProblem P(2, 200, 8, 2, 128, {}, 7);
    P.forward();
    P.backward();
    const size_t qn = (size_t)P.N * P.NH * P.HD, kvn = (size_t)P.N * P.KVH * P.HD;
    std::vector<bf16_bits> dq = download(P.d_dq, qn), dk = download(P.d_dk, kvn), dv = download(P.d_dv, kvn);
    P.forward();
    P.backward();
    bool same_dq = download(P.d_dq, qn) == dq, same_dk = download(P.d_dk, kvn) == dk;
    bool same_dv = download(P.d_dv, kvn) == dv;
    CHECK(same_dq);
    CHECK(same_dk);
    CHECK(same_dv);
}

TEST_CASE("flash attention rejects shapes it was not built for", "[gpu][attention]") {
    AttentionProblem P(1, 8, 4, 2, 64, {}, 8);
    REQUIRE_THROWS_AS(attention_forward(P.d_out, P.d_lse, P.d_q, P.d_k, P.d_v, nullptr, 1, 8, 4, 2, 96, 0), GrpoError);
    REQUIRE_THROWS_AS(attention_forward(P.d_out, P.d_lse, P.d_q, P.d_k, P.d_v, nullptr, 1, 8, 4, 3, 64, 0), GrpoError);
    REQUIRE_THROWS_AS(attention_backward(P.d_dq, P.d_dk, P.d_dv, P.d_scratch, P.d_dout, P.d_out, P.d_lse, P.d_q,
                                         P.d_k, P.d_v, nullptr, 1, 8, 4, 2, 80, 0),
                      GrpoError);
}
