// test_tokenizer.cpp: the tokenizer against the npm oracle's files (build/oracle/tokenizer_*), plus load and decode errors.
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>
#include "data/json.h"
#include "data/text.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer/unicode_tables.h"
#include "test/test_util.h"

namespace {

struct OracleText {
    std::string where, text, nfc;
    std::vector<int> ids;
};

std::vector<int> ids_of(const JsonValue& array) {
    std::vector<int> ids;
    for (const JsonValue& v : array.array) ids.push_back((int)v.number);
    return ids;
}

std::vector<OracleText> read_oracle_texts(const std::string& name) {
    std::string path = oracle_file(name);
    std::vector<OracleText> texts;
    for (const JsonValue& r : jsonl_read_all(path)) {
        const JsonValue *where = r.get("where"), *text = r.get("text"), *nfc = r.get("nfc"), *ids = r.get("ids");
        if (!where || !text || !nfc || !ids || !ids->is_array()) FAIL(path << ": a record lacks where/text/nfc/ids; run `make -B build/oracle/tokenizer.stamp`");
        texts.push_back({where->string, text->string, nfc->string, ids_of(*ids)});
    }
    return texts;
}

std::string ids_json(const std::vector<int>& ids) {
    std::string out = "[";
    for (size_t i = 0; i < ids.size(); i++) out += (i ? "," : "") + std::to_string(ids[i]);
    return out + "]";
}

// Encodes every text and compares with the oracle; on failure reports the first mismatch in full.
void require_same_ids(const Tokenizer& tokenizer, const std::vector<OracleText>& texts, const std::string& corpus) {
    size_t mismatches = 0;
    std::string first;
    for (const OracleText& t : texts) {
        std::vector<int> ours = tokenizer.encode(t.text);
        if (ours == t.ids) continue;
        if (mismatches++ == 0)
            first = t.where + "\n  text:   " + json_quote(t.text) + "\n  ours:   " + ids_json(ours) + "\n  oracle: " + ids_json(t.ids);
    }
    std::printf("[tokenizer] %s: %zu texts compared with the oracle, %zu differ\n", corpus.c_str(), texts.size(), mismatches);
    INFO("first of " << mismatches << " mismatching texts in " << corpus << ": " << first);
    REQUIRE(mismatches == 0);
}

// Round trip and our NFC against the oracle's.
void require_round_trip(const std::vector<OracleText>& texts, const std::string& corpus) {
    size_t nfc_mismatches = 0, decode_mismatches = 0;
    std::string first_nfc, first_decode;
    for (const OracleText& t : texts) {
        std::string ours = nfc_normalize_utf8(t.text);
        if (ours != t.nfc && nfc_mismatches++ == 0)
            first_nfc = t.where + "\n  text:   " + json_quote(t.text) + "\n  ours:   " + json_quote(ours) + "\n  oracle: " + json_quote(t.nfc);
        std::string decoded = qwen_tokenizer().decode(qwen_tokenizer().encode(t.text), false);
        if (decoded != t.nfc && decode_mismatches++ == 0)
            first_decode = t.where + "\n  text:    " + json_quote(t.text) + "\n  decoded: " + json_quote(decoded) + "\n  NFC:     " + json_quote(t.nfc);
    }
    std::printf("[tokenizer] %s: %zu texts NFC-normalised and round-tripped, %zu NFC and %zu round-trip differences\n",
                corpus.c_str(), texts.size(), nfc_mismatches, decode_mismatches);
    INFO("first NFC mismatch: " << first_nfc);
    CHECK(nfc_mismatches == 0);
    INFO("first round-trip mismatch: " << first_decode);
    CHECK(decode_mismatches == 0);
}

// JSON text of a value, for writing modified copies of tokenizer.json.
std::string to_json(const JsonValue& v) {
    switch (v.type) {
        case JsonValue::NUL: return "null";
        case JsonValue::BOOL: return v.boolean ? "true" : "false";
        case JsonValue::NUMBER: return json_number(v.number);
        case JsonValue::STRING: return json_quote(v.string);
        case JsonValue::ARRAY: {
            std::string out = "[";
            for (size_t i = 0; i < v.array.size(); i++) out += (i ? "," : "") + to_json(v.array[i]);
            return out + "]";
        }
        case JsonValue::OBJECT: {
            std::string out = "{";
            for (size_t i = 0; i < v.object.size(); i++) out += (i ? "," : "") + json_quote(v.object[i].first) + ":" + to_json(v.object[i].second);
            return out + "}";
        }
    }
    return "null";
}

// The smallest tokenizer.json this loader accepts: the 256 byte symbols, "a"+"b" -> "ab", and one added token.
std::string tiny_tokenizer_json(const std::string& merges = R"(["a b"])",
                                const std::string& added = R"([{"id":257,"content":"<|x|>","special":true}])",
                                const std::string& regex = "") {
    std::string vocab;
    int printable_shift = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        std::string symbol;
        utf8_append(&symbol, printable ? b : printable_shift++);
        vocab += json_quote(symbol) + ":" + std::to_string(b) + ",";
    }
    vocab += "\"ab\":256";
    std::string split_regex = regex.empty() ? json_quote(
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)") : regex;
    return std::string(R"({"added_tokens":)") + added + R"(,"normalizer":{"type":"NFC"},)" +
           R"("pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":)" + split_regex +
           R"(},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false}]},)" +
           R"("decoder":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":{)" + vocab + R"(},"merges":)" + merges + "}}";
}

}  // namespace

