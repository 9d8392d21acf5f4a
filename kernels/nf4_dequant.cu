// nf4_dequant.cu: NF4 (bitsandbytes, double-quantized absmax) to bf16 on the GPU, bit-identical to the CPU's nf4_view_dequantize.
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda_common.cuh"
#include "kernels/nf4_dequant.cuh"

// ---------------------------------------------------------------------------------------------------------------
// CUDA kernels

// The block scale, rounded exactly as bitsandbytes rounds it: dequantize_blockwise writes nested_code * absmax2
// as fp32, and `absmax += offset` adds in a separate pass. __fmul_rn/__fadd_rn are never contracted into an FMA
// (which would round once and differ in the last bit). nested_code comes from shared memory.
// block is the row-major block number; q_at is where its 8-bit scale sits in absmax_q (block itself, except in
// the decode-tile order).
__device__ __forceinline__ float nf4_block_scale(const NF4View& t, const float* nested_code, int64_t block,
                                                 int64_t q_at) {
    if (!t.double_quant) return t.absmax_f32[block];
    float scaled = __fmul_rn(nested_code[t.absmax_q[q_at]], t.nested_absmax[block / NF4_NESTED_BLOCK]);
    return __fadd_rn(scaled, t.nested_offset);
}
__device__ __forceinline__ float nf4_block_scale(const NF4View& t, const float* nested_code, int64_t block) {
    return nf4_block_scale(t, nested_code, block, block);
}

// One weight: code[q] * absmax in fp32, rounded to nearest even bf16 (torch's .to(bfloat16)).
__device__ __forceinline__ __nv_bfloat16 nf4_value(const float* code, unsigned q, float absmax) {
    return __float2bfloat16_rn(__fmul_rn(code[q], absmax));
}

// The 16 NF4 values and the 256-entry nested map in shared memory: a weight's 4-bit index then costs one
// shared load, and 16 floats sit in 16 different banks, so a warp's lookups never conflict.
__device__ __forceinline__ void nf4_load_tables(const NF4View& t, float* code, float* nested_code) {
    for (int i = threadIdx.x; i < 16; i += blockDim.x) code[i] = t.code[i];
    if (t.double_quant)
        for (int i = threadIdx.x; i < 256; i += blockDim.x) nested_code[i] = t.nested_code[i];
    __syncthreads();
}

// Element i of the packed codes: element 2j is the HIGH nibble of byte j.
__device__ __forceinline__ unsigned nf4_code_at(const uint8_t* packed, int64_t i) {
    uint8_t byte = packed[i / 2];
    return (i % 2 == 0) ? byte >> 4 : byte & 0x0F;
}

// Any shape and alignment: one thread per element. The fallback for views the fast path cannot read.
__global__ void nf4_dequantize_scalar_kernel(__nv_bfloat16* out, NF4View t, int64_t n) {
    __shared__ float code[16];
    __shared__ float nested_code[256];
    nf4_load_tables(t, code, nested_code);
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = nf4_value(code, nf4_code_at(t.packed, i), nf4_block_scale(t, nested_code, i / NF4_BLOCK));
}

// The fast path. The kernel is write-bound (2 bytes out per half byte in), so each thread turns one 4-byte word
// of codes (8 weights) into one 16-byte store, and a warp's stores cover 512 contiguous bytes. Each thread does
// NF4_DQ_UNROLL such chunks, blockDim.x chunks apart (so every load and store stays coalesced), issuing all of
// its loads before the first use to keep several in flight. The 8 threads of one 64-weight block each fetch
// its scale; the repeats hit L1.
constexpr int NF4_DQ_THREADS = 256;
constexpr int NF4_DQ_UNROLL = 4;

__global__ void __launch_bounds__(NF4_DQ_THREADS) nf4_dequantize_kernel(__nv_bfloat16* out, NF4View t, int64_t n) {
    __shared__ float code[16];
    __shared__ float nested_code[256];
    nf4_load_tables(t, code, nested_code);

    int64_t chunks = (n + 7) / 8;
    int64_t first = (int64_t)blockIdx.x * NF4_DQ_UNROLL * blockDim.x + threadIdx.x;
    uint32_t words[NF4_DQ_UNROLL];
    float scales[NF4_DQ_UNROLL];
#pragma unroll
    for (int k = 0; k < NF4_DQ_UNROLL; k++) {
        int64_t c = first + (int64_t)k * blockDim.x;
        words[k] = (c * 8 + 8 <= n) ? __ldg((const uint32_t*)t.packed + c) : 0u;
        scales[k] = (c < chunks) ? nf4_block_scale(t, nested_code, c * 8 / NF4_BLOCK) : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < NF4_DQ_UNROLL; k++) {
        int64_t c = first + (int64_t)k * blockDim.x;
        if (c * 8 + 8 <= n) {
            uint4 packed_out;
            __nv_bfloat16* values = (__nv_bfloat16*)&packed_out;
#pragma unroll
            for (int j = 0; j < 4; j++) {  // little-endian: byte j of the word is packed[4c + j]
                unsigned byte = (words[k] >> (8 * j)) & 0xFFu;
                values[2 * j] = nf4_value(code, byte >> 4, scales[k]);
                values[2 * j + 1] = nf4_value(code, byte & 0x0Fu, scales[k]);
            }
            *(uint4*)(out + c * 8) = packed_out;
        } else if (c < chunks) {  // the last, partial chunk of an n that is not a multiple of 8
            for (int64_t i = c * 8; i < n; i++) out[i] = nf4_value(code, nf4_code_at(t.packed, i), scales[k]);
        }
    }
}

