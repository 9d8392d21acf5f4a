// gpu_generate.cu: Backend::generate on the GPU: each prompt prefilled once by the training forward into G KV-cache slots, then one batched decode step per token (decode GEMMs with LoRA, cached attention, on-GPU sampling).
//
// The flow of one call, for S = prompts x G rollouts:
//   1. prefill: the distinct prompts go through gpu_model_forward (packed varlen micro-batches, LoRA on); a sink
//      copies every layer's k (after RoPE) and v into the cache slots p*G .. p*G+G-1 of each prompt, and the
//      final norm's output at each prompt's last position is copied to its G rows: the lm_head gives the logits
//      of the first completion token.
//   2. decode: while some rollout is unfinished and fewer than max_new_tokens tokens are drawn: sample_tokens on
//      the [S, V] bf16 logits, decode_advance, then one decode step for all S rows (the token just drawn at its
//      own position): embedding and the first layer's norm, then per layer q/k/v (one decode_linear group), RoPE and
//      the cache append (one decode_rope_append), decode_attention, o, residual + rmsnorm, gate/up, SwiGLU, down,
//      and the residual + the next layer's norm (the final norm after the last layer); the lm_head.
// Finished rollouts stay in the batch until the unfinished ones fit in fewer n-tiles of the decode GEMMs;
// then they are compacted away (rows are mapped to cache slots). In between, sample_tokens gives finished rows the
// pad token and draws nothing, so their rows compute something nobody reads; within one n-tile that costs nothing,
// since a decode step reads every weight once whatever the rows.
// Every row's state (position, length, draw count) lives on the GPU and is advanced there (decode_advance), so a
// step has no host input: it is captured once as a CUDA graph and replayed for every token. The host polls the
// count of unfinished rows two steps late and reads the tokens once, at the end.
#include "model/gpu_generate.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/text.h"
#include "kernels/cuda_common.cuh"
#include "kernels/decode_advance.cuh"
#include "kernels/decode_attention.cuh"
#include "kernels/decode_linear.cuh"
#include "kernels/decode_rope_append.cuh"
#include "kernels/embedding.cuh"
#include "kernels/kv_cache.cuh"
#include "kernels/matmul.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/sample.cuh"
#include "kernels/swiglu.cuh"

typedef __nv_bfloat16 bf16;

// Stop ids the device keeps (a chat template has two or three).
static const int MAX_STOP_IDS = 64;

// The generation allocation, for S rows (rollouts) of up to max_T tokens.
struct GenBuffers {
    bf16 *k_cache = nullptr, *v_cache = nullptr;  // [L][S][KVH][max_T][HD] each (kernels/kv_cache.cuh)
    // one decode step for up to S rows
    bf16 *x = nullptr, *ln = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *att = nullptr, *proj = nullptr;
    bf16 *gate = nullptr, *up = nullptr, *mlp = nullptr, *logits = nullptr;
    int *tokens = nullptr, *finished = nullptr;
    int* step_info = nullptr;  // [4][S]: positions, lens (positions + 1), sampling steps, prompt lengths
    int* completions = nullptr;  // [S][max_T]: the tokens drawn, read by the host once at the end
    int* slots = nullptr;        // [S]: the rollout (cache slot) of each decode row, all of them until compaction
    int* stop_ids = nullptr;   // [MAX_STOP_IDS]
    int *prefill_cu = nullptr, *prefill_slots = nullptr;  // [S + 1] and [S]: one prefill micro-batch
    void* linear_workspace = nullptr;                     // decode_linear's, zeroed at creation
    size_t linear_workspace_bytes = 0;
    void* attention_scratch = nullptr;
    size_t attention_scratch_bytes = 0;
    void* sample_workspace = nullptr;  // sample_tokens' split path (a few rows over many blocks)
    size_t sample_workspace_bytes = 0;
};

