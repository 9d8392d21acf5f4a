// ew_residual.cu: lab for the residual add out = round(x + y) on bf16 activations.
// Build and run: make build/lab_ew_residual && ./build/lab_ew_residual
// Version 1: one thread per element, 2-byte loads. Version 2: one thread per 8 elements, 16-byte loads
// (kernels/residual.cu, what the backend calls). The fused add + RMSNorm is in ew_rmsnorm.cu.
#include "dev/cuda/lab_common.cuh"
#include "kernels/residual.cuh"
#include "model/config.h"
#include "model/cpu_model.h"

__global__ void residual_forward_kernel1(__nv_bfloat16* out, const __nv_bfloat16* x, const __nv_bfloat16* y,
                                         size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(__bfloat162float(x[i]) + __bfloat162float(y[i]));
}

static __nv_bfloat16* bf(bf16_bits* p) { return (__nv_bfloat16*)p; }

int main() {
    Rng rng(42);
    const size_t sizes[] = {96 * 64, (size_t)15744 * qwen2_preset("0.5B").C, (size_t)15744 * qwen2_preset("7B").C};
    bool all_ok = true;
    for (size_t n : sizes) {
        const size_t nv = std::min(n, (size_t)1 << 22);  // the CPU reference checks the first nv elements
        printf("== n %zu (N*C; CPU reference on %zu)\n", n, nv);
        std::vector<float> x(n), y(n), ref(nv);
        fill_uniform(x, rng, -4.0f, 4.0f);
        fill_uniform(y, rng);
        std::vector<bf16_bits> x_b = to_bf16(x), y_b = to_bf16(y);
        cpu_residual_forward(ref.data(), x.data(), y.data(), (int)nv, CpuPrecision::BF16);
        bf16_bits *d_x = to_device(x_b), *d_y = to_device(y_b), *d_out = to_device(x_b);
        unsigned grid1 = (unsigned)((n + 255) / 256);

        // both are one fp32 add and one rounding, as the CPU: exact
        residual_forward_kernel1<<<grid1, 256>>>(bf(d_out), bf(d_x), bf(d_y), n);
        cudaCheck(cudaGetLastError());
        std::vector<float> got = bf16_to_floats(to_host(d_out, nv));
        all_ok &= validate("v1 scalar", got.data(), ref.data(), nv, 0.0f, 0.0f);
        residual_forward(bf(d_out), bf(d_x), bf(d_y), n, 0);
        got = bf16_to_floats(to_host(d_out, nv));
        all_ok &= validate("v2 16-byte", got.data(), ref.data(), nv, 0.0f, 0.0f);

        float ms = time_kernel_ms([&] { residual_forward_kernel1<<<grid1, 256>>>(bf(d_out), bf(d_x), bf(d_y), n); });
        report("v1 scalar", ms, 3.0 * n * 2, 0);
        ms = time_kernel_ms([&] { residual_forward(bf(d_out), bf(d_x), bf(d_y), n, 0); });
        report("v2 16-byte", ms, 3.0 * n * 2, 0);
        for (bf16_bits* p : {d_x, d_y, d_out}) cudaCheck(cudaFree(p));
    }
    printf(all_ok ? "all versions ok\n" : "FAIL: some version disagrees with the CPU reference\n");
    return all_ok ? 0 : 1;
}
