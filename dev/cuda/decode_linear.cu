// decode_linear.cu: lab for the decode-time linear layer (NF4/bf16 weights x M = 1..64 rows of x, LoRA fused), validated against the CPU reference and timed against the memory roofline at Qwen2.5-7B shapes.
//
// Build and run: make build/lab_decode_linear && ./build/lab_decode_linear
//
// Roofline: each weight byte (NF4 codes + block scales, or bf16), bias, A and B read once, x read once, y written
// once, over 4.27 TB/s. At M = 64 an NF4 layer is also near the tensor-core ceiling (4*M flops per weight byte:
// 256 at M = 64 against a ridge of 187), so the memory share printed there is not reachable.
// version 0 (this file): no arithmetic, the NF4 code bytes streamed once by a grid-stride loop: what reading the
//   same bytes costs at that size, the ceiling the others are read against.
// version 1 (kernels/decode_linear.cu, decode_linear_forward_simple): one warp per output row, lanes striding over
//   k, each weight dequantized alone from global tables; the fallback for shapes the fast path cannot read.
// version 2 (this file): CUDA cores, one warp per row, each lane dequantizing 32 weights of one 16-byte load into
//   fp32 registers and multiplying them with 8 rows of x at a time (x from L1): weights read once at M <= 8,
//   but 2*M fp32 flops per weight on 67 TFLOP/s of FMA units.
// version 3 (kernels/decode_linear.cu, the "v3" variant below; production for bf16 weights): tensor cores
//   (mma.sync m16n8k16, the weights as the A operand, 8 rows of x per n-tile), weights and x through a cp.async
//   pipeline in shared memory, split-K summed in a fixed order by the last block of each row tile, bias + LoRA +
//   the two roundings in the epilogue; "+lora" adds the x A^T launch (the decode kernel, or cuBLASLt as
//   generation runs it).
// version 4 (kernels/decode_linear.cu, decode_linear_forward, production for NF4): the streaming kernel, every warp
//   on its own contiguous range of (16-row tile, 64-block) pairs, codes from HBM into registers a step ahead,
//   partial tiles added in a fixed order; "prod" reads the codes in decode-tile order (nf4_tile), as the GPU model
//   holds them. Launches of at most 8 rows read the codes through a table of code-byte pairs and cut ranges of whole
//   steps (variant narrow0: as the wider launches). The wide launches (more than 16 rows, many pairs: gate/up, down)
//   take two m-tiles a step, so each x load feeds 32 weight rows (variant tm1: one m-tile; tm2b2, tm2w4b3, tm2all,
//   tm2allfull: other shapes of it). Variant: fold (bf16 codes from a pair table, the block scale
//   applied once per block: not bitsandbytes' rounding). NF4 groups at 32 < M <= 64 go to the wgmma path (one warpgroup a
//   64-row slab, x shared in shared memory by bulk copies; variant wgmma0: the streaming kernel instead; wgleast:
//   other k splits; wgbar: x by cp.async and a block barrier; wgxax: x A^T in the kernel that writes x in wgmma's
//   order; wgaxin: x A^T in the wgmma kernel's first blocks; wgxearly: the x kernel lets the next kernel start at
//   its start, not once its x is staged).
// The adapters' x A^T: at most 8 rows, decode_lora_ax_kernel (A read into registers before the dependency wait, one
//   programmatic dependent launch a group); more rows, cuBLASLt. Variant axgemm: cuBLASLt at every M.
// bf16 weights (the GPU model's bf16 base copy of the NF4 linears, GpuOptions::bf16_base_copy): the layer through
//   the v3 kernel, as production runs it with a cuBLASLt context (lora_linear_forward: the base GEMMs, x A^T, and a
//   GEMM per adapter for ax B^T), and without adapters (the base GEMMs alone: what the adapters' GEMMs add).
//   Session 6 also measured one kernel a group for ax B^T in place of the GEMMs: 0.229 against 0.217 ms a layer at
//   M 64, dropped.
// Tuning: the variants side by side (kernels/decode_linear.cu compiled again with other DL_CFG_* knobs).
// Then a whole 7B decoder layer's seven linears (q/k/v as one group, o, gate/up as one group, down, with LoRA r 32)
// plus the bf16 lm_head (the decode kernel and cuBLASLt), per decode step, eager and as a CUDA graph.
// `lab_decode_linear profile [LINEAR [VARIANT [M]]]`: k, gate, down, q and o at one M (6 unless given), cold / warm /
// graph timings of each variant on row-major and tiled codes (with a bit-for-bit check that the order changes
// nothing), and few enough launches for ncu (dev/profile_decode_linear.sh).
#include <cmath>
#include <memory>
#include <vector>

#include "dev/cuda/lab_common.cuh"
#include "kernels/decode_linear.cuh"
#include "kernels/nf4_dequant.cuh"
#include "model/cpu_model.h"
#include "quant/nf4.h"

typedef __nv_bfloat16 bf16;

// Tuning variants: kernels/decode_linear.cu compiled again with other knob values (see its DL_CFG_* macros), each in
// its own namespace and object (dev/cuda/variants/decode_linear_variant.cu; the knobs of each are the Makefile's
// DL_KNOBS_<name>), timed side by side with the production build.
#define DL_DECLARE_VARIANT(NAME, DESCRIPTION)                                                                       \
    namespace NAME {                                                                                              \
    static const char* knobs = #NAME ": " DESCRIPTION;                                                            \
    void decode_linear_forward(const LoraLinearGpu* linears, int G, const bf16* x, int M, int R, float scale,     \
                               bf16* const* y, void* workspace, size_t workspace_bytes, cudaStream_t stream,      \
                               MatmulContext* ctx);                                                               \
    }
