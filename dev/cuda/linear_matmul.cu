// linear_matmul.cu: lab for the LoRA linear layer through cuBLASLt (forward and backward), validated against the CPU reference and timed at Qwen2.5-7B training shapes.
//
// Build and run: make build/lab_linear_matmul && ./build/lab_linear_matmul
//
// Shapes: N = 48*328 = 15744 tokens, C 3584, I 18944, KVH*HD 512, R 32. Flops are counted as 2*M*N*K for every
// GEMM, the rank-R ones included, and compared with 800 TFLOP/s (a bf16 8192^3 GEMM, measured again below).
// version 1 (kernels/matmul.cu, production): y = round(x W^T + b), then y = round(y + s (x A^T) B^T) by a GEMM with
//   beta = 1: PEFT's two roundings, at the price of one more read and write of y.
// version 2 (adapter first): y = round(s (x A^T) B^T), then y = round(x W^T + b + y) by the base GEMM with beta = 1:
//   the base GEMM's epilogue reads y while it is compute-bound, so the extra pass is one write only, but the sum is
//   rounded once (an ulp away from PEFT now and then) and the adapter term is rounded to bf16 on its own.
// Backward (one version): dB += s dy^T ax, dax = s dy B, dA += dax^T x, dx = dy W + dax A.
// Validation: each version against cpu_matmul_forward/backward + cpu_lora_forward/backward (BF16 mode) at small
// shapes and at the 7B shapes on a few tokens; the same tolerances as test/gpu/test_linear.cpp.
#include <cmath>
#include <memory>
#include <vector>

#include "dev/cuda/lab_common.cuh"
#include "kernels/matmul.cuh"
#include "kernels/nf4_dequant.cuh"
#include "model/cpu_model.h"

static MatmulContext* ctx = nullptr;

// ---- device buffers filled on the GPU (the 7B activations are hundreds of MB: too slow to draw on the host) ----

static __nv_bfloat16* random_bf16(size_t n, uint64_t seed, float amplitude) {
    __nv_bfloat16* p;
    cudaCheck(cudaMalloc(&p, n * sizeof(__nv_bfloat16)));
    fill_uniform_device(p, n, seed, amplitude);
    return p;
}
static float* zeros_f32(size_t n) {
    float* p;
    cudaCheck(cudaMalloc(&p, n * sizeof(float)));
    cudaCheck(cudaMemset(p, 0, n * sizeof(float)));
    return p;
}

// ---- version 2: the adapter first, the base GEMM accumulating onto it ------------------------------------------

static void forward_adapter_first(const LoraLinearGpu* linears, int G, const __nv_bfloat16* x, int N, int R,
                                  float scale, __nv_bfloat16* const* y, __nv_bfloat16* ax, __nv_bfloat16* w_scratch) {
    int in = (int)linears[0].base->in;
    // the group's A are consecutive in this lab: one x A^T GEMM, as in version 1
    matmul(ctx, ax, false, G * R, x, false, in, linears[0].A, true, in, N, G * R, in, 1, 0, nullptr, 0);
    for (int g = 0; g < G; g++) {
        const LinearWeight& base = *linears[g].base;
        int out = (int)base.out;
        matmul(ctx, y[g], false, out, ax + g * R, false, G * R, linears[g].B, true, R, N, out, R, scale, 0, nullptr, 0);
        const __nv_bfloat16* w = (const __nv_bfloat16*)base.w;
        if (base.format == LinearFormat::NF4) {
            nf4_dequantize_gpu(w_scratch, base.nf4, 0);
            w = w_scratch;
        }
        matmul(ctx, y[g], false, out, x, false, in, w, true, in, N, out, in, 1, 1, (const __nv_bfloat16*)base.bias, 0);
    }
}

// ---- a group of linears on the GPU: bf16 weights (or NF4 of them), consecutive A / dA -----------------------------

struct Group {
    int G = 0, N = 0, in = 0, R = 32;
    float scale = 2.0f;
    std::vector<int> outs;
    std::vector<LinearWeight> bases;
    std::vector<LoraLinearGpu> linears;
    __nv_bfloat16 *x = nullptr, *ax = nullptr, *dax = nullptr, *dx = nullptr, *A = nullptr, *w_scratch = nullptr;
    std::vector<__nv_bfloat16*> y, dy, B, W, bias;
    float *dA = nullptr;
    std::vector<float*> dB;
    std::vector<std::vector<float>> A_host, B_host;  // the fp32 masters (validation only)

