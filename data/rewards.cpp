// rewards.cpp: the five GSM8K rewards and two hand-written matchers that reproduce Python's re for the notebook's two patterns.
#include "rewards.h"
#include "unicode_digits.h"

// ---- the answer extraction -------------------------------------------------------------------

std::string extract_xml_answer(const std::string& completion) {
    // split on ASCII separators is byte-exact on UTF-8: no multi-byte sequence contains an ASCII byte
    std::string after_last_open = py_split(completion, "<answer>").back();
    std::string before_first_close = py_split(after_last_open, "</answer>").front();
    return py_strip(before_first_close);
}

bool py_isdigit(const std::string& text) {
    std::vector<uint32_t> cps = utf8_to_codepoints(text);
    if (cps.empty()) return false;  // "".isdigit() is False
    for (uint32_t cp : cps)
        if (!py_isdigit_codepoint(cp)) return false;
    return true;
}

// ---- a tiny backtracking matcher for the two format patterns ----------------------------------
// The patterns use only literals, .*? (lazy), \s* (greedy), ^ and $, so instead of std::regex (whose
// '.' and \s follow the C locale, not Python) each pattern is a list of these elements, matched on code
// points with the same semantics and the same try order as CPython's sre:
//   '.'  without re.DOTALL matches every code point except '\n' (and only '\n', not '\r' or U+2028);
//   \s   for a str pattern is exactly str.isspace() (checked over all code points: py_isspace);
//   ^    without re.MULTILINE matches only at position 0;
//   $    without re.MULTILINE matches at the end, or just before a '\n' that is the last character;
//   re.match anchors the start but not the end: whatever follows the last element is ignored.
// Lazy or greedy only changes which match is found, not whether one exists; the order is kept anyway
// so that this stays a faithful model of the regex rather than a different algorithm that agrees.

