// text.cpp: reading a whole file, UTF-8 decoding and encoding, and Python's isspace/strip/split/count on UTF-8 strings.
#include "text.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

std::string read_file(const std::string& path) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) throw GrpoError(path + ": cannot open: " + strerror(errno) + "; check the path");
    std::string bytes;
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) bytes.append(buf, n);
    bool failed = ferror(f);
    fclose(f);
    if (failed) throw GrpoError(path + ": read error");
    return bytes;
}

int32_t utf8_next(const std::string& s, size_t* pos) {
    size_t i = *pos;
    if (i >= s.size()) return -1;
    uint8_t b0 = (uint8_t)s[i];
    if (b0 < 0x80) { *pos = i + 1; return b0; }
    int n;
    uint32_t cp, min;
    if ((b0 & 0xE0) == 0xC0) { n = 1; cp = b0 & 0x1F; min = 0x80; }
    else if ((b0 & 0xF0) == 0xE0) { n = 2; cp = b0 & 0x0F; min = 0x800; }
    else if ((b0 & 0xF8) == 0xF0) { n = 3; cp = b0 & 0x07; min = 0x10000; }
    else return -1;
    for (int k = 1; k <= n; k++) {
        if (i + k >= s.size()) return -1;
        uint8_t b = (uint8_t)s[i + k];
        if ((b & 0xC0) != 0x80) return -1;
        cp = (cp << 6) | (b & 0x3F);
    }
    // overlong encodings and UTF-16 surrogates are not valid UTF-8
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    *pos = i + n + 1;
    return (int32_t)cp;
}

void utf8_append(std::string* out, uint32_t cp) {
    if (cp < 0x80) {
        out->push_back((char)cp);
    } else if (cp < 0x800) {
        out->push_back((char)(0xC0 | (cp >> 6)));
        out->push_back((char)(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out->push_back((char)(0xE0 | (cp >> 12)));
        out->push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
        out->push_back((char)(0x80 | (cp & 0x3F)));
    } else {
        out->push_back((char)(0xF0 | (cp >> 18)));
        out->push_back((char)(0x80 | ((cp >> 12) & 0x3F)));
        out->push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
        out->push_back((char)(0x80 | (cp & 0x3F)));
    }
}

std::vector<uint32_t> utf8_to_codepoints(const std::string& s) {
    std::vector<uint32_t> cps;
    cps.reserve(s.size());
    size_t pos = 0;
    while (pos < s.size()) {
        size_t at = pos;
        int32_t cp = utf8_next(s, &pos);
        if (cp < 0) throw GrpoError("invalid UTF-8 at byte " + std::to_string(at) + ": expected a well-formed UTF-8 sequence; re-encode the text as UTF-8");
        cps.push_back((uint32_t)cp);
    }
    return cps;
}

std::string codepoints_to_utf8(const std::vector<uint32_t>& cps) {
    std::string out;
    out.reserve(cps.size());
    for (uint32_t cp : cps) utf8_append(&out, cp);
    return out;
}

bool utf8_valid(const std::string& s) {
    size_t pos = 0;
    while (pos < s.size()) if (utf8_next(s, &pos) < 0) return false;
    return true;
}

size_t utf8_length(const std::string& s) {
    size_t n = 0;
    // every code point has exactly one byte that is not a continuation byte
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

bool py_isspace(uint32_t cp) {
    // CPython: Unicode bidirectional type WS, B or S, or category Zs. That is White_Space
    // plus the information separators \x1c-\x1f, which surprise people; keep them.
    if (cp >= 0x09 && cp <= 0x0D) return true;
    if (cp >= 0x1C && cp <= 0x20) return true;
    switch (cp) {
        case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029:
        case 0x202F: case 0x205F: case 0x3000:
            return true;
    }
    return cp >= 0x2000 && cp <= 0x200A;
}

std::string py_strip(const std::string& s) {
    std::vector<uint32_t> cps = utf8_to_codepoints(s);
    size_t begin = 0, end = cps.size();
    while (begin < end && py_isspace(cps[begin])) begin++;
    while (end > begin && py_isspace(cps[end - 1])) end--;
    return codepoints_to_utf8(std::vector<uint32_t>(cps.begin() + begin, cps.begin() + end));
}

std::vector<std::string> py_split(const std::string& s, const std::string& sep) {
    if (sep.empty()) throw GrpoError("py_split: empty separator (Python raises ValueError here too)");
    std::vector<std::string> parts;
    size_t start = 0;
    for (;;) {
        size_t at = s.find(sep, start);
        if (at == std::string::npos) break;
        parts.push_back(s.substr(start, at - start));
        start = at + sep.size();
    }
    parts.push_back(s.substr(start));
    return parts;
}

size_t py_count(const std::string& s, const std::string& sub) {
    // Python's "abc".count("") is len+1; no caller needs that, so an empty needle is a bug here.
    if (sub.empty()) throw GrpoError("py_count: empty substring");
    size_t n = 0, start = 0;
    for (;;) {
        size_t at = s.find(sub, start);
        if (at == std::string::npos) return n;
        n++;
        start = at + sub.size();
    }
}
