// test_eval.cpp: eval_gsm8k end to end on the CPU backend: deterministic greedy results whatever the batch, a summary that agrees with its per-question records, adapters in and bad ones out.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "data/json.h"
#include "test/test_util.h"

namespace {

const char* kEval = "./build/eval_gsm8k_cpu";

std::vector<JsonValue> read_records(const std::string& path) {
    std::vector<JsonValue> records;
    for (const std::string& line : py_split(read_file(path), "\n"))
        if (!line.empty()) records.push_back(json_parse(line, path));
    return records;
}

}  // namespace

TEST_CASE("eval_gsm8k scores greedy completions, the same whatever the batch", "[eval]") {
    require_program(kEval, "build/eval_gsm8k_cpu");
    require_trainer();
    TempDir temp("grpo_eval");
    const std::string common = std::string(kEval) + " --device cpu --limit 5 --max-new-tokens 6";
    CommandResult one = run_shell(common + " --batch 1 --out " + (temp / "one.jsonl") + " 2>&1");
    CommandResult all = run_shell(common + " --batch 5 --out " + (temp / "all.jsonl") + " 2>&1");
    INFO(one.output << all.output);
    REQUIRE(one.exit_code == 0);
    REQUIRE(all.exit_code == 0);
    std::vector<JsonValue> a = read_records(temp / "one.jsonl"), b = read_records(temp / "all.jsonl");
    REQUIRE(a.size() == 5);
    REQUIRE(b.size() == 5);
    int correct = 0;
    for (size_t i = 0; i < a.size(); i++) {
        CHECK(a[i].get("completion")->string == b[i].get("completion")->string);  // greedy: no randomness to differ
        CHECK(a[i].get("reference")->string != "");
        correct += a[i].get("correctness")->number != 0.0;
    }
    // the printed summary counts what the records hold
    CHECK(one.output.find("5 questions, accuracy " + std::string(correct ? "" : "0.00% (0 correct)")) != std::string::npos);

    SECTION("with an adapter trained by train_grpo") {
        REQUIRE(run_shell(std::string(kTrainer) + " --device cpu -g 2 --max-steps 1 --max-completion-length 4 --lora-r 4"
                          " --out " + temp.path + " > /dev/null 2>&1").exit_code == 0);
        CommandResult adapted = run_shell(common + " --adapter " + (temp / "checkpoint-1") + " 2>&1");
        INFO(adapted.output);
        CHECK(adapted.exit_code == 0);
        CHECK(adapted.output.find("adapter: " + (temp / "checkpoint-1") + " (r 4") != std::string::npos);
    }
    SECTION("the GPU memory options are checked even on the CPU") {
        for (const char* bad : {" --bf16-base-copy yes", " --max-gpu-memory 0", " --gpu-memory-utilization 1.5"}) {
            CommandResult refused = run_shell(common + bad + " 2>&1");
            INFO(bad << " -> " << refused.output);
            CHECK(refused.exit_code != 0);
            CHECK(refused.output.find(std::string(bad).substr(1, std::string(bad).find(' ', 1) - 1)) != std::string::npos);
        }
    }
    SECTION("integer options are checked as train_grpo checks them") {
        for (const char* bad : {" --batch 0", " --limit 2.5", " --max-new-tokens many"}) {
            CommandResult refused = run_shell(common + bad + " 2>&1");
            INFO(bad << " -> " << refused.output);
            CHECK(refused.exit_code != 0);
            const std::string option = std::string(bad).substr(1, std::string(bad).find(' ', 1) - 1);
            CHECK(refused.output.find("option " + option + ": expected a") != std::string::npos);
        }
    }
    SECTION("an adapter for another model is refused with the shapes") {
        CommandResult wrong = run_shell(common + " --adapter " + REF_DIR + "tiny_untied/adapter 2>&1");
        INFO(wrong.output);
        CHECK(wrong.exit_code == 1);
        CHECK(wrong.output.find("error:") != std::string::npos);
        CHECK(wrong.output.find("lora_A") != std::string::npos);
    }
}
