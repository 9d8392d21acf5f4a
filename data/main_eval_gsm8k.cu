// main_eval_gsm8k.cu: the `eval_gsm8k` program: greedy GSM8K accuracy (the correctness reward) and format compliance of a model, with or without a LoRA adapter.
//
// nvcc builds it into ./eval_gsm8k (both backends); g++ builds the same file with -DGRPO_CPU_ONLY into
// build/eval_gsm8k_cpu. Completions are decoded greedily (temperature 0), in batches, and scored by the same
// five reward functions as training: accuracy is the share of questions whose correctness reward is non-zero.
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "data/gsm8k.h"
#include "data/json.h"
#include "data/rewards.h"
#include "data/text.h"
#include "lora/peft.h"
#include "model/run_setup.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

struct EvalOptions {
    std::string model_path, adapter_dir, out_path;
    std::string tokenizer_path = DEFAULT_TOKENIZER_PATH;
    std::string data_path = GSM8K_TEST_PATH;
    std::string device = "cuda";
    bool base_nf4 = true;
    int limit = 0;  // 0: every question
    int batch = 64;
    int max_new_tokens = 512;
    size_t max_prompt_length = 256;
    GpuMemoryLimits gpu_memory;  // --gpu-memory-utilization, --max-gpu-memory, --bf16-base-copy
};

static void usage(FILE* out) {
    fprintf(out,
        "usage: eval_gsm8k [-m MODEL] [--adapter DIR] [options]\n"
        "  -m PATH                 model (.bin, HF or bitsandbytes directory); without it the embedded tiny model\n"
        "  --adapter DIR           a PEFT adapter, e.g. out/checkpoint-250 (default: the base model alone)\n"
        "  --device cuda|cpu       (default cuda)\n"
        "  -t PATH                 tokenizer.json (default %s)\n"
        "  -d PATH                 GSM8K JSONL (default %s)\n"
        "  --limit N               the first N questions only (default: all)\n"
        "  --batch N               questions decoded together (default 64)\n"
        "  --max-new-tokens N      (default 512)\n"
        "  --max-prompt-length N   left-truncate prompts, 0 = no limit (default 256, as in training)\n"
        "  --base nf4|bf16         how to hold a bf16 base (default nf4, as in training)\n"
        "  --gpu-memory-utilization X  --max-gpu-memory GIB   the GPU memory limit, as train_grpo's (default 0.9)\n"
        "  --bf16-base-copy auto|on|off  hold the NF4 base dequantized to bf16 too: batches of 32+ decode faster\n"
        "                          (default auto: when it fits; see train_grpo -h)\n"
        "  --out FILE              one JSON line per question: completion, extracted answer, rewards\n",
        DEFAULT_TOKENIZER_PATH, GSM8K_TEST_PATH);
}

static EvalOptions parse(int argc, char** argv) {
    EvalOptions o;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") { usage(stdout); exit(0); }
        if (i + 1 >= argc) throw GrpoError("option " + a + " needs a value (or is unknown); see eval_gsm8k --help");
        const char* v = argv[++i];
        if (a == "-m") o.model_path = v;
        else if (a == "--adapter") o.adapter_dir = v;
        else if (a == "--device") o.device = v;
        else if (a == "-t") o.tokenizer_path = v;
        else if (a == "-d") o.data_path = v;
        else if (a == "--out") o.out_path = v;
        else if (a == "--limit") o.limit = parse_int_option(a, v, 0, 1 << 30);
        else if (a == "--batch") o.batch = parse_int_option(a, v, 1, 1 << 30);
        else if (a == "--max-new-tokens") o.max_new_tokens = parse_int_option(a, v, 1, 1 << 30);
        else if (a == "--max-prompt-length") o.max_prompt_length = (size_t)parse_int_option(a, v, 0, 1 << 30);
        else if (a == "--gpu-memory-utilization") o.gpu_memory.utilization = parse_number_option(a, v, 0.01, 1);
        else if (a == "--max-gpu-memory") o.gpu_memory.max_gib = parse_number_option(a, v, 0.01, 1e6);
        else if (a == "--bf16-base-copy") o.gpu_memory.bf16_base_copy = parse_bf16_base_copy(v);
        else if (a == "--base") {
            if (strcmp(v, "nf4") && strcmp(v, "bf16")) throw GrpoError("--base: expected nf4 or bf16, got '" + std::string(v) + "'");
            o.base_nf4 = !strcmp(v, "nf4");
        }
        else throw GrpoError("unknown option " + a + "; see eval_gsm8k --help");
    }
    return o;
}

