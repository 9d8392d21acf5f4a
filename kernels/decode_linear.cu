// decode_linear.cu: the decode-time linear layer: NF4 (or bf16) weights times a few bf16 rows of x on the tensor cores, each weight byte read once and dequantized in registers, split-K summed in a fixed order, LoRA fused into the epilogue.
//
// Why tensor cores at decode: a decode step is memory-bound on the weights, but an NF4 weight is half a byte, so
// the arithmetic per byte is 4*M flops: at M = 64 that is 256 flops/byte, above the H200's ridge (800 TFLOP/s over
// 4.27 TB/s = 187), and CUDA cores (67 TFLOP/s fp32) would be 12x slower than the weight read. mma.sync m16n8k16
// takes 16 weight rows x 8 sequences per instruction, so M = 1..8 costs one n-tile and M = 64 eight, the
// dequantization (the same for every M) being the fixed cost per weight.
//
// The layout trick: a dot product does not care in which order its k terms are summed, so each thread dequantizes
// the 32 contiguous weights of one 16-byte piece (NF4) and feeds them to 8 mma k-steps, and reads x in the same
// permuted order. Logical k (2c, 2c+1, 2c+8, 2c+9) of mma k-step s, for thread c = lane % 4, is physical k
// c*32 + 4s + (0, 1, 2, 3) for NF4 and (s/2)*32 + c*8 + (s%2)*4 + (0..3) for bf16. Either way one 16-byte x read
// per n-tile feeds two k-steps, and each dequantized weight pair feeds every n-tile.
//
// Two kernels. NF4 weights whose shape allows it (in % 64 == 0, 16-row tiles: every Qwen2.5 linear) go to the
// streaming kernel (v4, below), which reads them in the decode-tile order the GPU model stores them in (quant/nf4.h,
// nf4_tile). Everything else (bf16 weights, the adapters' x A^T without cuBLASLt, other NF4 shapes) goes to v3:
// a block of DL_WARPS warps owns a tile of output rows (32 per warp: 2 m16 tiles, so every x fragment feeds two
// mma) and a range of k chunks, each 128 bytes of every row. Weights and x of the next chunks stream into shared
// memory through a cp.async pipeline (DlShape) while the tensor cores work on the current one. When there are too
// few row tiles to fill the GPU, the k chunks are split over gridDim.y blocks: each writes its fp32 partial tile to
// the workspace, and the last block of a row tile to finish (a counter per tile) adds the partials in split order
// (so the bits never depend on timing), then applies bias, the bf16 rounding, the LoRA term and the second
// rounding. Both are programmatic dependent launches: their blocks start while the kernel before them finishes and
// load their first weights then.
//
// What bounds the NF4 path (H200, profiled with ncu; README "Where generation's time goes"): not the arithmetic
// alone. With no dequantization at all v3 ran at a third of the roofline. Reading the codes 32 bytes at a time from
// 16 rows at once left the HBM at 15% (every design tried: v3, and v4 with and without barriers); the same bytes
// in decode-tile order, one contiguous stream per warp, took 1.5x less time. Then instructions: at M 6 each code
// byte costs a warp 7 instructions of dequantization to keep bitsandbytes' rounding (two lookups, two products,
// one pack), and the whole kernel 12.6 (session 5, after its walk was rewritten from 17), issued about half the
// time by 16 warps an SM (128 registers a thread), the rest waiting on the next step's loads. The folded
// dequantization (DL_CFG_V4_FOLD, lab only: not bitsandbytes' rounding) is a further 1.15x. At M 48-64 the warps
// wait on x's loads from L1 and L2 (not on L2's bandwidth): see v4's narrow and wide shapes.
//
// LoRA: ax = x A^T [M, G*R] comes, for steps of at most 8 rows, from decode_lora_ax_kernel (one programmatic
// dependent launch a group, where a cuBLASLt GEMM costs 6-8 us of latency); for more rows from cuBLASLt when the
// caller passes a context (as in training; only G*R columns over a long k, which this kernel's split-K serves
// poorly), else from this kernel with the bf16 A matrices as weights; rounded to bf16 each way, as the training path
// rounds it. The main kernel's epilogue then computes
// ax B^T for its rows with R/16 more mma per tile (B rows as the A operand), so the adapter costs reading A and B
// once.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <utility>

#include "kernels/cuda_common.cuh"
#include "kernels/mma.cuh"
#include "kernels/decode_linear.cuh"
#include "kernels/wgmma.cuh"  // the wgmma path (DL_CFG_WGMMA; sm_90a only, so unused elsewhere)

typedef __nv_bfloat16 bf16;

// The tuning knobs, macros so that the lab (dev/cuda/decode_linear.cu) can compile this file again with other
// values and time the variants side by side:
//   DL_CFG_WARPS: warps per block (each owns 32 output rows);
//   DL_CFG_STAGES_SMALL / _LARGE: cp.async pipeline depth for M <= 16 / more rows (x chunks grow with M, and
//     fewer stages keep two blocks per SM);
//   DL_CFG_BLOCKS_PER_SM: how many blocks per SM the split-K plan aims for over a launch;
//   DL_CFG_MAX_SPLITS: the most k splits of a row tile (their partials are added by one block);
//   DL_CFG_KSPLIT / _NF4: warps of a block that share rows and split each chunk's k at M <= 8 (half as many at
//     M <= 16), for bf16 / NF4 weights. Measured on the H200 (lab): 4 helps the bf16 lm_head (longer row runs), 1
//     is faster for NF4, whose time goes to dequantization rather than to the reads.
#ifndef DL_CFG_WARPS
#define DL_CFG_WARPS 4
#endif
#ifndef DL_CFG_STAGES_SMALL
#define DL_CFG_STAGES_SMALL 3
#endif
#ifndef DL_CFG_STAGES_LARGE
#define DL_CFG_STAGES_LARGE 2
#endif
#ifndef DL_CFG_BLOCKS_PER_SM
#define DL_CFG_BLOCKS_PER_SM 4
#endif
#ifndef DL_CFG_MAX_SPLITS
#define DL_CFG_MAX_SPLITS 16
#endif
#ifndef DL_CFG_KSPLIT
#define DL_CFG_KSPLIT 4
#endif
#ifndef DL_CFG_KSPLIT_NF4
#define DL_CFG_KSPLIT_NF4 1
#endif

constexpr int DL_WARPS = DL_CFG_WARPS;
constexpr int DL_THREADS = DL_WARPS * 32;
constexpr int DL_MT = 2;                            // m16 tiles per warp
constexpr int DL_LOADS = 2;                         // 16-byte weight loads per thread, row and chunk

// A chunk is the k range one block consumes per pipeline step. Each thread loads DL_LOADS 16-byte pieces of each of
// its 4 weight rows (2 tiles x rows gq, gq+8), so a row's chunk is 4 threads x 2 x 16 = 128 contiguous bytes:
// 256 NF4 weights (16 mma k-steps) or 64 bf16 weights (4 k-steps).
template <bool NF4> struct DlChunk {
    static constexpr int K = NF4 ? 256 : 64;  // k per chunk
    static constexpr int UNITS = K / 8;       // 16-byte units of one x row in the chunk
};

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
    int chunks_per_split = 1, splits = 1;          // v3's split-K plan
    int64_t stream_rows = 1;                       // v4: (tile, 64-block) pairs per warp
    const bf16* xw = nullptr;                      // the wgmma path: x in wgmma's order (dlw_x_kernel)
    // the wgmma path computing ax itself (DL_CFG_WGMMA_AX): its first ax_slabs x splits blocks multiply x by the
    // adapters' A rows (ax column n is row n % R of A[n / R]) and write ax_out, which the slabs' ends then read
    const bf16* A[DECODE_LINEAR_MAX_G] = {};
    bf16* ax_out = nullptr;
    int ax_cols = 0, ax_slabs = 0;
};

// ---------------------------------------------------------------------------------------------------------------
// CUDA kernels

// A double-quantized block scale exactly as nf4_dequant.cu (and bitsandbytes) rounds it: nested_code[q] *
// nested_absmax as fp32, then + offset in a separate rounding; __fmul_rn/__fadd_rn are never contracted into an FMA.
__device__ __forceinline__ float dl_double_quant_scale(const NF4View& t, float nested_code_q, float nested_absmax) {
    return __fadd_rn(__fmul_rn(nested_code_q, nested_absmax), t.nested_offset);
}

// The scale of a row-major block, loaded and rounded.
__device__ __forceinline__ float dl_block_scale(const NF4View& t, const float* nested_code, int64_t block) {
    if (!t.double_quant) return __ldg(t.absmax_f32 + block);
    return dl_double_quant_scale(t, nested_code[__ldg(t.absmax_q + block)],
                                 __ldg(t.nested_absmax + block / NF4_NESTED_BLOCK));
}

// Sets every element of a [TM][NT][4] register tile (accumulators, sums) to zero.
template <int TM, int NT>
__device__ __forceinline__ void dl_zero_tiles(float (&v)[TM][NT][4]) {
#pragma unroll
    for (int mt = 0; mt < TM; mt++)
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) v[mt][t][e] = 0.0f;
}

// The NF4 code tables of a launch's linears, in shared memory: linear g's 16 fp32 codes at byte 64 g. Aligned to
// 256 bytes, so that a code's shared address is the table's address with its low byte replaced (dl_nf4_word).
__shared__ __align__(256) float dl_code_table[DECODE_LINEAR_MAX_G][16];

// Two fp32 codes times their block scale as the bf16 pair the mma reads (lo in the low half): bf16(code * scale),
// nf4_view_dequantize's rounding, the one place the decode kernels apply it.
__device__ __forceinline__ uint32_t dl_dequant_pair(float lo, float hi, float scale) {
    __nv_bfloat162 v = __floats2bfloat162_rn(__fmul_rn(lo, scale), __fmul_rn(hi, scale));
    return *reinterpret_cast<uint32_t*>(&v);
}

// A float from a 32-bit shared-memory address. volatile: the compiler must not move it above the barrier after
// which the tables are written (it cannot see that the address points into them).
__device__ __forceinline__ float dl_lds(uint32_t address) {
    float v;
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(address));
    return v;
}

// The shared address of dl_code_table, low byte zero; | 64 g per byte selects linear g's table (dl_nf4_word).
__device__ __forceinline__ uint32_t dl_code_table_address() {
    return (uint32_t)__cvta_generic_to_shared(dl_code_table);
}

// One 32-bit word of codes (bytes 0..3, element 2j of a byte in its high nibble) as the four bf16 pairs the mma
// reads, the lower k in the low half; each value bf16(code[q] * scale), nf4_view_dequantize's rounding.
// Dequantization is what bounds this kernel at small M (the weights are streamed once, the products are few), so
// it is written for instruction count: each byte of `first` is 64 g + 4 * (its high nibble), the offset of that
// code in dl_code_table, and `second` the same for the low nibbles; one byte permute then puts an offset under the
// table's address (table: dl_code_table_address()), so that a lookup is a permute and a shared load, and a pair
// two lookups, two products and one pack: 3.5 instructions a weight.
__device__ __forceinline__ void dl_nf4_word(uint32_t out[4], uint32_t word, uint32_t lin_bytes, uint32_t table,
                                            float scale) {
    const uint32_t first = ((word >> 2) & 0x3C3C3C3Cu) | lin_bytes;
    const uint32_t second = ((word << 2) & 0x3C3C3C3Cu) | lin_bytes;
#pragma unroll
    for (int b = 0; b < 4; b++) {
        const float lo = dl_lds(__byte_perm(first, table, 0x7650 | b));
        const float hi = dl_lds(__byte_perm(second, table, 0x7650 | b));
        out[b] = dl_dequant_pair(lo, hi, scale);
    }
}

// Elements i and i+1 of a bf16 row as a pair, zero past `limit` (the rank-R operands need no alignment).
// L2: loaded through L2 only (__ldcg), for rows written earlier in the same launch.
template <bool L2 = false>
__device__ __forceinline__ uint32_t dl_pair(const bf16* row, int i, int limit) {
    const unsigned short* bits = reinterpret_cast<const unsigned short*>(row);
    auto load = [&](int j) -> uint32_t { return L2 ? __ldcg(bits + j) : bits[j]; };
    uint32_t lo = i < limit ? load(i) : 0u, hi = i + 1 < limit ? load(i + 1) : 0u;
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

// cp.async of one 16-byte unit, or 16 zero bytes when !valid (rows past M or total_rows, k past K: zeros keep
// 0 * garbage, which could be NaN, out of the sums).
__device__ __forceinline__ void dl_cp_async16(void* smem, const void* global, bool valid) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void dl_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N committed groups are still in flight: the pipeline keeps the N chunks after the one
// being computed in flight.
template <int N>
__device__ __forceinline__ void dl_cp_async_wait_all_but() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Split-K's arrival: each block of a tile (or slab) calls this with all its threads once its fp32 partial is written;
// it says whether this block is the last of `splits` to arrive, which then sees every partial (the fences order the
// partials' stores before the count and the count before the last block's loads), and which sets the counter back
// to zero for the next launch (no block of this launch reads it again).
__device__ __forceinline__ bool dl_last_block_of(int* counter, int splits) {
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1) == splits - 1;
    __syncthreads();
    if (!last) return false;
    if (threadIdx.x == 0) *counter = 0;
    __threadfence();
    return true;
}

// A counter another block of this launch raises after its writes (__threadfence, then atomicAdd): once it reads the
// raised value, those writes are visible to this thread (and, after a __syncthreads, to its block).
__device__ __forceinline__ int ld_acquire_gpu(const int* counter) {
    int value;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(value) : "l"(counter) : "memory");
    return value;
}

// Where 16-byte unit u of x row n sits in a shared x chunk. A warp's 16-byte reads of one k-step pair take units
// that differ in c = lane % 4 (rows gq, gq+1 in one phase of 8 lanes); with a row stride that is a multiple of 128
// bytes they would share banks, and the XOR (inside each group of 8 units) spreads the 8 readers of a phase over
// all 32 banks.
template <bool NF4>
__device__ __forceinline__ int dl_x_slot(int n, int u) {
    return NF4 ? u ^ ((((u >> 3) & 1) << 1) | (n & 1)) : u ^ ((n & 1) << 2);
}
// The same for the weight tile: thread c of a warp reads unit 8 kw + 4 j + c of rows gq and gq+1.
__device__ __forceinline__ int dl_w_slot(int row, int u) { return u ^ ((row & 1) << 2); }

// How a block of the tensor-core kernel is shaped for NT n-tiles. Its DL_WARPS warps form RG row groups of 32
// output rows times KW k groups: at small M each row's chunk is then KW * 128 contiguous bytes read by KW warps
// (long runs keep HBM efficient), and the KW partial sums are added in shared memory at the end; at large M
// (NT > 2) the x chunk grows with M, so KW = 1.
template <bool NF4, int NT>
struct DlShape {
    static constexpr int KSPLIT = NF4 ? DL_CFG_KSPLIT_NF4 : DL_CFG_KSPLIT;
    static constexpr int KW = NT == 1 ? KSPLIT : NT == 2 ? (KSPLIT > 1 ? KSPLIT / 2 : 1) : 1;
    static constexpr int RG = DL_WARPS / KW;
    static constexpr int ROWS = RG * 32;                           // output rows of a block
    static constexpr int CK = DlChunk<NF4>::K;                     // k of one warp's part of a chunk
    static constexpr int KCH = KW * CK;                            // k of a block's chunk
    static constexpr int W_ROW_UNITS = KW * 8;                     // 16-byte units of a weight row's chunk
    static constexpr int X_ROW_UNITS = KW * DlChunk<NF4>::UNITS;   // ... of an x row's chunk
    static constexpr int W_UNITS = ROWS * W_ROW_UNITS, X_UNITS = NT * 8 * X_ROW_UNITS;
    static constexpr int S = NT <= 2 ? DL_CFG_STAGES_SMALL : DL_CFG_STAGES_LARGE;
    static constexpr int W_PER_THREAD = W_UNITS / DL_THREADS, X_PER_THREAD = (X_UNITS + DL_THREADS - 1) / DL_THREADS;
    static_assert(DL_WARPS % KW == 0, "k groups must divide the warps");
    static_assert(W_UNITS % DL_THREADS == 0 && DL_THREADS % W_ROW_UNITS == 0, "each thread stages whole columns");
    static_assert(DL_THREADS % X_ROW_UNITS == 0, "each thread stages whole columns");
};

// A thread's weight pieces in a chunk: DL_PIECES = its 4 rows (m-tile mt, half h) x DL_LOADS 16-byte loads j, each
// 32 NF4 weights of one 64-block; piece (mt, h, j) is number (mt * 2 + h) * DL_LOADS + j.
constexpr int DL_PIECES = DL_MT * 2 * DL_LOADS;

// The raw block scales of one NF4 chunk's pieces: the fp32 absmax, or with double quantization the 8-bit code and
// the nested absmax. Loaded a chunk ahead and converted (dl_piece_scale) when the chunk is used.
struct DlScales {
    float absmax[DL_PIECES];
    uint32_t code[DL_PIECES];
};