    // The host arrays are given for validation (small N), or drawn on the device for benchmarks.
    Group(std::vector<int> outs_, int in_, int N_, bool with_bias) : G((int)outs_.size()), N(N_), in(in_), outs(outs_) {
        bases.resize(G);
        linears.resize(G);
        x = random_bf16((size_t)N * in, 1, 1.0f);
        ax = random_bf16((size_t)N * G * R, 2, 1.0f);
        dax = random_bf16((size_t)N * G * R, 3, 1.0f);
        dx = random_bf16((size_t)N * in, 4, 1.0f);
        A = random_bf16((size_t)G * R * in, 5, 1.0f / std::sqrt((float)in));
        dA = zeros_f32((size_t)G * R * in);
        size_t max_w = 0;
        for (int g = 0; g < G; g++) {
            int out = outs[g];
            y.push_back(random_bf16((size_t)N * out, 10 + g, 1.0f));
            dy.push_back(random_bf16((size_t)N * out, 20 + g, 1.0f));
            B.push_back(random_bf16((size_t)out * R, 30 + g, 1.0f / std::sqrt((float)R)));
            W.push_back(random_bf16((size_t)out * in, 40 + g, 1.0f / std::sqrt((float)in)));
            bias.push_back(with_bias ? random_bf16(out, 50 + g, 0.5f) : nullptr);
            dB.push_back(zeros_f32((size_t)out * R));
            bases[g].out = out;
            bases[g].in = in;
            bases[g].w = (const bf16_bits*)W[g];
            bases[g].bias = (const bf16_bits*)bias[g];
            linears[g] = {&bases[g], A + (size_t)g * R * in, B[g], dA + (size_t)g * R * in, dB[g]};
            max_w = std::max(max_w, (size_t)out * in);
        }
        cudaCheck(cudaMalloc(&w_scratch, max_w * sizeof(__nv_bfloat16)));
    }
    ~Group() {
        for (void* p : {(void*)x, (void*)ax, (void*)dax, (void*)dx, (void*)A, (void*)dA, (void*)w_scratch}) cudaFree(p);
        for (int g = 0; g < G; g++)
            for (void* p : {(void*)y[g], (void*)dy[g], (void*)B[g], (void*)W[g], (void*)bias[g], (void*)dB[g]}) cudaFree(p);
    }
    void forward(int version) {
        if (version == 1) lora_linear_forward(ctx, linears.data(), G, x, N, R, scale, y.data(), ax, w_scratch, 0);
        else forward_adapter_first(linears.data(), G, x, N, R, scale, y.data(), ax, w_scratch);
    }
    void backward() {
        std::vector<const __nv_bfloat16*> dys(dy.begin(), dy.end());
        lora_linear_backward(ctx, linears.data(), G, x, N, R, scale, dys.data(), ax, dx, false, dax, w_scratch, 0);
    }
    // flops of every GEMM, the base ones and the rank-R ones
    double forward_flops() const {
        double f = 0;
        for (int out : outs) f += 2.0 * N * in * out + 2.0 * N * R * out;
        return f + 2.0 * N * in * G * R;
    }
    double base_flops() const {
        double f = 0;
        for (int out : outs) f += 2.0 * N * in * out;
        return f;
    }
    double backward_flops() const {
        double f = 0;
        for (int out : outs) f += 2.0 * N * out * in + 4.0 * N * out * R;  // dx base; dB and dax
        return f + 4.0 * N * G * R * in;                                      // dA and dx += dax A
    }
};

static std::vector<float> host_floats(const __nv_bfloat16* d, size_t n) {
    return bf16_to_floats(to_host((const bf16_bits*)d, n));
}
static float max_abs(const std::vector<float>& v) {
    float m = 0;
    for (float x : v) m = std::max(m, std::fabs(x));
    return m;
}

