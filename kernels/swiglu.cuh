// swiglu.cuh: launchers of the SwiGLU activation silu(gate) * up, forward and backward to gate and up.
#pragma once
#include <cstddef>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

// out [n] = round(a * u) with a = round(silu(g)) in fp32, as HF's bf16 act_fn(gate_proj(x)) * up_proj(x).
// a is not stored: the backward recomputes it bit for bit from g. n (= N*I) must be a multiple of 8.
void swiglu_forward(__nv_bfloat16* out, const __nv_bfloat16* g, const __nv_bfloat16* u, size_t n,
                    cudaStream_t stream);

// dg = round(dout * u * silu'(g)), du = round(dout * a), written (not accumulated: gate and up feed only this op).
// dg may be g and du may be u, so the backward can overwrite the saved gate and up in place.
void swiglu_backward(__nv_bfloat16* dg, __nv_bfloat16* du, const __nv_bfloat16* dout, const __nv_bfloat16* g,
                     const __nv_bfloat16* u, size_t n, cudaStream_t stream);
