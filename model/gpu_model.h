// gpu_model.h: the Qwen2 + LoRA model on one GPU: the memory plan, packed micro-batch forward to per-token log-probs, and the backward to LoRA that recomputes each layer from its checkpoint.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lora/adamw.h"
#include "lora/lora.h"
#include "model/config.h"
#include "model/weights.h"

// What the GPU memory is sized for; everything is allocated once, at gpu_model_create.
struct GpuOptions {
    // Tokens of one micro-batch (prompt + completion of whole rollouts, packed without padding). Activations scale
    // with it: at Qwen2.5-7B about 0.43 MiB per token (checkpoints 0.21, one layer's working set 0.22). The default
    // holds a GRPO step of 48 rollouts of 328 tokens (15744) in one micro-batch, so backward() needs no re-forward.
    int max_tokens = 16384;
    // Rows of logits materialized at once by the lm_head log-prob kernels (kernels/logprob.cuh).
    int logits_chunk_rows = 1024;
    // Generation (model/gpu_generate.cu): the KV cache holds max_rollouts sequences (prompts per step x G) of up
    // to max_sequence_length tokens (prompt + completion); 0 rollouts: no cache, and generate() refuses. At
    // Qwen2.5-7B the cache takes 56 KiB per token (28 layers x k, v x 4 KV heads x 128 x bf16): 48 x 456 tokens
    // is 1.2 GiB.
    int max_rollouts = 0;
    int max_sequence_length = 0;
    bool print_memory_plan = true;  // print the table below at creation
    // A bf16 copy of the NF4 base linears, dequantized once at creation (12.2 GiB at 7B): memory traded for speed,
    // as vLLM's gpu_memory_utilization trades it. The training and reference GEMMs then read it instead of
    // dequantizing each linear into a scratch, and decode steps of at least bf16_copy_min_rows rows read it
    // (decode_linear on bf16 weights) instead of the NF4 codes, which past a few rows cost more in dequantization
    // than the 3.6x bytes (dev/cuda/decode_linear.cu's "bf16 copy" rows). Its values are nf4_dequantize_gpu's, the
    // ones every NF4 path multiplies with: the policy stays the NF4 one. Ignored when no linear is NF4.
    bool bf16_base_copy = false;
    int bf16_copy_min_rows = 32;
};

// The memory plan: every byte the model asks cudaMalloc for, in up to four allocations (weights, LoRA state,
// activations + scratch, and with GpuOptions::max_rollouts the KV cache + decode working set), as lines of a table.
struct GpuMemoryLine {
    std::string name, detail;
    size_t bytes = 0;
};
struct GpuMemoryPlan {
    std::vector<GpuMemoryLine> lines;
    size_t weight_bytes = 0, base_copy_bytes = 0, lora_bytes = 0, activation_bytes = 0, generation_bytes = 0;
    size_t total() const { return weight_bytes + base_copy_bytes + lora_bytes + activation_bytes + generation_bytes; }
};
// The NF4 linears of a model, in weights: the largest (the dequantization scratch holds it) and the bf16 bytes of
// all of them (GpuOptions::bf16_base_copy, each 256-byte aligned). Zero when every linear is bf16.
struct Nf4LinearSizes {
    int64_t largest = 0;
    size_t copy_bytes = 0;
};
Nf4LinearSizes nf4_linear_sizes(const Qwen2Weights& weights);
// The plan for a model whose planned weight buffer has weight_bytes (WeightPlan::total_bytes) and whose NF4
// linears are nf4. Pure arithmetic: no GPU needed, except with options.max_rollouts > 0, where the decode GEMMs'
// split-K scratch depends on the GPU's SM count.
GpuMemoryPlan gpu_memory_plan(const Qwen2Config& cfg, size_t weight_bytes, const Nf4LinearSizes& nf4,
                              const LoraConfig& lora, const GpuOptions& options);
// The plan as a printable table (sizes in MiB, the total in GiB).
std::string gpu_memory_plan_table(const GpuMemoryPlan& plan);

// One micro-batch: whole sequences packed back to back (FlashAttention's varlen layout), and the token rows whose
// next-token log-prob is wanted.
struct GpuBatch {
    std::vector<int32_t> tokens;  // [Ntok]
    std::vector<int> cu_seqlens;  // [B + 1]: sequence b is tokens [cu_seqlens[b], cu_seqlens[b+1])
    std::vector<int> rows;        // rows n (each with n + 1 in the same sequence): logp[n] = log p(tokens[n+1])
    int num_tokens() const { return (int)tokens.size(); }
    int num_sequences() const { return (int)cu_seqlens.size() - 1; }
    // Appends one sequence; rows [first_row, last_row) of it (relative to its start) get log-probs.
    void add_sequence(const std::vector<int32_t>& sequence, int first_row, int last_row);
};

