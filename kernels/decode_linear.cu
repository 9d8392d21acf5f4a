// decode_linear.cu: the decode-time linear layer: NF4 (or bf16) weights times a few bf16 rows of x on the tensor cores, each weight byte read once and dequantized in registers, split-K summed in a fixed order, LoRA fused into the epilogue.
//
// Why tensor cores at decode: a decode step is memory-bound on the weights, but an NF4 weight is half a byte, so
// the arithmetic per byte is 4*M flops: at M = 64 that is 256 flops/byte, above the H200's ridge (800 TFLOP/s over
// 4.27 TB/s = 187), and CUDA cores (67 TFLOP/s fp32) would be 12x slower than the weight read. mma.sync m16n8k16
// takes 16 weight rows x 8 sequences per instruction, so M = 1..8 costs one n-tile and M = 64 eight, the
// dequantization (the same for every M) being the fixed cost per weight.
//
// The layout trick: a dot product does not care in which order its k terms are summed, so each thread dequantizes
// the 32 contiguous weights of one 16-byte load (NF4) and feeds them to 8 mma k-steps, and reads x in the same
// permuted order. Logical k (2c, 2c+1, 2c+8, 2c+9) of mma k-step s, for thread c = lane % 4, is physical k
// c*32 + 4s + (0, 1, 2, 3) for NF4 (one 16-byte load of codes per row) and (s/2)*32 + c*8 + (s%2)*4 + (0..3) for
// bf16 (four 16-byte loads per row that a warp's 4 threads of a row read contiguously). Either way x is read as
// four 16-byte loads per n-tile and chunk of 128 k, and each weight register pair feeds every n-tile.
//
// Work split: a block of 4 warps owns 128 output rows (2 m16 tiles per warp, so every x fragment feeds two mma),
// and a range of 128-k chunks. When there are too few row tiles to fill the GPU (q, k, v, o, down at M <= 8),
// the k chunks are split over gridDim.y blocks: each writes its fp32 partial tile to the workspace, and the last
// block of a row tile to finish (a counter per tile) adds the partials in split order (so the bits never depend on
// timing), then applies bias, the bf16 rounding, the LoRA term and the second rounding. The split count keeps
// the partial traffic (L2 only) at most about the weight bytes.
//
// LoRA: ax = x A^T [M, G*R] is the same kernel with the bf16 A matrices as weights (one launch for the group),
// rounded to bf16 as the training path rounds it; the main kernel's epilogue then computes ax B^T for its rows
// with R/16 more mma per tile (B rows as the A operand), so the adapter costs reading A and B once.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda_common.cuh"
#include "kernels/decode_linear.cuh"

typedef __nv_bfloat16 bf16;

constexpr int DL_THREADS = 128;     // 4 warps
constexpr int DL_MT = 2;            // m16 tiles per warp
constexpr int DL_BLOCK_ROWS = 128;  // 4 warps x 2 tiles x 16 rows
constexpr int DL_CHUNK = 128;       // k per step of a warp: 32 weights per thread and row

// Everything one launch needs, by value (__grid_constant__: indexed by the linear without a local copy).
struct DecodeParams {
    int G = 0, M = 0, K = 0, R = 0, total_rows = 0;
    int row_start[DECODE_LINEAR_MAX_G + 1] = {};  // linear g owns virtual rows [row_start[g], row_start[g+1])
    float scale = 0.0f;
    const bf16* x = nullptr;                       // [M, K]
    NF4View nf4[DECODE_LINEAR_MAX_G];              // NF4 weights
    const bf16* w[DECODE_LINEAR_MAX_G] = {};       // bf16 weights
    const bf16* bias[DECODE_LINEAR_MAX_G] = {};
    const bf16* B[DECODE_LINEAR_MAX_G] = {};       // [out_g, R]; nullptr: no adapter
    int ax_col[DECODE_LINEAR_MAX_G] = {};          // linear g's columns of ax
    bf16* y[DECODE_LINEAR_MAX_G] = {};
    int ldy[DECODE_LINEAR_MAX_G] = {};
    const bf16* ax = nullptr;                      // [M, ld_ax] bf16; nullptr: no adapter anywhere
    int ld_ax = 0;
    float* partials = nullptr;                     // split-K partial tiles
    int* counters = nullptr;                       // one per row tile, zero between launches
    int chunks_per_split = 1, splits = 1;
};

