// bench_grpo_loss.cpp: times the fused policy pass's host work per step at 8 x 8, 512 completion tokens: the loss's gradient asked for micro-batch by micro-batch, as grpo_loss over the whole batch each time (before) and as grpo_loss_grad_rows over the micro-batch's rows.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "data/rng.h"
#include "model/grpo_loss.h"

static double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int main() {
    const int B = 64, Tc = 512;
    Rng rng(9);
    std::vector<float> logp((size_t)B * Tc), ref(logp.size()), mask(logp.size()), advantages(B), dlogp(logp.size());
    for (size_t i = 0; i < logp.size(); i++) {
        logp[i] = -3.0f * rng.next_float();
        ref[i] = logp[i] + 0.1f * (rng.next_float() - 0.5f);
        mask[i] = 1.0f;
    }
    for (float& a : advantages) a = 2.0f * rng.next_float() - 1.0f;
    GrpoLossConfig config;
    config.beta = 0.04;
    std::vector<float> whole(logp.size());
    for (int parts : {1, 4, 16, 32}) {  // 16: 8 x 8 in 11 GiB takes micro-batches of 3,183 tokens (session 8)
        const int rows_per_part = B / parts;
        double best_whole = INFINITY, best_rows = INFINITY;
        for (int rep = 0; rep < 5; rep++) {
            auto start = std::chrono::steady_clock::now();
            for (int p = 0; p < parts; p++) {
                grpo_loss(config, B, Tc, logp.data(), nullptr, ref.data(), mask.data(), advantages.data(), 1.0f,
                          whole.data());
                for (int n = p * rows_per_part; n < (p + 1) * rows_per_part; n++)
                    for (int t = 0; t < Tc; t++) dlogp[(size_t)n * Tc + t] = whole[(size_t)n * Tc + t];
            }
            best_whole = std::fmin(best_whole, seconds_since(start));
            start = std::chrono::steady_clock::now();
            for (int p = 0; p < parts; p++) {
                std::vector<int> rows;
                for (int n = p * rows_per_part; n < (p + 1) * rows_per_part; n++) rows.push_back(n);
                grpo_loss_grad_rows(config, B, Tc, logp.data(), nullptr, ref.data(), mask.data(), advantages.data(),
                                    1.0f, rows, dlogp.data());
            }
            best_rows = std::fmin(best_rows, seconds_since(start));
        }
        printf("B %d x Tc %d in %2d micro-batches: whole-batch grpo_loss each time %7.2f ms, rows only %6.2f ms "
               "(host time a step, best of 5)\n", B, Tc, parts, best_whole * 1e3, best_rows * 1e3);
    }
    return 0;
}
