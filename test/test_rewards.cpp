// test_rewards.cpp: the C++ rewards equal python3's bit for bit on the oracle corpus, the corpus reaches every branch, and the `rewards` program and the external reward command work end to end.
#include <catch2/catch.hpp>
#include <unistd.h>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>
#include "data/json.h"
#include "data/reward_command.h"
#include "data/rewards.h"
#include "data/text.h"
#include "data/unicode_digits.h"
#include "test/test_util.h"

namespace {

const char* kOracleRewards = "rewards.jsonl";        // oracle_file() names, written by dev/oracle/rewards_oracle.py
const char* kOracleUnicode = "rewards_unicode.json";
// The notebook's reward_funcs, in its order; the registry must start with exactly these.
const std::vector<std::string> kNotebookRewards = {"xmlcount", "soft_format", "strict_format", "int", "correctness"};

struct OracleItem {
    std::string completion, answer, extracted;
    std::map<std::string, double> rewards;  // by registry name, plus "total"
    std::set<std::string> facts;            // the facts that hold for this item (see rewards_oracle.py)
    std::vector<uint32_t> strip_edge_spaces, soft_gap_spaces;
    size_t line = 0;
};

const JsonValue& member(const JsonValue& v, const char* key, const std::string& where) {
    const JsonValue* m = v.get(key);
    if (!m) FAIL(where + ": the oracle line has no \"" + key + "\"; rerun `make build/oracle/rewards.stamp`");
    return *m;
}

std::vector<uint32_t> codepoint_list(const JsonValue& array) {
    std::vector<uint32_t> out;
    for (const JsonValue& x : array.array) out.push_back((uint32_t)x.number);
    return out;
}

const std::vector<OracleItem>& oracle_items() {
    static std::vector<OracleItem> items;
    if (!items.empty()) return items;
    JsonlReader reader(oracle_file(kOracleRewards));
    JsonValue v;
    while (reader.next(&v)) {
        OracleItem item;
        item.line = reader.line_number();
        item.completion = member(v, "completion", reader.where()).string;
        item.answer = member(v, "answer", reader.where()).string;
        item.extracted = member(v, "extracted", reader.where()).string;
        for (const RewardSpec& r : reward_registry()) {
            const JsonValue* value = v.get(r.name);
            if (!value || !value->is_number())
                FAIL(reader.where() + ": the oracle has no number for reward \"" + r.name +
                     "\"; a reward added to the registry needs its Python twin in dev/oracle/rewards_oracle.py");
            item.rewards[r.name] = value->number;
        }
        item.rewards["total"] = member(v, "total", reader.where()).number;
        for (const JsonValue& f : member(v, "facts", reader.where()).array) item.facts.insert(f.string);
        item.strip_edge_spaces = codepoint_list(member(v, "strip_edge_spaces", reader.where()));
        item.soft_gap_spaces = codepoint_list(member(v, "soft_gap_spaces", reader.where()));
        items.push_back(std::move(item));
    }
    return items;
}

// Bit-identical, not merely ==: 0.0 and -0.0 differ, and so would two NaNs.
bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof(double)) == 0; }

std::string show(const std::string& s) { return json_quote(s.size() > 300 ? s.substr(0, 300) + "..." : s); }

}  // namespace

TEST_CASE("the registry is the notebook's five rewards, in its order, weight 1", "[rewards]") {
    const std::vector<RewardSpec>& registry = reward_registry();
    REQUIRE(registry.size() >= kNotebookRewards.size());
    for (size_t i = 0; i < kNotebookRewards.size(); i++) {
        CHECK(registry[i].name == kNotebookRewards[i]);
        CHECK(registry[i].weight == 1.0);
    }
}

TEST_CASE("every reward and the total equal python3's bit for bit on the oracle corpus", "[rewards]") {
    const std::vector<OracleItem>& items = oracle_items();
    REQUIRE(items.size() >= 10000);
    const std::vector<RewardSpec>& registry = reward_registry();
    size_t mismatches = 0, compared = 0;
    std::string first_mismatches;
    auto report = [&](const OracleItem& item, const std::string& what, const std::string& want, const std::string& got) {
        if (++mismatches <= 10)
            first_mismatches += oracle_file(kOracleRewards) + ":" + std::to_string(item.line) + ": " + what + ": python " + want +
                                ", C++ " + got + "\n  completion " + show(item.completion) + "\n  answer " + show(item.answer) + "\n";
    };
    for (const OracleItem& item : items) {
        std::string extracted = extract_xml_answer(item.completion);
        if (extracted != item.extracted) report(item, "extract_xml_answer", show(item.extracted), show(extracted));
        RewardScores scores = compute_rewards(item.completion, item.answer);
        for (size_t i = 0; i < registry.size(); i++) {
            double want = item.rewards.at(registry[i].name);
            if (!same_bits(scores.values[i], want)) report(item, registry[i].name, json_number(want), json_number(scores.values[i]));
            compared++;
        }
        if (!same_bits(scores.total, item.rewards.at("total")))
            report(item, "total", json_number(item.rewards.at("total")), json_number(scores.total));
        compared++;
    }
    INFO(first_mismatches);
    INFO(mismatches << " of " << compared << " values differ from python3");
    REQUIRE(mismatches == 0);
}

