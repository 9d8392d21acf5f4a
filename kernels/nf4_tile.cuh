// nf4_tile.cuh: launcher that rewrites an NF4 weight in GPU memory from bitsandbytes' row-major order into the decode-tile order (quant/nf4.h, nf4_tile).
#pragma once
#include <cstddef>

#include <cuda_runtime.h>

#include "quant/nf4.h"

// Rewrites t's packed codes and 8-bit block scales in place into the decode-tile order and marks the view tiled.
// Why: the decode kernel (kernels/decode_linear.cu) then reads each warp's work as one contiguous stream, which the
// H200 serves about 1.5x faster than the same bytes gathered 32 at a time from 16 rows (lab, README). Every GPU
// consumer of the view reads either order (nf4_dequantize_gpu, decode_linear_forward). Needs nf4_tile_ok(rows,
// cols); scratch: device memory of at least nf4_tile_scratch_bytes(t). Synchronous on `stream`'s work.
size_t nf4_tile_scratch_bytes(const NF4View& t);
void nf4_tile_gpu(NF4View* t, void* scratch, size_t scratch_bytes, cudaStream_t stream);
