// test_train_policy.cpp: train_grpo's run-level policies on the CPU backend: non-finite steps are skipped and three in a row stop the run, --grad-accum equals one larger batch, --merge equals merge_lora, the GPU memory plan's sizing decision, random models and prompts for benchmarks, and -h.
#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "data/json.h"
#include "lora/adamw.h"
#include "lora/peft.h"
#include "model/bin_format.h"
#include "model/config.h"
#include "model/weights.h"
#include "test/test_util.h"
// the test binary is the g++ build: the sizing decision is pure host code
#define GRPO_CPU_ONLY
#include "model/run_setup.h"

namespace {

// The tiny model on the synthetic token-range task (as test_train.cpp), a few fast steps.
std::string tiny_args(const std::string& out, int max_steps) {
    return std::string(kTrainer) + " --device cpu -m " + kTinyModel +
           " --task token-range:0:64 -g 4 --max-completion-length 8 --lora-r 4 --lora-alpha 16 --lr 1e-2"
           " --warmup-ratio 0 --max-grad-norm 1.0 --beta 0.04 --save-every 100 --seed 5 --max-steps " +
           std::to_string(max_steps) + " --out " + out;
}

// A checkpoint's adapters and AdamW state, as a resumed run would read them.
LoraWeights load_checkpoint(const std::string& dir) {
    LoraWeights w = peft_load(dir, qwen2_config_load(kTinyModel));
    adamw_state_load(dir + "/optimizer.safetensors", &w);
    return w;
}

void check_same_state(const LoraWeights& a, const LoraWeights& b) {
    CHECK(a.adam_step == b.adam_step);
    REQUIRE(a.params.size() == b.params.size());
    size_t differ = 0;
    for (size_t i = 0; i < a.params.size(); i++)
        differ += a.params[i] != b.params[i] || a.adam_m[i] != b.adam_m[i] || a.adam_v[i] != b.adam_v[i];
    CHECK(differ == 0);
}

const JsonValue* field(const JsonValue& line, const char* key) { return line.get(key); }

}  // namespace

TEST_CASE("a step with a non-finite gradient norm is skipped, and three in a row stop the run", "[train]") {
    require_trainer();
    TempDir temp("grpo_nan");
    // --debug-nan-grad replaces the loss gradient of the listed steps by NaN: the backward then fills the LoRA
    // gradients with NaN and the gradient norm is NaN, as an overflow in the backward would make it
    CommandResult run = run_shell(tiny_args(temp / "a", 8) + " --debug-nan-grad 3,5,6,7 2>&1");
    INFO(run.output);
    CHECK(run.exit_code == 3);
    std::vector<JsonValue> log = read_log(temp / "a/log.jsonl");
    REQUIRE(log.size() == 7);  // steps 1..7: the third skip in a row (step 7) ends the run
    for (int i = 0; i < 7; i++) {
        INFO("step " << i + 1);
        bool injected = i + 1 == 3 || i + 1 >= 5;
        const JsonValue* skipped = field(log[i], "skipped");
        CHECK((skipped != nullptr) == injected);
        if (skipped) {
            CHECK(skipped->string == "non-finite gradient norm");
            CHECK(field(log[i], "grad_norm")->type == JsonValue::NUL);
        }
    }
    // one message: what happened, which steps, where the last good state is, and what to try
    CHECK_THAT(run.output, Catch::Contains("error: 3 steps in a row were skipped") &&
                               Catch::Contains("step 5: non-finite gradient norm; step 6") &&
                               Catch::Contains("step 7: non-finite gradient norm") &&
                               Catch::Contains("the last good one, are in " + (temp / "a/checkpoint-4")) &&
                               Catch::Contains("lower --lr") && Catch::Contains("check the rewards"));
    CHECK(run.output.find("SKIPPED (non-finite gradient norm)") != std::string::npos);
    REQUIRE(exists(temp / "a/checkpoint-4/adapter_model.safetensors"));
    JsonValue trainer_state = json_parse_file(temp / "a/checkpoint-4/trainer_state.json");
    CHECK(trainer_state.get("step")->number == 4);

    // The oracle for "no change": the same run with only step 3 poisoned, checkpointing every step (the learning
    // rate schedule depends on --max-steps, so it stays 8). The skipped step 3 must leave the adapters and the
    // AdamW state (moments and step count) bit for bit as step 2 left them.
    REQUIRE(run_shell(tiny_args(temp / "b", 8) + " --debug-nan-grad 3 --save-every 1 > /dev/null").exit_code == 0);
    LoraWeights after2 = load_checkpoint(temp / "b/checkpoint-2"), after3 = load_checkpoint(temp / "b/checkpoint-3");
    CHECK(after2.adam_step == 2);
    check_same_state(after2, after3);
    // and step 4 did change them, so the comparison can see a change
    CHECK(load_checkpoint(temp / "b/checkpoint-4").params != after3.params);
    // the stopped run's checkpoint is the state after its step 4 (steps 5..7 changed nothing)
    check_same_state(load_checkpoint(temp / "b/checkpoint-4"), load_checkpoint(temp / "a/checkpoint-4"));
}

