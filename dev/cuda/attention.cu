// attention.cu (lab): causal GQA flash attention, forward and backward, validated against cpu_attention_forward/backward on fresh random inputs and timed at Qwen2.5 training shapes.
// Build and run: make build/lab_attention && ./build/lab_attention
//
// Version 1 (kernels/attention.cu, the launcher the backend calls): FlashAttention-2 on mma.sync m16n8k16,
// 4 warps x 16 rows per block, 64-key tiles in padded shared memory, plain synchronous tile loads.
//   forward: one block per (64-query tile, head, sequence); online softmax in registers; saves the lse.
//   backward: D = rowsum(dout * out); a dq kernel (per query tile, loops over key tiles) and a dk/dv kernel
//   (per key tile and key/value head, loops over the group's query heads and the later query tiles), each
//   recomputing p from the lse: 7 tile matmuls instead of FlashAttention-2's 5, in exchange for no atomics,
//   no fp32 dq scratch and bit-reproducible gradients.
// Flops: 4*B*NH*T*T*HD/2 for the causal forward (q k^T and p v), 2.5x that for the backward, as the brief
// counts them (the dq/dk-dv split really does 3.5x); shares are of the measured 800 TFLOP/s bf16 ceiling.
//
// Tolerances (|gpu - ref| <= abs + rel |ref|, the reference being the CPU in FP32 on the same bf16 inputs):
//   out: abs 4e-3, rel 4e-3. The kernel rounds each probability to bf16 once (for the p v matmul, as
//     SDPA's flash path does; the row sums stay fp32): |sum_s dp_s v_s| <= 2^-9 sum_s p_s |v_s| <= 2^-9
//     max|v| = 2^-9 with inputs in [-1, 1]; the bf16 output adds 2^-9 |out|. Twice that bound.
//   dq, dk, dv: abs 2^-7 max|ref|, rel 2^-8. Each element is a sum of products with one bf16-rounded factor
//     (p for dv, ds = p (dp - D) for dq and dk; each within 2^-9 relative, round-to-nearest so the errors
//     have random signs), then rounded to bf16 (2^-9 |ref|); D comes from the bf16 out. A bf16 emulation of
//     these roundings in Python (T 96, HD 64, 3 heads per KV head) stays at 0.25-0.4 of this tolerance.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "data/text.h"
#include "dev/cuda/lab_common.cuh"
#include "kernels/attention.cuh"
#include "kernels/cuda_common.cuh"
#include "model/cpu_model.h"

// The deliberate break: the same kernels compiled again with the causal mask one key late (each query also
// sees the next key). Validation must reject it, or the tolerances are too loose to catch a real mask bug.
// (Every header kernels/attention.cu includes is already included above, so only its own code lands here.)
namespace mutant {
#define ATT_MASK_SHIFT 1
#include "kernels/attention.cu"
#undef ATT_MASK_SHIFT
}  // namespace mutant

// A kernel version: its forward and backward launchers (kernels/attention.cuh's signatures).
struct AttentionVersion {
    const char* name;
    decltype(&attention_forward) forward;
    decltype(&attention_backward) backward;
};
static const AttentionVersion VERSION_1 = {"v1", attention_forward, attention_backward};
static const AttentionVersion MUTANT = {"mutant", mutant::attention_forward, mutant::attention_backward};

struct AttentionCase {
    const char* name;
    int B, T, NH, KVH, HD;
    std::vector<int> lens;       // per-sequence lengths (cu_seqlens); empty: every sequence has length T
    std::vector<int> check_seqs;  // the sequences validated on the CPU (all when empty)
};

// Inputs, on the host as bf16 bits and as the floats they round to, and on the device.
struct AttentionData {
    int N = 0;
    std::vector<float> q, k, v, dout;
    std::vector<int> starts, lens;
    __nv_bfloat16 *d_q = nullptr, *d_k = nullptr, *d_v = nullptr, *d_dout = nullptr;
    __nv_bfloat16 *d_out = nullptr, *d_dq = nullptr, *d_dk = nullptr, *d_dv = nullptr;
    float* d_lse = nullptr;
    void* d_scratch = nullptr;
    int* d_cu_seqlens = nullptr;
};

