// decode_wgmma.cu (lab): a draft of the batch-64 NF4 decode linear on wgmma: y = x W^T for 64 rows of x, the NF4 codes dequantized in registers as wgmma's A operand, x staged once per warpgroup in shared memory as its B operand; validated against the CPU, timed at Qwen2.5-7B shapes.
//
// Why (README, "What bounds batch 64"): the streaming kernel (kernels/decode_linear.cu) multiplies with mma.sync,
// one warp at a time, and every warp reads x for itself: 8x the code bytes at two m-tiles a step. Here a warpgroup
// (4 warps) owns a slab of 64 weight rows, warp w its tile w of 16 rows; all four walk k together, so one copy of x
// in shared memory feeds them, and one wgmma m64n64k16 a k-step does what 32 mma.sync did.
//
// The layouts:
//   codes: the decode-tile order of quant/nf4.h (nf4_tile): for each 16-row tile and 64-block of k, 512 bytes, lane
//     (g, c) finding at 16 L the 8 code bytes of row g (physical k 16c .. 16c+15 of the block), then row g + 8's;
//   A: as in the streaming kernel, byte 2s of a lane's 8 is the pair of logical k (2c, 2c+1) of k-step s, byte 2s+1
//     the pair (2c+8, 2c+9): mma.sync's A fragment, which is also wgmma's, warp w holding rows 16w .. 16w+15;
//   x: so B's logical k must be the same permutation of the physical k, per block: physical 16c + 4s + j is logical
//     k 2c + j (j < 2) or 2c + 8 + j - 2 (j >= 2) of k-step s. x_permute_kernel writes x once in that order and in
//     wgmma's core-matrix layout (dev/cuda/wgmma.cuh, wg_b_offset): for each block, 4 k-steps of 2 KB (64 rows x 16
//     k), rows past M zero. The decode step would do this once per group (q/k/v share x, gate/up too).
// The pipeline of a warpgroup, per 64-block of k: its x (8 KB) arrives by cp.async STAGES - 1 blocks ahead; its
// codes and scales are loaded into registers PREF blocks ahead; the block is dequantized into registers, then 4
// wgmma are committed as a group and waited for (see the loop for why not overlapped), and the x stage of the block
// before is refilled. Split-K over blocks: each block of threads (one warpgroup) takes one slab and a contiguous
// range of 64-blocks and writes its fp32 partial; reduce_partials_kernel adds the splits in order (so the bits never
// depend on timing) and rounds to bf16.
// Dequantization as bitsandbytes rounds it: bf16(code[q] * absmax), the absmax from the 8-bit scale and its nested
// absmax in two roundings (nf4_dequant.cu); the weights are the production NF4View, so the benchmark times both
// kernels on the same bytes.
//
// wgmma's shared-memory descriptor: which of its two byte offsets is the distance between the two k halves of the
// tile and which between groups of 8 rows is not yet checked on the H200 (dev/cuda/wgmma_probe.cu tries both), so
// this lab validates both conventions and times with the one that matches.
// Timed beside the production streaming kernel (decode_linear_forward) on the same shapes in the same run.
// Build: sm_90a (the Makefile builds it alone with -gencode arch=compute_90a,code=sm_90a). NOT yet run on a GPU.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "dev/cuda/lab_common.cuh"
#include "dev/cuda/wgmma.cuh"
#include "kernels/decode_linear.cuh"
#include "model/weights.h"
#include "quant/nf4.h"

typedef __nv_bfloat16 bf16;

constexpr int WG_THREADS = 128;  // one warpgroup a block
constexpr int STAGES = 4;        // x blocks in flight (8 KB each)
constexpr int PREF = 4;          // code blocks loaded ahead into registers
constexpr int XBLOCK_BYTES = 64 * 64 * 2;  // x of one 64-block: 4 k-steps of 64 rows x 16 k

// ---- x in wgmma's order ----------------------------------------------------------------------------------------