// decode_linear's workspace for the model's four groups (q k v, o, gate up, down) and for each linear alone (a
// group of mixed formats runs one linear at a time), the largest over both weight formats so it never depends on
// how a checkpoint was loaded. Only shapes, formats and which linears have an adapter are read, so the weights
// here are empty descriptions.
static size_t decode_workspace_bytes(const Qwen2Config& cfg, const LoraConfig& lora, int S) {
    static const bf16 adapter_marker = bf16();  // a non-null A: "this linear has an adapter"
    const int groups[4 + NUM_LINEAR][2] = {{LIN_Q, 3}, {LIN_O, 1}, {LIN_GATE, 2}, {LIN_DOWN, 1}, {0, 1}, {1, 1},
                                           {2, 1}, {3, 1}, {4, 1}, {5, 1}, {6, 1}};
    static_assert(NUM_LINEAR == 7, "one single-linear entry per slot");
    size_t bytes = 0;
    // NF4 both as loaded and in the decode-tile order (which the wgmma path needs, and a workspace region with it)
    const std::pair<LinearFormat, bool> formats[] = {
        {LinearFormat::BF16, false}, {LinearFormat::NF4, false}, {LinearFormat::NF4, true}};
    for (const auto& [format, tiled] : formats)
        for (const auto& group : groups) {
            LinearWeight weights[DECODE_LINEAR_MAX_G];
            LoraLinearGpu linears[DECODE_LINEAR_MAX_G];
            for (int g = 0; g < group[1]; g++) {
                const int s = group[0] + g;
                weights[g].out = linear_out_features(cfg, s);
                weights[g].in = linear_in_features(cfg, s);
                weights[g].format = format;
                weights[g].nf4.tiled = tiled;
                linears[g].base = &weights[g];
                if (lora.has(s)) linears[g].A = linears[g].B = &adapter_marker;
            }
            bytes = std::max(bytes, decode_linear_workspace_bytes(linears, group[1], lora.R, S));
        }
    return bytes;
}

// decode_attention's split-K scratch: the most any row count M <= S asks for at the longest length (the fewer
// the rows, the more splits the automatic choice takes). decode_step falls back to the fewest splits when a
// shorter length would ask for more.
static size_t decode_attention_bytes(const Qwen2Config& cfg, int S, int max_T) {
    size_t bytes = 0;
    for (int M = 1; M <= S; M++)
        bytes = std::max(bytes, decode_attention_scratch_bytes(M, cfg.NH, cfg.HD,
                                                               decode_attention_auto_splits(M, cfg.KVH, max_T)));
    return bytes;
}

// Lays out the generation allocation at `base` (nullptr: just count) and adds its lines to the plan.
static size_t layout_generation(const Qwen2Config& cfg, const LoraConfig& lora, const GpuOptions& opt, char* base,
                                GenBuffers* b, GpuMemoryPlan* plan) {
    const size_t S = (size_t)opt.max_rollouts, max_T = (size_t)opt.max_sequence_length;
    const size_t C = cfg.C, I = cfg.I, QD = (size_t)cfg.NH * cfg.HD, KVD = (size_t)cfg.KVH * cfg.HD;
    size_t offset = 0;
    auto take = [&](size_t bytes) -> void* {  // 256-byte aligned pieces, as gpu_model.cu's Arena
        size_t at = offset;
        offset += (bytes + 255) / 256 * 256;
        return base ? base + at : nullptr;
    };
    char buf[256];

    size_t at = offset;
    const size_t cache = (size_t)cfg.L * kv_cache_layer_elems((int)S, cfg.KVH, (int)max_T, cfg.HD);
    b->k_cache = (bf16*)take(cache * sizeof(bf16));
    b->v_cache = (bf16*)take(cache * sizeof(bf16));
    snprintf(buf, sizeof(buf), "%d layers x k, v [%zu rollouts, %d KV heads, %zu positions, %d] bf16", cfg.L, S,
             cfg.KVH, max_T, cfg.HD);
    if (plan) plan->lines.push_back({"KV cache", buf, offset - at});

    at = offset;
    b->x = (bf16*)take(S * C * sizeof(bf16));
    b->ln = (bf16*)take(S * C * sizeof(bf16));
    b->q = (bf16*)take(S * QD * sizeof(bf16));
    b->k = (bf16*)take(S * KVD * sizeof(bf16));
    b->v = (bf16*)take(S * KVD * sizeof(bf16));
    b->att = (bf16*)take(S * QD * sizeof(bf16));
    b->proj = (bf16*)take(S * C * sizeof(bf16));
    b->gate = (bf16*)take(S * I * sizeof(bf16));
    b->up = (bf16*)take(S * I * sizeof(bf16));
    b->mlp = (bf16*)take(S * I * sizeof(bf16));
    b->logits = (bf16*)take(S * cfg.V * sizeof(bf16));
    b->tokens = (int*)take(S * sizeof(int));
    b->finished = (int*)take(S * sizeof(int));
    b->step_info = (int*)take(4 * S * sizeof(int));
    b->completions = (int*)take(S * max_T * sizeof(int));
    b->slots = (int*)take(S * sizeof(int));
    b->stop_ids = (int*)take(MAX_STOP_IDS * sizeof(int));
    b->prefill_cu = (int*)take((S + 1) * sizeof(int));
    b->prefill_slots = (int*)take(S * sizeof(int));
    b->linear_workspace_bytes = S > 0 ? decode_workspace_bytes(cfg, lora, (int)S) : 0;
    b->linear_workspace = take(b->linear_workspace_bytes);
    b->attention_scratch_bytes = S > 0 ? decode_attention_bytes(cfg, (int)S, (int)max_T) : 0;
    b->attention_scratch = take(b->attention_scratch_bytes);
    b->sample_workspace_bytes = sample_tokens_workspace_bytes((int)S, cfg.V);
    b->sample_workspace = take(b->sample_workspace_bytes);
    snprintf(buf, sizeof(buf),
             "one step of %zu rows: activations, [%zu, %d] bf16 logits, GEMM, attention and sampling scratch", S, S,
             cfg.V);
    if (plan) plan->lines.push_back({"decode working set", buf, offset - at});
    return offset;
}

