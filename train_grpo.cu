// train_grpo.cu: GRPO on GSM8K for Qwen2.5 with a frozen NF4 base and LoRA adapters; reads top to bottom like the algorithm.
//
// One loop, two backends: the loop below only talks to the Backend interface (model/backend.h). nvcc builds
// this file into ./train_grpo; g++ builds the same file with -DGRPO_CPU_ONLY into build/train_grpo_cpu, which
// is what CI runs (it has no GPU). The CUDA backend (model/gpu_backend.cu) runs the whole loop on the GPU:
// generation with a KV cache, log-probs, the LoRA backward and the optimizer step.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "data/atomic_file.h"
#include "data/gsm8k.h"
#include "data/json.h"
#include "data/reward_command.h"
#include "data/rewards.h"
#include "data/text.h"
#include "lora/adamw.h"
#include "lora/merge.h"
#include "lora/peft.h"
#include "model/backend.h"
#include "model/distributed.h"
#include "model/grpo_loss.h"
#include "model/model_file.h"
#include "model/run_setup.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

// ----------------------------------------------------------------------------
// options (defaults: TRL's GRPOConfig as Unsloth's Qwen2.5 GSM8K notebook sets it, REFERENCE.md §5)

struct TrainOptions {
    std::string model_path;                          // -m
    std::string tokenizer_path = DEFAULT_TOKENIZER_PATH;
    std::string train_path = GSM8K_TRAIN_PATH;
    std::string task = "gsm8k";                      // gsm8k | token-range:LO:HI (tests) | random-prompts:LEN (benchmarks)
    std::string device = "cuda";
    std::string out_dir = "out";
    std::string resume_dir;
    std::string reward_command;
    std::string merge_dir;                           // --merge: also write base + adapter as a bf16 HF directory
    bool base_nf4 = true;                            // quantize a bf16 base to NF4 on load (QLoRA)
    int G = 6;
    int prompts_per_step = 1;
    int grad_accum = 1;                              // generation batches per optimizer step (gradient_accumulation_steps)
    int max_steps = 250;
    int save_every = 50;
    int sample_every = 10;                           // print one completion with its rewards every N steps (0: never)
    size_t max_prompt_length = 256;
    int max_completion_length = 200;
    double lr = 5e-6, weight_decay = 0.1, adam_beta1 = 0.9, adam_beta2 = 0.99, max_grad_norm = 0.1;
    double warmup_ratio = 0.1;
    double beta = 0.001, epsilon = 0.2, epsilon_high = 0.2;
    std::string loss_type = "bnpo";
    std::string scale_rewards = "group";
    bool mask_truncated_completions = false;
    double temperature = 1.0, top_p = 1.0;
    int top_k = 0;
    int lora_r = 32;
    double lora_alpha = 32;
    bool rslora = false;
    unsigned lora_targets = (1u << NUM_LINEAR) - 1;  // all seven projections
    uint64_t seed = 3407;
    GpuMemoryLimits gpu_memory;                      // --gpu-memory-utilization, --max-gpu-memory, --micro-batch-tokens
    bool ignore_stop = false;                        // completions always run to max_completion_length (timing only)
    std::set<int> debug_nan_grad_steps;              // optimizer steps whose loss gradient is replaced by NaN
    int world_size = 0;                              // --world-size (0: from the launcher's environment, else 1)
    int rank = -1;                                   // --rank (-1: from the launcher's environment)
    std::string dist_dir;                            // --dist-dir (default: OUT/dist)
    double dist_timeout = 600;                       // seconds a rank waits for its peers before giving up
};

// How many skipped steps in a row end the run: one can be a fluke (a reward outlier, an fp overflow), three
// in a row mean the run has diverged.
constexpr int MAX_SKIPPED_IN_A_ROW = 3;

static void print_usage(FILE* out) {
    fprintf(out,
        "usage: train_grpo -m MODEL [options]\n"
        "Defaults are TRL's GRPOConfig as Unsloth's Qwen2.5 GSM8K notebook sets it (README: Training).\n"
        "model and data\n"
        "  -m PATH                      model: .bin (dev/export_hf.py, quantize), HF directory, or bitsandbytes directory;\n"
        "                               random:PRESET (e.g. random:7B) makes random weights of that shape, for timing only;\n"
        "                               without -m, an embedded tiny random model runs the same pipeline (a smoke test)\n"
        "  --base nf4|bf16              how to hold a bf16 base (default nf4: quantized on load, QLoRA)\n"
        "  -t PATH                      tokenizer.json (default %s)\n"
        "  -d PATH                      GSM8K-style JSONL training data (default %s)\n"
        "  --task gsm8k|token-range:LO:HI|random-prompts:LEN   (default gsm8k) token-range: random 8-token prompts, the\n"
        "                               reward is the share of completion ids in [LO, HI) (tests); random-prompts: random\n"
        "                               prompts of LEN ids in [100, 150000), the same reward with [0, V/2) (benchmarks)\n"
        "  --reward-cmd CMD             external reward program: JSON lines in, one number per line out (adds a reward)\n"
        "  --max-prompt-length N        left-truncate prompts, 0 = no limit (default 256)\n"
        "  --max-completion-length N    (default 200)\n"
        "batch\n"
        "  -g G                         completions per prompt, the group size (default 6)\n"
        "  --prompts-per-step N         prompts per generation batch (default 1)\n"
        "  --grad-accum N               generation batches per optimizer step, gradients summed, each loss divided by N\n"
        "                               (TRL's gradient_accumulation_steps; default 1)\n"
        "  --max-steps N                optimizer steps (default 250)\n"
        "sampling\n"
        "  --temperature X  --top-p X  --top-k N   (default 1.0, 1.0, 0 = off)\n"
        "  --ignore-stop                completions always run to --max-completion-length (for timing only)\n"
        "loss\n"
        "  --loss-type grpo|bnpo|dr_grpo|dapo     (default bnpo)\n"
        "  --beta X                     KL weight (default 0.001; 0 skips the reference model)\n"
        "  --epsilon X  --epsilon-high X  clipping range of the ratio (default 0.2, 0.2)\n"
        "  --scale-rewards group|batch|none       what the centred reward is divided by (default group)\n"
        "  --mask-truncated-completions 0|1       completions that never stop teach nothing (default 0)\n"
        "optimizer (AdamW, clip_grad_norm_, linear warmup then cosine decay to 0: TRL's lr_scheduler_type cosine)\n"
        "  --lr X                       peak learning rate (default 5e-6)\n"
        "  --adam-beta1 X  --adam-beta2 X         (default 0.9, 0.99)\n"
        "  --weight-decay X             decoupled weight decay (default 0.1)\n"
        "  --warmup-ratio X             warmup steps = ceil(X * max_steps) (default 0.1)\n"
        "  --max-grad-norm X            clip the global gradient norm (default 0.1)\n"
        "  A step whose loss or gradient norm is not finite is skipped (no update) and logged as skipped; after %d\n"
        "  in a row the run stops with a checkpoint of the last good step and exit code 3.\n"
        "LoRA\n"
        "  --lora-r N  --lora-alpha X  --rslora 0|1   (default 32, 32, 0)\n"
        "  --lora-targets LIST          comma-separated modules (default q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)\n"
        "run\n"
        "  --device cuda|cpu            backend (default cuda)\n"
        "  --gpu-memory-utilization X   plan GPU memory for at most this share of the free memory (default 0.9)\n"
        "  --max-gpu-memory GIB         or for at most this many GiB\n"
        "  --micro-batch-tokens N       tokens per policy micro-batch (default: the largest that fits the limit)\n"
        "  --bf16-base-copy auto|on|off also hold the NF4 base dequantized to bf16 (12.2 GiB at 7B): faster GEMMs and\n"
        "                               decode steps of 32+ rollouts; auto: with 32+ rollouts a step, when it fits beside\n"
        "                               the micro-batch\n"
        "  --out DIR                    checkpoints and log.jsonl go here (default out)\n"
        "  --save-every N               checkpoint every N steps (default 50), and always at the end and on Ctrl-C\n"
        "  --resume DIR                 continue from a checkpoint directory written by an earlier run\n"
        "  --merge DIR                  at the end also write the base merged with the adapter as a bf16 HF directory\n"
        "  --sample-every N             print one completion with its rewards every N steps (default 10, 0 = never)\n"
        "  --seed N                     (default 3407)\n"
        "several GPUs (data parallel: README, Training; mpirun -np N and srun set the ranks, no flags needed)\n"
        "  --world-size N  --rank R     this process is rank R of N (one process per GPU); each takes\n"
        "                               --prompts-per-step / N of every step's prompts, which must divide evenly\n"
        "  --dist-dir DIR               where the ranks meet: a directory on a file system all of them share\n"
        "                               (default OUT/dist)\n"
        "  --dist-timeout S             seconds a rank waits for the others before it gives up (default 600)\n"
        "  --debug-nan-grad LIST        debugging: replace the loss gradient of these optimizer steps (e.g. 3,4) by NaN,\n"
        "                               to see the skip policy at work\n",
        DEFAULT_TOKENIZER_PATH, GSM8K_TRAIN_PATH, MAX_SKIPPED_IN_A_ROW);
}