TEST_CASE("tokenizer: every GSM8K question and answer encodes like the oracle", "[tokenizer]") {
    std::vector<OracleText> texts = read_oracle_texts("tokenizer_gsm8k.jsonl");
    size_t records = jsonl_read_all("data/gsm8k/train.jsonl").size() + jsonl_read_all("data/gsm8k/test.jsonl").size();
    {
        INFO("the oracle file should hold a question and an answer per GSM8K record; run `make -B build/oracle/tokenizer.stamp`");
        REQUIRE(texts.size() == 2 * records);
    }
    require_same_ids(qwen_tokenizer(), texts, "GSM8K");
}

TEST_CASE("tokenizer: every adversarial text encodes like the oracle", "[tokenizer]") {
    std::vector<OracleText> texts = read_oracle_texts("tokenizer_adversarial.jsonl");
    {
        INFO("the oracle file should hold every line of test/corpus/tokenizer_adversarial.jsonl; run `make -B build/oracle/tokenizer.stamp`");
        REQUIRE(texts.size() == jsonl_read_all("test/corpus/tokenizer_adversarial.jsonl").size());
    }
    require_same_ids(qwen_tokenizer(), texts, "adversarial");
}

TEST_CASE("tokenizer: NFC equals the oracle's and decode(encode(x)) == NFC(x)", "[tokenizer]") {
    require_round_trip(read_oracle_texts("tokenizer_gsm8k.jsonl"), "GSM8K");
    require_round_trip(read_oracle_texts("tokenizer_adversarial.jsonl"), "adversarial");
}

TEST_CASE("tokenizer: the README example matches the oracle", "[tokenizer]") {
    const std::string example = "Hello, world! 123 \xE4\xBD\xA0\xE5\xA5\xBD";  // "Hello, world! 123 你好"
    const OracleText* found = nullptr;
    std::vector<OracleText> texts = read_oracle_texts("tokenizer_adversarial.jsonl");
    for (const OracleText& t : texts)
        if (t.text == example) found = &t;
    INFO("the adversarial corpus should contain the README example; run `python3 dev/oracle/gen_tokenizer_corpus.py`");
    REQUIRE(found != nullptr);
    INFO("oracle: " << ids_json(found->ids));
    REQUIRE(qwen_tokenizer().encode(example) == found->ids);
}

TEST_CASE("tokenizer: decode matches the oracle, U+FFFD and skipped special tokens included", "[tokenizer]") {
    std::string path = oracle_file("tokenizer_decode.jsonl");
    size_t compared = 0, mismatches = 0;
    std::string first;
    for (const JsonValue& r : jsonl_read_all(path)) {
        std::vector<int> ids = ids_of(*r.get("ids"));
        std::string plain = qwen_tokenizer().decode(ids, false), skipped = qwen_tokenizer().decode(ids, true);
        compared++;
        if ((plain != r.get("text")->string || skipped != r.get("text_skip_special")->string) && mismatches++ == 0)
            first = ids_json(ids) + "\n  ours:   " + json_quote(plain) + " / skip " + json_quote(skipped) + "\n  oracle: " +
                    json_quote(r.get("text")->string) + " / skip " + json_quote(r.get("text_skip_special")->string);
    }
    std::printf("[tokenizer] decode: %zu id sequences compared with the oracle, %zu differ\n", compared, mismatches);
    INFO("first mismatch: " << first);
    REQUIRE(mismatches == 0);
}