size_t gpu_generation_plan(const Qwen2Config& cfg, const LoraConfig& lora, const GpuOptions& options,
                           GpuMemoryPlan* plan) {
    if (options.max_rollouts <= 0) return 0;
    GenBuffers unused;
    return layout_generation(cfg, lora, options, nullptr, &unused, plan);
}

// ----------------------------------------------------------------------------------------------------------------

namespace {

struct Generator {
    GpuModel* model;
    GpuModelParts parts;
    const Qwen2Config& cfg;
    const GpuOptions& options;
    GenBuffers b;
    cudaStream_t stream;

    explicit Generator(GpuModel* m)
        : model(m), parts(gpu_model_parts(m)), cfg(*parts.cfg), options(gpu_model_options(m)), stream(parts.stream) {
        // the same layout (and scratch sizes) as the plan the allocation was made for
        size_t bytes = layout_generation(cfg, *parts.lora, options, (char*)parts.generation, &b, nullptr);
        if (bytes != parts.generation_bytes) throw GrpoError("generate: the generation allocation has another layout");
    }

    bf16* k_cache(int l) const {
        return b.k_cache + (size_t)l * kv_cache_layer_elems(options.max_rollouts, cfg.KVH, options.max_sequence_length,
                                                             cfg.HD);
    }
    bf16* v_cache(int l) const {
        return b.v_cache + (size_t)l * kv_cache_layer_elems(options.max_rollouts, cfg.KVH, options.max_sequence_length,
                                                             cfg.HD);
    }

    // The logits [M, V] of the rows in ln (already through the final norm).
    void lm_head(int M) {
        matmul(parts.matmul, b.logits, false, cfg.V, b.ln, false, cfg.C, (const bf16*)parts.weights->lm_head, true,
               cfg.C, M, cfg.V, cfg.C, 1.0f, 0.0f, nullptr, stream);
    }