static TrainOptions parse_options(int argc, char** argv) {
    TrainOptions o;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") { print_usage(stdout); exit(0); }
        if (a == "--ignore-stop") { o.ignore_stop = true; continue; }  // the one option without a value
        if (i + 1 >= argc) throw GrpoError("option " + a + " needs a value (or is unknown); see train_grpo --help");
        const char* v = argv[++i];
        if (a == "-m") o.model_path = v;
        else if (a == "-t") o.tokenizer_path = v;
        else if (a == "-d") o.train_path = v;
        else if (a == "--device") o.device = v;
        else if (a == "--out") o.out_dir = v;
        else if (a == "--resume") o.resume_dir = v;
        else if (a == "--task") o.task = v;
        else if (a == "--reward-cmd") o.reward_command = v;
        else if (a == "--merge") o.merge_dir = v;
        else if (a == "--base") {
            if (strcmp(v, "nf4") && strcmp(v, "bf16")) throw GrpoError("--base: expected nf4 or bf16, got '" + std::string(v) + "'");
            o.base_nf4 = !strcmp(v, "nf4");
        }
        else if (a == "-g") o.G = parse_int_option(a, v, 2, 1024);  // a group of one has no advantage
        else if (a == "--prompts-per-step") o.prompts_per_step = parse_int_option(a, v, 1, 1 << 20);
        else if (a == "--grad-accum") o.grad_accum = parse_int_option(a, v, 1, 1 << 20);
        else if (a == "--max-steps") o.max_steps = parse_int_option(a, v, 1, 1 << 30);
        else if (a == "--save-every") o.save_every = parse_int_option(a, v, 1, 1 << 30);
        else if (a == "--sample-every") o.sample_every = parse_int_option(a, v, 0, 1 << 30);
        else if (a == "--max-prompt-length") o.max_prompt_length = (size_t)parse_int_option(a, v, 0, 1 << 20);
        else if (a == "--max-completion-length") o.max_completion_length = parse_int_option(a, v, 1, 1 << 20);
        else if (a == "--lr") o.lr = parse_number_option(a, v, 0, 1);
        else if (a == "--weight-decay") o.weight_decay = parse_number_option(a, v, 0, 1);
        else if (a == "--warmup-ratio") o.warmup_ratio = parse_number_option(a, v, 0, 1);
        else if (a == "--max-grad-norm") o.max_grad_norm = parse_number_option(a, v, 0, 1e9);
        else if (a == "--adam-beta1") o.adam_beta1 = parse_number_option(a, v, 0, 0.999999);
        else if (a == "--adam-beta2") o.adam_beta2 = parse_number_option(a, v, 0, 0.999999);
        else if (a == "--beta") o.beta = parse_number_option(a, v, 0, 1e3);
        else if (a == "--epsilon") o.epsilon = parse_number_option(a, v, 0, 1);
        else if (a == "--epsilon-high") o.epsilon_high = parse_number_option(a, v, 0, 1e3);
        else if (a == "--loss-type") o.loss_type = v;
        else if (a == "--scale-rewards") o.scale_rewards = v;
        else if (a == "--mask-truncated-completions") o.mask_truncated_completions = parse_int_option(a, v, 0, 1);
        else if (a == "--temperature") o.temperature = parse_number_option(a, v, 1e-3, 100);  // log-probs divide by it
        else if (a == "--top-p") o.top_p = parse_number_option(a, v, 0, 1);
        else if (a == "--top-k") o.top_k = parse_int_option(a, v, 0, 1 << 30);
        else if (a == "--lora-r") o.lora_r = parse_int_option(a, v, 1, 4096);
        else if (a == "--lora-alpha") o.lora_alpha = parse_number_option(a, v, 1e-6, 1e6);
        else if (a == "--rslora") o.rslora = parse_int_option(a, v, 0, 1);
        else if (a == "--lora-targets") {
            // comma-separated HF module names, as PEFT's target_modules: q_proj,k_proj,v_proj,...
            o.lora_targets = 0;
            for (const std::string& name : py_split(v, ",")) {
                int slot = lora_slot_of_module(name);
                if (slot < 0)
                    throw GrpoError("--lora-targets: unknown module '" + name + "'; expected a comma-separated list of "
                                    "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj");
                o.lora_targets |= 1u << slot;
            }
        }
        else if (a == "--seed") o.seed = (uint64_t)parse_number_option(a, v, 0, 9007199254740992.0);
        else if (a == "--gpu-memory-utilization") o.gpu_memory.utilization = parse_number_option(a, v, 0.01, 1);
        else if (a == "--max-gpu-memory") o.gpu_memory.max_gib = parse_number_option(a, v, 0.01, 1e6);
        else if (a == "--micro-batch-tokens") o.gpu_memory.micro_batch_tokens = parse_int_option(a, v, 1, 1 << 20);
        else if (a == "--bf16-base-copy") o.gpu_memory.bf16_base_copy = parse_bf16_base_copy(v);
        else if (a == "--world-size") o.world_size = parse_int_option(a, v, 1, 1 << 16);
        else if (a == "--rank") o.rank = parse_int_option(a, v, 0, 1 << 16);
        else if (a == "--dist-dir") o.dist_dir = v;
        else if (a == "--dist-timeout") o.dist_timeout = parse_number_option(a, v, 0.01, 1e7);
        else if (a == "--debug-nan-grad") {
            for (const std::string& step : py_split(v, ","))
                o.debug_nan_grad_steps.insert(parse_int_option(a, step.c_str(), 1, 1 << 30));
        }
        else throw GrpoError("unknown option " + a + "; see train_grpo --help");
    }
    if (o.device != "cuda" && o.device != "cpu") throw GrpoError("--device: expected cuda or cpu, got '" + o.device + "'");
    loss_type_from_name(o.loss_type);        // both throw a GrpoError listing the valid names
    scale_rewards_from_name(o.scale_rewards);
    return o;
}