__device__ __forceinline__ void dl_load_scales(DlScales& s, const DecodeParams& p, const int* lin, const int* row0,
                                               const bool* active, int gq, int c, int k_base) {
#pragma unroll
    for (int piece = 0; piece < DL_PIECES; piece++) {
        const int mt = piece / (2 * DL_LOADS), h = piece / DL_LOADS % 2, j = piece % DL_LOADS;
        const int k = k_base + j * 128 + c * 32;
        s.absmax[piece] = 0.0f;
        s.code[piece] = 0;
        if (active[mt] && k < p.K) {
            const NF4View& t = p.nf4[lin[mt]];
            const int64_t block = ((int64_t)(row0[mt] + gq + 8 * h) * p.K + k) / NF4_BLOCK;
            if (t.double_quant) {
                s.code[piece] = __ldg(t.absmax_q + block);
                s.absmax[piece] = __ldg(t.nested_absmax + block / NF4_NESTED_BLOCK);
            } else {
                s.absmax[piece] = __ldg(t.absmax_f32 + block);
            }
        }
    }
}

// A piece's block scale, rounded as nf4_dequant.cu rounds it.
__device__ __forceinline__ float dl_piece_scale(const NF4View& t, const float* nested_code, const DlScales& s,
                                                int piece) {
    if (!t.double_quant) return s.absmax[piece];
    return dl_double_quant_scale(t, nested_code[s.code[piece]], s.absmax[piece]);
}

// The end of one m-tile (16 output rows of linear g from row0, this lane's rows row0 + gq and + 8) whose fp32 sums
// over k are in acc: the adapter term ax B^T on the tensor cores (R/16 more mma, the B rows as the A operand), then
// bias and the two roundings (dl_output), written to y. Shared by the tensor-core kernels.
// AX_L2: ax was written by this launch (the wgmma path's ax blocks), so it is read from L2, past any stale copy in
// L1 or the read-only cache.
template <int NT, bool AX_L2 = false>
__device__ __forceinline__ void dl_tile_epilogue(const DecodeParams& p, const float (&acc)[NT][4], int g, int row0,
                                                 int gq, int c) {
    const int M = p.M;
    const bool lora = p.ax != nullptr && p.B[g] != nullptr;
    float lo[NT][4];
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int e = 0; e < 4; e++) lo[t][e] = 0.0f;
    if (lora) {
        const bf16* b_lo = p.B[g] + (int64_t)(row0 + gq) * p.R;
        const bf16* b_hi = b_lo + 8 * (int64_t)p.R;
        for (int r0 = 0; r0 < p.R; r0 += 16) {
            const uint32_t a[4] = {dl_pair(b_lo, r0 + 2 * c, p.R), dl_pair(b_hi, r0 + 2 * c, p.R),
                                   dl_pair(b_lo, r0 + 2 * c + 8, p.R), dl_pair(b_hi, r0 + 2 * c + 8, p.R)};
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const int m = t * 8 + gq;
                uint32_t b[2] = {0, 0};
                if (m < M) {
                    const bf16* ax_row = p.ax + (int64_t)m * p.ld_ax + p.ax_col[g];
                    b[0] = dl_pair<AX_L2>(ax_row, r0 + 2 * c, p.R);
                    b[1] = dl_pair<AX_L2>(ax_row, r0 + 2 * c + 8, p.R);
                }
                mma_bf16_m16n8k16(lo[t], a, b);
            }
        }
    }
    bf16* y = p.y[g];
    const int ldy = p.ldy[g];
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int j = row0 + gq + (e >= 2 ? 8 : 0), m = t * 8 + 2 * c + (e & 1);
            if (m < M) y[(int64_t)m * ldy + j] = dl_output(acc[t][e], p.bias[g], j, lora, lo[t][e], p.scale);
        }
}

// The tensor-core kernel. NT n-tiles of 8 rows of x (M <= 8 NT). Grid: (row tiles of DlShape::ROWS, k splits).
// Each block runs its range of chunks through an S-stage cp.async pipeline (weights and x of the next S-1 chunks in
// flight to shared memory while the tensor cores work on the current one). It is launched as a programmatic
// dependent launch: the code tables, the first chunks' weights and the first scales are requested before
// grid_dependency_wait(), overlapping the previous kernel; x, ax and the workspace are touched only after it.
template <bool NF4, int NT>
__global__ void __launch_bounds__(DL_THREADS) decode_linear_mma_kernel(const __grid_constant__ DecodeParams p) {
    typedef DlShape<NF4, NT> Sh;
    constexpr int S = Sh::S, UNITS = DlChunk<NF4>::UNITS;
    extern __shared__ uint4 dl_smem[];  // [S][W_UNITS] weight chunks, then [S][X_UNITS] x chunks
    __shared__ float nested_code[DECODE_LINEAR_MAX_G][256];
    grid_launch_dependents();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, c = lane % 4;
    const int rg = warp / Sh::KW, kw = warp % Sh::KW, rthread = rg * 32 + lane;
    const int tile = blockIdx.x, split = blockIdx.y, M = p.M;
    const int chunks = (p.K + Sh::KCH - 1) / Sh::KCH;
    const int chunk_begin = split * p.chunks_per_split, chunk_end = min(chunks, chunk_begin + p.chunks_per_split);
    const int n_chunks = max(0, chunk_end - chunk_begin);
    auto w_stage = [&](int i) { return dl_smem + (i % S) * Sh::W_UNITS; };
    auto x_stage = [&](int i) { return dl_smem + S * Sh::W_UNITS + (i % S) * Sh::X_UNITS; };

    int lin[DL_MT], row0[DL_MT];
    bool active[DL_MT];
#pragma unroll
    for (int mt = 0; mt < DL_MT; mt++) {
        int v = tile * Sh::ROWS + rg * 32 + mt * 16;  // every out_g is a multiple of 16: an m-tile is one linear's
        active[mt] = v < p.total_rows;
        lin[mt] = dl_linear_of(p, v);
        row0[mt] = v - p.row_start[lin[mt]];
    }

    // What this thread stages each chunk: the same unit column of W_PER_THREAD weight rows and X_PER_THREAD x rows
    // (the block's threads tile each row), so the row addresses are worked out once here and a chunk only adds
    // its k offset.
    const int w_unit = threadIdx.x % Sh::W_ROW_UNITS, w_row0 = threadIdx.x / Sh::W_ROW_UNITS;
    constexpr int W_ROW_STEP = DL_THREADS / Sh::W_ROW_UNITS;
    const char* w_src[Sh::W_PER_THREAD];
#pragma unroll
    for (int it = 0; it < Sh::W_PER_THREAD; it++) {
        const int v = tile * Sh::ROWS + w_row0 + it * W_ROW_STEP;
        w_src[it] = nullptr;
        if (v < p.total_rows) {
            const int g = dl_linear_of(p, v);
            const int64_t e = (int64_t)(v - p.row_start[g]) * p.K + w_unit * (NF4 ? 32 : 8);
            w_src[it] = NF4 ? (const char*)(p.nf4[g].packed + e / 2) : (const char*)(p.w[g] + e);
        }
    }
    auto stage_weights = [&](uint4* ws, int ch) {  // chunk ch: 128 bytes per row and k group from each row start
        const bool k_ok = ch * Sh::KCH + w_unit * (NF4 ? 32 : 8) < p.K;
        const size_t offset = (size_t)ch * Sh::W_ROW_UNITS * 16;
#pragma unroll
        for (int it = 0; it < Sh::W_PER_THREAD; it++) {
            const int r = w_row0 + it * W_ROW_STEP;
            const bool valid = k_ok && w_src[it] != nullptr;
            dl_cp_async16(ws + r * Sh::W_ROW_UNITS + dl_w_slot(r, w_unit), valid ? w_src[it] + offset : (const char*)p.x,
                          valid);
        }
    };
    const int x_unit = threadIdx.x % Sh::X_ROW_UNITS, x_row0 = threadIdx.x / Sh::X_ROW_UNITS;
    constexpr int X_ROW_STEP = DL_THREADS / Sh::X_ROW_UNITS;
    auto stage_x = [&](uint4* xs, int ch) {
        const int k = ch * Sh::KCH + x_unit * 8;
#pragma unroll
        for (int it = 0; it < Sh::X_PER_THREAD; it++) {
            const int n = x_row0 + it * X_ROW_STEP;
            if (n >= NT * 8) break;  // the last round when the rows do not divide evenly
            const bool valid = n < M && k < p.K;
            dl_cp_async16(xs + n * Sh::X_ROW_UNITS + dl_x_slot<NF4>(n, x_unit), valid ? p.x + (int64_t)n * p.K + k : p.x,
                          valid);
        }
    };

    // before the dependency: what no earlier kernel writes
    if (NF4) {  // per linear: a checkpoint's stored tables are authoritative
        for (int g = 0; g < p.G; g++) {
            if (threadIdx.x < 16) dl_code_table[g][threadIdx.x] = p.nf4[g].code[threadIdx.x];
            if (p.nf4[g].double_quant)
                for (int i = threadIdx.x; i < 256; i += DL_THREADS) nested_code[g][i] = p.nf4[g].nested_code[i];
        }
    }
    for (int i = 0; i < S - 1 && i < n_chunks; i++) stage_weights(w_stage(i), chunk_begin + i);
    DlScales scales_now, scales_next;
    if (NF4 && n_chunks > 0)
        dl_load_scales(scales_now, p, lin, row0, active, gq, c, chunk_begin * Sh::KCH + kw * Sh::CK);
    grid_dependency_wait();
    // group 0: the weights of chunks 0 .. S-2 and x of chunk 0; group i < S-1: x of chunk i
    for (int i = 0; i < S - 1; i++) {
        if (i < n_chunks) stage_x(x_stage(i), chunk_begin + i);
        dl_cp_async_commit();
    }

    float acc[DL_MT][NT][4];
    dl_zero_tiles(acc);

    for (int i = 0; i < n_chunks; i++) {
        // chunk i+S-1 into the stage chunk i-1 used (every warp left it at the last barrier); an empty group at
        // the end keeps the count of groups in flight the same
        if (i + S - 1 < n_chunks) {
            stage_weights(w_stage(i + S - 1), chunk_begin + i + S - 1);
            stage_x(x_stage(i + S - 1), chunk_begin + i + S - 1);
        }
        dl_cp_async_commit();
        if (NF4 && i + 1 < n_chunks)
            dl_load_scales(scales_next, p, lin, row0, active, gq, c, (chunk_begin + i + 1) * Sh::KCH + kw * Sh::CK);
        dl_cp_async_wait_all_but<S - 1>();
        __syncthreads();  // chunk i (and, the first time, the code tables) visible to every warp
        const uint4* ws = w_stage(i);
        const uint4* xs = x_stage(i);

        // the block scales of this chunk's pieces
        float scale[DL_PIECES];
        if (NF4)
#pragma unroll
            for (int piece = 0; piece < DL_PIECES; piece++) {
                const int g = lin[piece / (2 * DL_LOADS)];
                scale[piece] = dl_piece_scale(p.nf4[g], nested_code[g], scales_now, piece);
            }

        // k-step pairs of this warp's k group: one 16-byte x read per n-tile feeds two k-steps of both m-tiles
        constexpr int PAIRS = DlChunk<NF4>::K / 32;
        uint4 wpiece[DL_MT][2];
#pragma unroll
        for (int q = 0; q < PAIRS; q++) {
            const int j = NF4 ? q / 4 : q;  // which 16-byte weight piece of the thread's rows
            if (!NF4 || q % 4 == 0)
#pragma unroll
                for (int mt = 0; mt < DL_MT; mt++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int r = rg * 32 + mt * 16 + gq + 8 * h;
                        wpiece[mt][h] = ws[r * Sh::W_ROW_UNITS + dl_w_slot(r, kw * 8 + j * 4 + c)];
                    }
            // which x unit (physical k / 8 within the chunk)
            const int u = kw * UNITS + (NF4 ? j * 16 + c * 4 + q % 4 : q * 4 + c);
            uint4 xf[NT];
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const int n = t * 8 + gq;
                xf[t] = xs[n * Sh::X_ROW_UNITS + dl_x_slot<NF4>(n, u)];
            }
            // the weights of the two k-steps: NF4 word q % 4 of each row's piece j (bytes 2 sub, 2 sub + 1 feed
            // k-step sub), or bf16 words 2 sub, 2 sub + 1
            uint32_t w_pairs[DL_MT][2][4];
#pragma unroll
            for (int mt = 0; mt < DL_MT; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const uint4 w = wpiece[mt][h];
                    if (NF4) {
                        const uint32_t words[4] = {w.x, w.y, w.z, w.w};
                        dl_nf4_word(w_pairs[mt][h], words[q % 4], (uint32_t)lin[mt] * 0x40404040u,
                                    dl_code_table_address(), scale[(mt * 2 + h) * DL_LOADS + j]);
                    } else {
                        w_pairs[mt][h][0] = w.x;
                        w_pairs[mt][h][1] = w.y;
                        w_pairs[mt][h][2] = w.z;
                        w_pairs[mt][h][3] = w.w;
                    }
                }
#pragma unroll
            for (int sub = 0; sub < 2; sub++)
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const uint32_t b[2] = {sub ? xf[t].z : xf[t].x, sub ? xf[t].w : xf[t].y};
#pragma unroll
                    for (int mt = 0; mt < DL_MT; mt++) {
                        const uint32_t a[4] = {w_pairs[mt][0][2 * sub], w_pairs[mt][1][2 * sub],
                                               w_pairs[mt][0][2 * sub + 1], w_pairs[mt][1][2 * sub + 1]};
                        mma_bf16_m16n8k16(acc[mt][t], a, b);
                    }
                }
        }
        __syncthreads();  // every warp is done with stage i % S before iteration i+1 refills it
        if (NF4) scales_now = scales_next;
    }

    // the k groups' sums into the k group 0 warps, in k group order (the pipeline's shared memory is free now:
    // every group committed since the last chunk is empty)
    if (Sh::KW > 1) {
        constexpr int F = DL_MT * NT * 4;
        float* red = reinterpret_cast<float*>(dl_smem);  // [KW][RG][F][32]
        __syncthreads();
#pragma unroll
        for (int mt = 0; mt < DL_MT; mt++)
#pragma unroll
            for (int t = 0; t < NT; t++)
#pragma unroll
                for (int e = 0; e < 4; e++) red[((kw * Sh::RG + rg) * F + (mt * NT + t) * 4 + e) * 32 + lane] = acc[mt][t][e];
        __syncthreads();
        if (kw == 0)
#pragma unroll
            for (int mt = 0; mt < DL_MT; mt++)
#pragma unroll
                for (int t = 0; t < NT; t++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float sum = acc[mt][t][e];
                        for (int other = 1; other < Sh::KW; other++)
                            sum += red[((other * Sh::RG + rg) * F + (mt * NT + t) * 4 + e) * 32 + lane];
                        acc[mt][t][e] = sum;
                    }
    }

    // split-K: publish this block's partial tile; the last block of the tile adds them all, in split order
    constexpr int ROW_THREADS = Sh::RG * 32;  // the threads that hold the block's sums (k group 0)
    if (p.splits > 1) {
        const size_t tile_base = ((size_t)split * gridDim.x + tile) * (DL_MT * NT);
        if (kw == 0)
#pragma unroll
            for (int mt = 0; mt < DL_MT; mt++)
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    float4* slot = reinterpret_cast<float4*>(p.partials) + (tile_base + mt * NT + t) * ROW_THREADS + rthread;
                    __stcg(slot, make_float4(acc[mt][t][0], acc[mt][t][1], acc[mt][t][2], acc[mt][t][3]));
                }
        if (!dl_last_block_of(&p.counters[tile], p.splits) || kw != 0) return;
#pragma unroll
        for (int mt = 0; mt < DL_MT; mt++)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
                for (int sp = 0; sp < p.splits; sp++) {  // unrolled: several partials in flight from L2
                    float4 v = make_float4(acc[mt][t][0], acc[mt][t][1], acc[mt][t][2], acc[mt][t][3]);
                    if (sp != split) {
                        const size_t base = ((size_t)sp * gridDim.x + tile) * (DL_MT * NT);
                        v = __ldcg(reinterpret_cast<const float4*>(p.partials) + (base + mt * NT + t) * ROW_THREADS +
                                   rthread);
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
    }
    if (kw != 0) return;

    // epilogue: the adapter term and the two roundings, per m-tile
#pragma unroll
    for (int mt = 0; mt < DL_MT; mt++)
        if (active[mt]) dl_tile_epilogue<NT>(p, acc[mt], lin[mt], row0[mt], gq, c);
}

