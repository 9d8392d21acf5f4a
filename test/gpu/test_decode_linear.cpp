// test_decode_linear.cpp: the decode-time linear layer (NF4/bf16 weights x a few rows, LoRA fused) against the CPU reference: bit for bit where the sums are exact, within justified tolerances on random inputs.
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "data/rng.h"
#include "kernels/decode_linear.cuh"
#include "kernels/nf4_tile.cuh"
#include "model/cpu_model.h"
#include "model/weights.h"
#include "quant/bf16.h"
#include "quant/nf4.h"
#include "test/gpu/gpu_test_util.h"

namespace {

// One base linear on both sides: the host LinearWeight (NF4 or bf16, with bias) and the same with device pointers.
struct DecodeTestLinear {
    NF4Tensor nf4;
    std::vector<bf16_bits> w_bits, bias_bits;
    std::vector<float> w_dequant;  // the bf16 weight the CPU reference multiplies by, as floats
    std::unique_ptr<GpuNF4> nf4_dev;
    DeviceArray<bf16_bits> w_dev, bias_dev;
    LinearWeight host, gpu;

    // Random NF4 codes with block scales around 2^-4 (or bf16 weights of that size), and a bias when asked.
    DecodeTestLinear(int64_t out, int64_t in, LinearFormat format, bool with_bias, Rng& rng) {
        host.out = gpu.out = out;
        host.in = gpu.in = in;
        host.format = gpu.format = format;
        if (format == LinearFormat::NF4) {
            nf4 = random_nf4(out, in, true, rng, [&] { return 0.03f + 0.06f * rng.next_float(); }, 0.05f);
            host.nf4 = nf4_view(nf4);
            w_bits.resize(nf4.numel());
            nf4_view_dequantize(host.nf4, w_bits.data());
            nf4_dev.reset(new GpuNF4(host.nf4));
            gpu.nf4 = nf4_dev->view;
        } else {
            RandomBf16 w((size_t)(out * in), rng, -0.1f, 0.1f);
            w_bits = w.bits;
            host.w = w_bits.data();
            w_dev.assign(w_bits);
            gpu.w = w_dev.ptr;
        }
        w_dequant = bf16_to_floats(w_bits);
        if (with_bias) {
            bias_bits = RandomBf16((size_t)out, rng, -0.5f, 0.5f).bits;
            bias_dev.assign(bias_bits);
            host.bias = bias_bits.data();
            gpu.bias = bias_dev.ptr;
        }
    }
};

// The adapter of one linear: fp32 values the CPU reads that are exactly the bf16 copies the GPU reads.
struct DecodeTestAdapter {
    std::vector<float> A, B;
    DeviceArray<bf16_bits> A_dev, B_dev;
};

// A group on the GPU: its linears, adapters, x, outputs and workspace; run() calls the launcher.
struct DecodeGroup {
    std::vector<std::unique_ptr<DecodeTestLinear>> linears;
    std::vector<std::unique_ptr<DecodeTestAdapter>> adapters;  // nullptr: no adapter
    int R = 0;
    float scale = 0.0f;
    MatmulContext* ctx = nullptr;  // with a context, bf16 groups run through cuBLASLt

    std::vector<LoraLinearGpu> gpu_linears() const {
        std::vector<LoraLinearGpu> out(linears.size());
        for (size_t g = 0; g < linears.size(); g++) {
            out[g].base = &linears[g]->gpu;
            if (adapters[g]) {
                out[g].A = (const __nv_bfloat16*)adapters[g]->A_dev.ptr;
                out[g].B = (const __nv_bfloat16*)adapters[g]->B_dev.ptr;
            }
        }
        return out;
    }

