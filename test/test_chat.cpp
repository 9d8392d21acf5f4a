// test_chat.cpp: the Qwen2.5 chat template, prompt ids and left-truncation, against transformers.js running the official Jinja template.
#include <catch2/catch.hpp>
#include <algorithm>
#include <string>
#include <vector>
#include "data/gsm8k.h"
#include "data/json.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "test/test_util.h"

namespace {

std::vector<int> ids_of(const JsonValue& record) {
    const JsonValue* ids = record.get("ids");
    REQUIRE(ids != nullptr);
    REQUIRE(ids->is_array());
    std::vector<int> out;
    for (const JsonValue& id : ids->array) out.push_back((int)id.number);
    return out;
}

const std::string& text_of(const JsonValue& record) {
    const JsonValue* text = record.get("text");
    REQUIRE(text != nullptr);
    REQUIRE(text->is_string());
    return text->string;
}

// A hand-made conversation from chat_cases.jsonl, as the oracle rendered it.
struct OracleCase {
    std::string name;
    std::vector<ChatMessage> messages;
    bool add_generation_prompt;
    std::string text;
    std::vector<int> ids;
};

std::vector<OracleCase> oracle_cases() {
    std::vector<OracleCase> cases;
    for (const JsonValue& record : jsonl_read_all(oracle_file("chat_cases.jsonl"))) {
        OracleCase c;
        c.name = record.get("name")->string;
        for (const JsonValue& m : record.get("messages")->array) c.messages.push_back({m.get("role")->string, m.get("content")->string});
        c.add_generation_prompt = record.get("add_generation_prompt")->boolean;
        c.text = text_of(record);
        c.ids = ids_of(record);
        cases.push_back(std::move(c));
    }
    REQUIRE(cases.size() >= 20);
    return cases;
}

// The GSM8K train prompts (loaded by the C++ loader) next to the oracle's rendering of the same lines.
struct Gsm8kPrompt {
    std::string where;
    std::vector<ChatMessage> messages;
    std::string text;
    std::vector<int> ids;
};

std::vector<Gsm8kPrompt> gsm8k_train_prompts() {
    std::vector<Gsm8kExample> examples = gsm8k_load(GSM8K_TRAIN_PATH);
    std::vector<JsonValue> oracle = jsonl_read_all(oracle_file("chat_gsm8k_train.jsonl"));
    REQUIRE(oracle.size() == examples.size());
    std::vector<Gsm8kPrompt> prompts;
    for (size_t i = 0; i < examples.size(); i++) {
        std::string where = std::string(GSM8K_TRAIN_PATH) + ":" + std::to_string((long long)oracle[i].get("line")->number);
        REQUIRE(examples[i].where == where);
        prompts.push_back({where, examples[i].prompt, text_of(oracle[i]), ids_of(oracle[i])});
    }
    return prompts;
}

// ids[-limit:] in Python, the expectation for a left-truncated prompt; limit 0 means no limit.
std::vector<int> last_ids(const std::vector<int>& ids, size_t limit) {
    if (limit == 0 || ids.size() <= limit) return ids;
    return std::vector<int>(ids.end() - (std::ptrdiff_t)limit, ids.end());
}

}  // namespace

TEST_CASE("chat: hand-made conversations render like the official Jinja template", "[chat]") {
    for (const OracleCase& c : oracle_cases()) {
        INFO("case \"" << c.name << "\"\n  C++:    " << json_quote(chat_render(c.messages, c.add_generation_prompt))
                       << "\n  oracle: " << json_quote(c.text));
        CHECK(chat_render(c.messages, c.add_generation_prompt) == c.text);
    }
}

TEST_CASE("chat: every GSM8K train prompt renders like the official Jinja template", "[chat]") {
    std::vector<Gsm8kPrompt> prompts = gsm8k_train_prompts();
    REQUIRE(prompts.size() == 7473);
    size_t mismatches = 0;
    for (const Gsm8kPrompt& p : prompts) {
        std::string text = chat_render(p.messages);
        if (text != p.text && mismatches++ < 5) {
            INFO(p.where);
            CHECK(text == p.text);
        }
    }
    REQUIRE(mismatches == 0);
}

TEST_CASE("chat: conversations the template cannot mean are rejected", "[chat]") {
    CHECK_THROWS_AS(chat_render({}), GrpoError);
    CHECK_THROWS_WITH(chat_render({{"user", "hi"}, {"tool", "42"}}), Catch::Contains("role \"tool\""));
    CHECK_THROWS_WITH(chat_render({{"User", "hi"}}), Catch::Contains("expected \"system\", \"user\" or \"assistant\""));
}