// ---------------------------------------------------------------------------------------------------------------
// CUDA kernels

// The block scale exactly as nf4_dequant.cu (and bitsandbytes) rounds it: nested_code * nested_absmax as fp32, then
// + offset in a separate rounding; __fmul_rn/__fadd_rn are never contracted into an FMA.
__device__ __forceinline__ float dl_block_scale(const NF4View& t, const float* nested_code, int64_t block) {
    if (!t.double_quant) return __ldg(t.absmax_f32 + block);
    float scaled = __fmul_rn(nested_code[__ldg(t.absmax_q + block)], __ldg(t.nested_absmax + block / NF4_NESTED_BLOCK));
    return __fadd_rn(scaled, t.nested_offset);
}

// One code byte (element 2j in the high nibble) as the bf16 pair the mma reads: the lower k in the low half.
// Each value is bf16(code[q] * absmax), nf4_view_dequantize's rounding.
__device__ __forceinline__ uint32_t dl_nf4_pair(const float* code, uint32_t byte, float scale) {
    __nv_bfloat162 v = __floats2bfloat162_rn(__fmul_rn(code[byte >> 4], scale), __fmul_rn(code[byte & 15u], scale));
    return *reinterpret_cast<uint32_t*>(&v);
}

// d += a (16x16 bf16, row-major) . b (16x8 bf16, column-major), fp32 accumulators.
__device__ __forceinline__ void dl_mma(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Elements i and i+1 of a bf16 row as a pair, zero past `limit` (the rank-R operands need no alignment).
__device__ __forceinline__ uint32_t dl_pair(const bf16* row, int i, int limit) {
    const unsigned short* bits = reinterpret_cast<const unsigned short*>(row);
    uint32_t lo = i < limit ? bits[i] : 0u, hi = i + 1 < limit ? bits[i + 1] : 0u;
    return lo | (hi << 16);
}

__device__ __forceinline__ int dl_linear_of(const DecodeParams& p, int v) {
    int g = 0;
    while (g + 1 < p.G && v >= p.row_start[g + 1]) g++;
    return g;
}

// The final rounding of one output: bias, bf16, the adapter term in fp32, bf16 again (cpu_matmul_forward then
// cpu_lora_forward in BF16 mode).
__device__ __forceinline__ bf16 dl_output(float sum, const bf16* bias, int j, bool lora, float lora_sum, float scale) {
    if (bias) sum = __fadd_rn(sum, __bfloat162float(bias[j]));
    bf16 out = __float2bfloat16_rn(sum);
    if (lora) out = __float2bfloat16_rn(__fadd_rn(__bfloat162float(out), __fmul_rn(lora_sum, scale)));
    return out;
}

// The tensor-core kernel. NT n-tiles of 8 rows of x (M <= 8 NT). Grid: (row tiles of 128, k splits).
template <bool NF4, int NT>
__global__ void __launch_bounds__(DL_THREADS) decode_linear_mma_kernel(const __grid_constant__ DecodeParams p) {
    __shared__ float code[DECODE_LINEAR_MAX_G][16];
    __shared__ float nested_code[DECODE_LINEAR_MAX_G][256];
    __shared__ int last_block;
    if (NF4) {  // per linear: a checkpoint's stored tables are authoritative
        for (int g = 0; g < p.G; g++) {
            if (threadIdx.x < 16) code[g][threadIdx.x] = p.nf4[g].code[threadIdx.x];
            if (p.nf4[g].double_quant)
                for (int i = threadIdx.x; i < 256; i += DL_THREADS) nested_code[g][i] = p.nf4[g].nested_code[i];
        }
        __syncthreads();
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, c = lane % 4;
    const int tile = blockIdx.x, split = blockIdx.y, K = p.K, M = p.M;

    int lin[DL_MT], row0[DL_MT];
    bool active[DL_MT];
#pragma unroll
    for (int mt = 0; mt < DL_MT; mt++) {
        int v = tile * DL_BLOCK_ROWS + warp * 32 + mt * 16;  // every out_g is a multiple of 16: a tile is one linear's
        active[mt] = v < p.total_rows;
        lin[mt] = dl_linear_of(p, v);
        row0[mt] = v - p.row_start[lin[mt]];
    }

    float acc[DL_MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < DL_MT; mt++)
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mt][t][e] = 0.0f;

    const int chunks = (K + DL_CHUNK - 1) / DL_CHUNK;
    const int chunk_end = min(chunks, (split + 1) * p.chunks_per_split);
    for (int ch = split * p.chunks_per_split; ch < chunk_end; ch++) {
        const int k0 = ch * DL_CHUNK;
        // the weights of rows gq and gq+8 of both tiles, as the 16 bf16 pairs of the 8 k-steps
        uint32_t wf[DL_MT][2][16];
#pragma unroll
        for (int mt = 0; mt < DL_MT; mt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int g = lin[mt];
                const int64_t row = row0[mt] + gq + 8 * h;
                if (NF4) {
                    const int k = k0 + c * 32;
                    const bool ok = active[mt] && k < K;  // K % 32 == 0: 32 weights of one 64-block, 16-byte aligned
                    uint4 raw = make_uint4(0, 0, 0, 0);
                    float scale = 0.0f;
                    if (ok) {
                        const int64_t e = row * K + k;
                        raw = __ldcs(reinterpret_cast<const uint4*>(p.nf4[g].packed + e / 2));  // streamed: read once
                        scale = dl_block_scale(p.nf4[g], nested_code[g], e / NF4_BLOCK);
                    }
                    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
                    for (int i = 0; i < 4; i++)
#pragma unroll
                        for (int j = 0; j < 4; j++)  // little-endian: byte j of the word is the (4i+j)-th code byte
                            wf[mt][h][4 * i + j] = dl_nf4_pair(code[g], (words[i] >> (8 * j)) & 0xFFu, scale);
                } else {
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int k = k0 + i * 32 + c * 8;
                        uint4 raw = make_uint4(0, 0, 0, 0);
                        if (active[mt] && k < K)  // K % 8 == 0
                            raw = __ldcs(reinterpret_cast<const uint4*>(p.w[g] + row * K + k));
                        wf[mt][h][4 * i + 0] = raw.x;
                        wf[mt][h][4 * i + 1] = raw.y;
                        wf[mt][h][4 * i + 2] = raw.z;
                        wf[mt][h][4 * i + 3] = raw.w;
                    }
                }
            }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int m = t * 8 + gq;
            uint32_t xr[16];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int k = NF4 ? k0 + c * 32 + i * 8 : k0 + i * 32 + c * 8;
                uint4 raw = make_uint4(0, 0, 0, 0);
                if (m < M && k < K) raw = __ldg(reinterpret_cast<const uint4*>(p.x + (int64_t)m * K + k));
                xr[4 * i + 0] = raw.x;
                xr[4 * i + 1] = raw.y;
                xr[4 * i + 2] = raw.z;
                xr[4 * i + 3] = raw.w;
            }
#pragma unroll
            for (int s = 0; s < 8; s++)
#pragma unroll
                for (int mt = 0; mt < DL_MT; mt++)
                    dl_mma(acc[mt][t], wf[mt][0][2 * s], wf[mt][1][2 * s], wf[mt][0][2 * s + 1], wf[mt][1][2 * s + 1],
                           xr[2 * s], xr[2 * s + 1]);
        }
    }

    // split-K: publish this block's partial tile; the last block of the tile adds them all, in split order
    if (p.splits > 1) {
        const size_t tile_base = ((size_t)split * gridDim.x + tile) * (DL_MT * NT);
#pragma unroll
        for (int mt = 0; mt < DL_MT; mt++)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float4* slot = reinterpret_cast<float4*>(p.partials) + (tile_base + mt * NT + t) * DL_THREADS + threadIdx.x;
                __stcg(slot, make_float4(acc[mt][t][0], acc[mt][t][1], acc[mt][t][2], acc[mt][t][3]));
            }
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) last_block = atomicAdd(&p.counters[tile], 1) == p.splits - 1;
        __syncthreads();
        if (!last_block) return;
        __threadfence();