static __nv_bfloat16* upload_bf16(std::vector<float>& host) {
    std::vector<bf16_bits> bits = to_bf16(host);
    return reinterpret_cast<__nv_bfloat16*>(to_device(bits));
}

static AttentionData make_data(const AttentionCase& c, Rng& rng) {
    AttentionData d;
    for (int b = 0; b < c.B; b++) {
        d.starts.push_back(d.N);
        d.lens.push_back(c.lens.empty() ? c.T : c.lens[b]);
        d.N += d.lens.back();
    }
    d.q.resize((size_t)d.N * c.NH * c.HD);
    d.dout.resize(d.q.size());
    d.k.resize((size_t)d.N * c.KVH * c.HD);
    d.v.resize(d.k.size());
    // q in [-2, 2]: scores of std ~0.7 after the HD^-0.5 scale, so softmax rows are neither flat nor one-hot.
    fill_uniform(d.q, rng, -2.0f, 2.0f);
    fill_uniform(d.k, rng);
    fill_uniform(d.v, rng);
    fill_uniform(d.dout, rng);
    d.d_q = upload_bf16(d.q);
    d.d_k = upload_bf16(d.k);
    d.d_v = upload_bf16(d.v);
    d.d_dout = upload_bf16(d.dout);
    size_t q_bytes = d.q.size() * 2, kv_bytes = d.k.size() * 2;
    cudaCheck(cudaMalloc(&d.d_out, q_bytes));
    cudaCheck(cudaMalloc(&d.d_dq, q_bytes));
    cudaCheck(cudaMalloc(&d.d_dk, kv_bytes));
    cudaCheck(cudaMalloc(&d.d_dv, kv_bytes));
    cudaCheck(cudaMalloc(&d.d_lse, (size_t)c.B * c.NH * c.T * sizeof(float)));
    cudaCheck(cudaMalloc(&d.d_scratch, attention_backward_scratch_bytes(c.B, c.T, c.NH)));
    if (!c.lens.empty()) {
        std::vector<int> cu(d.starts);
        cu.push_back(d.N);
        d.d_cu_seqlens = to_device(cu);
    }
    // NaN everywhere (0xFFFF is a bf16 NaN) so any element the kernels fail to write fails validation.
    cudaCheck(cudaMemset(d.d_out, 0xFF, q_bytes));
    cudaCheck(cudaMemset(d.d_dq, 0xFF, q_bytes));
    cudaCheck(cudaMemset(d.d_dk, 0xFF, kv_bytes));
    cudaCheck(cudaMemset(d.d_dv, 0xFF, kv_bytes));
    return d;
}

static void free_data(AttentionData& d) {
    for (void* p : {(void*)d.d_q, (void*)d.d_k, (void*)d.d_v, (void*)d.d_dout, (void*)d.d_out, (void*)d.d_dq,
                    (void*)d.d_dk, (void*)d.d_dv, (void*)d.d_lse, d.d_scratch, (void*)d.d_cu_seqlens})
        cudaCheck(cudaFree(p));
}

static void run_forward(const AttentionVersion& version, const AttentionCase& c, AttentionData& d) {
    version.forward(d.d_out, d.d_lse, d.d_q, d.d_k, d.d_v, d.d_cu_seqlens, c.B, c.T, c.NH, c.KVH, c.HD, 0);
}
static void run_backward(const AttentionVersion& version, const AttentionCase& c, AttentionData& d) {
    version.backward(d.d_dq, d.d_dk, d.d_dv, d.d_scratch, d.d_dout, d.d_out, d.d_lse, d.d_q, d.d_k, d.d_v,
                       d.d_cu_seqlens, c.B, c.T, c.NH, c.KVH, c.HD, 0);
}

// The gradients' absolute tolerance, 2^-7 of the tensor's largest element, with a floor of 1e-4 for tensors
// the reference has at exactly 0: with a single key the softmax has nothing to trade, so dq = dk = 0 there,
// while the GPU's dp and D (the same dot product summed in two orders, fp32) leave ~1e-7.
static float grad_abs_tol(const std::vector<float>& ref) {
    float m = 0.0f;
    for (float x : ref) m = fmaxf(m, fabsf(x));
    return fmaxf(m / 128, 1e-4f);
}

