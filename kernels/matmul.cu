// matmul.cu: the GEMMs of training through cuBLASLt (bf16 operands, fp32 accumulation), and the LoRA linear layer built from them.
//
// Why the rank-R products run in bf16 rather than fp32: PEFT computes the adapter branch in fp32, but cuBLASLt
// has no fp32-operand GEMM with a bf16 output, and fp32 GEMMs run on the CUDA cores (~50 TFLOP/s, no tensor
// cores), which would make x A^T for q/k/v (2*N*C*3R flops) cost a third of the q/k/v GEMMs themselves. So A and
// B are kept as bf16 copies of the fp32 masters (refreshed after each optimizer step: 2 bytes per parameter) and
// ax = x A^T is rounded to bf16 between the two GEMMs. Each of those roundings perturbs the adapter term by at
// most 2^-9 of the sum of its terms' magnitudes, while the adapter term is added to a bf16 output whose own
// rounding is up to 2^-8 of |y|: y moves by about an ulp at most, and only where the adapter is as large as y
// (test/gpu/test_linear.cpp measures it against the fp32 CPU reference). Gradients come out in fp32 (dA, dB
// accumulated with beta = 1) from the same bf16 operands.
//
// Why the adapter is added by a second GEMM with beta = 1 (y = 1*y + scale * ax B^T, in place): PEFT rounds the
// base output to bf16 and then rounds base + adapter once more. A single GEMM over the concatenated
// [x | scale*ax] . [W | B]^T would round only once, and would need x and the dequantized W rewritten into wider
// buffers; the second GEMM keeps HF's two roundings exactly, at the price of one more read and write of y.
// What is batched instead: all linears of a group share one x A^T GEMM, one dx += d(ax) A GEMM and (with
// consecutive gradients) one dA GEMM, so a group of G linears adds 2G+1 small GEMMs per pass, not 3G or more.
// Measured on the H200 (dev/cuda/linear_matmul.cu, N 15744, R 32): the rank-R GEMMs are memory-bound passes over
// x, y, dy and dx (x A^T alone reads all of x: 0.6 GB for down_proj), and add 10-22% to the forward of each
// projection (k/v: 55%) and 17-37% to its backward; a whole layer runs at 77% of 800 TFLOP/s. Computing the
// adapter first and letting the base GEMM's beta = 1 epilogue add it (one rounding instead of PEFT's two) saved
// 0-8% of the forward, within the run-to-run spread of ~10%, so the exact ordering stays. The next step would be the
// concatenated-K GEMM above, with the backend laying x and ax (and dy and d(ax)) out side by side.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "kernels/cuda_common.cuh"
#include "kernels/matmul.cuh"
#include "kernels/nf4_dequant.cuh"

// ---------------------------------------------------------------------------------------------------------------
// CUDA kernels

__global__ void f32_to_bf16_kernel(__nv_bfloat16* out, const float* in, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(in[i]);
}

// ---------------------------------------------------------------------------------------------------------------
// kernel launchers

// What cuBLASLt needs for one shape: the operation, the three layouts, and the algorithm its heuristic chose.
struct MatmulPlan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t b_layout = nullptr, a_layout = nullptr, d_layout = nullptr;
    cublasLtMatmulAlgo_t algo;
};

// trans_a, trans_b, M, N, K, lda, ldb, ldd, d_f32, has_bias, and the alignments of a, b and d: the algorithm
// chosen for 256-byte aligned pointers may not run on a column slice that is only 64-byte aligned.
typedef std::array<int64_t, 13> MatmulKey;

struct MatmulContext {
    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
    std::map<MatmulKey, MatmulPlan> plans;
};

size_t matmul_workspace_bytes() { return (size_t)32 << 20; }

MatmulContext* matmul_create(void* workspace, size_t workspace_bytes) {
    MatmulContext* ctx = new MatmulContext();
    cublasCheck(cublasLtCreate(&ctx->handle));
    ctx->workspace = workspace;
    ctx->workspace_bytes = workspace_bytes;
    return ctx;
}