    // y[g] [M, out_g] as floats from the GPU for x (bf16 values as floats), through the tensor-core launcher or the
    // simple one.
    // shared: a zeroed workspace shared with other groups (nullptr: a fresh one for this call).
    std::vector<std::vector<float>> run(const std::vector<float>& x, int M, bool simple,
                                        DeviceArray<uint8_t>* shared = nullptr) const {
        std::vector<LoraLinearGpu> gl = gpu_linears();
        const int G = (int)gl.size();
        std::vector<bf16_bits> x_bits(x.size());
        for (size_t i = 0; i < x.size(); i++) x_bits[i] = f32_to_bf16(x[i]);
        DeviceArray<bf16_bits> x_dev(x_bits);
        std::vector<std::unique_ptr<DeviceBf16>> y(G);
        std::vector<__nv_bfloat16*> y_ptrs(G);
        for (int g = 0; g < G; g++) {
            size_t n = (size_t)M * linears[g]->host.out;
            y[g].reset(new DeviceBf16(n));
            cudaCheck(cudaMemset(y[g]->ptr, 0xFF, n * 2));  // NaN until written
            y_ptrs[g] = y[g]->ptr;
        }
        size_t bytes = decode_linear_workspace_bytes(gl.data(), G, R, M);
        DeviceArray<uint8_t> own;
        if (!shared) {
            own.allocate(bytes);
            cudaCheck(cudaMemset(own.ptr, 0, bytes));
        }
        DeviceArray<uint8_t>& workspace = shared ? *shared : own;
        REQUIRE(workspace.n >= bytes);
        if (simple)
            decode_linear_forward_simple(gl.data(), G, (const __nv_bfloat16*)x_dev.ptr, M, R, scale, y_ptrs.data(),
                                         workspace.ptr, workspace.n, 0);
        else
            decode_linear_forward(gl.data(), G, (const __nv_bfloat16*)x_dev.ptr, M, R, scale, y_ptrs.data(),
                                  workspace.ptr, workspace.n, 0, ctx);
        cudaCheck(cudaGetLastError());
        // every call leaves the counters zero (the next call, or a graph's next replay, counts from there): the split-K
        // slabs' and tiles', and on the wgmma path ax's slabs and the count of ax slabs done
        std::vector<int> counters(DECODE_LINEAR_COUNTERS);
        cudaCheck(cudaMemcpy(counters.data(), workspace.ptr, counters.size() * sizeof(int), cudaMemcpyDeviceToHost));
        size_t nonzero = 0;
        for (int v : counters) nonzero += v != 0;
        CHECK(nonzero == 0);
        std::vector<std::vector<float>> out(G);
        for (int g = 0; g < G; g++) out[g] = download_floats(*y[g]);
        return out;
    }