// ---------------------------------------------------------------------------------------------------------------
// The streaming NF4 kernel (v4): the path for NF4 weights at every M up to 64.
//
// Why another kernel: v3 moves the weights through shared memory in blocks whose warps meet at barriers, and a
// profile of it (and of a first version of this one) showed warps stalled most of the time, the HBM at 15% and
// the SMs issuing a third of what they can: each block waited on its slowest warp, and the warp that did a tile's
// epilogue held up the rest. Here every warp runs on its own ("stream-K" over warps): the launch's work, every
// (row tile of 16, 64-block of k) pair in row-tile-major order, is cut into equal contiguous ranges, one per warp.
// A warp streams its codes from HBM into registers, a step of DL4_CH blocks ahead of the one it computes, and
// meets no barrier. Where a range ends inside a tile, the warp stores its partial sums in a slot of the workspace;
// the last warp of the tile to finish (a counter per tile) adds the tile's partials in a fixed order (so the bits
// never depend on timing) and writes the output. A tile one warp covers whole needs no partial at all.
//
// Layout per m-tile (16 rows) and 64-block of k (one absmax): lane (gq, c) loads 8 bytes of rows gq and gq+8, the
// physical k c*16 .. c*16+15 of the block; mma k-step s takes its 4 weights 4s .. 4s+3 as the logical k (2c, 2c+1,
// 2c+8, 2c+9), so byte 2s of the piece is register a[0] (a[1] for row gq+8) and byte 2s+1 is a[2] (a[3]), and x is
// read in the same order: 32 bytes of x per lane and n-tile give the b registers of the four k-steps. Every k-step
// of a quad then lies in one block, which the folded dequantization needs.
//
// Written for instruction count, which is what bounds it at small M: Nsight Compute (session 5, gate at M 6) found
// 17 instructions per code byte and warp, where the dequantization needs 7. Most of the rest was the walk itself:
// divisions to find the next (tile, block), the linear of a tile looked up again at every step, 64-bit address
// arithmetic per load. Now the position moves by additions, and a tile's addresses (Dl4Tile) are formed once,
// when the walk enters it.
//
// Two ways to dequantize (DL_CFG_V4_FOLD):
//   0, exact: each weight as nf4_dequant.cu rounds it, bf16(code[q] * absmax) (dl_nf4_word), so the sampler's
//     policy is bit-for-bit the trained one;
//   1, fold: the mma takes bf16(code[q]) straight from a table of code-byte pairs (one byte permute and one shared
//     load per pair), a block's four k-steps go to their own accumulator, and the block's absmax multiplies that
//     sum once. The weights then differ from exact by at most one bf16 rounding (2^-9 relative).
// Above 16 rows of x (NT > 2) there are two shapes, picked per launch by its number of (tile, block) pairs:
//   narrow (few pairs: q, k, v, o): one block an SM at up to 255 registers, and the x of all n-tiles of a block
//     loaded at once: such a launch is latency-bound, its warps few, and each round trip to L2 counts;
//   wide (gate/up, down): two blocks an SM at 128 registers, and x loaded one n-tile ahead (16 registers instead
//     of 64): with many warps the round trips overlap, and twice the warps keep more code bytes in flight.
//   Lab, M 64 (session 4): gate 0.121 ms narrow, 0.103 wide; q 0.031 narrow, 0.042 wide.
// What bounds the wide shape is the latency of x's loads, issued just before the mma that needs them: Nsight Compute
// (session 5, gate at M 64) has 54% of the warps' stalls waiting on L1TEX (x, and the registers it spills), the
// SMs issuing 0.30 of the time, and L2 at 26% of its bandwidth (L1 serves 71% of x), so not L2's bandwidth, as
// session 4 estimated. So each n-tile's x is loaded one n-tile ahead of its mma (the first under the
// dequantization): lab, session 5, 8% faster on gate and down at M 48, 3% at M 64, 3% on a layer at M 48.
// And, for exact, DL_CFG_V4_PAIRS (a lab variant): the two fp32 codes of a byte come from a table of code-byte pairs
// in one 8-byte shared load whose address is one byte permute (and an addition), instead of two permutes and two
// loads; the products and the rounding are exact's, so are the bits. The table (32 copies, 64 KB) assumes the group
// shares the default code. Lab, session 5: 8% faster on gate at M 6, 3.5% on a layer, but 5% slower on a layer at
// M 64 (its 64 KB come out of L1, where x lives), so not the default.
// Measured and dropped (lab, H200): 8 blocks a step, 3 blocks an SM at 80 registers, a per-warp cp.async ring
// through shared memory, the adapters' x A^T through this kernel, at M > 16 k slices sized for L1 (session 4);
// streams of 4 or 8 warps walking k together so that they share x through L1 (at most 4% at M 48-64), and an L2
// prefetch ahead of the loads, per lane (2 or 4 steps) or one bulk prefetch a step (8 or 16 pairs): slower each
// time, by 3-10% (session 5).
#ifndef DL_CFG_V4
#define DL_CFG_V4 1  // route NF4 launches to this kernel (0: v3 for everything, for the lab's comparison)
#endif
#ifndef DL_CFG_V4_WARPS
#define DL_CFG_V4_WARPS 8
#endif
#ifndef DL_CFG_V4_FOLD
#define DL_CFG_V4_FOLD 0
#endif
#ifndef DL_CFG_V4_PAIRS
#define DL_CFG_V4_PAIRS 0  // 1: exact dequantization through a table of code-byte pairs; 2: the table 64 KB-aligned
#endif                     // (lab variants, see below)
#ifndef DL_CFG_V4_BLOCKS_SM
#define DL_CFG_V4_BLOCKS_SM 2  // blocks an SM the launch bounds ask for at M <= 16 and in the wide launches
#endif
#ifndef DL_CFG_V4_DEFER
#define DL_CFG_V4_DEFER 0  // 1: a warp's first partial tile arrives at the end of its range (lab variant, see below)
#endif
#ifndef DL_CFG_V4_FULL
#define DL_CFG_V4_FULL 0  // 1: ranges cut at multiples of DL4_CH blocks, so that every step is whole (lab variant)
#endif
#ifndef DL_CFG_V4_WIDE_CH
#define DL_CFG_V4_WIDE_CH 4  // blocks a step in the wide launches (2: half the code registers; lab variant)
#endif
#ifndef DL_CFG_BF16_CUBLAS
#define DL_CFG_BF16_CUBLAS 1  // bf16 weights with a cuBLASLt context: cuBLASLt (0: the v3 kernel, for the lab)
#endif
#ifndef DL_CFG_AX_KERNEL
#define DL_CFG_AX_KERNEL 1  // x A^T of steps of at most DL_AX_MAX_M rows through decode_lora_ax_kernel (0: cuBLASLt)
#endif
#ifndef DL_CFG_V4_NARROW
#define DL_CFG_V4_NARROW 1  // launches of one n-tile (M <= 8): exact pairs and whole steps (0: as wider launches; lab)
#endif
#ifndef DL_CFG_V4_WIDE_PAIRS
#define DL_CFG_V4_WIDE_PAIRS 32768  // above 16 rows of x, launches of at least this many pairs run "wide" (below)
#endif
#ifndef DL_CFG_V4_TM
#define DL_CFG_V4_TM 2  // m-tiles a warp's step covers in the wide launches (1: one, as before session 8; lab variant tm1)
#endif
#ifndef DL_CFG_V4_TM2_BLOCKS_SM
#define DL_CFG_V4_TM2_BLOCKS_SM 1  // blocks an SM the launch bounds ask for with two m-tiles a step (lab variant tm2b2)
#endif

constexpr int DL4_WARPS = DL_CFG_V4_WARPS, DL4_THREADS = DL4_WARPS * 32, DL4_CH = 4;
constexpr bool DL4_FOLD = DL_CFG_V4_FOLD != 0, DL4_PAIRS = DL_CFG_V4_PAIRS != 0, DL4_DEFER = DL_CFG_V4_DEFER != 0;
// Whole steps (DL_CFG_V4_FULL, a lab variant until measured): when a launch's blocks per row and every warp's
// range are multiples of DL4_CH (dl4_plan rounds the ranges up; dl4_ok sends other shapes to v3), no step is cut
// short, and the per-block checks of a step's size (predicated loads, zeroed registers, selected scales: about 60
// of a step's 800 instructions at M 6, session 5's profile) drop out.
constexpr bool DL4_FULL = DL_CFG_V4_FULL != 0;
static_assert(!(DL4_FOLD && DL4_PAIRS), "one pair table at a time");
// The aligned pair table (DL_CFG_V4_PAIRS 2, a lab variant until measured): with the table at a 64 KB boundary of
// shared memory, a pair's address is the table's top bits, the code byte and the lane's slot, so one byte permute
// forms all of it (dl4_aligned_pair_word) and a byte costs 5 instructions (a permute, an 8-byte load, two products
// and a pack) against dl_nf4_word's 7. The alignment costs up to 64 KB of padding: 128 KB of shared memory a block,
// so one block an SM, of 16 warps (the variant sets DL_CFG_V4_WARPS 16 and DL_CFG_V4_BLOCKS_SM 1).
constexpr bool DL4_PAIRS_ALIGNED = DL_CFG_V4_PAIRS == 2;
// Narrow launches (DL_CFG_V4_NARROW): one n-tile (M <= 8) is where the dequantization's instructions bound the kernel
// most, and there both lab variants above pay: on a 7B layer at M 6 (with decode_lora_ax_kernel, session 7) exact
// pairs took 0.1140 ms and whole steps 0.1158, against 0.1219 for neither. At M 48-64 pairs were 3-7% slower (their
// 64 KB table comes out of L1, where x lives) and whole steps mixed, so only narrow launches take them: the kernel
// has both as template arguments, and the launcher picks the narrow instantiation when the shape allows (whole
// steps need K / 64 a multiple of DL4_CH; the pair table, the default code). Same bits as exact: pairs change only
// the lookups, whole steps only which warp sums which blocks (the sums still arrive in a fixed order).
constexpr bool DL4_NARROW_PAIRS = DL_CFG_V4_NARROW != 0 && !DL4_FOLD;  // the fold table takes the same shared memory
// Two m-tiles a step (DL_CFG_V4_TM, session 8), in the wide launches: each x load then feeds the mma of 32 weight
// rows instead of 16, halving what a warp reads of x per code byte (x is 16x the code bytes at M 64, and its loads'
// latency is what bounds the wide shape, above). The price is registers: twice the accumulators (64 at M 64) and
// the dequantized weights of both tiles, so a step holds DL4_TM2_CH blocks of each tile (the same 4 pieces of codes
// as a step of one tile), and the launch bounds ask for DL_CFG_V4_TM2_BLOCKS_SM blocks an SM. It needs every linear
// of the group to have a multiple of 32 rows (every Qwen2.5 linear has) and an even number of 64-blocks in a row,
// or the launch keeps one m-tile: two m-tiles always run whole steps (ranges cut at multiples of DL4_CH blocks, so
// no step checks its size; lab, session 8, variant full: 2% on gate and down at M 48-64; bench_generate, session 10:
// 1.6% a decode step at M 48, 1.0% at M 64). The sums are cut among warps elsewhere than with one m-tile, so the
// outputs may differ from TM 1 in the last bit (fp32 order); they never depend on timing.
constexpr int DL4_TM = DL_CFG_V4_TM, DL4_TM2_CH = 2;
static_assert(DL4_TM == 1 || DL4_TM == 2, "one or two m-tiles a step");

// The bytes of a pair table: for each code byte a 256-byte row, of which lane L reads slot L (fold: 4 bytes, the bf16
// pair; exact pairs: 8 bytes, the two fp32 codes), 32 copies so that a warp's lookups never share a bank. 256-byte
// rows let one byte permute form the offset (dl4_pair_at).
constexpr int DL4_PAIR_TABLE_BYTES = 256 * 256;

// Streamed once: not kept in L1, where x lives.
__device__ __forceinline__ uint4 dl4_load_stream16(const uint8_t* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}
__device__ __forceinline__ uint2 dl4_load_stream8(const uint8_t* p) {
    uint2 v;
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}

// Where byte b of word has its pair in a pair table: byte * 256 + lane_bytes (the lane's slot offset, which fits in
// a byte; its byte 1 is the zero), formed by one permute.
__device__ __forceinline__ const char* dl4_pair_at(const char* table, uint32_t word, uint32_t lane_bytes, int b) {
    return table + __byte_perm(word, lane_bytes, 0x5504 | (b << 4));
}
// Byte b of word as the bf16 pair (code[high nibble], code[low nibble]) from the fold table.
__device__ __forceinline__ uint32_t dl4_pair(const char* table, uint32_t word, uint32_t lane4, int b) {
    return *reinterpret_cast<const uint32_t*>(dl4_pair_at(table, word, lane4, b));
}
// The word's four bytes from the aligned exact pair table (lane_at: the table's address | the lane's slot offset),
// dequantized as dl_nf4_word does: byte b of the word becomes byte 1 of the address.
__device__ __forceinline__ void dl4_aligned_pair_word(uint32_t out[4], uint32_t word, uint32_t lane_at, float scale) {
#pragma unroll
    for (int b = 0; b < 4; b++) {
        float even, odd;
        asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];"
                     : "=f"(even), "=f"(odd)
                     : "r"(__byte_perm(word, lane_at, 0x7604 | (b << 4))));
        out[b] = dl_dequant_pair(even, odd, scale);
    }
}
// The word's four bytes from the exact pair table, dequantized as dl_nf4_word does (the same products and rounding:
// the same bits), with one permute and one 8-byte load per byte instead of two of each.
__device__ __forceinline__ void dl4_pair_word(uint32_t out[4], const char* table, uint32_t word, uint32_t lane8,
                                              float scale) {
#pragma unroll
    for (int b = 0; b < 4; b++) {
        const float2 codes = *reinterpret_cast<const float2*>(dl4_pair_at(table, word, lane8, b));
        out[b] = dl_dequant_pair(codes.x, codes.y, scale);
    }
}

// Where a warp's walk is: its tile, the first block of k of the step, and the step's blocks (0: the range is done).
struct Dl4Pos {
    int tile, kb, n;
};

// Where this lane finds a tile's bytes at block 0 of k, formed once when the walk enters the tile: block kb's are
// then an addition away.
struct Dl4Tile {
    int tile = -1, g = 0;
    bool tiled = false, double_quant = false;
    const uint8_t* codes = nullptr;  // tiled: this lane's 16 bytes of the tile's unit 0; row-major: row gq's 8 bytes
    const uint8_t* q = nullptr;      // row gq's 8-bit scale (double quantization); tiled: the next block's 16 bytes
                                     // on, row gq + 8's 8 on; row-major: 1 and 8 nkb
    const float* scales = nullptr;   // nested_absmax (indexed by row-major block / 256), or absmax_f32 (by block)
    int block = 0;                   // the row-major block number of row gq, block 0
    int64_t next_codes = 0;          // the next m-tile's codes (TM 2): this many bytes on
    int next_q = 0;                  // ... and its 8-bit scales: this many on
};

// One step's loads: CH blocks of both rows of each of the TM m-tiles, the raw scales of the piece this lane converts
// for its quad (piece c: m-tile c / CH, block c % CH; the quad's lanes cover the TM * CH), and the step's linear.
// With two m-tiles CH is DL4_TM2_CH; with one, DL4_CH, or DL_CFG_V4_WIDE_CH in the wide
// launches: there a step's 8 n-tiles give each block 8x the mma, enough to hide a smaller step's loads, and half
// the code registers could end the spills that Nsight Compute counted at 128 registers (session 5; a lab variant
// until measured).
template <int CH, int TM>
struct Dl4Step {
    uint2 code[TM * CH][2];  // piece (m-tile mt, block j) is mt * CH + j
    uint32_t q[2];
    float a[2];
    int g;
};

// The split of a launch's (tile, block) pairs over warps: warp w owns [w * len, min(F, (w + 1) * len)).
__host__ __device__ inline int dl4_first_warp(int tile, int nkb, int64_t len) {
    return (int)((int64_t)tile * nkb / len);
}
__host__ __device__ inline int dl4_last_warp(int tile, int nkb, int64_t len) {
    return (int)(((int64_t)(tile + 1) * nkb - 1) / len);
}