// The logical k (0..15) of k-step s that physical k p (0..63) of a block becomes, and that k-step.
__host__ __device__ inline void wg_logical_k(int p, int* s, int* kl) {
    const int c = p / 16, j = p % 4;
    *s = (p % 16) / 4;
    *kl = j < 2 ? 2 * c + j : 2 * c + 8 + (j - 2);
}

// xw[kb][s] (2 KB tiles) from x [M, K] row-major; rows M .. 63 zero. One thread per (row, physical k).
__global__ void x_permute_kernel(bf16* xw, const bf16* x, int M, int K) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)64 * K) return;
    const int n = (int)(i / K), k = (int)(i % K), kb = k / 64;
    int s, kl;
    wg_logical_k(k % 64, &s, &kl);
    xw[(int64_t)kb * (XBLOCK_BYTES / 2) + s * 1024 + wg_b_offset(n, kl)] = n < M ? x[(int64_t)n * K + k] : __float2bfloat16(0.0f);
}

// ---- the kernel ------------------------------------------------------------------------------------------------

__device__ __forceinline__ void cp_async16(void* smem, const void* global) {
    const uint32_t dst = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Byte b of word: the bf16 pair (code[high nibble], code[low nibble]) * scale, each product rounded to bf16 (the
// element 2j is the high nibble, and the lower index goes to the lower half of the register).
__device__ __forceinline__ uint32_t dequant_pair(const float* code, uint32_t word, int b, float scale) {
    const uint32_t byte = (word >> (8 * b)) & 0xFF;
    const __nv_bfloat162 v = __floats2bfloat162_rn(code[byte >> 4] * scale, code[byte & 15] * scale);
    return *reinterpret_cast<const uint32_t*>(&v);
}

struct Work {
    NF4View nf4;           // device view as the GPU model holds it: decode-tile order (tiled), with or without
                           // double quantization
    const bf16* xw;        // x_permute_kernel's order
    float* partials;       // [splits][slabs][64 m][64 r]
    int N, K, splits;
    uint32_t leading, stride;  // the descriptor's byte offsets (see the header)
};

__global__ void __launch_bounds__(WG_THREADS) decode_wgmma_kernel(const __grid_constant__ Work w) {
    extern __shared__ __align__(128) unsigned char x_stages[];  // STAGES x 8 KB
    __shared__ float code[16], nested_code[256];
    const int t = threadIdx.x, warp = t / 32, lane = t % 32, g = lane / 4, c = lane % 4;
    const int nkb = w.K / 64, slabs = w.N / 64;
    const int slab = blockIdx.x / w.splits, split = blockIdx.x % w.splits;
    const int kb0 = (int)((int64_t)split * nkb / w.splits), kb1 = (int)((int64_t)(split + 1) * nkb / w.splits);
    const int tile = slab * 4 + warp;  // this warp's 16 rows
    const bool dq = w.nf4.double_quant;
    if (t < 16) code[t] = w.nf4.code[t];
    if (dq)
        for (int i = t; i < 256; i += WG_THREADS) nested_code[i] = w.nf4.nested_code[i];

    // x of block kb into stage (kb - kb0) % STAGES: 512 16-byte pieces, 4 a thread
    auto stage_x = [&](int kb) {
        if (kb < kb1) {
            unsigned char* dst = x_stages + ((kb - kb0) % STAGES) * XBLOCK_BYTES;
            const unsigned char* src = reinterpret_cast<const unsigned char*>(w.xw) + (int64_t)kb * XBLOCK_BYTES;
#pragma unroll
            for (int i = 0; i < XBLOCK_BYTES / 16 / WG_THREADS; i++) {
                const int piece = i * WG_THREADS + t;
                cp_async16(dst + piece * 16, src + piece * 16);
            }
        }
        cp_async_commit();  // a group every time, empty past the range, so that the wait counts hold
    };
    // this lane's codes of block kb (decode-tile order), and its two rows' raw scales: the 8-bit scale (tiled: 16 a
    // (tile, block), one a row) and the nested absmax of its row-major block, or the fp32 absmax
    const uint8_t* tile_codes = w.nf4.packed + ((int64_t)tile * nkb) * 512 + lane * 16;
    const uint8_t* tile_q = dq ? w.nf4.absmax_q + ((int64_t)tile * nkb) * 16 + g : nullptr;
    const int64_t block_row0 = (int64_t)(tile * 16 + g) * nkb, block_row8 = block_row0 + (int64_t)8 * nkb;
    uint4 ring_codes[PREF];
    float ring_a[PREF][2];
    uint32_t ring_q[PREF][2];
    auto load_codes = [&](int kb, int r) {
        if (kb < kb1) {
            ring_codes[r] = __ldg(reinterpret_cast<const uint4*>(tile_codes + (int64_t)kb * 512));
            if (dq) {
                ring_q[r][0] = __ldg(tile_q + kb * 16);
                ring_q[r][1] = __ldg(tile_q + kb * 16 + 8);
                ring_a[r][0] = __ldg(w.nf4.nested_absmax + (block_row0 + kb) / NF4_NESTED_BLOCK);
                ring_a[r][1] = __ldg(w.nf4.nested_absmax + (block_row8 + kb) / NF4_NESTED_BLOCK);
            } else {
                ring_a[r][0] = __ldg(w.nf4.absmax_f32 + block_row0 + kb);
                ring_a[r][1] = __ldg(w.nf4.absmax_f32 + block_row8 + kb);
            }
        }
    };
    // a block scale exactly as nf4_dequant.cu rounds it: nested_code[q] * nested_absmax, then + offset, two roundings
    auto block_scale = [&](uint32_t q, float a) {
        return dq ? __fadd_rn(__fmul_rn(nested_code[q], a), w.nf4.nested_offset) : a;
    };

#pragma unroll
    for (int r = 0; r < PREF; r++) load_codes(kb0 + r, r);
    for (int i = 0; i < STAGES - 1; i++) stage_x(kb0 + i);
    __syncthreads();  // the code tables

    float acc[32];
#pragma unroll
    for (int i = 0; i < 32; i++) acc[i] = 0.0f;
    uint32_t a[4][4];  // the block's 4 k-steps' A fragments

    for (int base = kb0; base < kb1; base += PREF) {
#pragma unroll
        for (int r = 0; r < PREF; r++) {
            const int kb = base + r;
            if (kb >= kb1) break;  // the same for the whole block
            // dequantize block kb from the ring, and load block kb + PREF into its place
            const uint4 codes = ring_codes[r];
            const float s0 = block_scale(ring_q[r][0], ring_a[r][0]), s1 = block_scale(ring_q[r][1], ring_a[r][1]);
            load_codes(kb + PREF, r);
            // codes.x, .y: row g's 8 bytes; .z, .w: row g + 8's. Byte 2s -> a[s][0] / a[s][1], byte 2s+1 -> a[s][2] /
            // a[s][3] (rows g and g + 8)
#pragma unroll
            for (int s = 0; s < 4; s++) {
                const uint32_t lo_word = s < 2 ? codes.x : codes.y, hi_word = s < 2 ? codes.z : codes.w;
                const int b = (2 * s) % 4;
                a[s][0] = dequant_pair(code, lo_word, b, s0);
                a[s][1] = dequant_pair(code, hi_word, b, s1);
                a[s][2] = dequant_pair(code, lo_word, b + 1, s0);
                a[s][3] = dequant_pair(code, hi_word, b + 1, s1);
            }
            // x of block kb has landed (at most STAGES - 2 newer groups pending), for every thread of the warpgroup
            cp_async_wait<STAGES - 2>();
            wg_fence_smem();
            __syncthreads();
            const unsigned char* xs = x_stages + ((kb - kb0) % STAGES) * XBLOCK_BYTES;
            wg_fence_operands(acc);
            wg_fence();
#pragma unroll
            for (int s = 0; s < 4; s++)
                wgmma_m64n64k16_rs(acc, a[s], wg_descriptor(xs + s * 2048, w.leading, w.stride));
            wg_commit();
            // All of it before the next block's dequantization: ptxas serializes every wgmma of a kernel that writes
            // a wgmma's input registers while one is in flight (C7513), even into a second register set. So a
            // warpgroup's dequantization and its wgmma do not overlap; the SM's other warpgroups (4 blocks an SM)
            // fill the gaps.
            wg_wait<0>();
            wg_fence_operands(acc);
            wg_fence_operands(a);
            stage_x(kb + STAGES - 1);  // into block kb - 1's stage
        }
    }
    cp_async_wait<0>();

    // the partial: acc[4j + e] is D[16 warp + g + 8 (e / 2)][8j + 2c + e % 2], D's rows the slab's weight rows and its
    // columns the rows m of x
    float* part = w.partials + ((int64_t)split * slabs + slab) * 64 * 64;
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = 16 * warp + g + 8 * (e / 2), m = 8 * j + 2 * c + e % 2;
            part[m * 64 + r] = acc[4 * j + e];
        }
}

// y [M, N] bf16: the splits' partials added in split order.
__global__ void reduce_partials_kernel(bf16* y, const float* partials, int M, int N, int splits) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)M * N) return;
    const int m = (int)(i / N), n = (int)(i % N), slab = n / 64, r = n % 64, slabs = N / 64;
    float sum = 0.0f;
    for (int sp = 0; sp < splits; sp++) sum += partials[(((int64_t)sp * slabs + slab) * 64 + m) * 64 + r];
    y[i] = __float2bfloat16(sum);
}