// Version `version` forward, then the backward, against the CPU reference from the same bf16 x, dy, W and the fp32
// masters that the bf16 A and B copies round (the lab's masters are bf16-valued, so the copies are exact here; the
// test draws fp32 masters). Tolerances as in test/gpu/test_linear.cpp, with the reasons there.
static bool validate_group(const char* name, Group& grp, int version) {
    cudaCheck(cudaMemset(grp.dA, 0, (size_t)grp.G * grp.R * grp.in * sizeof(float)));
    for (int g = 0; g < grp.G; g++) cudaCheck(cudaMemset(grp.dB[g], 0, (size_t)grp.outs[g] * grp.R * sizeof(float)));
    grp.forward(version);
    grp.backward();
    cudaCheck(cudaDeviceSynchronize());
    int N = grp.N, in = grp.in, R = grp.R, G = grp.G;
    std::vector<float> x = host_floats(grp.x, (size_t)N * in), din((size_t)N * in, 0.0f);
    std::vector<float> A = host_floats(grp.A, (size_t)G * R * in);
    std::vector<float> dA_got = to_host(grp.dA, (size_t)G * R * in), dA_ref((size_t)G * R * in, 0.0f);
    bool ok = true;
    printf("%s, version %d (N %d, in %d, G %d):\n", name, version, N, in, G);
    for (int g = 0; g < G; g++) {
        int out = grp.outs[g];
        std::vector<bf16_bits> w = to_host((const bf16_bits*)grp.W[g], (size_t)out * in);
        std::vector<bf16_bits> bias = grp.bias[g] ? to_host((const bf16_bits*)grp.bias[g], out) : std::vector<bf16_bits>();
        std::vector<float> B = host_floats(grp.B[g], (size_t)out * R), dy = host_floats(grp.dy[g], (size_t)N * out);
        std::vector<float> y((size_t)N * out), ax((size_t)N * R), dB_ref((size_t)out * R, 0.0f);
        const float* A_g = A.data() + (size_t)g * R * in;
        cpu_matmul_forward(y.data(), x.data(), w.data(), grp.bias[g] ? bias.data() : nullptr, N, in, out, CpuPrecision::BF16);
        cpu_lora_forward(y.data(), ax.data(), x.data(), A_g, B.data(), N, in, out, R, grp.scale, CpuPrecision::BF16);
        cpu_matmul_backward(din.data(), dy.data(), w.data(), N, in, out);
        cpu_lora_backward(din.data(), dA_ref.data() + (size_t)g * R * in, dB_ref.data(), dy.data(), x.data(), ax.data(),
                          A_g, B.data(), N, in, out, R, grp.scale);
        std::vector<float> y_got = host_floats(grp.y[g], (size_t)N * out), dB_got = to_host(grp.dB[g], (size_t)out * R);
        ok &= validate("y", y_got.data(), y.data(), y.size(), std::ldexp(max_abs(y), -7), 1.0f / 128);
        ok &= validate("dB", dB_got.data(), dB_ref.data(), dB_ref.size(), std::ldexp(max_abs(dB_ref), -7), 1.0f / 256);
    }
    ok &= validate("dA", dA_got.data(), dA_ref.data(), dA_ref.size(), std::ldexp(max_abs(dA_ref), -7), 1.0f / 256);
    std::vector<float> dx = host_floats(grp.dx, (size_t)N * in);
    ok &= validate("dx", dx.data(), din.data(), din.size(), std::ldexp(max_abs(din), -6), 1.0f / 128);
    return ok;
}