void matmul_destroy(MatmulContext* ctx) {
    if (!ctx) return;
    for (auto& entry : ctx->plans) {
        MatmulPlan& p = entry.second;
        cublasCheck(cublasLtMatrixLayoutDestroy(p.a_layout));
        cublasCheck(cublasLtMatrixLayoutDestroy(p.b_layout));
        cublasCheck(cublasLtMatrixLayoutDestroy(p.d_layout));
        cublasCheck(cublasLtMatmulDescDestroy(p.desc));
    }
    cublasCheck(cublasLtDestroy(ctx->handle));
    delete ctx;
}

// The largest power of two (up to 256) dividing the address.
static uint32_t pointer_alignment(const void* p) {
    uint32_t align = 256;
    while (align > 1 && (uintptr_t)p % align != 0) align /= 2;
    return align;
}

// cuBLAS is column-major. A row-major d [M, N] is the column-major d^T [N, M], and
// d^T = op(b)^T . op(a)^T: cuBLAS's first operand is our b, its second our a, with m = N, n = M, k = K.
// A row-major [r, c] matrix is the column-major [c, r] one with the same leading dimension, so our b [K, N]
// (no trans_b) is cuBLAS's [N, K] with op N, and b [N, K] (trans_b) is [K, N] with op T; likewise for a.
static const MatmulPlan& matmul_plan(MatmulContext* ctx, const MatmulKey& key) {
    auto found = ctx->plans.find(key);
    if (found != ctx->plans.end()) return found->second;
    bool trans_a = key[0], trans_b = key[1], d_f32 = key[8], has_bias = key[9];
    int64_t M = key[2], N = key[3], K = key[4], lda = key[5], ldb = key[6], ldd = key[7];

    MatmulPlan p;
    cublasCheck(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t op_first = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;   // cuBLAS's A: our b
    cublasOperation_t op_second = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS's B: our a
    cublasCheck(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
    cublasCheck(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
    if (has_bias) {
        cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bias_type = CUDA_R_16BF;
        cublasCheck(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
        cublasCheck(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                   sizeof(bias_type)));
    }
    cublasCheck(cublasLtMatrixLayoutCreate(&p.b_layout, CUDA_R_16BF, trans_b ? K : N, trans_b ? N : K, ldb));
    cublasCheck(cublasLtMatrixLayoutCreate(&p.a_layout, CUDA_R_16BF, trans_a ? M : K, trans_a ? K : M, lda));
    cublasCheck(cublasLtMatrixLayoutCreate(&p.d_layout, d_f32 ? CUDA_R_32F : CUDA_R_16BF, N, M, ldd));

    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t workspace = ctx->workspace_bytes;
    uint32_t align_a = (uint32_t)key[10], align_b = (uint32_t)key[11], align_d = (uint32_t)key[12];
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                     sizeof(workspace)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_b,
                                                     sizeof(align_b)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_a,
                                                     sizeof(align_a)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                     sizeof(align_d)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                     sizeof(align_d)));
    cublasLtMatmulHeuristicResult_t result;
    int found_algos = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(ctx->handle, p.desc, p.b_layout, p.a_layout, p.d_layout, p.d_layout,
                                               pref, 1, &result, &found_algos));
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    if (found_algos == 0) {
        fprintf(stderr, "error: cuBLASLt has no algorithm for d [%lld, %lld] (%s, ld %lld) = a%s [%lld, %lld] (ld %lld) . "
                "b%s (ld %lld), K %lld, alignments a %u b %u d %u: check the shapes and strides\n",
                (long long)M, (long long)N, d_f32 ? "fp32" : "bf16", (long long)ldd, trans_a ? "^T" : "", (long long)M,
                (long long)K, (long long)lda, trans_b ? "^T" : "", (long long)ldb, (long long)K, align_a, align_b,
                align_d);
        exit(EXIT_FAILURE);
    }
    p.algo = result.algo;
    return ctx->plans.emplace(key, p).first->second;
}