// TM m-tiles a step (DL4_TM): a "tile" of the walk is then TM * 16 rows, each of its pairs TM pieces of codes.
template <int NT, bool WIDE, bool PAIRS, bool FULL, int TM>
__global__ void __launch_bounds__(DL4_THREADS, TM == 2 ? DL_CFG_V4_TM2_BLOCKS_SM : NT <= 2 || WIDE ? DL_CFG_V4_BLOCKS_SM : 1)
    decode_linear_nf4_stream_kernel(const __grid_constant__ DecodeParams p) {
    static_assert(!(DL4_FOLD && PAIRS), "one pair table at a time");
    constexpr bool ALIGNED = PAIRS && DL4_PAIRS_ALIGNED;
    extern __shared__ uint4 dl4_smem[];  // the pair table
    __shared__ float nested_code[DECODE_LINEAR_MAX_G][256];
    constexpr int CH = TM == 2 ? DL4_TM2_CH : WIDE ? DL_CFG_V4_WIDE_CH : DL4_CH, PIECES = TM * CH;
    static_assert(CH >= 1 && PIECES <= 4, "a quad's four lanes convert a step's scales");
    grid_launch_dependents();
    const int lane = threadIdx.x % 32, gq = lane / 4, c = lane % 4;
    const int warp = blockIdx.x * DL4_WARPS + threadIdx.x / 32;
    const int K = p.K, M = p.M, nkb = K / NF4_BLOCK, tiles = p.total_rows / (16 * TM);
    const int F = tiles * nkb, len = (int)p.stream_rows;  // dl4_ok: F fits an int
    const int f_begin = (int)min((int64_t)F, (int64_t)warp * len), f_end = min(F, f_begin + len);
    // the pair table, at a 64 KB boundary of shared memory when aligned (dl4_smem_bytes leaves the room)
    const uint32_t smem_at = (uint32_t)__cvta_generic_to_shared(dl4_smem);
    const uint32_t table_at = ALIGNED ? (smem_at + 0xFFFFu) & ~0xFFFFu : smem_at;
    char* pair_table = reinterpret_cast<char*>(dl4_smem) + (table_at - smem_at);
    const uint32_t lane4 = (uint32_t)lane * 4u, lane8 = (uint32_t)lane * 8u, code_table = dl_code_table_address();

    // the tables: a checkpoint's stored ones (fold: the group shares the default code, checked by the launcher)
    for (int g = 0; g < p.G; g++) {
        if (threadIdx.x < 16) dl_code_table[g][threadIdx.x] = p.nf4[g].code[threadIdx.x];
        if (p.nf4[g].double_quant)
            for (int i = threadIdx.x; i < 256; i += DL4_THREADS) nested_code[g][i] = p.nf4[g].nested_code[i];
    }
    // the pair table: slot i % 32 of code byte i / 32, as bf16 (fold) or fp32 (exact pairs)
    for (int i = threadIdx.x; (DL4_FOLD || PAIRS) && i < 256 * 32; i += DL4_THREADS) {
        const int byte = i / 32;
        const float even = p.nf4[0].code[byte >> 4], odd = p.nf4[0].code[byte & 15];  // elements 2j, 2j + 1
        if (DL4_FOLD) {
            __nv_bfloat162 v = __floats2bfloat162_rn(even, odd);
            reinterpret_cast<uint32_t*>(pair_table)[byte * 64 + i % 32] = *reinterpret_cast<uint32_t*>(&v);
        } else {
            reinterpret_cast<float2*>(pair_table)[i] = make_float2(even, odd);
        }
    }

    // the step after pos: the next blocks of its tile, or the next tile's first, as many as the tile and the range
    // hold (at most CH)
    auto step_size = [&](const Dl4Pos& at) { return max(0, min(min(CH, nkb - at.kb), f_end - (at.tile * nkb + at.kb))); };
    auto next = [&](const Dl4Pos& pos) {
        Dl4Pos to{pos.tile, pos.kb + pos.n, 0};
        if (to.kb == nkb) to.tile++, to.kb = 0;
        to.n = step_size(to);
        return to;
    };

    Dl4Tile src;  // the tile the loads are in
    auto enter = [&](int tile) {
        const int v = tile * 16 * TM, g = dl_linear_of(p, v), local = v - p.row_start[g];
        const NF4View& t = p.nf4[g];
        src.tile = tile;
        src.g = g;
        src.tiled = t.tiled;
        src.double_quant = t.double_quant;
        src.block = (local + gq) * nkb;
        const int64_t unit = (int64_t)(local / 16) * nkb;  // the tile's first unit (tiled order)
        src.codes = t.tiled ? t.packed + unit * 512 + lane * 16 : t.packed + (int64_t)(local + gq) * (K / 2) + c * 8;
        src.q = t.tiled ? t.absmax_q + unit * 16 + gq : t.absmax_q + src.block;
        src.scales = t.double_quant ? t.nested_absmax : t.absmax_f32;
        src.next_codes = t.tiled ? (int64_t)nkb * 512 : (int64_t)16 * (K / 2);
        src.next_q = t.tiled ? nkb * 16 : 16 * nkb;
    };
    auto load = [&](Dl4Step<CH, TM>& s, const Dl4Pos& pos) {
        if (pos.n == 0) return;
        if (WIDE || pos.tile != src.tile) enter(pos.tile);  // wide: the registers are short, the steps long
        const int kb = pos.kb;
#pragma unroll
        for (int mt = 0; mt < TM; mt++) {
            const uint8_t* tile_codes = src.codes + mt * src.next_codes;
            if (src.tiled) {
                const uint8_t* at = tile_codes + kb * 512;
#pragma unroll
                for (int j = 0; j < CH; j++) {
                    const uint4 both = FULL || j < pos.n ? dl4_load_stream16(at + j * 512) : make_uint4(0, 0, 0, 0);
                    s.code[mt * CH + j][0] = make_uint2(both.x, both.y);
                    s.code[mt * CH + j][1] = make_uint2(both.z, both.w);
                }
            } else {
                const uint8_t* at = tile_codes + kb * 32;
#pragma unroll
                for (int j = 0; j < CH; j++)
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        s.code[mt * CH + j][h] = FULL || j < pos.n
                                                     ? dl4_load_stream8(at + (int64_t)h * 8 * (K / 2) + j * 32)
                                                     : make_uint2(0, 0);
            }
        }
        s.g = src.g;
        // this lane's piece of the quad's scales: m-tile c / CH, block c % CH of the step
        const int mine_mt = c / CH, mine_j = c % CH;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int block = src.block + mine_mt * 16 * nkb + h * 8 * nkb + kb + mine_j;
            s.q[h] = 0;
            s.a[h] = 0.0f;
            if (c < PIECES && (FULL || mine_j < pos.n)) {
                if (src.double_quant) {
                    s.q[h] = __ldg(src.q + mine_mt * src.next_q +
                                   (src.tiled ? (kb + mine_j) * 16 + h * 8 : kb + mine_j + h * 8 * nkb));
                    s.a[h] = __ldg(src.scales + block / NF4_NESTED_BLOCK);
                } else {
                    s.a[h] = __ldg(src.scales + block);
                }
            }
        }
    };

    float acc[TM][NT][4];
    dl_zero_tiles(acc);

    // x of this lane: row gq of each n-tile, the 16 k from c * 16 of each block (an offset, one register)
    const int x_lane = gq * K + c * 16;
    // a step: blocks past pos.n have zero scales and zero x, so they add exact zeros and need no branch
    auto compute = [&](const Dl4Step<CH, TM>& s, const Dl4Pos& pos) {
        const int kb = pos.kb, g = s.g;
        const NF4View& t = p.nf4[g];
        float mine[2];  // the scales this lane converted (exactly as nf4_dequant.cu rounds them)
#pragma unroll
        for (int h = 0; h < 2; h++)
            mine[h] = t.double_quant ? dl_double_quant_scale(t, nested_code[g][s.q[h]], s.a[h]) : s.a[h];
        const uint32_t lin_bytes = (uint32_t)g * 0x40404040u;
#pragma unroll
        for (int j = 0; j < CH; j++) {
            const bool valid = FULL || j < pos.n;
            float scale[TM][2];
#pragma unroll
            for (int mt = 0; mt < TM; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const float from_quad = __shfl_sync(0xFFFFFFFFu, mine[h], (lane & ~3) | (mt * CH + j));
                    scale[mt][h] = valid ? from_quad : 0.0f;
                }
            // x of n-tile tt: 32 bytes a lane (L1), the b registers of four k-steps
            uint32_t xw[NT][8];
            auto load_x = [&](int tt) {
                uint4 lo = make_uint4(0, 0, 0, 0), hi = lo;
                if (valid && tt * 8 + gq < M) {
                    const uint4* xr = reinterpret_cast<const uint4*>(p.x + x_lane + (int64_t)tt * 8 * K + (kb + j) * NF4_BLOCK);
                    lo = __ldg(xr);
                    hi = __ldg(xr + 1);
                }
                xw[tt][0] = lo.x, xw[tt][1] = lo.y, xw[tt][2] = lo.z, xw[tt][3] = lo.w;
                xw[tt][4] = hi.x, xw[tt][5] = hi.y, xw[tt][6] = hi.z, xw[tt][7] = hi.w;
            };
            if (!WIDE)  // all of x ahead of the dequantization, whose latency it then hides
#pragma unroll
                for (int tt = 0; tt < NT; tt++) load_x(tt);
            if (WIDE) load_x(0);  // the first n-tile's under the dequantization
            uint32_t w[TM][2][8];  // per m-tile, the bf16 pairs of rows gq, gq+8: pairs 2s and 2s+1 feed k-step s
#pragma unroll
            for (int mt = 0; mt < TM; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const uint2 code = s.code[mt * CH + j][h];
                    if (DL4_FOLD) {
#pragma unroll
                        for (int b = 0; b < 4; b++) {
                            w[mt][h][b] = dl4_pair(pair_table, code.x, lane4, b);
                            w[mt][h][4 + b] = dl4_pair(pair_table, code.y, lane4, b);
                        }
                    } else if (ALIGNED) {
                        dl4_aligned_pair_word(&w[mt][h][0], code.x, table_at | lane8, scale[mt][h]);
                        dl4_aligned_pair_word(&w[mt][h][4], code.y, table_at | lane8, scale[mt][h]);
                    } else if (PAIRS) {
                        dl4_pair_word(&w[mt][h][0], pair_table, code.x, lane8, scale[mt][h]);
                        dl4_pair_word(&w[mt][h][4], pair_table, code.y, lane8, scale[mt][h]);
                    } else {
                        dl_nf4_word(&w[mt][h][0], code.x, lin_bytes, code_table, scale[mt][h]);
                        dl_nf4_word(&w[mt][h][4], code.y, lin_bytes, code_table, scale[mt][h]);
                    }
                }
            // wide: x one n-tile ahead (all of it would take 64 registers and spill); each n-tile's x feeds the mma
            // of every m-tile
#pragma unroll
            for (int tt = 0; tt < NT; tt++) {
                if (WIDE && tt + 1 < NT) load_x(tt + 1);  // the next n-tile's under this one's mma
#pragma unroll
                for (int mt = 0; mt < TM; mt++) {
                    float blk[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                    for (int ks = 0; ks < 4; ks++) {
                        const uint32_t a[4] = {w[mt][0][2 * ks], w[mt][1][2 * ks], w[mt][0][2 * ks + 1],
                                               w[mt][1][2 * ks + 1]};
                        const uint32_t b[2] = {xw[tt][2 * ks], xw[tt][2 * ks + 1]};
                        mma_bf16_m16n8k16(DL4_FOLD ? blk : acc[mt][tt], a, b);
                    }
                    if (DL4_FOLD)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            acc[mt][tt][e] = fmaf(blk[e], scale[mt][e >> 1], acc[mt][tt][e]);
                }
            }
        }
    };

    // n-tile tt of m-tile mt of the partial that warp `from` left for a tile in the slot of (warp + tile), unique
    // because both only grow along the order
    auto slot = [&](int tile, int from, int mt, int tt) {
        return reinterpret_cast<float4*>(p.partials) + (((int64_t)(from + tile) * TM + mt) * NT + tt) * 32 + lane;
    };
    // the epilogue of the tile's m-tiles, from their sums
    auto tile_epilogue = [&](int tile, const float (&sums)[TM][NT][4]) {
        const int v = tile * 16 * TM, g = dl_linear_of(p, v);
#pragma unroll
        for (int mt = 0; mt < TM; mt++) dl_tile_epilogue<NT>(p, sums[mt], g, v - p.row_start[g] + 16 * mt, gq, c);
    };
    // this warp's partial of a tile is in its slot and visible (after a fence): count it in, and if it is the last of
    // the tile's warps to arrive, add all the tile's partials in warp order and write the output
    auto arrive = [&](int tile) {
        int arrived = 0;
        if (lane == 0) arrived = atomicAdd(&p.counters[tile], 1);
        arrived = __shfl_sync(0xFFFFFFFFu, arrived, 0);
        const int first = dl4_first_warp(tile, nkb, len), last = dl4_last_warp(tile, nkb, len);
        if (arrived != last - first) return;
        __threadfence();
        float sum[TM][NT][4];
        dl_zero_tiles(sum);
        for (int w = first; w <= last; w++)
#pragma unroll
            for (int mt = 0; mt < TM; mt++)
#pragma unroll
                for (int tt = 0; tt < NT; tt++) {
                    const float4 part = __ldcg(slot(tile, w, mt, tt));
                    sum[mt][tt][0] += part.x;
                    sum[mt][tt][1] += part.y;
                    sum[mt][tt][2] += part.z;
                    sum[mt][tt][3] += part.w;
                }
        if (lane == 0) p.counters[tile] = 0;  // ready for the next launch
        tile_epilogue(tile, sum);
    };
    // Deferred arrival (DL_CFG_V4_DEFER, a lab variant until measured): the fence before a partial's arrival waits
    // for every load of this thread still in flight, and mid-range that is the next step's codes, which the
    // fence turns into a blocking load (Nsight Compute, session 5: 6% of the stalls at M 6 are the fence). A warp
    // has at most two partial tiles, where its range begins and where it ends, so the first one's arrival can wait
    // for the range's end, when nothing is in flight: one fence for both, the same sums in the same order.
    int deferred = -1;  // a tile whose partial is stored but not yet counted in
    // the end of this warp's part of a tile (range_done: and of its range): the whole tile's epilogue, or its
    // partial into its slot and the arrival
    auto finish = [&](int tile, bool whole, bool range_done) {
        if (whole) {
            tile_epilogue(tile, acc);
        } else {
#pragma unroll
            for (int mt = 0; mt < TM; mt++)
#pragma unroll
                for (int tt = 0; tt < NT; tt++)
                    __stcg(slot(tile, warp, mt, tt),
                           make_float4(acc[mt][tt][0], acc[mt][tt][1], acc[mt][tt][2], acc[mt][tt][3]));
        }
        dl_zero_tiles(acc);
        if (DL4_DEFER && !range_done) {
            if (!whole) deferred = tile;
            return;
        }
        if (whole && deferred < 0) return;
        __threadfence();
        if (deferred >= 0) arrive(deferred);
        deferred = -1;
        if (!whole) arrive(tile);
    };

    // before the dependency: only what no earlier kernel writes (the weights)
    Dl4Pos cur{f_begin / nkb, f_begin % nkb, 0};  // dl4_shapes_ok: K > 0
    cur.n = step_size(cur);
    Dl4Step<CH, TM> bufs[2];
    load(bufs[0], cur);
    __syncthreads();  // the tables
    grid_dependency_wait();
    int tile_start_kb = cur.kb;  // where this warp's part of the current tile began
    auto run = [&](Dl4Step<CH, TM>& use, Dl4Step<CH, TM>& fill) {  // one step; false when the range is done
        if (cur.n == 0) return false;
        const Dl4Pos after = next(cur);
        load(fill, after);
        compute(use, cur);
        if (cur.kb + cur.n == nkb || after.n == 0) {  // the end of the tile or of the range
            finish(cur.tile, tile_start_kb == 0 && cur.kb + cur.n == nkb, after.n == 0);
            tile_start_kb = 0;
        }
        cur = after;
        return true;
    };
    while (run(bufs[0], bufs[1]) && run(bufs[1], bufs[0])) {
    }
}

// x A^T of a decode step of at most DL_AX_MAX_M rows: the adapters' first product, which cuBLASLt runs in 6-8 us
// of mostly latency at these sizes (dev/cuda/decode_linear.cu: "+lora, cuBLASLt xA" against "prod"). One block of
// DL_AX_WARPS warps per row of the group's A's (a column of ax), its warps splitting k in 16-byte chunks. Each
// lane loads its chunks of A into registers before grid_dependency_wait(), so that reading A overlaps the kernel
// before it (A changes only at optimizer steps, never within a decode step), and lets the decode kernel after it
// start early. fp32 sums, one bf16 rounding, as the GEMM (in another order). p is the ax launch's DecodeParams:
// w[g] the A's, y[g] / ldy[g] where their columns of ax go.
constexpr int DL_AX_MAX_M = 8, DL_AX_WARPS = 8, DL_AX_MAX_CHUNKS = 12;  // k <= 12 x 8 warps x 32 lanes x 8
template <int MR>
__global__ void __launch_bounds__(DL_AX_WARPS * 32) decode_lora_ax_kernel(const __grid_constant__ DecodeParams p) {
    __shared__ float partial[DL_AX_WARPS][MR];
    grid_launch_dependents();
    const int v = blockIdx.x, g = dl_linear_of(p, v), r = v - p.row_start[g];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, K = p.K, chunks = K / 8;
    const uint4* a_row = reinterpret_cast<const uint4*>(p.w[g] + (int64_t)r * K);
    auto chunk_of = [&](int i) { return (i * DL_AX_WARPS + warp) * 32 + lane; };
    uint4 a[DL_AX_MAX_CHUNKS];
#pragma unroll
    for (int i = 0; i < DL_AX_MAX_CHUNKS; i++) a[i] = chunk_of(i) < chunks ? __ldg(a_row + chunk_of(i)) : make_uint4(0, 0, 0, 0);
    grid_dependency_wait();  // x is the kernel before's output
    float sum[MR];
#pragma unroll
    for (int m = 0; m < MR; m++) sum[m] = 0.0f;
#pragma unroll
    for (int i = 0; i < DL_AX_MAX_CHUNKS; i++) {
        const int c = chunk_of(i);
        if (c >= chunks) break;
        const __nv_bfloat162* ap = reinterpret_cast<const __nv_bfloat162*>(&a[i]);
#pragma unroll
        for (int m = 0; m < MR; m++) {
            const uint4 x_bits = __ldg(reinterpret_cast<const uint4*>(p.x + (int64_t)min(m, p.M - 1) * K) + c);
            const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&x_bits);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float2 af = __bfloat1622float2(ap[e]), xf = __bfloat1622float2(xp[e]);
                sum[m] = fmaf(af.x, xf.x, sum[m]);
                sum[m] = fmaf(af.y, xf.y, sum[m]);
            }
        }
    }
#pragma unroll
    for (int m = 0; m < MR; m++) {
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) sum[m] += __shfl_xor_sync(0xFFFFFFFFu, sum[m], offset);
        if (lane == 0) partial[warp][m] = sum[m];
    }
    __syncthreads();
    if (threadIdx.x < p.M) {  // MR >= M: rows past M were computed from row M-1 and are dropped here
        float total = 0.0f;
        for (int w = 0; w < DL_AX_WARPS; w++) total += partial[w][threadIdx.x];
        p.y[g][(int64_t)threadIdx.x * p.ldy[g] + r] = __float2bfloat16_rn(total);
    }
}