TEST_CASE("chat: left-truncation keeps the last max_prompt_length ids", "[chat]") {
    for (const OracleCase& c : oracle_cases()) {
        INFO("case \"" << c.name << "\"");
        const size_t n = c.ids.size();
        for (size_t limit : {(size_t)0, (size_t)1, (size_t)2, n / 2, n - 1, n, n + 1}) {
            INFO("limit " << limit);
            std::vector<int> ids = c.ids;
            bool cut = truncate_prompt_left(&ids, limit);
            CHECK(cut == (limit != 0 && n > limit));
            CHECK(ids == last_ids(c.ids, limit));
            CHECK(ids.back() == c.ids.back());
        }
    }
}

TEST_CASE("chat: ids equal the oracle's for every hand-made conversation", "[chat]") {
    const Tokenizer& tokenizer = qwen_tokenizer();
    for (const OracleCase& c : oracle_cases()) {
        INFO("case \"" << c.name << "\"");
        CHECK(chat_encode(tokenizer, c.messages, c.add_generation_prompt) == c.ids);
    }
}

TEST_CASE("chat: ids equal the oracle's for every GSM8K train prompt", "[chat]") {
    const Tokenizer& tokenizer = qwen_tokenizer();
    size_t mismatches = 0;
    for (const Gsm8kPrompt& p : gsm8k_train_prompts()) {
        std::vector<int> ids = chat_encode(tokenizer, p.messages);
        if (ids != p.ids && mismatches++ < 5) {
            INFO(p.where << ": " << json_quote(p.text));
            CHECK(ids == p.ids);
        }
    }
    REQUIRE(mismatches == 0);
}

TEST_CASE("chat: the stop tokens are the config's eos and pad tokens", "[chat]") {
    JsonValue oracle = json_parse_file(oracle_file("chat_stop_tokens.json"));
    const Tokenizer& tokenizer = qwen_tokenizer();
    std::vector<int> expected = {(int)oracle.get("eos_token_id")->number, (int)oracle.get("pad_token_id")->number};
    CHECK(chat_stop_token_ids(tokenizer) == expected);
    CHECK(tokenizer.added_token_id(oracle.get("eos_token")->string) == expected[0]);
}

TEST_CASE("chat: encode_prompts left-truncates real prompts and counts the truncated ones", "[chat]") {
    const Tokenizer& tokenizer = qwen_tokenizer();
    // real GSM8K prompts plus the hand-made conversations that end in a generation prompt
    std::vector<std::vector<ChatMessage>> conversations;
    std::vector<std::vector<int>> oracle_ids;
    std::vector<Gsm8kPrompt> prompts = gsm8k_train_prompts();
    for (size_t i = 0; i < 300; i++) {
        conversations.push_back(prompts[i].messages);
        oracle_ids.push_back(prompts[i].ids);
    }
    for (const OracleCase& c : oracle_cases()) {
        if (!c.add_generation_prompt) continue;
        conversations.push_back(c.messages);
        oracle_ids.push_back(c.ids);
    }
    std::vector<size_t> lengths;
    for (const std::vector<int>& ids : oracle_ids) lengths.push_back(ids.size());
    std::vector<size_t> sorted = lengths;
    std::sort(sorted.begin(), sorted.end());
    const size_t shortest = sorted.front(), median = sorted[sorted.size() / 2], longest = sorted.back();

    for (size_t limit : {(size_t)0, (size_t)1, shortest - 1, shortest, median, longest - 1, longest}) {
        INFO("max_prompt_length " << limit);
        EncodedPrompts encoded = encode_prompts(tokenizer, conversations, limit);
        REQUIRE(encoded.ids.size() == conversations.size());
        CHECK(encoded.max_prompt_length == limit);
        size_t expected_truncated = 0;
        for (size_t i = 0; i < conversations.size(); i++) {
            bool cut = limit != 0 && lengths[i] > limit;
            expected_truncated += cut;
            REQUIRE(encoded.full_length[i] == lengths[i]);
            REQUIRE(encoded.truncated[i] == cut);
            REQUIRE(encoded.ids[i] == last_ids(oracle_ids[i], limit));
        }
        CHECK(encoded.num_truncated == expected_truncated);
        if (limit == median) {
            // the median limit must really split the batch, or this test proves nothing about counting
            CHECK(encoded.num_truncated > 0);
            CHECK(encoded.num_truncated < conversations.size());
        }
        if (limit == 0 || limit == longest) CHECK(encoded.num_truncated == 0);
        if (limit == 1 || limit == shortest - 1) CHECK(encoded.num_truncated == conversations.size());
    }
}
