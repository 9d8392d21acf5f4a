// unicode.cpp: NFC (decompose, canonical order, compose; Hangul by formula) and character classes over the generated tables.
#include "tokenizer/unicode.h"

#include <algorithm>
#include <unordered_map>
#include "data/text.h"
#include "tokenizer/unicode_tables.h"

namespace {

template <typename Range>
const Range* find_range(const Range* ranges, size_t count, uint32_t cp) {
    const Range* end = ranges + count;
    const Range* it = std::upper_bound(ranges, end, cp, [](uint32_t c, const Range& r) { return c < r.first; });
    if (it == ranges) return nullptr;
    --it;
    return cp <= it->last ? it : nullptr;
}

CharClass char_class_from_tables(uint32_t cp) {
    if (find_range(kLetterRanges, kLetterRangesCount, cp)) return CharClass::kLetter;
    if (find_range(kNumberRanges, kNumberRangesCount, cp)) return CharClass::kNumber;
    if (find_range(kWhitespaceRanges, kWhitespaceRangesCount, cp)) return CharClass::kWhitespace;
    return CharClass::kOther;
}

// ASCII is nearly all of GSM8K, so it skips the binary searches.
struct AsciiClasses {
    CharClass of[128];
    AsciiClasses() { for (uint32_t c = 0; c < 128; c++) of[c] = char_class_from_tables(c); }
};

uint8_t combining_class(uint32_t cp) {
    if (cp < 0x300) return 0;  // the first combining mark is U+0300
    const CombiningClassRange* r = find_range(kCombiningClassRanges, kCombiningClassRangesCount, cp);
    return r ? r->combining_class : 0;
}

// Hangul syllables decompose and compose by arithmetic (Unicode §3.12), so they have no table rows.
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

void append_decomposition(uint32_t cp, std::vector<uint32_t>* out) {
    if (cp >= kSBase && cp < kSBase + kSCount) {
        uint32_t s = cp - kSBase;
        out->push_back(kLBase + s / kNCount);
        out->push_back(kVBase + (s % kNCount) / kTCount);
        if (s % kTCount) out->push_back(kTBase + s % kTCount);
        return;
    }
    const CanonicalDecomposition* end = kCanonicalDecompositions + kCanonicalDecompositionsCount;
    const CanonicalDecomposition* it = std::lower_bound(kCanonicalDecompositions, end, cp,
        [](const CanonicalDecomposition& d, uint32_t c) { return d.codepoint < c; });
    if (it != end && it->codepoint == cp) {
        out->insert(out->end(), kDecompositionCodepoints + it->start, kDecompositionCodepoints + it->start + it->length);
    } else {
        out->push_back(cp);
    }
}

uint64_t pair_key(uint32_t first, uint32_t second) { return (uint64_t)first << 21 | second; }

// The primary composite of (first, second), or 0 when there is none.
uint32_t compose_pair(uint32_t first, uint32_t second) {
    if (first >= kLBase && first < kLBase + kLCount && second >= kVBase && second < kVBase + kVCount)
        return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
    if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 && second > kTBase && second < kTBase + kTCount)
        return first + (second - kTBase);
    static const std::unordered_map<uint64_t, uint32_t> compositions = [] {
        std::unordered_map<uint64_t, uint32_t> m;
        for (size_t i = 0; i < kCompositionPairsCount; i++)
            m[pair_key(kCompositionPairs[i].first, kCompositionPairs[i].second)] = kCompositionPairs[i].composite;
        return m;
    }();
    auto it = compositions.find(pair_key(first, second));
    return it == compositions.end() ? 0 : it->second;
}

}  // namespace

CharClass char_class(uint32_t cp) {
    static const AsciiClasses ascii;  // a function-local static, so callers during static initialisation are safe
    return cp < 128 ? ascii.of[cp] : char_class_from_tables(cp);
}

std::vector<uint32_t> nfc_normalize(const std::vector<uint32_t>& cps) {
    // Below U+0300 every character is its own NFC and no mark follows to compose with it.
    if (std::all_of(cps.begin(), cps.end(), [](uint32_t cp) { return cp < 0x300; })) return cps;

    std::vector<uint32_t> decomposed;
    decomposed.reserve(cps.size() + 8);
    for (uint32_t cp : cps) append_decomposition(cp, &decomposed);

    // Canonical ordering: each run of non-starters sorted by combining class, equal classes kept in order.
    std::vector<uint8_t> ccc(decomposed.size());
    for (size_t i = 0; i < decomposed.size(); i++) ccc[i] = combining_class(decomposed[i]);
    for (size_t i = 0; i < decomposed.size();) {
        if (ccc[i] == 0) { i++; continue; }
        size_t j = i;
        while (j < decomposed.size() && ccc[j] != 0) j++;
        if (j - i > 1) {
            std::vector<std::pair<uint8_t, uint32_t>> run;
            for (size_t k = i; k < j; k++) run.push_back({ccc[k], decomposed[k]});
            std::stable_sort(run.begin(), run.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
            for (size_t k = i; k < j; k++) { ccc[k] = run[k - i].first; decomposed[k] = run[k - i].second; }
        }
        i = j;
    }

    // Canonical composition: a character joins the last starter unless something between blocks it,
    // i.e. unless the character just before it is a starter or has a class >= its own.
    std::vector<uint32_t> out;
    out.reserve(decomposed.size());
    long starter = -1;
    uint8_t last_ccc = 0;
    for (size_t i = 0; i < decomposed.size(); i++) {
        uint32_t cp = decomposed[i];
        bool reachable = starter >= 0 && (last_ccc == 0 ? (long)out.size() - 1 == starter : last_ccc < ccc[i]);
        if (reachable) {
            uint32_t composite = compose_pair(out[starter], cp);
            if (composite) { out[starter] = composite; continue; }
        }
        if (ccc[i] == 0) starter = (long)out.size();
        last_ccc = ccc[i];
        out.push_back(cp);
    }
    return out;
}

std::string nfc_normalize_utf8(const std::string& text) {
    return codepoints_to_utf8(nfc_normalize(utf8_to_codepoints(text)));
}
