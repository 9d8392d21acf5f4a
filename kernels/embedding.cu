// embedding.cu: the token embedding gather out[n] = embed[tokens[n]], bf16 rows copied in 16-byte chunks.
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda_common.cuh"
#include "kernels/embedding.cuh"

// ---------------------------------------------------------------------------------------------------------------
// CUDA kernels

// One thread per 16-byte chunk (8 bf16) of the output: neighbouring threads copy neighbouring chunks of one row,
// so both the gathered read and the write are coalesced whatever the token order.
__global__ void embedding_forward_kernel(uint4* out, const int32_t* tokens, const uint4* embed, int N, int C8) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * C8) return;
    size_t n = idx / C8, chunk = idx % C8;
    out[idx] = embed[(size_t)tokens[n] * C8 + chunk];
}

// ---------------------------------------------------------------------------------------------------------------
// kernel launchers

void embedding_forward(__nv_bfloat16* out, const int32_t* tokens, const __nv_bfloat16* embed, int N, int C,
                       cudaStream_t stream) {
    if (C % 8 != 0) {
        fprintf(stderr, "error: embedding_forward needs C a multiple of 8 (16-byte rows), got C = %d\n", C);
        exit(EXIT_FAILURE);
    }
    if (N == 0) return;
    const int block_size = 256;
    size_t total = (size_t)N * (C / 8);
    unsigned grid = (unsigned)((total + block_size - 1) / block_size);
    embedding_forward_kernel<<<grid, block_size, 0, stream>>>((uint4*)out, tokens, (const uint4*)embed, N, C / 8);
    cudaCheck(cudaGetLastError());
}
