// test_data.cpp: the JSON/JSONL reader, GSM8K loading and the seeded prompt order, against Python's json and str semantics.
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>
#include "data/gsm8k.h"
#include "data/json.h"
#include "data/text.h"
#include "test/test_util.h"

namespace {

const std::string& string_of(const JsonValue& record, const char* name) {
    const JsonValue* field = record.get(name);
    REQUIRE(field != nullptr);
    REQUIRE(field->is_string());
    return field->string;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

std::string parse_string_literal(const std::string& json) {
    JsonValue v = json_parse(json, "test");
    REQUIRE(v.is_string());
    return v.string;
}

const std::string GOOD_LINE = R"({"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"})";

}  // namespace

TEST_CASE("GSM8K: every train and test record parses and matches Python's json and split/strip", "[data]") {
    JsonValue counts = json_parse_file(oracle_file("gsm8k_counts.json"));
    // the spec's sizes, and the oracle's, so a truncated download fails here and not mid-run
    struct Split { const char* name; const char* path; size_t expected; };
    for (const Split& split : {Split{"train", GSM8K_TRAIN_PATH, 7473}, Split{"test", GSM8K_TEST_PATH, 1319}}) {
        SECTION(split.name) {
            std::vector<Gsm8kExample> examples = gsm8k_load(split.path);
            std::vector<JsonValue> oracle = jsonl_read_all(oracle_file(std::string("gsm8k_") + split.name + ".jsonl"));
            REQUIRE(counts.get(split.name) != nullptr);
            REQUIRE(counts.get(split.name)->number == (double)split.expected);
            REQUIRE(oracle.size() == split.expected);
            REQUIRE(examples.size() == oracle.size());
            size_t mismatches = 0, non_ascii_questions = 0;
            for (size_t i = 0; i < examples.size(); i++) {
                const Gsm8kExample& ex = examples[i];
                const std::string& question = string_of(oracle[i], "question");
                const std::string& reference = string_of(oracle[i], "reference");
                std::string where = std::string(split.path) + ":" + std::to_string((long long)oracle[i].get("line")->number);
                bool same = ex.question == question && ex.reference == reference && ex.where == where &&
                            ex.prompt.size() == 2 && ex.prompt[0].role == "system" && ex.prompt[0].content == GSM8K_SYSTEM_PROMPT &&
                            ex.prompt[1].role == "user" && ex.prompt[1].content == question;
                if (!same && mismatches++ < 5) {
                    INFO("record " << i << " (" << where << ")");
                    CHECK(ex.question == question);
                    CHECK(ex.reference == reference);
                    CHECK(ex.where == where);
                }
                for (unsigned char c : question) if (c >= 0x80) { non_ascii_questions++; break; }
            }
            REQUIRE(mismatches == 0);
            // the file is ASCII with \uXXXX escapes and the oracle raw UTF-8: the comparison above really
            // exercised the escape decoder
            REQUIRE(non_ascii_questions > 0);
        }
    }
}

TEST_CASE("GSM8K: reference answers follow Python's split('####')[1].strip() on tricky answers", "[data]") {
    std::vector<JsonValue> cases = jsonl_read_all(oracle_file("gsm8k_reference_cases.jsonl"));
    REQUIRE(cases.size() > 60);  // every Python whitespace code point, twice
    for (const JsonValue& c : cases) {
        const std::string& answer = string_of(c, "answer");
        INFO("answer " << json_quote(answer));
        CHECK(gsm8k_reference_answer(answer, "case") == string_of(c, "reference"));
    }
    std::string message = error_of([] { gsm8k_reference_answer("no marker here", "f.jsonl:9"); });
    CHECK(starts_with(message, "f.jsonl:9: "));
}

TEST_CASE("GSM8K: the prompt is [system: the format prompt, user: question]", "[data]") {
    CHECK(std::string(GSM8K_SYSTEM_PROMPT) ==
          "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n");
    std::vector<ChatMessage> prompt = gsm8k_prompt("Q?");
    REQUIRE(prompt.size() == 2);
    CHECK(prompt[0].role == "system");
    CHECK(prompt[0].content == GSM8K_SYSTEM_PROMPT);
    CHECK(prompt[1].role == "user");
    CHECK(prompt[1].content == "Q?");
}

TEST_CASE("JSON: string escapes decode like Python's json", "[data]") {
    CHECK(parse_string_literal(R"("\ud83d\ude00")") == "\xF0\x9F\x98\x80");  // U+1F600 from a surrogate pair
    CHECK(parse_string_literal(R"("\uD83D\uDE00")") == "\xF0\x9F\x98\x80");  // hex digits in either case
    CHECK(parse_string_literal(R"("\udbff\udfff")") == "\xF4\x8F\xBF\xBF");  // U+10FFFF, the last code point
    CHECK(parse_string_literal(R"("\ud800\udc00")") == "\xF0\x90\x80\x80");  // U+10000, the first astral one
    CHECK(parse_string_literal(R"("\" \\ \/ \b \f \n \r \t")") == "\" \\ / \b \f \n \r \t");
    CHECK(parse_string_literal(R"("a\u0000b")") == std::string("a\0b", 3));
    CHECK(parse_string_literal(R"("\u00e9\u20AC\u2019\u007f")") == "\xC3\xA9\xE2\x82\xAC\xE2\x80\x99\x7F");
    CHECK(parse_string_literal("\"raw UTF-8 \xC3\xA9 \xF0\x9F\x98\x80\"") == "raw UTF-8 \xC3\xA9 \xF0\x9F\x98\x80");
    CHECK(parse_string_literal(R"("")") == "");
}

TEST_CASE("JSON: values, objects and arrays", "[data]") {
    JsonValue v = json_parse(R"( {"a": [1, -2.5e3, 0, true, false, null, {}], "b": {"c": "d"}, "a": "last"} )", "test");
    REQUIRE(v.is_object());
    REQUIRE(v.get("a")->is_string());  // a repeated key: the last one wins, as in Python
    CHECK(v.get("a")->string == "last");
    CHECK(v.get("b")->get("c")->string == "d");
    CHECK(v.get("missing") == nullptr);
    const JsonValue& array = v.object[0].second;
    REQUIRE(array.is_array());
    REQUIRE(array.array.size() == 7);
    CHECK(array.array[0].number == 1.0);
    CHECK(array.array[1].number == -2500.0);
    CHECK(array.array[3].boolean);
    CHECK(array.array[4].type == JsonValue::BOOL);
    CHECK(!array.array[4].boolean);
    CHECK(array.array[5].type == JsonValue::NUL);
    CHECK(array.array[6].is_object());
}

TEST_CASE("JSON: json_quote and json_number round-trip through the parser", "[data]") {
    std::string every_ascii;
    for (int c = 0; c < 0x80; c++) every_ascii.push_back((char)c);
    std::string text = every_ascii + "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";
    std::string quoted = json_quote(text);
    for (unsigned char c : quoted) CHECK(c >= 0x20);  // no raw control characters in the output
    CHECK(parse_string_literal(quoted) == text);
    for (double x : {0.0, -0.0, 1.0, 0.1, -2.5e-300, 1.7976931348623157e308, 123456789.123456789})
        CHECK(json_parse(json_number(x), "test").number == x);
    CHECK(json_number(1.0 / 0.0) == "null");
}

TEST_CASE("JSON: malformed text is rejected with its column and what was expected", "[data]") {
    struct Bad { const char* text; const char* says; };
    for (const Bad& bad : {
             Bad{R"("\ude00")", "unpaired low surrogate"},
             Bad{R"("\ud83d")", "unpaired high surrogate"},
             Bad{R"("\ud83dx")", "unpaired high surrogate"},
             Bad{R"("\ud83d\u0041")", "unpaired high surrogate"},
             Bad{R"("\ud83d\ud83d")", "unpaired high surrogate"},
             Bad{R"("\x41")", "bad escape"},
             Bad{R"("\u12G4")", "bad \\u escape"},
             Bad{R"("\u12")", "\\u escape"},
             Bad{"\"tab\there\"", "raw control character"},
             Bad{"\"a\xFF\"", "invalid UTF-8"},
             Bad{"\"\xC0\xAF\"", "invalid UTF-8"},        // overlong '/'
             Bad{"\"\xED\xA0\x80\"", "invalid UTF-8"},    // a surrogate encoded in UTF-8
             Bad{"\"\xF4\x90\x80\x80\"", "invalid UTF-8"},  // above U+10FFFF
             Bad{R"("unterminated)", "unterminated string"},
             Bad{R"({"a": 1,})", "expected a '\"' to start an object key"},
             Bad{R"([1, 2,])", "expected a JSON value"},
             Bad{R"({"a" 1})", "expected ':'"},
             Bad{R"({'a': 1})", "object key"},
             Bad{R"([1 2])", "expected ',' or ']'"},
             Bad{R"({"a": 1)", "expected ',' or '}'"},
             Bad{"01", "unexpected text after the JSON value"},
             Bad{"1.", "expected a digit after '.'"},
             Bad{"-", "expected a digit"},
             Bad{"1e", "exponent"},
             Bad{"NaN", "expected a JSON value"},
             Bad{"tru", "expected 'true'"},
             Bad{"{} {}", "unexpected text after the JSON value"},
             Bad{"", "unexpected end of input"},
             Bad{"\xEF\xBB\xBF{}", "unexpected byte 0xEF"},  // a UTF-8 byte order mark, which Python rejects too
         }) {
        INFO("input " << bad.text);
        std::string message = error_of([&] { json_parse(bad.text, "where.json"); });
        CHECK(starts_with(message, "where.json: column "));
        CHECK(message.find(bad.says) != std::string::npos);
    }
    // the column points at the offending byte (1-based)
    CHECK(starts_with(error_of([] { json_parse(R"({"a": [1, 2,]})", "w"); }), "w: column 13: "));
}

TEST_CASE("JSONL: blank lines are skipped but counted, CRLF and a missing final newline are fine", "[data]") {
    TempFile file("{\"n\": 1}\n\n   \t\r\n{\"n\": 2}\r\n{\"n\": 3}");
    JsonlReader reader(file.path);
    std::vector<size_t> lines;
    JsonValue v;
    double expected = 1;
    while (reader.next(&v)) {
        CHECK(v.get("n")->number == expected++);
        lines.push_back(reader.line_number());
    }
    CHECK(lines == std::vector<size_t>{1, 4, 5});
    CHECK(starts_with(error_of([] { JsonlReader missing("/nonexistent/dir/x.jsonl"); }), "/nonexistent/dir/x.jsonl: cannot open"));
}

TEST_CASE("GSM8K: a malformed file is reported with file:line and what was expected", "[data]") {
    struct Bad { const char* name; std::string line; const char* says; };
    for (const Bad& bad : {
             Bad{"a truncated line", R"({"question": "Q", "answer": "A #### 1)", "unterminated string"},
             Bad{"a bad escape", R"({"question": "Q\q", "answer": "#### 1"})", "bad escape"},
             Bad{"a lone surrogate", R"({"question": "Q\ud83d", "answer": "#### 1"})", "unpaired high surrogate"},
             Bad{"a lone low surrogate", R"({"question": "Q\ude00", "answer": "#### 1"})", "unpaired low surrogate"},
             Bad{"a trailing comma", R"({"question": "Q", "answer": "#### 1",})", "object key"},
             Bad{"a non-object line", R"(["Q", "#### 1"])", "expected an object"},
             Bad{"a string line", R"("Q #### 1")", "expected an object"},
             Bad{"a missing answer", R"({"question": "Q"})", "missing field \"answer\""},
             Bad{"a missing question", R"({"answer": "#### 1"})", "missing field \"question\""},
             Bad{"an answer that is a number", R"({"question": "Q", "answer": 1})", "field \"answer\" is a number: expected a string"},
             Bad{"an answer without ####", R"({"question": "Q", "answer": "it is 1"})", "no \"####\""},
             Bad{"invalid UTF-8", "{\"question\": \"Q\xE2\x82\", \"answer\": \"#### 1\"}", "invalid UTF-8"},
             Bad{"two values on a line", GOOD_LINE + " " + GOOD_LINE, "unexpected text after the JSON value"},
         }) {
        SECTION(bad.name) {
            // two good records and a blank line first, so the line number must count them all
            TempFile file(GOOD_LINE + "\n\n" + GOOD_LINE + "\n" + bad.line + "\n" + GOOD_LINE + "\n");
            std::string message = error_of([&] { gsm8k_load(file.path); });
            INFO("message: " << message);
            CHECK(starts_with(message, file.path + ":4: "));
            CHECK(message.find(bad.says) != std::string::npos);
        }
    }
    SECTION("an empty file") {
        TempFile file("\n  \n");
        CHECK(error_of([&] { gsm8k_load(file.path); }).find("no records") != std::string::npos);
    }
    SECTION("the good records themselves load") {
        TempFile file(GOOD_LINE + "\n" + GOOD_LINE);
        std::vector<Gsm8kExample> examples = gsm8k_load(file.path);
        REQUIRE(examples.size() == 2);
        CHECK(examples[1].reference == "2");
        CHECK(examples[1].where == file.path + ":2");
    }
}

TEST_CASE("PromptOrder: each epoch is a seeded permutation, rebuilt from (epoch, position) alone", "[data]") {
    const size_t n = 7473;
    PromptOrder order(n, 1234);
    std::vector<size_t> epoch0 = order.epoch_order(0), epoch1 = order.epoch_order(1);
    for (const std::vector<size_t>* perm : {&epoch0, &epoch1}) {
        std::vector<size_t> sorted = *perm;
        std::sort(sorted.begin(), sorted.end());
        for (size_t i = 0; i < n; i++) REQUIRE(sorted[i] == i);
    }
    CHECK(epoch0 != epoch1);
    CHECK(PromptOrder(n, 1234).epoch_order(0) == epoch0);  // deterministic
    CHECK(PromptOrder(n, 1235).epoch_order(0) != epoch0);  // seeded
    CHECK(PromptOrder(n, 1235).epoch_order(1) != epoch1);
    // a shuffle, not a rotation of the identity or of the previous epoch
    size_t fixed_points = 0, same_as_previous = 0;
    for (size_t i = 0; i < n; i++) { fixed_points += epoch0[i] == i; same_as_previous += epoch0[i] == epoch1[i]; }
    CHECK(fixed_points < 20);
    CHECK(same_as_previous < 20);

    // the stream is the epochs back to back
    std::vector<size_t> streamed;
    for (size_t k = 0; k < 2 * n + 5; k++) streamed.push_back(order.next());
    CHECK(std::equal(epoch0.begin(), epoch0.end(), streamed.begin()));
    CHECK(std::equal(epoch1.begin(), epoch1.end(), streamed.begin() + n));
    CHECK(order.epoch() == 2);
    CHECK(order.position() == 5);
    std::vector<size_t> epoch2 = order.epoch_order(2);
    CHECK(std::equal(epoch2.begin(), epoch2.begin() + 5, streamed.begin() + 2 * n));

    // resuming a fresh run at a saved (epoch, position) continues exactly where the first one was
    PromptOrder resumed(n, 1234);
    resumed.seek(1, n - 3);
    for (size_t k = 2 * n - 3; k < streamed.size(); k++) CHECK(resumed.next() == streamed[k]);
    resumed.seek(0, n);  // the end of an epoch: the next epoch follows
    CHECK(resumed.next() == epoch1[0]);
    CHECK_THROWS_AS(resumed.seek(0, n + 1), GrpoError);
    CHECK_THROWS_AS(PromptOrder(0, 1), GrpoError);
    PromptOrder single(1, 7);
    CHECK(single.next() == 0);
    CHECK(single.next() == 0);
}

TEST_CASE("PromptOrder: every permutation is equally likely (Fisher-Yates, not an off-by-one variant)", "[data]") {
    // Sattolo's algorithm (j < i) never yields the identity and naive swapping (j < n) is biased; with 3
    // items both show up as some permutation far from 1/6.
    const int trials = 60000;
    std::map<std::vector<size_t>, int> seen;
    for (int seed = 0; seed < trials / 2; seed++)
        for (uint64_t epoch = 0; epoch < 2; epoch++) seen[PromptOrder(3, (uint64_t)seed).epoch_order(epoch)]++;
    REQUIRE(seen.size() == 6);
    for (const auto& kv : seen) {
        INFO("count " << kv.second);
        CHECK(std::abs(kv.second - trials / 6) < 600);  // about 6 standard deviations
    }
}