    // The CPU reference of linear g (BF16 mode): cpu_matmul_forward, then cpu_lora_forward.
    std::vector<float> reference(int g, const std::vector<float>& x, int M) const {
        const DecodeTestLinear& l = *linears[g];
        const int out = (int)l.host.out, in = (int)l.host.in;
        std::vector<float> y((size_t)M * out), ax((size_t)M * std::max(R, 1));
        cpu_matmul_forward(y.data(), x.data(), l.w_bits.data(), l.host.bias, M, in, out, CpuPrecision::BF16);
        if (adapters[g])
            cpu_lora_forward(y.data(), ax.data(), x.data(), adapters[g]->A.data(), adapters[g]->B.data(), M, in, out,
                             R, scale, CpuPrecision::BF16);
        return y;
    }
};

// Adds a linear and (with R > 0) its adapter. dyadic: A and B are multiples of 2^-8 below 1 (exact in bf16, and
// every product and every sum of R of them exact in fp32), so one-hot rows of x give exact sums on both sides.
void add_linear(DecodeGroup& group, int64_t out, int64_t in, LinearFormat format, bool bias, bool adapter,
                bool dyadic, Rng& rng) {
    group.linears.emplace_back(new DecodeTestLinear(out, in, format, bias, rng));
    group.adapters.emplace_back();
    if (!adapter) return;
    DecodeTestAdapter* a = new DecodeTestAdapter();
    a->A.resize((size_t)group.R * in);
    a->B.resize((size_t)out * group.R);
    const float a_range = 1.0f / std::sqrt((float)in), b_range = 1.0f / std::sqrt((float)group.R);
    for (float& v : a->A) v = dyadic ? (float)((int)rng.next_below(511) - 255) / 256.0f : a_range * (2 * rng.next_float() - 1);
    for (float& v : a->B) v = dyadic ? (float)((int)rng.next_below(511) - 255) / 256.0f : b_range * (2 * rng.next_float() - 1);
    std::vector<bf16_bits> A_bits = to_bf16(a->A), B_bits = to_bf16(a->B);  // PEFT-like values: the bf16 copies
    a->A_dev.assign(A_bits);
    a->B_dev.assign(B_bits);
    group.adapters.back().reset(a);
}

// x rows m = the unit vector of column first + m: y[m] is then column first + m of W (plus bias and adapter).
std::vector<float> one_hot_rows(int M, int in, int first) {
    std::vector<float> x((size_t)M * in, 0.0f);
    for (int m = 0; m < M; m++) x[(size_t)m * in + (first + m) % in] = 1.0f;
    return x;
}

// Every column of every weight through one-hot x at several M (each n-tile count of the kernel): GPU == CPU exactly.
void check_exact(const DecodeGroup& group, bool simple) {
    const int in = (int)group.linears[0]->host.in;
    size_t compared = 0;
    for (int M : {1, 6, 12, 30, 48, 64}) {
        for (int first = 0; first < in; first += M) {
            std::vector<float> x = one_hot_rows(M, in, first);
            std::vector<std::vector<float>> got = group.run(x, M, simple);
            for (size_t g = 0; g < group.linears.size(); g++) {
                std::vector<float> ref = group.reference((int)g, x, M);
                size_t mismatches = 0, first_bad = 0;
                for (size_t i = 0; i < ref.size(); i++)
                    if (!(got[g][i] == ref[i]) && mismatches++ == 0) first_bad = i;
                INFO("M " << M << ", columns from " << first << ", linear " << g << ": " << mismatches << " of "
                          << ref.size() << " differ; first [" << first_bad << "] got " << got[g][first_bad] << " ref "
                          << ref[first_bad]);
                REQUIRE(mismatches == 0);
                compared += ref.size();
            }
            if (M > 6 && first + M >= 3 * M) break;  // the large tiles on a few column batches: the M = 1, 6 passes cover all
        }
    }
    printf("  decode_linear exact (%s): %zu outputs bit-identical to the CPU reference\n", simple ? "simple" : "mma",
           compared);
}

// The group's NF4 weights rewritten into the decode-tile order on the GPU, as the GPU model stores them at load.
void tile_weights(DecodeGroup& group) {
    for (auto& linear : group.linears) {
        if (linear->gpu.format != LinearFormat::NF4) continue;
        DeviceArray<uint8_t> scratch(nf4_tile_scratch_bytes(linear->gpu.nf4));
        nf4_tile_gpu(&linear->gpu.nf4, scratch.ptr, nf4_tile_scratch_bytes(linear->gpu.nf4), 0);
        REQUIRE(linear->gpu.nf4.tiled);
    }
}

// Random rows of x through the group at each M against the CPU reference, the same bits on a second call, and the
// same bits again once the weights are rewritten into the decode-tile order (as the GPU model holds them: the codes
// are only permuted, and the kernel's summation order does not depend on where they sit).
void check_random_rows(DecodeGroup& group, std::initializer_list<int> Ms, Rng& rng) {
    const int in = (int)group.linears[0]->host.in;
    std::vector<std::vector<float>> xs;
    std::vector<std::vector<std::vector<float>>> row_major;
    for (int M : Ms) {
        std::vector<float> x((size_t)M * in);
        fill_uniform(x, rng);
        for (float& v : x) v = round_bf16(v);
        std::vector<std::vector<float>> got = group.run(x, M, false);
        std::vector<std::vector<float>> again = group.run(x, M, false);
        for (size_t g = 0; g < group.linears.size(); g++) {
            INFO("M " << M << ", linear " << g);
            std::vector<float> ref = group.reference((int)g, x, M);
            // Both sides sum in fp32 (different orders: ~1e-6 relative) and round to bf16, so a sum near a rounding
            // boundary may go either way: one ulp, 2^-7 relative at most. With an adapter the GPU's x A^T is rounded
            // to bf16 (2^-9 of the adapter term, which is as large as y here), and a flipped base rounding is carried
            // into the sum: together under one ulp of the largest |y|, the absolute part (test_linear.cpp's bound).
            // Without an adapter only sum-order flips remain: at most 1% of the elements may differ in their bits.
            const bool adapted = group.adapters[g] != nullptr;
            check_close("y", got[g], ref, std::ldexp(max_abs(ref), -7), 1.0f / 128, adapted ? 1.0 : 0.01);
            // fixed summation order, and the split-K counters reset themselves
            size_t differ = 0;
            for (size_t i = 0; i < got[g].size(); i++) differ += !(got[g][i] == again[g][i]);
            CHECK(differ == 0);
        }
        xs.push_back(x);
        row_major.push_back(got);
    }
    tile_weights(group);
    size_t i = 0;
    for (int M : Ms) {
        std::vector<std::vector<float>> tiled = group.run(xs[i], M, false);
        std::vector<std::vector<float>> again = group.run(xs[i], M, false);
        // the wgmma path (decode-tile order only) sums in its own order: against the reference as above, else the
        // same bits as the row-major codes
        const bool wgmma = decode_linear_wgmma_path(group.gpu_linears().data(), (int)group.linears.size(), M);
        for (size_t g = 0; g < group.linears.size(); g++) {
            INFO("tiled weights, M " << M << ", linear " << g << (wgmma ? ", wgmma path" : ""));
            size_t differ = 0, differ_again = 0;
            for (size_t e = 0; e < tiled[g].size(); e++) {
                differ += !(tiled[g][e] == row_major[i][g][e]);
                differ_again += !(tiled[g][e] == again[g][e]);
            }
            CHECK(differ_again == 0);
            if (wgmma) {
                std::vector<float> ref = group.reference((int)g, xs[i], M);
                check_close("y wgmma", tiled[g], ref, std::ldexp(max_abs(ref), -7), 1.0f / 128,
                            group.adapters[g] ? 1.0 : 0.01);
            } else {
                CHECK(differ == 0);
            }
        }
        i++;
    }
}


// Whether this GPU runs the wgmma path (the H200's sm_90; the file is built for sm_90a there).
bool wgmma_gpu() {
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    return prop.major == 9 && prop.minor == 0;
}

}  // namespace

