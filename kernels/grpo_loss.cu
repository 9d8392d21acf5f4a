// grpo_loss.cu: TRL's GRPO loss (clipped ratio, k3 KL, four aggregations), its gradient with respect to the per-token log-probs and the metrics, in one deterministic block.
#include "kernels/grpo_loss.cuh"

#include "kernels/cuda_common.cuh"

// Precision: the elementwise steps are model/grpo_loss.cpp's fp32 operations in its order, written with
// explicit __f*_rn intrinsics because nvcc would otherwise fuse a*b+c into one fma (the CPU build uses
// -ffp-contract=off). exp is evaluated in double and rounded once, which is the correctly rounded expf that
// glibc's expf gives, where CUDA's expf may be 2 ulp off. The sums are doubles like grpo_loss.cpp's (a fixed
// tree here instead of a left-to-right loop: the same fp32 results except when a double sum lands within
// 1e-16 of an fp32 rounding boundary).

// ------------------------------------------------------------------------------------------------------------
// CUDA kernels

// 256 threads: the kernel uses 72 registers (the double-precision exp), more than the 64 per thread that a
// 1024-thread block may have, and B x Tc is small anyway.
constexpr int GRPO_THREADS = 256;

// The scalars of GrpoLossConfig as the kernel uses them (fp32 casts made once on the host as grpo_loss does).
struct GrpoLossParams {
    int loss_type;  // LossType
    bool use_kl;
    float beta, clip_low, clip_high, grad_accum, dr_grpo_normalizer, num_items_in_batch;
};

// torch's and std::'s min/max: the first argument unless the second compares smaller/larger.
__device__ inline float min_std(float a, float b) { return b < a ? b : a; }
__device__ inline float max_std(float a, float b) { return a < b ? b : a; }
__device__ inline float exp_rounded(float x) { return (float)exp((double)x); }

// The per-row sums, in scratch (doubles first, then the fp32 row scales).
enum { SUM_LOSS, SUM_TOKENS, SUM_KL, SUM_LOW, SUM_HIGH, SUM_REGION, NUM_SUMS };

