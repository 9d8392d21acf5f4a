// linear_nf4_dequant.cu: lab for NF4 -> bf16 dequantization of the frozen base weights, bit-exact with bitsandbytes, at Qwen2.5-7B shapes.
//
// Build and run: make build/lab_linear_nf4_dequant && ./build/lab_linear_nf4_dequant
//
// The kernel reads 0.5 byte of codes per weight (+1/64 byte of absmax) and writes 2 bytes of bf16: it is bound by
// the writes. The floor for a Qwen2.5-7B layer (233M weights, 583 MB moved) is 0.137 ms at 4.27 TB/s.
// version 1: one thread per weight, a byte load and a 2-byte store (the simplest correct one)
// version 2: one thread per 8 weights: one 4-byte load of codes, one 16-byte store, a warp writing 512 contiguous bytes
// version 3: the production launcher (kernels/nf4_dequant.cu): version 2 with 4 chunks per thread, all loads first
// version 4: one thread per 32 weights: one 16-byte load of codes, four 16-byte stores of 64 contiguous bytes
// version 0, a deliberate break: version 2 with the block scale computed by one fused multiply-add. It must differ
//   from the CPU somewhere (by an ulp of the scale, which moves a bf16 rounding now and then): the check has teeth.
// Every version is checked bit for bit against nf4_view_dequantize (the CPU reference) on fresh random NF4 tensors.
#include <cstring>
#include <vector>

#include "dev/cuda/lab_common.cuh"
#include "kernels/nf4_dequant.cuh"
#include "quant/nf4.h"

// ---- the versions --------------------------------------------------------------------------------------------

// The rounding contract, the same in every version: the block scale as bitsandbytes rounds it (multiply, then add
// the offset: two roundings, never an FMA), then bf16(code * scale) with round-to-nearest-even.
__device__ __forceinline__ float block_scale(const NF4View& t, const float* nested_code, int64_t block) {
    if (!t.double_quant) return t.absmax_f32[block];
    return __fadd_rn(__fmul_rn(nested_code[t.absmax_q[block]], t.nested_absmax[block / NF4_NESTED_BLOCK]),
                     t.nested_offset);
}
__device__ __forceinline__ __nv_bfloat16 dequant(const float* code, unsigned q, float scale) {
    return __float2bfloat16_rn(__fmul_rn(code[q], scale));
}

__global__ void nf4_dequant_v1(__nv_bfloat16* out, NF4View t, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint8_t byte = t.packed[i / 2];
    unsigned q = i % 2 == 0 ? byte >> 4 : byte & 0x0F;
    out[i] = dequant(t.code, q, block_scale(t, t.nested_code, i / NF4_BLOCK));
}

// n a multiple of 8 (every Qwen shape is a multiple of 64), tables in shared memory
__global__ void nf4_dequant_v2(__nv_bfloat16* out, NF4View t, int64_t n) {
    __shared__ float code[16], nested_code[256];
    if (threadIdx.x < 16) code[threadIdx.x] = t.code[threadIdx.x];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) nested_code[i] = t.nested_code[i];
    __syncthreads();
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c * 8 >= n) return;
    uint32_t word = ((const uint32_t*)t.packed)[c];
    float scale = block_scale(t, nested_code, c / 8);
    uint4 result;
    __nv_bfloat16* v = (__nv_bfloat16*)&result;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        unsigned byte = (word >> (8 * j)) & 0xFF;
        v[2 * j] = dequant(code, byte >> 4, scale);
        v[2 * j + 1] = dequant(code, byte & 0x0F, scale);
    }
    *(uint4*)(out + c * 8) = result;
}

