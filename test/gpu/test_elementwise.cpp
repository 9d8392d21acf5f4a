// test_elementwise.cpp: the memory-bound GPU kernels (embedding, RMSNorm, RoPE, SwiGLU, residual add) against the CPU reference ops in bf16 mode, at the tiny test model's and Qwen2.5-7B's widths.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "data/rng.h"
#include "kernels/embedding.cuh"
#include "kernels/residual.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/swiglu.cuh"
#include "model/config.h"
#include "model/cpu_model.h"
#include "quant/bf16.h"
#include "test/gpu/gpu_test_util.h"

namespace {

// The two widths every test runs at: the tiny reference model (C 64, I 160, HD 16, NH 4, KVH 2) and Qwen2.5-7B.
std::vector<Qwen2Config> test_configs() {
    return {qwen2_config_load("test/ref/qwen2/tiny_tied/hf/config.json"), qwen2_preset("7B")};
}

}  // namespace

// ---- embedding ----------------------------------------------------------------------------------------------------

TEST_CASE("embedding gather copies the token rows exactly", "[gpu][ew][embedding]") {
    Rng rng(11);
    for (const Qwen2Config& cfg : test_configs()) {
        const int V = std::min(cfg.V, 4096), C = cfg.C, N = 96;  // a slice of the 7B table is enough to gather from
        RandomBf16 embed((size_t)V * C, rng, -1.0f, 1.0f);
        std::vector<int32_t> tokens(N);
        for (int n = 0; n < N; n++) tokens[n] = (int32_t)rng.next_below(V);
        tokens[0] = V - 1;  // the last row, and a repeated token
        tokens[1] = tokens[2];
        std::vector<float> ref((size_t)N * C);
        cpu_embedding_forward(ref.data(), tokens.data(), embed.bits.data(), N, C);

        DeviceBf16 d_embed(embed.bits), d_out((size_t)N * C);
        DeviceArray<int32_t> d_tokens(tokens);
        embedding_forward(d_out.ptr, d_tokens.ptr, d_embed.ptr, N, C, 0);
        // a copy: exact
        check_close("embedding_forward", download_floats(d_out), ref, 0.0f, 0.0f, 0.0);
    }
}

// ---- residual -------------------------------------------------------------------------------------------------------

TEST_CASE("residual add rounds x + y once, also in place", "[gpu][ew][residual]") {
    Rng rng(12);
    for (const Qwen2Config& cfg : test_configs()) {
        const size_t n = (size_t)40 * cfg.C;
        RandomBf16 x(n, rng, -4.0f, 4.0f), y(n, rng, -1.0f, 1.0f);
        std::vector<float> ref(n);
        cpu_residual_forward(ref.data(), x.values.data(), y.values.data(), (int)n, CpuPrecision::BF16);

        DeviceBf16 d_x(x.bits), d_y(y.bits), d_out(n);
        residual_forward(d_out.ptr, d_x.ptr, d_y.ptr, n, 0);
        // one fp32 add of two bf16 values then one rounding, the same operations as the CPU: exact
        check_close("residual_forward", download_floats(d_out), ref, 0.0f, 0.0f, 0.0);
        residual_forward(d_x.ptr, d_x.ptr, d_y.ptr, n, 0);
        check_close("residual_forward in place", download_floats(d_x), ref, 0.0f, 0.0f, 0.0);
    }
}

// ---- RMSNorm ----------------------------------------------------------------------------------------------------------