TEST_CASE("a reward program printing a value beyond float32 makes the loss non-finite: skipped, then stopped",
          "[train]") {
    require_trainer();
    qwen_tokenizer();
    TempDir temp("grpo_nan");
    Qwen2Config cfg = qwen2_preset("tiny");
    cfg.V = 151936;  // Qwen2.5's vocabulary, so the GSM8K task and the external reward run
    bin_save(temp / "model.bin", weights_random(cfg, LinearFormat::BF16, 11));
    // a reward program that is fine on its first call and prints 1e300 from the second on: a finite double, so
    // the reward reader accepts it, but the rewards are float32 (as TRL's tensors), so they become inf and the
    // group's advantages NaN
    write_file(temp / "reward.py", "import os, sys\n"
                                   "f = sys.argv[1]\n"
                                   "n = int(open(f).read()) + 1 if os.path.exists(f) else 1\n"
                                   "open(f, 'w').write(str(n))\n"
                                   "for line in sys.stdin:\n"
                                   "    print('1e300' if n >= 2 else '0.5')\n");
    // four GSM8K questions, left-truncated to 16 tokens, and no reference pass keep the steps short (each row of
    // the 151936-wide lm_head costs)
    REQUIRE(run_shell("head -n 4 data/gsm8k/train.jsonl > " + (temp / "train.jsonl")).exit_code == 0);
    CommandResult run = run_shell(std::string(kTrainer) + " --device cpu -m " + (temp / "model.bin") +
                                  " -d " + (temp / "train.jsonl") + " -g 2 --max-steps 6 --max-prompt-length 16 --max-completion-length 4 --lora-r 4 --beta 0 --save-every 100"
                                  " --reward-cmd 'python3 " + (temp / "reward.py") + " " + (temp / "calls") +
                                  "' --out " + (temp / "out") + " 2>&1");
    INFO(run.output);
    CHECK(run.exit_code == 3);
    std::vector<JsonValue> log = read_log(temp / "out/log.jsonl");
    REQUIRE(log.size() == 4);
    CHECK(field(log[0], "skipped") == nullptr);
    for (int i = 1; i < 4; i++) {
        REQUIRE(field(log[i], "skipped") != nullptr);
        CHECK(field(log[i], "skipped")->string == "non-finite loss");
        CHECK(field(log[i], "loss")->type == JsonValue::NUL);
    }
    CHECK_THAT(run.output, Catch::Contains("step 2: non-finite loss; step 3: non-finite loss; step 4: non-finite loss") &&
                               Catch::Contains(temp / "out/checkpoint-1"));
    CHECK(exists(temp / "out/checkpoint-1/optimizer.safetensors"));
}