// the previous production kernel (v3: shared-memory pipeline, split-K through a workspace) for every NF4 call
DL_DECLARE_VARIANT(v3, "v3 for NF4 (shared-memory pipeline, split-K across blocks)")
// v4 with the folded dequantization (bf16 codes from a pair table, the block scale applied once per block: not
// bitsandbytes' rounding; validated against the CPU reference with the same tolerance)
DL_DECLARE_VARIANT(fold, "v4, folded dequantization")
// v4 with the exact pair table (the two fp32 codes of a byte in one 8-byte shared load: the same bits as prod)
DL_DECLARE_VARIANT(pairs, "v4 exact, codes from a table of code-byte pairs")
// v4 whose warps count their first partial tile in at the end of their range (one fence, nothing in flight)
DL_DECLARE_VARIANT(defer, "v4 exact, a warp's first partial tile arrives at the end of its range")
// v4 with ranges of whole steps, so that no step checks its size (see the kernel); and with both
DL_DECLARE_VARIANT(full, "v4 exact, ranges of whole steps")
DL_DECLARE_VARIANT(deferfull, "v4 exact, deferred arrival and whole steps")
// v4 whose wide launches (M > 16) take 2 blocks a step, half the code registers
DL_DECLARE_VARIANT(wch2, "v4 exact, wide launches 2 blocks a step")
// v4 with the exact pair table at a 64 KB boundary (one permute per byte forms the address; one block of 16 warps an
// SM): meant for M <= 16
DL_DECLARE_VARIANT(pairs5, "v4 exact, 64 KB-aligned pair table, 16 warps a block")
// x A^T through cuBLASLt at every M (production uses decode_lora_ax_kernel for steps of at most 8 rows)
DL_DECLARE_VARIANT(axgemm, "x A^T through cuBLASLt at every M")
// v4 whose narrow launches (M <= 8) are cut and dequantized as the wider ones (production: exact pairs, whole steps)
DL_DECLARE_VARIANT(narrow0, "v4 exact, M <= 8 without pairs or whole steps")
// v4 whose wide launches (M > 16) take one m-tile a step, as before session 8 (production: two, sharing each x load)
DL_DECLARE_VARIANT(tm1, "v4 exact, wide launches one m-tile a step")
// two m-tiles a step at 2 blocks an SM (128 registers a thread; production: 1 block, up to 255)
DL_DECLARE_VARIANT(tm2b2, "v4 exact, two m-tiles a step, 2 blocks an SM")
// blocks of 4 warps, 3 an SM with two m-tiles a step (170 registers: 12 warps an SM against 8); every v4 launch
// takes 4-warp blocks
DL_DECLARE_VARIANT(tm2w4b3, "v4 exact, 4 warps a block, two m-tiles a step at 3 blocks an SM")
// every launch above 16 rows wide (production: q/k/v and o stay narrow), so that they take two m-tiles a step too;
// and the same with ranges of whole steps
DL_DECLARE_VARIANT(tm2all, "v4 exact, every launch above 16 rows wide (two m-tiles a step)")
DL_DECLARE_VARIANT(tm2allfull, "v4 exact, every launch above 16 rows wide, ranges of whole steps")
// no wgmma path: the streaming kernel at every M (production: NF4 groups at 32 < M <= 64 on the wgmma path)
DL_DECLARE_VARIANT(wgmma0, "v4 exact, no wgmma path (the streaming kernel at every M)")
// the fewest k splits for a wave of blocks (production: the splits of least time by the cost model of dlw_splits)
DL_DECLARE_VARIANT(wgleast, "wgmma path, the fewest k splits for a wave")
// x staged by cp.async from every thread and a block barrier a k-block (production: one bulk copy a block, and a full
// and an empty mbarrier a stage)
DL_DECLARE_VARIANT(wgbar, "wgmma path, x by cp.async and a block barrier a k-block")
// the adapters' x A^T in the kernel that writes x in wgmma's order, dlw_x_kernel (production: cuBLASLt's GEMM and its
// split-K reduction beside it)
DL_DECLARE_VARIANT(wgxax, "wgmma path, x A^T in dlw_x_kernel, not by cuBLASLt")
// x A^T in the wgmma kernel's first blocks, whose ax the slabs' ends wait for (production: cuBLASLt's GEMM and its
// split-K reduction before the kernel)
DL_DECLARE_VARIANT(wgaxin, "wgmma path, x A^T in the wgmma kernel's first blocks")
// dlw_x_kernel lets the next kernel start at its own start (production: once its x is staged)
DL_DECLARE_VARIANT(wgxearly, "wgmma path, dlw_x_kernel triggers the next launch at its start")

// ---- version 0: no arithmetic, only the NF4 code bytes streamed once -------------------------------------------
// What reading the same bytes costs with a plain grid-stride loop of 16-byte loads: the ceiling this kernel can
// reach at this size (launch and ramp included), against which the versions below are read.
__global__ void read_only_kernel(const uint4* bytes, size_t n16, unsigned* sink) {
    unsigned acc = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldcs(bytes + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) *sink = acc;  // never true in practice; keeps the loads alive
}

// ---- version 2: CUDA cores -------------------------------------------------------------------------------------

constexpr int V2_ROWS = 8;  // rows of x per pass over a weight row

__global__ void __launch_bounds__(128) cuda_core_kernel(bf16* y, const bf16* x, NF4View t, const bf16* bias, int M,
                                                        int N, int K) {
    __shared__ float code[16], nested_code[256];
    if (threadIdx.x < 16) code[threadIdx.x] = t.code[threadIdx.x];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) nested_code[i] = t.nested_code[i];
    __syncthreads();
    const int j = blockIdx.x * 4 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (j >= N) return;
    for (int m0 = 0; m0 < M; m0 += V2_ROWS) {
        float acc[V2_ROWS] = {};
        for (int k = lane * 32; k < K; k += 32 * 32) {
            const int64_t e = (int64_t)j * K + k;
            const uint4 raw = __ldg(reinterpret_cast<const uint4*>(t.packed + e / 2));  // L1 keeps it for m0 > 0
            const float scale = __fadd_rn(__fmul_rn(nested_code[t.absmax_q[e / 64]], t.nested_absmax[e / 64 / 256]),
                                          t.nested_offset);
            const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
            float w[32];
#pragma unroll
            for (int b = 0; b < 16; b++) {
                const uint32_t byte = (words[b / 4] >> (8 * (b % 4))) & 0xFFu;
                w[2 * b] = __bfloat162float(__float2bfloat16_rn(__fmul_rn(code[byte >> 4], scale)));
                w[2 * b + 1] = __bfloat162float(__float2bfloat16_rn(__fmul_rn(code[byte & 15u], scale)));
            }
#pragma unroll
            for (int mm = 0; mm < V2_ROWS; mm++) {
                if (m0 + mm >= M) break;
                const uint4* xr = reinterpret_cast<const uint4*>(x + (int64_t)(m0 + mm) * K + k);
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const uint4 v = __ldg(xr + q);
                    const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
                    for (int h = 0; h < 4; h++) {
                        const float2 f = __bfloat1622float2(p[h]);
                        acc[mm] = fmaf(f.x, w[8 * q + 2 * h], acc[mm]);
                        acc[mm] = fmaf(f.y, w[8 * q + 2 * h + 1], acc[mm]);
                    }
                }
            }
        }
#pragma unroll
        for (int mm = 0; mm < V2_ROWS; mm++) {
            for (int offset = 16; offset > 0; offset /= 2) acc[mm] += __shfl_xor_sync(0xFFFFFFFFu, acc[mm], offset);
            if (lane == 0 && m0 + mm < M) {
                float sum = bias ? __fadd_rn(acc[mm], __bfloat162float(bias[j])) : acc[mm];
                y[(int64_t)(m0 + mm) * N + j] = __float2bfloat16_rn(sum);
            }
        }
    }
}

