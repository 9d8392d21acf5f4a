// ew_swiglu.cu: lab for SwiGLU out = round(round(silu(g)) * u) and its backward to g and u.
// Build and run: make build/lab_ew_swiglu && ./build/lab_ew_swiglu
// One version: one thread per 8 elements, 16-byte loads (kernels/swiglu.cu); the backward recomputes
// a = round(silu(g)) instead of reading a saved copy (one tensor less to store and to read).
#include "dev/cuda/lab_common.cuh"
#include "kernels/swiglu.cuh"
#include "model/config.h"
#include "model/cpu_model.h"

static __nv_bfloat16* bf(bf16_bits* p) { return (__nv_bfloat16*)p; }

int main() {
    Rng rng(42);
    struct Shape { int N, I; };
    const Shape shapes[] = {{96, 160}, {15744, qwen2_preset("0.5B").I}, {15744, qwen2_preset("7B").I}};
    bool all_ok = true;
    for (const Shape& s : shapes) {
        const int N = s.N, I = s.I, NV = std::min(N, 64);
        const size_t n = (size_t)N * I, nv = (size_t)NV * I;
        printf("== N %d I %d (CPU reference on %d rows)\n", N, I, NV);
        std::vector<float> g(n), u(n), dout(n);
        fill_uniform(g, rng, -8.0f, 8.0f);
        fill_uniform(u, rng, -2.0f, 2.0f);
        fill_uniform(dout, rng);
        std::vector<bf16_bits> g_b = to_bf16(g), u_b = to_bf16(u), dout_b = to_bf16(dout);
        std::vector<float> ref_out(nv), ref_a(nv), ref_dg(nv, 0.0f), ref_du(nv, 0.0f);
        cpu_swiglu_forward(ref_out.data(), ref_a.data(), g.data(), u.data(), NV, I, CpuPrecision::BF16);
        cpu_swiglu_backward(ref_dg.data(), ref_du.data(), dout.data(), g.data(), u.data(), ref_a.data(), NV, I);

        bf16_bits *d_g = to_device(g_b), *d_u = to_device(u_b), *d_dout = to_device(dout_b);
        bf16_bits *d_out = to_device(dout_b), *d_dg = to_device(dout_b), *d_du = to_device(dout_b);
        swiglu_forward(bf(d_out), bf(d_g), bf(d_u), n, 0);
        swiglu_backward(bf(d_dg), bf(d_du), bf(d_dout), bf(d_g), bf(d_u), n, 0);
        std::vector<float> got = bf16_to_floats(to_host(d_out, nv));
        // expf within 2 ulp of the CPU's: rare one-ulp flips of a, one more ulp from a * u's rounding
        all_ok &= validate("forward", got.data(), ref_out.data(), nv, 1e-6f, 1.0f / 64);
        got = bf16_to_floats(to_host(d_dg, nv));
        all_ok &= validate("backward dg", got.data(), ref_dg.data(), nv, 1e-6f, 1.0f / 128);  // one bf16 rounding (2^-8)
        got = bf16_to_floats(to_host(d_du, nv));
        all_ok &= validate("backward du", got.data(), ref_du.data(), nv, 1e-6f, 1.0f / 64);  // and a's rare flips

        float ms = time_kernel_ms([&] { swiglu_forward(bf(d_out), bf(d_g), bf(d_u), n, 0); });
        report("forward", ms, 3.0 * n * 2, 0);
        ms = time_kernel_ms([&] { swiglu_backward(bf(d_dg), bf(d_du), bf(d_dout), bf(d_g), bf(d_u), n, 0); });
        report("backward", ms, 5.0 * n * 2, 0);
        for (bf16_bits* p : {d_g, d_u, d_dout, d_out, d_dg, d_du}) cudaCheck(cudaFree(p));
    }
    printf(all_ok ? "all versions ok\n" : "FAIL: some version disagrees with the CPU reference\n");
    return all_ok ? 0 : 1;
}