// A view in decode-tile order (quant/nf4.h, nf4_tile): one thread per 16-byte piece of a unit, the 16 weights of
// row gq and the 16 of row gq + 8 that it holds (k c*16 .. c*16+15 of one 64-block), written as two 32-byte runs.
__global__ void __launch_bounds__(NF4_DQ_THREADS) nf4_dequantize_tiled_kernel(__nv_bfloat16* out, NF4View t) {
    __shared__ float code[16];
    __shared__ float nested_code[256];
    nf4_load_tables(t, code, nested_code);
    const int64_t nkb = t.cols / NF4_BLOCK, units = t.rows / 16 * nkb;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= units * 32) return;
    const int64_t unit = i / 32, tile = unit / nkb, kb = unit % nkb;
    const int lane = (int)(i % 32);
    const uint4 piece = __ldg(reinterpret_cast<const uint4*>(t.packed) + i);
    const uint32_t words[4] = {piece.x, piece.y, piece.z, piece.w};
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t row = tile * 16 + lane / 4 + 8 * h;
        const float scale = nf4_block_scale(t, nested_code, row * nkb + kb, unit * 16 + lane / 4 + 8 * h);
        uint4 run[2];
        __nv_bfloat16* values = reinterpret_cast<__nv_bfloat16*>(run);
#pragma unroll
        for (int b = 0; b < 8; b++) {
            const unsigned byte = (words[2 * h + b / 4] >> (8 * (b % 4))) & 0xFFu;
            values[2 * b] = nf4_value(code, byte >> 4, scale);
            values[2 * b + 1] = nf4_value(code, byte & 0x0Fu, scale);
        }
        uint4* dst = reinterpret_cast<uint4*>(out + row * t.cols + kb * NF4_BLOCK + (lane % 4) * 16);
        dst[0] = run[0];
        dst[1] = run[1];
    }
}

// ---------------------------------------------------------------------------------------------------------------
// kernel launchers

void nf4_dequantize_gpu(__nv_bfloat16* out, const NF4View& t, cudaStream_t stream) {
    int64_t n = t.numel();
    if (n <= 0) return;
    if (t.tiled) {  // nf4_tile_gpu only tiles what nf4_tile_ok allows; out must be 16-byte aligned
        if ((uintptr_t)out % 16 != 0) {
            fprintf(stderr, "error: nf4_dequantize_gpu: a tiled NF4 view needs a 16-byte aligned output\n");
            exit(EXIT_FAILURE);
        }
        const int64_t threads = t.rows / 16 * (t.cols / NF4_BLOCK) * 32;
        nf4_dequantize_tiled_kernel<<<(unsigned)((threads + NF4_DQ_THREADS - 1) / NF4_DQ_THREADS), NF4_DQ_THREADS, 0,
                                      stream>>>(out, t);
        cudaCheck(cudaGetLastError());
        return;
    }
    bool aligned = (uintptr_t)t.packed % 4 == 0 && (uintptr_t)out % 16 == 0;
    if (aligned) {
        int64_t chunks = (n + 7) / 8, per_block = (int64_t)NF4_DQ_THREADS * NF4_DQ_UNROLL;
        int64_t blocks = (chunks + per_block - 1) / per_block;
        nf4_dequantize_kernel<<<(unsigned)blocks, NF4_DQ_THREADS, 0, stream>>>(out, t, n);
    } else {
        int64_t blocks = (n + 255) / 256;
        nf4_dequantize_scalar_kernel<<<(unsigned)blocks, 256, 0, stream>>>(out, t, n);
    }
    cudaCheck(cudaGetLastError());
}

double nf4_dequantize_bytes(const NF4View& t) {
    double n = (double)t.numel(), blocks = (double)t.num_blocks();
    double scales = t.double_quant ? blocks + 4.0 * ((t.num_blocks() + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK)
                                   : 4.0 * blocks;
    return (double)((t.numel() + 1) / 2) + scales + 2.0 * n;
}