TEST_CASE("--grad-accum 2 with P prompts per step equals one step with 2P prompts (dapo)", "[train]") {
    require_trainer();
    TempDir temp("grpo_accum");
    // DAPO divides every batch's token sum by the token count of the whole accumulated batch and is not divided
    // by the accumulation steps again, so two batches of P prompts, their gradients summed, are exactly one
    // batch of 2P prompts: the same prompts and samples (the CPU backend draws prompt by prompt), the same
    // advantages (computed over the whole generation batch, also with --scale-rewards batch) and the same sum
    const std::string common = " --loss-type dapo --scale-rewards batch";
    REQUIRE(run_shell(tiny_args(temp / "accum", 3) + common + " --prompts-per-step 1 --grad-accum 2 > /dev/null")
                .exit_code == 0);
    REQUIRE(run_shell(tiny_args(temp / "big", 3) + common + " --prompts-per-step 2 > /dev/null").exit_code == 0);
    REQUIRE(run_shell(tiny_args(temp / "one", 3) + common + " --prompts-per-step 1 > /dev/null").exit_code == 0);
    std::vector<JsonValue> accum = read_log(temp / "accum/log.jsonl"), big = read_log(temp / "big/log.jsonl"),
                           one = read_log(temp / "one/log.jsonl");
    REQUIRE(accum.size() == 3);
    REQUIRE(big.size() == 3);
    for (int i = 0; i < 3; i++) {
        INFO("step " << i + 1);
        CHECK(field(accum[i], "reward")->number == field(big[i], "reward")->number);
        CHECK(field(accum[i], "completions/mean_length")->number == field(big[i], "completions/mean_length")->number);
        // the loss is a sum of two fp32 batch losses against one: equal to within fp32 rounding of their size
        double a = field(accum[i], "loss")->number, b = field(big[i], "loss")->number;
        CHECK(std::fabs(a - b) <= 1e-6 * (std::fabs(b) + 1e-3));
        // the gradients are accumulated in the same order (rollout by rollout) either way
        double ga = field(accum[i], "grad_norm")->number, gb = field(big[i], "grad_norm")->number;
        CHECK(std::fabs(ga - gb) <= 1e-5 * gb);
        CHECK(field(accum[i], "kl")->number == Approx(field(big[i], "kl")->number).epsilon(1e-6));
    }
    // the whole update path: the adapters after three steps. Both runs add the same per-rollout gradients in the
    // same order, so they agree exactly here (0 seen); 1e-9 leaves room for a compiler's reassociation only. AdamW
    // divides out the gradient's scale (m / sqrt(v)), so a wrong normalizer moves the adapters by just ~3e-8 after
    // three steps (seen with a deliberately wrong token count): the loss and grad_norm checks above are the
    // sensitive ones, this one catches a wrong gradient direction.
    LoraWeights wa = load_checkpoint(temp / "accum/checkpoint-3"), wb = load_checkpoint(temp / "big/checkpoint-3");
    REQUIRE(wa.params.size() == wb.params.size());
    double worst = 0;
    for (size_t i = 0; i < wa.params.size(); i++) worst = std::max(worst, (double)std::fabs(wa.params[i] - wb.params[i]));
    printf("[train] grad-accum 2 x 1 prompt vs 2 prompts: worst adapter difference after 3 steps %.3g\n", worst);
    CHECK(worst <= 1e-9);
    // and the accumulation is not a no-op: one prompt per step alone gives another gradient
    CHECK(field(one[0], "grad_norm")->number != field(accum[0], "grad_norm")->number);
}