    // One token for each of the M rows: b.tokens at positions/lens in step_info, row m being rollout b.slots[m] (its
    // cache slot); leaves the logits in b.logits.
    void decode_step(int M, int max_len) {
        const Qwen2Weights& w = *parts.weights;
        const int C = cfg.C, R = parts.lora->R, max_T = options.max_sequence_length;
        const float scale = parts.lora->scale(), eps = cfg.rms_norm_eps;
        const int* positions = b.step_info;
        const int* lens = b.step_info + options.max_rollouts;
        const bf16 *rope_cos = (const bf16*)parts.rope_cos, *rope_sin = (const bf16*)parts.rope_sin;
        // the automatic split count, unless a length shorter than max_T asks for more scratch than was planned
        int splits = decode_attention_auto_splits(M, cfg.KVH, max_len);
        if (decode_attention_scratch_bytes(M, cfg.NH, cfg.HD, splits) > b.attention_scratch_bytes)
            splits = (max_len + DECODE_ATT_MAX_CHUNK - 1) / DECODE_ATT_MAX_CHUNK;
        LoraLinearGpu group[DECODE_LINEAR_MAX_G];

        embedding_forward(b.x, b.tokens, (const bf16*)w.embed, M, C, stream);
        rmsnorm_forward(b.ln, nullptr, b.x, (const bf16*)w.layers[0].input_norm, M, C, eps, stream);
        for (int l = 0; l < cfg.L; l++) {
            const LayerWeights& lw = w.layers[l];
            gpu_model_decode_group(model, l, LIN_Q, 3, M, group);
            bf16* qkv[3] = {b.q, b.k, b.v};
            decode_linear_forward(group, 3, b.ln, M, R, scale, qkv, b.linear_workspace, b.linear_workspace_bytes,
                                  stream, parts.matmul);
            // RoPE of q and k and the cache append in one launch. b.k keeps the unrotated k: nothing reads it after
            // this (attention reads the cache, and the next layer's q/k/v linear overwrites it)
            decode_rope_append(b.q, k_cache(l), v_cache(l), b.k, b.v, b.slots, positions, rope_cos, rope_sin, M, cfg.NH,
                               cfg.KVH, cfg.HD, max_T, stream);
            decode_attention_forward(b.att, b.q, k_cache(l), v_cache(l), b.slots, lens, M, cfg.NH, cfg.KVH, cfg.HD,
                                     max_T, max_len, splits, b.attention_scratch, stream);
            gpu_model_decode_group(model, l, LIN_O, 1, M, group);
            bf16* o[1] = {b.proj};
            decode_linear_forward(group, 1, b.att, M, R, scale, o, b.linear_workspace, b.linear_workspace_bytes,
                                  stream, parts.matmul);
            residual_rmsnorm_forward(b.x, b.ln, nullptr, b.x, b.proj, (const bf16*)lw.post_attention_norm, M, C, eps,
                                     stream);
            gpu_model_decode_group(model, l, LIN_GATE, 2, M, group);
            bf16* gu[2] = {b.gate, b.up};
            decode_linear_forward(group, 2, b.ln, M, R, scale, gu, b.linear_workspace, b.linear_workspace_bytes,
                                  stream, parts.matmul);
            swiglu_forward(b.mlp, b.gate, b.up, (size_t)M * cfg.I, stream);
            gpu_model_decode_group(model, l, LIN_DOWN, 1, M, group);
            bf16* down[1] = {b.proj};
            decode_linear_forward(group, 1, b.mlp, M, R, scale, down, b.linear_workspace, b.linear_workspace_bytes,
                                  stream, parts.matmul);
            // the layer's last residual add and the next norm (the next layer's input norm, or the final norm) in
            // one launch: a decode step is a chain of short kernels, and each launch costs a few microseconds
            const bf16* next_norm = (const bf16*)(l + 1 < cfg.L ? w.layers[l + 1].input_norm : w.final_norm);
            residual_rmsnorm_forward(b.x, b.ln, nullptr, b.x, b.proj, next_norm, M, C, eps, stream);
        }
        lm_head(M);
    }

