// head_grpo_loss.cu: lab for the GPU GRPO loss: every loss type against model/grpo_loss.h's grpo_loss on random micro-batches, and its time at the 7B training shape.
// Build and run: make build/lab_head_grpo_loss && ./build/lab_head_grpo_loss
// One version (kernels/grpo_loss.cu): a single block does the per-token loss, the fixed-order double sums,
// the aggregation and the gradient, so the result never depends on scheduling. At B x Tc ~ 48 x 200 the
// data is 230 KB: the kernel is bound by its latency (a few microseconds), not by bandwidth; the GB/s line
// is printed for completeness. Bytes: logp, old, ref, mask read + per-token loss and gradient written.
#include "dev/cuda/lab_common.cuh"
#include "kernels/grpo_loss.cuh"
#include "model/grpo_loss.h"

int main() {
    bool ok = true;
    struct Shape { int B, Tc; };
    for (Shape shape : {Shape{4, 16}, Shape{48, 200}, Shape{48, 1000}}) {
        const int B = shape.B, Tc = shape.Tc;
        const size_t n = (size_t)B * Tc;
        printf("GRPO loss B=%d Tc=%d\n", B, Tc);
        Rng rng(100 + B + Tc);
        std::vector<float> logp(n), old_logp(n), ref_logp(n), mask(n, 0.0f), adv(B), noise(n);
        fill_uniform(logp, rng, -6.0f, 0.0f);
        fill_uniform(noise, rng, -0.3f, 0.3f);
        for (size_t i = 0; i < n; i++) old_logp[i] = logp[i] + noise[i];
        fill_uniform(noise, rng, -0.2f, 0.2f);
        for (size_t i = 0; i < n; i++) ref_logp[i] = logp[i] + noise[i];
        fill_uniform(adv, rng, -1.5f, 1.5f);
        for (int b = 0; b < B; b++) {
            int length = (int)rng.next_below(Tc + 1);
            for (int t = 0; t < length; t++) mask[(size_t)b * Tc + t] = 1.0f;
        }
        float num_items = 0.0f;
        for (float x : mask) num_items += x;
        num_items = std::max(num_items, 1.0f);
        float *d_logp = to_device(logp), *d_old = to_device(old_logp), *d_ref = to_device(ref_logp);
        float *d_mask = to_device(mask), *d_adv = to_device(adv), *d_loss = nullptr, *d_grad = nullptr;
        GrpoLossGpuResult* d_result = nullptr;
        void* scratch = nullptr;
        cudaCheck(cudaMalloc(&d_loss, n * sizeof(float)));
        cudaCheck(cudaMalloc(&d_grad, n * sizeof(float)));
        cudaCheck(cudaMalloc(&d_result, sizeof(GrpoLossGpuResult)));
        cudaCheck(cudaMalloc(&scratch, grpo_loss_scratch_bytes(B)));
        for (LossType type : {LossType::GRPO, LossType::BNPO, LossType::DR_GRPO, LossType::DAPO}) {
            GrpoLossConfig config;
            config.loss_type = type;
            config.beta = 0.04;
            config.epsilon_low = 0.2;
            config.epsilon_high = 0.28;
            config.max_completion_length = Tc;
            config.grad_accum_steps = 2;
            std::vector<float> ref_grad(n);
            GrpoLossResult ref = grpo_loss(config, B, Tc, logp.data(), old_logp.data(), ref_logp.data(), mask.data(),
                                           adv.data(), num_items, ref_grad.data());
            grpo_loss_cuda(d_result, d_loss, d_grad, config, B, Tc, d_logp, d_old, d_ref, d_mask, d_adv, num_items,
                           scratch, 0);
            GrpoLossGpuResult got = to_host(d_result, 1)[0];
            std::vector<float> grad = to_host(d_grad, n);
            // same fp32 operations and double sums (another order); our exp is correctly rounded, glibc's expf
            // within 0.502 ulp, so a rare exp differs by 1 ulp: ~2 ulp of a gradient (abs 1e-12 where the KL
            // terms cancel), 1 ulp of an O(1) token term over the token count for the loss (abs 1e-8)
            std::string name = std::string(loss_type_name(type));
            float got_scalars[5] = {got.loss, got.kl, got.clip_ratio_low_mean, got.clip_ratio_high_mean,
                                    got.clip_ratio_region_mean};
            float ref_scalars[5] = {ref.loss, ref.metrics.kl, ref.metrics.clip_ratio_low_mean,
                                    ref.metrics.clip_ratio_high_mean, ref.metrics.clip_ratio_region_mean};
            ok = validate((name + " loss+metrics").c_str(), got_scalars, ref_scalars, 5, 1e-8f, 2.4e-7f) && ok;
            ok = validate((name + " dloss_dlogp").c_str(), grad.data(), ref_grad.data(), n, 1e-12f, 3.6e-7f) && ok;
        }
        GrpoLossConfig config;
        config.max_completion_length = Tc;
        config.beta = 0.04;
        float ms = time_kernel_ms([&] {
            grpo_loss_cuda(d_result, d_loss, d_grad, config, B, Tc, d_logp, d_old, d_ref, d_mask, d_adv, num_items,
                           scratch, 0);
        });
        report("v1 single block", ms, 6.0 * 4 * n, 0);
        cudaFree(d_logp);
        cudaFree(d_old);
        cudaFree(d_ref);
        cudaFree(d_mask);
        cudaFree(d_adv);
        cudaFree(d_loss);
        cudaFree(d_grad);
        cudaFree(d_result);
        cudaFree(scratch);
    }
    printf("%s\n", ok ? "all versions ok" : "FAIL: a version disagrees with the CPU reference");
    return ok ? 0 : 1;
}