void matmul(MatmulContext* ctx, void* d, bool d_f32, int ldd, const __nv_bfloat16* a, bool trans_a, int lda,
            const __nv_bfloat16* b, bool trans_b, int ldb, int M, int N, int K, float alpha, float beta,
            const __nv_bfloat16* bias, cudaStream_t stream) {
    if (bias && d_f32) {
        fprintf(stderr, "error: matmul: a bias epilogue is only wired for a bf16 output\n");
        exit(EXIT_FAILURE);
    }
    MatmulKey key = {trans_a, trans_b, M, N, K, lda, ldb, ldd, d_f32, bias != nullptr,
                     pointer_alignment(a), pointer_alignment(b), pointer_alignment(d)};
    const MatmulPlan& p = matmul_plan(ctx, key);
    if (bias)  // the one per-call attribute; the cached descriptor is only used on this host thread
        cublasCheck(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    cublasCheck(cublasLtMatmul(ctx->handle, p.desc, &alpha, b, p.b_layout, a, p.a_layout, &beta, d, p.d_layout, d,
                               p.d_layout, &p.algo, ctx->workspace, ctx->workspace_bytes, stream));
}

// ---- the LoRA linear layer -------------------------------------------------------------------------------------

size_t lora_linear_weight_scratch_bytes(const LoraLinearGpu* linears, int G) {
    size_t bytes = 0;
    for (int g = 0; g < G; g++) {
        const LinearWeight& w = *linears[g].base;
        if (w.format == LinearFormat::NF4) bytes = std::max(bytes, (size_t)w.out * w.in * sizeof(__nv_bfloat16));
    }
    return bytes;
}

// The bf16 weight [out, in] of a base linear: its own, or its NF4 codes dequantized into the scratch (stream order
// makes reusing one scratch for every linear of a group safe).
static const __nv_bfloat16* base_weight(const LinearWeight& w, __nv_bfloat16* scratch, cudaStream_t stream) {
    if (w.format == LinearFormat::BF16) return (const __nv_bfloat16*)w.w;
    if (!scratch) {
        fprintf(stderr, "error: an NF4 linear [%lld, %lld] needs w_scratch (lora_linear_weight_scratch_bytes)\n",
                (long long)w.out, (long long)w.in);
        exit(EXIT_FAILURE);
    }
    nf4_dequantize_gpu(scratch, w.nf4, stream);
    return scratch;
}

// Every linear of the group reads the same x, so they must agree on `in`; bad arguments are a backend bug.
static int group_in_features(const LoraLinearGpu* linears, int G, int R) {
    if (G < 1 || R < 1) {
        fprintf(stderr, "error: lora_linear: a group needs G >= 1 linears and rank R >= 1, got G %d R %d\n", G, R);
        exit(EXIT_FAILURE);
    }
    int in = (int)linears[0].base->in;
    for (int g = 1; g < G; g++)
        if (linears[g].base->in != in) {
            fprintf(stderr, "error: lora_linear: linear %d of a group reads %lld features, linear 0 reads %d: a group "
                    "shares its input\n", g, (long long)linears[g].base->in, in);
            exit(EXIT_FAILURE);
        }
    return in;
}

// True when every linear has an adapter and the g-th matrix of `pointers` starts g * stride floats/halves after
// the first: the whole group is then one matrix [G*R, in] and one GEMM serves it.
template <typename T, typename Get>
static bool group_consecutive(const LoraLinearGpu* linears, int G, size_t stride, Get get) {
    for (int g = 0; g < G; g++) {
        const T* p = get(linears[g]);
        if (!linears[g].A || !p || p != get(linears[0]) + g * stride) return false;
    }
    return true;
}

void lora_linear_forward(MatmulContext* ctx, const LoraLinearGpu* linears, int G, const __nv_bfloat16* x, int N,
                         int R, float scale, __nv_bfloat16* const* y, __nv_bfloat16* ax, __nv_bfloat16* w_scratch,
                         cudaStream_t stream) {
    int in = group_in_features(linears, G, R), GR = G * R;
    for (int g = 0; g < G; g++) {
        const LinearWeight& base = *linears[g].base;
        const __nv_bfloat16* w = base_weight(base, w_scratch, stream);
        matmul(ctx, y[g], false, (int)base.out, x, false, in, w, true, in, N, (int)base.out, in, 1.0f, 0.0f,
               (const __nv_bfloat16*)base.bias, stream);
    }
    // ax [N, G*R] = x A^T, one GEMM for the group when its A copies are consecutive
    if (group_consecutive<__nv_bfloat16>(linears, G, (size_t)R * in, [](const LoraLinearGpu& l) { return l.A; })) {
        matmul(ctx, ax, false, GR, x, false, in, linears[0].A, true, in, N, GR, in, 1.0f, 0.0f, nullptr, stream);
    } else {
        for (int g = 0; g < G; g++)
            if (linears[g].A)
                matmul(ctx, ax + g * R, false, GR, x, false, in, linears[g].A, true, in, N, R, in, 1.0f, 0.0f,
                       nullptr, stream);
    }
    // y = round(y + scale * ax_g B_g^T): beta = 1 reads the rounded base output back, as PEFT adds to it
    for (int g = 0; g < G; g++) {
        if (!linears[g].A) continue;
        int out = (int)linears[g].base->out;
        matmul(ctx, y[g], false, out, ax + g * R, false, GR, linears[g].B, true, R, N, out, R, scale, 1.0f, nullptr,
               stream);
    }
}

void lora_linear_backward(MatmulContext* ctx, const LoraLinearGpu* linears, int G, const __nv_bfloat16* x, int N,
                          int R, float scale, const __nv_bfloat16* const* dy, const __nv_bfloat16* ax,
                          __nv_bfloat16* dx, bool accumulate, __nv_bfloat16* dax, __nv_bfloat16* w_scratch,
                          cudaStream_t stream) {
    int in = group_in_features(linears, G, R), GR = G * R;
    bool any_adapter = false;
    for (int g = 0; g < G; g++) {
        const LoraLinearGpu& l = linears[g];
        if (!l.A) continue;
        any_adapter = true;
        int out = (int)l.base->out;
        // dB [out, R] += scale * dy^T [out, N] . ax_g [N, R]
        matmul(ctx, l.dB, true, R, dy[g], true, out, ax + g * R, false, GR, out, R, N, scale, 1.0f, nullptr, stream);
        // dax_g [N, R] = scale * dy [N, out] . B [out, R]
        matmul(ctx, dax + g * R, false, GR, dy[g], false, out, l.B, false, R, N, R, out, scale, 0.0f, nullptr,
               stream);
    }
    // dA [R, in] += dax_g^T [R, N] . x [N, in]
    if (group_consecutive<float>(linears, G, (size_t)R * in, [](const LoraLinearGpu& l) { return l.dA; })) {
        matmul(ctx, linears[0].dA, true, in, dax, true, GR, x, false, in, GR, in, N, 1.0f, 1.0f, nullptr, stream);
    } else {
        for (int g = 0; g < G; g++)
            if (linears[g].A)
                matmul(ctx, linears[g].dA, true, in, dax + g * R, true, GR, x, false, in, R, in, N, 1.0f, 1.0f,
                       nullptr, stream);
    }
    // dx [N, in] (+)= dy_g [N, out] . W_g [out, in] for each g, then + dax [N, G*R] . A [G*R, in]
    for (int g = 0; g < G; g++) {
        const LinearWeight& base = *linears[g].base;
        const __nv_bfloat16* w = base_weight(base, w_scratch, stream);
        float beta = (g > 0 || accumulate) ? 1.0f : 0.0f;
        matmul(ctx, dx, false, in, dy[g], false, (int)base.out, w, false, in, N, in, (int)base.out, 1.0f, beta,
               nullptr, stream);
    }
    if (!any_adapter) return;
    if (group_consecutive<__nv_bfloat16>(linears, G, (size_t)R * in, [](const LoraLinearGpu& l) { return l.A; })) {
        matmul(ctx, dx, false, in, dax, false, GR, linears[0].A, false, in, N, in, GR, 1.0f, 1.0f, nullptr, stream);
    } else {
        for (int g = 0; g < G; g++)
            if (linears[g].A)
                matmul(ctx, dx, false, in, dax + g * R, false, GR, linears[g].A, false, in, N, in, R, 1.0f, 1.0f,
                       nullptr, stream);
    }
}

void lora_to_bf16(__nv_bfloat16* out, const float* in, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    size_t blocks = std::min<size_t>((n + 255) / 256, 65536);
    f32_to_bf16_kernel<<<(unsigned)blocks, 256, 0, stream>>>(out, in, n);
    cudaCheck(cudaGetLastError());
}