TEST_CASE("the oracle corpus reaches every branch of every reward", "[rewards]") {
    const std::vector<OracleItem>& items = oracle_items();
    REQUIRE(items.size() >= 10000);

    SECTION("each reward is both zero and non-zero many times") {
        for (const std::string& name : kNotebookRewards) {
            size_t zero = 0, nonzero = 0;
            for (const OracleItem& item : items) (item.rewards.at(name) == 0.0 ? zero : nonzero)++;
            INFO(name << ": " << zero << " zero, " << nonzero << " non-zero");
            CHECK(zero >= 100);
            CHECK(nonzero >= 100);
        }
    }

    SECTION("each fact the oracle tracks holds for some items and fails for others") {
        // One per branch or boundary worth reaching; see facts() in dev/oracle/rewards_oracle.py.
        const std::vector<std::string> required = {
            "xml_reasoning_open_once", "xml_reasoning_close_once", "xml_answer_open_once", "xml_answer_close_once",
            "xml_answer_open_twice", "xml_answer_open_tail_penalty", "xml_answer_close_tail_bonus",
            "xml_answer_close_tail_penalty", "xml_tail_multibyte", "xml_negative", "no_answer_open",
            "several_answer_opens", "no_answer_close_after_last_open", "extract_stripped", "extract_empty",
            "extract_keeps_lookalike_space", "correct_after_strip", "int_non_ascii", "numeric_not_digit",
            "strict_needs_dotall", "strict_final_newline_before_dollar", "strict_ends_one_newline",
            "strict_fails_extra_newline", "soft_needs_dotall", "soft_not_at_start", "soft_gap_has_newline", "crlf",
            "astral", "length_differs_from_bytes", "ends_with_tag", "empty_completion"};
        for (const std::string& fact : required) {
            size_t holds = 0;
            for (const OracleItem& item : items) holds += item.facts.count(fact);
            INFO("fact " << fact << " holds for " << holds << " of " << items.size() << " items");
            CHECK(holds >= 5);
            CHECK(items.size() - holds >= 5);
        }
    }

    SECTION("every isspace character is stripped from answer edges and fills the gap between the tags") {
        JsonValue unicode = json_parse_file(oracle_file(kOracleUnicode));
        std::map<uint32_t, size_t> at_edges, in_gap;
        for (const OracleItem& item : items) {
            for (uint32_t cp : item.strip_edge_spaces) at_edges[cp]++;
            for (uint32_t cp : item.soft_gap_spaces) in_gap[cp]++;
        }
        REQUIRE(unicode.get("isspace") != nullptr);
        std::vector<uint32_t> spaces = codepoint_list(*unicode.get("isspace"));
        REQUIRE(spaces.size() >= 29);
        for (uint32_t cp : spaces) {
            INFO("U+" << std::hex << cp << std::dec << ": " << at_edges[cp] << " items strip it, " << in_gap[cp]
                      << " have it between </reasoning> and <answer>");
            CHECK(at_edges[cp] >= 5);
            CHECK(in_gap[cp] >= 5);
        }
    }

    SECTION("digits of every kind reach the int reward, and numerals that are not digits get 0") {
        struct Kind { const char* name; const char* chars; bool isdigit; };
        const Kind kinds[] = {
            {"ASCII", "0123456789", true}, {"Arabic-Indic", "٠١٢٣٤٥٦٧٨٩", true},
            {"Extended Arabic-Indic", "۰۱۲۳۴۵۶۷۸۹", true}, {"Devanagari", "०१२३४५६७८९", true},
            {"superscript", "⁰¹²³⁴⁵⁶⁷⁸⁹", true}, {"subscript", "₀₁₂₃₄₅₆₇₈₉", true},
            {"fullwidth", "０１２３４５６７８９", true}, {"circled", "⓪①②③④⑤⑥⑦⑧", true},
            {"mathematical bold (4-byte UTF-8)", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗", true},
            {"fractions, roman and CJK numerals", "½⅓¼¾Ⅻ三十⑩", false},
        };
        for (const Kind& kind : kinds) {
            std::vector<uint32_t> wanted = utf8_to_codepoints(kind.chars);
            size_t reached = 0;
            for (const OracleItem& item : items) {
                bool contains = false;
                for (uint32_t cp : utf8_to_codepoints(item.extracted))
                    for (uint32_t w : wanted) contains |= cp == w;
                if (contains && (item.rewards.at("int") != 0.0) == kind.isdigit) reached++;
            }
            INFO(kind.name << ": " << reached << " items whose extracted answer holds one and get int "
                           << (kind.isdigit ? "0.5" : "0"));
            CHECK(reached >= 3);
        }
    }
}

TEST_CASE("the Unicode tables agree with the oracle's python3 on every code point", "[rewards]") {
    JsonValue unicode = json_parse_file(oracle_file(kOracleUnicode));
    std::string python_version = unicode.get("unidata_version")->string;
    INFO("data/unicode_digits.cpp is Unicode " << kUnicodeDigitsVersion << ", the oracle's python3 has " << python_version
                                               << "; regenerate: python3 dev/unicode/gen_isdigit_table.py > data/unicode_digits.cpp");
    REQUIRE(python_version == kUnicodeDigitsVersion);
    std::vector<bool> isdigit(0x110000, false), isspace(0x110000, false);
    for (const JsonValue& range : unicode.get("isdigit_ranges")->array)
        for (uint32_t cp = (uint32_t)range.array[0].number; cp <= (uint32_t)range.array[1].number; cp++) isdigit[cp] = true;
    for (uint32_t cp : codepoint_list(*unicode.get("isspace"))) isspace[cp] = true;
    size_t digit_mismatches = 0, space_mismatches = 0;
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        digit_mismatches += py_isdigit_codepoint(cp) != isdigit[cp];
        space_mismatches += py_isspace(cp) != isspace[cp];  // re's \s and str.strip() both use this set
    }
    CHECK(digit_mismatches == 0);
    CHECK(space_mismatches == 0);
}

