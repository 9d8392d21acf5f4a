// gpu_model.cu: Qwen2 + LoRA on one GPU from the kernels' launchers: the memory plan, the packed forward to log-probs with a checkpoint per layer, and the backward to LoRA recomputing each layer.
//
// Memory (llm.c style): a few cudaMalloc calls, sized at creation and never grown. The weights are the planned host
// buffer uploaded byte for byte (NF4 linears stay NF4 and are dequantized one linear at a time into a scratch, or,
// with GpuOptions::bf16_base_copy, all at once into a bf16 copy that the GEMMs read instead).
// The LoRA state holds fp32 params, grads and AdamW moments in the host LoraWeights layout (so the optimizer
// kernels, the gradient norm and checkpoints see the CPU's layout), plus bf16 copies of A and B laid out so each
// group's A's (q k v, gate up) are consecutive: x A^T of a group is then one GEMM (kernels/matmul.cuh).
// The activations hold, for one micro-batch of at most max_tokens tokens: every layer's input (the checkpoints),
// the final norm's output, and ONE layer's working set. The backward walks the layers from the last, recomputes
// each layer's forward from its checkpoint into that working set and runs its backward right away; a full set of
// activations for all layers (about 28x the working set at 7B) is never held.
//
// Precision, as HF's bf16 model: activations bf16, rounded where HF rounds (each kernel says where); fp32 for
// the RMSNorm rstd, attention's logsumexp and D, the logits' logsumexp, log-probs and their gradients, every GEMM
// accumulation and the LoRA params, grads and moments. Activation gradients are bf16 (HF's autograd in bf16 keeps
// them bf16 too); the residual stream's gradient is one bf16 buffer that each norm's backward adds into.
#include "model/gpu_model.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/text.h"
#include "kernels/adamw.cuh"
#include "kernels/attention.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/embedding.cuh"
#include "kernels/logprob.cuh"
#include "kernels/matmul.cuh"
#include "kernels/nf4_dequant.cuh"
#include "kernels/nf4_tile.cuh"
#include "kernels/residual.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/swiglu.cuh"
#include "model/cpu_model.h"
#include "model/gpu_generate.h"

typedef __nv_bfloat16 bf16;

// Attention's per-row statistics (its logsumexp and the backward's D) are laid out [B, NH, T] with T the longest
// sequence, so a micro-batch of very unequal lengths needs more rows than tokens; they are sized for this many
// times max_tokens (a few MB at 7B), and the packer starts a new micro-batch before B * T would exceed it.
static const int ATTENTION_PAD_FACTOR = 4;

// Positions the RoPE tables cover: a micro-batch's longest sequence, and generation's longest sequence.
static int rope_positions(const GpuOptions& opt) { return std::max(opt.max_tokens, opt.max_sequence_length); }

// ----------------------------------------------------------------------------------------------------------------
// the memory plan

// Carves 256-byte aligned pieces out of one allocation. With base == nullptr it only counts (the plan).
struct Arena {
    char* base = nullptr;
    size_t offset = 0;
    template <typename T>
    T* take(size_t count) {
        size_t at = offset;
        offset += (count * sizeof(T) + 255) / 256 * 256;
        return base ? reinterpret_cast<T*>(base + at) : nullptr;
    }
};

// Every device array of one micro-batch, in the activation allocation.
struct GpuActs {
    // the micro-batch: token ids, per-token positions, sequence starts, next-token targets and log-prob rows
    int32_t* tokens = nullptr;
    int *positions = nullptr, *cu_seqlens = nullptr, *targets = nullptr, *rows = nullptr;
    float *logp = nullptr, *logit_lse = nullptr, *dlogp = nullptr;  // [Ntok], indexed by token row
    float* inv_freq = nullptr;
    bf16 *rope_cos = nullptr, *rope_sin = nullptr;  // [max_tokens, HD/2]
    // checkpoints: the residual stream entering layer l at l < L, leaving the last layer at L; the final norm
    bf16* checkpoints = nullptr;  // [L+1][max_tokens, C]
    bf16* final_h = nullptr;      // [max_tokens, C]
    float* final_rstd = nullptr;  // [max_tokens]
    // one layer's forward (recomputed in the backward) ...
    bf16 *ln1 = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *att = nullptr, *x_mid = nullptr, *ln2 = nullptr;
    bf16 *gate = nullptr, *up = nullptr, *mlp = nullptr, *proj = nullptr;
    bf16 *ax_qkv = nullptr, *ax_o = nullptr, *ax_gu = nullptr, *ax_down = nullptr;  // [N, G*R]: x A^T per group
    float *rstd1 = nullptr, *rstd2 = nullptr, *att_lse = nullptr, *att_D = nullptr;
    // ... and its backward
    bf16 *d_resid = nullptr, *d_ln = nullptr, *d_att = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr;
    bf16 *d_mlp = nullptr, *dax = nullptr;
    // scratch
    bf16* w_scratch = nullptr;  // one dequantized NF4 linear
    void* logprob_scratch = nullptr;
    void* matmul_workspace = nullptr;
};