#pragma unroll
        for (int mt = 0; mt < DL_MT; mt++)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                for (int sp = 0; sp < p.splits; sp++) {
                    float4 v = make_float4(acc[mt][t][0], acc[mt][t][1], acc[mt][t][2], acc[mt][t][3]);
                    if (sp != split) {
                        const size_t base = ((size_t)sp * gridDim.x + tile) * (DL_MT * NT);
                        v = __ldcg(reinterpret_cast<const float4*>(p.partials) + (base + mt * NT + t) * DL_THREADS +
                                   threadIdx.x);
                    }
                    sum.x += v.x;
                    sum.y += v.y;
                    sum.z += v.z;
                    sum.w += v.w;
                }
                acc[mt][t][0] = sum.x;
                acc[mt][t][1] = sum.y;
                acc[mt][t][2] = sum.z;
                acc[mt][t][3] = sum.w;
            }
        if (threadIdx.x == 0) p.counters[tile] = 0;  // ready for the next launch
    }

    // epilogue: the adapter term ax B^T of this tile's rows on the tensor cores, then the two roundings
#pragma unroll
    for (int mt = 0; mt < DL_MT; mt++) {
        if (!active[mt]) continue;
        const int g = lin[mt];
        const bool lora = p.ax != nullptr && p.B[g] != nullptr;
        float lo[NT][4];
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) lo[t][e] = 0.0f;
        if (lora) {
            const bf16* b_lo = p.B[g] + (int64_t)(row0[mt] + gq) * p.R;
            const bf16* b_hi = b_lo + 8 * (int64_t)p.R;
            for (int r0 = 0; r0 < p.R; r0 += 16) {
                const uint32_t a0 = dl_pair(b_lo, r0 + 2 * c, p.R), a1 = dl_pair(b_hi, r0 + 2 * c, p.R);
                const uint32_t a2 = dl_pair(b_lo, r0 + 2 * c + 8, p.R), a3 = dl_pair(b_hi, r0 + 2 * c + 8, p.R);
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const int m = t * 8 + gq;
                    uint32_t b0 = 0, b1 = 0;
                    if (m < M) {
                        const bf16* ax_row = p.ax + (int64_t)m * p.ld_ax + p.ax_col[g];
                        b0 = dl_pair(ax_row, r0 + 2 * c, p.R);
                        b1 = dl_pair(ax_row, r0 + 2 * c + 8, p.R);
                    }
                    dl_mma(lo[t], a0, a1, a2, a3, b0, b1);
                }
            }
        }
        bf16* y = p.y[g];
        const int ldy = p.ldy[g];
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int j = row0[mt] + gq + (e >= 2 ? 8 : 0), m = t * 8 + 2 * c + (e & 1);
                if (m < M) y[(int64_t)m * ldy + j] = dl_output(acc[mt][t][e], p.bias[g], j, lora, lo[t][e], p.scale);
            }
    }
}

