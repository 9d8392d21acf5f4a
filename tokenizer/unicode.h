// unicode.h: the Unicode the tokenizer needs, as node (the oracle) defines it: NFC and the \p{L} / \p{N} / \s classes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

// The classes the pre-tokenizer regex distinguishes. They are disjoint: no \s character is a letter or a number.
enum class CharClass : uint8_t { kOther, kLetter, kNumber, kWhitespace };
CharClass char_class(uint32_t cp);

// Unicode Normalization Form C, the same as JS's String.prototype.normalize('NFC') on node's Unicode version.
std::vector<uint32_t> nfc_normalize(const std::vector<uint32_t>& cps);
// The same on UTF-8; throws GrpoError naming the byte offset when text is not valid UTF-8.
std::string nfc_normalize_utf8(const std::string& text);