// Lays out the activation allocation at `base` (nullptr: just count) and adds its lines to the plan.
static size_t layout_activations(const Qwen2Config& cfg, int64_t nf4_max_elements, int R, const GpuOptions& opt,
                                 char* base, GpuActs* a, GpuMemoryPlan* plan) {
    const size_t M = (size_t)opt.max_tokens, C = cfg.C, I = cfg.I, L = cfg.L;
    const size_t QD = (size_t)cfg.NH * cfg.HD, KVD = (size_t)cfg.KVH * cfg.HD;
    const size_t stats = (size_t)ATTENTION_PAD_FACTOR * M * cfg.NH;
    Arena arena{base, 0};
    auto line = [&](const char* name, const std::string& detail, size_t since) {
        if (plan) plan->lines.push_back({name, detail, arena.offset - since});
    };
    char buf[256];

    size_t at = arena.offset;
    a->checkpoints = arena.take<bf16>((L + 1) * M * C);
    a->final_h = arena.take<bf16>(M * C);
    a->final_rstd = arena.take<float>(M);
    snprintf(buf, sizeof(buf), "%zu layer inputs, the last output and the final norm, [%zu, %zu] bf16 each", L, M, C);
    line("checkpoints", buf, at);

    at = arena.offset;
    a->ln1 = arena.take<bf16>(M * C);
    a->q = arena.take<bf16>(M * QD);
    a->k = arena.take<bf16>(M * KVD);
    a->v = arena.take<bf16>(M * KVD);
    a->att = arena.take<bf16>(M * QD);
    a->x_mid = arena.take<bf16>(M * C);
    a->ln2 = arena.take<bf16>(M * C);
    a->gate = arena.take<bf16>(M * I);
    a->up = arena.take<bf16>(M * I);
    a->mlp = arena.take<bf16>(M * I);
    a->proj = arena.take<bf16>(M * C);
    a->ax_qkv = arena.take<bf16>(M * 3 * R);
    a->ax_o = arena.take<bf16>(M * R);
    a->ax_gu = arena.take<bf16>(M * 2 * R);
    a->ax_down = arena.take<bf16>(M * R);
    a->rstd1 = arena.take<float>(M);
    a->rstd2 = arena.take<float>(M);
    a->att_lse = arena.take<float>(stats);
    a->att_D = arena.take<float>(stats);
    a->d_resid = arena.take<bf16>(M * C);
    a->d_ln = arena.take<bf16>(M * C);
    a->d_att = arena.take<bf16>(M * QD);
    a->dq = arena.take<bf16>(M * QD);
    a->dk = arena.take<bf16>(M * KVD);
    a->dv = arena.take<bf16>(M * KVD);
    a->d_mlp = arena.take<bf16>(M * I);
    a->dax = arena.take<bf16>(M * 3 * R);
    snprintf(buf, sizeof(buf), "one layer's forward + backward for %zu tokens (4 x [N, I] of it)", M);
    line("layer working set", buf, at);

    at = arena.offset;
    a->w_scratch = nf4_max_elements > 0 ? arena.take<bf16>((size_t)nf4_max_elements) : nullptr;
    line("dequant scratch", nf4_max_elements > 0 ? "the largest NF4 linear as bf16" : "none: bf16 linears", at);

    at = arena.offset;
    a->logprob_scratch = arena.take<char>(logprob_scratch_bytes(opt.logits_chunk_rows, cfg.V, cfg.C));
    snprintf(buf, sizeof(buf), "[%d, %d] bf16 logits + h/dh chunks + its 32 MiB cuBLASLt workspace",
             opt.logits_chunk_rows, cfg.V);
    line("logits chunk", buf, at);

    at = arena.offset;
    a->matmul_workspace = arena.take<char>(matmul_workspace_bytes());
    line("cuBLASLt workspace", "kernels/matmul's GEMMs", at);

    at = arena.offset;
    a->tokens = arena.take<int32_t>(M);
    a->positions = arena.take<int>(M);
    a->cu_seqlens = arena.take<int>(M + 1);
    a->targets = arena.take<int>(M);
    a->rows = arena.take<int>(M);
    a->logp = arena.take<float>(M);
    a->logit_lse = arena.take<float>(M);
    a->dlogp = arena.take<float>(M);
    a->inv_freq = arena.take<float>(cfg.HD / 2);
    a->rope_cos = arena.take<bf16>((size_t)rope_positions(opt) * cfg.HD / 2);
    a->rope_sin = arena.take<bf16>((size_t)rope_positions(opt) * cfg.HD / 2);
    line("batch + RoPE tables", "ids, positions, targets, log-probs; cos/sin for positions < max_tokens", at);
    return arena.offset;
}

// The LoRA allocation: fp32 params, grads, m, v in the host layout, the bf16 copies, and the gradient norm's
// tensor offsets, result and scratch.
struct GpuLoraLayout {
    size_t num_params = 0;
    int num_tensors = 0;
    int64_t max_tensor = 0;
};

static GpuLoraLayout lora_layout(const Qwen2Config& cfg, const LoraConfig& lora) {
    GpuLoraLayout out;
    for (int l = 0; l < cfg.L; l++)
        for (int s = 0; s < NUM_LINEAR; s++) {
            if (!lora.has(s)) continue;
            int64_t a = (int64_t)lora.R * linear_in_features(cfg, s), b = linear_out_features(cfg, s) * lora.R;
            out.num_params += (size_t)(a + b);
            out.num_tensors += 2;
            out.max_tensor = std::max(out.max_tensor, std::max(a, b));
        }
    return out;
}

struct GpuLoraBuffers {
    float *params = nullptr, *grads = nullptr, *m = nullptr, *v = nullptr;
    bf16* copies = nullptr;  // [num_params]: per layer all A's (slot order), then per layer all B's
    int64_t* tensor_offsets = nullptr;
    float* norm_and_coef = nullptr;
    void* norm_scratch = nullptr;
};

static size_t layout_lora(const GpuLoraLayout& layout, char* base, GpuLoraBuffers* b) {
    Arena arena{base, 0};
    b->params = arena.take<float>(layout.num_params);
    b->grads = arena.take<float>(layout.num_params);
    b->m = arena.take<float>(layout.num_params);
    b->v = arena.take<float>(layout.num_params);
    b->copies = arena.take<bf16>(layout.num_params);
    b->tensor_offsets = arena.take<int64_t>(layout.num_tensors + 1);
    b->norm_and_coef = arena.take<float>(2);
    b->norm_scratch = arena.take<char>(grad_norm_scratch_bytes(layout.num_tensors, layout.max_tensor));
    return arena.offset;
}

Nf4LinearSizes nf4_linear_sizes(const Qwen2Weights& w) {
    Nf4LinearSizes sizes;
    for (const LayerWeights& layer : w.layers)
        for (const LinearWeight& lin : layer.linear)
            if (lin.format == LinearFormat::NF4) {
                sizes.largest = std::max(sizes.largest, lin.out * lin.in);
                Arena count;
                count.take<bf16>((size_t)(lin.out * lin.in));
                sizes.copy_bytes += count.offset;
            }
    return sizes;
}