// ----------------------------------------------------------------------------
// the task: the prompts, and how each completion is scored

struct Task {
    std::vector<std::vector<int32_t>> prompts;  // token ids after the chat template and left-truncation
    std::vector<std::string> prompt_texts;      // for the external reward program
    std::vector<std::string> answers;           // reference answers (GSM8K)
    std::vector<std::string> reward_names;      // one column per reward, in the order of `score`
    int token_lo = 0, token_hi = 0;             // token-range task only
    bool token_range = false;
};

static Task make_gsm8k_task(const TrainOptions& opt, const Tokenizer& tokenizer) {
    Task task;
    std::vector<Gsm8kExample> examples = gsm8k_load(opt.train_path);
    std::vector<std::vector<ChatMessage>> chats;
    for (const Gsm8kExample& ex : examples) {
        chats.push_back(ex.prompt);
        task.prompt_texts.push_back(chat_render(ex.prompt, true));
        task.answers.push_back(ex.reference);
    }
    EncodedPrompts encoded = encode_prompts(tokenizer, chats, opt.max_prompt_length);
    size_t longest = 0, total = 0;
    for (size_t i = 0; i < encoded.ids.size(); i++) {
        task.prompts.emplace_back(encoded.ids[i].begin(), encoded.ids[i].end());
        longest = std::max(longest, encoded.full_length[i]);
        total += encoded.full_length[i];
    }
    printf("data: %zu prompts from %s, mean %.1f tokens, longest %zu; %zu truncated to %zu tokens\n", examples.size(),
           opt.train_path.c_str(), (double)total / examples.size(), longest, encoded.num_truncated, opt.max_prompt_length);
    for (const RewardSpec& spec : reward_registry()) task.reward_names.push_back(spec.name);
    if (!opt.reward_command.empty()) task.reward_names.push_back("external");
    return task;
}

// Synthetic tasks that need no tokenizer, with a dense reward: the share of completion ids in [lo, hi).
//   token-range:LO:HI    64 random 8-token prompts; a policy that learns anything learns this (what the tests check)
//   random-prompts:LEN   64 random prompts of exactly LEN ids in [100, 150000), as the HF + PEFT peer benchmark
//                        draws them (torch.randint(100, 150000)); the reward's range is [0, V/2)
static Task make_synthetic_task(const TrainOptions& opt, int V) {
    Task task;
    task.token_range = true;
    int prompt_length = 8, id_lo = 0, id_hi = V;
    if (opt.task.compare(0, 15, "random-prompts:") == 0) {
        if (sscanf(opt.task.c_str(), "random-prompts:%d", &prompt_length) != 1 || prompt_length < 1 ||
            prompt_length > (1 << 20))
            throw GrpoError("--task " + opt.task + ": expected random-prompts:LEN with LEN a positive prompt length");
        id_lo = std::min(100, V - 1);
        id_hi = std::min(150000, V);
        task.token_lo = 0;
        task.token_hi = std::max(1, V / 2);
    } else if (sscanf(opt.task.c_str(), "token-range:%d:%d", &task.token_lo, &task.token_hi) != 2 ||
               task.token_lo < 0 || task.token_hi <= task.token_lo || task.token_hi > V) {
        throw GrpoError("--task " + opt.task + ": expected token-range:LO:HI with 0 <= LO < HI <= V = " +
                        std::to_string(V) + ", random-prompts:LEN, or gsm8k");
    }
    Rng rng(opt.seed ^ 0x5eed);
    for (int i = 0; i < 64; i++) {
        std::vector<int32_t> prompt(prompt_length);
        for (int32_t& id : prompt) id = id_lo + (int32_t)rng.next_below((uint64_t)(id_hi - id_lo));
        task.prompts.push_back(prompt);
        task.prompt_texts.push_back("");
        task.answers.push_back("");
    }
    task.reward_names.push_back("token_range");
    return task;
}

// rewards[n * F + f] for reward f of rollout n, and the weighted total per rollout.
static void score_rollouts(const Task& task, const TrainOptions& opt, const Tokenizer* tokenizer,
                           const std::vector<Rollout>& rollouts, const std::vector<size_t>& prompt_index,
                           const std::vector<int>& stop_ids, std::vector<float>* per_function, std::vector<float>* total) {
    size_t N = rollouts.size(), F = task.reward_names.size();
    per_function->assign(N * F, 0.0f);
    total->assign(N, 0.0f);
    std::vector<RewardSample> external;
    for (size_t n = 0; n < N; n++) {
        const std::vector<int32_t>& c = rollouts[n].completion;
        if (task.token_range) {
            int in_range = 0, len = 0;
            for (int32_t id : c) {
                if (is_stop_token(id, stop_ids)) break;
                len++;
                in_range += id >= task.token_lo && id < task.token_hi;
            }
            (*per_function)[n] = (*total)[n] = len ? (float)in_range / len : 0.0f;
            continue;
        }
        std::string text = tokenizer->decode(std::vector<int>(c.begin(), c.end()), /*skip_special=*/true);
        const std::string& answer = task.answers[prompt_index[n]];
        RewardScores scores = compute_rewards(text, answer);
        for (size_t f = 0; f < scores.values.size(); f++) (*per_function)[n * F + f] = (float)scores.values[f];
        (*total)[n] = (float)scores.total;
        if (!opt.reward_command.empty()) external.push_back({task.prompt_texts[prompt_index[n]], text, answer});
    }
    if (!external.empty()) {
        std::vector<double> extra = run_reward_command(opt.reward_command, external);
        for (size_t n = 0; n < N; n++) {
            (*per_function)[n * F + F - 1] = (float)extra[n];
            (*total)[n] += (float)extra[n];
        }
    }
}

// ----------------------------------------------------------------------------
// checkpoints: PEFT adapter + AdamW state + where the run stands, written to a temp dir and renamed

static volatile sig_atomic_t g_stop_requested = 0;
static void on_sigint(int) { g_stop_requested = 1; }

