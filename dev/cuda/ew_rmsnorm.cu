// ew_rmsnorm.cu: lab for RMSNorm forward (alone and fused with the residual add before it) and backward to the input.
// Build and run: make build/lab_ew_rmsnorm && ./build/lab_ew_rmsnorm
// Forward version 1: one thread per row, scalar loads, the CPU loop ported as is (rows far apart: uncoalesced).
// Forward version 2: one warp per row, 16-byte loads, shuffle reduction (kernels/rmsnorm.cu, what the backend calls
// for many rows).
// Forward version 3: one block per row, a thread per 16-byte chunk held in registers (kernels/rmsnorm.cu, what the
// launchers call up to 256 rows: a decode step, where version 2's per-lane walk over the row is a chain of load
// latencies).
// Fused: residual_rmsnorm_forward against residual_forward + rmsnorm_forward, the pair it replaces.
// Backward: one warp per row, 16-byte loads (kernels/rmsnorm.cu), accumulating into dx as the residual stream does.
#include "dev/cuda/lab_common.cuh"
#include "kernels/residual.cuh"
#include "kernels/rmsnorm.cuh"
#include "model/config.h"
#include "model/cpu_model.h"

__global__ void rmsnorm_forward_kernel1(__nv_bfloat16* out, float* rstd, const __nv_bfloat16* x,
                                        const __nv_bfloat16* w, int N, int C, float eps) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    const __nv_bfloat16* xr = x + (size_t)row * C;
    float sum_sq = 0.0f;
    for (int c = 0; c < C; c++) sum_sq += __bfloat162float(xr[c]) * __bfloat162float(xr[c]);
    float r = rsqrtf(sum_sq / C + eps);
    rstd[row] = r;
    for (int c = 0; c < C; c++) {
        float normed = __bfloat162float(__float2bfloat16_rn(__bfloat162float(xr[c]) * r));
        out[(size_t)row * C + c] = __float2bfloat16_rn(__bfloat162float(w[c]) * normed);
    }
}

static __nv_bfloat16* bf(bf16_bits* p) { return (__nv_bfloat16*)p; }