// Whether decode_lora_ax_kernel can take this x A^T launch: few rows, k in whole chunks within its registers, and
// 16-byte aligned x and A's.
static bool dl_ax_ok(const DecodeParams& ax) {
    bool ok = DL_CFG_AX_KERNEL != 0 && ax.M <= DL_AX_MAX_M && ax.K % 8 == 0 &&
              ax.K <= DL_AX_MAX_CHUNKS * DL_AX_WARPS * 32 * 8 && (uintptr_t)ax.x % 16 == 0;
    for (int g = 0; ok && g < ax.G; g++) ok = (uintptr_t)ax.w[g] % 16 == 0;
    return ok;
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

int decode_linear_n_tiles(int M) {
    int t = (std::min(M, DECODE_LINEAR_MAX_M) + 7) / 8;
    return t <= 1 ? 1 : t <= 2 ? 2 : t <= 4 ? 4 : t <= 6 ? 6 : 8;
}

// Calls f(std::integral_constant<int, NT>()) for the instantiation that serves NT n-tiles (decode_linear_n_tiles).
template <typename F>
static void dl_with_n_tiles(int NT, F f) {
    switch (NT) {
        case 1: f(std::integral_constant<int, 1>()); break;
        case 2: f(std::integral_constant<int, 2>()); break;
        case 4: f(std::integral_constant<int, 4>()); break;
        case 6: f(std::integral_constant<int, 6>()); break;
        default: f(std::integral_constant<int, 8>()); break;
    }
}

// Calls f(std::integral_constant<int, MR>()) for the decode_lora_ax_kernel instantiation that serves M rows.
template <typename F>
static void dl_with_ax_rows(int M, F f) {
    if (M <= 1) f(std::integral_constant<int, 1>());
    else if (M <= 2) f(std::integral_constant<int, 2>());
    else if (M <= 4) f(std::integral_constant<int, 4>());
    else if (M <= 6) f(std::integral_constant<int, 6>());
    else f(std::integral_constant<int, DL_AX_MAX_M>());
}

// How a launch of the tensor-core kernel is cut: row tiles, k splits and the partial floats they need.
struct DlPlan {
    int NT = 1, tiles = 0, chunks = 0, chunks_per_split = 1, splits = 1;
    size_t partial_floats = 0;
};

// The block shape (DlShape) on the host: output rows per block and k per chunk.
static void dl_shape(bool nf4, int NT, int* rows, int* kch) {
    dl_with_n_tiles(NT, [&](auto nt) {
        *rows = nf4 ? DlShape<true, nt()>::ROWS : DlShape<false, nt()>::ROWS;
        *kch = nf4 ? DlShape<true, nt()>::KCH : DlShape<false, nt()>::KCH;
    });
}

static DlPlan dl_plan(bool nf4, int total_rows, int K, int M) {
    DlPlan plan;
    plan.NT = decode_linear_n_tiles(M);
    int rows = 0, chunk_k = 0;
    dl_shape(nf4, plan.NT, &rows, &chunk_k);
    plan.tiles = (total_rows + rows - 1) / rows;
    plan.chunks = (K + chunk_k - 1) / chunk_k;
    // about DL_CFG_BLOCKS_PER_SM blocks per SM over the launch, so that enough weight bytes are in flight to
    // cover HBM latency ...
    int want = (DL_CFG_BLOCKS_PER_SM * cuda_sm_count() + plan.tiles - 1) / plan.tiles;
    // ... but the partials (written and read back, fp32) at most twice the weight bytes, and at most
    // DL_CFG_MAX_SPLITS splits, whose partials the last block of a tile adds up alone; a launch of one or two tiles
    // (an adapter's x A^T: G*R rows over a long k) may take 4x more, or its few blocks would walk k alone
    double tile_weight_bytes = (double)rows * K * (nf4 ? 0.5 : 2.0);
    double tile_partial_bytes = 2.0 * rows * 8 * plan.NT * sizeof(float);
    int traffic = std::max(1, (int)(2.0 * tile_weight_bytes / tile_partial_bytes));
    const int most_splits = plan.tiles <= 2 ? 4 * DL_CFG_MAX_SPLITS : DL_CFG_MAX_SPLITS;
    int splits = std::max(1, std::min(std::min(std::min(want, traffic), plan.chunks), most_splits));
    plan.chunks_per_split = (plan.chunks + splits - 1) / splits;
    plan.splits = (plan.chunks + plan.chunks_per_split - 1) / plan.chunks_per_split;
    if (plan.splits > 1) plan.partial_floats = (size_t)plan.splits * plan.tiles * rows * 8 * plan.NT;
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
constexpr size_t DL_MAX_COUNTERS = DECODE_LINEAR_COUNTERS;

// Blocks of the streaming kernel an SM holds (asked once per instantiation, after opting into its shared memory).
static size_t dl4_smem_bytes(bool pairs) {
    return pairs ? (DL4_PAIRS_ALIGNED ? 2 : 1) * DL4_PAIR_TABLE_BYTES : DL4_FOLD ? DL4_PAIR_TABLE_BYTES : 0;
}
// One instantiation of the streaming kernel, its shared memory, and the blocks an SM holds (asked once).
struct Dl4Kernel {
    void (*fn)(DecodeParams) = nullptr;
    size_t smem = 0;
    int per_sm = 0;
};
template <int NT, bool WIDE, bool PAIRS, bool FULL, int TM = 1>
static Dl4Kernel dl4_kernel() {
    static Dl4Kernel k;
    if (k.per_sm == 0) {
        k.fn = decode_linear_nf4_stream_kernel<NT, WIDE, PAIRS, FULL, TM>;
        k.smem = dl4_smem_bytes(PAIRS);
        cudaCheck(cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)k.smem));
        cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&k.per_sm, k.fn, DL4_THREADS, k.smem));
        if (k.per_sm < 1) dl_fail("the streaming NF4 kernel does not fit on an SM");
    }
    return k;
}
// The instantiation a launch of NT n-tiles runs: the narrow one (see DL4_NARROW_PAIRS), or the configured one, with
// TM m-tiles a step (only wide launches of more than two n-tiles take two).
static Dl4Kernel dl4_pick(int NT, bool wide, bool narrow, int TM) {
    if (narrow) return dl4_kernel<1, false, DL4_PAIRS || DL4_NARROW_PAIRS, true>();
    Dl4Kernel k;
    dl_with_n_tiles(NT, [&](auto nt) {
        if constexpr (nt() > 2 && DL4_TM == 2)
            if (TM == 2) {
                k = dl4_kernel<nt(), true, DL4_PAIRS, true, 2>();
                return;
            }
        k = wide ? dl4_kernel<nt(), true, DL4_PAIRS, DL4_FULL>() : dl4_kernel<nt(), false, DL4_PAIRS, DL4_FULL>();
    });
    return k;
}

// How a launch of the streaming kernel is cut: blocks of warps, the (tile, 64-block) pairs per warp, and the
// partial slots (one per warp and tile it touches) the workspace needs. As many warps as fit on the GPU at once,
// but each with at least two steps of work.
struct Dl4Plan {
    int grid = 0;
    bool wide = false;    // see the kernel
    bool narrow = false;  // see DL4_NARROW_PAIRS
    int TM = 1;           // m-tiles a step (DL4_TM)
    Dl4Kernel kernel;
    int64_t stream_rows = 1;
    size_t partial_floats = 0;
};
// What dl4_plan needs of a group's linears besides their total size: whether every one has the standard NF4 code
// (which the pair table holds) and a multiple of 32 rows (two m-tiles a step). linear(g) gives linear g's
// (rows, whether its code is the default), from whichever description of the group the caller holds.
struct Dl4Group {
    bool default_code = true, rows32 = true;
};
template <class Linear>
static Dl4Group dl4_group(int G, Linear linear) {
    Dl4Group group;
    for (int g = 0; g < G; g++) {
        const std::pair<int, bool> rows_code = linear(g);
        group.rows32 = group.rows32 && rows_code.first % 32 == 0;
        group.default_code = group.default_code && rows_code.second;
    }
    return group;
}
static Dl4Plan dl4_plan(int total_rows, int K, int M, const Dl4Group& group) {
    Dl4Plan plan;
    const int NT = decode_linear_n_tiles(M), nkb = K / NF4_BLOCK;
    plan.wide = NT > 2 && (int64_t)(total_rows / 16) * nkb >= DL_CFG_V4_WIDE_PAIRS;
    plan.narrow = DL_CFG_V4_NARROW != 0 && NT == 1 && nkb % DL4_CH == 0 && (group.default_code || !DL4_NARROW_PAIRS);
    plan.TM = plan.wide && group.rows32 && DL4_TM == 2 && nkb % DL4_TM2_CH == 0 ? 2 : 1;
    plan.kernel = dl4_pick(NT, plan.wide, plan.narrow, plan.TM);
    const int tiles = total_rows / (16 * plan.TM);
    const int64_t F = (int64_t)tiles * nkb;  // the walk's (tile, block) pairs
    const int64_t warps = std::max<int64_t>(
        1, std::min<int64_t>((int64_t)plan.kernel.per_sm * cuda_sm_count() * DL4_WARPS, F / (2 * DL4_CH / plan.TM)));
    plan.grid = (int)((warps + DL4_WARPS - 1) / DL4_WARPS);
    plan.stream_rows = (F + (int64_t)plan.grid * DL4_WARPS - 1) / ((int64_t)plan.grid * DL4_WARPS);
    if (DL4_FULL || plan.narrow || plan.TM == 2) {  // whole steps: ranges of whole steps, and the warps that cover F
        plan.stream_rows = (plan.stream_rows + DL4_CH - 1) / DL4_CH * DL4_CH;
        const int64_t busy = (F + plan.stream_rows - 1) / plan.stream_rows;
        plan.grid = (int)((busy + DL4_WARPS - 1) / DL4_WARPS);
    }
    plan.partial_floats = ((size_t)plan.grid * DL4_WARPS + tiles) * plan.TM * NT * 4 * 32;
    return plan;
}