TEST_CASE("decode_linear: one-hot rows reproduce every NF4 weight, bias and adapter term bit for bit", "[gpu][decode_linear]") {
    Rng rng(5150);
    // q, k, v of a small model: out 64, 32, 32 over in 256 (two k chunks: the split-K path at small M), the middle
    // linear without adapter, q without bias
    DecodeGroup group;
    group.R = 16;
    group.scale = 0.5f;  // a power of two: the scaling is exact too
    add_linear(group, 64, 256, LinearFormat::NF4, false, true, true, rng);
    add_linear(group, 32, 256, LinearFormat::NF4, true, false, true, rng);
    add_linear(group, 32, 256, LinearFormat::NF4, true, true, true, rng);
    check_exact(group, false);
    check_exact(group, true);

    // in 1024 (16 blocks of 64, several warps a tile: partial tiles at every M, which the tile's last warp adds),
    // row-major codes, then the same weights in decode-tile order (as the GPU model holds them)
    DecodeGroup sliced;
    sliced.R = 16;
    sliced.scale = 0.5f;
    add_linear(sliced, 48, 1024, LinearFormat::NF4, true, true, true, rng);
    add_linear(sliced, 32, 1024, LinearFormat::NF4, false, true, true, rng);
    check_exact(sliced, false);
    tile_weights(sliced);
    check_exact(sliced, false);

    // in 72 (not a multiple of 32) and out 24 (not a multiple of 16): the launcher falls back to the simple kernel
    DecodeGroup odd;
    odd.R = 8;
    odd.scale = 2.0f;
    add_linear(odd, 24, 72, LinearFormat::NF4, true, true, true, rng);
    check_exact(odd, false);

    // bf16 weights (the lm_head and bf16 checkpoints), out 48 and 160, in 136 (a partial last k chunk)
    DecodeGroup bf;
    bf.R = 32;
    bf.scale = 0.25f;
    add_linear(bf, 48, 136, LinearFormat::BF16, true, true, true, rng);
    add_linear(bf, 160, 136, LinearFormat::BF16, false, true, true, rng);
    check_exact(bf, false);
}