TEST_CASE("--merge writes the merged HF model that merge_lora writes from the final checkpoint", "[train]") {
    require_trainer();
    require_program("./merge_lora", "merge_lora");
    TempDir temp("grpo_merge");
    // --base bf16: the base stays as stored, as merge_lora loads it
    CommandResult run = run_shell(tiny_args(temp / "out", 2) + " --base bf16 --merge " + (temp / "merged") + " 2>&1");
    INFO(run.output);
    REQUIRE(run.exit_code == 0);
    CHECK(run.output.find("merged: wrote " + (temp / "merged")) != std::string::npos);
    CommandResult tool = run_shell("./merge_lora " + kTinyModel + " " + (temp / "out/checkpoint-2") + " " +
                                   (temp / "tool") + " 2>&1");
    INFO(tool.output);
    REQUIRE(tool.exit_code == 0);
    for (const char* file : {"model.safetensors", "config.json"}) {
        INFO(file);
        std::string ours = read_file(temp / "merged/" + file), theirs = read_file(temp / "tool/" + file);
        CHECK(ours.size() > 0);
        CHECK(ours == theirs);
    }
}

TEST_CASE("the GPU memory plan: the largest micro-batch that fits, or one message naming need, limit and fix",
          "[train]") {
    // a made-up plan: 10 GiB fixed (weights, LoRA, KV cache) + 0.5 MiB per micro-batch token
    const size_t GiB = 1ull << 30, MiB = 1ull << 20;
    auto plan = [&](int tokens) { return 10 * GiB + (size_t)tokens * MiB / 2; };
    // 20 GiB: (20 - 10) GiB / 0.5 MiB = 20480 tokens exactly
    MicroBatchChoice choice = choose_micro_batch_tokens(plan, 20 * GiB, "test", 456, 1 << 20);
    CHECK(choice.max_tokens == 20480);
    CHECK(choice.plan_bytes == 20 * GiB);
    // one byte less: one token less
    CHECK(choose_micro_batch_tokens(plan, 20 * GiB - 1, "test", 456, 1 << 20).max_tokens == 20479);
    // plenty of memory: the whole step, no more
    CHECK(choose_micro_batch_tokens(plan, 100 * GiB, "test", 456, 48 * 456).max_tokens == 48 * 456);
    // just the smallest plan (one longest rollout)
    CHECK(choose_micro_batch_tokens(plan, plan(456), "test", 456, 1 << 20).max_tokens == 456);
    // a fixed micro-batch is checked, not chosen
    CHECK(choose_micro_batch_tokens(plan, 100 * GiB, "test", 456, 1 << 20, 2048).max_tokens == 2048);
    CHECK_THAT(error_of([&] { choose_micro_batch_tokens(plan, 100 * GiB, "test", 456, 1 << 20, 100); }),
               Catch::Contains("--micro-batch-tokens 100 is less than the longest possible rollout (456 tokens"));
    // out of memory at plan time: one message with the need, the limit and where it came from, what to lower
    std::string oom = error_of([&] { choose_micro_batch_tokens(plan, 10 * GiB, "9.00 GiB free x 0.9", 456, 1 << 20); });
    CHECK_THAT(oom, Catch::Contains("needs 10.22 GiB but the limit is 10.00 GiB (9.00 GiB free x 0.9)") &&
                        Catch::Contains("micro-batch of 456 tokens") && Catch::Contains("lower -g, --prompts-per-step") &&
                        Catch::Contains("--max-completion-length"));
}

