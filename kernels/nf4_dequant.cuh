// nf4_dequant.cuh: launcher that dequantizes one NF4 weight (bitsandbytes layout, in GPU memory) to bf16, bit-identical to nf4_view_dequantize.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "quant/nf4.h"

// out [t.rows, t.cols] = bf16(code[q] * absmax) for every element, exactly as nf4_view_dequantize computes it on
// the CPU (and bitsandbytes' dequantize_4bit on the GPU). Every pointer of t (packed, absmax_q, nested_absmax or
// absmax_f32, code, nested_code) and out must be device memory: model/weights.h's weights_from_buffer makes such
// views of a GPU copy of the planned weight buffer. Any shape and alignment work; the fast path needs packed
// 4-byte aligned and out 16-byte aligned (cudaMalloc and the weight plan give both). Nothing is allocated.
void nf4_dequantize_gpu(__nv_bfloat16* out, const NF4View& t, cudaStream_t stream);

// Bytes nf4_dequantize_gpu moves for t: the packed codes and block scales read once, the bf16 weight written once.
double nf4_dequantize_bytes(const NF4View& t);