// k_proj and v_proj of Qwen2.5-7B [512, 3584] around a 128-row linear without adapter, in `format`; PEFT-sized
// adapters (B nonzero, as after training) with alpha/R = 2.
void add_kv_width_group(DecodeGroup& group, LinearFormat format, Rng& rng) {
    group.R = 32;
    group.scale = 2.0f;
    add_linear(group, 512, 3584, format, true, true, false, rng);
    add_linear(group, 128, 3584, format, false, false, false, rng);
    add_linear(group, 512, 3584, format, true, true, false, rng);
}

TEST_CASE("decode_linear: random rows match the CPU reference at Qwen2.5-7B k/v width and in a wide launch, and are reproducible", "[gpu][decode_linear]") {
    Rng rng(2718);
    // the k/v-width group in NF4 (112 chunks of 128: many k splits)
    DecodeGroup group;
    add_kv_width_group(group, LinearFormat::NF4, rng);
    // the simple kernel first (it reads row-major codes only), with the tolerances of check_random_rows
    std::vector<float> x((size_t)6 * 3584);
    fill_uniform(x, rng);
    for (float& v : x) v = round_bf16(v);
    std::vector<std::vector<float>> simple = group.run(x, 6, true);
    for (size_t g = 0; g < group.linears.size(); g++) {
        INFO("simple kernel, linear " << g);
        std::vector<float> ref = group.reference((int)g, x, 6);
        check_close("y simple", simple[g], ref, std::ldexp(max_abs(ref), -7), 1.0f / 128,
                    group.adapters[g] ? 1.0 : 0.01);
    }
    // 3 and 7: the ax kernel's rounded-up row counts; 17 and 33: odd counts of two and three m-tiles
    check_random_rows(group, {1, 3, 6, 7, 17, 33, 48, 64, 70}, rng);
    // the group (k/v width, few slabs: many k splits) took the wgmma path at 64 rows; narrow groups take it too
    if (wgmma_gpu()) CHECK(decode_linear_wgmma_path(group.gpu_linears().data(), (int)group.linears.size(), 64));

    // one linear of 2048 rows over in 16384: 128 tiles x 256 blocks = 32768 pairs, the least that the streaming
    // kernel runs "wide" (one n-tile of x at a time, two blocks an SM) above 16 rows of x; narrow at M 6
    DecodeGroup wide;
    wide.R = group.R;
    wide.scale = group.scale;
    add_linear(wide, 2048, 16384, LinearFormat::NF4, true, true, false, rng);
    check_random_rows(wide, {6, 24, 64}, rng);

    // wide groups, as gate/up: two linears of 1024 rows (multiples of 32: two m-tiles a step, tiles never straddle
    // the linears), and of 1008 + 1040 rows (not: one m-tile a step, a tile of 16 at the boundary)
    for (int first : {1024, 1008}) {
        INFO("wide group " << first << " + " << 2048 - first);
        DecodeGroup pair;
        pair.R = group.R;
        pair.scale = group.scale;
        add_linear(pair, first, 16384, LinearFormat::NF4, false, true, false, rng);
        add_linear(pair, 2048 - first, 16384, LinearFormat::NF4, false, true, false, rng);
        check_random_rows(pair, {24, 64}, rng);
    }

    // gate/up-like: two linears of 4096 rows, which the wgmma path takes at 33 to 64 rows of x on an sm_90 GPU; at 32
    // the streaming kernel does
    DecodeGroup gate_up;
    gate_up.R = group.R;
    gate_up.scale = group.scale;
    add_linear(gate_up, 4096, 3584, LinearFormat::NF4, false, true, false, rng);
    add_linear(gate_up, 4096, 3584, LinearFormat::NF4, false, true, false, rng);
    check_random_rows(gate_up, {32, 33, 48, 64}, rng);
    if (wgmma_gpu()) {  // that the path ran above (its weights are tiled now); else it is absent
        const std::vector<LoraLinearGpu> lins = gate_up.gpu_linears();
        CHECK(decode_linear_wgmma_path(lins.data(), 2, 64));
        CHECK(decode_linear_wgmma_path(lins.data(), 2, 48));
        CHECK(decode_linear_wgmma_path(lins.data(), 2, 33));
        CHECK_FALSE(decode_linear_wgmma_path(lins.data(), 2, 32));
    }

    // the wgmma path's x kernel (dlw_x_kernel) cuts x into m-tiles of 16 rows, and ax (where it computes x A^T: lab
    // variant wgxax) into tiles of 32 columns: 49 rows leave the last m-tile one row, and rank 8 on three linears is
    // 24 columns (a tile part empty)
    DecodeGroup rank8;
    rank8.R = 8;
    rank8.scale = 2.0f;
    for (int g = 0; g < 3; g++) add_linear(rank8, 128, 3584, LinearFormat::NF4, g == 1, true, false, rng);
    check_random_rows(rank8, {33, 49, 64}, rng);
    if (wgmma_gpu()) {
        const std::vector<LoraLinearGpu> lins = rank8.gpu_linears();
        CHECK(decode_linear_wgmma_path(lins.data(), 3, 64));
    }

    // q/k/v-like, an adapter of rank 32 on each: ax's 96 columns (in production x A^T is computed before the wgmma
    // kernel; in its lab variant wgaxin, DL_CFG_WGMMA_AX, they are two 64-row slabs of A rows, the second half empty)
    DecodeGroup qkv;
    qkv.R = 32;
    qkv.scale = 2.0f;
    add_linear(qkv, 512, 3584, LinearFormat::NF4, true, true, false, rng);
    add_linear(qkv, 128, 3584, LinearFormat::NF4, true, true, false, rng);
    add_linear(qkv, 128, 3584, LinearFormat::NF4, true, true, false, rng);
    check_random_rows(qkv, {40, 50, 64}, rng);
    if (wgmma_gpu()) {
        const std::vector<LoraLinearGpu> lins = qkv.gpu_linears();
        CHECK(decode_linear_wgmma_path(lins.data(), 3, 64));
    }

    // in 32768: past what decode_lora_ax_kernel holds in registers (24576), so x A^T takes the other path at M 2
    DecodeGroup long_k;
    long_k.R = group.R;
    long_k.scale = group.scale;
    add_linear(long_k, 64, 32768, LinearFormat::NF4, true, true, false, rng);
    check_random_rows(long_k, {2}, rng);
}

