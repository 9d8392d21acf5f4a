// rewards.h: the five GRPO rewards of Unsloth's Qwen2.5 GSM8K notebook with Python's exact semantics, and the reward registry.
#pragma once
#include <string>
#include <vector>
#include "text.h"

// Every function below takes the decoded completion (special tokens skipped) as valid UTF-8 and the
// reference answer; they throw GrpoError on invalid UTF-8 rather than guess what Python would have seen.

// Python: completion.split("<answer>")[-1].split("</answer>")[0].strip()
std::string extract_xml_answer(const std::string& completion);
// Python's str.isdigit(): non-empty and every code point a Unicode digit (², ①, ٣ count; ½ does not).
bool py_isdigit(const std::string& text);

// re.match(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", completion) is not None
bool strict_format_matches(const std::string& completion);
// re.match(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", completion) is not None
bool soft_format_matches(const std::string& completion);

double xmlcount_reward(const std::string& completion, const std::string& answer);       // up to 0.5
double soft_format_reward(const std::string& completion, const std::string& answer);    // 0.5 or 0
double strict_format_reward(const std::string& completion, const std::string& answer);  // 0.5 or 0
double int_reward(const std::string& completion, const std::string& answer);            // 0.5 or 0
double correctness_reward(const std::string& completion, const std::string& answer);    // 2.0 or 0

using RewardFunction = double (*)(const std::string& completion, const std::string& answer);
struct RewardSpec {
    const char* name;  // the key in logs and in the `rewards` program's output
    double weight;     // the total is the sum of weight * reward, in registry order
    RewardFunction fn;
};

// Every reward the trainer adds up, in order. To add a reward in C++, write a RewardFunction and add
// one line to the table in rewards.cpp; the trainer, the logs and the `rewards` program follow.
const std::vector<RewardSpec>& reward_registry();

struct RewardScores {
    std::vector<double> values;  // one per registry entry, same order
    double total = 0.0;          // sum of weight * value in registry order, as doubles
};
RewardScores compute_rewards(const std::string& completion, const std::string& answer);