TEST_CASE("the GPU memory plan: the bf16 base copy when it fits beside the micro-batch (auto), always (on), never "
          "(off)", "[train]") {
    // a made-up plan: 10 GiB fixed, 12 GiB more with the copy, 0.5 MiB per micro-batch token; a whole step is
    // 20480 tokens (10 GiB of them)
    const size_t GiB = 1ull << 30, MiB = 1ull << 20;
    auto plan = [&](int tokens, bool copy) { return 10 * GiB + (copy ? 12 * GiB : 0) + (size_t)tokens * MiB / 2; };
    const int whole = 20480;
    // room for both: auto takes the copy at the whole step's micro-batch
    MicroBatchChoice roomy = choose_gpu_plan(plan, 40 * GiB, "test", 456, whole, 0, -1);
    CHECK(roomy.base_copy);
    CHECK(roomy.max_tokens == whole);
    CHECK(roomy.plan_bytes == 32 * GiB);
    // 25 GiB: the copy would shrink the micro-batch, so auto leaves it out ...
    MicroBatchChoice tight = choose_gpu_plan(plan, 25 * GiB, "test", 456, whole, 0, -1);
    CHECK_FALSE(tight.base_copy);
    CHECK(tight.max_tokens == whole);
    CHECK(tight.plan_bytes == 20 * GiB);
    // ... and on takes it with the micro-batch that is left: (25 - 22) GiB / 0.5 MiB
    MicroBatchChoice forced = choose_gpu_plan(plan, 25 * GiB, "test", 456, whole, 0, 1);
    CHECK(forced.base_copy);
    CHECK(forced.max_tokens == 6144);
    // off never takes it
    CHECK_FALSE(choose_gpu_plan(plan, 40 * GiB, "test", 456, whole, 0, 0).base_copy);
    // on, where the copy leaves no room for one longest rollout: the out-of-memory message
    CHECK_THAT(error_of([&] { choose_gpu_plan(plan, 22 * GiB, "test", 456, whole, 0, 1); }),
               Catch::Contains("but the limit is 22.00 GiB"));
}

TEST_CASE("benchmark support: random:PRESET weights, random prompts of a fixed length, --ignore-stop", "[train]") {
    require_trainer();
    TempDir temp("grpo_bench");
    CommandResult run = run_shell(std::string(kTrainer) + " --device cpu -m random:tiny --task random-prompts:16"
                                  " --ignore-stop -g 2 --prompts-per-step 2 --max-steps 2 --max-completion-length 6"
                                  " --lora-r 4 --out " + temp.path + " 2>&1");
    INFO(run.output);
    REQUIRE(run.exit_code == 0);
    CHECK(run.output.find("RANDOM WEIGHTS of the tiny shape") != std::string::npos);
    CHECK(run.output.find("--ignore-stop: every completion runs to 6 tokens") != std::string::npos);
    std::vector<JsonValue> log = read_log(temp / "log.jsonl");
    REQUIRE(log.size() == 2);
    for (const JsonValue& line : log) {
        CHECK(field(line, "completions/mean_length")->number == 6);
        CHECK(field(line, "tokens/completion")->number == 4 * 6);
        CHECK(field(line, "tokens/train")->number == 4 * (16 + 6));  // every prompt exactly 16 tokens
        for (const char* key : {"time/rollout", "time/reference", "time/train", "step_time"})
            CHECK(field(line, key)->number > 0);
    }
}

TEST_CASE("train_grpo -h documents every option", "[train]") {
    require_trainer();
    CommandResult help = run_shell(std::string(kTrainer) + " -h");
    REQUIRE(help.exit_code == 0);
    // every option parse_options accepts (the list of issue 6 among them)
    for (const char* flag :
         {"-m ", "-t ", "-d ", "--device", "--out", "--resume", "--save-every", "--sample-every", "--max-steps", "-g ",
          "--prompts-per-step", "--grad-accum", "--max-prompt-length", "--max-completion-length", "--lr ",
          "--adam-beta1", "--adam-beta2", "--weight-decay", "--warmup-ratio", "cosine", "--max-grad-norm", "--beta ",
          "--epsilon ", "--epsilon-high", "--loss-type", "--scale-rewards", "--mask-truncated-completions",
          "--temperature", "--top-p", "--top-k", "--lora-r", "--lora-alpha", "--rslora", "--lora-targets", "--base",
          "--reward-cmd", "--task", "--seed", "--merge", "--gpu-memory-utilization", "--max-gpu-memory",
          "--micro-batch-tokens", "--bf16-base-copy", "--ignore-stop", "--debug-nan-grad", "random:PRESET", "random-prompts:LEN"}) {
        INFO(flag);
        CHECK(help.output.find(flag) != std::string::npos);
    }
}
