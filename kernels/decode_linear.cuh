// decode_linear.cuh: launchers of the decode-time linear layer: y [M, out] = x [M, in] W^T (+ bias) (+ LoRA) for a few sequences decoding one token each, every weight byte read once and NF4 dequantized in registers.
#pragma once
#include <cstddef>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/matmul.cuh"  // LoraLinearGpu: the base weight (bf16 or NF4 device views), bias and bf16 A, B copies

// Rows of x one pass handles; larger M runs in passes of 64 (each pass reads the weights again).
constexpr int DECODE_LINEAR_MAX_M = 64;
// Linears one call may group (q, k, v share x; so do gate and up).
constexpr int DECODE_LINEAR_MAX_G = 3;

// The 8-row n-tiles a call for M rows computes (1, 2, 4, 6 or 8: the kernel's instantiations; M > 64 runs in passes
// of 64): its cost at small M grows with this, not with M.
int decode_linear_n_tiles(int M);

// A group of G linears reading the same x (every linears[g].base->in equal), each with its own output:
//   y[g] [M, out_g] = round(round(x W_g^T + bias_g) + scale * round_bf16(x A_g^T) B_g^T)
// the two roundings of the training path (kernels/matmul.cu's lora_linear_forward and PEFT's bf16 model): the base
// output rounded to bf16, the adapter term added in fp32 and the sum rounded once. x A^T is rounded to bf16 as in
// training (it is the operand of the second tensor-core product). A linear with A == nullptr has no adapter; dA, dB
// are not used. NF4 weights give exactly nf4_view_dequantize's bf16 values. All pointers on the device; x [M, in]
// and each y[g] [M, out_g] are dense row-major. Results do not depend on timing (the split-K partial sums are added
// in a fixed order), so two calls on the same inputs give the same bits.
//
// workspace: device memory of at least decode_linear_workspace_bytes(linears, G, R, max_M) for every M <= max_M,
// set to zero ONCE after allocation (cudaMemset); every call leaves its tile counters zero again. The counters sit
// at its start whatever the group, so one workspace of the largest size over a model's groups serves them all. One
// stream at a time may use a workspace. Nothing is allocated.
size_t decode_linear_workspace_bytes(const LoraLinearGpu* linears, int G, int R, int max_M);
// The counters at the workspace's start: DECODE_LINEAR_COUNTERS ints (zero between calls).
constexpr int DECODE_LINEAR_COUNTERS = 4096;
// Whether a call of M rows runs some of its rows through the wgmma path (NF4 in decode-tile order, every linear a
// multiple of 64 rows, in % 64 == 0, a pass of 33 to 64 rows; built for sm_90a): its sums are then in another order
// than the streaming kernel's, so its bits differ from the row-major codes' in the last place (tests).
bool decode_linear_wgmma_path(const LoraLinearGpu* linears, int G, int M);
// ctx: with a cuBLASLt context, the adapters' x A^T (a GEMM of only G*R columns over a long k, which the decode
// kernel's split-K handles poorly) runs through matmul, as the training forward computes it; without one, through
// the decode kernel with the A matrices as bf16 weights. Both round x A^T to bf16 once. With a context, a group of
// bf16 weights runs wholly through cuBLASLt (lora_linear_forward), faster than the decode kernel there.
void decode_linear_forward(const LoraLinearGpu* linears, int G, const __nv_bfloat16* x, int M, int R, float scale,
                           __nv_bfloat16* const* y, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                           MatmulContext* ctx = nullptr);

// The same result from the simple CUDA-core kernel (one warp per output row, each weight dequantized on its own):
// the path decode_linear_forward takes for shapes its tensor-core kernel cannot read (in not a multiple of 32 for
// NF4 or 8 for bf16, an out_g not a multiple of 16, unaligned weights); exposed for the lab and the tests.
void decode_linear_forward_simple(const LoraLinearGpu* linears, int G, const __nv_bfloat16* x, int M, int R,
                                  float scale, __nv_bfloat16* const* y, void* workspace, size_t workspace_bytes,
                                  cudaStream_t stream);

// The fewest bytes a call must move: every weight byte (NF4 codes and block scales, or bf16), bias, A and B read
// once, x read once, y written once. The memory roofline of a call is this over the copy bandwidth.
double decode_linear_bytes(const LoraLinearGpu* linears, int G, int M, int R);