// ---- host --------------------------------------------------------------------------------------------------------

// Enough blocks for about 4 a SM, at least 2 blocks of k a split.
static int plan_splits(int N, int K, int sms) {
    const int slabs = N / 64, nkb = K / 64;
    return std::max(1, std::min((4 * sms + slabs - 1) / slabs, nkb / 2));
}

// The draft on one linear: x permuted, the main kernel, the partials added.
static void run_linear(const LinearWeight& lw, const bf16* x, bf16* xw, bf16* y, float* partials, int M, int splits,
                       uint32_t leading, uint32_t stride, cudaStream_t s) {
    const int N = (int)lw.out, K = (int)lw.in;
    const int64_t n_perm = (int64_t)64 * K;
    x_permute_kernel<<<(unsigned)((n_perm + 255) / 256), 256, 0, s>>>(xw, x, M, K);
    cudaCheck(cudaGetLastError());
    Work w{lw.nf4, xw, partials, N, K, splits, leading, stride};
    decode_wgmma_kernel<<<(N / 64) * splits, WG_THREADS, STAGES * XBLOCK_BYTES, s>>>(w);
    cudaCheck(cudaGetLastError());
    reduce_partials_kernel<<<(unsigned)(((int64_t)M * N + 255) / 256), 256, 0, s>>>(y, partials, M, N, splits);
    cudaCheck(cudaGetLastError());
}

