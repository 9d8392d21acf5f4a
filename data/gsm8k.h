// gsm8k.h: GSM8K records as (prompt messages, reference answer), and the seeded, resumable order in which prompts are visited.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>
#include "tokenizer/chat_template.h"

#define GSM8K_TRAIN_PATH "data/gsm8k/train.jsonl"
#define GSM8K_TEST_PATH "data/gsm8k/test.jsonl"

// The system message of every GSM8K prompt; the format reward checks for exactly this layout.
extern const char* const GSM8K_SYSTEM_PROMPT;

struct Gsm8kExample {
    std::string question;
    std::string answer;               // the full worked solution, ending in "#### <number>"
    std::string reference;            // answer.split("####")[1].strip(), Python semantics
    std::vector<ChatMessage> prompt;  // [system: GSM8K_SYSTEM_PROMPT, user: question]
    std::string where;                // "path:line" of the record, for messages
};

// The chat the policy is asked: [system: GSM8K_SYSTEM_PROMPT, user: question].
std::vector<ChatMessage> gsm8k_prompt(const std::string& question);

// answer.split("####")[1].strip(): the text between the first and the second "####" (or the end),
// without Python-whitespace around it. Throws GrpoError starting with `where` when there is no "####".
std::string gsm8k_reference_answer(const std::string& answer, const std::string& where);

// Every record of a GSM8K JSONL file. Each line must be an object with string fields "question" and
// "answer" (other fields are ignored); anything else throws GrpoError naming path:line.
std::vector<Gsm8kExample> gsm8k_load(const std::string& path);

// The order in which a run visits N prompts: epoch after epoch, each epoch a fresh permutation of [0, N).
//
// Contract: the permutation of epoch e is a Fisher-Yates shuffle (i from N-1 down to 1, swap i with
// Rng::next_below(i + 1)) driven by an Rng whose seed depends on (seed, e) only. So the index at
// (epoch, position) is a pure function of (N, seed, epoch, position): a resumed run that checkpointed
// (epoch, position) rebuilds exactly the order it would have seen, with no RNG state to save, and
// changing how many prompts a step takes never changes which prompts come next.
class PromptOrder {
public:
    // n must be positive: an empty dataset has no order.
    PromptOrder(size_t n, uint64_t seed);

    // The permutation of [0, n) for one epoch.
    std::vector<size_t> epoch_order(uint64_t epoch) const;

    // The next prompt index; after the last position of an epoch the next epoch begins.
    size_t next();
    // Where next() will read: resume with seek(epoch(), position()) saved from an earlier run.
    uint64_t epoch() const { return epoch_; }
    size_t position() const { return position_; }
    void seek(uint64_t epoch, size_t position);

    size_t size() const { return n_; }
    uint64_t seed() const { return seed_; }

private:
    size_t n_;
    uint64_t seed_;
    uint64_t epoch_ = 0;
    size_t position_ = 0;
    std::vector<size_t> order_;  // epoch_order(epoch_), built once per epoch
};
