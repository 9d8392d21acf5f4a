// adamw.cu: torch's AdamW (foreach order of operations, bit-identical to lora/adamw.h) over the flat fp32 LoRA buffers, and clip_grad_norm_'s deterministic global norm and scaling.
#include "kernels/adamw.cuh"

#include <cmath>

#include "kernels/cuda_common.cuh"

// ------------------------------------------------------------------------------------------------------------
// CUDA kernels

// One element, operation by operation as adamw_update: explicit _rn intrinsics so nvcc fuses nothing except
// the three fmas that adamw_update (and torch's CUDA kernels) fuse.
__device__ inline void adamw_element(float& p, float g, float& m, float& v, const AdamWStepConstants& s) {
    const float decayed = __fmul_rn(p, s.decay);
    const float mi = __fmaf_rn(s.lerp_weight, __fsub_rn(g, m), m);                  // fused: lerp
    const float vi = __fmaf_rn(s.one_minus_beta2, __fmul_rn(g, g), __fmul_rn(v, s.beta2));  // fused: addcmul
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bias_correction2_sqrt), s.eps);
    p = __fmaf_rn(s.step_size, __fdiv_rn(mi, denom), decayed);                       // fused: addcdiv
    m = mi;
    v = vi;
}

// Four elements per thread with 16-byte loads (7 floats move per parameter: the kernel is memory-bound).
__global__ void adamw_vec4_kernel(float4* params, const float4* grads, float4* m, float4* v, size_t n4,
                                  AdamWStepConstants s, const float* grad_scale) {
    const float scale = grad_scale ? *grad_scale : 1.0f;
    if (isnan(scale)) return;  // a non-finite gradient norm: the step is skipped (see grad_norm_finish_kernel)
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        float4 p = params[i], g = grads[i], mi = m[i], vi = v[i];
        if (grad_scale) {
            g.x = __fmul_rn(g.x, scale);
            g.y = __fmul_rn(g.y, scale);
            g.z = __fmul_rn(g.z, scale);
            g.w = __fmul_rn(g.w, scale);
        }
        adamw_element(p.x, g.x, mi.x, vi.x, s);
        adamw_element(p.y, g.y, mi.y, vi.y, s);
        adamw_element(p.z, g.z, mi.z, vi.z, s);
        adamw_element(p.w, g.w, mi.w, vi.w, s);
        params[i] = p;
        m[i] = mi;
        v[i] = vi;
    }
}

// Elements [first, n) one per thread: the tail after the float4s, or everything when a buffer is unaligned.
__global__ void adamw_scalar_kernel(float* params, const float* grads, float* m, float* v, size_t first, size_t n,
                                    AdamWStepConstants s, const float* grad_scale) {
    if (grad_scale && isnan(*grad_scale)) return;  // the step is skipped, as in adamw_vec4_kernel
    for (size_t i = first + blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = grad_scale ? __fmul_rn(grads[i], *grad_scale) : grads[i];
        adamw_element(params[i], g, m[i], v[i], s);
    }
}

constexpr int GRAD_NORM_THREADS = 256;
constexpr int64_t GRAD_NORM_CHUNK = 16384;  // floats per block of stage 1

__device__ inline double block_sum_double(double x) {
    __shared__ double warp_sums[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    if (lane == 0) warp_sums[warp] = x;
    __syncthreads();
    x = 0.0;
    if (warp == 0) {
        x = lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0.0;
        for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    }
    return x;  // valid in thread 0
}

// Stage 1: block (chunk, tensor) sums the squares of its chunk of the tensor in double (a float squared is
// exact in double); chunks past the tensor's end write 0 so stage 2 can add a fixed number per tensor.
__global__ void grad_sq_chunks_kernel(double* partial, const float* grads, const int64_t* tensor_offsets,
                                      int max_chunks) {
    const int chunk = blockIdx.x, tensor = blockIdx.y;
    const int64_t start = tensor_offsets[tensor] + chunk * GRAD_NORM_CHUNK;
    const int64_t end = min(start + GRAD_NORM_CHUNK, tensor_offsets[tensor + 1]);
    double sq = 0.0;
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) sq += (double)grads[i] * grads[i];
    sq = block_sum_double(sq);
    if (threadIdx.x == 0) partial[(size_t)tensor * max_chunks + chunk] = sq;
}