int main() {
    void* workspace;
    cudaCheck(cudaMalloc(&workspace, matmul_workspace_bytes()));
    ctx = matmul_create(workspace, matmul_workspace_bytes());
    const int C = 3584, I = 18944, KV = 512, N = 48 * 328;
    bool ok = true;

    // ---- the ceiling: a plain bf16 GEMM 8192^3 through the same wrapper
    {
        const int S = 8192;
        __nv_bfloat16 *a = random_bf16((size_t)S * S, 91, 1), *b = random_bf16((size_t)S * S, 92, 1),
                      *d = random_bf16((size_t)S * S, 93, 1);
        float ms = time_kernel_ms([&] { matmul(ctx, d, false, S, a, false, S, b, true, S, S, S, S, 1, 0, nullptr, 0); });
        printf("ceiling reference:\n");
        report("bf16 GEMM 8192^3", ms, 0, 2.0 * S * S * S);
        cudaFree(a), cudaFree(b), cudaFree(d);
    }

    // ---- validation against the CPU reference
    printf("validation against cpu_matmul_* + cpu_lora_* (BF16 mode):\n");
    for (int version = 1; version <= 2; version++) {
        { Group g({384, 128, 128}, 512, 200, true); ok &= validate_group("small q/k/v-like group", g, version); }
        { Group g({C, KV, KV}, C, 32, true); ok &= validate_group("7B q/k/v", g, version); }
    }
    // the other 7B shapes with the production version only (the CPU reference takes seconds each)
    { Group g({C}, C, 32, false); ok &= validate_group("7B o", g, 1); }
    { Group g({I, I}, C, 8, false); ok &= validate_group("7B gate/up", g, 1); }
    { Group g({C}, I, 16, false); ok &= validate_group("7B down", g, 1); }

    // ---- benchmarks at the 7B training shape, one projection at a time, then the groups
    struct Proj {
        const char* name;
        std::vector<int> outs;
        int in;
        bool bias;
        int per_layer;
    };
    const Proj projs[] = {{"q", {C}, C, true, 1},       {"k", {KV}, C, true, 1},       {"v", {KV}, C, true, 1},
                          {"o", {C}, C, false, 1},      {"gate", {I}, C, false, 1},    {"up", {I}, C, false, 1},
                          {"down", {C}, I, false, 1},   {"q/k/v group", {C, KV, KV}, C, true, 0},
                          {"gate/up group", {I, I}, C, false, 0}};
    double layer_fwd_ms = 0, layer_bwd_ms = 0, layer_fwd_flops = 0, layer_bwd_flops = 0, layer_dequant_ms = 0;
    Rng rng(77);
    printf("benchmarks, N = %d tokens, R = 32 (bf16 base weights unless NF4 is named):\n", N);
    for (const Proj& p : projs) {
        Group grp(p.outs, p.in, N, p.bias);
        printf("%s [out %d%s, in %d]:\n", p.name, p.outs[0], p.outs.size() > 1 ? "..." : "", p.in);
        float base_ms = time_kernel_ms([&] {
            for (int g = 0; g < grp.G; g++)
                matmul(ctx, grp.y[g], false, grp.outs[g], grp.x, false, grp.in, grp.W[g], true, grp.in, N, grp.outs[g],
                       grp.in, 1, 0, grp.bias[g], 0);
        });
        report("  base GEMM only", base_ms, 0, grp.base_flops());
        float fwd1 = time_kernel_ms([&] { grp.forward(1); });
        report("  forward v1 (base, +LoRA b=1)", fwd1, 0, grp.forward_flops());
        float fwd2 = time_kernel_ms([&] { grp.forward(2); });
        report("  forward v2 (LoRA first)", fwd2, 0, grp.forward_flops());
        float bwd = time_kernel_ms([&] { grp.backward(); });
        report("  backward", bwd, 0, grp.backward_flops());
        printf("  LoRA overhead over the base GEMM: forward v1 %.1f%%, v2 %.1f%%\n", 100.0 * (fwd1 - base_ms) / base_ms,
               100.0 * (fwd2 - base_ms) / base_ms);
        // the same projection from an NF4 base weight: one dequantization per pass (forward, and again in backward)
        std::vector<std::unique_ptr<NF4Tensor>> nf4(grp.G);
        std::vector<std::vector<void*>> owned(grp.G);
        float dq_ms = 0;
        for (int g = 0; g < grp.G; g++) {
            nf4[g].reset(new NF4Tensor());
            NF4Tensor& t = *nf4[g];
            t.rows = grp.outs[g];
            t.cols = grp.in;
            nf4_default_code(t.code);
            nf4_default_nested_code(t.nested_code);
            t.packed.resize(t.numel() / 2);
            for (uint8_t& b : t.packed) b = (uint8_t)rng.next_u64();
            t.absmax_q.resize(t.num_blocks());
            for (uint8_t& b : t.absmax_q) b = (uint8_t)rng.next_u64();
            t.nested_absmax.assign(t.num_nested_blocks(), 0.05f);
            t.nested_offset = 0.02f;
            NF4View v = nf4_view(t);
            auto up = [&](auto& vec) { auto* d = to_device(vec); owned[g].push_back(d); return d; };
            v.packed = up(t.packed);
            v.absmax_q = up(t.absmax_q);
            v.nested_absmax = up(t.nested_absmax);
            std::vector<float> code(t.code, t.code + 16), nested(t.nested_code, t.nested_code + 256);
            v.code = up(code);
            v.nested_code = up(nested);
            grp.bases[g].format = LinearFormat::NF4;
            grp.bases[g].nf4 = v;
            dq_ms += time_kernel_ms([&] { nf4_dequantize_gpu(grp.w_scratch, v, 0); });
        }
        float fwd_nf4 = time_kernel_ms([&] { grp.forward(1); });
        report("  forward v1, NF4 base", fwd_nf4, 0, grp.forward_flops());
        float bwd_nf4 = time_kernel_ms([&] { grp.backward(); });
        report("  backward, NF4 base", bwd_nf4, 0, grp.backward_flops());
        printf("  dequantization %.4f ms = %.1f%% of this projection's forward + backward GEMMs\n", dq_ms,
               100.0 * 2 * dq_ms / (fwd1 + bwd));
        for (auto& list : owned)
            for (void* d : list) cudaFree(d);
        if (p.per_layer) {
            layer_fwd_ms += fwd1;
            layer_bwd_ms += bwd;
            layer_fwd_flops += grp.forward_flops();
            layer_bwd_flops += grp.backward_flops();
            layer_dequant_ms += dq_ms;
        }
    }
    printf("one Qwen2.5-7B layer, seven projections one at a time:\n");
    report("  forward (bf16 base)", (float)layer_fwd_ms, 0, layer_fwd_flops);
    report("  backward (bf16 base)", (float)layer_bwd_ms, 0, layer_bwd_flops);
    report("  forward + backward", (float)(layer_fwd_ms + layer_bwd_ms), 0, layer_fwd_flops + layer_bwd_flops);
    printf("  NF4 dequantization, twice per layer (forward, backward): %.3f ms = %.1f%% of the GEMMs\n",
           2 * layer_dequant_ms, 100.0 * 2 * layer_dequant_ms / (layer_fwd_ms + layer_bwd_ms));
    matmul_destroy(ctx);
    cudaFree(workspace);
    printf("%s\n", ok ? "all validations ok" : "FAIL: a validation failed");
    return ok ? 0 : 1;
}
