// test_linear.cpp: GPU NF4 dequantization (bit for bit) and the cuBLASLt LoRA linear layer (forward and backward) against the CPU reference.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "data/json.h"
#include "data/rng.h"
#include "data/text.h"
#include "kernels/matmul.cuh"
#include "kernels/nf4_dequant.cuh"
#include "kernels/nf4_tile.cuh"
#include "lora/lora.h"
#include "model/cpu_model.h"
#include "model/weights.h"
#include "quant/bf16.h"
#include "quant/nf4.h"
#include "test/gpu/gpu_test_util.h"

namespace {

// ---- NF4 dequantization ------------------------------------------------------------------------------------

// The GPU's dequantization of a view with device pointers, into a buffer at `out_offset` elements (an offset
// that breaks 16-byte alignment sends the launcher down its fallback path).
std::vector<uint16_t> gpu_dequantize(const NF4View& device_view, int64_t out_offset = 0) {
    int64_t n = device_view.numel();
    DeviceBf16 out((size_t)(n + out_offset));
    cudaCheck(cudaMemset(out.ptr, 0xFF, (n + out_offset) * sizeof(__nv_bfloat16)));  // NaN: unwritten shows
    nf4_dequantize_gpu(out.ptr + out_offset, device_view, 0);
    cudaCheck(cudaDeviceSynchronize());
    std::vector<uint16_t> host(n);
    cudaCheck(cudaMemcpy(host.data(), out.ptr + out_offset, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    return host;
}

std::vector<uint16_t> cpu_dequantize(const NF4View& host_view) {
    std::vector<uint16_t> out(host_view.numel());
    nf4_view_dequantize(host_view, out.data());
    return out;
}

void require_identical_bf16(const std::string& what, const std::vector<uint16_t>& got,
                            const std::vector<uint16_t>& expected) {
    REQUIRE(got.size() == expected.size());
    size_t mismatches = 0, first = 0;
    for (size_t i = 0; i < got.size(); i++)
        if (got[i] != expected[i] && mismatches++ == 0) first = i;
    INFO(what << ": " << mismatches << " of " << got.size() << " differ"
              << (mismatches ? ", first at [" + std::to_string(first) + "]: got " + std::to_string(got[first]) +
                                   " expected " + std::to_string(expected[first])
                             : std::string()));
    REQUIRE(mismatches == 0);
}

// The GPU result, on the fast path and on the fallback (packed one byte off, output one element off), must be
// bit-identical to nf4_view_dequantize.
void check_dequantize(const std::string& what, const NF4View& host_view, const std::vector<uint16_t>& expected) {
    GpuNF4 gpu(host_view);
    require_identical_bf16(what + " (fast path)", gpu_dequantize(gpu.view), expected);
    require_identical_bf16(what + " (unaligned output)", gpu_dequantize(gpu.view, 1), expected);
    std::vector<uint8_t> shifted(host_view.packed, host_view.packed + (host_view.numel() + 1) / 2);
    shifted.insert(shifted.begin(), 0xA5);
    DeviceArray<uint8_t> packed_off(shifted);
    NF4View off = gpu.view;
    off.packed = packed_off.ptr + 1;
    require_identical_bf16(what + " (unaligned codes)", gpu_dequantize(off), expected);
}

const std::string NF4_REF_DIR = "test/ref/nf4/";

std::vector<uint32_t> json_u32s(const JsonValue& v) {
    std::vector<uint32_t> out;
    for (const JsonValue& x : v.array) out.push_back((uint32_t)x.number);
    return out;
}

// One array of a dumped case, out of the blob (layout: dev/ref/nf4_ref.py; test/test_nf4.cpp reads the same).
template <typename T>
std::vector<T> dump_array(const JsonValue& c, const std::string& blob, const char* key) {
    const JsonValue* a = c.get("arrays")->get(key);
    REQUIRE(a != nullptr);
    size_t offset = (size_t)a->get("offset")->number, count = (size_t)a->get("count")->number;
    REQUIRE(offset + count * sizeof(T) <= blob.size());
    std::vector<T> out(count);
    memcpy(out.data(), blob.data() + offset, count * sizeof(T));
    return out;
}

}  // namespace

TEST_CASE("nf4 gpu: dequantizing the bitsandbytes dumps is bit-identical to the CPU and to torch", "[gpu][linear][nf4_gpu]") {
    JsonValue index = json_parse_file(NF4_REF_DIR + "index.json");
    std::string blob = read_file(NF4_REF_DIR + index.get("blob")->string);
    std::vector<uint32_t> code_bits = json_u32s(*index.get("nf4_code_bits"));
    std::vector<uint32_t> map_bits = json_u32s(*index.get("dynamic_map_bits"));
    REQUIRE(code_bits.size() == 16);
    REQUIRE(map_bits.size() == 256);
    int cases = 0;
    for (const JsonValue& c : index.get("cases")->array) {
        std::string name = c.get("name")->string;
        INFO("case " << name);
        // the dumped quantized state with the dumped tables, as a loaded checkpoint holds it
        std::vector<uint8_t> packed = dump_array<uint8_t>(c, blob, "packed");
        std::vector<uint8_t> absmax_q = dump_array<uint8_t>(c, blob, "absmax_q");
        std::vector<float> nested_absmax = dump_array<float>(c, blob, "nested_absmax");
        std::vector<float> absmax = dump_array<float>(c, blob, "absmax");
        float code[16], nested_code[256];
        memcpy(code, code_bits.data(), sizeof(code));
        memcpy(nested_code, map_bits.data(), sizeof(nested_code));
        NF4View v;
        v.rows = (int64_t)c.get("rows")->number;
        v.cols = (int64_t)c.get("cols")->number;
        v.packed = packed.data();
        v.absmax_q = absmax_q.data();
        v.nested_absmax = nested_absmax.data();
        uint32_t offset_bits = (uint32_t)c.get("offset_bits")->number;
        memcpy(&v.nested_offset, &offset_bits, sizeof(float));
        v.code = code;
        v.nested_code = nested_code;
        std::vector<uint16_t> torch_dequant = dump_array<uint16_t>(c, blob, "dequant");
        std::vector<uint16_t> cpu = cpu_dequantize(v);
        require_identical_bf16("CPU vs torch", cpu, torch_dequant);
        check_dequantize("GPU vs CPU, double quantization", v, cpu);

        // without double quantization: the fp32 absmax per block, as older checkpoints store it
        NF4View plain = v;
        plain.double_quant = false;
        plain.absmax_q = nullptr;
        plain.nested_absmax = nullptr;
        plain.nested_code = nullptr;
        plain.absmax_f32 = absmax.data();
        std::vector<uint16_t> cpu_plain = cpu_dequantize(plain);
        require_identical_bf16("CPU vs torch, no double quantization", cpu_plain,
                               dump_array<uint16_t>(c, blob, "dequant_plain"));
        check_dequantize("GPU vs CPU, no double quantization", plain, cpu_plain);
        cases++;
    }
    REQUIRE(cases >= 7);
}

namespace {

// Random codes and scales: every byte pattern is a valid NF4 tensor. The scales span 2^-140 .. 2^10, so some block
// scales and products are subnormal (the GPU must not flush them) and some blocks scale to <= 0.
NF4Tensor random_nf4(int64_t rows, int64_t cols, bool double_quant, Rng& rng) {
    auto extreme_scale = [&] { return std::ldexp(0.5f + rng.next_float(), (int)rng.next_below(151) - 140); };
    const float nested_offset = rng.next_below(2) ? extreme_scale() : 0.0f;
    return ::random_nf4(rows, cols, double_quant, rng, extreme_scale, nested_offset);
}

}  // namespace

TEST_CASE("nf4 gpu: random NF4 tensors of many shapes dequantize bit-identically to the CPU", "[gpu][linear][nf4_gpu]") {
    Rng rng(20240611);
    // odd sizes (a partial last chunk of 8, a last odd element), a partial 64-block, several nested blocks of 256,
    // and a Qwen2.5-7B k_proj [512, 3584] (1.8M weights, 112 nested blocks)
    const int64_t shapes[][2] = {{1, 1}, {3, 7}, {5, 13}, {1, 72}, {7, 64}, {33, 100}, {64, 1000}, {300, 257},
                                 {512, 3584}};
    for (const auto& shape : shapes) {
        for (bool double_quant : {true, false}) {
            INFO("shape [" << shape[0] << ", " << shape[1] << "], double_quant " << double_quant);
            NF4Tensor t = random_nf4(shape[0], shape[1], double_quant, rng);
            NF4View v = nf4_view(t);
            check_dequantize("random", v, cpu_dequantize(v));
        }
    }
    // tileable shapes rewritten into the decode-tile order on the GPU: the bytes nf4_tile makes on the CPU, and the
    // same bf16 weights once dequantized
    const int64_t tiled_shapes[][2] = {{16, 64}, {48, 192}, {512, 3584}};
    for (const auto& shape : tiled_shapes) {
        for (bool double_quant : {true, false}) {
            INFO("tiled, shape [" << shape[0] << ", " << shape[1] << "], double_quant " << double_quant);
            NF4Tensor t = random_nf4(shape[0], shape[1], double_quant, rng);
            NF4View v = nf4_view(t);
            GpuNF4 gpu(v);
            const size_t scratch_bytes = nf4_tile_scratch_bytes(gpu.view);
            DeviceArray<uint8_t> scratch(scratch_bytes);
            nf4_tile_gpu(&gpu.view, scratch.ptr, scratch_bytes, 0);
            REQUIRE(gpu.view.tiled);
            std::vector<uint8_t> want_codes(t.packed.size()), want_absmax(t.absmax_q.size());
            nf4_tile(v, want_codes.data(), double_quant ? want_absmax.data() : nullptr);
            std::vector<uint8_t> got_codes(t.packed.size()), got_absmax(t.absmax_q.size());
            cudaCheck(cudaMemcpy(got_codes.data(), gpu.view.packed, got_codes.size(), cudaMemcpyDeviceToHost));
            if (double_quant)
                cudaCheck(cudaMemcpy(got_absmax.data(), gpu.view.absmax_q, got_absmax.size(), cudaMemcpyDeviceToHost));
            CHECK(got_codes == want_codes);
            CHECK(got_absmax == want_absmax);
            require_identical_bf16("tiled", gpu_dequantize(gpu.view), cpu_dequantize(v));
        }
    }
    // real weights quantized by our bitsandbytes-exact quantizer
    std::vector<float> w(96 * 320);
    fill_uniform(w, rng, -0.2f, 0.2f);
    std::vector<bf16_bits> w_bf16 = to_bf16(w);
    NF4Tensor t;
    nf4_quantize(w_bf16.data(), 96, 320, true, &t);
    check_dequantize("quantized uniform weights", nf4_view(t), cpu_dequantize(nf4_view(t)));
}

// ---- a tiny NF4 model's weight buffer on the GPU -------------------------------------------------------------

namespace {

std::string linear_weight_name(int layer, int slot) {
    return "model.layers." + std::to_string(layer) + "." + linear_parent(slot) + "." + LINEAR_NAMES[slot];
}

// The planned NF4 weight buffer of the tiny preset with random linears and biases, on the host and on the GPU,
// with views of both (weights_from_buffer, exactly as the GPU backend builds its views).
struct TinyNF4Model {
    Qwen2Config cfg = qwen2_preset("tiny");
    WeightPlan plan = weight_plan(cfg, LinearFormat::NF4);
    std::shared_ptr<uint8_t> host = weights_alloc(plan);
    DeviceArray<uint8_t> device;
    Qwen2Weights host_weights, gpu_weights;
    explicit TinyNF4Model(Rng& rng) {
        for (int l = 0; l < cfg.L; l++)
            for (int s = 0; s < NUM_LINEAR; s++) {
                int64_t out = linear_out_features(cfg, s), in = linear_in_features(cfg, s);
                std::vector<float> w((size_t)(out * in));
                fill_uniform(w, rng, -0.5f, 0.5f);
                std::vector<bf16_bits> w_bf16 = to_bf16(w);
                NF4Tensor t;
                nf4_quantize(w_bf16.data(), out, in, true, &t);
                weights_store_nf4(plan, linear_weight_name(l, s) + ".weight", t, host.get());
                if (s <= LIN_V) {
                    std::vector<float> b((size_t)out);
                    fill_uniform(b, rng, -0.5f, 0.5f);
                    std::vector<bf16_bits> b_bf16 = to_bf16(b);
                    weights_store_bf16(plan, linear_weight_name(l, s) + ".bias", b_bf16.data(), out, host.get());
                }
            }
        device.assign(std::vector<uint8_t>(host.get(), host.get() + plan.total_bytes));
        host_weights = weights_from_buffer(plan, host.get(), host.get(), nullptr);
        gpu_weights = weights_from_buffer(plan, host.get(), device.ptr, nullptr);
    }
};

}  // namespace

TEST_CASE("nf4 gpu: views of the planned weight buffer in GPU memory dequantize like the CPU", "[gpu][linear][nf4_gpu]") {
    Rng rng(7);
    TinyNF4Model model(rng);
    for (int l = 0; l < model.cfg.L; l++)
        for (int s = 0; s < NUM_LINEAR; s++) {
            INFO("layer " << l << " " << LINEAR_NAMES[s]);
            const LinearWeight& gpu = model.gpu_weights.layers[l].linear[s];
            const LinearWeight& cpu = model.host_weights.layers[l].linear[s];
            REQUIRE(gpu.format == LinearFormat::NF4);
            require_identical_bf16("planned buffer", gpu_dequantize(gpu.nf4), cpu_dequantize(cpu.nf4));
        }
}

// ---- the LoRA linear layer -------------------------------------------------------------------------------------

namespace {

// One group of linears sharing an input, run forward and backward on the GPU and on the CPU reference (BF16
// mode) from the same bf16 x and dy and the same fp32 LoRA masters. `consecutive` lays the bf16 A copies and
// the dA gradients of the group out back to back (one GEMM for the group); otherwise each linear has its own.
void check_lora_group(const std::string& what, const LinearWeight* const* host_bases,
                      const LinearWeight* const* gpu_bases, int G, int N, int R, float scale, bool consecutive,
                      bool with_adapter_on_first, bool accumulate, Rng& rng) {
    INFO(what << ": G " << G << ", N " << N << ", R " << R << ", consecutive " << consecutive << ", accumulate "
              << accumulate << ", adapter on the first linear " << with_adapter_on_first);
    int in = (int)host_bases[0]->in;
    std::vector<float> x((size_t)N * in);
    fill_uniform(x, rng);
    std::vector<bf16_bits> x_bf16 = to_bf16(x);

    // fp32 masters: A ~ U(-1, 1)/sqrt(in) as PEFT draws it, B nonzero (a trained adapter) of the size that makes
    // the adapter term as large as the base output: the hardest case for the bf16 adapter operands.
    std::vector<std::vector<float>> A(G), B(G), dA0(G), dB0(G), dy(G);
    std::vector<std::vector<bf16_bits>> dy_bf16(G);
    std::vector<bool> adapted(G);
    std::vector<size_t> a_offsets(G);  // where each A (and dA) starts in the consecutive layout
    size_t a_total = 0;
    for (int g = 0; g < G; g++) {
        int out = (int)host_bases[g]->out;
        adapted[g] = g > 0 || with_adapter_on_first;
        A[g].resize((size_t)R * in);
        B[g].resize((size_t)out * R);
        fill_uniform(A[g], rng, -1.0f / std::sqrt((float)in), 1.0f / std::sqrt((float)in));
        fill_uniform(B[g], rng, -1.0f / std::sqrt((float)R), 1.0f / std::sqrt((float)R));
        dA0[g].resize(A[g].size());
        dB0[g].resize(B[g].size());
        fill_uniform(dA0[g], rng);  // gradients already accumulated by an earlier micro-batch
        fill_uniform(dB0[g], rng);
        dy[g].resize((size_t)N * out);
        fill_uniform(dy[g], rng);
        dy_bf16[g] = to_bf16(dy[g]);
        a_offsets[g] = a_total;
        a_total += A[g].size();
    }
    std::vector<float> dx0((size_t)N * in);
    fill_uniform(dx0, rng);
    std::vector<bf16_bits> dx0_bf16 = to_bf16(dx0);

    // ---- the GPU: bf16 copies of A and B made by lora_to_bf16, fp32 gradients pre-filled
    DeviceBf16 x_gpu(x_bf16), dx_gpu(dx0_bf16), A_all(a_total), ax((size_t)N * G * R), dax((size_t)N * G * R);
    DeviceArray<float> dA_all(a_total);
    std::vector<std::unique_ptr<DeviceArray<float>>> A_f32(G), B_f32(G), dB_gpu(G), dA_own(G);
    std::vector<std::unique_ptr<DeviceBf16>> B_bf16(G), A_own(G), y_gpu(G), dy_gpu(G);
    std::vector<LoraLinearGpu> linears(G);
    std::vector<__nv_bfloat16*> y_ptrs(G);
    std::vector<const __nv_bfloat16*> dy_ptrs(G);
    for (int g = 0; g < G; g++) {
        int out = (int)host_bases[g]->out;
        A_f32[g].reset(new DeviceArray<float>(A[g]));
        B_f32[g].reset(new DeviceArray<float>(B[g]));
        B_bf16[g].reset(new DeviceBf16(B[g].size()));
        lora_to_bf16(B_bf16[g]->ptr, B_f32[g]->ptr, B[g].size(), 0);
        __nv_bfloat16* a_copy = A_all.ptr + a_offsets[g];
        float* da = dA_all.ptr + a_offsets[g];
        if (!consecutive) {  // separate allocations: never adjacent
            A_own[g].reset(new DeviceBf16(A[g].size()));
            dA_own[g].reset(new DeviceArray<float>(A[g].size()));
            a_copy = A_own[g]->ptr;
            da = dA_own[g]->ptr;
        }
        lora_to_bf16(a_copy, A_f32[g]->ptr, A[g].size(), 0);
        cudaCheck(cudaMemcpy(da, dA0[g].data(), dA0[g].size() * 4, cudaMemcpyHostToDevice));
        dB_gpu[g].reset(new DeviceArray<float>(dB0[g]));
        y_gpu[g].reset(new DeviceBf16((size_t)N * out));
        cudaCheck(cudaMemset(y_gpu[g]->ptr, 0xFF, (size_t)N * out * 2));  // NaN until written
        dy_gpu[g].reset(new DeviceBf16(dy_bf16[g]));
        y_ptrs[g] = y_gpu[g]->ptr;
        dy_ptrs[g] = dy_gpu[g]->ptr;
        linears[g].base = gpu_bases[g];
        if (adapted[g]) {
            linears[g].A = a_copy;
            linears[g].B = B_bf16[g]->ptr;
            linears[g].dA = da;
            linears[g].dB = dB_gpu[g]->ptr;
        }
    }
    size_t scratch_bytes = lora_linear_weight_scratch_bytes(linears.data(), G);
    DeviceBf16 w_scratch(scratch_bytes / 2);
    DeviceArray<uint8_t> workspace(matmul_workspace_bytes());
    MatmulContext* ctx = matmul_create(workspace.ptr, workspace.n);
    lora_linear_forward(ctx, linears.data(), G, x_gpu.ptr, N, R, scale, y_ptrs.data(), ax.ptr, w_scratch.ptr, 0);
    lora_linear_backward(ctx, linears.data(), G, x_gpu.ptr, N, R, scale, dy_ptrs.data(), ax.ptr, dx_gpu.ptr,
                         accumulate, dax.ptr, w_scratch.ptr, 0);
    cudaCheck(cudaDeviceSynchronize());
    matmul_destroy(ctx);

    // ---- the CPU reference
    std::vector<float> din = accumulate ? dx0 : std::vector<float>(x.size(), 0.0f);
    std::vector<float> ax_gpu = download_floats(ax);
    for (int g = 0; g < G; g++) {
        INFO("linear " << g << " [" << host_bases[g]->out << ", " << in << "]");
        int out = (int)host_bases[g]->out;
        std::vector<bf16_bits> w_scratch_cpu;
        const bf16_bits* w = cpu_linear_weight(*host_bases[g], &w_scratch_cpu);
        std::vector<float> y((size_t)N * out), ax_ref((size_t)N * R);
        cpu_matmul_forward(y.data(), x.data(), w, host_bases[g]->bias, N, in, out, CpuPrecision::BF16);
        if (adapted[g]) cpu_lora_forward(y.data(), ax_ref.data(), x.data(), A[g].data(), B[g].data(), N, in, out, R,
                                         scale, CpuPrecision::BF16);
        std::vector<float> dA_ref = dA0[g], dB_ref = dB0[g];
        cpu_matmul_backward(din.data(), dy[g].data(), w, N, in, out);
        if (adapted[g]) cpu_lora_backward(din.data(), dA_ref.data(), dB_ref.data(), dy[g].data(), x.data(),
                                          ax_ref.data(), A[g].data(), B[g].data(), N, in, out, R, scale);

        // y: both sides round the base output and then base + adapter to bf16; a sum that lands near a rounding
        // boundary can go either way, so one ulp (2^-7 relative at most); and a flip of the rounded base output,
        // carried into the sum, plus the adapter's bf16 operands (~3 * 2^-9 of a term as large as y) stay under
        // an ulp of the largest |y|, the absolute part.
        std::vector<float> y_got = download_floats(*y_gpu[g]);
        CHECK(validate("y", y_got.data(), y.data(), y.size(), std::ldexp(max_abs(y), -7), 1.0f / 128));
        if (!adapted[g]) continue;
        // ax: the GPU rounds x A^T to bf16 (half an ulp, 2^-8 relative) from the bf16 copy of A (2^-9 per term,
        // so at most 2^-9 of sum |a x|, bounded here by 2^-8 of the largest |ax|).
        std::vector<float> ax_got((size_t)N * R);
        for (int n = 0; n < N; n++)
            for (int r = 0; r < R; r++) ax_got[(size_t)n * R + r] = ax_gpu[(size_t)n * G * R + g * R + r];
        CHECK(validate("ax", ax_got.data(), ax_ref.data(), ax_ref.size(), std::ldexp(max_abs(ax_ref), -8), 1.0f / 128));
        // dB = dB0 + scale * dy^T ax: fp32 sums over N tokens of the GPU's bf16 ax, whose error is 2^-9 of
        // sum |a x| (the bf16 copy of A), not of |ax|: with cancellation it is several times 2^-9 |ax|, and it
        // adds up over the N tokens. On the H200 the worst case (tiny down_proj, N 37) reached 0.46 of this 2^-7
        // bound (0.92 of 2^-8), so 2^-7 of the largest gradient.
        std::vector<float> dB_got = dB_gpu[g]->download();
        CHECK(validate("dB", dB_got.data(), dB_ref.data(), dB_ref.size(), std::ldexp(max_abs(dB_ref), -7), 1.0f / 256));
        // dA = dA0 + (scale * dy B)^T x with d(ax) rounded to bf16 and B a bf16 copy: two 2^-9 roundings per term,
        // the same kind of sum as dB, so the same bound (worst seen: 0.38 of it).
        std::vector<float> dA_got = consecutive ? to_host(dA_all.ptr + a_offsets[g], A[g].size()) : dA_own[g]->download();
        CHECK(validate("dA", dA_got.data(), dA_ref.data(), dA_ref.size(), std::ldexp(max_abs(dA_ref), -7), 1.0f / 256));
    }
    // dx: bf16, rounded after each of the G base GEMMs and the adapter GEMM (G+1 roundings of the running sum,
    // each within 2^-8 of it), from bf16 adapter operands: within 2^-6 of the largest |dx|, plus an ulp.
    std::vector<float> dx_got = download_floats(dx_gpu);
    CHECK(validate("dx", dx_got.data(), din.data(), din.size(), std::ldexp(max_abs(din), -6), 1.0f / 128));
}

}  // namespace

TEST_CASE("linear: the LoRA linears of a tiny NF4 model, forward and backward, match the CPU reference", "[gpu][linear]") {
    Rng rng(42);
    TinyNF4Model model(rng);
    const LayerWeights& cpu = model.host_weights.layers[1];
    const LayerWeights& gpu = model.gpu_weights.layers[1];
    int N = 37;  // B*T tokens: not a multiple of anything
    LoraConfig lora;
    lora.R = 16;
    lora.alpha = 32.0f;
    const int groups[][3] = {{LIN_Q, LIN_K, LIN_V}, {LIN_O, -1, -1}, {LIN_GATE, LIN_UP, -1}, {LIN_DOWN, -1, -1}};
    for (const auto& group : groups) {
        const LinearWeight* host_bases[3];
        const LinearWeight* gpu_bases[3];
        int G = 0;
        for (int s : group)
            if (s >= 0) {
                host_bases[G] = &cpu.linear[s];
                gpu_bases[G++] = &gpu.linear[s];
            }
        std::string name = LINEAR_NAMES[group[0]];
        for (bool consecutive : {true, false}) {
            check_lora_group(name, host_bases, gpu_bases, G, N, lora.R, lora.scale(), consecutive, true, true, rng);
        }
        // an adapter-less first linear (targets can leave a linear out) and dx overwritten instead of added to
        check_lora_group(name, host_bases, gpu_bases, G, N, lora.R, lora.scale(), false, false, false, rng);
    }
}

TEST_CASE("linear: a bf16 linear at a wider shape matches the CPU reference", "[gpu][linear]") {
    Rng rng(5);
    const int OUT = 384, IN = 1024, N = 96, R = 32;
    std::vector<float> w((size_t)OUT * IN), bias(OUT);
    fill_uniform(w, rng, -1.0f / 32, 1.0f / 32);
    fill_uniform(bias, rng);
    std::vector<bf16_bits> w_bf16 = to_bf16(w), bias_bf16 = to_bf16(bias);
    DeviceBf16 w_gpu(w_bf16), bias_gpu(bias_bf16);
    for (bool with_bias : {false, true}) {
        LinearWeight host_base, gpu_base;
        host_base.out = gpu_base.out = OUT;
        host_base.in = gpu_base.in = IN;
        host_base.w = w_bf16.data();
        gpu_base.w = (const bf16_bits*)w_gpu.ptr;
        host_base.bias = with_bias ? bias_bf16.data() : nullptr;
        gpu_base.bias = with_bias ? (const bf16_bits*)bias_gpu.ptr : nullptr;
        const LinearWeight* host_bases[1] = {&host_base};
        const LinearWeight* gpu_bases[1] = {&gpu_base};
        check_lora_group(with_bias ? "bf16 with bias" : "bf16", host_bases, gpu_bases, 1, N, R, 0.5f, true, true,
                         with_bias, rng);
    }
}

// Negative controls, the deliberate breaks of this one-shot GPU run: the comparisons above must notice a kernel
// that reads the nibbles in the wrong order, and a LoRA branch whose scale is 5% off.
TEST_CASE("linear: the comparisons catch deliberately broken results", "[gpu][linear]") {
    Rng rng(99);
    NF4Tensor t = random_nf4(64, 256, true, rng);
    NF4View v = nf4_view(t);
    std::vector<uint16_t> expected = cpu_dequantize(v);
    NF4Tensor swapped = t;  // element 2j in the LOW nibble: what a kernel with the nibble order wrong computes
    for (uint8_t& b : swapped.packed) b = (uint8_t)(b << 4 | b >> 4);
    GpuNF4 gpu(nf4_view(swapped));
    std::vector<uint16_t> got = gpu_dequantize(gpu.view);
    size_t differ = 0;
    for (size_t i = 0; i < got.size(); i++) differ += got[i] != expected[i];
    CHECK(differ > got.size() / 2);

    const int OUT = 256, IN = 512, N = 64, R = 32;
    const float scale = 2.0f;
    std::vector<float> x((size_t)N * IN), w((size_t)OUT * IN), A((size_t)R * IN), B((size_t)OUT * R);
    fill_uniform(x, rng);
    fill_uniform(w, rng, -1.0f / 16, 1.0f / 16);
    fill_uniform(A, rng, -1.0f / 16, 1.0f / 16);
    fill_uniform(B, rng, -0.1f, 0.1f);
    std::vector<bf16_bits> x_bf16 = to_bf16(x), w_bf16 = to_bf16(w), A_bf16 = to_bf16(A), B_bf16 = to_bf16(B);
    DeviceBf16 x_gpu(x_bf16), w_gpu(w_bf16), A_gpu(A_bf16), B_gpu(B_bf16), y_gpu((size_t)N * OUT), ax((size_t)N * R);
    LinearWeight base;
    base.out = OUT;
    base.in = IN;
    base.w = (const bf16_bits*)w_gpu.ptr;
    LoraLinearGpu linear;
    linear.base = &base;
    linear.A = A_gpu.ptr;
    linear.B = B_gpu.ptr;
    DeviceArray<uint8_t> workspace(matmul_workspace_bytes());
    MatmulContext* ctx = matmul_create(workspace.ptr, workspace.n);
    __nv_bfloat16* y_ptr = y_gpu.ptr;
    lora_linear_forward(ctx, &linear, 1, x_gpu.ptr, N, R, scale * 1.05f, &y_ptr, ax.ptr, nullptr, 0);
    cudaCheck(cudaDeviceSynchronize());
    matmul_destroy(ctx);
    std::vector<float> y((size_t)N * OUT), ax_ref((size_t)N * R);
    cpu_matmul_forward(y.data(), x.data(), w_bf16.data(), nullptr, N, IN, OUT, CpuPrecision::BF16);
    cpu_lora_forward(y.data(), ax_ref.data(), x.data(), A.data(), B.data(), N, IN, OUT, R, scale, CpuPrecision::BF16);
    std::vector<float> y_got = download_floats(y_gpu);
    printf("  (a deliberately wrong LoRA scale: the next line must say FAIL)\n");
    CHECK_FALSE(validate("y with the scale 5% off", y_got.data(), y.data(), y.size(), std::ldexp(max_abs(y), -7), 1.0f / 128));
}
