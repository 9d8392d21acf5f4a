// gsm8k.cpp: reads GSM8K JSONL into prompts and reference answers, and shuffles prompt order per epoch.
#include "data/gsm8k.h"
#include "data/json.h"
#include "data/rng.h"
#include "data/text.h"
#include <utility>

const char* const GSM8K_SYSTEM_PROMPT =
    "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n";

std::vector<ChatMessage> gsm8k_prompt(const std::string& question) {
    return {{"system", GSM8K_SYSTEM_PROMPT}, {"user", question}};
}

std::string gsm8k_reference_answer(const std::string& answer, const std::string& where) {
    std::vector<std::string> pieces = py_split(answer, "####");
    if (pieces.size() < 2)
        throw GrpoError(where + ": the answer has no \"####\": expected it to end with \"#### <number>\" as GSM8K answers do");
    return py_strip(pieces[1]);
}

namespace {

const std::string& string_field(const JsonValue& record, const char* name, const std::string& where) {
    const JsonValue* field = record.get(name);
    if (!field) throw GrpoError(where + ": missing field \"" + name + "\": expected a GSM8K record {\"question\": ..., \"answer\": ...}");
    if (!field->is_string())
        throw GrpoError(where + ": field \"" + name + "\" is a " + field->type_name() + ": expected a string");
    return field->string;
}

}  // namespace

std::vector<Gsm8kExample> gsm8k_load(const std::string& path) {
    JsonlReader reader(path);
    std::vector<Gsm8kExample> examples;
    JsonValue record;
    while (reader.next(&record)) {
        std::string where = reader.where();
        if (!record.is_object())
            throw GrpoError(where + ": the line is a JSON " + record.type_name() + ": expected an object {\"question\": ..., \"answer\": ...}");
        Gsm8kExample ex;
        ex.question = string_field(record, "question", where);
        ex.answer = string_field(record, "answer", where);
        ex.reference = gsm8k_reference_answer(ex.answer, where);
        ex.prompt = gsm8k_prompt(ex.question);
        ex.where = where;
        examples.push_back(std::move(ex));
    }
    if (examples.empty()) throw GrpoError(path + ": no records: expected one GSM8K record per line; check the path");
    return examples;
}

PromptOrder::PromptOrder(size_t n, uint64_t seed) : n_(n), seed_(seed) {
    if (n == 0) throw GrpoError("PromptOrder: no prompts to order: expected a non-empty dataset");
    order_ = epoch_order(0);
}

std::vector<size_t> PromptOrder::epoch_order(uint64_t epoch) const {
    // Rng(x).next_u64() is a bijection of x, so chaining it keeps distinct (seed, epoch) pairs on
    // distinct streams; seeding with seed + epoch instead would make epoch e+1 the stream of epoch e
    // shifted by one draw, i.e. nearly the same shuffle.
    uint64_t mixed = Rng(Rng(seed_).next_u64() ^ epoch).next_u64();
    Rng rng(mixed);
    std::vector<size_t> order(n_);
    for (size_t i = 0; i < n_; i++) order[i] = i;
    for (size_t i = n_ - 1; i > 0; i--) std::swap(order[i], order[rng.next_below(i + 1)]);
    return order;
}

size_t PromptOrder::next() {
    if (position_ == n_) seek(epoch_ + 1, 0);
    return order_[position_++];
}

void PromptOrder::seek(uint64_t epoch, size_t position) {
    if (position > n_)
        throw GrpoError("PromptOrder::seek: position " + std::to_string(position) + " is past the end of an epoch of " +
                        std::to_string(n_) + " prompts; the checkpoint does not belong to this dataset");
    if (epoch != epoch_) order_ = epoch_order(epoch);
    epoch_ = epoch;
    position_ = position;
}