TEST_CASE("decode_linear: bf16 weights (an lm_head slice) match the CPU reference", "[gpu][decode_linear]") {
    Rng rng(99);
    DecodeGroup head;
    add_linear(head, 4096, 896, LinearFormat::BF16, false, false, false, rng);
    for (int M : {1, 6, 48, 64}) {
        INFO("M " << M);
        std::vector<float> x((size_t)M * 896);
        fill_uniform(x, rng);
        for (float& v : x) v = round_bf16(v);
        std::vector<float> ref = head.reference(0, x, M);
        // one rounding of an fp32 sum on both sides: an ulp (2^-7 relative) where a sum lies within the fp32
        // sum-order difference (~896 * 2^-24 of sum |x w|, under 2^-12 of the largest logit) of a rounding boundary,
        // which is also the absolute part for logits near zero; bit-equal elsewhere (at most 1% may differ)
        check_close("logits", head.run(x, M, false)[0], ref, std::ldexp(max_abs(ref), -12), 1.0f / 128, 0.01);
    }
}

TEST_CASE("decode_linear: bf16 weights with a cuBLASLt context (the GPU model's bf16 base copy) match the CPU "
          "reference", "[gpu][decode_linear]") {
    Rng rng(4242);
    // the k/v-width group in bf16: bias and adapters, and one linear without an adapter
    DecodeGroup group;
    add_kv_width_group(group, LinearFormat::BF16, rng);
    DeviceArray<uint8_t> workspace(matmul_workspace_bytes());
    MatmulContext* ctx = matmul_create(workspace.ptr, workspace.n);
    group.ctx = ctx;
    check_random_rows(group, {1, 6, 48, 64, 100, 130}, rng);  // over 64 rows: one GEMM, not 64-row passes
    // no adapter at all: the base GEMMs alone
    DecodeGroup bare;
    bare.R = 32;
    bare.scale = 2.0f;
    bare.ctx = ctx;
    add_linear(bare, 256, 896, LinearFormat::BF16, true, false, false, rng);
    check_random_rows(bare, {6, 64}, rng);
    // another rank and scale, with two adapters whose A copies are not consecutive (one GEMM each for x A^T)
    DecodeGroup odd_rank;
    odd_rank.R = 12;
    odd_rank.scale = 0.5f;
    odd_rank.ctx = ctx;
    add_linear(odd_rank, 256, 896, LinearFormat::BF16, true, true, false, rng);
    add_linear(odd_rank, 64, 896, LinearFormat::BF16, false, true, false, rng);
    check_random_rows(odd_rank, {6, 64}, rng);
    matmul_destroy(ctx);
}