// Whether the plan holds the bf16 base copy: asked for, and some linear is NF4.
static bool plans_base_copy(const Nf4LinearSizes& nf4, const GpuOptions& options) {
    return options.bf16_base_copy && nf4.copy_bytes > 0;
}

// The elements of the dequantization scratch: the largest NF4 linear, or none when the copy gives every NF4 linear
// its bf16 twin.
static int64_t dequant_scratch_elements(const Nf4LinearSizes& nf4, const GpuOptions& options) {
    return plans_base_copy(nf4, options) ? 0 : nf4.largest;
}

GpuMemoryPlan gpu_memory_plan(const Qwen2Config& cfg, size_t weight_bytes, const Nf4LinearSizes& nf4,
                              const LoraConfig& lora, const GpuOptions& options) {
    GpuMemoryPlan plan;
    char buf[256];
    plan.weight_bytes = weight_bytes;
    snprintf(buf, sizeof(buf), "the planned buffer as loaded (%s linears)", nf4.largest > 0 ? "NF4" : "bf16");
    plan.lines.push_back({"weights", buf, weight_bytes});
    if (plans_base_copy(nf4, options)) {
        plan.base_copy_bytes = nf4.copy_bytes;
        snprintf(buf, sizeof(buf), "the NF4 linears dequantized once (--bf16-base-copy); decode steps of >= %d rows "
                 "and the training GEMMs read it", options.bf16_copy_min_rows);
        plan.lines.push_back({"bf16 base copy", buf, plan.base_copy_bytes});
    }
    GpuLoraLayout layout = lora_layout(cfg, lora);
    GpuLoraBuffers unused;
    plan.lora_bytes = layout_lora(layout, nullptr, &unused);
    snprintf(buf, sizeof(buf), "%zu params (r %d): fp32 params, grads, m, v + bf16 copies", layout.num_params, lora.R);
    plan.lines.push_back({"LoRA state", buf, plan.lora_bytes});
    GpuActs acts;
    plan.activation_bytes = layout_activations(cfg, dequant_scratch_elements(nf4, options), lora.R, options, nullptr,
                                               &acts, &plan);
    plan.generation_bytes = gpu_generation_plan(cfg, lora, options, &plan);
    return plan;
}

std::string gpu_memory_plan_table(const GpuMemoryPlan& plan) {
    std::string out = "GPU memory plan:\n";
    char buf[512];
    for (const GpuMemoryLine& line : plan.lines) {
        snprintf(buf, sizeof(buf), "  %-20s %11.1f MiB  %s\n", line.name.c_str(), line.bytes / 1048576.0,
                 line.detail.c_str());
        out += buf;
    }
    snprintf(buf, sizeof(buf), "  %-20s %11.1f MiB  (%.2f GiB in %d allocations: weights, %sLoRA, activations%s)\n",
             "total", plan.total() / 1048576.0, plan.total() / 1073741824.0,
             3 + (plan.generation_bytes > 0) + (plan.base_copy_bytes > 0), plan.base_copy_bytes > 0 ? "bf16 copy, " : "",
             plan.generation_bytes > 0 ? ", generation" : "");
    return out + buf;
}

void GpuBatch::add_sequence(const std::vector<int32_t>& sequence, int first_row, int last_row) {
    if (cu_seqlens.empty()) cu_seqlens.push_back(0);
    int start = (int)tokens.size();
    tokens.insert(tokens.end(), sequence.begin(), sequence.end());
    cu_seqlens.push_back((int)tokens.size());
    for (int t = first_row; t < last_row; t++) rows.push_back(start + t);
}

bool gpu_batch_fits(const GpuOptions& options, int num_tokens, int num_sequences, int longest) {
    return num_tokens <= options.max_tokens &&
           (int64_t)num_sequences * longest <= (int64_t)ATTENTION_PAD_FACTOR * options.max_tokens;
}

// ----------------------------------------------------------------------------------------------------------------
// the model

struct GpuModel {
    Qwen2Config cfg;
    GpuOptions options;
    GpuMemoryPlan plan;
    cudaStream_t stream = nullptr;
    MatmulContext* matmul = nullptr;
    cublasLtHandle_t lt = nullptr;  // kernels/logprob's GEMMs take a bare handle

    uint8_t* weight_buffer = nullptr;
    Qwen2Weights weights;  // views of weight_buffer (device pointers)
    bf16* base_copy_buffer = nullptr;              // GpuOptions::bf16_base_copy
    std::vector<std::vector<LinearWeight>> base_copy;  // [L][NUM_LINEAR]: bf16 views of it; empty without it

    char* lora_buffer = nullptr;
    LoraConfig lora_cfg;
    GpuLoraLayout lora_sizes;
    GpuLoraBuffers lora;
    std::vector<std::vector<LoraWeights::Slot>> slots;           // host layout offsets [L][NUM_LINEAR]
    std::vector<std::vector<size_t>> copy_a, copy_b;            // offsets of the bf16 copies [L][NUM_LINEAR]

    char* act_buffer = nullptr;
    GpuActs acts;
    char* generation_buffer = nullptr;  // KV cache + decode working set (model/gpu_generate.cu lays it out)
    const GpuKVSink* kv_sink = nullptr;  // set during a forward that feeds a KV cache

    // the resident micro-batch (its checkpoints, final norm and logit logsumexps are in acts)
    GpuBatch batch;
    int longest = 0;
    bool with_lora = false;
    float temperature = 1.0f;
    uint64_t resident_id = 0, next_id = 1;
};

static std::string gib(size_t bytes) {
    char buf[64];
    snprintf(buf, sizeof(buf), "%.2f GiB", bytes / 1073741824.0);
    return buf;
}