// ---- the 7B linears ---------------------------------------------------------------------------------------------


constexpr int R = 32;
constexpr float SCALE = 2.0f;  // alpha 64 / r 32
constexpr int CHECK_ROWS = 256;  // rows validated at each end of a weight (the CPU reference is slow at 7B)

// One linear: random NF4 codes (block scales around 0.05, as trained weights have) or random bf16 weights made on the
// GPU, bias, and a PEFT-sized adapter, with the host copies the CPU reference reads for the checked rows.
struct LabLinear {
    const char* name;
    int out, in;
    NF4Tensor nf4;
    std::vector<bf16_bits> w_rows;   // the checked rows of the bf16 weight [2*CHECK_ROWS or out, in]
    std::vector<float> A, B_rows;    // fp32 values of the bf16 copies
    std::vector<bf16_bits> bias;
    LinearWeight gpu, gpu_tiled;  // NF4: row-major, and a second copy in decode-tile order (as the GPU model holds it)
    LinearWeight gpu_bf16;        // NF4: the dequantized bf16 copy (the GPU model's bf16 base copy, GpuOptions)
    bf16 *A_dev = nullptr, *B_dev = nullptr;
    std::vector<void*> owned;

    template <typename T>
    T* upload(const std::vector<T>& v) {
        T* d = to_device(v);
        owned.push_back(d);
        return d;
    }
    std::vector<int> checked_rows() const {
        std::vector<int> rows;
        for (int r = 0; r < out; r++)
            if (r < CHECK_ROWS || r >= out - CHECK_ROWS) rows.push_back(r);
        return rows;
    }

    LabLinear(const char* name_, int out_, int in_, bool nf4_format, bool with_bias, bool adapter, Rng& rng)
        : name(name_), out(out_), in(in_) {
        gpu.out = out;
        gpu.in = in;
        std::vector<int> rows = checked_rows();
        if (nf4_format) {
            gpu.format = LinearFormat::NF4;
            nf4.rows = out;
            nf4.cols = in;
            nf4_default_code(nf4.code);
            nf4_default_nested_code(nf4.nested_code);
            nf4.packed.resize((size_t)out * in / 2);
            for (size_t i = 0; i < nf4.packed.size(); i += 8) {
                uint64_t r = rng.next_u64();
                for (size_t b = 0; b < 8 && i + b < nf4.packed.size(); b++) nf4.packed[i + b] = (uint8_t)(r >> (8 * b));
            }
            nf4.absmax_q.resize(nf4.num_blocks());
            for (uint8_t& b : nf4.absmax_q) b = (uint8_t)rng.next_u64();
            nf4.nested_absmax.resize(nf4.num_nested_blocks());
            for (float& s : nf4.nested_absmax) s = 0.02f + 0.04f * rng.next_float();
            nf4.nested_offset = 0.04f;
            std::vector<bf16_bits> all((size_t)out * in);
            nf4_view_dequantize(nf4_view(nf4), all.data());
            for (int r : rows) w_rows.insert(w_rows.end(), all.begin() + (size_t)r * in, all.begin() + (size_t)(r + 1) * in);
            gpu.nf4 = nf4_view(nf4);
            gpu.nf4.packed = upload(nf4.packed);
            gpu.nf4.absmax_q = upload(nf4.absmax_q);
            gpu.nf4.nested_absmax = upload(nf4.nested_absmax);
            gpu.nf4.code = upload(std::vector<float>(nf4.code, nf4.code + 16));
            gpu.nf4.nested_code = upload(std::vector<float>(nf4.nested_code, nf4.nested_code + 256));
            gpu_tiled = gpu;
            std::vector<uint8_t> packed_t(nf4.packed.size()), absmax_t(nf4.absmax_q.size());
            nf4_tile(nf4_view(nf4), packed_t.data(), absmax_t.data());
            gpu_tiled.nf4.packed = upload(packed_t);
            gpu_tiled.nf4.absmax_q = upload(absmax_t);
            gpu_tiled.nf4.tiled = true;
            gpu_bf16 = gpu;
            gpu_bf16.format = LinearFormat::BF16;
            bf16* w = nullptr;
            cudaCheck(cudaMalloc(&w, (size_t)out * in * sizeof(bf16)));
            owned.push_back(w);
            nf4_dequantize_gpu(w, gpu.nf4, 0);
            gpu_bf16.w = (const bf16_bits*)w;
        } else {
            gpu.format = LinearFormat::BF16;
            bf16* w = nullptr;
            cudaCheck(cudaMalloc(&w, (size_t)out * in * sizeof(bf16)));
            owned.push_back(w);
            fill_uniform_device(w, (size_t)out * in, rng.next_u64(), 0.05f);
            gpu.w = (const bf16_bits*)w;
            w_rows.resize(rows.size() * (size_t)in);
            for (size_t i = 0; i < rows.size(); i++)
                cudaCheck(cudaMemcpy(w_rows.data() + i * in, w + (size_t)rows[i] * in, in * sizeof(bf16),
                                     cudaMemcpyDeviceToHost));
        }
        if (with_bias) {
            std::vector<float> b(out);
            fill_uniform(b, rng, -0.5f, 0.5f);
            bias = to_bf16(b);
            gpu.bias = upload(bias);
            gpu_tiled.bias = gpu_bf16.bias = gpu.bias;
        }
        if (adapter) {
            A.resize((size_t)R * in);
            std::vector<float> B((size_t)out * R);
            fill_uniform(A, rng, -1.0f / std::sqrt((float)in), 1.0f / std::sqrt((float)in));
            fill_uniform(B, rng, -1.0f / std::sqrt((float)R), 1.0f / std::sqrt((float)R));
            A_dev = (bf16*)upload(to_bf16(A));
            B_dev = (bf16*)upload(to_bf16(B));
            for (int r : rows) B_rows.insert(B_rows.end(), B.begin() + (size_t)r * R, B.begin() + (size_t)(r + 1) * R);
        }
    }
    ~LabLinear() {
        for (void* p : owned) cudaFree(p);
    }
    // NF4 weights: the tiled copy (the production layout), or with row_major the row-major one, the only one v1
    // and v3 read.
    LoraLinearGpu lora(bool with_adapter, bool row_major = false) const {
        LoraLinearGpu l;
        l.base = !row_major && gpu.format == LinearFormat::NF4 ? &gpu_tiled : &gpu;
        if (with_adapter && A_dev) {
            l.A = A_dev;
            l.B = B_dev;
        }
        return l;
    }
    // The dequantized bf16 copy (NF4 linears only), with or without the adapter.
    LoraLinearGpu lora_bf16(bool with_adapter) const {
        LoraLinearGpu l = lora(with_adapter);
        l.base = &gpu_bf16;
        return l;
    }