TEST_CASE("decode_linear: one workspace serves groups of different sizes, as a decode step uses it", "[gpu][decode_linear]") {
    Rng rng(31337);
    // a q/k/v-like group with three adapters and a down-like single linear with one (different tile counts, ax
    // widths and k splits), run in turn on one zeroed workspace: each must give the bits of a fresh workspace
    DecodeGroup qkv, down;
    qkv.R = down.R = 32;
    qkv.scale = down.scale = 2.0f;
    add_linear(qkv, 512, 1024, LinearFormat::NF4, true, true, false, rng);
    add_linear(qkv, 128, 1024, LinearFormat::NF4, true, true, false, rng);
    add_linear(qkv, 128, 1024, LinearFormat::NF4, true, true, false, rng);
    add_linear(down, 1024, 2048, LinearFormat::NF4, false, true, false, rng);
    std::vector<LoraLinearGpu> a = qkv.gpu_linears(), b = down.gpu_linears();
    size_t bytes = std::max(decode_linear_workspace_bytes(a.data(), 3, 32, 64), decode_linear_workspace_bytes(b.data(), 1, 32, 64));
    DeviceArray<uint8_t> shared(bytes);
    cudaCheck(cudaMemset(shared.ptr, 0, bytes));
    size_t compared = 0;
    for (int M : {1, 6, 64, 3}) {
        std::vector<float> x1((size_t)M * 1024), x2((size_t)M * 2048);
        fill_uniform(x1, rng);
        fill_uniform(x2, rng);
        for (float& v : x1) v = round_bf16(v);
        for (float& v : x2) v = round_bf16(v);
        std::vector<std::vector<float>> got1 = qkv.run(x1, M, false, &shared), got2 = down.run(x2, M, false, &shared);
        std::vector<std::vector<float>> fresh1 = qkv.run(x1, M, false), fresh2 = down.run(x2, M, false);
        got1.push_back(got2[0]);
        fresh1.push_back(fresh2[0]);
        for (size_t g = 0; g < got1.size(); g++) {
            size_t differ = 0;
            for (size_t i = 0; i < got1[g].size(); i++) differ += !(got1[g][i] == fresh1[g][i]);
            INFO("M " << M << ", output " << g << ": " << differ << " of " << got1[g].size() << " differ");
            CHECK(differ == 0);
            compared += got1[g].size();
        }
    }
    printf("  decode_linear shared workspace: %zu outputs identical to fresh-workspace runs\n", compared);
}