struct DlWorkspace {
    int* counters = nullptr;
    bf16* ax = nullptr;
    float* partials = nullptr;
    bf16* xw = nullptr;  // the wgmma path's permuted x (DL_CFG_WGMMA), after the partials
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

// x A^T of up to M rows: the streaming passes take 64 rows at a time, cuBLASLt's bf16 groups all M at once
static size_t dl_ax_bytes(int R, int M) {
    return dl_align((size_t)std::max(M, DECODE_LINEAR_MAX_M) * DECODE_LINEAR_MAX_G * std::max(R, 1) * sizeof(bf16));
}

// ---------------------------------------------------------------------------------------------------------------
// The wgmma path (DL_CFG_WGMMA): NF4 groups in decode-tile order at 32 < M <= 64 rows of x (DL_CFG_WGMMA_MIN_M).
//
// Why (README, "What bounds batch 64"): the streaming kernel multiplies with mma.sync one warp at a time, and every
// warp reads x for itself (8x the code bytes at two m-tiles a step). Here a warpgroup (one block of 4 warps) owns a
// slab of 64 weight rows, warp w its 16-row tile w, and all four walk k together: one copy of x in shared memory
// feeds them, and one wgmma m64n64k16 a k-step (kernels/wgmma.cuh) does the work of 32 mma.sync.
// Layouts: the codes are the decode-tile order the GPU model holds (nf4_tile), dequantized by dl_nf4_word into
// mma.sync's A fragment, which is wgmma's (warp w: rows 16w .. 16w+15), with the streaming kernel's permutation of
// k: physical k 16c + 4s + j of a 64-block is logical k 2c + j (j < 2) or 2c + 8 + j - 2 of k-step s. x is written
// once per launch in that order and in wgmma's core-matrix layout (dlw_x_kernel: per 64-block, 4 k-steps of 64 rows
// x 16 k, rows past M zero), then staged into shared memory by bulk copies, DLW_STAGES - 1 blocks ahead. The
// descriptor's byte offsets (DLW_LEADING, DLW_STRIDE) are the convention dev/cuda/wgmma_probe.cu found on the H200.
// Per 64-block a warpgroup dequantizes its codes (loaded DLW_PREF blocks ahead), issues 4 wgmma as a group and waits
// for it; the SM's other blocks fill that wait. (Writing the registers of a wgmma in flight makes ptxas serialize
// every wgmma of the kernel, C7513. Dequantizing the next block into a second register set while this block's wgmma
// run avoids that, but measured slower: 11.00 / 10.89 ms a step at batch 64 with codes 1 / 2 blocks ahead, against
// 10.85 ms, session 12, call 1, branch next/wgmma-overlap.)
// Also measured slower (session 14): two 64-blocks a wgmma group and one wait (a step at batch 64 10.81 ms against
// 9.65, branch next/wgmma-pair), and stream-K, blocks walking equal ranges of (slab, 64-block) units across slabs
// (10.01-10.03 against 9.59-9.65 ms, branch next/wgmma-stream: gate alone was 5% faster on it, but in the main loop
// about 50 uniform-datapath instructions became vector ones with 16 R2UR moves, the segments' slabs coming from a
// division; with the next slab by an increment, session 15, call 1: 9.89-9.90 against 9.61-9.64 ms for main, and
// 9.94 for the branch's code with stream-K off, so the branch's walk alone costs the time; its SASS still has 54
// R2UR to main's 37).
// Split-K over blocks with a counter per slab as elsewhere in this file: each block writes its fp32 partial, the last
// of a slab adds the partials in split order (the bits never depend on timing) and ends the slab as the streaming
// kernel ends a tile (dl_tile_epilogue: the adapter term on the tensor cores, bias and the two roundings). An end with
// the adapter term as a loop over r per output made the first GPU run 2.7x slower than the streaming kernel.
#ifndef DL_SM90A
#define DL_SM90A 0  // 1 where the Makefile builds this file for sm_90a (wgmma is an sm_90a feature)
#endif
#ifndef DL_CFG_WGMMA
#define DL_CFG_WGMMA DL_SM90A  // route NF4 groups at 32 < M <= 64 to the wgmma kernel (lab variant wgmma0: off)
#endif
// Which launches take it: every NF4 group above 32 rows of x. Until session 16 it started above 48, because at 48 the
// streaming kernel was as fast (9.66 against 9.81 ms a step, session 11, call 3: it needs three m-tiles there, the
// wgmma kernel always computes 64 columns). The wgmma kernel has since gained more than that: a decode step alone
// (bench_generate's decode_step_ms, 8 prompts x 6 and 6 x 6) took 7.138-7.151 ms at 48 rows against 8.152-8.188 on
// the streaming kernel, and 6.954-6.962 at 36 rows against 7.798-7.800 (session 16, call 5, two runs each alternated;
// all 55 GPU cases passed with the path from 33 rows, call 7). Below 33 rows not measured.
// Alone, q and k were slower on the path (0.030-0.033 against 0.018-0.025 ms a linear, session 11: too few slabs to
// fill the GPU without many k splits), yet the whole step at batch 64 is faster with q/k/v, o and down on it too:
// 10.55 ms against 10.85-10.86 with gate/up alone (DL_CFG_WGMMA_MIN_ROWS=8192, lab variant wgwide) and 11.76 without
// the path, the three built from one tree in one call (session 12, call 1).
#ifndef DL_CFG_WGMMA_MIN_M
#define DL_CFG_WGMMA_MIN_M 32  // rows of x the path needs more than
#endif
#ifndef DL_CFG_WGMMA_MIN_ROWS
#define DL_CFG_WGMMA_MIN_ROWS 0  // weight rows a group needs at least (7B: gate/up 37,888; q/k/v 4,608; o, down 3,584)
#endif
#ifndef DL_CFG_WGMMA_X_AX
#define DL_CFG_WGMMA_X_AX 0  // 1: the adapters' x A^T in dlw_x_kernel (lab variant wgxax); 0: cuBLASLt's GEMM
#endif
// The adapters' x A^T in the wgmma kernel itself (lab variant wgaxin): its first blocks take the A rows as 64-row
// bf16 slabs, and the NF4 slabs' ends wait for them, so a group costs two launches (dlw_x_kernel, dlw_kernel) instead
// of four (cuBLASLt's split-K GEMM and its reduction: 196 launches and 0.88 ms of a step's 8.3 ms of kernels at batch
// 64, session 15, call 1). Measured slower (session 15, branch next/wgmma-ax): a step at batch 64 took 10.23 ms
// against 9.61 for main (call 2), 10.27 with each ax block's A prefetched into L2 at its start, 10.01-10.03 with
// dlw_x_kernel's late trigger too, against 9.44-9.47 for this file's production and 9.63 for main (call 3). In
// Nsight Compute the wgmma kernel took 0.9 ms more a step, about what the GEMMs took: the ax blocks, each a chain
// of dependent loads and one warpgroup's wgmma, end after the short launches' NF4 slabs (q/k/v, o, down: 7-9 k
// splits), which then wait for them.
#ifndef DL_CFG_WGMMA_AX
#define DL_CFG_WGMMA_AX 0  // 0: x A^T before the kernel (cuBLASLt, or dlw_x_kernel with DL_CFG_WGMMA_X_AX)
#endif
// When dlw_x_kernel lets the next kernel's blocks start (a programmatic launch; in production the next kernel is
// cuBLASLt's x A^T GEMM): 1 at its start, 0 once its x is staged (lab variant wgxearly). A step at batch 64 took
// 9.42-9.48 ms with 0, against 9.67-9.69 with 1 and 9.62-9.67 for main's kernel (which triggers at the start),
// three runs each alternated in one call (session 15, call 4; 9.44-9.47 against 9.63 in call 3). Why the later
// trigger is faster was not profiled. The same move elsewhere changed nothing (call 5, 9.42-9.45 against 9.43-9.44
// ms): the norms, SwiGLU and attention triggering at their end, or dlw_kernel after its main loop.
#ifndef DL_CFG_WGMMA_X_TRIGGER
#define DL_CFG_WGMMA_X_TRIGGER 0
#endif
#if DL_CFG_WGMMA && !DL_SM90A
#error "DL_CFG_WGMMA needs this file built for sm_90a (-gencode arch=compute_90a,code=sm_90a -DDL_SM90A=1)"
#endif

constexpr int DLW_MAX_SPLITS = 32;
// dlw_x_kernel's tile: 16 rows of x, 32 columns of ax (dlw_x_plan sizes workspaces without the wgmma path built too)
constexpr int DLW_X_ROWS = 16, DLW_X_COLS = 32;
#ifndef DL_CFG_WGMMA_BLOCKS_SM
#define DL_CFG_WGMMA_BLOCKS_SM 5  // blocks an SM the registers must allow (at most 102 a thread; 4: 128)
#endif

#if DL_CFG_WGMMA
#ifndef DL_CFG_WGMMA_PREF
#define DL_CFG_WGMMA_PREF 2  // k-blocks of codes loaded ahead (8 registers each; 4 with 4 blocks an SM was slower, session 11)
#endif
// x staged by one bulk copy (cp.async.bulk, TMA) a block from thread 0, each stage with a full and an empty mbarrier,
// instead of cp.async by every thread and a block barrier a k-block (13% of the stall samples in session 12's
// profile). A layer at 64 rows took 0.2444 against 0.2517 ms, a step at batch 64 9.75 against 9.99 ms; with the DQ
// template and the late refill below, 0.2397 ms and 9.68 ms (session 13, call 1, one tree and one call).
#ifndef DL_CFG_WGMMA_TMA
#define DL_CFG_WGMMA_TMA 1  // 0: cp.async and a block barrier a k-block (lab variant wgbar)
#endif
constexpr int DLW_THREADS = 128, DLW_STAGES = 4, DLW_PREF = DL_CFG_WGMMA_PREF;
constexpr int DLW_XBLOCK_BYTES = 64 * 64 * 2;  // x of one 64-block: 4 k-steps of 64 rows x 16 k
constexpr uint32_t DLW_LEADING = 128, DLW_STRIDE = 256;  // descriptor: bytes between the k halves, the row groups

// x in wgmma's order before the wgmma kernel, and (DL_CFG_WGMMA_X_AX) the adapters' x A^T with it. Block (split,
// m-tile, n-tile): 16 rows of x and 32 columns of ax (one n8 mma tile a warp) over the split's 64-blocks of k, both
// staged whole in shared memory; the blocks of n-tile 0 write their rows of xw. Rows past M are zero in xw and absent
// from ax. Split partials (fp32) are added by the last block of each tile in split order, as dlw_kernel adds its own:
// the bits never depend on timing. fp32 sums, one bf16 rounding, as the GEMM's (in another order).
// Measured (session 13; Nsight Compute of a step at batch 64 in call 2): a group took a permute kernel (4.6 us), a
// cuBLASLt split-K GEMM for x A^T (6.1 us) and its reduction (3.3 us), 19% of the step's kernel time. This kernel
// writing xw alone, beside the GEMM, made the step 9.63 ms against 9.68 with the permute kernel (calls 3 and 2). With
// x A^T in it too (lab variant wgxax) the step's kernel time fell from 8.11 to 7.72 ms, yet the step took longer:
// 9.77 ms against 9.63 in call 3, and 9.79 against 9.62-9.64 with the last block's sum unrolled (calls 4 and 5). This
// kernel took 10.5 us a launch there (call 3, before the unroll); why the step is slower was not profiled. With the
// late trigger (session 16, call 1: it lets dlw_kernel start before the x A^T tiles) still slower: 9.94-9.98 ms
// against 9.47-9.50 for production, three runs each alternated.
struct DlwXParams {
    const bf16* x = nullptr;  // [M, K]
    int M = 0, K = 0;
    bf16* xw = nullptr;       // [K / 64][4][64 x 16]
    int N = 0, R = 1;         // ax's columns (0: xw alone); column n is row n % R of adapter n / R
    const bf16* A[DECODE_LINEAR_MAX_G] = {};
    bf16* ax = nullptr;       // [M, N]
    float* partials = nullptr;
    int* counters = nullptr;  // one a tile, zero between launches
    int splits = 1, n_tiles = 1, ld = 0;  // ld: the shared rows' stride in elements
};
constexpr int DLW_X_THREADS = 128;
static_assert(DLW_X_ROWS * DLW_X_COLS == 4 * DLW_X_THREADS, "the last block adds 4 elements of the tile a thread");

__global__ void __launch_bounds__(DLW_X_THREADS) dlw_x_kernel(const __grid_constant__ DlwXParams p) {
    extern __shared__ __align__(16) bf16 dlw_x_rows[];  // x [16][ld], then the adapters' rows [32][ld]
    if (DL_CFG_WGMMA_X_TRIGGER) grid_launch_dependents();
    const int split = blockIdx.x, mt = blockIdx.y, nt = blockIdx.z, t = threadIdx.x, nkb = p.K / NF4_BLOCK;
    const int kb0 = (int)((int64_t)split * nkb / p.splits), kb1 = (int)((int64_t)(split + 1) * nkb / p.splits);
    const int kbs = kb1 - kb0, units = kbs * NF4_BLOCK / 8;  // 16-byte units of a row
    bf16* xs = dlw_x_rows;
    bf16* as = dlw_x_rows + DLW_X_ROWS * p.ld;
    // the split's k of `rows` rows into dst (row j from row_of(j), zeros where that is nullptr)
    auto stage_rows = [&](bf16* dst, int rows, auto row_of) {
        for (int i = t; i < rows * units; i += DLW_X_THREADS) {
            const int j = i / units, u = i % units;
            const bf16* row = row_of(j);
            dl_cp_async16(dst + j * p.ld + u * 8, row ? row + kb0 * NF4_BLOCK + u * 8 : p.x, row != nullptr);
        }
    };
    // the adapters' rows first: they change only at optimizer steps, never within a decode step, so they load while
    // the kernel before ends; columns past N are zeros
    if (p.N > 0)
        stage_rows(as, DLW_X_COLS, [&](int j) {
            const int n = nt * DLW_X_COLS + j;
            return n < p.N ? p.A[n / p.R] + (int64_t)(n % p.R) * p.K : nullptr;
        });
    grid_dependency_wait();  // x is the kernel before's output; ax, xw and the workspace may still be read by it
    stage_rows(xs, DLW_X_ROWS, [&](int j) {
        const int m = mt * DLW_X_ROWS + j;
        return m < p.M ? p.x + (int64_t)m * p.K : nullptr;
    });
    dl_cp_async_commit();
    dl_cp_async_wait_all_but<0>();
    __syncthreads();

    // xw: for 64-block kb and k-step s, this m-tile's 16 rows are 512 contiguous bytes (wg_b_offset), 16 bytes
    // (chunk q) a row n and a half h of the k-step's 16 logical k: logical k 8h .. 8h + 7 are the x pairs 8c + 2s + h
    // (c = 0..3) of the block, by the permutation above
    if (!DL_CFG_WGMMA_X_TRIGGER) grid_launch_dependents();
    if (nt == 0)
        for (int i = t; i < kbs * 4 * 32; i += DLW_X_THREADS) {
            const int kb = i / 128, s = i / 32 % 4, q = i % 32, n = q / 16 * 8 + q % 8, h = q / 8 % 2;
            const uint32_t* pairs = reinterpret_cast<const uint32_t*>(xs + n * p.ld + kb * NF4_BLOCK);
            const uint4 chunk = make_uint4(pairs[2 * s + h], pairs[8 + 2 * s + h], pairs[16 + 2 * s + h], pairs[24 + 2 * s + h]);
            *reinterpret_cast<uint4*>(p.xw + (int64_t)(kb0 + kb) * (DLW_XBLOCK_BYTES / 2) + s * 1024 + mt * 256 + q * 8) = chunk;
        }
    if (p.N == 0) return;

    // ax's tile: warp w the n8 tile of columns 8w .. 8w+7 (mma.cuh's fragments: x as A, the adapter rows as B). The
    // row stride ld is 8 elements past a multiple of 64: lanes (gq, c) read 32-bit words 4 gq + c apart, no conflicts.
    const int warp = t / 32, lane = t % 32, gq = lane / 4, c = lane % 4, ld32 = p.ld / 2;
    const uint32_t* x32 = reinterpret_cast<const uint32_t*>(xs);
    const uint32_t* a32 = reinterpret_cast<const uint32_t*>(as) + (8 * warp + gq) * ld32;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k = c; k < kbs * NF4_BLOCK / 2; k += 8) {  // k: this lane's word of the k-step
        const uint32_t a[4] = {x32[gq * ld32 + k], x32[(gq + 8) * ld32 + k], x32[gq * ld32 + k + 4],
                               x32[(gq + 8) * ld32 + k + 4]};
        const uint32_t b[2] = {a32[k], a32[k + 4]};
        mma_bf16_m16n8k16(acc, a, b);
    }
    auto store = [&](int r, int col, float v) {  // tile row r, tile column col
        const int m = mt * DLW_X_ROWS + r, n = nt * DLW_X_COLS + col;
        if (m < p.M && n < p.N) p.ax[(int64_t)m * p.N + n] = __float2bfloat16_rn(v);
    };
    if (p.splits == 1) {
        for (int e = 0; e < 4; e++) store(gq + 8 * (e / 2), 8 * warp + 2 * c + e % 2, acc[e]);
        return;
    }
    const int tile = mt * p.n_tiles + nt;
    float* tile_partials = p.partials + (int64_t)tile * p.splits * DLW_X_ROWS * DLW_X_COLS;
    for (int e = 0; e < 4; e++)
        __stcg(tile_partials + split * DLW_X_ROWS * DLW_X_COLS + (gq + 8 * (e / 2)) * DLW_X_COLS + 8 * warp + 2 * c + e % 2,
               acc[e]);
    if (!dl_last_block_of(&p.counters[tile], p.splits)) return;
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);  // thread t: the tile's elements 4t .. 4t + 3
#pragma unroll 8  // 8 loads in flight, not a chain of L2 latencies
    for (int sp = 0; sp < p.splits; sp++) {
        const float4 v = __ldcg(reinterpret_cast<const float4*>(tile_partials + sp * DLW_X_ROWS * DLW_X_COLS) + t);
        sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
    }
    const int r = 4 * t / DLW_X_COLS, col = 4 * t % DLW_X_COLS;
    store(r, col, sum.x), store(r, col + 1, sum.y), store(r, col + 2, sum.z), store(r, col + 3, sum.w);
}

// DQ: whether the group's NF4 scales are double-quantized (every linear of a launch alike, dlw_params_ok). Read from
// the linear's flag per k-block, Nsight Compute (session 12) found it costing a constant load, two branches and both
// forms of the scale loads (issued under predicates), about 12 of a k-block's 292 instructions a warp. As a template
// argument it costs nothing; ptxas fits it in 96 registers only with the ring slots refilled after their
// dequantization (before, it spilled 16 bytes).
template <bool DQ>
__global__ void __launch_bounds__(DLW_THREADS, DL_CFG_WGMMA_BLOCKS_SM) dlw_kernel(const __grid_constant__ DecodeParams p) {
    extern __shared__ __align__(128) unsigned char dlw_x_stages[];  // DLW_STAGES x 8 KB
    __shared__ float nested_code[256];
    __shared__ __align__(8) uint64_t stage_full[DLW_STAGES], stage_empty[DLW_STAGES];  // DL_CFG_WGMMA_TMA only
    grid_launch_dependents();
    const int t = threadIdx.x, warp = t / 32, lane = t % 32, gq = lane / 4, c = lane % 4;
    // The first ax_slabs x splits blocks compute ax (ax blocks), the rest the NF4 slabs. A slab's end waits for ax, so
    // the ax blocks come first: blocks start in the order of their index (as CUTLASS's stream-K fixup also relies on),
    // and an ax block waits for nothing but its own copies.
    // (p.ax_slabs is 0 unless DL_CFG_WGMMA_AX. Compiled out of production by DL_CFG_WGMMA_AX in each test of ax_block
    // and ax_slabs, the kernel made a step at batch 64 slower, not faster: 9.506-9.517 ms against 9.470-9.495, three
    // runs each alternated, session 16, call 1; so the tests stay at run time.)
    const int ax_blocks = p.ax_slabs * p.splits, slabs = p.total_rows / 64;
    const bool ax_block = (int)blockIdx.x < ax_blocks;
    const int unit = ax_block ? (int)blockIdx.x : (int)blockIdx.x - ax_blocks;
    const int nkb = p.K / NF4_BLOCK, slab = unit / p.splits, split = unit % p.splits;
    const int slot = ax_block ? slabs + slab : slab;  // the slab's partials and counter
    const int kb0 = (int)((int64_t)split * nkb / p.splits), kb1 = (int)((int64_t)(split + 1) * nkb / p.splits);
    const int v = slab * 64, g = dl_linear_of(p, v), local = v - p.row_start[g];  // out_g % 64 == 0: one linear
    const NF4View& nf = p.nf4[g];
    constexpr bool dq = DQ;
    const int tile = local / 16 + warp;  // this warp's 16 rows, in linear g
    if (!ax_block) {
        if (t < 16) dl_code_table[g][t] = nf.code[t];
        if (dq)
            for (int i = t; i < 256; i += DLW_THREADS) nested_code[i] = nf.nested_code[i];
    }
    const uint32_t table = dl_code_table_address(), lin_bytes = (uint32_t)g * 0x40404040u;

    // The addresses of the main loop are this thread's bases plus 32-bit offsets (Nsight Compute, session 11: 64-bit
    // products, a signed modulo and descriptors rebuilt from generic pointers were about 100 of a k-block's 280
    // instructions a warp). 32 bits hold xw's offsets (64 x K x 2 bytes: 2.4 MB at 7B's down) and a linear's block
    // indices (out x K / 64: 1.1 M at 7B's gate); dlw_params_ok checks both.
    // (Held in registers, the bases cost spills at 96 registers; rebuilt from the parameters and the shared base,
    // which are uniform, they cost an add or two.)
    const uint32_t t16 = (uint32_t)t * 16;
    auto stage_of = [&](int kb) { return (uint32_t)(kb - kb0) % DLW_STAGES; };
    auto use_of = [&](int kb) { return (uint32_t)(kb - kb0) / DLW_STAGES; };  // how many blocks the stage held before
    auto full_bar = [&](int kb) { return (uint32_t)__cvta_generic_to_shared(&stage_full[stage_of(kb)]); };
    auto empty_bar = [&](int kb) { return (uint32_t)__cvta_generic_to_shared(&stage_empty[stage_of(kb)]); };
    auto stage_x = [&](int kb) {  // x of block kb into its stage
        if (DL_CFG_WGMMA_TMA) {  // one bulk copy by thread 0, once the 4 warps have released the stage's last block
            if (t == 0 && kb < kb1) {
                if (use_of(kb) > 0) mbar_wait(empty_bar(kb), (use_of(kb) - 1) & 1);
                tma_copy_arrive((uint32_t)__cvta_generic_to_shared(dlw_x_stages) + stage_of(kb) * DLW_XBLOCK_BYTES,
                                reinterpret_cast<const unsigned char*>(p.xw) + (uint32_t)kb * DLW_XBLOCK_BYTES,
                                DLW_XBLOCK_BYTES, full_bar(kb));
            }
            __syncwarp();  // warp 0 whole again before its next .aligned (wgmma) instruction
            return;
        }
        if (kb < kb1) {  // 4 pieces of 16 bytes a thread
            const unsigned char* src = reinterpret_cast<const unsigned char*>(p.xw) + ((uint32_t)kb * DLW_XBLOCK_BYTES + t16);
            const uint32_t dst = (uint32_t)__cvta_generic_to_shared(dlw_x_stages) + stage_of(kb) * DLW_XBLOCK_BYTES + t16;
#pragma unroll
            for (int i = 0; i < DLW_XBLOCK_BYTES / 16 / DLW_THREADS; i++)
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst + i * DLW_THREADS * 16),
                             "l"(src + i * DLW_THREADS * 16));
        }
        dl_cp_async_commit();  // a group every time, empty past the range, so that the wait counts hold
    };

    float acc[32];
