// nf4_tile.cu: rewrites an NF4 weight in GPU memory into the decode-tile order (the same bytes, permuted as quant/nf4.cpp's nf4_tile does on the CPU).
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda_common.cuh"
#include "kernels/nf4_tile.cuh"

// One thread per 16-byte piece of the tiled codes: unit u = (tile, block of k), lane L = 4 gq + c: 8 bytes of row
// gq then 8 of row gq + 8, k c*16 .. c*16+15 of the block. Lanes 0..15 also move the scale byte of row L.
__global__ void nf4_tile_kernel(uint8_t* packed_out, uint8_t* absmax_out, const uint8_t* packed, const uint8_t* absmax,
                                int64_t units, int64_t nkb, int64_t row_bytes) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= units * 32) return;
    const int64_t unit = i / 32, tile = unit / nkb, kb = unit % nkb;
    const int lane = (int)(i % 32);
    const int64_t row = tile * 16 + lane / 4;
    const uint8_t* src = packed + row * row_bytes + kb * 32 + (lane % 4) * 8;
    const uint2 lo = *reinterpret_cast<const uint2*>(src), hi = *reinterpret_cast<const uint2*>(src + 8 * row_bytes);
    *reinterpret_cast<uint4*>(packed_out + i * 16) = make_uint4(lo.x, lo.y, hi.x, hi.y);
    if (absmax && lane < 16) absmax_out[unit * 16 + lane] = absmax[(tile * 16 + lane) * nkb + kb];
}

size_t nf4_tile_scratch_bytes(const NF4View& t) {
    return (size_t)(t.numel() / 2) + (t.double_quant ? (size_t)t.num_blocks() : 0);
}

void nf4_tile_gpu(NF4View* t, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
    if (t->tiled) return;
    if (!nf4_tile_ok(t->rows, t->cols) || scratch_bytes < nf4_tile_scratch_bytes(*t)) {
        fprintf(stderr, "error: nf4_tile_gpu: a [%lld, %lld] NF4 weight cannot be tiled (rows %% 16, cols %% 64 and "
                "%zu scratch bytes needed, %zu given)\n", (long long)t->rows, (long long)t->cols,
                nf4_tile_scratch_bytes(*t), scratch_bytes);
        exit(EXIT_FAILURE);
    }
    const size_t code_bytes = (size_t)(t->numel() / 2);
    uint8_t* codes_copy = (uint8_t*)scratch;
    uint8_t* absmax_copy = t->double_quant ? codes_copy + code_bytes : nullptr;
    cudaCheck(cudaMemcpyAsync(codes_copy, t->packed, code_bytes, cudaMemcpyDeviceToDevice, stream));
    if (absmax_copy)
        cudaCheck(cudaMemcpyAsync(absmax_copy, t->absmax_q, (size_t)t->num_blocks(), cudaMemcpyDeviceToDevice, stream));
    const int64_t nkb = t->cols / NF4_BLOCK, units = t->rows / 16 * nkb;
    const int threads = 256;
    nf4_tile_kernel<<<(unsigned)((units * 32 + threads - 1) / threads), threads, 0, stream>>>(
        const_cast<uint8_t*>(t->packed), const_cast<uint8_t*>(t->absmax_q), codes_copy, absmax_copy, units, nkb,
        t->cols / 2);
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaStreamSynchronize(stream));  // the scratch is free again
    t->tiled = true;
}
