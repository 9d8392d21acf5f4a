// rmsnorm.cu: RMSNorm forward (alone or fused with the residual add before it) and backward to the input: one warp per row, or one block per row for the few rows of a decode step.
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda_common.cuh"
#include "kernels/rmsnorm.cuh"

// ---------------------------------------------------------------------------------------------------------------
// CUDA kernels

// Rows are C = 896..3584 wide: one warp per row reduces with shuffles alone (no shared memory, no block sync),
// and each lane walks the row in 16-byte chunks of 8 bf16, 32 chunks apart so the warp's loads coalesce.
constexpr int RMSNORM_BLOCK = 256;  // 8 rows per block

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// The per-chunk arithmetic both forward kernels share, on 8 bf16 values (16 bytes):
// the residual add h = round(x + y), in place on x;
__device__ __forceinline__ void rmsnorm_add8(uint4& x_raw, const uint4& y_raw) {
    __nv_bfloat16* xv = (__nv_bfloat16*)&x_raw;
    const __nv_bfloat16* yv = (const __nv_bfloat16*)&y_raw;
    for (int k = 0; k < 8; k++) xv[k] = __float2bfloat16_rn(__bfloat162float(xv[k]) + __bfloat162float(yv[k]));
}
// the sum of squares, added to sum in fp32;
__device__ __forceinline__ void rmsnorm_sum_sq8(float& sum, const uint4& h_raw) {
    const __nv_bfloat16* hv = (const __nv_bfloat16*)&h_raw;
    for (int k = 0; k < 8; k++) {
        float v = __bfloat162float(hv[k]);
        sum += v * v;
    }
}
// and the output: HF rounds the normalized value to bf16 before the (bf16) weight multiplies it.
__device__ __forceinline__ uint4 rmsnorm_scale8(const uint4& h_raw, const uint4& w_raw, float r) {
    uint4 out_raw;
    const __nv_bfloat16* hv = (const __nv_bfloat16*)&h_raw;
    const __nv_bfloat16* wv = (const __nv_bfloat16*)&w_raw;
    __nv_bfloat16* ov = (__nv_bfloat16*)&out_raw;
    for (int k = 0; k < 8; k++) {
        float normed = __bfloat162float(__float2bfloat16_rn(__bfloat162float(hv[k]) * r));
        ov[k] = __float2bfloat16_rn(__bfloat162float(wv[k]) * normed);
    }
    return out_raw;
}

// With y == nullptr: out = rmsnorm(x). With y: h = round(x + y) is written to resid_out first and normed.
// The second pass re-reads the row (x, or the h this very lane wrote) instead of holding it in registers,
// which would need C fixed at compile time; the re-read mostly hits L1/L2.
// No __restrict__ on x and resid_out: the residual stream may be updated in place.
__global__ void rmsnorm_forward_kernel(__nv_bfloat16* out, float* rstd, __nv_bfloat16* resid_out,
                                       const __nv_bfloat16* x, const __nv_bfloat16* y, const __nv_bfloat16* w,
                                       int N, int C, float eps) {
    grid_launch_dependents();  // a decode linear launched next may start loading its weights now
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;
    size_t offset = (size_t)row * C;

    float sum_sq = 0.0f;
    for (int c = lane * 8; c < C; c += 32 * 8) {
        uint4 x_raw = *(const uint4*)(x + offset + c);
        if (y) {
            rmsnorm_add8(x_raw, *(const uint4*)(y + offset + c));
            *(uint4*)(resid_out + offset + c) = x_raw;
        }
        rmsnorm_sum_sq8(sum_sq, x_raw);
    }
    // HF: hidden * torch.rsqrt(hidden.pow(2).mean(-1) + eps), all fp32
    float r = rsqrtf(warp_sum(sum_sq) / C + eps);
    if (rstd && lane == 0) rstd[row] = r;

    const __nv_bfloat16* h = y ? resid_out : x;
    for (int c = lane * 8; c < C; c += 32 * 8)
        *(uint4*)(out + offset + c) = rmsnorm_scale8(*(const uint4*)(h + offset + c), *(const uint4*)(w + c), r);
}