    // The CPU reference (BF16 mode) of the checked rows for x [M, in]: [M, rows] with the rows in checked_rows order.
    std::vector<float> reference(const std::vector<float>& x, int M, bool with_adapter) const {
        std::vector<int> rows = checked_rows();
        const int n = (int)rows.size();
        std::vector<bf16_bits> bias_rows;
        for (int r : rows) bias_rows.push_back(bias.empty() ? 0 : bias[r]);
        std::vector<float> y((size_t)M * n), ax((size_t)M * R);
        cpu_matmul_forward(y.data(), x.data(), w_rows.data(), bias.empty() ? nullptr : bias_rows.data(), M, in, n,
                           CpuPrecision::BF16);
        if (with_adapter && !A.empty())
            cpu_lora_forward(y.data(), ax.data(), x.data(), A.data(), B_rows.data(), M, in, n, R, SCALE,
                             CpuPrecision::BF16);
        return y;
    }
    // The same rows of a GPU output y [M, out].
    std::vector<float> checked(const bf16* y, int M) const {
        std::vector<float> all = bf16_to_floats(to_host((const bf16_bits*)y, (size_t)M * out)), got;
        std::vector<int> rows = checked_rows();
        for (int m = 0; m < M; m++)
            for (int r : rows) got.push_back(all[(size_t)m * out + r]);
        return got;
    }
};

static float max_abs_of(const std::vector<float>& v) {
    float m = 0;
    for (float x : v) m = std::max(m, std::fabs(x));
    return m;
}

// y against the CPU reference with test_decode_linear.cpp's tolerance: an ulp of the element, plus an ulp of the
// largest |y| for the adapter's bf16 x A^T and a flipped base rounding carried into the sum.
static bool check(const char* what, const LabLinear& l, const bf16* y, const std::vector<float>& x, int M,
                  bool with_adapter) {
    std::vector<float> ref = l.reference(x, M, with_adapter), got = l.checked(y, M);
    char name[96];
    snprintf(name, sizeof(name), "%s %s M=%d", what, l.name, M);
    return validate(name, got.data(), ref.data(), ref.size(), std::ldexp(max_abs_of(ref), -7), 1.0f / 128);
}

// decode_linear_forward's signature, which every variant's copy shares.
typedef void (*ForwardFn)(const LoraLinearGpu*, int, const bf16*, int, int, float, bf16* const*, void*, size_t,
                          cudaStream_t, MatmulContext*);

