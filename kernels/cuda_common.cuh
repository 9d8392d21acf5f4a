// cuda_common.cuh: error-check macros for every CUDA, cuBLASLt and NCCL call, shared by kernels, the trainer and the GPU tests.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <utility>

// A failed GPU call leaves the device in an unknown state, so the only honest reaction is to say
// where it failed and stop; out-of-memory gets a hint because it is the failure users can fix.
inline void cuda_check(cudaError_t err, const char* file, int line) {
    if (err == cudaSuccess) return;
    fprintf(stderr, "error: CUDA at %s:%d: %s", file, line, cudaGetErrorString(err));
    if (err == cudaErrorMemoryAllocation)
        fprintf(stderr, " (out of GPU memory: lower the batch, the completion length or the number of generations)");
    fprintf(stderr, "\n");
    exit(EXIT_FAILURE);
}
#define cudaCheck(err) cuda_check((err), __FILE__, __LINE__)

inline void cublas_check(cublasStatus_t status, const char* file, int line) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    fprintf(stderr, "error: cuBLASLt at %s:%d: status %d\n", file, line, (int)status);
    exit(EXIT_FAILURE);
}
#define cublasCheck(status) cublas_check((status), __FILE__, __LINE__)

inline void nccl_check(ncclResult_t result, const char* file, int line) {
    if (result == ncclSuccess) return;
    fprintf(stderr, "error: NCCL at %s:%d: %s\n", file, line, ncclGetErrorString(result));
    exit(EXIT_FAILURE);
}
#define ncclCheck(result) nccl_check((result), __FILE__, __LINE__)

// The current device's multiprocessor count, read once per process (launchers size their grids by it; a process
// drives one device).
inline int cuda_sm_count() {
    static int count = 0;
    if (count == 0) {
        int device = 0;
        cudaCheck(cudaGetDevice(&device));
        cudaCheck(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    }
    return count;
}

#ifdef __CUDACC__
// Programmatic dependent launch (sm_90): a kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization
// may start while the kernel before it still runs, so it can load what no earlier kernel writes (weights, tables)
// early; grid_dependency_wait() then blocks until every earlier kernel has finished and its writes are visible.
// grid_launch_dependents() lets the next such kernel start early; both are no-ops for ordinary launches.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// A programmatic dependent launch of kernel(args...): its blocks may start while the kernel before it in the stream
// finishes, and must call grid_dependency_wait() before they read what that kernel wrote.
template <typename... Params, typename... Args>
inline void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             Args&&... args) {
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
    cudaCheck(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}
#endif
