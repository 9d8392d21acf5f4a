// wgmma_probe.cu (lab): the two tensor-core instructions a batch-64 NF4 decode kernel could use, on the H200: mma.sync m16n8k16 (the warp-level one the decode kernels use) against wgmma m64nNk16 with A from registers and B from shared memory (the warpgroup one), their throughput, and a check of wgmma's operand layouts against a CPU product.
//
// Why: at batch 64 the decode step's linears need 0.84 TFLOP a step (README, "What bounds batch 64"), so the rate
// of the instruction that multiplies them bounds the step. Hopper's full tensor rate is reached only through wgmma,
// which reads B (and optionally A) from shared memory through a descriptor; with A from registers, the weights can
// be dequantized in registers as today and x staged once per block in shared memory as B, shared by every warp.
// This lab measures what each instruction delivers alone (no loads in the loop: the upper bound of any kernel built
// on it), and finds the shared-memory descriptor convention that gives the right product, so that a kernel can be
// built on a checked layout.
//
// wgmma m64nNk16, bf16 in, fp32 accumulate, A from registers (PTX ISA, "Asynchronous Warpgroup Level Matrix
// Multiply-Accumulate"): a warpgroup is 4 consecutive warps; warp w holds rows 16w .. 16w+15 of A (64 x 16) in
// mma.sync's A layout (kernels/mma.cuh), and D (64 x N) as N/8 of mma.sync's 16 x 8 tiles: d[4j .. 4j+3] is tile j
// (columns 8j .. 8j+7). B (16 x N) is read from shared memory "K-major" (imm-trans-b 0): stored as N rows of 16 k,
// which is how x [M, K] lies, rows of k. Without swizzling it is cut into core matrices of 8 rows x 16 bytes (8 x 8
// bf16, 128 contiguous bytes); the descriptor gives the byte distance between core matrices along k (the "leading
// dimension byte offset") and along N (the "stride dimension byte offset"). Which of the two strides is which, for a
// K-major operand without swizzle, is what the check decides: this lab lays B out with 128 bytes between the two
// k halves and 256 between groups of 8 rows, and tries the descriptor both ways; exactly one must match.
// Shared memory written by ordinary stores must be fenced for the async proxy (fence.proxy.async) before wgmma reads
// it, and registers the wgmma reads or accumulates into must be fenced (wgmma.fence) after ordinary instructions
// wrote them.
//
// Build: sm_90a (wgmma is an architecture-specific feature of sm_90): the Makefile builds this lab alone with it.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "dev/cuda/lab_common.cuh"
#include "kernels/mma.cuh"
#include "kernels/wgmma.cuh"

typedef __nv_bfloat16 bf16;

// ---- the check: one warpgroup, D = A B^T for a 64 x 16 A and a 64-row B of 16 k ------------------------------------

// a: [64, 16] row-major; b: [64, 16] (row n holds B's column n); d: [64, 64] row-major. leading/stride: the
// descriptor's two byte offsets, tried both ways by the host.
__global__ void wgmma_check_kernel(float* d_out, const bf16* a, const bf16* b, uint32_t leading, uint32_t stride) {
    __shared__ __align__(128) bf16 b_smem[64 * 16];
    const int t = threadIdx.x, warp = t / 32, lane = t % 32, g = lane / 4, c = lane % 4;
    for (int i = t; i < 64 * 16; i += blockDim.x) b_smem[wg_b_offset(i / 16, i % 16)] = b[i];
    wg_fence_smem();
    __syncthreads();
    // A's fragment: mma.sync's layout for rows 16 warp + (g, g + 8)
    auto pair = [&](int row, int k) {
        const __nv_bfloat162 v = __halves2bfloat162(a[row * 16 + k], a[row * 16 + k + 1]);
        return *reinterpret_cast<const uint32_t*>(&v);
    };
    const int r0 = 16 * warp + g;
    const uint32_t frag[4] = {pair(r0, 2 * c), pair(r0 + 8, 2 * c), pair(r0, 2 * c + 8), pair(r0 + 8, 2 * c + 8)};
    float acc[32];
    for (int i = 0; i < 32; i++) acc[i] = 0.0f;
    wg_fence_operands(acc);
    wg_fence();
    wgmma_m64n64k16_rs(acc, frag, wg_descriptor(b_smem, leading, stride));
    wg_commit();
    wg_wait<0>();
    wg_fence_operands(acc);
    for (int j = 0; j < 8; j++)
        for (int e = 0; e < 4; e++) {
            const int row = r0 + (e / 2) * 8, col = 8 * j + 2 * c + e % 2;
            d_out[row * 64 + col] = acc[4 * j + e];
        }
}