TEST_CASE("tokenizer: skip_special drops exactly the special added tokens 151643..151656", "[tokenizer]") {
    // REFERENCE.md §2: only <|endoftext|> .. <|video_pad|> are special; <tool_call> and the fim tokens are not.
    const Tokenizer& t = qwen_tokenizer();
    std::vector<int> dropped;
    for (int id = 0; id < t.vocab_size(); id++)
        if (t.decode({id}, true).empty()) dropped.push_back(id);
    std::vector<int> spec;
    for (int id = 151643; id <= 151656; id++) spec.push_back(id);
    REQUIRE(dropped == spec);
    for (int id = 0; id < t.vocab_size(); id++) REQUIRE(t.is_special(id) == (id >= 151643 && id <= 151656));
    REQUIRE(t.added_token_id("<|im_end|>") == t.encode("<|im_end|>").at(0));
    REQUIRE(t.decode({t.added_token_id("<tool_call>")}, true) == "<tool_call>");
    REQUIRE(t.added_token_id("<|not_a_token|>") == -1);
}

TEST_CASE("tokenizer: the Unicode tables come from the oracle's Unicode version", "[tokenizer]") {
    std::string path = oracle_file("tokenizer_meta.json");
    std::string oracle_unicode = json_parse_file(path).get("unicode")->string;
    INFO("tokenizer/unicode_tables.cpp is Unicode " << kUnicodeTablesVersion << ", the oracle's node is Unicode " << oracle_unicode
         << "; regenerate with `node dev/unicode/gen_tokenizer_tables.js`");
    REQUIRE(oracle_unicode == kUnicodeTablesVersion);
}

TEST_CASE("tokenizer: merges as [a, b] pairs load like \"a b\" strings", "[tokenizer]") {
    JsonValue root = json_parse_file(DEFAULT_TOKENIZER_PATH);
    JsonValue* merges = nullptr;
    for (auto& [key, value] : root.object)
        if (key == "model")
            for (auto& [k, v] : value.object)
                if (k == "merges") merges = &v;
    REQUIRE(merges != nullptr);
    REQUIRE(merges->array.at(0).is_string());
    for (JsonValue& m : merges->array) {
        size_t space = m.string.find(' ');
        JsonValue pair;
        pair.type = JsonValue::ARRAY;
        pair.array.resize(2);
        pair.array[0].type = pair.array[1].type = JsonValue::STRING;
        pair.array[0].string = m.string.substr(0, space);
        pair.array[1].string = m.string.substr(space + 1);
        m = pair;
    }
    TempFile pairs(to_json(root), "_tokenizer_pairs.json");
    Tokenizer from_pairs = Tokenizer::load(pairs.path);
    REQUIRE(from_pairs.vocab_size() == qwen_tokenizer().vocab_size());
    std::vector<OracleText> texts = read_oracle_texts("tokenizer_adversarial.jsonl");
    for (const OracleText& t : texts) {
        INFO(t.where);
        REQUIRE(from_pairs.encode(t.text) == qwen_tokenizer().encode(t.text));
    }
}

TEST_CASE("tokenizer: a malformed tokenizer.json is a GrpoError naming the problem", "[tokenizer]") {
    {
        TempFile ok(tiny_tokenizer_json(), "_tiny.json");
        Tokenizer tiny = Tokenizer::load(ok.path);
        REQUIRE(tiny.encode("ab<|x|>a") == std::vector<int>{256, 257, 'a'});
        REQUIRE(tiny.vocab_size() == 258);
    }
    struct Case { const char* name; std::string json; const char* mentions; };
    std::vector<Case> cases = {
        {"not_json", "{\"model\": ", "column"},
        {"not_object", "[1, 2]", "not an object"},
        {"no_model", R"({"normalizer":{"type":"NFC"}})", "pre_tokenizer"},
        {"merge_without_space", tiny_tokenizer_json(R"(["ab"])"), "model.merges[0]"},
        {"merge_not_in_vocab", tiny_tokenizer_json(R"(["a c"])"), "model.merges[0]"},
        {"merge_bad_pair", tiny_tokenizer_json(R"([["a"]])"), "model.merges[0]"},
        {"other_regex", tiny_tokenizer_json(R"(["a b"])", R"([])", R"("\\s+")"), "regex"},
        {"added_lstrip", tiny_tokenizer_json(R"(["a b"])", R"([{"id":257,"content":"<|x|>","lstrip":true}])"), "lstrip"},
        {"added_no_id", tiny_tokenizer_json(R"(["a b"])", R"([{"content":"<|x|>"}])"), "added_tokens[0]"},
        {"added_reuses_id", tiny_tokenizer_json(R"(["a b"])", R"([{"id":97,"content":"<|x|>"}])"), "reuses id 97"},
    };
    for (const Case& c : cases) {
        TempFile file(c.json, "_" + std::string(c.name) + ".json");
        INFO("case " << c.name);
        try {
            Tokenizer::load(file.path);
            FAIL("loaded without an error");
        } catch (const GrpoError& e) {
            std::string message = e.what();
            INFO("message: " << message);
            CHECK(message.find(file.path) != std::string::npos);
            CHECK(message.find(c.mentions) != std::string::npos);
        }
    }
    REQUIRE_THROWS_AS(Tokenizer::load("build/no/such/tokenizer.json"), GrpoError);
}