// cudaMalloc that turns "out of memory" into a GrpoError saying what did not fit and what to lower.
static void* device_alloc(const char* what, size_t bytes, const std::string& advice) {
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 256));
    if (err == cudaErrorMemoryAllocation) {
        cudaGetLastError();  // reset the last-error state, so the next check does not report this failure
        size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        throw GrpoError(std::string("GPU out of memory: the ") + what + " need " + gib(bytes) + " but only " +
                        gib(free_bytes) + " of the GPU's " + gib(total_bytes) + " are free; " + advice);
    }
    cudaCheck(err);
    return p;
}

// Every NF4 linear dequantized into the copy allocation; base_copy[l][s] describes it as a bf16 linear (bias and
// shape shared with the original), and bf16 linears are described as they are.
static void make_base_copy(GpuModel* m) {
    Arena arena{(char*)m->base_copy_buffer, 0};
    m->base_copy.assign(m->cfg.L, std::vector<LinearWeight>(NUM_LINEAR));
    for (int l = 0; l < m->cfg.L; l++)
        for (int s = 0; s < NUM_LINEAR; s++) {
            const LinearWeight& lin = m->weights.layers[l].linear[s];
            LinearWeight& copy = m->base_copy[l][s];
            copy = lin;
            if (lin.format != LinearFormat::NF4) continue;
            bf16* w = arena.take<bf16>((size_t)(lin.out * lin.in));
            nf4_dequantize_gpu(w, lin.nf4, m->stream);
            copy.format = LinearFormat::BF16;
            copy.w = (const bf16_bits*)w;
            copy.nf4 = NF4View();
        }
}

// The NF4 linears in GPU memory, rewritten into the decode-tile order (kernels/nf4_tile.cuh: each decode warp then
// streams contiguous bytes); those whose shape does not allow it stay row-major. Every GPU consumer reads both.
static void tile_nf4_linears(Qwen2Weights* w, cudaStream_t stream) {
    size_t scratch_bytes = 0;
    for (const LayerWeights& layer : w->layers)
        for (const LinearWeight& lin : layer.linear)
            if (lin.format == LinearFormat::NF4 && nf4_tile_ok(lin.nf4.rows, lin.nf4.cols))
                scratch_bytes = std::max(scratch_bytes, nf4_tile_scratch_bytes(lin.nf4));
    if (scratch_bytes == 0) return;
    void* scratch = device_alloc("NF4 tiling scratch (freed once the weights are loaded)", scratch_bytes,
                                 "use a smaller model or free GPU memory");
    for (LayerWeights& layer : w->layers)
        for (LinearWeight& lin : layer.linear)
            if (lin.format == LinearFormat::NF4 && nf4_tile_ok(lin.nf4.rows, lin.nf4.cols))
                nf4_tile_gpu(&lin.nf4, scratch, scratch_bytes, stream);
    cudaCheck(cudaFree(scratch));
}

// The bf16 copies of A and B from the fp32 masters (after an upload and after every optimizer step).
static void refresh_lora_copies(GpuModel* m) {
    for (int l = 0; l < m->cfg.L; l++)
        for (int s = 0; s < NUM_LINEAR; s++) {
            const LoraWeights::Slot& slot = m->slots[l][s];
            if (!slot.present) continue;
            lora_to_bf16(m->lora.copies + m->copy_a[l][s], m->lora.params + slot.a_offset,
                         (size_t)m->lora_cfg.R * slot.in, m->stream);
            lora_to_bf16(m->lora.copies + m->copy_b[l][s], m->lora.params + slot.b_offset,
                         (size_t)slot.out * m->lora_cfg.R, m->stream);
        }
}