__device__ inline double warp_sum(double x) {
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

__global__ void grpo_loss_kernel(GrpoLossGpuResult* result, float* per_token_loss_out, float* dloss_dlogp,
                                 GrpoLossParams P, int B, int Tc, const float* logp, const float* old_logp,
                                 const float* ref_logp, const float* mask, const float* advantages, double* row_sums,
                                 float* row_scale) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;

    // 1. per-token loss; one warp per row sums its masked terms (fixed butterfly order)
    for (int b = warp; b < B; b += num_warps) {
        const float A = advantages[b];
        double sums[NUM_SUMS] = {0, 0, 0, 0, 0, 0};
        for (int t = lane; t < Tc; t += 32) {
            const size_t i = (size_t)b * Tc + t;
            const float lp = logp[i];
            const float old = old_logp ? old_logp[i] : lp;
            const float coef_1 = exp_rounded(__fsub_rn(lp, old));
            const float coef_2 = min_std(max_std(coef_1, P.clip_low), P.clip_high);
            float loss = -min_std(__fmul_rn(coef_1, A), __fmul_rn(coef_2, A));
            float kl = 0.0f;
            if (P.use_kl) {
                const float ref_minus_logp = __fsub_rn(ref_logp[i], lp);
                kl = __fsub_rn(__fsub_rn(exp_rounded(ref_minus_logp), ref_minus_logp), 1.0f);
                loss = __fadd_rn(loss, __fmul_rn(P.beta, kl));
            }
            if (per_token_loss_out) per_token_loss_out[i] = loss;
            const float m = mask[i];
            const bool low_clipped = coef_1 < P.clip_low && A < 0.0f;
            const bool high_clipped = coef_1 > P.clip_high && A > 0.0f;
            sums[SUM_LOSS] += __fmul_rn(loss, m);
            sums[SUM_TOKENS] += m;
            sums[SUM_KL] += __fmul_rn(kl, m);
            sums[SUM_LOW] += __fmul_rn((float)low_clipped, m);
            sums[SUM_HIGH] += __fmul_rn((float)high_clipped, m);
            sums[SUM_REGION] += __fmul_rn((float)(low_clipped || high_clipped), m);
        }
        for (int k = 0; k < NUM_SUMS; k++) {
            double total = warp_sum(sums[k]);
            if (lane == 0) row_sums[(size_t)k * B + b] = total;
        }
    }
    __syncthreads();

    // 2. aggregation and metrics: B is small (a micro-batch), so one thread does it in grpo_loss's order
    if (threadIdx.x == 0) {
        double loss_sum = 0, tokens = 0, kl_sum = 0, low_sum = 0, high_sum = 0, region_sum = 0, mean_sum = 0;
        for (int b = 0; b < B; b++) {
            loss_sum += row_sums[SUM_LOSS * B + b];
            tokens += row_sums[SUM_TOKENS * B + b];
            kl_sum += row_sums[SUM_KL * B + b];
            low_sum += row_sums[SUM_LOW * B + b];
            high_sum += row_sums[SUM_HIGH * B + b];
            region_sum += row_sums[SUM_REGION * B + b];
        }
        const float token_count = fmaxf((float)tokens, 1.0f);
        float loss = 0.0f;
        for (int b = 0; b < B; b++) {
            switch (P.loss_type) {
                case (int)LossType::GRPO: {
                    const float n = fmaxf((float)row_sums[SUM_TOKENS * B + b], 1.0f);
                    mean_sum += __fdiv_rn((float)row_sums[SUM_LOSS * B + b], n);
                    row_scale[b] = __fdiv_rn(__fdiv_rn(__fdiv_rn(1.0f, P.grad_accum), (float)B), n);
                    break;
                }
                case (int)LossType::BNPO:
                    row_scale[b] = __fdiv_rn(__fdiv_rn(1.0f, P.grad_accum), token_count);
                    break;
                case (int)LossType::DR_GRPO:
                    row_scale[b] = __fdiv_rn(__fdiv_rn(1.0f, P.grad_accum), P.dr_grpo_normalizer);
                    break;
                default:  // DAPO
                    row_scale[b] = __fdiv_rn(1.0f, P.num_items_in_batch);
                    break;
            }
        }
        switch (P.loss_type) {
            case (int)LossType::GRPO: loss = __fdiv_rn(__fdiv_rn((float)mean_sum, (float)B), P.grad_accum); break;
            case (int)LossType::BNPO: loss = __fdiv_rn(__fdiv_rn((float)loss_sum, token_count), P.grad_accum); break;
            case (int)LossType::DR_GRPO:
                loss = __fdiv_rn(__fdiv_rn((float)loss_sum, P.dr_grpo_normalizer), P.grad_accum);
                break;
            default: loss = __fdiv_rn((float)loss_sum, P.num_items_in_batch); break;
        }
        result->loss = loss;
        result->kl = P.use_kl ? __fdiv_rn((float)kl_sum, token_count) : 0.0f;
        result->clip_ratio_low_mean = __fdiv_rn((float)low_sum, token_count);
        result->clip_ratio_high_mean = __fdiv_rn((float)high_sum, token_count);
        result->clip_ratio_region_mean = __fdiv_rn((float)region_sum, token_count);
    }
    if (!dloss_dlogp) return;
    __syncthreads();

    // 3. the gradient, recomputing the cheap forward values, step by step as torch's autograd
    for (size_t i = threadIdx.x; i < (size_t)B * Tc; i += blockDim.x) {
        const int b = (int)(i / Tc);
        const float A = advantages[b];
        const float lp = logp[i];
        const float old = old_logp ? old_logp[i] : lp;
        const float coef_1 = exp_rounded(__fsub_rn(lp, old));
        const float coef_2 = min_std(max_std(coef_1, P.clip_low), P.clip_high);
        const float loss1 = __fmul_rn(coef_1, A), loss2 = __fmul_rn(coef_2, A);
        const float d_per_token_loss = __fmul_rn(row_scale[b], mask[i]);
        const float d_min = -d_per_token_loss;
        // torch's min sends half the gradient to each side at a tie
        const float d_loss1 = loss1 < loss2 ? d_min : loss1 > loss2 ? 0.0f : __fdiv_rn(d_min, 2.0f);
        const float d_loss2 = loss2 < loss1 ? d_min : loss2 > loss1 ? 0.0f : __fdiv_rn(d_min, 2.0f);
        const bool inside = coef_1 >= P.clip_low && coef_1 <= P.clip_high;  // clamp passes gradient inside only
        const float d_coef_1 = __fadd_rn(__fmul_rn(d_loss1, A), inside ? __fmul_rn(d_loss2, A) : 0.0f);
        float d_logp = __fmul_rn(d_coef_1, coef_1);
        if (P.use_kl) {
            const float d_kl = __fmul_rn(d_per_token_loss, P.beta);
            const float exp_term = exp_rounded(__fsub_rn(ref_logp[i], lp));
            d_logp = __fadd_rn(__fadd_rn(d_logp, -__fmul_rn(d_kl, exp_term)), d_kl);
        }
        dloss_dlogp[i] = d_logp;
    }
}

// ------------------------------------------------------------------------------------------------------------
// kernel launchers

size_t grpo_loss_scratch_bytes(int B) { return (size_t)B * (NUM_SUMS * sizeof(double) + sizeof(float)); }

void grpo_loss_cuda(GrpoLossGpuResult* result, float* per_token_loss, float* dloss_dlogp,
                    const GrpoLossConfig& config, int B, int Tc, const float* logp, const float* old_logp,
                    const float* ref_logp, const float* mask, const float* advantages, float num_items_in_batch,
                    void* scratch, cudaStream_t stream) {
    check_loss_arguments("grpo_loss_cuda", config, B, Tc, ref_logp, num_items_in_batch);
    GrpoLossParams P;
    P.loss_type = (int)config.loss_type;
    P.use_kl = config.beta != 0.0;
    P.beta = (float)config.beta;
    P.clip_low = (float)(1.0 - config.epsilon_low);  // Python computes 1 - eps in double, torch casts to fp32
    P.clip_high = (float)(1.0 + config.epsilon_high);
    P.grad_accum = (float)config.grad_accum_steps;
    P.dr_grpo_normalizer = (float)((double)B * config.max_completion_length);
    P.num_items_in_batch = num_items_in_batch;
    double* row_sums = (double*)scratch;
    float* row_scale = (float*)(row_sums + (size_t)NUM_SUMS * B);
    grpo_loss_kernel<<<1, GRPO_THREADS, 0, stream>>>(result, per_token_loss, dloss_dlogp, P, B, Tc, logp, old_logp,
                                                      ref_logp, mask, advantages, row_sums, row_scale);
    cudaCheck(cudaGetLastError());
}