static __global__ void fill_bytes_kernel(uint8_t* p, size_t n, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = seed + i * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        p[i] = (uint8_t)(z >> 56);
    }
}
static __global__ void fill_value_kernel(float* p, size_t n, float v) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = v;
}

template <typename T>
static T* upload(const std::vector<T>& v) {
    T* d = nullptr;
    cudaCheck(cudaMalloc(&d, v.size() * sizeof(T)));
    cudaCheck(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

int main() {
    int sms = 0;
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaCheck(cudaFuncSetAttribute(decode_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   STAGES * XBLOCK_BYTES));
    const size_t MAX_N = 37888, MAX_K = 18944, MAX_PART = (size_t)64 * 64 * 4 * 1024;  // 4 x 1024 slab-splits
    bf16 *d_x = nullptr, *d_xw = nullptr, *d_y = nullptr;
    float* d_part = nullptr;
    cudaCheck(cudaMalloc(&d_x, (size_t)64 * MAX_K * sizeof(bf16)));
    cudaCheck(cudaMalloc(&d_xw, (size_t)64 * MAX_K * sizeof(bf16)));
    cudaCheck(cudaMalloc(&d_y, (size_t)64 * MAX_N * sizeof(bf16)));
    cudaCheck(cudaMalloc(&d_part, MAX_PART * sizeof(float)));

    // ---- validation: a small linear, quantized on the CPU as bitsandbytes does (double quantization), tiled as the
    // GPU model holds it, against the CPU product of its dequantized weights ----
    const int VN = 256, VK = 1024;
    Rng rng(11);
    std::vector<float> w_f((size_t)VN * VK), x_f((size_t)64 * VK);
    fill_uniform(w_f, rng, -0.1f, 0.1f);
    fill_uniform(x_f, rng);
    std::vector<bf16_bits> w_bits = to_bf16(w_f), x_bits = to_bf16(x_f);
    NF4Tensor q;
    nf4_quantize(w_bits.data(), VN, VK, true, &q);
    std::vector<uint16_t> w_deq((size_t)VN * VK);
    nf4_dequantize(q, w_deq.data());
    std::vector<uint8_t> packed_t(q.packed.size()), absmax_t(q.absmax_q.size());
    nf4_tile(nf4_view(q), packed_t.data(), absmax_t.data());
    LinearWeight small;
    small.out = VN;
    small.in = VK;
    small.format = LinearFormat::NF4;
    small.nf4 = nf4_view(q);
    small.nf4.packed = upload(packed_t);
    small.nf4.absmax_q = upload(absmax_t);
    small.nf4.nested_absmax = upload(q.nested_absmax);
    small.nf4.code = upload(std::vector<float>(q.code, q.code + 16));
    small.nf4.nested_code = upload(std::vector<float>(q.nested_code, q.nested_code + 256));
    small.nf4.tiled = true;
    cudaCheck(cudaMemcpy(d_x, x_bits.data(), x_bits.size() * sizeof(bf16), cudaMemcpyHostToDevice));

    uint32_t good_leading = 0, good_stride = 0;
    int conventions_ok = 0;
    for (const auto& conv : {std::make_pair(128u, 256u), std::make_pair(256u, 128u)}) {
        bool ok = true;
        for (int M : {64, 48}) {
            std::vector<float> ref((size_t)M * VN);
            for (int m = 0; m < M; m++)
                for (int n = 0; n < VN; n++) {
                    double sum = 0.0;
                    for (int k = 0; k < VK; k++)
                        sum += (double)x_f[(size_t)m * VK + k] * bf16_to_f32(w_deq[(size_t)n * VK + k]);
                    ref[(size_t)m * VN + n] = (float)sum;
                }
            for (int splits : {1, 3}) {
                cudaCheck(cudaMemset(d_y, 0xFF, (size_t)M * VN * sizeof(bf16)));  // NaN where nothing is written
                run_linear(small, d_x, d_xw, d_y, d_part, M, splits, conv.first, conv.second, 0);
                cudaCheck(cudaDeviceSynchronize());
                std::vector<bf16_bits> y_bits((size_t)M * VN);
                cudaCheck(cudaMemcpy(y_bits.data(), d_y, y_bits.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
                const std::vector<float> got = bf16_to_floats(y_bits);
                const std::string name = "LBO " + std::to_string(conv.first) + " SBO " + std::to_string(conv.second) +
                                         " M " + std::to_string(M) + " splits " + std::to_string(splits);
                // one bf16 rounding of the output (2^-8 relative) over an fp32 sum in another order (|y| ~ 1)
                ok &= validate(name.c_str(), got.data(), ref.data(), ref.size(), 1e-3f, 8e-3f);
            }
        }
        if (ok) {
            conventions_ok++;
            good_leading = conv.first;
            good_stride = conv.second;
        }
    }
    const bool all_ok = conventions_ok == 1;
    printf("validation %s: %d of the 2 descriptor conventions give the product (exactly 1 must)\n",
           all_ok ? "ok" : "FAILED", conventions_ok);
    if (!all_ok) return 1;

    // ---- benchmark at Qwen2.5-7B shapes, M 64: one weight layout for both kernels, as the GPU model holds it
    // (decode-tile order, double quantization), random codes and scales (the values do not change the time) ----
    printf("\nM 64, NF4 linears without adapters: the production streaming kernel (decode_linear_forward), then this "
           "draft (x permuted, main kernel, split-K partials added), each a CUDA graph\n");
    const struct { const char* name; int N, K; } shapes[] = {
        {"q/k/v", 4608, 3584}, {"o", 3584, 3584}, {"gate", 18944, 3584}, {"gate/up", 37888, 3584}, {"down", 3584, 18944}};
    uint8_t *codes = nullptr, *absmax_q = nullptr;
    float* nested_absmax = nullptr;
    const size_t max_weights = MAX_N * 3584, max_blocks = max_weights / 64;
    cudaCheck(cudaMalloc(&codes, max_weights / 2));
    cudaCheck(cudaMalloc(&absmax_q, max_blocks));
    cudaCheck(cudaMalloc(&nested_absmax, (max_blocks / 256 + 1) * sizeof(float)));
    fill_bytes_kernel<<<1024, 256>>>(codes, max_weights / 2, 5);
    fill_bytes_kernel<<<1024, 256>>>(absmax_q, max_blocks, 9);
    fill_value_kernel<<<64, 256>>>(nested_absmax, max_blocks / 256 + 1, 0.03f);
    fill_uniform_device(d_x, (size_t)64 * MAX_K, 3, 1.0f);
    cudaCheck(cudaDeviceSynchronize());
    cudaStream_t stream;
    cudaCheck(cudaStreamCreate(&stream));
    for (bool draft : {false, true})
        for (const auto& sh : shapes) {
            LinearWeight lw = small;  // the tables and the format; the big arrays below
            lw.out = lw.nf4.rows = sh.N;
            lw.in = lw.nf4.cols = sh.K;
            lw.nf4.packed = codes;
            lw.nf4.absmax_q = absmax_q;
            lw.nf4.nested_absmax = nested_absmax;
            const double bytes = (double)sh.N * sh.K / 2 + (double)sh.N * sh.K / 64;
            char label[64];
            if (!draft) {
                LoraLinearGpu lin;
                lin.base = &lw;
                const size_t ws_bytes = decode_linear_workspace_bytes(&lin, 1, 32, 64);
                void* ws = nullptr;
                cudaCheck(cudaMalloc(&ws, ws_bytes));
                cudaCheck(cudaMemset(ws, 0, ws_bytes));
                bf16* y_out[1] = {d_y};
                const float ms = time_as_graph(stream, [&](cudaStream_t s) {
                    decode_linear_forward(&lin, 1, d_x, 64, 32, 1.0f, y_out, ws, ws_bytes, s);
                });
                snprintf(label, sizeof label, "%s, production", sh.name);
                report(label, ms, bytes, 0);
                cudaFree(ws);
            } else {
                const int splits = plan_splits(sh.N, sh.K, sms);
                if ((size_t)(sh.N / 64) * splits * 64 * 64 > MAX_PART) continue;
                const float ms = time_as_graph(stream, [&](cudaStream_t s) {
                    run_linear(lw, d_x, d_xw, d_y, d_part, 64, splits, good_leading, good_stride, s);
                });
                snprintf(label, sizeof label, "%s, wgmma (splits %d)", sh.name, splits);
                report(label, ms, bytes, 0);
                report("  as FLOPs", ms, 0, 2.0 * 64 * sh.N * sh.K);
            }
        }
    cudaCheck(cudaStreamDestroy(stream));
    cudaFree((void*)small.nf4.packed); cudaFree((void*)small.nf4.absmax_q); cudaFree((void*)small.nf4.nested_absmax);
    cudaFree((void*)small.nf4.code); cudaFree((void*)small.nf4.nested_code);
    cudaFree(codes); cudaFree(absmax_q); cudaFree(nested_absmax);
    cudaFree(d_x); cudaFree(d_xw); cudaFree(d_y); cudaFree(d_part);
    return 0;
}