static int run(const EvalOptions& opt) {
    Qwen2Weights weights = load_base_or_tiny(opt.model_path, opt.base_nf4, 0);
    const Qwen2Config& cfg = weights.config;
    // without an adapter, a rank-1 LoRA with B = 0 leaves the base exactly as it is
    LoraWeights lora;
    if (!opt.adapter_dir.empty()) {
        lora = peft_load(opt.adapter_dir, cfg);
        printf("adapter: %s (r %d, alpha %g)\n", opt.adapter_dir.c_str(), lora.lora.R, lora.lora.alpha);
    } else {
        LoraConfig none;
        none.R = 1;
        none.alpha = 1.0f;
        lora = lora_create(cfg, none);
    }

    Tokenizer tokenizer = load_tokenizer_for(opt.tokenizer_path, cfg);
    std::vector<Gsm8kExample> examples = gsm8k_load(opt.data_path);
    if (opt.limit > 0 && (size_t)opt.limit < examples.size()) examples.resize(opt.limit);
    std::vector<std::vector<ChatMessage>> chats;
    for (const Gsm8kExample& ex : examples) chats.push_back(ex.prompt);
    EncodedPrompts encoded = encode_prompts(tokenizer, chats, opt.max_prompt_length);
    size_t longest_prompt = 0;
    for (const std::vector<int>& ids : encoded.ids) longest_prompt = std::max(longest_prompt, ids.size());
    printf("data: %zu questions from %s; %zu prompts truncated to %zu tokens\n", examples.size(), opt.data_path.c_str(),
           encoded.num_truncated, opt.max_prompt_length);

    const int batch = std::min<int>(opt.batch, (int)examples.size());
    std::unique_ptr<Backend> backend = make_backend(opt.device, std::move(weights), std::move(lora), batch,
                                                    (int)longest_prompt, opt.max_new_tokens, &opt.gpu_memory);
    SamplerConfig greedy;
    greedy.temperature = 0.0;  // argmax: the evaluation is deterministic
    greedy.vocab_limit = tokenizer.vocab_size();
    std::vector<int> stop_ids = chat_stop_token_ids(tokenizer);
    Rng rng(0);  // greedy draws nothing, but the interface takes a generator

    FILE* out = nullptr;
    if (!opt.out_path.empty() && !(out = fopen(opt.out_path.c_str(), "w")))
        throw GrpoError(opt.out_path + ": cannot open for writing: " + strerror(errno));
    const std::vector<RewardSpec>& registry = reward_registry();
    std::vector<double> nonzero(registry.size(), 0.0), sums(registry.size(), 0.0);
    size_t correctness_index = registry.size(), generated = 0;
    for (size_t f = 0; f < registry.size(); f++)
        if (!strcmp(registry[f].name, "correctness")) correctness_index = f;
    if (correctness_index == registry.size()) throw GrpoError("the reward registry has no \"correctness\" function");
    auto t0 = std::chrono::steady_clock::now();
    for (size_t begin = 0; begin < examples.size(); begin += batch) {
        size_t end = std::min(examples.size(), begin + batch);
        std::vector<std::vector<int32_t>> prompts;
        for (size_t i = begin; i < end; i++) prompts.emplace_back(encoded.ids[i].begin(), encoded.ids[i].end());
        std::vector<Rollout> rollouts = backend->generate(prompts, 1, opt.max_new_tokens, greedy, stop_ids, rng);
        for (size_t i = begin; i < end; i++) {
            const std::vector<int32_t>& ids = rollouts[i - begin].completion;
            generated += ids.size();
            std::string text = tokenizer.decode(std::vector<int>(ids.begin(), ids.end()), /*skip_special=*/true);
            RewardScores scores = compute_rewards(text, examples[i].reference);
            for (size_t f = 0; f < registry.size(); f++) {
                nonzero[f] += scores.values[f] != 0.0;
                sums[f] += scores.values[f];
            }
            if (out) {
                std::string line = "{\"index\": " + std::to_string(i) + ", \"where\": " + json_quote(examples[i].where) +
                                   ", \"reference\": " + json_quote(examples[i].reference) +
                                   ", \"extracted\": " + json_quote(extract_xml_answer(text)) +
                                   ", \"completion\": " + json_quote(text);
                for (size_t f = 0; f < registry.size(); f++)
                    line += ", " + json_quote(registry[f].name) + ": " + json_number(scores.values[f]);
                fputs((line + "}\n").c_str(), out);
            }
        }
        printf("  %zu / %zu questions, accuracy so far %.1f%%\n", end, examples.size(),
               100.0 * nonzero[correctness_index] / end);
        fflush(stdout);
    }
    if (out) fclose(out);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double n = (double)examples.size();
    printf("GSM8K %s: %zu questions, accuracy %.2f%% (%.0f correct)", opt.data_path.c_str(), examples.size(),
           100.0 * nonzero[correctness_index] / n, nonzero[correctness_index]);
    for (size_t f = 0; f < registry.size(); f++)
        if (f != correctness_index) printf("; %s non-zero %.1f%% (mean %.3f)", registry[f].name, 100.0 * nonzero[f] / n, sums[f] / n);
    printf("; %.1f s, %.0f generated tokens/s\n", seconds, generated / seconds);
    return 0;
}

int main(int argc, char** argv) {
    try {
        return run(parse(argc, argv));
    } catch (const GrpoError& e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