// After a failed validation: where the first few elements outside tolerance sit (checked row, head,
// column), which tells a mask bug (rows near the diagonal) from a layout bug (whole heads or columns).
static void describe_failures(const char* name, const std::vector<float>& got, const std::vector<float>& ref,
                              size_t width, int HD, float abs_tol, float rel_tol) {
    int shown = 0;
    for (size_t i = 0; i < got.size() && shown < 6; i++) {
        if (std::fabs(got[i] - ref[i]) <= abs_tol + rel_tol * std::fabs(ref[i])) continue;
        size_t row = i / width, col = i % width;
        printf("    %s outside at checked row %zu, head %zu, column %zu: got %.6g ref %.6g\n", name, row, col / HD,
               col % HD, got[i], ref[i]);
        shown++;
    }
}

// Runs the GPU forward and backward on the whole batch, then the CPU reference (FP32) sequence by sequence
// on the checked ones, and validates out, dq, dk, dv over all their rows.
static bool validate_case(const AttentionVersion& version, const AttentionCase& c, Rng& rng) {
    printf("%s %s: B %d, T %d, NH %d, KVH %d, HD %d%s\n", version.name, c.name, c.B, c.T, c.NH, c.KVH, c.HD,
           c.lens.empty() ? "" : ", per-sequence lengths (cu_seqlens)");
    AttentionData d = make_data(c, rng);
    run_forward(version, c, d);
    run_backward(version, c, d);
    cudaCheck(cudaDeviceSynchronize());
    const size_t qw = (size_t)c.NH * c.HD, kvw = (size_t)c.KVH * c.HD;
    std::vector<float> out = bf16_to_floats(to_host(reinterpret_cast<bf16_bits*>(d.d_out), (size_t)d.N * qw));
    std::vector<float> dq = bf16_to_floats(to_host(reinterpret_cast<bf16_bits*>(d.d_dq), (size_t)d.N * qw));
    std::vector<float> dk = bf16_to_floats(to_host(reinterpret_cast<bf16_bits*>(d.d_dk), (size_t)d.N * kvw));
    std::vector<float> dv = bf16_to_floats(to_host(reinterpret_cast<bf16_bits*>(d.d_dv), (size_t)d.N * kvw));

    std::vector<int> seqs = c.check_seqs;
    if (seqs.empty())
        for (int b = 0; b < c.B; b++) seqs.push_back(b);
    std::vector<float> got_out, got_dq, got_dk, got_dv, ref_out, ref_dq, ref_dk, ref_dv;
    for (int b : seqs) {
        const int T = d.lens[b];
        const size_t s = d.starts[b];
        std::vector<float> o(T * qw), probs((size_t)c.NH * T * T), gq(T * qw, 0.0f), gk(T * kvw, 0.0f),
            gv(T * kvw, 0.0f);
        cpu_attention_forward(o.data(), probs.data(), &d.q[s * qw], &d.k[s * kvw], &d.v[s * kvw], 1, T, 0, T, c.NH,
                              c.KVH, c.HD, CpuPrecision::FP32);
        cpu_attention_backward(gq.data(), gk.data(), gv.data(), &d.dout[s * qw], probs.data(), &d.q[s * qw],
                               &d.k[s * kvw], &d.v[s * kvw], 1, T, c.NH, c.KVH, c.HD);
        ref_out.insert(ref_out.end(), o.begin(), o.end());
        ref_dq.insert(ref_dq.end(), gq.begin(), gq.end());
        ref_dk.insert(ref_dk.end(), gk.begin(), gk.end());
        ref_dv.insert(ref_dv.end(), gv.begin(), gv.end());
        got_out.insert(got_out.end(), out.begin() + s * qw, out.begin() + (s + T) * qw);
        got_dq.insert(got_dq.end(), dq.begin() + s * qw, dq.begin() + (s + T) * qw);
        got_dk.insert(got_dk.end(), dk.begin() + s * kvw, dk.begin() + (s + T) * kvw);
        got_dv.insert(got_dv.end(), dv.begin() + s * kvw, dv.begin() + (s + T) * kvw);
    }
    bool ok = true;
    // Why these sizes: the header comment.
    struct Check {
        const char* name;
        const std::vector<float>& got;
        const std::vector<float>& ref;
        size_t width;
        float abs_tol, rel_tol;
    };
    const Check checks[] = {
        {"out", got_out, ref_out, qw, 4e-3f, 4e-3f},
        {"dq", got_dq, ref_dq, qw, grad_abs_tol(ref_dq), 1.0f / 256},
        {"dk", got_dk, ref_dk, kvw, grad_abs_tol(ref_dk), 1.0f / 256},
        {"dv", got_dv, ref_dv, kvw, grad_abs_tol(ref_dv), 1.0f / 256},
    };
    for (const Check& check : checks) {
        std::string label = std::string(version.name) + " " + check.name;
        bool passed = validate(label.c_str(), check.got.data(), check.ref.data(), check.ref.size(), check.abs_tol,
                               check.rel_tol);
        if (!passed) describe_failures(check.name, check.got, check.ref, check.width, c.HD, check.abs_tol, check.rel_tol);
        ok &= passed;
    }
    free_data(d);
    return ok;
}

