// text.h: GrpoError, reading a whole file, UTF-8 code points and the Python str semantics (isspace, strip, split) that GSM8K and the rewards rely on.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

// Every recoverable error in the project (bad file, bad line, bad option) is a GrpoError whose message
// already says where it happened, what was expected and what to do; programs print it and exit 1.
struct GrpoError : std::runtime_error {
    explicit GrpoError(const std::string& msg) : std::runtime_error(msg) {}
};

// A whole file's bytes; throws GrpoError naming the path and the system's reason when it cannot be read.
std::string read_file(const std::string& path);

// Decodes one code point starting at s[*pos] and advances *pos. Returns -1 on malformed UTF-8
// (overlong forms, surrogates, values above U+10FFFF and truncated sequences all count as malformed).
int32_t utf8_next(const std::string& s, size_t* pos);
void utf8_append(std::string* out, uint32_t cp);
// The whole string as code points; throws GrpoError naming the byte offset if it is not valid UTF-8.
std::vector<uint32_t> utf8_to_codepoints(const std::string& s);
std::string codepoints_to_utf8(const std::vector<uint32_t>& cps);
bool utf8_valid(const std::string& s);
// Python's len(): code points, not bytes. Assumes valid UTF-8.
size_t utf8_length(const std::string& s);

// Python's str.isspace() for one code point (the White_Space set plus \x1c-\x1f, as CPython defines it).
bool py_isspace(uint32_t cp);
// Python's str.strip() with no argument.
std::string py_strip(const std::string& s);
// Python's str.split(sep) with an explicit, non-empty separator.
std::vector<std::string> py_split(const std::string& s, const std::string& sep);
// Python's str.count(sub): non-overlapping occurrences, scanning left to right.
size_t py_count(const std::string& s, const std::string& sub);