GpuModel* gpu_model_create(const Qwen2Weights& host_weights, const LoraWeights& lora, const GpuOptions& options) {
    const Qwen2Config& cfg = host_weights.config;
    if (options.max_tokens < 1 || options.logits_chunk_rows < 1)
        throw GrpoError("GpuOptions: max_tokens and logits_chunk_rows must be positive, got " +
                        std::to_string(options.max_tokens) + " and " + std::to_string(options.logits_chunk_rows));
    if (options.max_rollouts < 0 || options.max_sequence_length < 0 ||
        (options.max_rollouts > 0) != (options.max_sequence_length > 0))
        throw GrpoError("GpuOptions: max_rollouts and max_sequence_length are both positive (generation) or both 0, "
                        "got " + std::to_string(options.max_rollouts) + " and " +
                        std::to_string(options.max_sequence_length));
    if (lora.slots.size() != (size_t)cfg.L || lora.params.size() != lora_layout(cfg, lora.lora).num_params)
        throw GrpoError("gpu_model_create: the LoRA weights are not laid out for this model (" +
                        std::to_string(lora.slots.size()) + " layers, " + std::to_string(lora.params.size()) +
                        " params)");
    GpuModel* m = new GpuModel();
    try {
        m->cfg = cfg;
        m->options = options;
        const Nf4LinearSizes nf4 = nf4_linear_sizes(host_weights);
        m->plan = gpu_memory_plan(cfg, host_weights.plan.total_bytes, nf4, lora.lora, options);
        if (options.print_memory_plan) {
            printf("%s", gpu_memory_plan_table(m->plan).c_str());
            fflush(stdout);
        }
        cudaCheck(cudaStreamCreate(&m->stream));

        // 1. the weights, byte for byte, and views of them
        m->weight_buffer = (uint8_t*)device_alloc("base weights", m->plan.weight_bytes,
                                                  "use an NF4 base (--base nf4) or a smaller model");
        cudaCheck(cudaMemcpy(m->weight_buffer, host_weights.buffer, m->plan.weight_bytes, cudaMemcpyHostToDevice));
        m->weights = weights_from_buffer(host_weights.plan, host_weights.buffer, m->weight_buffer, nullptr);
        tile_nf4_linears(&m->weights, m->stream);
        if (m->plan.base_copy_bytes > 0) {
            m->base_copy_buffer = (bf16*)device_alloc("bf16 base copy", m->plan.base_copy_bytes,
                                                      "leave it out (--bf16-base-copy off)");
            make_base_copy(m);
        }

        // 2. the LoRA state
        m->lora_cfg = lora.lora;
        m->lora_sizes = lora_layout(cfg, lora.lora);
        m->lora_buffer = (char*)device_alloc("LoRA parameters, gradients and AdamW moments", m->plan.lora_bytes,
                                             "lower --lora-r");
        layout_lora(m->lora_sizes, m->lora_buffer, &m->lora);
        m->slots = lora.slots;
        m->copy_a.assign(cfg.L, std::vector<size_t>(NUM_LINEAR, 0));
        m->copy_b = m->copy_a;
        size_t at = 0;
        for (int l = 0; l < cfg.L; l++)  // per layer the A's in slot order: q k v and gate up are consecutive
            for (int s = 0; s < NUM_LINEAR; s++)
                if (m->slots[l][s].present) {
                    m->copy_a[l][s] = at;
                    at += (size_t)lora.lora.R * m->slots[l][s].in;
                }
        for (int l = 0; l < cfg.L; l++)
            for (int s = 0; s < NUM_LINEAR; s++)
                if (m->slots[l][s].present) {
                    m->copy_b[l][s] = at;
                    at += (size_t)m->slots[l][s].out * lora.lora.R;
                }
        std::vector<int64_t> offsets(1, 0);
        for (size_t size : lora_tensor_sizes(lora)) offsets.push_back(offsets.back() + (int64_t)size);
        cudaCheck(cudaMemcpy(m->lora.tensor_offsets, offsets.data(), offsets.size() * sizeof(int64_t),
                             cudaMemcpyHostToDevice));
        gpu_model_lora_upload(m, lora);

        // 3. activations and scratch
        char buf[256];
        snprintf(buf, sizeof(buf), "lower the micro-batch size GpuOptions::max_tokens (now %d tokens: %.2f MiB each)",
                 options.max_tokens, m->plan.activation_bytes / 1048576.0 / options.max_tokens);
        m->act_buffer = (char*)device_alloc("activations and scratch", m->plan.activation_bytes, buf);
        layout_activations(cfg, dequant_scratch_elements(nf4, options), lora.lora.R, options, m->act_buffer, &m->acts,
                           nullptr);
        m->matmul = matmul_create(m->acts.matmul_workspace, matmul_workspace_bytes());
        cublasCheck(cublasLtCreate(&m->lt));
        std::vector<float> inv_freq = cpu_rope_inv_freq(cfg.HD, cfg.rope_theta);
        cudaCheck(cudaMemcpyAsync(m->acts.inv_freq, inv_freq.data(), inv_freq.size() * sizeof(float),
                                  cudaMemcpyHostToDevice, m->stream));
        rope_tables(m->acts.rope_cos, m->acts.rope_sin, m->acts.inv_freq, rope_positions(options), cfg.HD, m->stream);

        // 4. generation: the KV cache and the decode step's buffers, zeroed once (the decode GEMMs' tile counters
        // must start at zero)
        if (m->plan.generation_bytes > 0) {
            snprintf(buf, sizeof(buf), "lower the rollouts in flight (--prompts-per-step x -g, now %d) or the sequence "
                     "length (--max-prompt-length + --max-completion-length, now %d)", options.max_rollouts,
                     options.max_sequence_length);
            m->generation_buffer = (char*)device_alloc("KV cache and decode buffers", m->plan.generation_bytes, buf);
            cudaCheck(cudaMemsetAsync(m->generation_buffer, 0, m->plan.generation_bytes, m->stream));
        }
        cudaCheck(cudaStreamSynchronize(m->stream));
    } catch (...) {
        gpu_model_destroy(m);
        throw;
    }
    return m;
}

void gpu_model_destroy(GpuModel* m) {
    if (!m) return;
    if (m->stream) cudaCheck(cudaStreamSynchronize(m->stream));
    matmul_destroy(m->matmul);
    if (m->lt) cublasCheck(cublasLtDestroy(m->lt));
    cudaCheck(cudaFree(m->generation_buffer));
    cudaCheck(cudaFree(m->act_buffer));
    cudaCheck(cudaFree(m->lora_buffer));
    cudaCheck(cudaFree(m->base_copy_buffer));
    cudaCheck(cudaFree(m->weight_buffer));
    if (m->stream) cudaCheck(cudaStreamDestroy(m->stream));
    delete m;
}

const GpuMemoryPlan& gpu_model_memory_plan(const GpuModel* m) { return m->plan; }
const GpuOptions& gpu_model_options(const GpuModel* m) { return m->options; }
uint64_t gpu_model_resident_id(const GpuModel* m) { return m->resident_id; }