    // Step 1: every prompt through the forward once, its k and v into its G slots, its last position's final norm
    // output into its G rows of ln.
    void prefill(const std::vector<std::vector<int32_t>>& prompts, int G) {
        const int num_prompts = (int)prompts.size(), C = cfg.C;
        int first = 0;
        while (first < num_prompts) {
            // as many whole prompts as one micro-batch holds
            int end = first, tokens = 0, longest = 0;
            while (end < num_prompts) {
                const int len = (int)prompts[end].size();
                if (!gpu_batch_fits(options, tokens + len, end - first + 1, std::max(longest, len))) break;
                tokens += len;
                longest = std::max(longest, len);
                end++;
            }
            if (end == first)
                throw GrpoError("generate: prompt " + std::to_string(first) + " has " +
                                std::to_string(prompts[first].size()) + " tokens but a micro-batch holds " +
                                std::to_string(options.max_tokens) + "; raise GpuOptions::max_tokens or lower "
                                "--max-prompt-length");
            const int B = end - first;
            GpuBatch batch;
            for (int p = first; p < end; p++) batch.add_sequence(prompts[p], 0, 0);
            // slots of copy g: prefill_slots[g*B + j] is where prompt first + j's copy g lives
            std::vector<int> slots((size_t)G * B);
            for (int g = 0; g < G; g++)
                for (int j = 0; j < B; j++) slots[(size_t)g * B + j] = (first + j) * G + g;
            cudaCheck(cudaMemcpyAsync(b.prefill_cu, batch.cu_seqlens.data(), (B + 1) * sizeof(int),
                                      cudaMemcpyHostToDevice, stream));
            cudaCheck(cudaMemcpyAsync(b.prefill_slots, slots.data(), slots.size() * sizeof(int),
                                      cudaMemcpyHostToDevice, stream));
            GpuKVSink sink = [&](int l, const void* k, const void* v) {
                for (int g = 0; g < G; g++)
                    kv_cache_write_prefill(k_cache(l), v_cache(l), (const bf16*)k, (const bf16*)v, b.prefill_cu,
                                           b.prefill_slots + (size_t)g * B, B, longest, cfg.KVH, cfg.HD,
                                           options.max_sequence_length, stream);
            };
            std::vector<float> no_logp;
            gpu_model_forward(model, batch, true, 1.0f, &no_logp, sink);  // synchronizes: slots may go
            const bf16* final_h = (const bf16*)parts.final_h;
            for (int j = 0; j < B; j++) {
                const bf16* last = final_h + (size_t)(batch.cu_seqlens[j + 1] - 1) * C;
                for (int g = 0; g < G; g++)
                    cudaCheck(cudaMemcpyAsync(b.ln + (size_t)((first + j) * G + g) * C, last, C * sizeof(bf16),
                                              cudaMemcpyDeviceToDevice, stream));
            }
            first = end;
        }
    }
};

}  // namespace

