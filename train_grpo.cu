// train_grpo.cu: GRPO on GSM8K for Qwen2.5 with a frozen NF4 base and LoRA adapters; reads top to bottom like the algorithm.
//
// Today it runs the text side of the algorithm for real (options, tokenizer, GSM8K, chat prompts,
// truncation, the reward functions) and stops, with a clear message, where the model would start:
// the model, rollouts and the update are not implemented yet.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "data/gsm8k.h"
#include "data/rewards.h"
#include "data/text.h"
#include "kernels/cuda_common.cuh"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

// ----------------------------------------------------------------------------
// options (defaults: TRL's GRPOConfig as Unsloth's Qwen2.5 GSM8K notebook sets it)

struct TrainOptions {
    std::string model_path;                          // -m: the model (.bin, HF directory or bitsandbytes directory)
    std::string tokenizer_path = DEFAULT_TOKENIZER_PATH;
    std::string train_path = GSM8K_TRAIN_PATH;
    std::string device = "cuda";                     // cuda | cpu
    std::string reward_command;                      // optional external reward program
    int G = 6;                                       // completions per prompt
    int prompts_per_step = 1;
    int max_steps = 250;
    size_t max_prompt_length = 256;                  // longer prompts lose their start (left-truncation)
    int max_completion_length = 200;
    uint64_t seed = 3407;
};

static void print_usage(FILE* out) {
    fprintf(out,
        "usage: train_grpo -m MODEL [options]\n"
        "  -m PATH                    model: a .bin written by dev/export_hf.py (required)\n"
        "  -t PATH                    tokenizer.json (default %s)\n"
        "  -d PATH                    training data, GSM8K JSONL (default %s)\n"
        "  --device cuda|cpu          backend (default cuda)\n"
        "  -g G                       completions per prompt (default 6)\n"
        "  --prompts-per-step N       prompts per step (default 1)\n"
        "  --max-steps N              (default 250)\n"
        "  --max-prompt-length N      left-truncate prompts to N tokens, 0 = no limit (default 256)\n"
        "  --max-completion-length N  (default 200)\n"
        "  --reward-cmd CMD           external reward program: JSON lines in, one number per line out\n"
        "  --seed N                   (default 3407)\n"
        "  -h, --help\n",
        DEFAULT_TOKENIZER_PATH, GSM8K_TRAIN_PATH);
}

static long parse_int_option(const char* name, const char* value, long min, long max) {
    char* end = nullptr;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end != '\0' || v < min || v > max)
        throw GrpoError(std::string("option ") + name + ": expected an integer in [" + std::to_string(min) + ", " +
                        std::to_string(max) + "], got '" + value + "'");
    return v;
}

static TrainOptions parse_options(int argc, char** argv) {
    TrainOptions opt;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") { print_usage(stdout); exit(0); }
        if (i + 1 >= argc) throw GrpoError("option " + arg + " needs a value (or is unknown); see train_grpo --help");
        const char* value = argv[++i];
        if (arg == "-m") opt.model_path = value;
        else if (arg == "-t") opt.tokenizer_path = value;
        else if (arg == "-d") opt.train_path = value;
        else if (arg == "--device") opt.device = value;
        else if (arg == "--reward-cmd") opt.reward_command = value;
        else if (arg == "-g") opt.G = (int)parse_int_option("-g", value, 2, 1024);  // a group of one has no advantage
        else if (arg == "--prompts-per-step") opt.prompts_per_step = (int)parse_int_option(arg.c_str(), value, 1, 1 << 20);
        else if (arg == "--max-steps") opt.max_steps = (int)parse_int_option(arg.c_str(), value, 1, 1L << 30);
        else if (arg == "--max-prompt-length") opt.max_prompt_length = (size_t)parse_int_option(arg.c_str(), value, 0, 1 << 20);
        else if (arg == "--max-completion-length") opt.max_completion_length = (int)parse_int_option(arg.c_str(), value, 1, 1 << 20);
        else if (arg == "--seed") opt.seed = (uint64_t)parse_int_option(arg.c_str(), value, 0, 1L << 62);
        else throw GrpoError("unknown option " + arg + "; see train_grpo --help");
    }
    if (opt.model_path.empty()) throw GrpoError("no model given: pass -m PATH (see README: Getting Qwen2.5 weights)");
    if (opt.device != "cuda" && opt.device != "cpu") throw GrpoError("--device: expected cuda or cpu, got '" + opt.device + "'");
    return opt;
}

// ----------------------------------------------------------------------------
// the run

static int train(const TrainOptions& opt) {
    // 1. tokenizer and data: every prompt is the chat [system: format instructions, user: question]
    Tokenizer tokenizer = Tokenizer::load(opt.tokenizer_path);
    std::vector<Gsm8kExample> examples = gsm8k_load(opt.train_path);
    std::vector<std::vector<ChatMessage>> conversations;
    conversations.reserve(examples.size());
    for (const Gsm8kExample& ex : examples) conversations.push_back(ex.prompt);
    EncodedPrompts prompts = encode_prompts(tokenizer, conversations, opt.max_prompt_length);
    size_t longest = 0, total_tokens = 0;
    for (size_t len : prompts.full_length) { longest = len > longest ? len : longest; total_tokens += len; }
    printf("data: %zu prompts from %s, mean %.1f tokens, longest %zu; %zu truncated to %zu tokens\n",
           examples.size(), opt.train_path.c_str(), (double)total_tokens / examples.size(), longest,
           prompts.num_truncated, prompts.max_prompt_length);
    printf("rewards:");
    for (const RewardSpec& spec : reward_registry()) printf(" %s(x%g)", spec.name, spec.weight);
    printf("%s%s\n", opt.reward_command.empty() ? "" : " + external: ", opt.reward_command.c_str());

    // 2. the device
    if (opt.device == "cuda") {
        int num_devices = 0;
        cudaError_t err = cudaGetDeviceCount(&num_devices);
        if (err != cudaSuccess || num_devices == 0)
            throw GrpoError(std::string("--device cuda: no usable CUDA device (") + cudaGetErrorString(err) +
                            "); run on a machine with an NVIDIA GPU");
        cudaDeviceProp prop;
        cudaCheck(cudaGetDeviceProperties(&prop, 0));
        printf("device: %s, %.1f GiB\n", prop.name, prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    }

    // 3. the model, rollouts, rewards, advantages and the LoRA update come next; say so plainly
    // rather than pretend to train.
    throw GrpoError("loading " + opt.model_path + ": the model (NF4 base + LoRA), rollouts and GRPO updates are not "
                    "implemented yet in this version of grpo.cu; only the data, tokenizer and reward stages run");
}

int main(int argc, char** argv) {
    try {
        return train(parse_options(argc, argv));
    } catch (const GrpoError& e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