void gpu_model_lora_upload(GpuModel* m, const LoraWeights& lora) {
    const size_t bytes = m->lora_sizes.num_params * sizeof(float);
    if (lora.params.size() != m->lora_sizes.num_params || lora.lora.R != m->lora_cfg.R ||
        lora.lora.targets != m->lora_cfg.targets)
        throw GrpoError("gpu_model_lora_upload: the adapters are laid out for another model or LoRA config");
    cudaCheck(cudaMemcpy(m->lora.params, lora.params.data(), bytes, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(m->lora.grads, lora.grads.data(), bytes, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(m->lora.m, lora.adam_m.data(), bytes, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(m->lora.v, lora.adam_v.data(), bytes, cudaMemcpyHostToDevice));
    refresh_lora_copies(m);
    cudaCheck(cudaStreamSynchronize(m->stream));
}

void gpu_model_lora_download(GpuModel* m, LoraWeights* lora) {
    const size_t n = m->lora_sizes.num_params, bytes = n * sizeof(float);
    if (lora->params.size() != n) throw GrpoError("gpu_model_lora_download: the adapters are laid out differently");
    cudaCheck(cudaStreamSynchronize(m->stream));
    cudaCheck(cudaMemcpy(lora->params.data(), m->lora.params, bytes, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(lora->grads.data(), m->lora.grads, bytes, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(lora->adam_m.data(), m->lora.m, bytes, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(lora->adam_v.data(), m->lora.v, bytes, cudaMemcpyDeviceToHost));
}

float gpu_model_optimizer_step(GpuModel* m, double lr, double max_grad_norm, const AdamWConfig& adamw, int64_t step) {
    const GpuLoraBuffers& b = m->lora;
    const size_t n = m->lora_sizes.num_params;
    grad_norm_cuda(b.norm_and_coef, b.grads, b.tensor_offsets, m->lora_sizes.num_tensors, m->lora_sizes.max_tensor,
                   max_grad_norm, b.norm_scratch, m->stream);
    // clip_grad_norm_'s scaling fused into the update: AdamW reads each gradient times the clip coefficient
    adamw_cuda(b.params, b.grads, b.m, b.v, n, adamw, lr, step, b.norm_and_coef + 1, m->stream);
    cudaCheck(cudaMemsetAsync(b.grads, 0, n * sizeof(float), m->stream));
    refresh_lora_copies(m);
    float norm = 0.0f;
    cudaCheck(cudaMemcpyAsync(&norm, b.norm_and_coef, sizeof(float), cudaMemcpyDeviceToHost, m->stream));
    cudaCheck(cudaStreamSynchronize(m->stream));
    return norm;
}

// ----------------------------------------------------------------------------------------------------------------
// forward and backward of one micro-batch

// The linears first..first+G-1 of layer l as kernels/matmul's group, with their adapters when with_lora; the
// bases from the bf16 copy when copy and the model holds one.
static void linear_group(const GpuModel* m, int l, int first, int G, bool with_lora, LoraLinearGpu* out,
                         bool copy = true) {
    for (int g = 0; g < G; g++) {
        const int s = first + g;
        out[g] = LoraLinearGpu();
        out[g].base = copy && !m->base_copy.empty() ? &m->base_copy[l][s] : &m->weights.layers[l].linear[s];
        const LoraWeights::Slot& slot = m->slots[l][s];
        if (!with_lora || !slot.present) continue;
        out[g].A = m->lora.copies + m->copy_a[l][s];
        out[g].B = m->lora.copies + m->copy_b[l][s];
        out[g].dA = m->lora.grads + slot.a_offset;
        out[g].dB = m->lora.grads + slot.b_offset;
    }
}

// One decoder layer, as cpu_layer_forward: x [N, C] in; the layer's output into `out` unless it is nullptr (the
// backward's recompute needs the working set only). Everything the backward reads stays in m->acts.
static void layer_forward(GpuModel* m, int l, bool with_lora, const bf16* x, bf16* out) {
    const Qwen2Config& cfg = m->cfg;
    const LayerWeights& lw = m->weights.layers[l];
    GpuActs& a = m->acts;
    const int N = m->batch.num_tokens(), C = cfg.C, R = m->lora_cfg.R;
    const float scale = m->lora_cfg.scale(), eps = cfg.rms_norm_eps;
    cudaStream_t s = m->stream;
    LoraLinearGpu group[3];

    // attention block: x_mid = x + o_proj(attention(rope(q), rope(k), v)) of the normed x
    rmsnorm_forward(a.ln1, a.rstd1, x, (const bf16*)lw.input_norm, N, C, eps, s);
    linear_group(m, l, LIN_Q, 3, with_lora, group);
    bf16* qkv[3] = {a.q, a.k, a.v};
    lora_linear_forward(m->matmul, group, 3, a.ln1, N, R, scale, qkv, a.ax_qkv, a.w_scratch, s);
    rope_forward(a.q, a.q, a.positions, a.rope_cos, a.rope_sin, N, cfg.NH, cfg.HD, s);
    rope_forward(a.k, a.k, a.positions, a.rope_cos, a.rope_sin, N, cfg.KVH, cfg.HD, s);
    if (m->kv_sink) (*m->kv_sink)(l, a.k, a.v);
    attention_forward(a.att, a.att_lse, a.q, a.k, a.v, a.cu_seqlens, m->batch.num_sequences(), m->longest, cfg.NH,
                      cfg.KVH, cfg.HD, s);
    linear_group(m, l, LIN_O, 1, with_lora, group);
    bf16* o[1] = {a.proj};
    lora_linear_forward(m->matmul, group, 1, a.att, N, R, scale, o, a.ax_o, a.w_scratch, s);
    residual_rmsnorm_forward(a.x_mid, a.ln2, a.rstd2, x, a.proj, (const bf16*)lw.post_attention_norm, N, C, eps, s);

    // MLP block: out = x_mid + down_proj(silu(gate_proj(h)) * up_proj(h)), h the normed x_mid
    linear_group(m, l, LIN_GATE, 2, with_lora, group);
    bf16* gu[2] = {a.gate, a.up};
    lora_linear_forward(m->matmul, group, 2, a.ln2, N, R, scale, gu, a.ax_gu, a.w_scratch, s);
    swiglu_forward(a.mlp, a.gate, a.up, (size_t)N * cfg.I, s);
    linear_group(m, l, LIN_DOWN, 1, with_lora, group);
    bf16* down[1] = {a.proj};
    lora_linear_forward(m->matmul, group, 1, a.mlp, N, R, scale, down, a.ax_down, a.w_scratch, s);
    if (out) residual_forward(out, a.x_mid, a.proj, (size_t)N * C, s);
}

// One decoder layer backwards, right after layer_forward recomputed its working set from x: a.d_resid holds
// dloss/d(layer output) on entry and dloss/d(layer input) on exit; the adapters' gradients are added to.
static void layer_backward(GpuModel* m, int l, const bf16* x) {
    const Qwen2Config& cfg = m->cfg;
    const LayerWeights& lw = m->weights.layers[l];
    GpuActs& a = m->acts;
    const int N = m->batch.num_tokens(), C = cfg.C, R = m->lora_cfg.R;
    const float scale = m->lora_cfg.scale();
    cudaStream_t s = m->stream;
    LoraLinearGpu group[3];

    // MLP block: the residual passes d_out straight on; down_proj, SwiGLU, gate/up, then the norm adds its branch
    linear_group(m, l, LIN_DOWN, 1, true, group);
    const bf16* dy_down[1] = {a.d_resid};
    lora_linear_backward(m->matmul, group, 1, a.mlp, N, R, scale, dy_down, a.ax_down, a.d_mlp, false, a.dax,
                         a.w_scratch, s);
    swiglu_backward(a.gate, a.up, a.d_mlp, a.gate, a.up, (size_t)N * cfg.I, s);  // gate, up become their gradients
    linear_group(m, l, LIN_GATE, 2, true, group);
    const bf16* dy_gu[2] = {a.gate, a.up};
    lora_linear_backward(m->matmul, group, 2, a.ln2, N, R, scale, dy_gu, a.ax_gu, a.d_ln, false, a.dax,
                         a.w_scratch, s);
    rmsnorm_backward(a.d_resid, a.d_ln, a.x_mid, a.rstd2, (const bf16*)lw.post_attention_norm, N, C, true, s);

    // attention block
    linear_group(m, l, LIN_O, 1, true, group);
    const bf16* dy_o[1] = {a.d_resid};
    lora_linear_backward(m->matmul, group, 1, a.att, N, R, scale, dy_o, a.ax_o, a.d_att, false, a.dax, a.w_scratch,
                         s);
    attention_backward(a.dq, a.dk, a.dv, a.att_D, a.d_att, a.att, a.att_lse, a.q, a.k, a.v, a.cu_seqlens,
                       m->batch.num_sequences(), m->longest, cfg.NH, cfg.KVH, cfg.HD, s);
    rope_backward(a.dq, a.dq, a.positions, a.rope_cos, a.rope_sin, N, cfg.NH, cfg.HD, s);
    rope_backward(a.dk, a.dk, a.positions, a.rope_cos, a.rope_sin, N, cfg.KVH, cfg.HD, s);
    linear_group(m, l, LIN_Q, 3, true, group);
    const bf16* dy_qkv[3] = {a.dq, a.dk, a.dv};
    lora_linear_backward(m->matmul, group, 3, a.ln1, N, R, scale, dy_qkv, a.ax_qkv, a.d_ln, false, a.dax,
                         a.w_scratch, s);
    rmsnorm_backward(a.d_resid, a.d_ln, x, a.rstd1, (const bf16*)lw.input_norm, N, C, true, s);
}

static bf16* checkpoint(GpuModel* m, int l) {
    return m->acts.checkpoints + (size_t)l * m->options.max_tokens * m->cfg.C;
}

uint64_t gpu_model_forward(GpuModel* m, const GpuBatch& batch, bool with_lora, float temperature,
                           std::vector<float>* logp, const GpuKVSink& kv_sink) {
    const Qwen2Config& cfg = m->cfg;
    const int N = batch.num_tokens(), B = batch.num_sequences(), M = (int)batch.rows.size();
    if (N < 1 || B < 1 || batch.cu_seqlens[0] != 0 || batch.cu_seqlens[B] != N)
        throw GrpoError("gpu_model_forward: an empty or inconsistent micro-batch (" + std::to_string(N) + " tokens, " +
                        std::to_string(B) + " sequences)");
    int longest = 0;
    std::vector<int> positions(N), seq_of(N);
    for (int b = 0; b < B; b++) {
        int start = batch.cu_seqlens[b], len = batch.cu_seqlens[b + 1] - start;
        if (len < 1) throw GrpoError("gpu_model_forward: sequence " + std::to_string(b) + " is empty");
        longest = std::max(longest, len);
        for (int i = 0; i < len; i++) {
            positions[start + i] = i;
            seq_of[start + i] = b;
        }
    }
    if (!gpu_batch_fits(m->options, N, B, longest))
        throw GrpoError("gpu_model_forward: a micro-batch of " + std::to_string(N) + " tokens in " +
                        std::to_string(B) + " sequences (longest " + std::to_string(longest) +
                        ") does not fit the plan's " + std::to_string(m->options.max_tokens) +
                        " tokens; raise GpuOptions::max_tokens or pack fewer rollouts per micro-batch");
    for (int n = 0; n < N; n++)
        if (batch.tokens[n] < 0 || batch.tokens[n] >= cfg.V)
            throw GrpoError("gpu_model_forward: token id " + std::to_string(batch.tokens[n]) + " at row " +
                            std::to_string(n) + " is outside the vocabulary (V = " + std::to_string(cfg.V) + ")");
    std::vector<int> targets(N, 0), listed(N, 0);
    for (int j = 0; j < M; j++) {
        int n = batch.rows[j];
        if (n < 0 || n + 1 >= N || seq_of[n + 1] != seq_of[n] || listed[n]++)
            throw GrpoError("gpu_model_forward: log-prob row " + std::to_string(n) +
                            " has no next token in its sequence, or is listed twice");
        targets[n] = batch.tokens[n + 1];
    }

    GpuActs& a = m->acts;
    cudaStream_t s = m->stream;
    m->batch = batch;
    m->longest = longest;
    m->with_lora = with_lora;
    m->temperature = temperature;
    m->resident_id = 0;  // nothing valid is resident until this forward is complete
    // pageable host memory: each copy has read its source by the time the call returns
    cudaCheck(cudaMemcpyAsync(a.tokens, batch.tokens.data(), N * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    cudaCheck(cudaMemcpyAsync(a.positions, positions.data(), N * sizeof(int), cudaMemcpyHostToDevice, s));
    cudaCheck(cudaMemcpyAsync(a.cu_seqlens, batch.cu_seqlens.data(), (B + 1) * sizeof(int), cudaMemcpyHostToDevice, s));
    cudaCheck(cudaMemcpyAsync(a.targets, targets.data(), N * sizeof(int), cudaMemcpyHostToDevice, s));
    if (M > 0) cudaCheck(cudaMemcpyAsync(a.rows, batch.rows.data(), M * sizeof(int), cudaMemcpyHostToDevice, s));

    embedding_forward(checkpoint(m, 0), a.tokens, (const bf16*)m->weights.embed, N, cfg.C, s);
    m->kv_sink = kv_sink ? &kv_sink : nullptr;  // only this forward's layers feed it (never the backward's recompute)
    for (int l = 0; l < cfg.L; l++) layer_forward(m, l, with_lora, checkpoint(m, l), checkpoint(m, l + 1));
    m->kv_sink = nullptr;
    rmsnorm_forward(a.final_h, a.final_rstd, checkpoint(m, cfg.L), (const bf16*)m->weights.final_norm, N, cfg.C,
                    cfg.rms_norm_eps, s);
    logp->assign(M, 0.0f);
    if (M > 0) {
        logprob_forward_cuda(a.logp, a.logit_lse, a.final_h, (const bf16*)m->weights.lm_head, a.targets, a.rows, M,
                             cfg.V, cfg.C, temperature, m->options.logits_chunk_rows, a.logprob_scratch, m->lt, s);
        std::vector<float> per_token(N);
        cudaCheck(cudaMemcpyAsync(per_token.data(), a.logp, N * sizeof(float), cudaMemcpyDeviceToHost, s));
        cudaCheck(cudaStreamSynchronize(s));
        for (int j = 0; j < M; j++) (*logp)[j] = per_token[batch.rows[j]];
    }
    cudaCheck(cudaStreamSynchronize(s));
    m->resident_id = m->next_id++;
    return m->resident_id;
}

void gpu_model_backward(GpuModel* m, const std::vector<float>& dlogp) {
    const Qwen2Config& cfg = m->cfg;
    if (m->resident_id == 0 || !m->with_lora)
        throw GrpoError("gpu_model_backward: no micro-batch forward with LoRA is resident");
    const GpuBatch& batch = m->batch;
    const int N = batch.num_tokens(), M = (int)batch.rows.size();
    if ((int)dlogp.size() != M)
        throw GrpoError("gpu_model_backward: " + std::to_string(dlogp.size()) + " gradients for " + std::to_string(M) +
                        " log-prob rows");
    GpuActs& a = m->acts;
    cudaStream_t s = m->stream;

    // lm_head and the final norm: dh [N, C] (zero on rows without a log-prob), then the residual stream's gradient
    if (M > 0) {
        std::vector<float> per_token(N, 0.0f);
        for (int j = 0; j < M; j++) per_token[batch.rows[j]] = dlogp[j];
        cudaCheck(cudaMemcpyAsync(a.dlogp, per_token.data(), N * sizeof(float), cudaMemcpyHostToDevice, s));
        logprob_backward_cuda(a.d_ln, a.dlogp, a.logit_lse, a.final_h, (const bf16*)m->weights.lm_head, a.targets,
                              a.rows, M, N, cfg.V, cfg.C, m->temperature, m->options.logits_chunk_rows,
                              a.logprob_scratch, m->lt, s);
    } else {
        cudaCheck(cudaMemsetAsync(a.d_ln, 0, (size_t)N * cfg.C * sizeof(bf16), s));
    }
    rmsnorm_backward(a.d_resid, a.d_ln, checkpoint(m, cfg.L), a.final_rstd, (const bf16*)m->weights.final_norm, N,
                     cfg.C, false, s);
    // every layer from the last: recompute its forward from its checkpoint, then its backward
    for (int l = cfg.L - 1; l >= 0; l--) {
        layer_forward(m, l, true, checkpoint(m, l), nullptr);
        layer_backward(m, l, checkpoint(m, l));
    }
    // d_resid now holds dloss/d(embeddings): the embedding table is frozen, so it stops here
    cudaCheck(cudaStreamSynchronize(s));
}

// ----------------------------------------------------------------------------------------------------------------
// for generation

GpuModelParts gpu_model_parts(GpuModel* m) {
    GpuModelParts p;
    p.cfg = &m->cfg;
    p.weights = &m->weights;
    p.stream = m->stream;
    p.matmul = m->matmul;
    p.rope_cos = m->acts.rope_cos;
    p.rope_sin = m->acts.rope_sin;
    p.rope_positions = rope_positions(m->options);
    p.final_h = m->acts.final_h;
    p.generation = m->generation_buffer;
    p.generation_bytes = m->plan.generation_bytes;
    p.lora = &m->lora_cfg;
    return p;
}

void gpu_model_linear_group(const GpuModel* m, int l, int first, int G, bool with_lora, LoraLinearGpu* out) {
    linear_group(m, l, first, G, with_lora, out);
}

void gpu_model_decode_group(const GpuModel* m, int l, int first, int G, int M, LoraLinearGpu* out) {
    linear_group(m, l, first, G, true, out, M >= m->options.bf16_copy_min_rows);
}

// ----------------------------------------------------------------------------------------------------------------
// for tests

static std::vector<float> download_bf16(const bf16* d, size_t n, cudaStream_t s) {
    std::vector<bf16_bits> bits(n);
    cudaCheck(cudaStreamSynchronize(s));
    cudaCheck(cudaMemcpy(bits.data(), d, n * sizeof(bf16), cudaMemcpyDeviceToHost));
    std::vector<float> out(n);
    for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(bits[i]);
    return out;
}

std::vector<float> gpu_model_hidden_state(GpuModel* m, int i) {
    if (m->resident_id == 0 || i < 0 || i > m->cfg.L + 1)
        throw GrpoError("gpu_model_hidden_state: no resident micro-batch, or no hidden state " + std::to_string(i));
    const size_t n = (size_t)m->batch.num_tokens() * m->cfg.C;
    return download_bf16(i <= m->cfg.L ? checkpoint(m, i) : m->acts.final_h, n, m->stream);
}

std::vector<float> gpu_model_logits(GpuModel* m) {
    if (m->resident_id == 0) throw GrpoError("gpu_model_logits: no resident micro-batch");
    const int N = m->batch.num_tokens(), V = m->cfg.V, C = m->cfg.C;
    bf16* logits = (bf16*)device_alloc("test logits", (size_t)N * V * sizeof(bf16), "use a smaller test batch");
    matmul(m->matmul, logits, false, V, m->acts.final_h, false, C, (const bf16*)m->weights.lm_head, true, C, N, V, C,
           1.0f, 0.0f, nullptr, m->stream);
    std::vector<float> out = download_bf16(logits, (size_t)N * V, m->stream);
    cudaCheck(cudaFree(logits));
    return out;
}