static void benchmark_case(const AttentionCase& c, Rng& rng) {
    AttentionData d = make_data(c, rng);
    double forward_flops = 4.0 * c.B * c.NH * (double)c.T * c.T * c.HD / 2;
    run_forward(VERSION_1, c, d);
    printf("%s (B %d, T %d, NH %d, KVH %d, HD %d):\n", c.name, c.B, c.T, c.NH, c.KVH, c.HD);
    char label[64];
    float fwd_ms = time_kernel_ms([&] { run_forward(VERSION_1, c, d); });
    snprintf(label, sizeof label, "v1 fwd %s", c.name);
    report(label, fwd_ms, 0, forward_flops);
    float bwd_ms = time_kernel_ms([&] { run_backward(VERSION_1, c, d); });
    snprintf(label, sizeof label, "v1 bwd %s", c.name);
    report(label, bwd_ms, 0, 2.5 * forward_flops);
    free_data(d);
}

int main() {
    Rng rng(20240604);
    bool ok = true;
    // Small shapes: partial tiles (T not a multiple of 64), a single token, both head sizes, Qwen2.5-0.5B's
    // heads (NH 14, KVH 2, HD 64) and 7B's (NH 28, KVH 4, HD 128), and packed sequences of mixed lengths.
    std::vector<AttentionCase> cases = {
        {"small HD 64", 2, 70, 4, 2, 64, {}, {}},
        {"0.5B heads", 2, 130, 14, 2, 64, {}, {}},
        {"7B heads", 1, 200, 28, 4, 128, {}, {}},
        {"one token", 3, 1, 4, 1, 128, {}, {}},
        {"packed lengths HD 64", 5, 150, 4, 2, 64, {37, 64, 1, 150, 90}, {}},
        {"packed lengths HD 128", 4, 129, 8, 2, 128, {129, 65, 3, 100}, {}},
        // The training shape on the GPU, checked on the CPU for its first and last sequence.
        {"7B training shape", 48, 328, 28, 4, 128, {}, {0, 47}},
    };
    for (const AttentionCase& c : cases) ok &= validate_case(VERSION_1, c, rng);

    printf("\ndeliberate break (causal mask one key late; its FAIL lines are expected):\n");
    bool caught = !validate_case(MUTANT, cases[0], rng);
    printf("  %-28s %s\n", "mutant rejected", caught ? "ok" : "FAIL: validation accepted a broken mask");
    ok &= caught;

    printf("\nbenchmark (median of 20, L2 flushed; forward 4*B*NH*T*T*HD/2 flops, backward 2.5x that):\n");
    benchmark_case({"7B B48 T328", 48, 328, 28, 4, 128, {}, {}}, rng);
    benchmark_case({"0.5B B48 T328", 48, 328, 14, 2, 64, {}, {}}, rng);
    benchmark_case({"7B B8 T2048", 8, 2048, 28, 4, 128, {}, {}}, rng);
    printf("%s\n", ok ? "all versions ok" : "FAIL: some version disagrees with the CPU reference");
    return ok ? 0 : 1;
}