TEST_CASE("tokenizer: unknown ids and invalid UTF-8 are GrpoErrors", "[tokenizer]") {
    const Tokenizer& t = qwen_tokenizer();
    REQUIRE_THROWS_AS(t.decode({-1}, false), GrpoError);
    REQUIRE_THROWS_AS(t.decode({9707, t.vocab_size()}, false), GrpoError);
    REQUIRE_THROWS_WITH(t.decode({9707, t.vocab_size()}, true), Catch::Contains("position 1"));
    REQUIRE_THROWS_AS(t.encode("ok \xFF"), GrpoError);
    REQUIRE_THROWS_AS(t.encode("\xED\xA0\x80"), GrpoError);  // a UTF-16 surrogate is not UTF-8
    REQUIRE(t.encode("").empty());
    REQUIRE(t.decode({}, false).empty());
}

TEST_CASE("the tokenize program encodes, encodes JSON lines, decodes, and refuses bad input", "[tokenizer]") {
    require_program("./tokenize", "tokenize");
    const Tokenizer& tokenizer = qwen_tokenizer();
    auto ids_of = [](const std::string& json_array) {
        JsonValue v = json_parse(json_array, "tokenize output");
        std::vector<int> ids;
        for (const JsonValue& x : v.array) ids.push_back((int)x.number);
        return ids;
    };
    // plain mode: all of stdin is one text, CRLF and a trailing newline included
    const std::string text = "Hello, world! 123 你好\r\n<|im_start|>user\nDON'T  stop\n";
    TempFile input(text, ".txt");
    CommandResult plain = run_shell("./tokenize < " + input.path);
    REQUIRE(plain.exit_code == 0);
    CHECK(ids_of(plain.output) == tokenizer.encode(text));

    // --jsonl: one JSON string per line in, one array per line out
    const std::vector<std::string> lines = {"first line", "  spaced\ttab", "emoji 👩‍👩‍👧 and ٣", "<|endoftext|>x"};
    std::string jsonl;
    for (const std::string& l : lines) jsonl += json_quote(l) + "\n";
    TempFile jsonl_input(jsonl, ".jsonl");
    CommandResult encoded = run_shell("./tokenize --jsonl < " + jsonl_input.path);
    REQUIRE(encoded.exit_code == 0);
    std::vector<std::string> out_lines = py_split(encoded.output, "\n");
    REQUIRE(out_lines.size() == lines.size() + 1);  // the last piece is after the final newline
    for (size_t i = 0; i < lines.size(); i++) CHECK(ids_of(out_lines[i]) == tokenizer.encode(lines[i]));

    // --decode, with and without special tokens: the round trip gives the text back
    TempFile ids_input(encoded.output, ".jsonl");
    for (bool skip : {false, true}) {
        CommandResult decoded = run_shell(std::string("./tokenize --decode") + (skip ? " --skip-special" : "") + " < " + ids_input.path);
        REQUIRE(decoded.exit_code == 0);
        std::vector<std::string> texts = py_split(decoded.output, "\n");
        REQUIRE(texts.size() == lines.size() + 1);
        for (size_t i = 0; i < lines.size(); i++)
            CHECK(json_parse(texts[i], "tokenize --decode output").string == tokenizer.decode(tokenizer.encode(lines[i]), skip));
    }

    // bad input: one message naming the line, exit 1
    struct Bad { std::string mode, input, says; };
    const Bad bad[] = {
        {"--jsonl", "\"ok\"\n[1, 2]\n", "<stdin>:2"},
        {"--jsonl", "\"unterminated\n", "<stdin>:1"},
        {"--decode", "[1, 2]\n[1, 999999]\n", "<stdin>:2"},
        {"--decode", "[1, 2.5]\n", "<stdin>:1"},
    };
    for (const Bad& b : bad) {
        TempFile f(b.input, ".jsonl");
        CommandResult r = run_shell("./tokenize " + b.mode + " < " + f.path + " 2>&1");
        INFO(b.mode << " " << b.input << " -> " << r.output);
        CHECK(r.exit_code == 1);
        CHECK(r.output.find(b.says) != std::string::npos);
    }
    CommandResult missing = run_shell("./tokenize -t /nonexistent/tokenizer.json < /dev/null 2>&1");
    CHECK(missing.exit_code == 1);
    CHECK(missing.output.find("/nonexistent/tokenizer.json") != std::string::npos);
}