// The simple kernel: one warp per output row, lanes striding over k, each weight dequantized alone from the
// tables in global memory; up to 8 rows of x per pass over the row. Any shape and alignment.
template <bool NF4>
__global__ void decode_linear_simple_kernel(const __grid_constant__ DecodeParams p) {
    const int v = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (v >= p.total_rows) return;
    const int g = dl_linear_of(p, v), j = v - p.row_start[g], K = p.K;
    const bool lora = p.ax != nullptr && p.B[g] != nullptr;
    for (int m0 = 0; m0 < p.M; m0 += 8) {
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int k = lane; k < K; k += 32) {
            const int64_t e = (int64_t)j * K + k;
            float w;
            if (NF4) {
                const NF4View& t = p.nf4[g];
                const uint8_t byte = t.packed[e / 2];
                const unsigned q = (e % 2 == 0) ? byte >> 4 : byte & 0x0F;
                w = __bfloat162float(__float2bfloat16_rn(__fmul_rn(t.code[q], dl_block_scale(t, t.nested_code, e / NF4_BLOCK))));
            } else {
                w = __bfloat162float(p.w[g][e]);
            }
#pragma unroll
            for (int mm = 0; mm < 8; mm++)
                if (m0 + mm < p.M) acc[mm] += __bfloat162float(p.x[(int64_t)(m0 + mm) * K + k]) * w;
        }
#pragma unroll
        for (int mm = 0; mm < 8; mm++)
            for (int offset = 16; offset > 0; offset /= 2) acc[mm] += __shfl_xor_sync(0xFFFFFFFFu, acc[mm], offset);
        float mine = 0.0f;  // lane mm writes row m0 + mm
#pragma unroll
        for (int mm = 0; mm < 8; mm++)
            if (lane == mm) mine = acc[mm];
        const int m = m0 + lane;
        if (lane < 8 && m < p.M) {
            float lora_sum = 0.0f;
            if (lora)
                for (int r = 0; r < p.R; r++)
                    lora_sum += __bfloat162float(p.B[g][(int64_t)j * p.R + r]) *
                                __bfloat162float(p.ax[(int64_t)m * p.ld_ax + p.ax_col[g] + r]);
            p.y[g][(int64_t)m * p.ldy[g] + j] = dl_output(mine, p.bias[g], j, lora, lora_sum, p.scale);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// kernel launchers

static int dl_num_sms() {
    static int sms = 0;
    if (sms == 0) {
        int device = 0;
        cudaCheck(cudaGetDevice(&device));
        cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    }
    return sms;
}

static int dl_n_tiles(int M) {  // the instantiated NT values
    int t = (M + 7) / 8;
    return t <= 1 ? 1 : t <= 2 ? 2 : t <= 4 ? 4 : t <= 6 ? 6 : 8;
}

// How a launch of the tensor-core kernel is cut: row tiles, k splits and the partial floats they need.
struct DlPlan {
    int NT = 1, tiles = 0, chunks = 0, chunks_per_split = 1, splits = 1;
    size_t partial_floats = 0;
};

static DlPlan dl_plan(bool nf4, int total_rows, int K, int M) {
    DlPlan plan;
    plan.NT = dl_n_tiles(M);
    plan.tiles = (total_rows + DL_BLOCK_ROWS - 1) / DL_BLOCK_ROWS;
    plan.chunks = (K + DL_CHUNK - 1) / DL_CHUNK;
    // enough blocks for 4 per SM (16 warps: enough loads in flight to cover HBM latency) ...
    int want = (4 * dl_num_sms() + plan.tiles - 1) / plan.tiles;
    // ... but the partials (written and read back, 8 * rows * 8 NT bytes per split) at most the weight bytes
    double row_bytes = K * (nf4 ? 0.5 : 2.0);
    int traffic = std::max(1, (int)(row_bytes / (8.0 * 8 * plan.NT)));
    int splits = std::max(1, std::min(std::min(want, traffic), plan.chunks));
    plan.chunks_per_split = (plan.chunks + splits - 1) / splits;
    plan.splits = (plan.chunks + plan.chunks_per_split - 1) / plan.chunks_per_split;
    if (plan.splits > 1) plan.partial_floats = (size_t)plan.splits * plan.tiles * DL_BLOCK_ROWS * 8 * plan.NT;
    return plan;
}

static void dl_fail(const char* what) {
    fprintf(stderr, "error: decode_linear: %s\n", what);
    exit(EXIT_FAILURE);
}

static size_t dl_align(size_t bytes) { return (bytes + 255) / 256 * 256; }

// The workspace: [tile counters][ax bf16 [64, 3*R]][split-K partials], at offsets that depend on R alone, so that
// one zeroed workspace can serve every group of a model: the counters of one group never sit where another group
// wrote its ax or partials. Counters are only used when a launch splits k, which it does only with fewer than
// 4 * SMs row tiles (dl_plan), so a fixed DL_MAX_COUNTERS covers any GPU.
constexpr size_t DL_MAX_COUNTERS = 4096;

struct DlWorkspace {
    int* counters = nullptr;
    bf16* ax = nullptr;
    float* partials = nullptr;
};

static int dl_adapted(const LoraLinearGpu* linears, int G) {
    int n = 0;
    for (int g = 0; g < G; g++) n += linears[g].A != nullptr;
    return n;
}

static int dl_total_rows(const LoraLinearGpu* linears, int G) {
    int rows = 0;
    for (int g = 0; g < G; g++) rows += (int)linears[g].base->out;
    return rows;
}

static size_t dl_ax_bytes(int R) {
    return dl_align((size_t)DECODE_LINEAR_MAX_M * DECODE_LINEAR_MAX_G * std::max(R, 1) * sizeof(bf16));
}

static size_t dl_sizes(const LoraLinearGpu* linears, int G, int R, int max_M) {
    const int in = (int)linears[0].base->in, adapted = dl_adapted(linears, G);
    const bool nf4 = linears[0].base->format == LinearFormat::NF4;
    size_t partials = 0;
    for (int M = 1; M <= std::min(max_M, DECODE_LINEAR_MAX_M); M++) {
        DlPlan main_plan = dl_plan(nf4, dl_total_rows(linears, G), in, M);
        partials = std::max(partials, main_plan.partial_floats);
        if (main_plan.splits > 1 && (size_t)main_plan.tiles > DL_MAX_COUNTERS) dl_fail("too many row tiles to split");
        if (adapted > 0) partials = std::max(partials, dl_plan(false, adapted * R, in, M).partial_floats);
    }
    return DL_MAX_COUNTERS * sizeof(int) + dl_ax_bytes(R) + partials * sizeof(float);
}

size_t decode_linear_workspace_bytes(const LoraLinearGpu* linears, int G, int R, int max_M) {
    if (G < 1 || G > DECODE_LINEAR_MAX_G) dl_fail("a group has 1 to 3 linears");
    size_t bytes = 0;
    bool mixed = false;
    for (int g = 1; g < G; g++) mixed |= linears[g].base->format != linears[0].base->format;
    if (mixed)  // each linear on its own (see decode_linear_forward)
        for (int g = 0; g < G; g++) bytes = std::max(bytes, dl_sizes(linears + g, 1, R, max_M));
    else
        bytes = dl_sizes(linears, G, R, max_M);
    return bytes;
}

static DlWorkspace dl_workspace(const LoraLinearGpu* linears, int G, int R, int M, void* workspace,
                                size_t workspace_bytes) {
    size_t need = dl_sizes(linears, G, R, M);
    if (workspace_bytes < need || workspace == nullptr) {
        fprintf(stderr, "error: decode_linear: the workspace has %zu bytes, the group needs %zu "
                "(decode_linear_workspace_bytes)\n", workspace_bytes, need);
        exit(EXIT_FAILURE);
    }
    DlWorkspace ws;
    char* at = (char*)workspace;
    ws.counters = (int*)at;
    at += DL_MAX_COUNTERS * sizeof(int);
    ws.ax = (bf16*)at;
    at += dl_ax_bytes(R);
    ws.partials = (float*)at;
    return ws;
}

// Whether the tensor-core kernel can read these weights and x.
static bool dl_fast_ok(const DecodeParams& p, bool nf4) {
    if (p.K % (nf4 ? 32 : 8) != 0 || (uintptr_t)p.x % 16 != 0) return false;
    for (int g = 0; g < p.G; g++) {
        if ((p.row_start[g + 1] - p.row_start[g]) % 16 != 0) return false;
        const void* w = nf4 ? (const void*)p.nf4[g].packed : (const void*)p.w[g];
        if ((uintptr_t)w % 16 != 0) return false;
    }
    return true;
}

template <bool NF4>
static void dl_launch_mma(DecodeParams p, const DlWorkspace& ws, cudaStream_t stream) {
    DlPlan plan = dl_plan(NF4, p.total_rows, p.K, p.M);
    p.splits = plan.splits;
    p.chunks_per_split = plan.chunks_per_split;
    p.partials = ws.partials;
    p.counters = ws.counters;
    dim3 grid(plan.tiles, plan.splits);
    switch (plan.NT) {
        case 1: decode_linear_mma_kernel<NF4, 1><<<grid, DL_THREADS, 0, stream>>>(p); break;
        case 2: decode_linear_mma_kernel<NF4, 2><<<grid, DL_THREADS, 0, stream>>>(p); break;
        case 4: decode_linear_mma_kernel<NF4, 4><<<grid, DL_THREADS, 0, stream>>>(p); break;
        case 6: decode_linear_mma_kernel<NF4, 6><<<grid, DL_THREADS, 0, stream>>>(p); break;
        default: decode_linear_mma_kernel<NF4, 8><<<grid, DL_THREADS, 0, stream>>>(p); break;
    }
    cudaCheck(cudaGetLastError());
}

static void dl_launch(const DecodeParams& p, bool nf4, bool simple, const DlWorkspace& ws, cudaStream_t stream) {
    if (!simple && dl_fast_ok(p, nf4)) {
        if (nf4) dl_launch_mma<true>(p, ws, stream);
        else dl_launch_mma<false>(p, ws, stream);
        return;
    }
    const int warps_per_block = 4;
    const unsigned blocks = (unsigned)((p.total_rows + warps_per_block - 1) / warps_per_block);
    if (nf4) decode_linear_simple_kernel<true><<<blocks, 32 * warps_per_block, 0, stream>>>(p);
    else decode_linear_simple_kernel<false><<<blocks, 32 * warps_per_block, 0, stream>>>(p);
    cudaCheck(cudaGetLastError());
}

// One pass of at most 64 rows: ax = x A^T for the adapted linears (bf16 weights, no adapter), then the group.
static void dl_forward_pass(const LoraLinearGpu* linears, int G, const bf16* x, int M, int R, float scale,
                            bf16* const* y, const DlWorkspace& ws, bool simple, cudaStream_t stream) {
    const int in = (int)linears[0].base->in, adapted = dl_adapted(linears, G);
    DecodeParams params;
    params.G = G;
    params.M = M;
    params.K = in;
    params.R = R;
    params.scale = scale;
    params.x = x;
    if (adapted > 0) {
        DecodeParams ax;
        ax.M = M;
        ax.K = in;
        ax.x = x;
        for (int g = 0; g < G; g++) {
            if (!linears[g].A) continue;
            const int a = ax.G++;
            ax.row_start[a] = a * R;
            ax.w[a] = linears[g].A;
            ax.y[a] = ws.ax + a * R;
            ax.ldy[a] = adapted * R;
            params.ax_col[g] = a * R;
            params.B[g] = linears[g].B;
        }
        ax.row_start[ax.G] = ax.total_rows = adapted * R;
        dl_launch(ax, false, simple, ws, stream);
        params.ax = ws.ax;
        params.ld_ax = adapted * R;
    }
    for (int g = 0; g < G; g++) {
        const LinearWeight& base = *linears[g].base;
        params.row_start[g + 1] = params.row_start[g] + (int)base.out;
        params.nf4[g] = base.nf4;
        params.w[g] = (const bf16*)base.w;
        params.bias[g] = (const bf16*)base.bias;
        params.y[g] = y[g];
        params.ldy[g] = (int)base.out;
    }
    params.total_rows = params.row_start[G];
    dl_launch(params, linears[0].base->format == LinearFormat::NF4, simple, ws, stream);
}

static void dl_forward(const LoraLinearGpu* linears, int G, const bf16* x, int M, int R, float scale, bf16* const* y,
                       void* workspace, size_t workspace_bytes, bool simple, cudaStream_t stream) {
    if (G < 1 || G > DECODE_LINEAR_MAX_G) dl_fail("a group has 1 to 3 linears");
    if (M < 1) return;
    for (int g = 0; g < G; g++) {
        if (linears[g].base->in != linears[0].base->in) dl_fail("the linears of a group must read the same x");
        if (linears[g].A && (!linears[g].B || R < 1)) dl_fail("an adapter needs A, B and a rank R >= 1");
    }
    for (int g = 1; g < G; g++)
        if (linears[g].base->format != linears[0].base->format) {  // a mixed group: one linear at a time
            for (int i = 0; i < G; i++)
                dl_forward(linears + i, 1, x, M, R, scale, y + i, workspace, workspace_bytes, simple, stream);
            return;
        }
    DlWorkspace ws = dl_workspace(linears, G, R, std::min(M, DECODE_LINEAR_MAX_M), workspace, workspace_bytes);
    const int in = (int)linears[0].base->in;
    for (int m0 = 0; m0 < M; m0 += DECODE_LINEAR_MAX_M) {
        bf16* y_pass[DECODE_LINEAR_MAX_G];
        for (int g = 0; g < G; g++) y_pass[g] = y[g] + (size_t)m0 * linears[g].base->out;
        dl_forward_pass(linears, G, x + (size_t)m0 * in, std::min(DECODE_LINEAR_MAX_M, M - m0), R, scale, y_pass, ws,
                        simple, stream);
    }
}

void decode_linear_forward(const LoraLinearGpu* linears, int G, const bf16* x, int M, int R, float scale,
                           bf16* const* y, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    dl_forward(linears, G, x, M, R, scale, y, workspace, workspace_bytes, false, stream);
}

void decode_linear_forward_simple(const LoraLinearGpu* linears, int G, const bf16* x, int M, int R, float scale,
                                  bf16* const* y, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    dl_forward(linears, G, x, M, R, scale, y, workspace, workspace_bytes, true, stream);
}

double decode_linear_bytes(const LoraLinearGpu* linears, int G, int M, int R) {
    const double in = (double)linears[0].base->in;
    double bytes = M * in * 2.0;  // x
    for (int g = 0; g < G; g++) {
        const LinearWeight& w = *linears[g].base;
        const double out = (double)w.out;
        if (w.format == LinearFormat::NF4) {
            const double blocks = (double)w.nf4.num_blocks();
            bytes += (double)((w.nf4.numel() + 1) / 2);
            bytes += w.nf4.double_quant ? blocks + 4.0 * std::ceil(blocks / NF4_NESTED_BLOCK) : 4.0 * blocks;
        } else {
            bytes += out * in * 2.0;
        }
        if (w.bias) bytes += out * 2.0;
        if (linears[g].A) bytes += (R * in + out * R) * 2.0;
        bytes += M * out * 2.0;  // y
    }
    return bytes;
}
