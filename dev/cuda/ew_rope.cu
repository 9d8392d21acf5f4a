// ew_rope.cu: lab for RoPE: HF's bf16 cos/sin tables, the rotate_half rotation of q and k, and its transpose (backward).
// Build and run: make build/lab_ew_rope && ./build/lab_ew_rope
// One version: one thread per 8 pairs of one head, 16-byte loads of both halves and of the table rows
// (kernels/rope.cu). Timed in place (as the backend applies it) and out of place, forward and backward.
#include "dev/cuda/lab_common.cuh"
#include "kernels/rope.cuh"
#include "model/config.h"
#include "model/cpu_model.h"

static __nv_bfloat16* bf(bf16_bits* p) { return (__nv_bfloat16*)p; }

int main() {
    Rng rng(42);
    const Qwen2Config q05 = qwen2_preset("0.5B"), q7 = qwen2_preset("7B");
    struct Shape { const char* what; int N, T, H, HD; float theta; };
    // training batches of B = 48 sequences of T = 328 tokens (positions n % T), tiny model first
    const Shape shapes[] = {{"tiny q", 96, 24, 4, 16, 1e6f},
                            {"0.5B q", 15744, 328, q05.NH, q05.HD, q05.rope_theta},
                            {"7B q", 15744, 328, q7.NH, q7.HD, q7.rope_theta},
                            {"7B k", 15744, 328, q7.KVH, q7.HD, q7.rope_theta}};
    bool all_ok = true;
    for (const Shape& s : shapes) {
        const int N = s.N, T = s.T, H = s.H, HD = s.HD, H2 = HD / 2, NV = std::min(N, 512);
        const size_t n = (size_t)N * H * HD, nv = (size_t)NV * H * HD;
        printf("== %s: N %d H %d HD %d, positions < %d (CPU reference on %d rows)\n", s.what, N, H, HD, T, NV);
        std::vector<float> cos_table((size_t)T * H2), sin_table((size_t)T * H2);
        cpu_rope_tables(cos_table.data(), sin_table.data(), T, HD, s.theta, CpuPrecision::BF16);
        float* d_inv_freq = to_device(cpu_rope_inv_freq(HD, s.theta));
        bf16_bits *d_cos = to_device(std::vector<bf16_bits>((size_t)T * H2)), *d_sin = to_device(std::vector<bf16_bits>((size_t)T * H2));
        rope_tables(bf(d_cos), bf(d_sin), d_inv_freq, T, HD, 0);
        // CUDA's cosf/sinf are within 2 ulp of the CPU's: a rare one-ulp bf16 flip
        std::vector<float> got = bf16_to_floats(to_host(d_cos, cos_table.size()));
        all_ok &= validate("tables cos", got.data(), cos_table.data(), got.size(), 1e-6f, 1.0f / 128);
        got = bf16_to_floats(to_host(d_sin, sin_table.size()));
        all_ok &= validate("tables sin", got.data(), sin_table.data(), got.size(), 1e-6f, 1.0f / 128);
        // the rotation reads the CPU's tables, so only the rotation is compared
        std::vector<float> cos_copy = cos_table, sin_copy = sin_table;
        cudaCheck(cudaMemcpy(d_cos, to_bf16(cos_copy).data(), cos_copy.size() * 2, cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d_sin, to_bf16(sin_copy).data(), sin_copy.size() * 2, cudaMemcpyHostToDevice));

        std::vector<int> pos(N);
        for (int i = 0; i < N; i++) pos[i] = i % T;
        std::vector<float> x(n), dy(n);
        fill_uniform(x, rng, -3.0f, 3.0f);
        fill_uniform(dy, rng);
        std::vector<bf16_bits> x_b = to_bf16(x), dy_b = to_bf16(dy);
        std::vector<float> ref(x.begin(), x.begin() + nv), ref_dx(dy.begin(), dy.begin() + nv);
        cpu_rope_forward(ref.data(), pos.data(), cos_table.data(), sin_table.data(), NV, H, HD, CpuPrecision::BF16);
        cpu_rope_backward(ref_dx.data(), pos.data(), cos_table.data(), sin_table.data(), NV, H, HD);
        int* d_pos = to_device(pos);
        bf16_bits *d_x = to_device(x_b), *d_dy = to_device(dy_b), *d_out = to_device(x_b);

        rope_forward(bf(d_out), bf(d_x), d_pos, bf(d_cos), bf(d_sin), N, H, HD, 0);
        got = bf16_to_floats(to_host(d_out, nv));
        // exact bf16 products and HF's roundings: bit-equal
        all_ok &= validate("forward", got.data(), ref.data(), nv, 0.0f, 0.0f);
        rope_backward(bf(d_out), bf(d_dy), d_pos, bf(d_cos), bf(d_sin), N, H, HD, 0);
        got = bf16_to_floats(to_host(d_out, nv));
        // the CPU's fp32 result vs the GPU's bf16: bf16's rounding error, unit roundoff 2^-8
        all_ok &= validate("backward", got.data(), ref_dx.data(), nv, 0.0f, 1.0f / 256);

        const double bytes = 2.0 * n * 2 + 2.0 * T * H2 * 2 + N * 4.0;  // x in, x out, the tables, positions
        float ms = time_kernel_ms([&] { rope_forward(bf(d_out), bf(d_x), d_pos, bf(d_cos), bf(d_sin), N, H, HD, 0); });
        report("forward, out of place", ms, bytes, 0);
        ms = time_kernel_ms([&] { rope_forward(bf(d_x), bf(d_x), d_pos, bf(d_cos), bf(d_sin), N, H, HD, 0); });
        report("forward, in place", ms, bytes, 0);
        ms = time_kernel_ms([&] { rope_backward(bf(d_dy), bf(d_dy), d_pos, bf(d_cos), bf(d_sin), N, H, HD, 0); });
        report("backward, in place", ms, bytes, 0);
        for (void* p : {(void*)d_inv_freq, (void*)d_cos, (void*)d_sin, (void*)d_pos, (void*)d_x, (void*)d_dy,
                        (void*)d_out})
            cudaCheck(cudaFree(p));
    }
    printf(all_ok ? "all versions ok\n" : "FAIL: some version disagrees with the CPU reference\n");
    return all_ok ? 0 : 1;
}