#pragma unroll
    for (int i = 0; i < 32; i++) acc[i] = 0.0f;
    uint32_t a[4][4];  // the block's 4 k-steps' A fragments
    // w into the A fragments, and once x of block kb has landed for every thread, its 4 wgmma as one group
    auto issue = [&](int kb, const uint32_t (&w)[2][8]) {
#pragma unroll
        for (int s = 0; s < 4; s++) {
            a[s][0] = w[0][2 * s];
            a[s][1] = w[1][2 * s];
            a[s][2] = w[0][2 * s + 1];
            a[s][3] = w[1][2 * s + 1];
        }
        if (DL_CFG_WGMMA_TMA) {
            mbar_wait(full_bar(kb), use_of(kb) & 1);  // the bulk copy's bytes, visible to wgmma: no fence, no barrier
        } else {
            dl_cp_async_wait_all_but<DLW_STAGES - 2>();
            wg_fence_smem();
            __syncthreads();
        }
        const uint64_t stage_desc = wg_descriptor(dlw_x_stages, DLW_LEADING, DLW_STRIDE) +
                                    ((stage_of(kb) * DLW_XBLOCK_BYTES) >> 4);  // the address field counts 16 bytes
        wg_fence_operands(acc);
        wg_fence();
#pragma unroll
        for (int s = 0; s < 4; s++) wgmma_m64n64k16_rs(acc, a[s], stage_desc + (s * 2048 >> 4));
        wg_commit();
    };
    auto retire = [&](int kb) {  // wait for block kb's wgmma; its x stage then takes block kb + DLW_STAGES - 1
        wg_wait<0>();
        wg_fence_operands(acc);
        wg_fence_operands(a);
        if (DL_CFG_WGMMA_TMA && lane == 0) mbar_arrive(empty_bar(kb));  // this warp is done with block kb's stage
        stage_x(kb + DLW_STAGES - 1);
    };
    // The block's k range: load(kb, r) puts block kb's operands into ring slot r, `ahead` blocks ahead (the first
    // ones before grid_dependency_wait: weights never change within a decode step, so they load while the kernel
    // before ends); fragments(kb, r, w) makes block kb's A fragments from slot r and refills the slot.
    auto run = [&](auto ahead, auto load, auto fragments) {
        constexpr int PREF = decltype(ahead)::value;
#pragma unroll
        for (int r = 0; r < PREF; r++) load(kb0 + r, r);
        if (DL_CFG_WGMMA_TMA && t == 0) {
            for (int i = 0; i < DLW_STAGES; i++) {
                mbar_init((uint32_t)__cvta_generic_to_shared(&stage_full[i]), 1);   // thread 0's arrival + the bytes
                mbar_init((uint32_t)__cvta_generic_to_shared(&stage_empty[i]), 4);  // one arrival a warp
            }
            mbar_fence_init();
        }
        if (DL_CFG_WGMMA_TMA) __syncthreads();  // the barriers, before the first bulk copy
        grid_dependency_wait();  // x (and ax, and the workspace) belong to the kernels before
        for (int i = 0; i < DLW_STAGES - 1; i++) stage_x(kb0 + i);
        __syncthreads();  // the code tables
        for (int base = kb0; base < kb1; base += PREF) {
#pragma unroll
            for (int r = 0; r < PREF; r++) {
                const int kb = base + r;
                if (kb >= kb1) break;  // the same for the whole block
                uint32_t w[2][8];
                fragments(kb, r, w);
                issue(kb, w);
                retire(kb);
            }
        }
        if (!DL_CFG_WGMMA_TMA) dl_cp_async_wait_all_but<0>();
    };

    if (ax_block) {
        // ax's 64 columns from 64 * slab are 64 adapter rows (bf16, row-major): this lane's two rows, 16 k of each a
        // block, are 32 contiguous bytes at physical k 16c (the codes' permutation, which xw follows); past ax_cols
        // zero. The block's whole range is prefetched into L2 first, while the kernel before ends (a ring of registers,
        // as the codes have, spilled at 96 registers; prefetched 3 blocks ahead, the ax blocks were the launch's
        // slowest: a step at batch 64 10.23 against 9.61 ms, session 15, call 2); loaded when used.
        const bf16* a_rows[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int n = v + 16 * warp + gq + 8 * h;
            a_rows[h] = n < p.ax_cols ? p.A[n / p.R] + (int64_t)(n % p.R) * p.K + 16 * c : nullptr;
        }
        auto prefetch_rows = [&](int kb) {
#pragma unroll
            for (int h = 0; h < 2; h++)
                if (a_rows[h]) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(a_rows[h] + (uint32_t)kb * 64u));
        };
#pragma unroll 1
        for (int kb = kb0; kb < kb1; kb++) prefetch_rows(kb);
        run(std::integral_constant<int, 1>(), [&](int, int) {}, [&](int kb, int, uint32_t (&w)[2][8]) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const uint4* row = reinterpret_cast<const uint4*>(a_rows[h] + (uint32_t)kb * 64u);
                const uint4 lo = a_rows[h] ? __ldg(row) : make_uint4(0u, 0u, 0u, 0u);
                const uint4 hi = a_rows[h] ? __ldg(row + 1) : make_uint4(0u, 0u, 0u, 0u);
                w[h][0] = lo.x, w[h][1] = lo.y, w[h][2] = lo.z, w[h][3] = lo.w;
                w[h][4] = hi.x, w[h][5] = hi.y, w[h][6] = hi.z, w[h][7] = hi.w;
            }
        });
    } else {
        // this lane's 16 code bytes of block kb (rows gq and gq + 8) and the raw scales of its two rows
        const uint8_t* tile_codes = nf.packed + (int64_t)tile * nkb * 512 + lane * 16;
        const uint8_t* tile_q = dq ? nf.absmax_q + (int64_t)tile * nkb * 16 + gq : nullptr;
        const uint32_t block_row0 = (uint32_t)((tile * 16 + gq) * nkb), block_row8 = block_row0 + 8u * (uint32_t)nkb;
        uint4 ring_codes[DLW_PREF];
        float ring_a[DLW_PREF][2];
        uint32_t ring_q[DLW_PREF][2];
        auto load_codes = [&](int kb, int r) {
            if (kb >= kb1) return;
            ring_codes[r] = dl4_load_stream16(tile_codes + (uint32_t)kb * 512u);
            if (dq) {
                ring_q[r][0] = __ldg(tile_q + (uint32_t)kb * 16u);
                ring_q[r][1] = __ldg(tile_q + (uint32_t)kb * 16u + 8u);
                ring_a[r][0] = __ldg(nf.nested_absmax + (block_row0 + kb) / NF4_NESTED_BLOCK);
                ring_a[r][1] = __ldg(nf.nested_absmax + (block_row8 + kb) / NF4_NESTED_BLOCK);
            } else {
                ring_a[r][0] = __ldg(nf.absmax_f32 + block_row0 + kb);
                ring_a[r][1] = __ldg(nf.absmax_f32 + block_row8 + kb);
            }
        };
        // block kb's codes (ring slot r) dequantized into w, rows gq and gq + 8: bf16 pairs 2s and 2s+1 feed k-step
        // s; then the ring slot is refilled with block kb + DLW_PREF (refilled before, the slot was copied first: 12
        // register moves a k-block in session 12's counters)
        run(std::integral_constant<int, DLW_PREF>(), load_codes, [&](int kb, int r, uint32_t (&w)[2][8]) {
            const uint4 codes = ring_codes[r];
            float scale[2];
#pragma unroll
            for (int h = 0; h < 2; h++)
                scale[h] = dq ? dl_double_quant_scale(nf, nested_code[ring_q[r][h]], ring_a[r][h]) : ring_a[r][h];
            dl_nf4_word(&w[0][0], codes.x, lin_bytes, table, scale[0]);
            dl_nf4_word(&w[0][4], codes.y, lin_bytes, table, scale[0]);
            dl_nf4_word(&w[1][0], codes.z, lin_bytes, table, scale[1]);
            dl_nf4_word(&w[1][4], codes.w, lin_bytes, table, scale[1]);
            load_codes(kb + DLW_PREF, r);
        });
    }

    // acc[4j + e] is (weight row 16 warp + gq + 8 (e / 2), x row 8j + 2c + e % 2): dl_tile_epilogue's acc[j][e].
    // With k split, each block writes its fp32 partial ([m][r] of the slab) and the last of the slab adds them all in
    // split order (its own too, so that the bits never depend on which block came last).
    float sum[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) sum[j][e] = acc[4 * j + e];
    if (p.splits > 1) {
        auto at = [&](int sp, int j, int e) {
            return p.partials + ((int64_t)slot * p.splits + sp) * 64 * 64 + (8 * j + 2 * c + e % 2) * 64 + 16 * warp +
                   gq + 8 * (e / 2);
        };
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) __stcg(at(split, j, e), acc[4 * j + e]);
        if (!dl_last_block_of(&p.counters[slot], p.splits)) return;
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) sum[j][e] = 0.0f;
        // not unrolled over the splits: an unrolled sum made this cold code most of the kernel's SASS (ncu, call 2:
        // a third of the stall samples were instruction-cache misses and loads in it)
#pragma unroll 1
        for (int sp = 0; sp < p.splits; sp++)
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) sum[j][e] += __ldcg(at(sp, j, e));
    }
    // ax's counters after the slabs': one a slab of ax, then the ax slabs done, then the NF4 slabs ended
    int* ax_done = p.counters + slabs + p.ax_slabs;
    if (ax_block) {  // ax in bf16, one rounding of the fp32 sum as cuBLASLt's GEMM rounds it; then counted as done
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int m = 8 * j + 2 * c + e % 2, n = v + 16 * warp + gq + 8 * (e / 2);
                if (m < p.M && n < p.ax_cols) p.ax_out[(int64_t)m * p.ld_ax + n] = __float2bfloat16_rn(sum[j][e]);
            }
        __threadfence();
        __syncthreads();
        if (t == 0) atomicAdd(ax_done, 1);
        return;
    }
    if (p.ax_slabs > 0) {  // every ax slab written (a release by their fence and count, an acquire here)
        if (t == 0)
            while (ld_acquire_gpu(ax_done) < p.ax_slabs) __nanosleep(100);
        __syncthreads();
        // the adapter term on the tensor cores, bias and the two roundings, as the streaming kernel ends a tile
        dl_tile_epilogue<8, true>(p, sum, g, local + 16 * warp, gq, c);
        // the last slab to end sets ax's count back to zero for the next launch (every slab has waited on it)
        if (dl_last_block_of(ax_done + 1, slabs) && t == 0) *ax_done = 0;
        return;
    }
    dl_tile_epilogue<8>(p, sum, g, local + 16 * warp, gq, c);
}
#endif  // DL_CFG_WGMMA

// Whether the wgmma path takes a group of these shapes (at some M): NF4 in decode-tile order, every linear a multiple
// of 64 rows, k a multiple of 64, one scale format (double-quantized or not), and at least DL_CFG_WGMMA_MIN_ROWS rows
// in all.
static bool dlw_shapes_ok(const LoraLinearGpu* linears, int G) {
    bool ok = DL_CFG_WGMMA != 0 && dl_total_rows(linears, G) >= DL_CFG_WGMMA_MIN_ROWS;
    for (int g = 0; ok && g < G; g++) {
        const LinearWeight& b = *linears[g].base;
        ok = b.format == LinearFormat::NF4 && b.nf4.tiled && b.out % 64 == 0 && b.in % 64 == 0 &&
             b.nf4.double_quant == linears[0].base->nf4.double_quant;  // one kernel (dlw_kernel<DQ>) a launch
    }
    return ok;
}
static bool dlw_rows_ok(int M) { return M > DL_CFG_WGMMA_MIN_M && M <= 64; }
#if DL_CFG_WGMMA
// The same on a launch's parameters, where the group's rows, k and the counters are known.
static bool dlw_params_ok(const DecodeParams& p) {
    bool ok = DL_CFG_WGMMA != 0 && dlw_rows_ok(p.M) && p.total_rows >= DL_CFG_WGMMA_MIN_ROWS && p.K % NF4_BLOCK == 0 &&
              (uintptr_t)p.x % 16 == 0 &&  // dlw_x_kernel's 16-byte copies
              (size_t)(p.total_rows / 64) <= DL_MAX_COUNTERS && (int64_t)DLW_XBLOCK_BYTES * (p.K / NF4_BLOCK) < (1ll << 31);
    for (int g = 0; ok && g < p.G; g++)
        ok = p.nf4[g].tiled && p.nf4[g].double_quant == p.nf4[0].double_quant &&
             (p.row_start[g + 1] - p.row_start[g]) % 64 == 0 &&
             (int64_t)(p.row_start[g + 1] - p.row_start[g]) * (p.K / NF4_BLOCK) < (1ll << 31);
    return ok;
}
#endif

#ifndef DL_CFG_WGMMA_SPLIT_COST
#define DL_CFG_WGMMA_SPLIT_COST 1  // 1: splits by the cost model below, 0: the fewest for a wave (lab variant wgleast)
#endif
// The k splits. The kernel's registers hold DL_CFG_WGMMA_BLOCKS_SM blocks an SM, a wave of that many x SMs blocks.
// The fewest splits that make at least a wave (with at least 2 blocks of k a split) can leave a second wave almost
// empty (7B's down and o: 56 slabs, 12 splits, 672 blocks for a wave of 660 on 132 SMs), whose few blocks then take
// as long as the first wave's. So the splits are those of least modelled time: per wave, the most blocks an SM runs
// (at least DLW_COST_LATENCY_BLOCKS: fewer do not hide the latencies, so they take as long), times a block's k-blocks
// plus DLW_COST_BLOCK_FIXED for its prologue and the split sum; ties go to fewer splits (fewer partials). 7B at 132
// SMs: gate/up 2 splits as the fewest for a wave, q/k/v 7, o 8, down 9 where that makes 10, 12 and 12. A layer at 64
// rows took 0.252 against 0.273 ms, a step at batch 64 10.03 against 10.55-10.59 ms (session 12, call 2).
constexpr int DLW_COST_LATENCY_BLOCKS = 4, DLW_COST_BLOCK_FIXED = 3;
static int dlw_splits(int total_rows, int K) {
    const int slabs = total_rows / 64, nkb = K / NF4_BLOCK, sms = cuda_sm_count(), wave = DL_CFG_WGMMA_BLOCKS_SM * sms;
    const int most = std::max(1, std::min(nkb / 2, DLW_MAX_SPLITS));
    if (!DL_CFG_WGMMA_SPLIT_COST) return std::min((wave + slabs - 1) / slabs, most);
    int best = 1;
    int64_t best_cost = INT64_MAX;
    for (int s = 1; s <= most; s++) {
        int64_t waves_cost = 0;
        for (int64_t left = (int64_t)slabs * s; left > 0; left -= wave)
            waves_cost += std::max<int64_t>((std::min<int64_t>(left, wave) + sms - 1) / sms, DLW_COST_LATENCY_BLOCKS);
        const int64_t cost = waves_cost * ((nkb + s - 1) / s + DLW_COST_BLOCK_FIXED);
        if (cost < best_cost) best = s, best_cost = cost;
    }
    return best;
}
static int dlw_ax_slabs(int ax_cols) { return DL_CFG_WGMMA_AX ? (ax_cols + 63) / 64 : 0; }
static size_t dlw_partial_floats(int total_rows, int K, int ax_cols) {
    return (size_t)(total_rows / 64 + dlw_ax_slabs(ax_cols)) * dlw_splits(total_rows, K) * 64 * 64;
}
static size_t dlw_xw_bytes(int K) { return dl_align((size_t)64 * K * sizeof(bf16)); }

// dlw_x_kernel's cut: 4 m-tiles of 16 rows (the path's 64), ax's columns in tiles of 32 (one when there is no ax),
// and k split so that the grid is about two blocks an SM (these blocks are latency: a few 64-blocks each), at most
// DLW_X_MAX_SPLITS partials a tile for its last block to add; more where a split's rows would not fit in shared memory.
struct DlwXPlan { int splits = 1, n_tiles = 1, ld = 0; size_t smem = 0; };
constexpr int DLW_X_MAX_SPLITS = 32;
constexpr size_t DLW_X_MAX_SMEM = 200 << 10;
static DlwXPlan dlw_x_plan(int K, int N) {
    DlwXPlan plan;
    const int nkb = K / NF4_BLOCK;
    plan.n_tiles = N > 0 ? (N + DLW_X_COLS - 1) / DLW_X_COLS : 1;
    const int tiles = 64 / DLW_X_ROWS * plan.n_tiles;
    plan.splits = std::max(1, std::min(std::min(nkb, DLW_X_MAX_SPLITS), (2 * cuda_sm_count() + tiles - 1) / tiles));
    for (;; plan.splits++) {
        plan.ld = (nkb + plan.splits - 1) / plan.splits * NF4_BLOCK + 8;  // the most 64-blocks a split has, and a pad
        plan.smem = (size_t)(DLW_X_ROWS + (N > 0 ? DLW_X_COLS : 0)) * plan.ld * sizeof(bf16);
        if (plan.smem <= DLW_X_MAX_SMEM || plan.splits >= nkb) return plan;
    }
}
static size_t dlw_x_partial_floats(int K, int N) {
    const DlwXPlan plan = dlw_x_plan(K, N);
    return N > 0 && plan.splits > 1 ? (size_t)64 / DLW_X_ROWS * plan.n_tiles * plan.splits * DLW_X_ROWS * DLW_X_COLS : 0;
}

#if DL_CFG_WGMMA
// dlw_x_kernel for x [M, K]: xw, and with ax_rows (the adapters' rows, as dl_forward_pass gathers them for x A^T)
// ws.ax too.
static void dlw_x_launch(const bf16* x, int M, int K, const DecodeParams* ax_rows, int R, const DlWorkspace& ws,
                         cudaStream_t stream) {
    DlwXParams p;
    p.x = x;
    p.M = M;
    p.K = K;
    p.xw = ws.xw;
    if (ax_rows) {
        p.N = ax_rows->total_rows;
        p.R = R;
        for (int a = 0; a < ax_rows->G; a++) p.A[a] = ax_rows->w[a];
        p.ax = ws.ax;
    }
    const DlwXPlan plan = dlw_x_plan(K, p.N);
    p.partials = ws.partials;
    p.counters = ws.counters;
    p.splits = plan.splits;
    p.n_tiles = plan.n_tiles;
    p.ld = plan.ld;
    static size_t opted_in = 48 << 10;
    if (plan.smem > opted_in) {
        cudaCheck(cudaFuncSetAttribute(dlw_x_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)plan.smem));
        opted_in = plan.smem;
    }
    launch_dependent(dlw_x_kernel, dim3((unsigned)plan.splits, 64 / DLW_X_ROWS, (unsigned)plan.n_tiles), dim3(DLW_X_THREADS),
                     plan.smem, stream, p);
}

