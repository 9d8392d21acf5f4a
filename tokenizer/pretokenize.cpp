// pretokenize.cpp: the Qwen2 pre-tokenizer regex as a hand-written leftmost-alternative matcher over code points.
#include "tokenizer/pretokenize.h"

#include "tokenizer/unicode.h"

const char kQwen2PretokenizerRegex[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

struct Text {
    const std::vector<uint32_t>& cps;
    std::vector<CharClass> classes;
    explicit Text(const std::vector<uint32_t>& c) : cps(c), classes(c.size()) {
        for (size_t i = 0; i < c.size(); i++) classes[i] = char_class(c[i]);
    }
    size_t size() const { return cps.size(); }
    bool is(size_t i, CharClass c) const { return i < size() && classes[i] == c; }
    bool is_newline(size_t i) const { return i < size() && (cps[i] == '\r' || cps[i] == '\n'); }
    // [^\s\p{L}\p{N}]
    bool is_other(size_t i) const { return is(i, CharClass::kOther); }
    // The end of the run of characters of class c starting at i (i itself when there is none).
    size_t run_end(size_t i, CharClass c) const {
        while (is(i, c)) i++;
        return i;
    }
};

bool ascii_lower_is(uint32_t cp, char lower) { return cp == (uint32_t)lower || cp == (uint32_t)lower - 32; }

// Each alternative returns the end of its match at i, or 0 when it does not match (no alternative can
// match the empty string, so 0 is never a real end).

// (?i:'s|'t|'re|'ve|'m|'ll|'d). The oracle rewrites the case-insensitive group to ASCII classes,
// (?:'([sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])), because JS has no (?i:...) group; so unlike
// HF's Rust (Unicode case folding), "'ſ" (U+017F LONG S) or "'K" (U+212A KELVIN SIGN) is no contraction here.
size_t match_contraction(const Text& t, size_t i) {
    if (t.cps[i] != '\'' || i + 1 >= t.size()) return 0;
    uint32_t a = t.cps[i + 1];
    if (ascii_lower_is(a, 's') || ascii_lower_is(a, 't') || ascii_lower_is(a, 'm') || ascii_lower_is(a, 'd')) return i + 2;
    if (i + 2 >= t.size()) return 0;
    uint32_t b = t.cps[i + 2];
    if ((ascii_lower_is(a, 'r') && ascii_lower_is(b, 'e')) || (ascii_lower_is(a, 'v') && ascii_lower_is(b, 'e')) ||
        (ascii_lower_is(a, 'l') && ascii_lower_is(b, 'l')))
        return i + 3;
    return 0;
}

// [^\r\n\p{L}\p{N}]?\p{L}+ : the optional prefix is tried first, so one space or mark before a word joins it.
size_t match_word(const Text& t, size_t i) {
    bool prefix = !t.is_newline(i) && !t.is(i, CharClass::kLetter) && !t.is(i, CharClass::kNumber);
    if (prefix && t.is(i + 1, CharClass::kLetter)) return t.run_end(i + 1, CharClass::kLetter);
    if (t.is(i, CharClass::kLetter)) return t.run_end(i, CharClass::kLetter);
    return 0;
}

// \p{N} : one digit per token.
size_t match_digit(const Text& t, size_t i) { return t.is(i, CharClass::kNumber) ? i + 1 : 0; }

//  ?[^\s\p{L}\p{N}]+[\r\n]* : punctuation with at most one leading U+0020 and its trailing newlines.
size_t match_punctuation(const Text& t, size_t i) {
    size_t start = (t.cps[i] == ' ' && t.is_other(i + 1)) ? i + 1 : i;
    if (!t.is_other(start)) return 0;
    size_t end = t.run_end(start, CharClass::kOther);
    while (t.is_newline(end)) end++;
    return end;
}

// \s*[\r\n]+ : greedy \s* gives back until [\r\n]+ can match, so the match ends just after the last
// newline of the whitespace run.
size_t match_whitespace_to_newline(const Text& t, size_t i) {
    size_t run = t.run_end(i, CharClass::kWhitespace);
    for (size_t k = run; k > i; k--)
        if (t.is_newline(k - 1)) return k;
    return 0;
}

// \s+(?!\S) : the whole run when it ends the text; otherwise the run gives back its last character,
// which then starts the next token (" world" keeps its space), and a run of one cannot match.
size_t match_whitespace_not_before_text(const Text& t, size_t i) {
    size_t run = t.run_end(i, CharClass::kWhitespace);
    if (run == i) return 0;
    if (run == t.size()) return run;
    return run - i >= 2 ? run - 1 : 0;
}

// \s+
size_t match_whitespace(const Text& t, size_t i) {
    size_t run = t.run_end(i, CharClass::kWhitespace);
    return run == i ? 0 : run;
}

size_t match_at(const Text& t, size_t i) {
    for (auto alternative : {match_contraction, match_word, match_digit, match_punctuation, match_whitespace_to_newline,
                             match_whitespace_not_before_text, match_whitespace}) {
        if (size_t end = alternative(t, i)) return end;
    }
    return 0;
}

}  // namespace

std::vector<std::pair<size_t, size_t>> pretokenize(const std::vector<uint32_t>& cps) {
    Text text(cps);
    std::vector<std::pair<size_t, size_t>> pieces;
    size_t unmatched_from = 0;
    for (size_t i = 0; i < text.size();) {
        size_t end = match_at(text, i);
        if (end == 0) { i++; continue; }
        // The Split is "Isolated": text between matches is kept as a piece too. Every character is a
        // letter, number, whitespace or other, so the pattern always matches and this never triggers.
        if (unmatched_from < i) pieces.push_back({unmatched_from, i});
        pieces.push_back({i, end});
        i = unmatched_from = end;
    }
    if (unmatched_from < text.size()) pieces.push_back({unmatched_from, text.size()});
    return pieces;
}