struct RunState {
    int step = 0;           // optimizer steps done
    uint64_t epoch = 0;     // PromptOrder position
    size_t position = 0;
    uint64_t rng_state = 0; // the sampler's Rng
    // the GPU memory plan the run chose (0 tokens: none, the CPU backend). Both its parts change the arithmetic
    // (the micro-batch the GEMM shapes, the bf16 base copy the decode kernels), so --resume takes them again.
    int gpu_micro_batch_tokens = 0;
    bool gpu_bf16_base_copy = false;
};

static std::string save_checkpoint(const TrainOptions& opt, Backend& backend, const RunState& state) {
    std::string dir = opt.out_dir + "/checkpoint-" + std::to_string(state.step);
    std::string tmp = dir + ".tmp";
    std::error_code ec;
    std::filesystem::remove_all(tmp, ec);
    peft_save(tmp, backend.lora(), opt.model_path);
    adamw_state_save(tmp + "/optimizer.safetensors", backend.lora());
    std::string json = "{\"step\": " + std::to_string(state.step) + ", \"epoch\": " + std::to_string(state.epoch) +
                       ", \"position\": " + std::to_string(state.position) + ", \"rng_state\": \"" +
                       std::to_string(state.rng_state) + "\", \"seed\": \"" + std::to_string(opt.seed) + "\"" +
                       (state.gpu_micro_batch_tokens > 0
                            ? ", \"gpu_micro_batch_tokens\": " + std::to_string(state.gpu_micro_batch_tokens) +
                                  ", \"gpu_bf16_base_copy\": " + (state.gpu_bf16_base_copy ? "true" : "false")
                            : std::string()) +
                       "}\n";
    write_file_atomic(tmp + "/trainer_state.json", json);
    std::filesystem::remove_all(dir, ec);
    std::filesystem::rename(tmp, dir, ec);
    if (ec) throw GrpoError("cannot rename " + tmp + " to " + dir + ": " + ec.message());
    return dir;
}

static RunState load_run_state(const std::string& dir) {
    JsonValue j = json_parse_file(dir + "/trainer_state.json");
    auto field = [&](const char* key) -> const JsonValue& {
        const JsonValue* v = j.get(key);
        if (!v) throw GrpoError(dir + "/trainer_state.json: missing field \"" + key + "\"; is this a grpo.cu checkpoint?");
        return *v;
    };
    RunState s;
    s.step = (int)field("step").number;
    s.epoch = (uint64_t)field("epoch").number;
    s.position = (size_t)field("position").number;
    s.rng_state = std::stoull(field("rng_state").string);
    if (const JsonValue* tokens = j.get("gpu_micro_batch_tokens")) {  // absent: a CPU run, or an older checkpoint
        s.gpu_micro_batch_tokens = (int)tokens->number;
        const JsonValue* copy = j.get("gpu_bf16_base_copy");
        s.gpu_bf16_base_copy = copy && copy->boolean;
    }
    return s;
}

// ----------------------------------------------------------------------------
// the run

static std::string progress_bar(int done, int total) {
    const int width = 20;
    int filled = total > 0 ? (int)((int64_t)done * width / total) : width;
    return "[" + std::string(filled, '#') + std::string(width - filled, '.') + "]";
}

static std::string format_duration(double seconds) {
    char buf[32];
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, s / 60 % 60);
    else snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
    return buf;
}

static double mean_of(const std::vector<float>& x, size_t begin, size_t stride, size_t count) {
    double s = 0;
    for (size_t i = 0; i < count; i++) s += x[begin + i * stride];
    return count ? s / count : 0.0;
}

static double std_of(const std::vector<float>& x, size_t begin, size_t stride, size_t count) {
    if (count < 2) return 0.0;  // torch.std of one value is nan; TRL logs it as 0 for a single completion
    double m = mean_of(x, begin, stride, count), s = 0;
    for (size_t i = 0; i < count; i++) s += (x[begin + i * stride] - m) * (x[begin + i * stride] - m);
    return std::sqrt(s / (count - 1));
}

// The loss configuration of one generation batch on one of W ranks, so that each rank's loss (and gradient) is its
// share of the loss one process computes over the whole batch, and their sum is that loss: grpo and dr_grpo average
// over sequences, of which the whole batch has W times this rank's; bnpo divides by the whole batch's token count
// (batch_tokens), dapo by the whole accumulated batch's (num_items, counted over every rank already). *items
// receives the num_items_in_batch to pass to grpo_loss. (TRL on several GPUs instead divides bnpo by each process's
// own tokens and averages the gradients; then the split changes the result, and here it does not.)
static GrpoLossConfig data_parallel_loss_config(const GrpoLossConfig& cfg, int W, float batch_tokens, float num_items,
                                                float* items) {
    GrpoLossConfig c = cfg;
    *items = num_items;
    switch (cfg.loss_type) {
        case LossType::GRPO:
        case LossType::DR_GRPO:
            c.grad_accum_steps = cfg.grad_accum_steps * W;
            break;
        case LossType::BNPO:
            // bnpo's sum / max(tokens, 1) / A is dapo's sum / num_items with num_items = max(tokens, 1) * A
            c.loss_type = LossType::DAPO;
            *items = std::max(batch_tokens, 1.0f) * (float)cfg.grad_accum_steps;
            break;
        case LossType::DAPO:
            break;
    }
    return c;
}

