// gpu_test_util.h: helpers the GPU test files share: device arrays that free themselves, random bf16 and NF4 inputs for both sides, and the elementwise comparison with a tolerance.
#pragma once
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/rng.h"
#include "dev/cuda/lab_common.cuh"  // fill_uniform, to_bf16, to_device, to_host, bf16_to_floats, validate
#include "kernels/cuda_common.cuh"
#include "quant/bf16.h"
#include "quant/nf4.h"

// Everything here is inline or a template: each GPU test file includes it, and one program links them all. Helpers
// of one file only belong in an anonymous namespace in that file, so that two files can never give one name two
// different definitions (the linker would keep one of them for both, silently).

// ---- host <-> device ------------------------------------------------------------------------------------------

// A device array that frees itself, even when a REQUIRE ends the test case early. bf16 arrays travel as their bits:
// bf16_bits and __nv_bfloat16 are both 2 bytes. Default-constructed it holds nullptr (an absent optional array).
template <typename T>
struct DeviceArray {
    T* ptr = nullptr;
    size_t n = 0;
    DeviceArray() = default;
    explicit DeviceArray(size_t count) { allocate(count); }
    template <typename H>
    explicit DeviceArray(const std::vector<H>& host) { assign(host); }
    ~DeviceArray() { cudaFree(ptr); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;

    // count elements, uninitialized (at least one, so that ptr is never nullptr once allocated)
    void allocate(size_t count) {
        cudaFree(ptr);
        ptr = nullptr;
        n = count;
        cudaCheck(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)));
    }
    template <typename H>
    void assign(const std::vector<H>& host) {
        static_assert(sizeof(H) == sizeof(T), "host and device element sizes differ");
        allocate(host.size());
        cudaCheck(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    }
    // The contents once every kernel queued so far has finished (download<bf16_bits>() for a bf16 array's bits).
    template <typename H = T>
    std::vector<H> download() const {
        static_assert(sizeof(H) == sizeof(T), "host and device element sizes differ");
        std::vector<H> out(n);
        cudaCheck(cudaDeviceSynchronize());
        cudaCheck(cudaMemcpy(out.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
        return out;
    }
};
typedef DeviceArray<__nv_bfloat16> DeviceBf16;

// A bf16 device array's values as floats, for comparing with the CPU reference.
inline std::vector<float> download_floats(const DeviceBf16& d) { return bf16_to_floats(d.download<bf16_bits>()); }

// ---- inputs ---------------------------------------------------------------------------------------------------

// n uniform values in [lo, hi) rounded to bf16: the bits for the GPU, and the same values as floats for the CPU.
struct RandomBf16 {
    std::vector<float> values;
    std::vector<bf16_bits> bits;
    RandomBf16(size_t n, Rng& rng, float lo, float hi) : values(n) {
        fill_uniform(values, rng, lo, hi);
        bits = to_bf16(values);
    }
};

// Random NF4 codes and scales (every byte pattern is a valid NF4 tensor), with the default tables. random_scale
// draws each nested scale (double quantization) or block scale; nested_offset is double quantization's offset.
inline NF4Tensor random_nf4(int64_t rows, int64_t cols, bool double_quant, Rng& rng,
                            const std::function<float()>& random_scale, float nested_offset) {
    NF4Tensor t;
    t.rows = rows;
    t.cols = cols;
    t.double_quant = double_quant;
    nf4_default_code(t.code);
    nf4_default_nested_code(t.nested_code);
    t.packed.resize((t.numel() + 1) / 2);
    for (uint8_t& b : t.packed) b = (uint8_t)rng.next_u64();
    if (double_quant) {
        t.absmax_q.resize(t.num_blocks());
        for (uint8_t& b : t.absmax_q) b = (uint8_t)rng.next_u64();
        t.nested_absmax.resize(t.num_nested_blocks());
        for (float& s : t.nested_absmax) s = random_scale();
        t.nested_offset = nested_offset;
    } else {
        t.absmax_f32.resize(t.num_blocks());
        for (float& s : t.absmax_f32) s = random_scale();
    }
    return t;
}

// An NF4 tensor's arrays in GPU memory and the view of them the kernels take.
struct GpuNF4 {
    DeviceArray<uint8_t> packed, absmax_q;
    DeviceArray<float> nested_absmax, absmax_f32, code, nested_code;
    NF4View view;
    explicit GpuNF4(const NF4View& host)
        : packed(std::vector<uint8_t>(host.packed, host.packed + (host.numel() + 1) / 2)),
          code(std::vector<float>(host.code, host.code + 16)) {
        view = host;
        int64_t blocks = host.num_blocks();
        if (host.double_quant) {
            absmax_q.assign(std::vector<uint8_t>(host.absmax_q, host.absmax_q + blocks));
            int64_t nested = (blocks + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK;
            nested_absmax.assign(std::vector<float>(host.nested_absmax, host.nested_absmax + nested));
            nested_code.assign(std::vector<float>(host.nested_code, host.nested_code + 256));
        } else {
            absmax_f32.assign(std::vector<float>(host.absmax_f32, host.absmax_f32 + blocks));
        }
        view.packed = packed.ptr;
        view.absmax_q = absmax_q.ptr;
        view.nested_absmax = nested_absmax.ptr;
        view.absmax_f32 = absmax_f32.ptr;
        view.code = code.ptr;
        view.nested_code = nested_code.ptr;
    }
};

// ---- comparison -------------------------------------------------------------------------------------------------

inline float max_abs(const std::vector<float>& v) {
    float m = 0.0f;
    for (float x : v) m = std::max(m, std::fabs(x));
    return m;
}

// got vs ref with |got - ref| <= abs_tol + rel_tol * |ref| everywhere (validate prints the worst element), and at
// most a share max_inexact_share of the elements whose bits differ from ref rounded to bf16. The second bound is
// what catches a missing or extra bf16 rounding: those move results by at most an ulp, inside the first bound, but
// on a large share of the elements.
inline void check_close(const char* name, const std::vector<float>& got, const std::vector<float>& ref, float abs_tol,
                        float rel_tol, double max_inexact_share = 1.0) {
    REQUIRE(got.size() == ref.size());
    INFO(name);
    CHECK(validate(name, got.data(), ref.data(), got.size(), abs_tol, rel_tol));
    if (max_inexact_share >= 1.0) return;
    size_t inexact = 0, allowed = (size_t)(max_inexact_share * got.size());
    for (size_t i = 0; i < got.size(); i++)
        if (f32_to_bf16(got[i]) != f32_to_bf16(ref[i])) inexact++;
    printf("  %-28s %zu not bit-equal after rounding to bf16 (%zu allowed)\n", "", inexact, allowed);
    CHECK(inexact <= allowed);
}
