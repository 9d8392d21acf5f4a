// head_adamw.cu: lab for AdamW and clip_grad_norm over the flat fp32 LoRA buffers: bit-identity with lora/adamw.h and bandwidth at the Qwen2.5-7B r=32 adapter size.
// Build and run: make build/lab_head_adamw && ./build/lab_head_adamw
// Versions (kernels/adamw.cu):
//   AdamW v1: one element per thread with 4-byte accesses (the launcher's path for buffers not 16-byte aligned)
//   AdamW v2: four elements per thread with 16-byte accesses (the launcher's path for aligned buffers)
//   grad norm: per-chunk double sums of squares, then one block for the per-tensor norms and the total
//   fused: grad norm, then AdamW reading g * coef (what the trainer should call: no separate clip pass)
// Counted bytes: AdamW 7 floats per parameter (p, g, m, v read; p, m, v written); norm 1; clip 2.
#include <numeric>

#include "dev/cuda/lab_common.cuh"
#include "kernels/adamw.cuh"
#include "lora/adamw.h"
#include "lora/lora.h"
#include "model/config.h"

static bool same_bits(const char* name, const std::vector<float>& got, const std::vector<float>& ref) {
    size_t differ = 0;
    for (size_t i = 0; i < got.size(); i++) differ += memcmp(&got[i], &ref[i], sizeof(float)) != 0;
    printf("  %-28s %s: %zu of %zu differ in any bit\n", name, differ ? "FAIL" : "ok", differ, got.size());
    return differ == 0;
}

int main() {
    LoraConfig lora_cfg;  // r = 32 on all seven projections
    LoraWeights lora = lora_create(qwen2_preset("7B"), lora_cfg);
    const size_t n = lora.num_params();
    std::vector<size_t> sizes = lora_tensor_sizes(lora);
    printf("AdamW + clip_grad_norm, Qwen2.5-7B LoRA r=%d: %zu parameters in %zu tensors\n", lora_cfg.R, n, sizes.size());
    std::vector<int64_t> offsets = {0};
    for (size_t s : sizes) offsets.push_back(offsets.back() + (int64_t)s);
    const int64_t max_size = (int64_t)*std::max_element(sizes.begin(), sizes.end());

    Rng rng(7);
    std::vector<float> params(n), grads(n), m(n), v(n);
    fill_uniform(params, rng, -0.05f, 0.05f);
    fill_uniform(grads, rng, -1e-3f, 1e-3f);
    fill_uniform(m, rng, -1e-4f, 1e-4f);
    fill_uniform(v, rng, 0.0f, 1e-7f);
    float *d_p = to_device(params), *d_g = to_device(grads), *d_m = to_device(m), *d_v = to_device(v);
    int64_t* d_offsets = to_device(offsets);
    float* d_norm = nullptr;
    void* scratch = nullptr;
    cudaCheck(cudaMalloc(&d_norm, 2 * sizeof(float)));
    cudaCheck(cudaMalloc(&scratch, grad_norm_scratch_bytes((int)sizes.size(), max_size)));
    AdamWConfig cfg;
    const double lr = 5e-6, max_norm = 0.1;

    // validation: the fused clip + step (and a second plain step) against clip_grad_norm + adamw_update
    grad_norm_cuda(d_norm, d_g, d_offsets, (int)sizes.size(), max_size, max_norm, scratch, 0);
    adamw_cuda(d_p, d_g, d_m, d_v, n, cfg, lr, 1, d_norm + 1, 0);
    adamw_cuda(d_p, d_g, d_m, d_v, n, cfg, lr, 2, nullptr, 0);
    std::vector<float> norm = to_host(d_norm, 2);
    std::vector<float> clipped = grads;
    float cpu_norm = clip_grad_norm(clipped.data(), sizes, max_norm);
    adamw_update(params.data(), clipped.data(), m.data(), v.data(), n, cfg, lr, 1);
    adamw_update(params.data(), grads.data(), m.data(), v.data(), n, cfg, lr, 2);
    bool ok = norm[0] == cpu_norm;
    printf("  %-28s %s: GPU %.9g CPU %.9g (coef %.9g)\n", "grad norm", ok ? "ok" : "FAIL", norm[0], cpu_norm, norm[1]);
    ok = same_bits("params (clip + 2 steps)", to_host(d_p, n), params) && ok;
    ok = same_bits("adam_m", to_host(d_m, n), m) && ok;
    ok = same_bits("adam_v", to_host(d_v, n), v) && ok;
    scale_grads_cuda(d_g, n, d_norm + 1, 0);
    ok = same_bits("clipped grads", to_host(d_g, n), clipped) && ok;

    printf("benchmark (%zu parameters, %.1f MB per fp32 buffer)\n", n, n * 4.0 / 1e6);
    const double adam_bytes = 7.0 * 4 * n;
    int64_t step = 3;
    float ms = time_kernel_ms([&] { adamw_cuda(d_p + 1, d_g + 1, d_m + 1, d_v + 1, n - 1, cfg, lr, step++, nullptr, 0); });
    report("AdamW v1 (4-byte, unaligned)", ms, adam_bytes, 0);
    ms = time_kernel_ms([&] { adamw_cuda(d_p, d_g, d_m, d_v, n, cfg, lr, step++, nullptr, 0); });
    report("AdamW v2 (16-byte)", ms, adam_bytes, 0);
    ms = time_kernel_ms([&] { grad_norm_cuda(d_norm, d_g, d_offsets, (int)sizes.size(), max_size, max_norm, scratch, 0); });
    report("grad norm", ms, 4.0 * n, 0);
    ms = time_kernel_ms([&] { scale_grads_cuda(d_g, n, d_norm + 1, 0); });
    report("clip (grads *= coef)", ms, 8.0 * n, 0);
    ms = time_kernel_ms([&] {
        grad_norm_cuda(d_norm, d_g, d_offsets, (int)sizes.size(), max_size, max_norm, scratch, 0);
        adamw_cuda(d_p, d_g, d_m, d_v, n, cfg, lr, step++, d_norm + 1, 0);
    });
    report("norm + fused clip/AdamW", ms, 8.0 * 4 * n, 0);
    cudaFree(d_p);
    cudaFree(d_g);
    cudaFree(d_m);
    cudaFree(d_v);
    cudaFree(d_offsets);
    cudaFree(d_norm);
    cudaFree(scratch);
    printf("%s\n", ok ? "all versions ok" : "FAIL: a version disagrees with the CPU reference");
    return ok ? 0 : 1;
}