// the wgmma kernel, once dlw_x_launch has written xw
static void dlw_launch(DecodeParams p, const DlWorkspace& ws, cudaStream_t stream) {
    const int dq = p.nf4[0].double_quant ? 1 : 0;  // every linear of the group alike (dlw_params_ok)
    void (*kernel)(DecodeParams) = dq ? dlw_kernel<true> : dlw_kernel<false>;
    static bool opted_in[2] = {false, false};
    if (!opted_in[dq]) {
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, DLW_STAGES * DLW_XBLOCK_BYTES));
        opted_in[dq] = true;
    }
    p.xw = ws.xw;
    p.splits = dlw_splits(p.total_rows, p.K);
    p.partials = ws.partials;
    p.counters = ws.counters;
    launch_dependent(kernel, dim3((unsigned)((p.total_rows / 64 + p.ax_slabs) * p.splits)), dim3(DLW_THREADS),
                     DLW_STAGES * DLW_XBLOCK_BYTES, stream, p);
}
#endif

// The partial sums (floats) a launch of exactly M rows needs: the main kernel's plan and the adapters' x A^T.
static size_t dl_partial_floats(const LoraLinearGpu* linears, int G, int R, int M) {
    const int in = (int)linears[0].base->in, adapted = dl_adapted(linears, G);
    const bool nf4 = linears[0].base->format == LinearFormat::NF4;
    const Dl4Group group = dl4_group(G, [&](int g) {
        return std::make_pair((int)linears[g].base->out, linears[g].base->nf4.default_code);
    });
    const DlPlan main_plan = dl_plan(nf4, dl_total_rows(linears, G), in, M);
    size_t partials = main_plan.partial_floats;
    if (nf4 && in % NF4_BLOCK == 0)
        partials = std::max(partials, dl4_plan(dl_total_rows(linears, G), in, M, group).partial_floats);
    if (main_plan.splits > 1 && (size_t)main_plan.tiles > DL_MAX_COUNTERS) dl_fail("too many row tiles to split");
    if (adapted > 0) partials = std::max(partials, dl_plan(false, adapted * R, in, M).partial_floats);
    if (dlw_shapes_ok(linears, G) && dlw_rows_ok(M)) {
        partials = std::max(partials, dlw_partial_floats(dl_total_rows(linears, G), in, adapted * R));
        partials = std::max(partials, dlw_x_partial_floats(in, DL_CFG_WGMMA_X_AX ? adapted * R : 0));
    }
    return partials;
}

// The workspace of a launch of `rows` rows, or (decode_linear_workspace_bytes) of every row count up to it: plans do
// not grow monotonically with M. A launch runs passes of at most DECODE_LINEAR_MAX_M rows, whole ones and the rest.
static size_t dl_sizes(const LoraLinearGpu* linears, int G, int R, int rows, bool every_m_up_to_rows) {
    size_t partials = 0;
    auto need = [&](int M) { partials = std::max(partials, dl_partial_floats(linears, G, R, M)); };
    if (every_m_up_to_rows) {
        for (int M = 1; M <= std::min(rows, DECODE_LINEAR_MAX_M); M++) need(M);
    } else {
        need(std::min(rows, DECODE_LINEAR_MAX_M));
        if (rows > DECODE_LINEAR_MAX_M && rows % DECODE_LINEAR_MAX_M != 0) need(rows % DECODE_LINEAR_MAX_M);
    }
    const size_t xw = dlw_shapes_ok(linears, G) ? dlw_xw_bytes((int)linears[0].base->in) : 0;
    return DL_MAX_COUNTERS * sizeof(int) + dl_ax_bytes(R, rows) + xw + partials * sizeof(float);
}

bool decode_linear_wgmma_path(const LoraLinearGpu* linears, int G, int M) {
    return G >= 1 && G <= DECODE_LINEAR_MAX_G && dlw_shapes_ok(linears, G) && dlw_rows_ok(std::min(M, DECODE_LINEAR_MAX_M)) &&
           (size_t)(dl_total_rows(linears, G) / 64) <= DL_MAX_COUNTERS;
}

size_t decode_linear_workspace_bytes(const LoraLinearGpu* linears, int G, int R, int max_M) {
    if (G < 1 || G > DECODE_LINEAR_MAX_G) dl_fail("a group has 1 to 3 linears");
    size_t bytes = 0;
    bool mixed = false;
    for (int g = 1; g < G; g++) mixed |= linears[g].base->format != linears[0].base->format;
    if (mixed)  // each linear on its own (see decode_linear_forward)
        for (int g = 0; g < G; g++) bytes = std::max(bytes, dl_sizes(linears + g, 1, R, max_M, true));
    else
        bytes = dl_sizes(linears, G, R, max_M, true);
    return bytes;
}

static DlWorkspace dl_workspace(const LoraLinearGpu* linears, int G, int R, int M, void* workspace,
                                size_t workspace_bytes) {
    const size_t need = dl_sizes(linears, G, R, M, false);
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
    at += dl_ax_bytes(R, M);
    if (dlw_shapes_ok(linears, G)) {  // the wgmma path's permuted x, before the partials (its size is M's alone)
        ws.xw = (bf16*)at;
        at += dlw_xw_bytes((int)linears[0].base->in);
    }
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

// A programmatic dependent launch of a decode kernel: its blocks may start while the kernel before them finishes
// (each kernel waits, with grid_dependency_wait, before it reads what that kernel wrote).
static void dl_launch_dependent(void (*kernel)(DecodeParams), dim3 grid, int threads, size_t smem,
                                const DecodeParams& p, cudaStream_t stream) {
    launch_dependent(kernel, grid, dim3(threads), smem, stream, p);
}

// One launch of the tensor-core kernel for NT n-tiles: shared memory above 48 KB is opted into once per
// instantiation, and the launch is a programmatic dependent launch (see the kernel).
template <bool NF4, int NT>
static void dl_launch_mma_nt(const DecodeParams& p, dim3 grid, cudaStream_t stream) {
    typedef DlShape<NF4, NT> Sh;
    const size_t smem = (size_t)Sh::S * (Sh::W_UNITS + Sh::X_UNITS) * sizeof(uint4);
    static bool opted_in = false;
    if (!opted_in) {  // and the whole L1 as shared memory, so that several blocks fit on an SM
        cudaCheck(cudaFuncSetAttribute(decode_linear_mma_kernel<NF4, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)smem));
        cudaCheck(cudaFuncSetAttribute(decode_linear_mma_kernel<NF4, NT>,
                                       cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
        opted_in = true;
    }
    dl_launch_dependent(decode_linear_mma_kernel<NF4, NT>, grid, DL_THREADS, smem, p, stream);
}

// Whether the streaming NF4 kernel can read these weights and x: whole 64-blocks per row, 16-row tiles, 16-byte
// aligned codes, 16-byte aligned x; the fold tables assume the group shares the standard NF4 code.
static bool dl4_shapes_ok(const DecodeParams& p) {
    if (p.K <= 0 || p.K % NF4_BLOCK != 0 || (uintptr_t)p.x % 16 != 0) return false;
    for (int g = 0; g < p.G; g++) {
        if ((p.row_start[g + 1] - p.row_start[g]) % 16 != 0 || (uintptr_t)p.nf4[g].packed % 16 != 0) return false;
        if ((DL4_FOLD || DL4_PAIRS) && !p.nf4[g].default_code) return false;  // the lab variants' tables
    }
    return true;
}
static bool dl4_ok(const DecodeParams& p) {  // the kernel's walk counts (row, block) pairs in an int
    return DL_CFG_V4 != 0 && p.total_rows / 16 <= (int)DL_MAX_COUNTERS &&
           (int64_t)p.total_rows * (p.K / NF4_BLOCK) < INT32_MAX && (!DL4_FULL || p.K / NF4_BLOCK % DL4_CH == 0) &&
           dl4_shapes_ok(p);
}

static void dl4_launch(DecodeParams p, const DlWorkspace& ws, cudaStream_t stream) {
    const Dl4Group group = dl4_group(p.G, [&](int g) {
        return std::make_pair(p.row_start[g + 1] - p.row_start[g], p.nf4[g].default_code);
    });
    const Dl4Plan plan = dl4_plan(p.total_rows, p.K, p.M, group);
    p.stream_rows = plan.stream_rows;
    p.partials = ws.partials;
    p.counters = ws.counters;
    dl_launch_dependent(plan.kernel.fn, dim3((unsigned)plan.grid), DL4_THREADS, plan.kernel.smem, p, stream);
}

template <bool NF4>
static void dl_launch_mma(DecodeParams p, const DlWorkspace& ws, cudaStream_t stream) {
    DlPlan plan = dl_plan(NF4, p.total_rows, p.K, p.M);
    p.splits = plan.splits;
    p.chunks_per_split = plan.chunks_per_split;
    p.partials = ws.partials;
    p.counters = ws.counters;
    dim3 grid(plan.tiles, plan.splits);
    dl_with_n_tiles(plan.NT, [&](auto nt) { dl_launch_mma_nt<NF4, nt()>(p, grid, stream); });
}

static void dl_launch(const DecodeParams& p, bool nf4, bool simple, const DlWorkspace& ws, cudaStream_t stream) {
    if (!simple && nf4 && dl4_ok(p)) {
        dl4_launch(p, ws, stream);
        return;
    }
    for (int g = 0; nf4 && g < p.G; g++)
        if (p.nf4[g].tiled) dl_fail("NF4 weights in decode-tile order need the streaming kernel (in % 64 == 0, 16-row tiles)");
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

// One pass of at most 64 rows: ax = x A^T for the adapted linears (bf16 weights, no adapter), then the group. On the
// wgmma path (32 < M <= 64) dlw_x_kernel computes ax with x in wgmma's order.
static void dl_forward_pass(const LoraLinearGpu* linears, int G, const bf16* x, int M, int R, float scale,
                            bf16* const* y, const DlWorkspace& ws, bool simple, MatmulContext* ctx,
                            cudaStream_t stream) {
    const int in = (int)linears[0].base->in, adapted = dl_adapted(linears, G);
    const bool nf4 = linears[0].base->format == LinearFormat::NF4;
    DecodeParams params;
    params.G = G;
    params.M = M;
    params.K = in;
    params.R = R;
    params.scale = scale;
    params.x = x;
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
#if DL_CFG_WGMMA
    const bool wgmma = !simple && nf4 && ws.xw && dlw_params_ok(params);
#else
    const bool wgmma = false;
#endif
    DecodeParams ax;  // x A^T as a launch of its own: the adapters' A's are its bf16 weights
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
    // the wgmma kernel or dlw_x_kernel computes ax (their 16-byte loads of A's rows)
    bool A_aligned = true;
    for (int a = 0; a < ax.G; a++) A_aligned &= (uintptr_t)ax.w[a] % 16 == 0;
#if DL_CFG_WGMMA
    const bool ax_in_kernel = wgmma && DL_CFG_WGMMA_AX && adapted > 0 && A_aligned &&
                              (size_t)(params.total_rows / 64 + dlw_ax_slabs(adapted * R) + 2) <= DL_MAX_COUNTERS;
#else
    const bool ax_in_kernel = false;
#endif
    const bool ax_with_x = wgmma && !ax_in_kernel && DL_CFG_WGMMA_X_AX && adapted > 0 && A_aligned;
    if (ax_in_kernel) {
        for (int a = 0; a < ax.G; a++) params.A[a] = ax.w[a];
        params.ax_cols = adapted * R;
        params.ax_slabs = dlw_ax_slabs(params.ax_cols);
        params.ax_out = ws.ax;
    }
    if (adapted > 0 && !ax_with_x && !ax_in_kernel) {
        if (!simple && dl_ax_ok(ax)) {  // few rows: the latency-bound GEMM in one programmatic dependent launch
            dl_with_ax_rows(M, [&](auto mr) {
                dl_launch_dependent(decode_lora_ax_kernel<mr()>, dim3((unsigned)ax.total_rows), DL_AX_WARPS * 32, 0,
                                    ax, stream);
            });
        } else if (ctx) {  // cuBLASLt, as the training forward computes x A^T: one GEMM when the A copies are consecutive
            // (On the wgmma path, forked onto a second stream and joined before dlw_kernel, so that the GEMM and its
            // reduction ran beside dlw_x_kernel, a step at batch 64 took 9.552-9.573 ms against 9.506-9.517 on the one
            // stream, three runs each alternated; session 16, call 1. Not kept.)
            bool consecutive = true;
            for (int a = 1; a < ax.G; a++) consecutive &= ax.w[a] == ax.w[0] + (size_t)a * R * in;
            if (consecutive)
                matmul(ctx, ws.ax, false, adapted * R, x, false, in, ax.w[0], true, in, M, adapted * R, in, 1.0f, 0.0f,
                       nullptr, stream);
            else
                for (int a = 0; a < ax.G; a++)
                    matmul(ctx, ws.ax + a * R, false, adapted * R, x, false, in, ax.w[a], true, in, M, R, in, 1.0f, 0.0f,
                           nullptr, stream);
        } else {
            dl_launch(ax, false, simple, ws, stream);
        }
    }
    if (adapted > 0) {
        params.ax = ws.ax;
        params.ld_ax = adapted * R;
    }
#if DL_CFG_WGMMA
    if (wgmma) {
        dlw_x_launch(x, M, in, ax_with_x ? &ax : nullptr, R, ws, stream);
        dlw_launch(params, ws, stream);
        return;
    }
#endif
    dl_launch(params, nf4, simple, ws, stream);
}

// bf16 weights through cuBLASLt, as the training forward computes them (kernels/matmul.cu's lora_linear_forward:
// the base GEMM with its bias, rounded, then + scale ax B^T, rounded): the rounding of the decode kernel's epilogue,
// and at every M from 1 to 64 faster than the v3 kernel on a 7B layer (dev/cuda/decode_linear.cu, "bf16 copy"
// rows: 0.21-0.23 ms against 0.22-0.45). ax goes to the workspace's ax region. The adapters' small GEMMs (x A^T
// and ax B^T, 11 launches a layer) take 0.064 of a 7B layer's 0.22 ms at M 64; one kernel a group for the ax B^T
// term was slower than cuBLASLt's GEMMs (0.229 against 0.217 ms, session 6), so they stay GEMMs.
static bool dl_bf16_cublas(const LoraLinearGpu* linears, int G, const bf16* x, int M, int R, float scale,
                           bf16* const* y, const DlWorkspace& ws, MatmulContext* ctx, cudaStream_t stream) {
    bool all_bf16 = DL_CFG_BF16_CUBLAS != 0 && ctx != nullptr;
    for (int g = 0; all_bf16 && g < G; g++) all_bf16 = linears[g].base->format == LinearFormat::BF16;
    if (!all_bf16) return false;
    // lora_linear_forward asks for a rank even when no linear has an adapter (then only the base GEMMs run, and R is
    // never read); dl_forward checks R >= 1 wherever there is one, and ws.ax is sized for max(R, 1)
    lora_linear_forward(ctx, linears, G, x, M, std::max(R, 1), scale, y, ws.ax, nullptr, stream);
    return true;
}

static void dl_forward(const LoraLinearGpu* linears, int G, const bf16* x, int M, int R, float scale, bf16* const* y,
                       void* workspace, size_t workspace_bytes, bool simple, MatmulContext* ctx, cudaStream_t stream) {
    if (G < 1 || G > DECODE_LINEAR_MAX_G) dl_fail("a group has 1 to 3 linears");
    if (M < 1) return;
    for (int g = 0; g < G; g++) {
        if (linears[g].base->in != linears[0].base->in) dl_fail("the linears of a group must read the same x");
        if (linears[g].A && (!linears[g].B || R < 1)) dl_fail("an adapter needs A, B and a rank R >= 1");
    }
    for (int g = 1; g < G; g++)
        if (linears[g].base->format != linears[0].base->format) {  // a mixed group: one linear at a time
            for (int i = 0; i < G; i++)
                dl_forward(linears + i, 1, x, M, R, scale, y + i, workspace, workspace_bytes, simple, ctx, stream);
            return;
        }
    DlWorkspace ws = dl_workspace(linears, G, R, M, workspace, workspace_bytes);
    // bf16 weights go to cuBLASLt at every M: in 64-row passes of the v3 kernel, a decode step of 128 rollouts on the
    // bf16 copy read every weight twice and took 26 ms against 8 at 64 rows (train_grpo, 16 x 8, session 9); with
    // one GEMM a group the step takes 10.2 ms (bench_generate, M 128)
    if (!simple && dl_bf16_cublas(linears, G, x, M, R, scale, y, ws, ctx, stream)) return;
    const int in = (int)linears[0].base->in;
    for (int m0 = 0; m0 < M; m0 += DECODE_LINEAR_MAX_M) {
        bf16* y_pass[DECODE_LINEAR_MAX_G];
        for (int g = 0; g < G; g++) y_pass[g] = y[g] + (size_t)m0 * linears[g].base->out;
        dl_forward_pass(linears, G, x + (size_t)m0 * in, std::min(DECODE_LINEAR_MAX_M, M - m0), R, scale, y_pass, ws,
                        simple, ctx, stream);
    }
}

void decode_linear_forward(const LoraLinearGpu* linears, int G, const bf16* x, int M, int R, float scale,
                           bf16* const* y, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                           MatmulContext* ctx) {
    dl_forward(linears, G, x, M, R, scale, y, workspace, workspace_bytes, false, ctx, stream);
}

void decode_linear_forward_simple(const LoraLinearGpu* linears, int G, const bf16* x, int M, int R, float scale,
                                  bf16* const* y, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    dl_forward(linears, G, x, M, R, scale, y, workspace, workspace_bytes, true, nullptr, stream);
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