static int train(const TrainOptions& opt) {
    // 0. which process of the run this is: one, unless launched as several (README: Training, Several GPUs). Each
    // rank takes a contiguous share of every step's prompts; they meet in a directory to exchange NCCL's id and
    // each step's rewards and metrics.
    const DistConfig dist = dist_config_resolve(opt.world_size, opt.rank);
    const bool distributed = dist.world_size > 1, rank0 = dist.rank == 0;
    const PromptRange mine = dist_prompt_range(opt.prompts_per_step, dist.world_size, dist.rank);
    std::unique_ptr<FileExchange> exchange;
    if (distributed) {
        const std::string dir = opt.dist_dir.empty() ? dist_default_dir(opt.out_dir) : opt.dist_dir;
        printf("data parallel: rank %d of %d (%s, local rank %d) generates and trains prompts %d..%d of every step's "
               "%d; rank 0 writes %s/log.jsonl and the checkpoints%s\n", dist.rank, dist.world_size,
               dist.launcher.c_str(), dist.local_rank, mine.begin, mine.end - 1, opt.prompts_per_step,
               opt.out_dir.c_str(), rank0 ? "" : ", this rank prints errors only");
        fflush(stdout);
        if (!rank0 && !freopen("/dev/null", "w", stdout)) {}  // one voice: the other ranks' lines would repeat rank 0's
        exchange.reset(new FileExchange(dir, dist.rank, dist.world_size, opt.dist_timeout));
    }

    // 1. the base model, frozen (NF4 by default), and the adapters that train
    Qwen2Weights weights = load_base_or_tiny(opt.model_path, opt.base_nf4, opt.seed);
    const Qwen2Config& cfg = weights.config;
    RunState state;
    LoraWeights lora;
    if (!opt.resume_dir.empty()) {
        lora = peft_load(opt.resume_dir, cfg);
        adamw_state_load(opt.resume_dir + "/optimizer.safetensors", &lora);
        state = load_run_state(opt.resume_dir);
        printf("resume: %s at step %d\n", opt.resume_dir.c_str(), state.step);
    } else {
        LoraConfig lc;
        lc.R = opt.lora_r;
        lc.alpha = (float)opt.lora_alpha;
        lc.rslora = opt.rslora;
        lc.targets = opt.lora_targets;
        lora = lora_create(cfg, lc);
        lora_init_peft(&lora, opt.seed);
    }
    printf("lora: r %d, alpha %g%s, %zu trainable parameters\n", lora.lora.R, lora.lora.alpha,
           lora.lora.rslora ? " (rsLoRA)" : "", lora.num_params());

    // 2. the task: prompts and rewards
    std::unique_ptr<Tokenizer> tokenizer;
    std::vector<int> stop_ids;
    Task task;
    SamplerConfig sampler;
    sampler.temperature = opt.temperature;
    sampler.top_p = opt.top_p;
    sampler.top_k = opt.top_k;
    if (opt.task == "gsm8k") {
        tokenizer.reset(new Tokenizer(load_tokenizer_for(opt.tokenizer_path, cfg)));
        stop_ids = chat_stop_token_ids(*tokenizer);
        sampler.vocab_limit = tokenizer->vocab_size();  // rows above the tokenizer's ids are padding: never sample them
        task = make_gsm8k_task(opt, *tokenizer);
    } else {
        task = make_synthetic_task(opt, cfg.V);
        sampler.vocab_limit = cfg.V;
    }
    sampler_check(sampler, cfg.V);
    printf("rewards:");
    for (const std::string& name : task.reward_names) printf(" %s", name.c_str());
    printf("\n");

    // 3. the backend, sized for one generation batch's rollouts at their longest
    size_t longest_prompt = 0;
    for (const std::vector<int32_t>& prompt : task.prompts) longest_prompt = std::max(longest_prompt, prompt.size());
    if ((int64_t)longest_prompt + opt.max_completion_length > cfg.max_position_embeddings)
        throw GrpoError("the longest prompt has " + std::to_string(longest_prompt) + " tokens and completions up to " +
                        std::to_string(opt.max_completion_length) + ": together more than the model's " +
                        std::to_string(cfg.max_position_embeddings) + " positions (max_position_embeddings); lower "
                        "--max-prompt-length (prompts are left-truncated to it) or --max-completion-length");
#ifndef GRPO_CPU_ONLY
    // on several GPUs: this rank's GPU, and the NCCL communicator the LoRA gradients are summed through, made
    // before the memory plan so that the plan sees what NCCL took
    std::unique_ptr<NcclCommunicator> nccl;
    if (distributed && opt.device == "cuda") {
        int device = dist_select_cuda_device(dist);
        nccl.reset(new NcclCommunicator(*exchange));
        printf("NCCL: %d ranks, this rank on GPU %d\n", dist.world_size, device);
    }
#endif
    // a resumed run takes the checkpoint's memory plan, unless --micro-batch-tokens or --bf16-base-copy on|off say
    // otherwise: a plan chosen again from the free memory could differ, and with it the bits
    GpuMemoryLimits limits = opt.gpu_memory;
    if (state.gpu_micro_batch_tokens > 0 && opt.device == "cuda") {
        if (limits.micro_batch_tokens == 0) limits.micro_batch_tokens = state.gpu_micro_batch_tokens;
        if (limits.bf16_base_copy == -1) limits.bf16_base_copy = state.gpu_bf16_base_copy ? 1 : 0;
        printf("resume: the checkpoint's GPU memory plan: a micro-batch of %d tokens, bf16 base copy %s (flags given "
               "now take precedence)\n", limits.micro_batch_tokens, limits.bf16_base_copy == 1 ? "on" : "off");
    }
    MicroBatchChoice plan;
    std::unique_ptr<Backend> backend = make_backend(opt.device, std::move(weights), std::move(lora),
                                                    mine.size() * opt.G, (int)longest_prompt,
                                                    opt.max_completion_length, &limits, &plan);
    state.gpu_micro_batch_tokens = plan.max_tokens;
    state.gpu_bf16_base_copy = plan.base_copy;

    // 4. the loop: sample G completions per prompt, score them, turn rewards into advantages, and take one
    // policy-gradient step on the clipped, KL-regularised GRPO objective
    const int G = opt.G, P = opt.prompts_per_step, A = opt.grad_accum, F = (int)task.reward_names.size();
    GrpoLossConfig loss_cfg;
    loss_cfg.loss_type = loss_type_from_name(opt.loss_type);
    loss_cfg.beta = opt.beta;
    loss_cfg.epsilon_low = opt.epsilon;
    loss_cfg.epsilon_high = opt.epsilon_high;
    loss_cfg.max_completion_length = opt.max_completion_length;
    loss_cfg.grad_accum_steps = A;
    ScaleRewards scale = scale_rewards_from_name(opt.scale_rewards);
    AdamWConfig adamw;
    adamw.beta1 = opt.adam_beta1;
    adamw.beta2 = opt.adam_beta2;
    adamw.weight_decay = opt.weight_decay;
    int64_t warmup = warmup_steps_from_ratio(opt.warmup_ratio, opt.max_steps);
    // --ignore-stop: generation never stops early, so every step does the same, largest, amount of work
    const std::vector<int> generation_stop_ids = opt.ignore_stop ? std::vector<int>() : stop_ids;
    if (opt.ignore_stop) printf("*** --ignore-stop: every completion runs to %d tokens (for timing only)\n",
                                opt.max_completion_length);
    PromptOrder order(task.prompts.size(), opt.seed);
    order.seek(state.epoch, state.position);
    Rng rng(opt.seed);
    if (state.step > 0) rng.state = state.rng_state;
    std::error_code dir_error;
    std::filesystem::create_directories(opt.out_dir, dir_error);
    if (dir_error)
        throw GrpoError("--out " + opt.out_dir + ": cannot create the output directory (" + dir_error.message() +
                        "); pick another --out");
    std::string log_path = opt.out_dir + "/log.jsonl";
    FILE* log = nullptr;  // rank 0's alone
    if (rank0) {
        log = fopen(log_path.c_str(), state.step > 0 ? "a" : "w");
        if (!log) throw GrpoError(log_path + ": cannot open for writing: " + strerror(errno));
    }
    signal(SIGINT, on_sigint);
    auto now = [] { return std::chrono::steady_clock::now(); };
    auto secs = [](std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
        return std::chrono::duration<double>(b - a).count();
    };

    std::string last_checkpoint = state.step > 0 ? opt.resume_dir : "";
    double total_seconds = 0;  // for the ETA: this run's steps only, a resumed run's earlier steps ran elsewhere
    int steps_this_run = 0;
    RunState good_state = state;               // after the last step whose update was applied (or the start)
    std::vector<std::string> skipped_in_a_row;  // "step N: why" for the current run of skipped steps
    // Ctrl-C: one process stops after the step it is in. Several stop after the step in which any of them saw it,
    // all together (they agree on it in the step's exchange), so that none waits for a peer that has left.
    bool stop_agreed = false;
    auto stopping = [&] { return distributed ? stop_agreed : g_stop_requested != 0; };
    const int PL = mine.size();  // prompts of each generation batch on this rank (P with one process)
    while (state.step < opt.max_steps && !stopping()) {
        auto t0 = now();
        // 4a. rollouts: A generation batches (--grad-accum), each G completions for each of P prompts (this rank's
        // share of them: the same prompt order on every rank, each keeping its range). The step takes one seed from
        // the run's Rng, and rollout n of the step's A x P x G draws with (seed, n) whichever call, batch or rank
        // generates it: so the tokens are the same with one rank or several, and A batches of P prompts draw what
        // one batch of A x P prompts would.
        std::vector<std::vector<std::vector<int32_t>>> batch_prompts(A);  // rollouts point into these: never resized
        std::vector<Rollout> rollouts;
        std::vector<size_t> prompt_of;  // the dataset index of each rollout's prompt
        const Rng step_seed = rng;      // generate() takes its seed as the next number of the Rng it is given
        rng.next_u64();
        for (int a = 0; a < A; a++) {
            for (int p = 0; p < P; p++) {
                size_t index = order.next();
                if (p < mine.begin || p >= mine.end) continue;  // another rank's
                batch_prompts[a].push_back(task.prompts[index]);
                for (int g = 0; g < G; g++) prompt_of.push_back(index);
            }
            Rng seed = step_seed;
            std::vector<Rollout> batch = backend->generate(batch_prompts[a], G, opt.max_completion_length, sampler,
                                                           generation_stop_ids, seed, (a * P + mine.begin) * G);
            rollouts.insert(rollouts.end(), batch.begin(), batch.end());
        }
        const int N = (int)rollouts.size(), NB = PL * G;  // this rank's rollouts of the step; of one batch
        auto t_rollout = now();

        // 4b. rewards, and which tokens the loss sees: up to and including the first stop token
        std::vector<float> per_function, rewards;
        score_rollouts(task, opt, tokenizer.get(), rollouts, prompt_of, stop_ids, &per_function, &rewards);
        std::vector<int> Tc(A, 1);
        std::vector<std::vector<float>> mask(A);
        std::vector<CompletionMask> masks;
        std::vector<float> batch_tokens(A, 0.0f);  // tokens the loss sees in each batch (of every rank)
        for (int a = 0; a < A; a++) {
            for (int n = a * NB; n < (a + 1) * NB; n++) Tc[a] = std::max(Tc[a], (int)rollouts[n].completion.size());
            mask[a].assign((size_t)NB * Tc[a], 0.0f);
            for (int n = a * NB; n < (a + 1) * NB; n++) {
                std::vector<int> ids(rollouts[n].completion.begin(), rollouts[n].completion.end());
                masks.push_back(completion_mask(ids, Tc[a], stop_ids, opt.mask_truncated_completions));
                std::copy(masks.back().mask.begin(), masks.back().mask.end(),
                          mask[a].begin() + (size_t)(n - a * NB) * Tc[a]);
                for (float m : masks.back().mask) batch_tokens[a] += m;
            }
        }
        double completion_tokens = 0, train_tokens = 0;
        for (const Rollout& r : rollouts) {
            completion_tokens += r.completion.size();
            train_tokens += r.prompt->size() + r.completion.size();
        }
        // With several ranks, every rank's rewards, lengths and token counts, in the order one process has them:
        // the advantages (group- or batch-scaled), the loss normalizers and every logged metric are then computed
        // from the whole batch, identically on every rank.
        std::vector<float> all_rewards = rewards, all_per_function = per_function;
        std::vector<CompletionMask> all_masks;  // lengths and stop flags only
        if (distributed) {
            const int W = dist.world_size, width = F + 6;
            std::vector<double> values;
            for (int n = 0; n < N; n++) {
                double mask_sum = 0;
                for (float m : masks[n].mask) mask_sum += m;
                values.push_back(rewards[n]);
                for (int f = 0; f < F; f++) values.push_back(per_function[(size_t)n * F + f]);
                values.insert(values.end(), {(double)masks[n].length, (double)masks[n].stopped, mask_sum,
                                             (double)rollouts[n].completion.size(), (double)rollouts[n].prompt->size()});
            }
            std::vector<double> all = dist_global_order(exchange->all_gather(values), W, A, NB, width);
            const int N_all = N * W;
            all_rewards.assign(N_all, 0.0f);
            all_per_function.assign((size_t)N_all * F, 0.0f);
            all_masks.assign(N_all, CompletionMask());
            std::fill(batch_tokens.begin(), batch_tokens.end(), 0.0f);
            completion_tokens = train_tokens = 0;
            for (int n = 0; n < N_all; n++) {
                const double* v = all.data() + (size_t)n * width;
                all_rewards[n] = (float)v[0];
                for (int f = 0; f < F; f++) all_per_function[(size_t)n * F + f] = (float)v[1 + f];
                all_masks[n].length = (int)v[F + 1];
                all_masks[n].stopped = v[F + 2] != 0;
                batch_tokens[n / (P * G)] += (float)v[F + 3];
                completion_tokens += v[F + 4];
                train_tokens += v[F + 4] + v[F + 5];
            }
        }
        // advantages relative to the other completions of the same prompt (TRL computes them over the whole
        // generation batch, every accumulation step's rollouts together); this rank keeps those of its rollouts
        std::vector<float> advantages = grpo_advantages(all_rewards, A * P, G, scale);
        RewardMetrics reward_metrics = grpo_reward_metrics(all_rewards, A * P, G, scale);
        if (distributed) {
            std::vector<float> all_advantages = std::move(advantages);
            advantages.clear();
            for (int a = 0; a < A; a++) {
                auto first = all_advantages.begin() + (ptrdiff_t)a * P * G + (ptrdiff_t)mine.begin * G;
                advantages.insert(advantages.end(), first, first + NB);
            }
        }
        CompletionMetrics completion_stats = completion_metrics(distributed ? all_masks : masks);
        const int N_all = (int)all_rewards.size();  // rollouts of the step on every rank
        // DAPO divides by the token count of the whole accumulated batch, so every batch's masks are counted first
        float num_items = 0;
        for (float tokens : batch_tokens) num_items += tokens;
        auto t_scored = now();

        // 4c. per generation batch: log-probs of the sampled tokens under the reference (LoRA off) for the KL
        // term, then under the policy with the LoRA backward of the loss's gradient with respect to every token's
        // log-prob (per micro-batch where the backend has several), which adds to the gradients; then the loss
        // (already divided by A) and its metrics
        double loss = 0, reference_s = 0, policy_s = 0;
        GrpoLossMetrics metrics;
        std::vector<float> metric_sums(4 * A, 0.0f);  // this rank's kl, clip low, high, region sums per batch
        std::string skipped;  // why this step is skipped, empty when it is not
        for (int a = 0; a < A && skipped.empty(); a++) {
            auto tb = now();
            std::vector<Rollout> batch(rollouts.begin() + a * NB, rollouts.begin() + (a + 1) * NB);
            std::vector<float> ref_logp, logp;
            float temperature = (float)opt.temperature;
            if (opt.beta != 0.0) backend->completion_logprobs(batch, Tc[a], temperature, false, false, &ref_logp);
            auto tr = now();
            reference_s += secs(tb, tr);
            float items = num_items;
            GrpoLossConfig batch_cfg = distributed ? data_parallel_loss_config(loss_cfg, dist.world_size,
                                                                              batch_tokens[a], num_items, &items)
                                                   : loss_cfg;
            const float* ref = opt.beta != 0.0 ? ref_logp.data() : nullptr;
            const bool nan_grad = opt.debug_nan_grad_steps.count(state.step + 1) > 0;
            // the loss's gradient at some rows, as soon as the backend has their log-probs (a row's gradient needs
            // its own log-probs and the masks alone: the rows not yet filled are not read)
            auto dlogp_of = [&](const std::vector<int>& rows, const std::vector<float>& lp, std::vector<float>* dlogp) {
                grpo_loss_grad_rows(batch_cfg, NB, Tc[a], lp.data(), nullptr, ref, mask[a].data(),
                                    advantages.data() + a * NB, items, rows, dlogp->data());
                if (nan_grad)
                    for (int n : rows) std::fill_n(dlogp->begin() + (size_t)n * Tc[a], Tc[a], NAN);
            };
            backend->policy_logprobs_backward(batch, Tc[a], temperature, dlogp_of, &logp);
            GrpoLossResult result = grpo_loss(batch_cfg, NB, Tc[a], logp.data(), nullptr, ref, mask[a].data(),
                                              advantages.data() + a * NB, items, nullptr);
            if (!std::isfinite(result.loss)) {
                skipped = "non-finite loss";
                loss = result.loss;
                backend->discard_gradients();  // this batch's backward (and the earlier batches') added theirs
            } else {
                loss += result.loss;  // each is divided by A already: their sum is the step's loss, as TRL logs it
                metrics.has_kl = result.metrics.has_kl;
                metrics.kl += result.metrics.kl / A;  // TRL logs the mean of the accumulation steps' metrics
                metrics.clip_ratio_low_mean += result.metrics.clip_ratio_low_mean / A;
                metrics.clip_ratio_high_mean += result.metrics.clip_ratio_high_mean / A;
                metrics.clip_ratio_region_mean += result.metrics.clip_ratio_region_mean / A;
                // grpo_loss's metrics are means over this rank's tokens of the batch: back to sums, for the global mean
                float local_tokens = 0;
                for (float m : mask[a]) local_tokens += m;
                local_tokens = std::max(local_tokens, 1.0f);
                metric_sums[4 * a + 0] = result.metrics.kl * local_tokens;
                metric_sums[4 * a + 1] = result.metrics.clip_ratio_low_mean * local_tokens;
                metric_sums[4 * a + 2] = result.metrics.clip_ratio_high_mean * local_tokens;
                metric_sums[4 * a + 3] = result.metrics.clip_ratio_region_mean * local_tokens;
            }
            policy_s += secs(tr, now());
        }
        if (distributed) {
            // the step's loss is the sum of the ranks' (each normalized by the whole batch's counts) and is skipped
            // on every rank when it is not finite on one; the metrics become means over the whole batch's tokens;
            // and a Ctrl-C seen by any rank stops them all after this step
            const int W = dist.world_size, width = 3 + 4 * A;
            std::vector<double> values = {loss, skipped.empty() ? 0.0 : 1.0, g_stop_requested ? 1.0 : 0.0};
            values.insert(values.end(), metric_sums.begin(), metric_sums.end());
            std::vector<double> all = exchange->all_gather(values);
            loss = 0;
            bool any_skipped = false;
            GrpoLossMetrics global = metrics;
            global.kl = global.clip_ratio_low_mean = global.clip_ratio_high_mean = global.clip_ratio_region_mean = 0;
            for (int a = 0; a < A; a++) {
                double sums[4] = {0, 0, 0, 0};
                for (int r = 0; r < W; r++)
                    for (int k = 0; k < 4; k++) sums[k] += all[(size_t)r * width + 3 + 4 * a + k];
                const float tokens = std::max(batch_tokens[a], 1.0f);
                global.kl += (float)sums[0] / tokens / A;
                global.clip_ratio_low_mean += (float)sums[1] / tokens / A;
                global.clip_ratio_high_mean += (float)sums[2] / tokens / A;
                global.clip_ratio_region_mean += (float)sums[3] / tokens / A;
            }
            for (int r = 0; r < W; r++) {
                const double* v = all.data() + (size_t)r * width;
                loss += v[0];
                any_skipped = any_skipped || v[1] != 0;
                stop_agreed = stop_agreed || v[2] != 0;
            }
            metrics = global;
            if (any_skipped && skipped.empty()) {
                skipped = "non-finite loss";
                backend->discard_gradients();
            }
        }

        // 4d. one AdamW step on the summed gradients, unless the loss or the gradient norm is not finite: such a
        // step is skipped whole (the backend leaves the adapters and the optimizer state as they were). With several
        // ranks, each holds its share of the gradient of the whole batch's loss: they are summed over the ranks
        // first, so every rank clips and steps the same adapters with the same numbers.
        auto to = now();
        double lr = cosine_schedule_lr(opt.lr, state.step, warmup, opt.max_steps);
        float grad_norm = NAN;
        if (skipped.empty()) {
            if (distributed) {
                // Not overlapped with the backward: a 7B adapter's gradients (r 32, 80.7 M floats, 323 MB) take
                // about a millisecond over NVLink, once per optimizer step, against seconds of generation and
                // backward; overlapping per layer would need hooks in the backward for no visible gain.
                Backend::GradientBuffer grads = backend->gradient_buffer();
                if (grads.on_device) {
#ifndef GRPO_CPU_ONLY
                    nccl->all_reduce_sum(grads.data, grads.count, (cudaStream_t)grads.stream);
#endif
                } else {
                    exchange->all_reduce_sum(grads.data, grads.count);
                }
            }
            grad_norm = backend->optimizer_step(lr, opt.max_grad_norm, adamw);
            if (!std::isfinite(grad_norm)) skipped = "non-finite gradient norm";
        }
        state.step++;
        state.epoch = order.epoch();
        state.position = order.position();
        state.rng_state = rng.state;
        if (skipped.empty()) {
            good_state = state;
            skipped_in_a_row.clear();
        } else {
            skipped_in_a_row.push_back("step " + std::to_string(state.step) + ": " + skipped);
        }
        auto t_end = now();
        policy_s += secs(to, t_end);
        double seconds = secs(t0, t_end), rollout_s = secs(t0, t_rollout), score_s = secs(t_rollout, t_scored);
        total_seconds += seconds;
        steps_this_run++;

        // 4f. log what TRL logs, under TRL's names, so existing dashboards and habits carry over
        std::string line = "{\"step\": " + std::to_string(state.step);
        if (!skipped.empty()) line += ", \"skipped\": " + json_quote(skipped);
        line += ", \"loss\": " + json_number(loss) +
                ", \"reward\": " + json_number(reward_metrics.reward) +
                ", \"reward_std\": " + json_number(reward_metrics.reward_std);
        for (int f = 0; f < F; f++) {
            std::string key = "rewards/" + task.reward_names[f];
            line += ", " + json_quote(key + "/mean") + ": " + json_number(mean_of(all_per_function, f, F, N_all)) +
                    ", " + json_quote(key + "/std") + ": " + json_number(std_of(all_per_function, f, F, N_all));
        }
        line += ", \"completions/mean_length\": " + json_number(completion_stats.mean_length) +
                ", \"completions/clipped_ratio\": " + json_number(completion_stats.clipped_ratio);
        if (metrics.has_kl) line += ", \"kl\": " + json_number(metrics.kl);
        line += ", \"clip_ratio/low_mean\": " + json_number(metrics.clip_ratio_low_mean) +
                ", \"clip_ratio/high_mean\": " + json_number(metrics.clip_ratio_high_mean) +
                ", \"clip_ratio/region_mean\": " + json_number(metrics.clip_ratio_region_mean) +
                ", \"grad_norm\": " + json_number(grad_norm) + ", \"learning_rate\": " + json_number(lr) +
                ", \"frac_reward_zero_std\": " + json_number(reward_metrics.frac_reward_zero_std) +
                ", \"step_time\": " + json_number(seconds) + ", \"time/rollout\": " + json_number(rollout_s) +
                ", \"time/scoring\": " + json_number(score_s) + ", \"time/reference\": " + json_number(reference_s) +
                ", \"time/train\": " + json_number(policy_s) +
                ", \"tokens_per_s/rollout\": " + json_number(completion_tokens / rollout_s) +
                ", \"tokens_per_s/train\": " + json_number(train_tokens / policy_s) +
                ", \"tokens/completion\": " + json_number(completion_tokens) +
                ", \"tokens/train\": " + json_number(train_tokens);
        if (backend->device_memory_bytes() > 0)
            line += ", \"memory/device_gib\": " + json_number(backend->device_memory_bytes() / 1073741824.0);
        line += "}\n";
        if (log) {
            fputs(line.c_str(), log);
            fflush(log);
        }
        double eta = total_seconds / steps_this_run * (opt.max_steps - state.step);
        std::string loss_text = skipped.empty() ? "loss " + json_number_f32((float)loss) : "SKIPPED (" + skipped + ")";
        printf("%s step %d/%d | %s | reward %.4f +- %.4f | kl %.6f | grad_norm %.4f | lr %.3e | len %.1f | "
               "%.2f s (rollout %.0f tok/s, train %.0f tok/s) | ETA %s\n",
               progress_bar(state.step, opt.max_steps).c_str(), state.step, opt.max_steps, loss_text.c_str(),
               reward_metrics.reward, reward_metrics.reward_std, metrics.kl, grad_norm, lr,
               completion_stats.mean_length, seconds, completion_tokens / rollout_s, train_tokens / policy_s,
               format_duration(eta).c_str());
        if (opt.sample_every > 0 && state.step % opt.sample_every == 0) {
            // one completion with its rewards, so a person can see what the rewards are rewarding
            std::string text;
            if (tokenizer) text = json_quote(tokenizer->decode(std::vector<int>(rollouts[0].completion.begin(),
                                                                              rollouts[0].completion.end()), true));
            else for (int32_t id : rollouts[0].completion) text += std::to_string(id) + " ";
            printf("  sample (prompt %zu): %s\n  rewards:", prompt_of[0], text.c_str());
            for (int f = 0; f < F; f++) printf(" %s %.3f", task.reward_names[f].c_str(), per_function[f]);
            printf(" | total %.3f, advantage %.3f\n", rewards[0], advantages[0]);
        }
        fflush(stdout);

        if ((int)skipped_in_a_row.size() >= MAX_SKIPPED_IN_A_ROW) {
            // the adapters and optimizer state are still those of the last good step: save them with that
            // step's place in the data, so --resume (with a lower --lr, say) starts again from there. Every rank
            // skipped the same steps (the decision is made on numbers they share); rank 0 saves and explains.
            if (!rank0) return 3;
            fclose(log);
            last_checkpoint = save_checkpoint(opt, *backend, good_state);
            std::string which;
            for (const std::string& s : skipped_in_a_row) which += (which.empty() ? "" : "; ") + s;
            fprintf(stderr, "error: %d steps in a row were skipped because training produced non-finite numbers (%s). "
                    "The run stopped; the adapters and optimizer state of step %d, the last good one, are in %s. "
                    "Try a lower --lr (now %g) or --max-grad-norm (now %g), and check the rewards (a reward program "
                    "printing huge values overflows float32); then continue with --resume %s\n",
                    MAX_SKIPPED_IN_A_ROW, which.c_str(), good_state.step, last_checkpoint.c_str(), opt.lr,
                    opt.max_grad_norm, last_checkpoint.c_str());
            return 3;
        }
        if (rank0 && state.step % opt.save_every == 0 && state.step < opt.max_steps) {
            last_checkpoint = save_checkpoint(opt, *backend, state);
            printf("saved %s\n", last_checkpoint.c_str());
        }
    }
    if (!rank0) return 0;  // every rank holds the same adapters: rank 0 writes them
    fclose(log);

    // 5. the final adapter, loadable by HF PEFT as it is
    last_checkpoint = save_checkpoint(opt, *backend, state);
    printf("%s %s (step %d of %d); log: %s\n", stopping() ? "interrupted: saved" : "done: saved",
           last_checkpoint.c_str(), state.step, opt.max_steps, log_path.c_str());

    // 6. with --merge, the base with the adapter folded in, as merge_lora writes it: reloaded as it was trained
    // (an NF4 base dequantized), so the merged model is the one the adapter learned on
    if (!opt.merge_dir.empty()) {
        LoraWeights final_lora = backend->lora();
        backend.reset();  // the device memory and the host copy of the base go before the base is loaded again
        Qwen2Weights base = load_base_or_tiny(opt.model_path, opt.base_nf4, opt.seed);
        bool hf_dir = !opt.model_path.empty() && opt.model_path.compare(0, 7, "random:") != 0 &&
                      model_file_kind(opt.model_path) != ModelFileKind::BIN;
        export_merged_hf_dir(opt.merge_dir, base, &final_lora, hf_dir ? opt.model_path : "");
        printf("merged: wrote %s (the base merged with the adapter of step %d, bf16 HF directory)\n",
               opt.merge_dir.c_str(), state.step);
    }
    return 0;
}

int main(int argc, char** argv) {
    try {
        return train(parse_options(argc, argv));
    } catch (const GrpoError& e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