// Few rows (a decode step): one block per row and one thread per 16-byte chunk (at most RMSNORM_ROW_CHUNKS per
// thread), so that a row is loaded in one round of independent loads and kept in registers. The warp-per-row
// kernel walks a 3584-wide row in 14 rounds, each waiting on its loads, and at 6 rows that chain of latencies is
// the whole kernel: Nsight Compute timed it at 14.8 us a launch in a 7B decode step at M 6, 57 launches a step
// (dev/profile_decode_step.sh, session 7). The same arithmetic per element; the sum of squares is added in another
// order (per thread, per warp, then the warps in order), so rstd may differ from the warp kernel's in its last bit.
constexpr int RMSNORM_ROW_CHUNKS = 4;  // C up to 4 x 8 x 1024
__global__ void rmsnorm_row_block_kernel(__nv_bfloat16* out, float* rstd, __nv_bfloat16* resid_out,
                                         const __nv_bfloat16* x, const __nv_bfloat16* y, const __nv_bfloat16* w,
                                         int C, float eps) {
    grid_launch_dependents();  // a decode linear launched next may start loading its weights now
    __shared__ float warp_sums[32];
    __shared__ float row_rstd;
    const int row = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const size_t offset = (size_t)row * C;
    uint4 h[RMSNORM_ROW_CHUNKS];
    float sum_sq = 0.0f;
#pragma unroll
    for (int j = 0; j < RMSNORM_ROW_CHUNKS; j++) {
        const int c = (threadIdx.x + j * blockDim.x) * 8;
        if (c < C) {
            h[j] = *(const uint4*)(x + offset + c);
            if (y) {
                rmsnorm_add8(h[j], *(const uint4*)(y + offset + c));
                *(uint4*)(resid_out + offset + c) = h[j];
            }
            rmsnorm_sum_sq8(sum_sq, h[j]);
        }
    }
    sum_sq = warp_sum(sum_sq);
    if (lane == 0) warp_sums[warp] = sum_sq;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int i = 0; i < (int)blockDim.x / 32; i++) total += warp_sums[i];
        row_rstd = rsqrtf(total / C + eps);  // HF: all fp32, as above
        if (rstd) rstd[row] = row_rstd;
    }
    __syncthreads();
    const float r = row_rstd;
#pragma unroll
    for (int j = 0; j < RMSNORM_ROW_CHUNKS; j++) {
        const int c = (threadIdx.x + j * blockDim.x) * 8;
        if (c < C) *(uint4*)(out + offset + c) = rmsnorm_scale8(h[j], *(const uint4*)(w + c), r);
    }
}