// Tolerances of the forward: the GPU sums x^2 in fp32 in another order (the CPU in double; ~sqrt(C/32) * 2^-24
// relative) and uses rsqrtf (2 ulp) instead of 1/sqrtf, so rstd differs in its last bits (rel 1e-5 allowed); that
// moves x * rstd across a bf16 rounding boundary for ~1 element in 10^4: one bf16 ulp (up to 2^-7 relative), which
// the rounding of w * that can widen to two (rel 2^-6), and nowhere else: at most 1 in 10^3 elements may differ
// from the CPU's bits.
// Both kernels: the launchers' choice (one block per row up to 256 rows, as in a decode step; one warp per row above),
// then each version forced at a size where the launchers would pick the other.
TEST_CASE("rmsnorm forward, alone and fused with the residual add, matches the bf16 CPU reference",
          "[gpu][ew][rmsnorm]") {
    Rng rng(13);
    struct Run { int N, version; };  // version 0: the launchers' choice
    for (const Qwen2Config& cfg : test_configs())
        for (const Run run : {Run{64, 0}, Run{6, 0}, Run{300, 0}, Run{64, 2}, Run{300, 3}}) {
            const int N = run.N, C = cfg.C, version = run.version;
            INFO("N " << N << " C " << C << " version " << version);
            const float eps = cfg.rms_norm_eps;
            // 1 in 10^3 as above, but at least 2% of one row: rstd is one number per row, so when it lands one ulp
            // off the CPU's, the flips gather in that row (measured on the H200, session 7: 32 of a 3584-wide row at
            // N 6, 26 of one at N 300, none in most runs), which at 6 rows is more than 1 in 10^3 of all elements.
            // A missing or extra rounding would flip about half of them.
            const double flips = std::max(1e-3, 0.02 / N);
            RandomBf16 x((size_t)N * C, rng, -2.0f, 2.0f), y((size_t)N * C, rng, -1.0f, 1.0f);
            RandomBf16 w(C, rng, 0.5f, 1.5f);
            std::vector<float> ref_out((size_t)N * C), ref_rstd(N);
            cpu_rmsnorm_forward(ref_out.data(), ref_rstd.data(), x.values.data(), w.bits.data(), N, C, eps,
                                CpuPrecision::BF16);

            DeviceBf16 d_x(x.bits), d_y(y.bits), d_w(w.bits), d_out((size_t)N * C), d_resid((size_t)N * C);
            DeviceArray<float> d_rstd(N);
            auto norm = [&](__nv_bfloat16* resid, float* rstd, const __nv_bfloat16* in, const __nv_bfloat16* add) {
                if (version != 0)
                    residual_rmsnorm_forward_version(version, resid, d_out.ptr, rstd, in, add, d_w.ptr, N, C, eps, 0);
                else if (add)
                    residual_rmsnorm_forward(resid, d_out.ptr, rstd, in, add, d_w.ptr, N, C, eps, 0);
                else
                    rmsnorm_forward(d_out.ptr, rstd, in, d_w.ptr, N, C, eps, 0);
            };
            norm(nullptr, d_rstd.ptr, d_x.ptr, nullptr);
            check_close("rmsnorm_forward out", download_floats(d_out), ref_out, 1e-6f, 1.0f / 64, flips);
            check_close("rmsnorm_forward rstd", d_rstd.download(), ref_rstd, 0.0f, 1e-5f, 1.0);

            // fused: h = round(x + y) then the norm of h
            std::vector<float> ref_h((size_t)N * C);
            cpu_residual_forward(ref_h.data(), x.values.data(), y.values.data(), N * C, CpuPrecision::BF16);
            cpu_rmsnorm_forward(ref_out.data(), ref_rstd.data(), ref_h.data(), w.bits.data(), N, C, eps,
                                CpuPrecision::BF16);
            norm(d_resid.ptr, d_rstd.ptr, d_x.ptr, d_y.ptr);
            check_close("residual_rmsnorm_forward resid", download_floats(d_resid), ref_h, 0.0f, 0.0f, 0.0);
            check_close("residual_rmsnorm_forward out", download_floats(d_out), ref_out, 1e-6f, 1.0f / 64, flips);
            check_close("residual_rmsnorm_forward rstd", d_rstd.download(), ref_rstd, 0.0f, 1e-5f, 1.0);
            // the residual stream updated in place, no rstd (generation)
            norm(d_x.ptr, nullptr, d_x.ptr, d_y.ptr);
            check_close("residual_rmsnorm_forward in place", download_floats(d_x), ref_h, 0.0f, 0.0f, 0.0);
            check_close("residual_rmsnorm_forward in place out", download_floats(d_out), ref_out, 1e-6f, 1.0f / 64,
                        flips);
        }
}