int main() {
    Rng rng(42);
    const Qwen2Config q05 = qwen2_preset("0.5B"), q7 = qwen2_preset("7B");
    struct Shape { int N, C; };
    // the tiny test model, then B*T = 48*328, then the decode steps of batch 6 and 64
    const Shape shapes[] = {{96, 64}, {15744, q05.C}, {15744, q7.C}, {6, q7.C}, {64, q7.C}};
    const float eps = 1e-6f;
    bool all_ok = true;
    for (const Shape& s : shapes) {
        const int N = s.N, C = s.C, NV = std::min(N, 512);  // the CPU reference checks the first NV rows
        const size_t NC = (size_t)N * C;
        printf("== N %d C %d (CPU reference on %d rows)\n", N, C, NV);
        std::vector<float> x(NC), y(NC), w(C), dout(NC), dx0(NC);
        fill_uniform(x, rng, -2.0f, 2.0f);
        fill_uniform(y, rng);
        fill_uniform(w, rng, 0.5f, 1.5f);
        fill_uniform(dout, rng);
        fill_uniform(dx0, rng, -0.5f, 0.5f);
        std::vector<bf16_bits> x_b = to_bf16(x), y_b = to_bf16(y), w_b = to_bf16(w), dout_b = to_bf16(dout),
                               dx0_b = to_bf16(dx0);

        std::vector<float> ref_out((size_t)NV * C), ref_rstd(NV), ref_h((size_t)NV * C), ref_fused((size_t)NV * C),
            ref_fused_rstd(NV);
        cpu_rmsnorm_forward(ref_out.data(), ref_rstd.data(), x.data(), w_b.data(), NV, C, eps, CpuPrecision::BF16);
        cpu_residual_forward(ref_h.data(), x.data(), y.data(), NV * C, CpuPrecision::BF16);
        cpu_rmsnorm_forward(ref_fused.data(), ref_fused_rstd.data(), ref_h.data(), w_b.data(), NV, C, eps,
                            CpuPrecision::BF16);
        std::vector<float> ref_dx(dx0.begin(), dx0.begin() + (size_t)NV * C);
        cpu_rmsnorm_backward(ref_dx.data(), dout.data(), x.data(), ref_rstd.data(), w_b.data(), NV, C);

        bf16_bits *d_x = to_device(x_b), *d_y = to_device(y_b), *d_w = to_device(w_b), *d_dout = to_device(dout_b);
        bf16_bits *d_dx = to_device(dx0_b), *d_out = to_device(x_b), *d_resid = to_device(x_b);
        float* d_rstd = to_device(std::vector<float>(N));
        auto check_forward = [&](const char* name, const std::vector<float>& ref, const std::vector<float>& ref_r) {
            std::vector<float> got = bf16_to_floats(to_host(d_out, (size_t)NV * C)), got_r = to_host(d_rstd, NV);
            // one or two bf16 ulps where rsqrtf and the fp32 sum order move x*rstd across a rounding boundary (rare)
            all_ok &= validate(name, got.data(), ref.data(), got.size(), 1e-6f, 1.0f / 64);
            all_ok &= validate("  rstd", got_r.data(), ref_r.data(), NV, 0.0f, 1e-5f);
        };

        rmsnorm_forward_kernel1<<<(N + 127) / 128, 128>>>(bf(d_out), d_rstd, bf(d_x), bf(d_w), N, C, eps);
        cudaCheck(cudaGetLastError());
        check_forward("forward v1", ref_out, ref_rstd);
        for (int version : {2, 3}) {
            residual_rmsnorm_forward_version(version, nullptr, bf(d_out), d_rstd, bf(d_x), nullptr, bf(d_w), N, C, eps, 0);
            check_forward(version == 2 ? "forward v2" : "forward v3", ref_out, ref_rstd);
            residual_rmsnorm_forward_version(version, bf(d_resid), bf(d_out), d_rstd, bf(d_x), bf(d_y), bf(d_w), N, C,
                                             eps, 0);
            check_forward(version == 2 ? "fused residual+norm v2" : "fused residual+norm v3", ref_fused, ref_fused_rstd);
            std::vector<float> got_h = bf16_to_floats(to_host(d_resid, (size_t)NV * C));
            all_ok &= validate("  resid", got_h.data(), ref_h.data(), got_h.size(), 0.0f, 0.0f);  // exact
        }
        rmsnorm_forward(bf(d_out), d_rstd, bf(d_x), bf(d_w), N, C, eps, 0);
        check_forward("forward (the launcher's choice)", ref_out, ref_rstd);
        // the backward from the CPU's rstd, so only the backward is compared
        cudaCheck(cudaMemcpy(d_rstd, ref_rstd.data(), NV * sizeof(float), cudaMemcpyHostToDevice));
        rmsnorm_backward(bf(d_dx), bf(d_dout), bf(d_x), d_rstd, bf(d_w), N, C, true, 0);
        std::vector<float> got_dx = bf16_to_floats(to_host(d_dx, (size_t)NV * C));
        all_ok &= validate("backward (accumulate)", got_dx.data(), ref_dx.data(), got_dx.size(), 1e-5f, 1.0f / 128);  // bf16 rounding

        const double row_io = (double)N * 4 + C * 2;  // rstd and the weight
        float ms = time_kernel_ms([&] {
            rmsnorm_forward_kernel1<<<(N + 127) / 128, 128>>>(bf(d_out), d_rstd, bf(d_x), bf(d_w), N, C, eps);
        });
        report("forward v1", ms, 2.0 * NC * 2 + row_io, 0);
        for (int version : {2, 3}) {
            ms = time_kernel_ms([&] {
                residual_rmsnorm_forward_version(version, nullptr, bf(d_out), d_rstd, bf(d_x), nullptr, bf(d_w), N, C,
                                                 eps, 0);
            });
            report(version == 2 ? "forward v2" : "forward v3", ms, 2.0 * NC * 2 + row_io, 0);
        }
        ms = time_kernel_ms([&] {
            residual_forward(bf(d_resid), bf(d_x), bf(d_y), NC, 0);
            rmsnorm_forward(bf(d_out), d_rstd, bf(d_resid), bf(d_w), N, C, eps, 0);
        });
        report("residual + norm, unfused", ms, 5.0 * NC * 2 + row_io, 0);
        for (int version : {2, 3}) {
            ms = time_kernel_ms([&] {
                residual_rmsnorm_forward_version(version, bf(d_resid), bf(d_out), d_rstd, bf(d_x), bf(d_y), bf(d_w), N,
                                                 C, eps, 0);
            });
            report(version == 2 ? "residual + norm, fused v2" : "residual + norm, fused v3", ms, 4.0 * NC * 2 + row_io, 0);
        }
        if (N <= 256) {  // a decode step's 56 fused norms replayed as one CUDA graph, as generation runs them
            cudaStream_t stream;
            cudaCheck(cudaStreamCreate(&stream));
            for (int version : {2, 3}) {
                ms = time_as_graph(stream, [&](cudaStream_t s) {
                         for (int i = 0; i < 56; i++)
                             residual_rmsnorm_forward_version(version, bf(d_resid), bf(d_out), nullptr, bf(d_resid),
                                                              bf(d_y), bf(d_w), N, C, eps, s);
                     }) / 56;
                report(version == 2 ? "fused v2, 56 in a graph, each" : "fused v3, 56 in a graph, each", ms,
                       4.0 * NC * 2 + C * 2, 0);
            }
            cudaCheck(cudaStreamDestroy(stream));
        }
        ms = time_kernel_ms([&] { rmsnorm_backward(bf(d_dx), bf(d_dout), bf(d_x), d_rstd, bf(d_w), N, C, true, 0); });
        report("backward (accumulate)", ms, 4.0 * NC * 2 + row_io, 0);

        for (void* p : {(void*)d_x, (void*)d_y, (void*)d_w, (void*)d_dout, (void*)d_dx, (void*)d_out, (void*)d_resid,
                        (void*)d_rstd})
            cudaCheck(cudaFree(p));
    }
    printf(all_ok ? "all versions ok\n" : "FAIL: some version disagrees with the CPU reference\n");
    return all_ok ? 0 : 1;
}
