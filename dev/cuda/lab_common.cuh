// lab_common.cuh: what every dev/cuda/<kernel>.cu lab shares: checked calls, seeded random data, validation against the CPU reference, timing with the L2 flushed (alone or replayed as a CUDA graph), and the share of the measured H200 ceilings.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_bf16.h>

#include "data/rng.h"
#include "kernels/cuda_common.cuh"
#include "quant/bf16.h"

// Measured on the lent H200 (REFERENCE.md §8): a bf16 8192^3 GEMM and a device-to-device copy.
#define CEILING_BF16_TFLOPS 800.0
#define CEILING_COPY_TBPS 4.27

// Uniform in [lo, hi), from a seeded generator so every run of a lab checks the same inputs.
inline void fill_uniform(std::vector<float>& v, Rng& rng, float lo = -1.0f, float hi = 1.0f) {
    for (float& x : v) x = lo + (hi - lo) * rng.next_float();
}
// The same values rounded to bf16, as the bits the GPU reads and as the floats the CPU reference reads.
inline std::vector<bf16_bits> to_bf16(std::vector<float>& v) {
    std::vector<bf16_bits> out(v.size());
    for (size_t i = 0; i < v.size(); i++) { out[i] = f32_to_bf16(v[i]); v[i] = bf16_to_f32(out[i]); }
    return out;
}

// M distinct cache slots out of S, shuffled (rows mapped to slots as after compaction, so that slot != row is
// exercised).
inline std::vector<int> random_slots(int M, int S, Rng& rng) {
    std::vector<int> perm(S);
    for (int i = 0; i < S; i++) perm[i] = i;
    for (int i = S - 1; i > 0; i--) std::swap(perm[i], perm[rng.next_below(i + 1)]);
    return std::vector<int>(perm.begin(), perm.begin() + M);
}

template <typename T>
T* to_device(const std::vector<T>& host) {
    T* d = nullptr;
    cudaCheck(cudaMalloc(&d, host.size() * sizeof(T)));
    cudaCheck(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> host(n);
    cudaCheck(cudaMemcpy(host.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
}
inline std::vector<float> bf16_to_floats(const std::vector<bf16_bits>& v) {
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); i++) out[i] = bf16_to_f32(v[i]);
    return out;
}

// The spacing of bf16 values at |x|: one rounding step of a logit.
inline float bf16_ulp(float x) {
    int exponent = 0;
    std::frexp(std::max(std::fabs(x), 1e-30f), &exponent);  // |x| in [2^(e-1), 2^e)
    return std::ldexp(1.0f, exponent - 1 - 7);              // 8 significant bits
}

// |got - ref| <= abs_tol + rel_tol * |ref| everywhere (NaN never passes; with both tolerances 0, got must equal ref);
// prints the worst element.
inline bool validate(const char* name, const float* got, const float* ref, size_t n, float abs_tol, float rel_tol) {
    size_t bad = 0, worst_i = 0;
    double worst = -1;
    for (size_t i = 0; i < n; i++) {
        double err = std::fabs((double)got[i] - ref[i]);
        double ratio = err == 0.0 ? 0.0 : err / (abs_tol + rel_tol * std::fabs(ref[i]));
        if (!(ratio <= 1.0)) bad++;
        if (!(ratio <= worst)) { worst = std::isnan(ratio) ? INFINITY : ratio; worst_i = i; }
    }
    printf("  %-28s %s: worst at [%zu] got %.6g ref %.6g (%.2f of tolerance), %zu of %zu outside\n", name,
           bad ? "FAIL" : "ok", worst_i, got[worst_i], ref[worst_i], worst, bad, n);
    return bad == 0;
}

// Writing a buffer larger than the L2 (60 MB on the H200) between timed runs, so each run reads from HBM.
struct L2Flusher {
    size_t bytes = 0;
    void* buf = nullptr;
    L2Flusher() {
        int dev = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaDeviceProp prop;
        cudaCheck(cudaGetDeviceProperties(&prop, dev));
        bytes = (size_t)prop.l2CacheSize * 2;
        cudaCheck(cudaMalloc(&buf, bytes));
    }
    ~L2Flusher() { cudaFree(buf); }
    void flush(cudaStream_t stream = 0) { cudaCheck(cudaMemsetAsync(buf, 0, bytes, stream)); }
};

// Median time in ms of `repeats` runs of f, each after an L2 flush, after a few warm-up runs.
template <typename F>
float time_kernel_ms(F f, int repeats = 20) {
    L2Flusher flusher;
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    for (int i = 0; i < 3; i++) f();
    std::vector<float> times;
    for (int i = 0; i < repeats; i++) {
        flusher.flush();
        cudaCheck(cudaEventRecord(start));
        f();
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        float ms = 0;
        cudaCheck(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
    }
    cudaCheck(cudaGetLastError());
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

// What one replay of the launches that enqueue(stream) makes costs when captured as a CUDA graph (what a decode loop
// replays every step), in ms (time_kernel_ms: median, after an L2 flush).
template <typename F>
float time_as_graph(cudaStream_t stream, F enqueue) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    cudaCheck(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    enqueue(stream);
    cudaCheck(cudaStreamEndCapture(stream, &graph));
    cudaCheck(cudaGraphInstantiate(&exec, graph, 0));
    const float ms = time_kernel_ms([&] { cudaCheck(cudaGraphLaunch(exec, 0)); });
    cudaCheck(cudaGraphExecDestroy(exec));
    cudaCheck(cudaGraphDestroy(graph));
    return ms;
}

// One benchmark line: time, achieved rate and its share of the ceiling. Pass bytes for memory-bound
// kernels (read + written, counted once), flops for matrix-bound ones.
inline void report(const char* version, float ms, double bytes, double flops) {
    if (flops > 0)
        printf("  %-28s %9.4f ms  %8.1f TFLOP/s  %5.1f%% of %.0f TFLOP/s\n", version, ms, flops / ms / 1e9,
               100.0 * flops / ms / 1e9 / CEILING_BF16_TFLOPS, CEILING_BF16_TFLOPS);
    else
        printf("  %-28s %9.4f ms  %8.1f GB/s     %5.1f%% of %.2f TB/s\n", version, ms, bytes / ms / 1e6,
               100.0 * bytes / ms / 1e9 / CEILING_COPY_TBPS, CEILING_COPY_TBPS);
}

#ifdef __CUDACC__
// Fills a device buffer with bf16 values uniform in [-amplitude, amplitude), drawn on the GPU from a splitmix64
// of the index: 7B-sized weights and activations are hundreds of MB, too slow to draw on the host.
static __global__ void lab_fill_uniform_kernel(__nv_bfloat16* p, size_t n, uint64_t seed, float amplitude) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull + seed;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        p[i] = __float2bfloat16_rn(amplitude * ((float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f));
    }
}
static inline void fill_uniform_device(__nv_bfloat16* p, size_t n, uint64_t seed, float amplitude) {
    lab_fill_uniform_kernel<<<4096, 256>>>(p, n, seed, amplitude);
    cudaCheck(cudaGetLastError());
}
#endif