// version 2 with fmaf for the scale: rounds once where bitsandbytes rounds twice
__global__ void nf4_dequant_v0_fma(__nv_bfloat16* out, NF4View t, int64_t n) {
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c * 8 >= n) return;
    uint32_t word = ((const uint32_t*)t.packed)[c];
    int64_t block = c / 8;
    float scale = fmaf(t.nested_code[t.absmax_q[block]], t.nested_absmax[block / NF4_NESTED_BLOCK], t.nested_offset);
    uint4 result;
    __nv_bfloat16* v = (__nv_bfloat16*)&result;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        unsigned byte = (word >> (8 * j)) & 0xFF;
        v[2 * j] = dequant(t.code, byte >> 4, scale);
        v[2 * j + 1] = dequant(t.code, byte & 0x0F, scale);
    }
    *(uint4*)(out + c * 8) = result;
}

// n a multiple of 32
__global__ void nf4_dequant_v4(__nv_bfloat16* out, NF4View t, int64_t n) {
    __shared__ float code[16], nested_code[256];
    if (threadIdx.x < 16) code[threadIdx.x] = t.code[threadIdx.x];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) nested_code[i] = t.nested_code[i];
    __syncthreads();
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c * 32 >= n) return;
    uint4 words = ((const uint4*)t.packed)[c];
    float scale = block_scale(t, nested_code, c / 2);
    const uint32_t* w = (const uint32_t*)&words;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        uint4 result;
        __nv_bfloat16* v = (__nv_bfloat16*)&result;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            unsigned byte = (w[k] >> (8 * j)) & 0xFF;
            v[2 * j] = dequant(code, byte >> 4, scale);
            v[2 * j + 1] = dequant(code, byte & 0x0F, scale);
        }
        *(uint4*)(out + c * 32 + k * 8) = result;
    }
}

static void run_version(int version, __nv_bfloat16* out, const NF4View& t) {
    int64_t n = t.numel();
    switch (version) {
        case 0: nf4_dequant_v0_fma<<<(unsigned)((n / 8 + 255) / 256), 256>>>(out, t, n); break;
        case 1: nf4_dequant_v1<<<(unsigned)((n + 255) / 256), 256>>>(out, t, n); break;
        case 2: nf4_dequant_v2<<<(unsigned)((n / 8 + 255) / 256), 256>>>(out, t, n); break;
        case 3: nf4_dequantize_gpu(out, t, 0); break;
        case 4: nf4_dequant_v4<<<(unsigned)((n / 32 + 255) / 256), 256>>>(out, t, n); break;
    }
    cudaCheck(cudaGetLastError());
}
static const char* VERSION_NAMES[] = {"v0 deliberately fused (FMA)", "v1 thread/weight", "v2 8 weights/thread", "v3 production (x4 unroll)",
                                      "v4 32 weights/thread"};

// ---- random NF4 tensors --------------------------------------------------------------------------------------

// Random codes, absmax bytes and nested scales of the size real weights have (~0.01..0.1): every byte pattern is a
// valid NF4 tensor, and random ones exercise every code and every entry of the nested map.
static NF4Tensor random_nf4(int64_t rows, int64_t cols, Rng& rng) {
    NF4Tensor t;
    t.rows = rows;
    t.cols = cols;
    nf4_default_code(t.code);
    nf4_default_nested_code(t.nested_code);
    t.packed.resize((t.numel() + 1) / 2);
    for (size_t i = 0; i < t.packed.size(); i += 8) {
        uint64_t r = rng.next_u64();
        memcpy(t.packed.data() + i, &r, std::min<size_t>(8, t.packed.size() - i));
    }
    t.absmax_q.resize(t.num_blocks());
    for (uint8_t& b : t.absmax_q) b = (uint8_t)rng.next_u64();
    t.nested_absmax.resize(t.num_nested_blocks());
    for (float& s : t.nested_absmax) s = 0.01f + 0.1f * rng.next_float();
    t.nested_offset = 0.05f * rng.next_float();
    return t;
}