namespace {

enum class Op { AtStart, Literal, LazyAnyExceptNewline, GreedySpaces, AtEndOrBeforeFinalNewline };

struct PatternElement {
    Op op;
    const char* literal;  // ASCII, only for Op::Literal
};

bool literal_at(const std::vector<uint32_t>& text, size_t pos, const char* literal) {
    for (; *literal; literal++, pos++)
        if (pos >= text.size() || text[pos] != (uint32_t)(unsigned char)*literal) return false;
    return true;
}

size_t ascii_length(const char* s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

// Does pattern[0..count) match text at pos? Recursion depth is at most the pattern length (under 10);
// the stars loop over their candidate lengths and try the rest of the pattern for each, like sre.
bool match_here(const PatternElement* pattern, size_t count, const std::vector<uint32_t>& text, size_t pos) {
    if (count == 0) return true;
    const PatternElement& e = pattern[0];
    const PatternElement* rest = pattern + 1;
    switch (e.op) {
        case Op::AtStart:
            return pos == 0 && match_here(rest, count - 1, text, pos);
        case Op::Literal:
            return literal_at(text, pos, e.literal) && match_here(rest, count - 1, text, pos + ascii_length(e.literal));
        case Op::LazyAnyExceptNewline:
            // shortest first; each extra character must be one that '.' accepts
            for (size_t end = pos;; end++) {
                if (match_here(rest, count - 1, text, end)) return true;
                if (end == text.size() || text[end] == '\n') return false;
            }
        case Op::GreedySpaces: {
            // longest first, then give characters back one at a time
            size_t end = pos;
            while (end < text.size() && py_isspace(text[end])) end++;
            for (;; end--) {
                if (match_here(rest, count - 1, text, end)) return true;
                if (end == pos) return false;
            }
        }
        case Op::AtEndOrBeforeFinalNewline: {
            bool at_end = pos == text.size() || (pos + 1 == text.size() && text[pos] == '\n');
            return at_end && match_here(rest, count - 1, text, pos);
        }
    }
    return false;
}

// r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
const PatternElement kStrictFormat[] = {
    {Op::AtStart, nullptr},
    {Op::Literal, "<reasoning>\n"},
    {Op::LazyAnyExceptNewline, nullptr},
    {Op::Literal, "\n</reasoning>\n<answer>\n"},
    {Op::LazyAnyExceptNewline, nullptr},
    {Op::Literal, "\n</answer>\n"},
    {Op::AtEndOrBeforeFinalNewline, nullptr},
};

// r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>". Without re.DOTALL the .*? cannot cross a '\n',
// so the notebook's own well-formatted multi-line output does NOT match; that is the spec, keep it.
const PatternElement kSoftFormat[] = {
    {Op::Literal, "<reasoning>"},
    {Op::LazyAnyExceptNewline, nullptr},
    {Op::Literal, "</reasoning>"},
    {Op::GreedySpaces, nullptr},
    {Op::Literal, "<answer>"},
    {Op::LazyAnyExceptNewline, nullptr},
    {Op::Literal, "</answer>"},
};

template <size_t N>
bool python_re_match(const PatternElement (&pattern)[N], const std::string& completion) {
    return match_here(pattern, N, utf8_to_codepoints(completion), 0);
}

}  // namespace

bool strict_format_matches(const std::string& completion) { return python_re_match(kStrictFormat, completion); }
bool soft_format_matches(const std::string& completion) { return python_re_match(kSoftFormat, completion); }

// ---- the rewards ---------------------------------------------------------------------------------

// Python rounds len * 0.001 to a double before subtracting it; a fused multiply-subtract (which flags
// such as -march=native let the compiler emit) rounds once and can differ in the last bit. Storing the
// product through a volatile forces the separate rounding whatever the flags.
static double rounded_product(double a, double b) {
    volatile double product = a * b;
    return product;
}

double xmlcount_reward(const std::string& completion, const std::string&) {
    // The notebook's count_xml, operation for operation: the result must be the same double as
    // Python's, so the additions and subtractions happen in the same order, and the lengths are code
    // points. The tail length may be 0, making (len - 1) negative: a bonus of 0.001, as in Python.
    const std::string& c = completion;
    double n = 0.0;
    if (py_count(c, "<reasoning>\n") == 1) n += 0.125;
    if (py_count(c, "\n</reasoning>\n") == 1) n += 0.125;
    if (py_count(c, "\n<answer>\n") == 1) {
        n += 0.125;
        n -= rounded_product((double)utf8_length(py_split(c, "\n</answer>\n").back()), 0.001);
    }
    if (py_count(c, "\n</answer>") == 1) {
        n += 0.125;
        n -= rounded_product((double)((long long)utf8_length(py_split(c, "\n</answer>").back()) - 1), 0.001);
    }
    return n;
}

double soft_format_reward(const std::string& completion, const std::string&) {
    return soft_format_matches(completion) ? 0.5 : 0.0;
}

double strict_format_reward(const std::string& completion, const std::string&) {
    return strict_format_matches(completion) ? 0.5 : 0.0;
}

double int_reward(const std::string& completion, const std::string&) {
    return py_isdigit(extract_xml_answer(completion)) ? 0.5 : 0.0;
}

double correctness_reward(const std::string& completion, const std::string& answer) {
    // equal UTF-8 bytes is equal code points, which is Python's ==
    return extract_xml_answer(completion) == answer ? 2.0 : 0.0;
}

// ---- the registry ----------------------------------------------------------------------------------

const std::vector<RewardSpec>& reward_registry() {
    // The notebook's reward_funcs list, in its order (the order of the additions in the total).
    // Add a reward here: {"name", weight, function}.
    static const std::vector<RewardSpec> registry = {
        {"xmlcount", 1.0, xmlcount_reward},
        {"soft_format", 1.0, soft_format_reward},
        {"strict_format", 1.0, strict_format_reward},
        {"int", 1.0, int_reward},
        {"correctness", 1.0, correctness_reward},
    };
    return registry;
}

RewardScores compute_rewards(const std::string& completion, const std::string& answer) {
    if (!utf8_valid(completion))
        throw GrpoError("compute_rewards: the completion is not valid UTF-8; decode token ids with invalid "
                        "byte sequences replaced by U+FFFD, as Hugging Face's decode does, before scoring");
    if (!utf8_valid(answer))
        throw GrpoError("compute_rewards: the reference answer is not valid UTF-8; fix the data set's encoding");
    RewardScores scores;
    for (const RewardSpec& reward : reward_registry()) {
        double value = reward.fn(completion, answer);
        scores.values.push_back(value);
        scores.total += reward.weight * value;
    }
    return scores;
}