std::vector<Rollout> gpu_generate(GpuModel* model, const std::vector<std::vector<int32_t>>& prompts, int G,
                                  int max_new_tokens, const SamplerConfig& sampler, const std::vector<int>& stop_ids,
                                  uint64_t seed, int first_rollout) {
    const GpuOptions& options = gpu_model_options(model);
    const Qwen2Config& cfg = *gpu_model_parts(model).cfg;
    const int num_prompts = (int)prompts.size();
    if (G < 1) throw GrpoError("generate: G = " + std::to_string(G) + " completions per prompt; need at least 1");
    if (options.max_rollouts <= 0)
        throw GrpoError("generate: this GPU model has no KV cache; create it with GpuOptions::max_rollouts and "
                        "max_sequence_length set (train_grpo sets them from --prompts-per-step x -g and the prompt + "
                        "completion lengths)");
    const int64_t S64 = (int64_t)num_prompts * G;
    if (S64 > options.max_rollouts)
        throw GrpoError("generate: " + std::to_string(num_prompts) + " prompts x G = " + std::to_string(G) + " are " +
                        std::to_string(S64) + " rollouts but the KV cache holds " +
                        std::to_string(options.max_rollouts) + " (GpuOptions::max_rollouts); lower --prompts-per-step "
                        "or -g, or raise max_rollouts");
    for (int p = 0; p < num_prompts; p++) {
        const int P = (int)prompts[p].size();
        if (P == 0) throw GrpoError("generate: an empty prompt has no position to continue from");
        if ((int64_t)P + max_new_tokens > options.max_sequence_length)
            throw GrpoError("generate: prompt " + std::to_string(p) + " has " + std::to_string(P) + " tokens; with " +
                            std::to_string(max_new_tokens) + " new tokens that is " +
                            std::to_string((int64_t)P + max_new_tokens) + " positions but the KV cache holds " +
                            std::to_string(options.max_sequence_length) + " (GpuOptions::max_sequence_length); lower "
                            "--max-prompt-length or --max-completion-length, or raise max_sequence_length");
    }
    if ((int)stop_ids.size() > MAX_STOP_IDS)
        throw GrpoError("generate: " + std::to_string(stop_ids.size()) + " stop ids; at most " +
                        std::to_string(MAX_STOP_IDS) + " are supported");
    sampler_check(sampler, cfg.V);
    std::vector<Rollout> rollouts((size_t)S64);
    for (int p = 0; p < num_prompts; p++)
        for (int g = 0; g < G; g++) rollouts[(size_t)p * G + g].prompt = &prompts[p];
    if (num_prompts == 0 || max_new_tokens <= 0) return rollouts;

    Generator gen(model);
    const int S = (int)S64;
    cudaStream_t stream = gen.stream;
    GenBuffers& b = gen.b;

    if (!stop_ids.empty())
        cudaCheck(cudaMemcpyAsync(b.stop_ids, stop_ids.data(), stop_ids.size() * sizeof(int), cudaMemcpyHostToDevice,
                                  stream));
    cudaCheck(cudaMemsetAsync(b.finished, 0, S * sizeof(int), stream));
    gen.prefill(prompts, G);
    gen.lm_head(S);

    // The state of every row lives on the GPU (kernels/decode_advance.cuh): step_info holds positions, lens,
    // draw counts and prompt lengths ([4][max_rollouts]), so a decode step has no host input and is captured once
    // as a CUDA graph, then replayed for every token. The host only polls the count of unfinished rows (mapped
    // memory, written by decode_advance), two steps behind so that the GPU always has the next steps queued.
    // Decode row m is rollout slots[m]: when the unfinished rows fit in fewer n-tiles of the decode GEMMs
    // (decode_linear_n_tiles), the finished ones are compacted away and the graph is captured again for the smaller
    // batch. The draws do not change: rollout n's t-th uniform number is splitmix64(seed, first_rollout + n, t)
    // whatever row it sits in.
    const int SR = options.max_rollouts;
    int* positions = b.step_info;
    int* lens = b.step_info + SR;
    int* steps = b.step_info + 2 * SR;
    int* prompt_lens = b.step_info + 3 * SR;
    std::vector<int> host_prompt_lens(S), host_slots(S);
    int longest_prompt = 0;
    for (int n = 0; n < S; n++) {
        host_prompt_lens[n] = (int)rollouts[n].prompt->size();
        host_slots[n] = n;
        longest_prompt = std::max(longest_prompt, host_prompt_lens[n]);
    }
    cudaCheck(cudaMemcpyAsync(prompt_lens, host_prompt_lens.data(), S * sizeof(int), cudaMemcpyHostToDevice, stream));
    cudaCheck(cudaMemcpyAsync(b.slots, host_slots.data(), S * sizeof(int), cudaMemcpyHostToDevice, stream));
    cudaCheck(cudaMemsetAsync(steps, 0, S * sizeof(int), stream));
    // decode attention's launch shape from the longest length any step reaches, the same for every step
    const int max_len = longest_prompt + max_new_tokens;
    int* unfinished = nullptr;  // host-mapped
    int* unfinished_device = nullptr;
    cudaCheck(cudaHostAlloc((void**)&unfinished, sizeof(int), cudaHostAllocMapped));
    cudaCheck(cudaHostGetDevicePointer((void**)&unfinished_device, unfinished, 0));
    *(volatile int*)unfinished = S;

    // draw the next token of every row (finished rows draw nothing) and record it
    auto draw = [&](int M) {
        sample_tokens(b.tokens, b.finished, b.logits, M, cfg.V, sampler, seed, b.slots, steps, b.stop_ids,
                      (int)stop_ids.size(), 0, b.sample_workspace, b.sample_workspace_bytes, stream, first_rollout);
        decode_advance(b.completions, options.max_sequence_length, b.slots, b.tokens, b.finished, positions, lens,
                       steps, prompt_lens, M, unfinished_device, stream);
    };
    // keeps the unfinished rows (in order) at the front of every per-row array; returns their number
    auto compact = [&](int M) {
        int* arrays[7] = {b.tokens, b.finished, positions, lens, steps, prompt_lens, b.slots};
        std::vector<int> host((size_t)7 * M);
        for (int a = 0; a < 7; a++)
            cudaCheck(cudaMemcpyAsync(host.data() + (size_t)a * M, arrays[a], M * sizeof(int), cudaMemcpyDeviceToHost,
                                      stream));
        cudaCheck(cudaStreamSynchronize(stream));
        std::vector<int> keep;
        for (int m = 0; m < M; m++)
            if (host[(size_t)M + m] == 0) keep.push_back(m);
        const int kept = (int)keep.size();
        if (kept == M || kept == 0) return kept;
        std::vector<int> packed((size_t)7 * kept);
        for (int a = 0; a < 7; a++)
            for (int i = 0; i < kept; i++) packed[(size_t)a * kept + i] = host[(size_t)a * M + keep[i]];
        for (int a = 0; a < 7; a++)
            cudaCheck(cudaMemcpyAsync(arrays[a], packed.data() + (size_t)a * kept, kept * sizeof(int),
                                      cudaMemcpyHostToDevice, stream));
        return kept;
    };

    const int EVENTS = 4;
    cudaEvent_t done_event[EVENTS];
    for (cudaEvent_t& e : done_event) cudaCheck(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t graph_exec = nullptr;
    auto drop_graph = [&]() {
        if (graph_exec) cudaCheck(cudaGraphExecDestroy(graph_exec));
        if (graph) cudaCheck(cudaGraphDestroy(graph));
        graph_exec = nullptr;
        graph = nullptr;
    };
    int M = S;
    draw(M);  // token 0, from the prefill's logits
    cudaCheck(cudaEventRecord(done_event[0], stream));
    int drawn = 1;
    bool eager = true;  // the first step at a batch size runs eagerly: first uses set kernel attributes, which a
                        // capture must not see
    for (int t = 1; t < max_new_tokens; t++) {
        if (t >= 2) {  // stop once every row is done (polled two steps late: at most two wasted steps)
            cudaCheck(cudaEventSynchronize(done_event[(t - 2) % EVENTS]));
            const int open = *(volatile int*)unfinished;
            if (open == 0) break;
            if (decode_linear_n_tiles(open) < decode_linear_n_tiles(M)) {
                M = compact(M);
                if (M == 0) break;
                drop_graph();
                eager = true;
            }
        }
        if (eager) {
            gen.decode_step(M, max_len);
            draw(M);
            eager = false;
        } else {
            if (!graph_exec) {
                cudaCheck(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
                gen.decode_step(M, max_len);
                draw(M);
                cudaCheck(cudaStreamEndCapture(stream, &graph));
                cudaCheck(cudaGraphInstantiate(&graph_exec, graph, 0));
            }
            cudaCheck(cudaGraphLaunch(graph_exec, stream));
        }
        cudaCheck(cudaEventRecord(done_event[t % EVENTS], stream));
        drawn = t + 1;
    }
    std::vector<int> completions((size_t)S * options.max_sequence_length);
    cudaCheck(cudaMemcpyAsync(completions.data(), b.completions, completions.size() * sizeof(int),
                              cudaMemcpyDeviceToHost, stream));
    cudaCheck(cudaStreamSynchronize(stream));
    drop_graph();
    for (cudaEvent_t& e : done_event) cudaCheck(cudaEventDestroy(e));
    cudaCheck(cudaFreeHost(unfinished));

    // each completion: the tokens up to and including its first stop id (later draws are the pad id)
    for (int n = 0; n < S; n++) {
        const int* row = completions.data() + (size_t)n * options.max_sequence_length;
        for (int t = 0; t < drawn; t++) {
            if (row[t] < 0 || row[t] >= cfg.V)
                throw GrpoError("generate: rollout " + std::to_string(n) + " step " + std::to_string(t) +
                                " has no token to draw (every allowed logit is -inf or NaN)");
            rollouts[n].completion.push_back(row[t]);
            if (is_stop_token(row[t], stop_ids)) break;
        }
    }
    return rollouts;
}
