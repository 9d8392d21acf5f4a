// pretokenize.h: Qwen2's pre-tokenizer regex, matched by hand with the oracle's (JS RegExp) backtracking semantics.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

// The Split pattern of Qwen2's tokenizer.json. load() refuses any other, because this is the one
// pretokenize() implements.
extern const char kQwen2PretokenizerRegex[];

// Splits NFC text into the regex's consecutive matches, as [begin, end) code point offsets that cover
// the whole text in order.
std::vector<std::pair<size_t, size_t>> pretokenize(const std::vector<uint32_t>& cps);
