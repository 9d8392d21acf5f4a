// bench_nf4.cpp: times the CPU NF4 quantize (with double quantization) and dequantize of one Qwen2.5-7B MLP-sized matrix, 3584 x 18944 bf16.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "data/rng.h"
#include "quant/bf16.h"
#include "quant/nf4.h"

static double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int main() {
    const int64_t rows = 3584, cols = 18944, n = rows * cols;
    const int repeats = 3;

    // weight-like values: roughly normal (sum of four uniforms), std about 0.02
    std::vector<uint16_t> weights(n);
    Rng rng(1234);
    for (int64_t i = 0; i < n; i++) {
        float u = rng.next_float() + rng.next_float() + rng.next_float() + rng.next_float() - 2.0f;
        weights[i] = f32_to_bf16(u * 0.0346f);
    }

    NF4Tensor t;
    std::vector<uint16_t> restored(n);
    double best_quantize = INFINITY, best_dequantize = INFINITY;
    for (int r = 0; r < repeats; r++) {
        auto start = std::chrono::steady_clock::now();
        nf4_quantize(weights.data(), rows, cols, true, &t);
        best_quantize = std::fmin(best_quantize, seconds_since(start));
        start = std::chrono::steady_clock::now();
        nf4_dequantize(t, restored.data());
        best_dequantize = std::fmin(best_dequantize, seconds_since(start));
    }

    // GB/s counts the bf16 side only (what is read by quantize, written by dequantize): 2 bytes an element.
    double bf16_gb = 2.0 * (double)n / 1e9;
    printf("nf4 on the CPU, one thread, [%lld, %lld] bf16 (%.1f MB), best of %d:\n", (long long)rows,
           (long long)cols, bf16_gb * 1e3, repeats);
    printf("  quantize (double quant) %8.1f ms  %6.2f GB/s of bf16\n", best_quantize * 1e3, bf16_gb / best_quantize);
    printf("  dequantize              %8.1f ms  %6.2f GB/s of bf16\n", best_dequantize * 1e3,
           bf16_gb / best_dequantize);

    // a cheap guard that the timed work was real: NF4 keeps about 2-3 significant bits
    double max_err = 0.0, max_abs = 0.0;
    for (int64_t i = 0; i < n; i++) {
        max_abs = std::fmax(max_abs, std::fabs(bf16_to_f32(weights[i])));
        max_err = std::fmax(max_err, std::fabs(bf16_to_f32(restored[i]) - bf16_to_f32(weights[i])));
    }
    printf("  max |dequantized - original| = %.3g (%.1f%% of max |w|)\n", max_err, 100.0 * max_err / max_abs);
    return 0;
}