// Tolerance of the backward: the GPU result is one bf16 rounding of an fp32 value (at most 2^-8 relative, bf16's
// unit roundoff; rel 2^-7 leaves room), and the fp32 reduction order of the dot product moves the fp32 value by
// ~1e-7 of terms of size ~1 (abs 1e-5), which changes the rounded bits of at most 1 element in 100.
TEST_CASE("rmsnorm backward to the input matches the CPU reference, accumulating or not", "[gpu][ew][rmsnorm]") {
    Rng rng(14);
    for (const Qwen2Config& cfg : test_configs()) {
        const int N = 64, C = cfg.C;
        RandomBf16 x((size_t)N * C, rng, -2.0f, 2.0f), dout((size_t)N * C, rng, -1.0f, 1.0f);
        RandomBf16 w(C, rng, 0.5f, 1.5f), dx0((size_t)N * C, rng, -0.5f, 0.5f);
        std::vector<float> normed((size_t)N * C), rstd(N);
        cpu_rmsnorm_forward(normed.data(), rstd.data(), x.values.data(), w.bits.data(), N, C, cfg.rms_norm_eps,
                            CpuPrecision::BF16);
        // both sides use the CPU's rstd, so only the backward is under test
        DeviceBf16 d_x(x.bits), d_dout(dout.bits), d_w(w.bits), d_dx(dx0.bits);
        DeviceArray<float> d_rstd(rstd);

        std::vector<float> ref = dx0.values;
        cpu_rmsnorm_backward(ref.data(), dout.values.data(), x.values.data(), rstd.data(), w.bits.data(), N, C);
        rmsnorm_backward(d_dx.ptr, d_dout.ptr, d_x.ptr, d_rstd.ptr, d_w.ptr, N, C, true, 0);
        check_close("rmsnorm_backward accumulate", download_floats(d_dx), ref, 1e-5f, 1.0f / 128, 1e-2);

        std::vector<float> ref_fresh((size_t)N * C, 0.0f);
        cpu_rmsnorm_backward(ref_fresh.data(), dout.values.data(), x.values.data(), rstd.data(), w.bits.data(), N, C);
        rmsnorm_backward(d_dx.ptr, d_dout.ptr, d_x.ptr, d_rstd.ptr, d_w.ptr, N, C, false, 0);
        check_close("rmsnorm_backward overwrite", download_floats(d_dx), ref_fresh, 1e-5f, 1.0f / 128, 1e-2);
    }
}

// ---- RoPE -------------------------------------------------------------------------------------------------------------

TEST_CASE("rope tables match HF's bf16 cos and sin", "[gpu][ew][rope]") {
    for (const Qwen2Config& cfg : test_configs()) {
        const int T = 4096, H2 = cfg.HD / 2;
        std::vector<float> ref_cos((size_t)T * H2), ref_sin((size_t)T * H2);
        cpu_rope_tables(ref_cos.data(), ref_sin.data(), T, cfg.HD, cfg.rope_theta, CpuPrecision::BF16);
        DeviceArray<float> d_inv_freq(cpu_rope_inv_freq(cfg.HD, cfg.rope_theta));
        DeviceBf16 d_cos((size_t)T * H2), d_sin((size_t)T * H2);
        rope_tables(d_cos.ptr, d_sin.ptr, d_inv_freq.ptr, T, cfg.HD, 0);
        // the angle is the same fp32 product on both sides; CUDA's cosf/sinf are within 2 ulp of the CPU's correctly
        // rounded values, which flips the bf16 rounding for ~1 element in 10^4: one bf16 ulp (rel 2^-7), rarely
        check_close("rope_tables cos", download_floats(d_cos), ref_cos, 1e-6f, 1.0f / 128, 1e-3);
        check_close("rope_tables sin", download_floats(d_sin), ref_sin, 1e-6f, 1.0f / 128, 1e-3);
    }
}