// y_c = w_c x_c r with r = (mean(x^2) + eps)^-1/2 depending on every x_j (dr/dx_j = -r^3 x_j / C), so
// dx_j = r w_j dout_j - r^3 x_j mean(w dout x): one reduction, then one elementwise pass.
__global__ void rmsnorm_backward_kernel(__nv_bfloat16* dx, const __nv_bfloat16* dout, const __nv_bfloat16* x,
                                        const float* rstd, const __nv_bfloat16* w, int N, int C, bool accumulate) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;
    size_t offset = (size_t)row * C;

    float dot = 0.0f;
    for (int c = lane * 8; c < C; c += 32 * 8) {
        uint4 d_raw = *(const uint4*)(dout + offset + c);
        uint4 x_raw = *(const uint4*)(x + offset + c);
        uint4 w_raw = *(const uint4*)(w + c);
        const __nv_bfloat16* dv = (const __nv_bfloat16*)&d_raw;
        const __nv_bfloat16* xv = (const __nv_bfloat16*)&x_raw;
        const __nv_bfloat16* wv = (const __nv_bfloat16*)&w_raw;
        for (int k = 0; k < 8; k++) dot += __bfloat162float(dv[k]) * __bfloat162float(wv[k]) * __bfloat162float(xv[k]);
    }
    float r = rstd[row];
    float coef = warp_sum(dot) / C * r * r * r;

    for (int c = lane * 8; c < C; c += 32 * 8) {
        uint4 d_raw = *(const uint4*)(dout + offset + c);
        uint4 x_raw = *(const uint4*)(x + offset + c);
        uint4 w_raw = *(const uint4*)(w + c);
        uint4 dx_raw = accumulate ? *(const uint4*)(dx + offset + c) : make_uint4(0, 0, 0, 0);
        const __nv_bfloat16* dv = (const __nv_bfloat16*)&d_raw;
        const __nv_bfloat16* xv = (const __nv_bfloat16*)&x_raw;
        const __nv_bfloat16* wv = (const __nv_bfloat16*)&w_raw;
        __nv_bfloat16* dxv = (__nv_bfloat16*)&dx_raw;  // bf16 zero is all-zero bits
        for (int k = 0; k < 8; k++) {
            float d = r * __bfloat162float(dv[k]) * __bfloat162float(wv[k]) - coef * __bfloat162float(xv[k]);
            dxv[k] = __float2bfloat16_rn(__bfloat162float(dxv[k]) + d);
        }
        *(uint4*)(dx + offset + c) = dx_raw;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// kernel launchers

static void check_rmsnorm_width(const char* who, int C) {
    if (C % 8 == 0) return;
    fprintf(stderr, "error: %s needs C a multiple of 8 (16-byte chunks), got C = %d\n", who, C);
    exit(EXIT_FAILURE);
}

static unsigned rmsnorm_grid(int N) {
    const int rows_per_block = RMSNORM_BLOCK / 32;
    return (unsigned)((N + rows_per_block - 1) / rows_per_block);
}

// Up to this many rows (decode steps) rmsnorm_forward runs the block-per-row kernel, when the row fits its registers.
constexpr int RMSNORM_ROW_BLOCK_MAX_N = 256;

static void rmsnorm_launch(int version, __nv_bfloat16* resid_out, __nv_bfloat16* out, float* rstd,
                           const __nv_bfloat16* x, const __nv_bfloat16* y, const __nv_bfloat16* w, int N, int C,
                           float eps, cudaStream_t stream) {
    check_rmsnorm_width(y ? "residual_rmsnorm_forward" : "rmsnorm_forward", C);
    if (N == 0) return;
    const int chunks = C / 8;
    const bool fits = chunks <= 1024 * RMSNORM_ROW_CHUNKS;
    if (version == 0) version = N <= RMSNORM_ROW_BLOCK_MAX_N && fits ? 3 : 2;
    if (version == 3 && fits) {
        const int per_thread = (chunks + 1023) / 1024, threads = ((chunks + per_thread - 1) / per_thread + 31) / 32 * 32;
        rmsnorm_row_block_kernel<<<N, threads, 0, stream>>>(out, rstd, resid_out, x, y, w, C, eps);
    } else {
        rmsnorm_forward_kernel<<<rmsnorm_grid(N), RMSNORM_BLOCK, 0, stream>>>(out, rstd, resid_out, x, y, w, N, C, eps);
    }
    cudaCheck(cudaGetLastError());
}

void rmsnorm_forward(__nv_bfloat16* out, float* rstd, const __nv_bfloat16* x, const __nv_bfloat16* w, int N, int C,
                     float eps, cudaStream_t stream) {
    rmsnorm_launch(0, nullptr, out, rstd, x, nullptr, w, N, C, eps, stream);
}

void residual_rmsnorm_forward(__nv_bfloat16* resid_out, __nv_bfloat16* out, float* rstd, const __nv_bfloat16* x,
                              const __nv_bfloat16* y, const __nv_bfloat16* w, int N, int C, float eps,
                              cudaStream_t stream) {
    rmsnorm_launch(0, resid_out, out, rstd, x, y, w, N, C, eps, stream);
}

void residual_rmsnorm_forward_version(int version, __nv_bfloat16* resid_out, __nv_bfloat16* out, float* rstd,
                                      const __nv_bfloat16* x, const __nv_bfloat16* y, const __nv_bfloat16* w, int N,
                                      int C, float eps, cudaStream_t stream) {
    if (version != 2 && version != 3) {
        fprintf(stderr, "error: residual_rmsnorm_forward_version: version %d must be 2 or 3\n", version);
        exit(EXIT_FAILURE);
    }
    rmsnorm_launch(version, resid_out, out, rstd, x, y, w, N, C, eps, stream);
}

void rmsnorm_backward(__nv_bfloat16* dx, const __nv_bfloat16* dout, const __nv_bfloat16* x, const float* rstd,
                      const __nv_bfloat16* w, int N, int C, bool accumulate, cudaStream_t stream) {
    check_rmsnorm_width("rmsnorm_backward", C);
    if (N == 0) return;
    rmsnorm_backward_kernel<<<rmsnorm_grid(N), RMSNORM_BLOCK, 0, stream>>>(dx, dout, x, rstd, w, N, C, accumulate);
    cudaCheck(cudaGetLastError());
}