TEST_CASE("invalid UTF-8 is a GrpoError, not a guess", "[rewards]") {
    REQUIRE_THROWS_AS(compute_rewards(std::string("<answer>\xff</answer>"), "1"), GrpoError);
    REQUIRE_THROWS_AS(compute_rewards("<answer>1</answer>", std::string("\xc3")), GrpoError);
}

TEST_CASE("the rewards program prints the oracle's numbers", "[rewards]") {
    require_program("./rewards", "rewards");
    const std::vector<OracleItem>& items = oracle_items();
    // every 500th item, plus the first where each reward is non-zero and the first with astral text
    std::set<size_t> picked;
    for (size_t i = 0; i < items.size(); i += 500) picked.insert(i);
    for (const std::string& name : kNotebookRewards)
        for (size_t i = 0; i < items.size(); i++)
            if (items[i].rewards.at(name) != 0.0) { picked.insert(i); break; }
    for (size_t i = 0; i < items.size(); i++)
        if (items[i].facts.count("astral")) { picked.insert(i); break; }
    std::string input;
    for (size_t i : picked) input += "{\"completion\": " + json_quote(items[i].completion) + ", \"answer\": " + json_quote(items[i].answer) + "}\n";
    TempFile file(input, ".jsonl");

    for (const std::string& command : {"./rewards " + file.path, "./rewards < " + file.path}) {
        INFO("command: " << command);
        CommandResult result = run_shell(command);
        REQUIRE(result.exit_code == 0);
        std::vector<std::string> lines = py_split(result.output, "\n");
        REQUIRE(lines.back().empty());
        lines.pop_back();
        REQUIRE(lines.size() == picked.size());
        size_t k = 0;
        for (size_t i : picked) {
            JsonValue out = json_parse(lines[k], command + " output line " + std::to_string(k + 1));
            INFO("oracle line " << items[i].line << ", output " << lines[k]);
            for (const std::string& name : kNotebookRewards) {
                REQUIRE(out.get(name) != nullptr);
                CHECK(same_bits(out.get(name)->number, items[i].rewards.at(name)));
            }
            REQUIRE(out.get("total") != nullptr);
            CHECK(same_bits(out.get("total")->number, items[i].rewards.at("total")));
            k++;
        }
    }
}