// Whether forward a on linear la and forward b on lb write the same bits to y ([M, out]): for variants that only
// move bytes around (the tiled order) or compute each weight the same way (the exact pair table).
static bool same_bits(ForwardFn a, const LoraLinearGpu* la, ForwardFn b, const LoraLinearGpu* lb, const bf16* x,
                      int M, int out, bf16* y, void* ws, size_t ws_bytes, MatmulContext* ctx) {
    std::vector<bf16_bits> want((size_t)M * out), got(want.size());
    a(la, 1, x, M, R, SCALE, &y, ws, ws_bytes, 0, ctx);
    cudaCheck(cudaMemcpy(want.data(), y, want.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
    b(lb, 1, x, M, R, SCALE, &y, ws, ws_bytes, 0, ctx);
    cudaCheck(cudaMemcpy(got.data(), y, got.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
    return want == got;
}

// `lab_decode_linear profile [LINEAR [VARIANT [M]]]`: only k, gate and down at one M (6 unless given), each kernel
// variant timed three ways (cold: after an L2 flush, as below; warm: 20 calls back to back; graph: those 20 calls
// replayed as one graph), and a few launches left for a profiler to catch (dev/profile_decode_linear.sh).
static int profile_main(const char* only_linear, int only_variant, int M) {
    Rng rng(1234);
    const int C = 3584, I = 18944, KV = 512;
    std::vector<std::unique_ptr<LabLinear>> lin;
    lin.emplace_back(new LabLinear("k", KV, C, true, true, false, rng));
    lin.emplace_back(new LabLinear("gate", I, C, true, false, false, rng));
    lin.emplace_back(new LabLinear("down", C, I, true, false, false, rng));
    // q and o: the few-pair launches that run "narrow" at M 48-64 (3-7% of their roofline in session 8)
    lin.emplace_back(new LabLinear("q", C, C, true, true, false, rng));
    lin.emplace_back(new LabLinear("o", C, C, true, false, false, rng));
    std::vector<float> x_i((size_t)M * I);
    fill_uniform(x_i, rng);
    bf16* x_dev = (bf16*)to_device(to_bf16(x_i));
    bf16* y = nullptr;
    cudaCheck(cudaMalloc(&y, (size_t)M * I * sizeof(bf16)));
    const size_t ws_bytes = (size_t)256 << 20;
    void* ws = nullptr;
    cudaCheck(cudaMalloc(&ws, ws_bytes));
    cudaCheck(cudaMemset(ws, 0, ws_bytes));
    // on the row-major copy, then on the tiled one (as the GPU model holds it); same_as: the row-major run (an
    // index into this table) that a tiled variant must match bit for bit, -1 for none
    struct ProfileVariant {
        const char* name;
        ForwardFn forward;
        bool tiled;
        int same_as;
    };
    const ProfileVariant variants[] = {{"v4 exact", decode_linear_forward, false, -1},
                                       {"v3", v3::decode_linear_forward, false, -1},
                                       {"v4 fold", fold::decode_linear_forward, false, -1},
                                       {"exact tiled", decode_linear_forward, true, 0},
                                       {"fold tiled", fold::decode_linear_forward, true, 2},
                                       {"pairs tiled", pairs::decode_linear_forward, true, 0},
                                       {"defer tiled", defer::decode_linear_forward, true, 0},
                                       {"deferfull tiled", deferfull::decode_linear_forward, true, -1},
                                       {"pairs5 tiled", pairs5::decode_linear_forward, true, -1}};
    cudaStream_t stream;
    cudaCheck(cudaStreamCreate(&stream));
    printf("%-6s %-14s %10s %10s %10s %10s\n", "linear", "kernel", "cold ms", "warm ms", "graph ms", "roofline");
    for (auto& l : lin) {
        if (only_linear && std::string(only_linear) != l->name) continue;
        // the row-major copy, and the same weights in decode-tile order (each warp's work one contiguous stream)
        LoraLinearGpu base = l->lora(false, true), tiled = l->lora(false);
        for (const ProfileVariant& v : variants) {
            if (only_variant >= 0 && &v - variants != only_variant) continue;
            const LoraLinearGpu* which = v.tiled ? &tiled : &base;
            auto call = [&](cudaStream_t s) { v.forward(which, 1, x_dev, M, R, SCALE, &y, ws, ws_bytes, s, nullptr); };
            if (v.same_as >= 0) {
                const bool same = same_bits(variants[v.same_as].forward, &base, v.forward, which, x_dev, M, (int)l->out,
                                            y, ws, ws_bytes, nullptr);
                printf("%-6s %-14s %s\n", l->name, v.name, same ? "same bits as row-major" : "DIFFERS from row-major: FAIL");
            }
            float cold = time_kernel_ms([&] { call(0); });
            float warm = time_kernel_ms([&] { for (int i = 0; i < 20; i++) call(0); }) / 20;
            float replay = time_as_graph(stream, [&](cudaStream_t s) { for (int i = 0; i < 20; i++) call(s); }) / 20;
            printf("%-6s %-14s %10.4f %10.4f %10.4f %10.4f\n", l->name, v.name, cold, warm, replay,
                   decode_linear_bytes(&base, 1, M, R) / (CEILING_COPY_TBPS * 1e9));
        }
    }
    cudaCheck(cudaStreamDestroy(stream));
    return 0;
}

int main(int argc, char** argv) {
    if (argc > 1 && std::string(argv[1]) == "profile")  // [linear [variant index [M]]]
        return profile_main(argc > 2 ? argv[2] : nullptr, argc > 3 ? atoi(argv[3]) : -1,
                            argc > 4 ? std::max(1, std::min(DECODE_LINEAR_MAX_M, atoi(argv[4]))) : 6);
    Rng rng(1234);
    const int C = 3584, I = 18944, KV = 512, V = 152064, MAX_M = 64;
    printf("building the 7B linears (random NF4 codes, bf16 lm_head) ...\n");
    std::vector<std::unique_ptr<LabLinear>> lin;
    lin.emplace_back(new LabLinear("q", C, C, true, true, true, rng));
    lin.emplace_back(new LabLinear("k", KV, C, true, true, true, rng));
    lin.emplace_back(new LabLinear("v", KV, C, true, true, true, rng));
    lin.emplace_back(new LabLinear("o", C, C, true, false, true, rng));
    lin.emplace_back(new LabLinear("gate", I, C, true, false, true, rng));
    lin.emplace_back(new LabLinear("up", I, C, true, false, true, rng));
    lin.emplace_back(new LabLinear("down", C, I, true, false, true, rng));
    lin.emplace_back(new LabLinear("lm_head", V, C, false, false, false, rng));
    LabLinear &q = *lin[0], &k = *lin[1], &v = *lin[2], &o = *lin[3], &gate = *lin[4], &up = *lin[5],
              &down = *lin[6], &head = *lin[7];

    // inputs: x for in = C and in = I, outputs for every linear
    std::vector<float> x_c((size_t)MAX_M * C), x_i((size_t)MAX_M * I);
    fill_uniform(x_c, rng);
    fill_uniform(x_i, rng);
    bf16* xc_dev = (bf16*)to_device(to_bf16(x_c));
    bf16* xi_dev = (bf16*)to_device(to_bf16(x_i));
    std::vector<bf16*> y(lin.size());
    for (size_t i = 0; i < lin.size(); i++) cudaCheck(cudaMalloc(&y[i], (size_t)MAX_M * lin[i]->out * sizeof(bf16)));

    // one workspace big enough for every group at every M
    LoraLinearGpu qkv[3] = {q.lora(true), k.lora(true), v.lora(true)}, gu[2] = {gate.lora(true), up.lora(true)};
    LoraLinearGpu o1 = o.lora(true), down1 = down.lora(true), head1 = head.lora(false);
    size_t ws_bytes = 0;
    ws_bytes = std::max(ws_bytes, decode_linear_workspace_bytes(qkv, 3, R, MAX_M));
    ws_bytes = std::max(ws_bytes, decode_linear_workspace_bytes(gu, 2, R, MAX_M));
    ws_bytes = std::max(ws_bytes, decode_linear_workspace_bytes(&o1, 1, R, MAX_M));
    ws_bytes = std::max(ws_bytes, decode_linear_workspace_bytes(&down1, 1, R, MAX_M));
    ws_bytes = std::max(ws_bytes, decode_linear_workspace_bytes(&head1, 1, R, MAX_M));
    for (auto& l : lin) {
        LoraLinearGpu one = l->lora(true);
        ws_bytes = std::max(ws_bytes, decode_linear_workspace_bytes(&one, 1, R, MAX_M));
    }
    // the same layer on the dequantized bf16 copies (the GPU model's bf16 base copy)
    LoraLinearGpu qkv16[3] = {q.lora_bf16(true), k.lora_bf16(true), v.lora_bf16(true)};
    LoraLinearGpu gu16[2] = {gate.lora_bf16(true), up.lora_bf16(true)};
    LoraLinearGpu o16 = o.lora_bf16(true), down16 = down.lora_bf16(true);
    ws_bytes = std::max(ws_bytes, decode_linear_workspace_bytes(qkv16, 3, R, MAX_M));
    ws_bytes = std::max(ws_bytes, decode_linear_workspace_bytes(gu16, 2, R, MAX_M));
    ws_bytes = std::max(ws_bytes, decode_linear_workspace_bytes(&o16, 1, R, MAX_M));
    ws_bytes = std::max(ws_bytes, decode_linear_workspace_bytes(&down16, 1, R, MAX_M));
    // the variants run in it too, and their plans may ask for more (e.g. pairs5's 16-warp blocks with two m-tiles a
    // step need 22 MB at M 48, production 19): 64 MiB holds every variant's
    ws_bytes = std::max(ws_bytes, (size_t)64 << 20);
    void* ws = nullptr;
    cudaCheck(cudaMalloc(&ws, ws_bytes));
    cudaCheck(cudaMemset(ws, 0, ws_bytes));
    printf("workspace %.2f MiB\n", ws_bytes / 1048576.0);

    // x A^T through cuBLASLt, as model/gpu_generate.cu runs it (nullptr: through the decode kernel)
    void* mm_ws = nullptr;
    cudaCheck(cudaMalloc(&mm_ws, matmul_workspace_bytes()));
    MatmulContext* mm = matmul_create(mm_ws, matmul_workspace_bytes());

    // a decode step's four launches of one layer's linears (q/k/v, o, gate/up, down) through forward
    struct LayerGroups {
        const LoraLinearGpu *qkv, *o, *gu, *down;
    };
    auto run_layer = [&](const LayerGroups& l, int M, MatmulContext* ctx, cudaStream_t stream, ForwardFn forward) {
        bf16* y_qkv[3] = {y[0], y[1], y[2]};
        bf16* y_gu[2] = {y[4], y[5]};
        forward(l.qkv, 3, xc_dev, M, R, SCALE, y_qkv, ws, ws_bytes, stream, ctx);
        forward(l.o, 1, xc_dev, M, R, SCALE, &y[3], ws, ws_bytes, stream, ctx);
        forward(l.gu, 2, xc_dev, M, R, SCALE, y_gu, ws, ws_bytes, stream, ctx);
        forward(l.down, 1, xi_dev, M, R, SCALE, &y[6], ws, ws_bytes, stream, ctx);
    };
    // the NF4 layer (LoRA on all), then the lm_head
    const LayerGroups nf4_layer = {qkv, &o1, gu, &down1};
    auto layer = [&](int M, MatmulContext* ctx, cudaStream_t stream, ForwardFn forward = decode_linear_forward) {
        run_layer(nf4_layer, M, ctx, stream, forward);
    };

    // the bf16 layer through the decode kernel (the v3 variant, built without the cuBLASLt route), or as production
    // runs it with a context: cuBLASLt (lora_linear_forward: the base GEMM with its bias, x A^T, then + scale ax B^T
    // with beta 1)
    enum Bf16Route { BF16_V3, BF16_PROD };
    const char* const bf16_route_names[] = {"decode v3", "prod: cuBLASLt"};
    const LayerGroups bf16_layer = {qkv16, &o16, gu16, &down16};
    auto layer_bf16 = [&](int M, Bf16Route route, cudaStream_t stream) {
        run_layer(bf16_layer, M, mm, stream, route == BF16_PROD ? decode_linear_forward : v3::decode_linear_forward);
    };

    // ---- validation ----
    printf("\nvalidation against cpu_matmul_forward + cpu_lora_forward (BF16 mode), rows 0..%d and the last %d:\n",
           CHECK_ROWS - 1, CHECK_ROWS);
    bool ok = true;
    for (MatmulContext* ctx : {(MatmulContext*)nullptr, mm})
        for (int M : {1, 6, 48, 64}) {
            for (auto& l : lin) cudaCheck(cudaMemset(y[&l - &lin[0]], 0xFF, (size_t)M * l->out * sizeof(bf16)));
            layer(M, ctx, 0);
            decode_linear_forward(&head1, 1, xc_dev, M, R, SCALE, &y[7], ws, ws_bytes, 0);
            cudaCheck(cudaDeviceSynchronize());
            for (size_t i = 0; i < lin.size(); i++) {
                const std::vector<float>& x = lin[i]->in == C ? x_c : x_i;
                std::vector<float> xr(x.begin(), x.begin() + (size_t)M * lin[i]->in);
                for (float& e : xr) e = round_bf16(e);
                ok &= check(ctx ? "prod (cuBLASLt x A^T)" : "prod", *lin[i], y[i], xr, M, true);
            }
        }
    for (Bf16Route route : {BF16_V3, BF16_PROD})  // the bf16 copies, both routes
        for (int M : {6, 48, 64}) {
            layer_bf16(M, route, 0);
            cudaCheck(cudaDeviceSynchronize());
            for (size_t i = 0; i + 1 < lin.size(); i++) {
                const std::vector<float>& x = lin[i]->in == C ? x_c : x_i;
                std::vector<float> xr(x.begin(), x.begin() + (size_t)M * lin[i]->in);
                for (float& e : xr) e = round_bf16(e);
                char name[64];
                snprintf(name, sizeof(name), "bf16 copy, %s", bf16_route_names[route]);
                ok &= check(name, *lin[i], y[i], xr, M, true);
            }
        }
    // the variants against the CPU reference: v3, fold (inexact) and the exact pair table
    const std::pair<const char*, ForwardFn> checked_variants[] = {{"v3", v3::decode_linear_forward},
                                                                 {"v4 fold", fold::decode_linear_forward},
                                                                 {"v4 pairs", pairs::decode_linear_forward},
                                                                 {"v4 defer", defer::decode_linear_forward},
                                                                 {"v4 full", full::decode_linear_forward},
                                                                 {"v4 deferfull", deferfull::decode_linear_forward},
                                                                 {"v4 wch2", wch2::decode_linear_forward},
                                                                 {"v4 pairs5", pairs5::decode_linear_forward},
                                                                 {"v4 narrow0", narrow0::decode_linear_forward},
                                                                 {"wgmma0", wgmma0::decode_linear_forward},
                                                                 {"wgleast", wgleast::decode_linear_forward},
                                                                 {"wgbar", wgbar::decode_linear_forward},
                                                                 {"wgxax", wgxax::decode_linear_forward},
                                                                 {"wgaxin", wgaxin::decode_linear_forward},
                                                                 {"wgxearly", wgxearly::decode_linear_forward}};
    for (auto& variant : checked_variants)
        for (int M : {1, 6, 48, 64})
            for (size_t i = 0; i + 1 < lin.size(); i++) {
                LoraLinearGpu one = lin[i]->lora(true, variant.second == v3::decode_linear_forward);
                const bf16* x_dev = lin[i]->in == C ? xc_dev : xi_dev;
                variant.second(&one, 1, x_dev, M, R, SCALE, &y[i], ws, ws_bytes, 0, mm);
                cudaCheck(cudaDeviceSynchronize());
                const std::vector<float>& x = lin[i]->in == C ? x_c : x_i;
                std::vector<float> xr(x.begin(), x.begin() + (size_t)M * lin[i]->in);
                for (float& e : xr) e = round_bf16(e);
                ok &= check(variant.first, *lin[i], y[i], xr, M, true);
            }
    // the exact pair table computes every weight as production does, the deferred arrival adds the same partials in
    // the same order, and 2 blocks a step change no order either; nor do the wgmma path's variants of its loop (the
    // same splits, the same wgmma in the same order): all are cut as production's: the same bits (pairs5,
    // with 16 warps a block, is cut otherwise and only checked against the CPU above). wch2 keeps one m-tile a step,
    // so it is compared with tm1 (two m-tiles cut the ranges elsewhere: the sums' order, and maybe the last bit,
    // differ from tm1's)
    struct ExactVariant { const char* what; ForwardFn reference, forward; };
    const ExactVariant exact_variants[] = {{"v4 pairs against prod", decode_linear_forward, pairs::decode_linear_forward},
                                           {"v4 defer against prod", decode_linear_forward, defer::decode_linear_forward},
                                           {"v4 wch2 against tm1", tm1::decode_linear_forward, wch2::decode_linear_forward},
                                           {"wgbar against prod", decode_linear_forward, wgbar::decode_linear_forward}};
    for (const ExactVariant& variant : exact_variants)
        for (int M : {1, 6, 64})
            for (size_t i = 0; i + 1 < lin.size(); i++) {
                LoraLinearGpu one = lin[i]->lora(true);
                const bool same = same_bits(variant.reference, &one, variant.forward, &one,
                                            lin[i]->in == C ? xc_dev : xi_dev, M, (int)lin[i]->out, y[i], ws, ws_bytes, mm);
                printf("  %-28s %s M=%d: %s\n", variant.what, lin[i]->name, M, same ? "same bits" : "DIFFERENT bits: FAIL");
                ok &= same;
            }
    {  // version 1 (the simple kernel, LoRA included) and version 2 (base only) on q
        const int M = 6;
        std::vector<float> xr(x_c.begin(), x_c.begin() + (size_t)M * C);
        for (float& e : xr) e = round_bf16(e);
        bf16* y_qkv[3] = {y[0], y[1], y[2]};
        LoraLinearGpu qkv_rows[3] = {q.lora(true, true), k.lora(true, true), v.lora(true, true)};
        decode_linear_forward_simple(qkv_rows, 3, xc_dev, M, R, SCALE, y_qkv, ws, ws_bytes, 0);
        cudaCheck(cudaDeviceSynchronize());
        ok &= check("v1", q, y[0], xr, M, true);
        ok &= check("v1", v, y[2], xr, M, true);
        for (int M2 : {1, 6, 64}) {
            std::vector<float> x2(x_c.begin(), x_c.begin() + (size_t)M2 * C);
            for (float& e : x2) e = round_bf16(e);
            cuda_core_kernel<<<(C + 3) / 4, 128>>>(y[0], xc_dev, q.gpu.nf4, (const bf16*)q.gpu.bias, M2, C, C);
            cudaCheck(cudaGetLastError());
            cudaCheck(cudaDeviceSynchronize());
            ok &= check("v2", q, y[0], x2, M2, false);
        }
    }
    printf("validation %s\n", ok ? "ok" : "FAILED");

    // ---- tuning: the production knobs against the variants, base linears alone ----
    printf("\ntuning: production (the defaults in kernels/decode_linear.cu) against variants (ms)\n");
    // every variant but axgemm (x A^T only: the same base kernels as production)
#define DL_TUNED(NAME) {#NAME, NAME::knobs, NAME::decode_linear_forward}
    const struct { const char* name; const char* knobs; ForwardFn forward; } tuned[] = {
        {"prod", "prod: v4 exact, tiled codes (v3 reads the row-major copy)", decode_linear_forward},
        DL_TUNED(v3), DL_TUNED(fold), DL_TUNED(pairs), DL_TUNED(defer), DL_TUNED(full), DL_TUNED(deferfull),
        DL_TUNED(wch2), DL_TUNED(pairs5), DL_TUNED(narrow0), DL_TUNED(tm1), DL_TUNED(tm2b2), DL_TUNED(tm2w4b3),
        DL_TUNED(tm2all), DL_TUNED(tm2allfull), DL_TUNED(wgmma0), DL_TUNED(wgleast), DL_TUNED(wgbar),
        DL_TUNED(wgxax), DL_TUNED(wgaxin), DL_TUNED(wgxearly)};
#undef DL_TUNED
    for (const auto& v : tuned) printf("  %s\n", v.knobs);
    printf("  %s (in the layer graphs only)\n", axgemm::knobs);
    const size_t TUNE_WS_BYTES = (size_t)256 << 20;
    void* tune_ws = nullptr;
    cudaCheck(cudaMalloc(&tune_ws, TUNE_WS_BYTES));
    cudaCheck(cudaMemset(tune_ws, 0, TUNE_WS_BYTES));
    printf("  %-12s", "linear");
    for (const auto& v : tuned) printf(" %9s", v.name);
    printf("\n");
    for (int M : {1, 6, 16, 48, 64})
        for (int i : {0, 1, 4, 6}) {
            LabLinear& l = *lin[i];
            const bf16* x = l.in == C ? xc_dev : xi_dev;
            LoraLinearGpu base = l.lora(false), rows = l.lora(false, true);  // rows: for v3
            char label[32];
            snprintf(label, sizeof(label), "%s M=%d", l.name, M);
            printf("  %-12s", label);
            for (const auto& v : tuned) {  // one large zeroed workspace: the variants' plans need other sizes
                const ForwardFn f = v.forward;
                const LoraLinearGpu* which = f == v3::decode_linear_forward ? &rows : &base;
                float ms = time_kernel_ms([&] { f(which, 1, x, M, R, SCALE, &y[i], tune_ws, TUNE_WS_BYTES, 0, nullptr); });
                printf(" %9.4f", ms);
            }
            printf("   (roofline %.4f ms)\n", decode_linear_bytes(&base, 1, M, R) / (CEILING_COPY_TBPS * 1e9));
        }

    cudaFree(tune_ws);

    // ---- benchmark: one linear at a time ----
    printf("\nbenchmark: time per call, share of the memory roofline (weights + scales + bias + A, B + x + y at "
           "%.2f TB/s)\n", CEILING_COPY_TBPS);
    for (int M : {1, 6, 48, 64}) {
        printf("M = %d\n", M);
        for (size_t i = 0; i < lin.size(); i++) {
            LabLinear& l = *lin[i];
            const bf16* x = l.in == C ? xc_dev : xi_dev;
            LoraLinearGpu base = l.lora(false), adapted = l.lora(true);
            char label[64];
            if (M <= 6) {
                LoraLinearGpu rows = l.lora(false, true);
                snprintf(label, sizeof(label), "%-7s v1 simple", l.name);
                float ms = time_kernel_ms([&] { decode_linear_forward_simple(&rows, 1, x, M, R, SCALE, &y[i], ws, ws_bytes, 0); });
                report(label, ms, decode_linear_bytes(&base, 1, M, R), 0);
            }
            if (l.gpu.format == LinearFormat::NF4 && M == 1) {
                static unsigned* sink = nullptr;
                if (!sink) cudaCheck(cudaMalloc(&sink, sizeof(unsigned)));
                const size_t n16 = (size_t)l.out * l.in / 2 / 16;
                snprintf(label, sizeof(label), "%-7s v0 read only", l.name);
                float ms = time_kernel_ms([&] {
                    read_only_kernel<<<132 * 8, 256>>>(reinterpret_cast<const uint4*>(l.gpu.nf4.packed), n16, sink);
                });
                report(label, ms, n16 * 16.0, 0);
            }
            if (l.gpu.format == LinearFormat::NF4) {
                snprintf(label, sizeof(label), "%-7s v2 cuda cores", l.name);
                float ms = time_kernel_ms([&] {
                    cuda_core_kernel<<<(l.out + 3) / 4, 128>>>(y[i], x, l.gpu.nf4, (const bf16*)l.gpu.bias, M, l.out, l.in);
                });
                report(label, ms, decode_linear_bytes(&base, 1, M, R), 0);
            }
            snprintf(label, sizeof(label), "%-7s prod", l.name);
            float ms = time_kernel_ms([&] { decode_linear_forward(&base, 1, x, M, R, SCALE, &y[i], ws, ws_bytes, 0); });
            report(label, ms, decode_linear_bytes(&base, 1, M, R), 0);
            if (adapted.A) {
                snprintf(label, sizeof(label), "%-7s prod +lora", l.name);
                ms = time_kernel_ms([&] { decode_linear_forward(&adapted, 1, x, M, R, SCALE, &y[i], ws, ws_bytes, 0); });
                report(label, ms, decode_linear_bytes(&adapted, 1, M, R), 0);
                snprintf(label, sizeof(label), "%-7s +lora, cuBLASLt xA", l.name);
                ms = time_kernel_ms([&] { decode_linear_forward(&adapted, 1, x, M, R, SCALE, &y[i], ws, ws_bytes, 0, mm); });
                report(label, ms, decode_linear_bytes(&adapted, 1, M, R), 0);
                if (M <= 8) {  // production takes decode_lora_ax_kernel here; the variant keeps cuBLASLt
                    snprintf(label, sizeof(label), "%-7s +lora, axgemm", l.name);
                    ms = time_kernel_ms([&] {
                        axgemm::decode_linear_forward(&adapted, 1, x, M, R, SCALE, &y[i], ws, ws_bytes, 0, mm);
                    });
                    report(label, ms, decode_linear_bytes(&adapted, 1, M, R), 0);
                }
            }
        }
        bf16* y_qkv[3] = {y[0], y[1], y[2]};
        bf16* y_gu[2] = {y[4], y[5]};
        float ms = time_kernel_ms([&] { decode_linear_forward(qkv, 3, xc_dev, M, R, SCALE, y_qkv, ws, ws_bytes, 0, mm); });
        report("q+k+v group +lora", ms, decode_linear_bytes(qkv, 3, M, R), 0);
        ms = time_kernel_ms([&] { decode_linear_forward(gu, 2, xc_dev, M, R, SCALE, y_gu, ws, ws_bytes, 0, mm); });
        report("gate+up group +lora", ms, decode_linear_bytes(gu, 2, M, R), 0);
    }

    // ---- a decode step: one layer's seven linears and the lm_head ----
    printf("\na 7B decode step's linears (r %d LoRA on all seven): one layer, and layer + lm_head, eager and as a "
           "CUDA graph (\"fold\": %s; \"pairs\": %s; \"defer\": %s; \"full\": %s; \"deferfull\": %s; \"wch2\": %s)\n", R,
           fold::knobs, pairs::knobs, defer::knobs, full::knobs, deferfull::knobs, wch2::knobs);
    cudaStream_t stream;
    cudaCheck(cudaStreamCreate(&stream));
    for (int M : {1, 6, 48, 64}) {
        double layer_bytes = decode_linear_bytes(qkv, 3, M, R) + decode_linear_bytes(&o1, 1, M, R) +
                             decode_linear_bytes(gu, 2, M, R) + decode_linear_bytes(&down1, 1, M, R);
        double head_bytes = decode_linear_bytes(&head1, 1, M, R);
        char label[64];
        snprintf(label, sizeof(label), "layer M=%d eager", M);
        report(label, time_kernel_ms([&] { layer(M, mm, 0); }), layer_bytes, 0);
        snprintf(label, sizeof(label), "lm_head M=%d", M);
        const float head_ms =
            time_kernel_ms([&] { decode_linear_forward(&head1, 1, xc_dev, M, R, SCALE, &y[7], ws, ws_bytes, 0); });
        report(label, head_ms, head_bytes, 0);
        snprintf(label, sizeof(label), "lm_head M=%d cuBLASLt", M);
        report(label, time_kernel_ms([&] {
                   matmul(mm, y[7], false, V, xc_dev, false, C, (const bf16*)head.gpu.w, true, C, M, V, C, 1.0f, 0.0f,
                          nullptr, 0);
               }),
               head_bytes, 0);
        // the layer's linears through forward as one CUDA graph, timed and reported: the ms of one replay
        auto time_layer_graph = [&](const char* variant, ForwardFn forward) {
            const float ms = time_as_graph(stream, [&](cudaStream_t s) { layer(M, mm, s, forward); });
            snprintf(label, sizeof(label), "layer M=%d graph%s%s", M, variant ? ", " : "", variant ? variant : "");
            report(label, ms, layer_bytes, 0);
            return ms;
        };
        // production, then the variants
        const float layer_ms = time_layer_graph(nullptr, decode_linear_forward);
        for (const auto& v : tuned)
            if (v.forward != decode_linear_forward && v.forward != v3::decode_linear_forward)  // v3: row-major codes
                time_layer_graph(v.name, v.forward);
        time_layer_graph("axgemm", axgemm::decode_linear_forward);
        printf("  step M=%-2d 28 layers + lm_head: %.3f ms of linears per token step (%.1f%% of the roofline, "
               "%.0f tokens/s at this batch)\n", M, 28 * layer_ms + head_ms,
               100.0 * (28 * layer_bytes + head_bytes) / ((28 * layer_ms + head_ms) * 1e9) / CEILING_COPY_TBPS,
               M * 1000.0 / (28 * layer_ms + head_ms));
        // the bf16 copies: the share printed is of the NF4 layer's roofline (bf16 reads 3.6x the bytes)
        for (Bf16Route route : {BF16_V3, BF16_PROD}) {
            const float ms = time_as_graph(stream, [&](cudaStream_t s) { layer_bf16(M, route, s); });
            snprintf(label, sizeof(label), "layer M=%d graph, bf16 copy, %s", M, bf16_route_names[route]);
            report(label, ms, layer_bytes, 0);
            printf("  step M=%-2d bf16 copy (%s): %.3f ms of linears per token step\n", M, bf16_route_names[route],
                   28 * ms + head_ms);
        }
        {  // the bf16 layer without adapters: what the base GEMMs alone cost
            LoraLinearGpu qkv0[3] = {q.lora_bf16(false), k.lora_bf16(false), v.lora_bf16(false)};
            LoraLinearGpu gu0[2] = {gate.lora_bf16(false), up.lora_bf16(false)};
            LoraLinearGpu o0 = o.lora_bf16(false), down0 = down.lora_bf16(false);
            const LayerGroups bare = {qkv0, &o0, gu0, &down0};
            const float ms = time_as_graph(stream, [&](cudaStream_t s) {
                run_layer(bare, M, mm, s, decode_linear_forward);
            });
            snprintf(label, sizeof(label), "layer M=%d graph, bf16 copy, no adapters", M);
            report(label, ms, layer_bytes, 0);
        }
    }
    cudaCheck(cudaStreamDestroy(stream));
    matmul_destroy(mm);
    cudaFree(mm_ws);
    cudaFree(ws);
    cudaFree(xc_dev);
    cudaFree(xi_dev);
    for (bf16* p : y) cudaFree(p);
    printf("%s\n", ok ? "all versions ok" : "FAIL: a version did not match the CPU reference");
    return ok ? 0 : 1;
}