// Stage 2, one block: each tensor's norm rounded to fp32 (torch's _foreach_norm output), the norm of those
// norms, and clip_grad_norm_'s coefficient (1 / (total + 1e-6)) * max_norm clamped to 1.
__global__ void grad_norm_finish_kernel(float* norm_and_coef, const double* partial, int num_tensors, int max_chunks,
                                        float max_norm) {
    double total_sq = 0.0;
    for (int t = threadIdx.x; t < num_tensors; t += blockDim.x) {
        double sq = 0.0;
        for (int c = 0; c < max_chunks; c++) sq += partial[(size_t)t * max_chunks + c];
        const float norm = (float)sqrt(sq);
        total_sq += (double)norm * norm;
    }
    total_sq = block_sum_double(total_sq);
    if (threadIdx.x == 0) {
        const float total = (float)sqrt(total_sq);
        float coef = __fmul_rn(__fdiv_rn(1.0f, __fadd_rn(total, (float)1e-6)), max_norm);
        if (coef > 1.0f) coef = 1.0f;
        // A NaN or inf norm (an overflowed gradient) makes the coefficient NaN, which adamw_cuda reads as "skip
        // this step" (torch would give 0 for inf and then write NaN into the adapters).
        if (!isfinite(total)) coef = __int_as_float(0x7fc00000);
        norm_and_coef[0] = total;
        norm_and_coef[1] = coef;
    }
}

__global__ void scale_kernel(float* x, size_t n, const float* coef) {
    const float c = *coef;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = __fmul_rn(x[i], c);
}

// ------------------------------------------------------------------------------------------------------------
// kernel launchers

// A grid that covers the work but stays a few waves deep: the kernels loop over the rest.
static int grid_for(size_t work, int threads) {
    size_t blocks = (work + threads - 1) / threads;
    size_t cap = (size_t)cuda_sm_count() * 8;
    return (int)(blocks < 1 ? 1 : blocks < cap ? blocks : cap);
}

void adamw_cuda(float* params, const float* grads, float* m, float* v, size_t n, const AdamWConfig& cfg, double lr,
                int64_t step, const float* grad_scale, cudaStream_t stream) {
    if (n == 0) return;
    const AdamWStepConstants s = adamw_step_constants(cfg, lr, step);  // adamw_update's scalars, the same bits
    const int threads = 256;
    bool aligned = true;
    for (const void* p : {(const void*)params, (const void*)grads, (const void*)m, (const void*)v})
        aligned = aligned && (uintptr_t)p % 16 == 0;
    size_t n4 = aligned ? n / 4 : 0;
    if (n4 > 0) {
        adamw_vec4_kernel<<<grid_for(n4, threads), threads, 0, stream>>>((float4*)params, (const float4*)grads,
                                                                          (float4*)m, (float4*)v, n4, s, grad_scale);
        cudaCheck(cudaGetLastError());
    }
    if (n4 * 4 < n) {
        adamw_scalar_kernel<<<grid_for(n - n4 * 4, threads), threads, 0, stream>>>(params, grads, m, v, n4 * 4, n, s,
                                                                                    grad_scale);
        cudaCheck(cudaGetLastError());
    }
}

static int grad_norm_max_chunks(int64_t max_tensor_size) {
    return (int)((max_tensor_size + GRAD_NORM_CHUNK - 1) / GRAD_NORM_CHUNK);
}

size_t grad_norm_scratch_bytes(int num_tensors, int64_t max_tensor_size) {
    return (size_t)num_tensors * grad_norm_max_chunks(max_tensor_size) * sizeof(double);
}

void grad_norm_cuda(float* norm_and_coef, const float* grads, const int64_t* tensor_offsets, int num_tensors,
                    int64_t max_tensor_size, double max_norm, void* scratch, cudaStream_t stream) {
    const int max_chunks = grad_norm_max_chunks(max_tensor_size);
    double* partial = (double*)scratch;
    if (num_tensors > 0 && max_chunks > 0) {
        dim3 grid(max_chunks, num_tensors);
        grad_sq_chunks_kernel<<<grid, GRAD_NORM_THREADS, 0, stream>>>(partial, grads, tensor_offsets, max_chunks);
        cudaCheck(cudaGetLastError());
    }
    grad_norm_finish_kernel<<<1, 1024, 0, stream>>>(norm_and_coef, partial, num_tensors, max_chunks,
                                                     (float)max_norm);
    cudaCheck(cudaGetLastError());
}

void scale_grads_cuda(float* grads, size_t n, const float* coef, cudaStream_t stream) {
    if (n == 0) return;
    scale_kernel<<<grid_for(n, 256), 256, 0, stream>>>(grads, n, coef);
    cudaCheck(cudaGetLastError());
}