// ---- throughput: no loads in the loop, only the instruction ------------------------------------------------------

// Each warp runs CHAINS independent accumulators (so the tensor pipe never waits on one result), iters times.
constexpr int MMA_CHAINS = 8;
__global__ void mma_sync_rate_kernel(float* out, int iters) {
    const int lane = threadIdx.x % 32;
    uint32_t a[4], b[2];
    for (int i = 0; i < 4; i++) a[i] = 0x3F803F80u ^ (uint32_t)(lane * (i + 1));  // bf16 pairs near 1, never 0
    for (int i = 0; i < 2; i++) b[i] = 0x3F803F80u ^ (uint32_t)(lane * (i + 3));
    float d[MMA_CHAINS][4] = {};
    for (int it = 0; it < iters; it++)
#pragma unroll
        for (int ch = 0; ch < MMA_CHAINS; ch++) mma_bf16_m16n8k16(d[ch], a, b);
    float sum = 0.0f;
    for (int ch = 0; ch < MMA_CHAINS; ch++)
        for (int e = 0; e < 4; e++) sum += d[ch][e];
    if (sum == 1234.5f) out[0] = sum;  // never true in practice; keeps the loop from being removed
}

// Each warpgroup issues GROUP wgmma into one accumulator (as a GEMM's k loop does), commits and waits, iters times.
// Two warpgroups a block, so that one issues while the other drains. REWRITE: A is rewritten before every wgmma (one
// xor a register, standing for the dequantization that a mixed-input kernel does there), in two register sets used
// alternately, with the wgmma.fence that a register written by an ordinary instruction needs before a wgmma reads it:
// what that fence costs the RS pattern.
constexpr int WG_GROUP = 16;
template <bool REWRITE>
__global__ void __launch_bounds__(256) wgmma_rate_kernel(float* out, int iters) {
    __shared__ __align__(128) bf16 b_smem[64 * 16];
    const int lane = threadIdx.x % 32;
    for (int i = threadIdx.x; i < 64 * 16; i += blockDim.x) b_smem[i] = __float2bfloat16(1.0f + 0.001f * (i % 7));
    wg_fence_smem();
    __syncthreads();
    uint32_t a[2][4];  // without REWRITE only a[0]
    for (int i = 0; i < 4; i++) a[0][i] = a[1][i] = 0x3F803F80u ^ (uint32_t)(lane * (i + 1));
    const uint64_t desc = wg_descriptor(b_smem, 128, 256);
    float d[32];
    for (int i = 0; i < 32; i++) d[i] = 0.0f;
    for (int it = 0; it < iters; it++) {
        wg_fence_operands(d);
        if (!REWRITE) wg_fence();
#pragma unroll
        for (int u = 0; u < WG_GROUP; u++) {
            if (REWRITE) {
#pragma unroll
                for (int i = 0; i < 4; i++) a[u % 2][i] ^= (uint32_t)(it + u) & 0x00010001u;  // flips a low mantissa bit
                wg_fence();
            }
            wgmma_m64n64k16_rs(d, a[REWRITE ? u % 2 : 0], desc);
        }
        wg_commit();
        wg_wait<0>();
        wg_fence_operands(d);
    }
    float sum = 0.0f;
    for (int i = 0; i < 32; i++) sum += d[i];
    if (sum == 1234.5f) out[0] = sum;
}

