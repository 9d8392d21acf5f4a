// embedding.cuh: launcher of the token embedding gather (bf16 rows of the frozen table; forward only).
#pragma once
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

// out [N, C] = embed [V, C] rows tokens[0..N). Every token must be < V (the caller checked them on the host);
// C must be a multiple of 8 (16-byte rows chunks). All pointers on the device.
void embedding_forward(__nv_bfloat16* out, const int32_t* tokens, const __nv_bfloat16* embed, int N, int C,
                       cudaStream_t stream);