TEST_CASE("the rewards program names the bad line and exits 1", "[rewards]") {
    require_program("./rewards", "rewards");
    const std::string good = "{\"completion\": \"<answer>1</answer>\", \"answer\": \"1\"}\n";
    struct Bad { const char* line; const char* says; };
    const Bad cases[] = {
        {"{\"completion\": \"x\"}", "missing field \"answer\""},
        {"{\"completion\": \"x\", \"answer\": 7}", "field \"answer\" is a number, expected a string"},
        {"{\"completion\": \"x\", \"answer\": \"7\"", ":2:"},
        {"[\"x\", \"7\"]", "expected a JSON object"},
        {"not json", ":2:"},
    };
    for (const Bad& bad : cases) {
        TempFile file(good + bad.line + "\n" + good, ".jsonl");
        CommandResult result = run_shell("./rewards " + file.path + " 2>&1");
        INFO("line 2 is " << bad.line << "; rewards printed: " << result.output);
        CHECK(result.exit_code == 1);
        CHECK(result.output.find(file.path + ":2") != std::string::npos);
        CHECK(result.output.find(bad.says) != std::string::npos);
    }
    CommandResult missing = run_shell("./rewards /nonexistent/input.jsonl 2>&1");
    CHECK(missing.exit_code == 1);
    CHECK(missing.output.find("/nonexistent/input.jsonl") != std::string::npos);
}

TEST_CASE("the external reward command gets JSON lines and returns one number per line", "[rewards]") {
    const std::vector<OracleItem>& items = oracle_items();
    std::vector<RewardSample> batch;
    for (size_t i = 0; i < items.size() && batch.size() < 40; i += 97)
        batch.push_back({"Question " + std::to_string(i) + " \"quoted\" \\ " + items[i].answer, items[i].completion, items[i].answer});
    // echoes a number computed from every field, so a field lost or mangled on the way shows up
    TempFile script(
        "import json, sys\n"
        "for line in sys.stdin:\n"
        "    d = json.loads(line)\n"
        "    print(len(d['prompt']) * 1000000 + len(d['completion']) * 10 + (d['answer'] in d['prompt']))\n",
        ".py");
    std::vector<double> got = run_reward_command("python3 " + script.path, batch);
    REQUIRE(got.size() == batch.size());
    for (size_t i = 0; i < batch.size(); i++) {
        double want = (double)utf8_length(batch[i].prompt) * 1000000 + (double)utf8_length(batch[i].completion) * 10 + 1;
        INFO("sample " << i << ": completion " << show(batch[i].completion));
        CHECK(got[i] == want);
    }
    CHECK(run_reward_command("python3 " + script.path, {}).empty());

    SECTION("the example length reward runs") {
        std::vector<double> lengths = run_reward_command("python3 dev/examples/length_reward.py", batch);
        REQUIRE(lengths.size() == batch.size());
        for (double x : lengths) CHECK((x >= 0.0 && x <= 0.5));
    }
}

// Runs a command expected to fail; checks the message names the command, says each of `says`, and names
// the kept batch file (so the user can rerun the command by hand), which it then removes.
static void require_command_error(const std::string& command, const std::vector<RewardSample>& batch,
                                  const std::vector<std::string>& says) {
    try {
        run_reward_command(command, batch);
        FAIL("expected a GrpoError from `" << command << "`");
    } catch (const GrpoError& e) {
        std::string message = e.what();
        INFO("message: " << message);
        CHECK(message.find("`" + command + "`") != std::string::npos);
        for (const std::string& s : says) CHECK(message.find(s) != std::string::npos);
        size_t at = message.find("< ");
        REQUIRE(at != std::string::npos);
        std::string kept = message.substr(at + 2, message.find('`', at) - at - 2);
        CHECK(access(kept.c_str(), R_OK) == 0);
        unlink(kept.c_str());
    }
}

TEST_CASE("the external reward command's failures name the command and the line", "[rewards]") {
    std::vector<RewardSample> batch = {{"p1", "c1", "1"}, {"p2", "c2", "2"}, {"p3", "c3", "3"}};
    struct Failure { std::string python; std::vector<std::string> says; };
    const Failure failures[] = {
        {"print(1)\nprint(2)", {"printed 2 lines for 3 completions"}},
        {"print(1)\nprint(2)\nprint(3)\nprint(4)", {"printed 4 lines for 3 completions"}},
        {"print(1)\nprint('abc')\nprint(3)", {"output line 2 is \"abc\"", "finite"}},
        {"print(1)\nprint(2)\nprint('nan')", {"output line 3 is \"nan\""}},
        {"print(1)\nprint('1e999')\nprint(3)", {"output line 2"}},
        {"print(1)\nprint('')\nprint(3)", {"output line 2 is \"\""}},
        {"print('1 2')\nprint(2)\nprint(3)", {"output line 1"}},
        {"import sys\nprint(1)\nsys.exit(3)", {"exited with status 3"}},
    };
    for (const Failure& f : failures) {
        TempFile script("import sys\nsys.stdin.read()\n" + f.python + "\n", ".py");
        INFO("script: " << f.python);
        require_command_error("python3 " + script.path, batch, f.says);
    }
    require_command_error("exit 7", batch, {"exited with status 7"});
    require_command_error("no_such_reward_program_xyz 2>/dev/null", batch, {"exited with status 127"});
}