int main() {
    int sms = 0;
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    printf("wgmma probe: %d SMs\n", sms);

    // ---- validation: the CPU product against wgmma with each descriptor convention ----
    Rng rng(7);
    std::vector<float> a_f(64 * 16), b_f(64 * 16);
    fill_uniform(a_f, rng);
    fill_uniform(b_f, rng);
    std::vector<bf16_bits> a_bits = to_bf16(a_f), b_bits = to_bf16(b_f);  // a_f, b_f now hold the rounded values
    std::vector<float> ref(64 * 64);
    for (int m = 0; m < 64; m++)
        for (int n = 0; n < 64; n++) {
            double s = 0.0;
            for (int k = 0; k < 16; k++) s += (double)a_f[m * 16 + k] * b_f[n * 16 + k];
            ref[m * 64 + n] = (float)s;
        }
    bf16 *d_a = nullptr, *d_b = nullptr;
    float* d_d = nullptr;
    cudaCheck(cudaMalloc(&d_a, a_bits.size() * sizeof(bf16)));
    cudaCheck(cudaMalloc(&d_b, b_bits.size() * sizeof(bf16)));
    cudaCheck(cudaMalloc(&d_d, ref.size() * sizeof(float)));
    cudaCheck(cudaMemcpy(d_a, a_bits.data(), a_bits.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d_b, b_bits.data(), b_bits.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    int matches = 0;
    const uint32_t conventions[2][2] = {{128, 256}, {256, 128}};  // {leading, stride} byte offsets
    for (const auto& conv : conventions) {
        cudaCheck(cudaMemset(d_d, 0xFF, ref.size() * sizeof(float)));  // NaN: an element never written fails
        wgmma_check_kernel<<<1, 128>>>(d_d, d_a, d_b, conv[0], conv[1]);
        cudaCheck(cudaGetLastError());
        cudaCheck(cudaDeviceSynchronize());
        std::vector<float> got(ref.size());
        cudaCheck(cudaMemcpy(got.data(), d_d, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
        char name[64];
        snprintf(name, sizeof name, "wgmma LBO %u SBO %u", conv[0], conv[1]);
        // fp32 sums of 16 products of bf16 values in [-1, 1): order and fp32 rounding only, far below 1e-5
        matches += validate(name, got.data(), ref.data(), ref.size(), 1e-5f, 1e-5f) ? 1 : 0;
    }
    printf("validation %s: %d of the 2 descriptor conventions give the product (exactly 1 must)\n",
           matches == 1 ? "ok" : "FAILED", matches);

    // ---- throughput ----
    float* d_out = nullptr;
    cudaCheck(cudaMalloc(&d_out, sizeof(float)));
    const int iters = 4096;
    printf("\nthroughput, no loads (the instruction alone), %d iterations\n", iters);
    for (int blocks_per_sm : {2, 4, 8}) {
        const int blocks = blocks_per_sm * sms, threads = 256;
        const double flops = (double)blocks * (threads / 32) * iters * MMA_CHAINS * 2.0 * 16 * 8 * 16;
        const float ms = time_kernel_ms([&] { mma_sync_rate_kernel<<<blocks, threads>>>(d_out, iters); }, 5);
        char name[64];
        snprintf(name, sizeof name, "mma.sync, %d warps/SM", blocks_per_sm * threads / 32);
        report(name, ms, 0, flops);
    }
    // the two wgmma kernels at 2, 4 and 8 warpgroups an SM (blocks of two)
    auto time_wgmma = [&](void (*kernel)(float*, int), const char* label) {
        for (int blocks_per_sm : {1, 2, 4}) {
            const int blocks = blocks_per_sm * sms, threads = 256;
            const double flops = (double)blocks * (threads / 128) * (iters / 4) * WG_GROUP * 2.0 * 64 * 64 * 16;
            const float ms = time_kernel_ms([&] { kernel<<<blocks, threads>>>(d_out, iters / 4); }, 5);
            char name[64];
            snprintf(name, sizeof name, label, blocks_per_sm * 2);
            report(name, ms, 0, flops);
        }
    };
    time_wgmma(wgmma_rate_kernel<false>, "wgmma RS n64, %d wgroups/SM");
    time_wgmma(wgmma_rate_kernel<true>, "wgmma RS n64, A rewritten, %d wg/SM");
    cudaFree(d_a); cudaFree(d_b); cudaFree(d_d); cudaFree(d_out);
    return matches == 1 ? 0 : 1;
}