// Whether a micro-batch of num_tokens tokens in num_sequences sequences, the longest `longest`, fits the plan
// (attention's per-row statistics are laid out [B, NH, longest], so very unequal lengths count too).
bool gpu_batch_fits(const GpuOptions& options, int num_tokens, int num_sequences, int longest);

struct GpuModel;  // the device buffers and handles (gpu_model.cu)

// Uploads the weights (the planned host buffer as it is: NF4 stays NF4) and the adapters, allocates the plan and
// prints it (options.print_memory_plan). Throws GrpoError when a piece does not fit in the free GPU memory, naming
// it, the sizes and what to lower.
GpuModel* gpu_model_create(const Qwen2Weights& host_weights, const LoraWeights& lora, const GpuOptions& options);
void gpu_model_destroy(GpuModel* model);
const GpuMemoryPlan& gpu_model_memory_plan(const GpuModel* model);
const GpuOptions& gpu_model_options(const GpuModel* model);

// Called by a forward right after each layer computed its k (after RoPE) and v, [Ntok, KVH*HD] bf16 device
// arrays, with work queued on the model's stream: generation's prefill copies them into its KV cache.
typedef std::function<void(int layer, const void* k, const void* v)> GpuKVSink;

// Forward of one micro-batch (at most options.max_tokens tokens) with or without the adapters, keeping every
// layer's input (the checkpoints) for a backward. logp receives log softmax(logits / temperature)[next token] of
// batch.rows, in that order. Every call returns a new id; gpu_model_resident_id says whose activations are held.
// kv_sink, when set, sees every layer's k and v (see GpuKVSink).
uint64_t gpu_model_forward(GpuModel* model, const GpuBatch& batch, bool with_lora, float temperature,
                           std::vector<float>* logp, const GpuKVSink& kv_sink = GpuKVSink());
uint64_t gpu_model_resident_id(const GpuModel* model);
// Backward of the resident micro-batch (its forward made with LoRA): given dloss/dlogp of its rows (in batch.rows
// order), ADDS dloss/dA and dloss/dB into the device gradients. Each layer is recomputed from its checkpoint.
void gpu_model_backward(GpuModel* model, const std::vector<float>& dlogp);

// The adapters: upload replaces params, gradients, moments and step; download copies them back into *lora
// (laid out for the same model and adapter config).
void gpu_model_lora_upload(GpuModel* model, const LoraWeights& lora);
void gpu_model_lora_download(GpuModel* model, LoraWeights* lora);
// clip_grad_norm_ to max_grad_norm fused into AdamW update number `step` (1-based) at lr, then zero gradients and
// refresh the bf16 copies the GEMMs read. Returns the norm before clipping.
float gpu_model_optimizer_step(GpuModel* model, double lr, double max_grad_norm, const AdamWConfig& adamw,
                               int64_t step);

// For tests: the resident micro-batch's hidden states as floats [Ntok, C]: i = 0 the embeddings, 1..L the output of
// layer i, L + 1 the final norm (HF's output_hidden_states layout); and its full logits [Ntok, V] (lm_head on
// every row, chunk by chunk).
std::vector<float> gpu_model_hidden_state(GpuModel* model, int i);
std::vector<float> gpu_model_logits(GpuModel* model);

// ---- what generation (model/gpu_generate.cu) reads of the model ----------------------------------------------
// Declared here without CUDA headers, so host code can include this file.
struct LoraLinearGpu;  // kernels/matmul.cuh
struct MatmulContext;  // kernels/matmul.cuh
struct CUstream_st;    // what cudaStream_t points to
struct GpuModelParts {
    const Qwen2Config* cfg = nullptr;
    const Qwen2Weights* weights = nullptr;  // views of the device weight buffer
    CUstream_st* stream = nullptr;          // every launch of the model goes on it
    MatmulContext* matmul = nullptr;
    const void *rope_cos = nullptr, *rope_sin = nullptr;  // bf16 [rope_positions, HD/2]
    int rope_positions = 0;                               // max(max_tokens, max_sequence_length)
    const void* final_h = nullptr;  // the last forward's final norm output [Ntok, C] bf16 (row n of its batch)
    void* generation = nullptr;     // the generation allocation, zeroed once at creation
    size_t generation_bytes = 0;
    const LoraConfig* lora = nullptr;  // the adapters' rank, scale and targets
};
GpuModelParts gpu_model_parts(GpuModel* model);
// Layer l's linears first..first+G-1 (LIN_Q, 3: q k v) as kernels/matmul's group, the adapters' bf16 copies
// included when with_lora: what the forward multiplies with.
void gpu_model_linear_group(const GpuModel* model, int l, int first, int G, bool with_lora, LoraLinearGpu* out);
// The same group as a decode step of M rows multiplies it (with the adapters): on the bf16 base copy when the model
// holds one and M >= GpuOptions::bf16_copy_min_rows, on the base as loaded otherwise.
void gpu_model_decode_group(const GpuModel* model, int l, int first, int G, int M, LoraLinearGpu* out);