struct DeviceNF4 {
    NF4View view;
    std::vector<void*> owned;
    explicit DeviceNF4(const NF4Tensor& t) {
        view = nf4_view(t);
        view.packed = upload(t.packed);
        view.absmax_q = upload(t.absmax_q);
        view.nested_absmax = upload(t.nested_absmax);
        view.code = upload(std::vector<float>(t.code, t.code + 16));
        view.nested_code = upload(std::vector<float>(t.nested_code, t.nested_code + 256));
    }
    template <typename T>
    T* upload(const std::vector<T>& v) {
        T* d = to_device(v);
        owned.push_back(d);
        return d;
    }
    ~DeviceNF4() {
        for (void* p : owned) cudaFree(p);
    }
};

int main() {
    struct Shape {
        const char* name;
        int64_t rows, cols;
        int per_layer;  // how many linears of a Qwen2.5-7B layer have this shape
    };
    // Qwen2.5-7B: C 3584, I 18944, KVH*HD 512
    const Shape shapes[] = {{"q/o [3584, 3584]", 3584, 3584, 2},
                            {"k/v [512, 3584]", 512, 3584, 2},
                            {"gate/up [18944, 3584]", 18944, 3584, 2},
                            {"down [3584, 18944]", 3584, 18944, 1}};
    Rng rng(1234);
    bool all_ok = true;
    double layer_ms[5] = {0, 0, 0, 0, 0}, layer_bytes = 0;
    printf("NF4 dequantization at Qwen2.5-7B shapes (bytes: codes + absmax read, bf16 written)\n");
    for (const Shape& s : shapes) {
        NF4Tensor t = random_nf4(s.rows, s.cols, rng);
        DeviceNF4 d(t);
        std::vector<uint16_t> ref(t.numel());
        nf4_view_dequantize(nf4_view(t), ref.data());
        __nv_bfloat16* out;
        cudaCheck(cudaMalloc(&out, t.numel() * sizeof(__nv_bfloat16)));
        double bytes = nf4_dequantize_bytes(d.view);
        printf("%s: %.1f M weights, %.1f MB moved\n", s.name, t.numel() / 1e6, bytes / 1e6);
        for (int v = 0; v <= 4; v++) {
            cudaCheck(cudaMemset(out, 0xFF, t.numel() * sizeof(__nv_bfloat16)));  // NaN: unwritten shows
            run_version(v, out, d.view);
            std::vector<uint16_t> got = to_host((const uint16_t*)out, t.numel());
            size_t differ = 0, first = 0;
            for (size_t i = 0; i < got.size(); i++)
                if (got[i] != ref[i] && differ++ == 0) first = i;
            const char* verdict = v == 0 ? (differ ? "caught" : "unnoticed at this shape") : differ ? "FAIL" : "ok";
            printf("  %-28s %s: %zu of %lld differ from nf4_view_dequantize", VERSION_NAMES[v], verdict, differ,
                   (long long)t.numel());
            if (differ) printf(" (first [%zu]: 0x%04x vs 0x%04x)", first, got[first], ref[first]);
            printf("\n");
            if (v > 0) all_ok = all_ok && differ == 0;
        }
        for (int v = 1; v <= 4; v++) {
            float ms = time_kernel_ms([&] { run_version(v, out, d.view); });
            report(VERSION_NAMES[v], ms, bytes, 0);
            layer_ms[v] += ms * s.per_layer;
        }
        layer_bytes += bytes * s.per_layer;
        cudaCheck(cudaFree(out));
    }
    printf("one Qwen2.5-7B layer (7 linears, %.0f MB moved; floor %.3f ms at %.2f TB/s):\n", layer_bytes / 1e6,
           layer_bytes / CEILING_COPY_TBPS / 1e9, CEILING_COPY_TBPS);
    for (int v = 1; v <= 4; v++) report(VERSION_NAMES[v], (float)layer_ms[v], layer_bytes, 0);
    printf("%s\n", all_ok ? "all versions bit-identical" : "FAIL: some version differs from the CPU reference");
    return all_ok ? 0 : 1;
}
