// decode_advance.cu: the per-token bookkeeping of batched generation on the GPU (record the drawn tokens, advance positions, count unfinished rows), so a decode step is captured once in a CUDA graph and replayed for every token.
#include "kernels/cuda_common.cuh"
#include "kernels/decode_advance.cuh"

// ------------------------------------------------------------------------------------------------
// CUDA kernels

constexpr int ADVANCE_THREADS = 1024;

__global__ void decode_advance_kernel(int* completions, int stride, const int* slots, int* tokens, int* finished, int* positions,
                                      int* lens, int* steps, const int* prompt_lens, int M, int* unfinished) {
    int open = 0;
    for (int m = threadIdx.x; m < M; m += ADVANCE_THREADS) {
        const int t = steps[m];
        int token = tokens[m];
        completions[(size_t)(slots ? slots[m] : m) * stride + t] = token;
        if (token < 0) {  // no token could be drawn: the host reports it; the row stops here
            finished[m] = 1;
            tokens[m] = 0;
        }
        positions[m] = prompt_lens[m] + t;
        lens[m] = prompt_lens[m] + t + 1;
        steps[m] = t + 1;
        open += finished[m] == 0;
    }
    // a block-wide count of the open rows (integer adds: the order does not matter)
    __shared__ int count;
    if (threadIdx.x == 0) count = 0;
    __syncthreads();
    if (open > 0) atomicAdd(&count, open);
    __syncthreads();
    if (threadIdx.x == 0) *(volatile int*)unfinished = count;
}

// ------------------------------------------------------------------------------------------------
// kernel launchers

void decode_advance(int* completions, int stride, const int* slots, int* tokens, int* finished, int* positions, int* lens, int* steps,
                    const int* prompt_lens, int M, int* unfinished, cudaStream_t stream) {
    if (M <= 0) return;
    decode_advance_kernel<<<1, ADVANCE_THREADS, 0, stream>>>(completions, stride, slots, tokens, finished, positions, lens,
                                                             steps, prompt_lens, M, unfinished);
    cudaCheck(cudaGetLastError());
}