TEST_CASE("rope forward and backward match the CPU reference bit for bit", "[gpu][ew][rope]") {
    Rng rng(15);
    for (const Qwen2Config& cfg : test_configs()) {
        const int N = 48, T = 4096, HD = cfg.HD, H2 = HD / 2;
        std::vector<float> cos_table((size_t)T * H2), sin_table((size_t)T * H2);
        cpu_rope_tables(cos_table.data(), sin_table.data(), T, HD, cfg.rope_theta, CpuPrecision::BF16);
        std::vector<bf16_bits> cos_bits(cos_table.size()), sin_bits(sin_table.size());
        for (size_t i = 0; i < cos_table.size(); i++) {
            cos_bits[i] = f32_to_bf16(cos_table[i]);
            sin_bits[i] = f32_to_bf16(sin_table[i]);
        }
        std::vector<int> pos(N);  // per token: sequences of different lengths, a KV cache's late positions
        for (int n = 0; n < N; n++) pos[n] = n < N / 2 ? n : (int)rng.next_below(T);
        DeviceBf16 d_cos(cos_bits), d_sin(sin_bits);
        DeviceArray<int> d_pos(pos);

        for (int H : {cfg.NH, cfg.KVH}) {  // q, then k
            const size_t n = (size_t)N * H * HD;
            RandomBf16 x(n, rng, -3.0f, 3.0f);
            std::vector<float> ref = x.values;
            cpu_rope_forward(ref.data(), pos.data(), cos_table.data(), sin_table.data(), N, H, HD, CpuPrecision::BF16);
            DeviceBf16 d_x(x.bits), d_out(n);
            // bf16 x bf16 products are exact in fp32 and every rounding is HF's: exact, in and out of place
            rope_forward(d_out.ptr, d_x.ptr, d_pos.ptr, d_cos.ptr, d_sin.ptr, N, H, HD, 0);
            check_close("rope_forward", download_floats(d_out), ref, 0.0f, 0.0f, 0.0);
            rope_forward(d_x.ptr, d_x.ptr, d_pos.ptr, d_cos.ptr, d_sin.ptr, N, H, HD, 0);
            check_close("rope_forward in place", download_floats(d_x), ref, 0.0f, 0.0f, 0.0);

            RandomBf16 dy(n, rng, -1.0f, 1.0f);
            std::vector<float> ref_dx = dy.values;
            cpu_rope_backward(ref_dx.data(), pos.data(), cos_table.data(), sin_table.data(), N, H, HD);
            DeviceBf16 d_dy(dy.bits), d_dx(n);
            // exact products, one fp32 sum (fused or not, the same value), one bf16 rounding: bit-equal to the
            // CPU's fp32 result rounded to bf16, so only bf16's rounding error (unit roundoff 2^-8) of tolerance
            rope_backward(d_dx.ptr, d_dy.ptr, d_pos.ptr, d_cos.ptr, d_sin.ptr, N, H, HD, 0);
            check_close("rope_backward", download_floats(d_dx), ref_dx, 0.0f, 1.0f / 256, 0.0);
            rope_backward(d_dy.ptr, d_dy.ptr, d_pos.ptr, d_cos.ptr, d_sin.ptr, N, H, HD, 0);
            check_close("rope_backward in place", download_floats(d_dy), ref_dx, 0.0f, 1.0f / 256, 0.0);
        }
    }
}

// ---- SwiGLU -----------------------------------------------------------------------------------------------------------

TEST_CASE("swiglu forward and backward match the CPU reference", "[gpu][ew][swiglu]") {
    Rng rng(16);
    for (const Qwen2Config& cfg : test_configs()) {
        const int N = 16, I = cfg.I;
        const size_t n = (size_t)N * I;
        // gates from deep in silu's negative tail to its linear part
        RandomBf16 g(n, rng, -8.0f, 8.0f), u(n, rng, -2.0f, 2.0f);
        RandomBf16 dout(n, rng, -1.0f, 1.0f);
        std::vector<float> ref_out(n), ref_a(n);
        cpu_swiglu_forward(ref_out.data(), ref_a.data(), g.values.data(), u.values.data(), N, I, CpuPrecision::BF16);

        DeviceBf16 d_g(g.bits), d_u(u.bits), d_dout(dout.bits), d_out(n), d_dg(n), d_du(n);
        swiglu_forward(d_out.ptr, d_g.ptr, d_u.ptr, n, 0);
        // CUDA's expf is within 2 ulp of the CPU's: silu(g) lands on the other side of a bf16 rounding boundary for
        // ~1 element in 10^4, one ulp of a, and a * u's rounding can add one more: rel 2^-6 there, exact elsewhere
        check_close("swiglu_forward", download_floats(d_out), ref_out, 1e-6f, 1.0f / 64, 1e-3);

        std::vector<float> ref_dg(n, 0.0f), ref_du(n, 0.0f);
        cpu_swiglu_backward(ref_dg.data(), ref_du.data(), dout.values.data(), g.values.data(), u.values.data(),
                            ref_a.data(), N, I);
        // one bf16 rounding of fp32 math (at most 2^-8 relative; rel 2^-7 leaves room); dg near silu''s zero at
        // g = -1.28 cancels terms of size ~1 (abs 1e-6); du = dout * a inherits a's rare one-ulp flips (2^-7) on top
        // of its own rounding (rel 2^-6)
        swiglu_backward(d_dg.ptr, d_du.ptr, d_dout.ptr, d_g.ptr, d_u.ptr, n, 0);
        check_close("swiglu_backward dg", download_floats(d_dg), ref_dg, 1e-6f, 1.0f / 128, 1e-3);
        check_close("swiglu_backward du", download_floats(d_du), ref_du, 1e-6f, 1.0f / 64, 1e-3);
        // in place over the saved gate and up
        swiglu_backward(d_g.ptr, d_u.ptr, d_dout.ptr, d_g.ptr, d_u.ptr, n, 0);
        check_close("swiglu_backward dg in place", download_floats(d_g), ref_dg, 1e-6f, 1.0f / 128, 1e-3);
        check_close("swiglu_backward du in place", download_floats(d_u), ref_du, 1e-6f, 1.0f / 64, 1e-3);
    }
}
