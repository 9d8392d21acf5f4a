// json.cpp: recursive-descent JSON parser with exact error positions, string quoting, and the JSONL reader.
#include "json.h"
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

const JsonValue* JsonValue::get(const std::string& key) const {
    if (type != OBJECT) return nullptr;
    for (size_t i = object.size(); i-- > 0;)
        if (object[i].first == key) return &object[i].second;
    return nullptr;
}

const char* JsonValue::type_name() const {
    switch (type) {
        case NUL: return "null";
        case BOOL: return "boolean";
        case NUMBER: return "number";
        case STRING: return "string";
        case ARRAY: return "array";
        case OBJECT: return "object";
    }
    return "?";
}

namespace {

// Deep nesting would overflow the C++ stack; no real input comes near this.
const int kMaxDepth = 512;

struct Parser {
    const std::string& text;
    const std::string& where;
    size_t pos = 0;

    [[noreturn]] void fail(const std::string& what) const {
        // report line and column (1-based, in bytes) so a user can find the spot in an editor
        size_t line = 1, col = 1;
        for (size_t i = 0; i < pos && i < text.size(); i++) {
            if (text[i] == '\n') { line++; col = 1; } else col++;
        }
        std::string at = where;
        if (text.find('\n') != std::string::npos) at += ": line " + std::to_string(line);
        throw GrpoError(at + ": column " + std::to_string(col) + ": " + what);
    }

    void skip_ws() {
        while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\n' || text[pos] == '\r')) pos++;
    }

    void expect_literal(const char* lit) {
        size_t n = strlen(lit);
        if (text.compare(pos, n, lit) != 0) fail(std::string("expected '") + lit + "'");
        pos += n;
    }

    uint32_t hex4() {
        if (pos + 4 > text.size()) fail("truncated \\u escape: expected 4 hex digits");
        uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            char c = text[pos + k];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= c - '0';
            else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
            else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
            else fail("bad \\u escape: expected 4 hex digits");
        }
        pos += 4;
        return v;
    }

    std::string parse_string() {
        pos++;  // opening quote
        std::string out;
        for (;;) {
            if (pos >= text.size()) fail("unterminated string: expected a closing '\"'");
            unsigned char c = (unsigned char)text[pos];
            if (c == '"') { pos++; return out; }
            if (c < 0x20) fail("raw control character in string: expected it escaped (\\n, \\t, \\u00XX)");
            if (c != '\\') {
                size_t start = pos;
                if (c < 0x80) { out.push_back((char)c); pos++; continue; }
                if (utf8_next(text, &pos) < 0) { pos = start; fail("invalid UTF-8 in string"); }
                out.append(text, start, pos - start);
                continue;
            }
            pos++;
            if (pos >= text.size()) fail("unterminated escape in string");
            char e = text[pos++];
            switch (e) {
                case '"': out.push_back('"'); break;
                case '\\': out.push_back('\\'); break;
                case '/': out.push_back('/'); break;
                case 'b': out.push_back('\b'); break;
                case 'f': out.push_back('\f'); break;
                case 'n': out.push_back('\n'); break;
                case 'r': out.push_back('\r'); break;
                case 't': out.push_back('\t'); break;
                case 'u': {
                    uint32_t cp = hex4();
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        // a high surrogate must be followed by an escaped low surrogate: together one code point
                        if (text.compare(pos, 2, "\\u") != 0) fail("unpaired high surrogate: expected a \\uDC00-\\uDFFF escape next");
                        pos += 2;
                        uint32_t lo = hex4();
                        if (lo < 0xDC00 || lo > 0xDFFF) fail("unpaired high surrogate: expected a \\uDC00-\\uDFFF escape next");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        fail("unpaired low surrogate escape: it must follow a high surrogate \\uD800-\\uDBFF");
                    }
                    utf8_append(&out, cp);
                    break;
                }
                default:
                    pos--;
                    fail(std::string("bad escape '\\") + e + "': expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX");
            }
        }
    }

    double parse_number() {
        size_t start = pos;
        if (text[pos] == '-') pos++;
        if (pos < text.size() && text[pos] == '0') pos++;
        else if (pos < text.size() && text[pos] >= '1' && text[pos] <= '9') while (pos < text.size() && isdigit((unsigned char)text[pos])) pos++;
        else fail("bad number: expected a digit");
        if (pos < text.size() && text[pos] == '.') {
            pos++;
            if (pos >= text.size() || !isdigit((unsigned char)text[pos])) fail("bad number: expected a digit after '.'");
            while (pos < text.size() && isdigit((unsigned char)text[pos])) pos++;
        }
        if (pos < text.size() && (text[pos] == 'e' || text[pos] == 'E')) {
            pos++;
            if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) pos++;
            if (pos >= text.size() || !isdigit((unsigned char)text[pos])) fail("bad number: expected a digit in the exponent");
            while (pos < text.size() && isdigit((unsigned char)text[pos])) pos++;
        }
        std::string num(text, start, pos - start);
        return strtod(num.c_str(), nullptr);
    }

    JsonValue parse_value(int depth) {
        if (depth > kMaxDepth) fail("nesting deeper than 512 levels");
        skip_ws();
        if (pos >= text.size()) fail("unexpected end of input: expected a value");
        JsonValue v;
        char c = text[pos];
        if (c == '{') {
            v.type = JsonValue::OBJECT;
            pos++;
            skip_ws();
            if (pos < text.size() && text[pos] == '}') { pos++; return v; }
            for (;;) {
                skip_ws();
                if (pos >= text.size() || text[pos] != '"') fail("expected a '\"' to start an object key");
                std::string key = parse_string();
                skip_ws();
                if (pos >= text.size() || text[pos] != ':') fail("expected ':' after an object key");
                pos++;
                v.object.emplace_back(std::move(key), parse_value(depth + 1));
                skip_ws();
                if (pos < text.size() && text[pos] == ',') { pos++; continue; }
                if (pos < text.size() && text[pos] == '}') { pos++; return v; }
                fail("expected ',' or '}' in object");
            }
        }
        if (c == '[') {
            v.type = JsonValue::ARRAY;
            pos++;
            skip_ws();
            if (pos < text.size() && text[pos] == ']') { pos++; return v; }
            for (;;) {
                v.array.push_back(parse_value(depth + 1));
                skip_ws();
                if (pos < text.size() && text[pos] == ',') { pos++; continue; }
                if (pos < text.size() && text[pos] == ']') { pos++; return v; }
                fail("expected ',' or ']' in array");
            }
        }
        if (c == '"') { v.type = JsonValue::STRING; v.string = parse_string(); return v; }
        if (c == 't') { expect_literal("true"); v.type = JsonValue::BOOL; v.boolean = true; return v; }
        if (c == 'f') { expect_literal("false"); v.type = JsonValue::BOOL; return v; }
        if (c == 'n') { expect_literal("null"); return v; }
        if (c == '-' || (c >= '0' && c <= '9')) { v.type = JsonValue::NUMBER; v.number = parse_number(); return v; }
        // name a non-printable byte by its value: printed raw it would garble the message
        char shown[16];
        if (c >= 0x20 && c < 0x7F) snprintf(shown, sizeof(shown), "'%c'", c);
        else snprintf(shown, sizeof(shown), "byte 0x%02X", (unsigned char)c);
        fail(std::string("unexpected ") + shown + ": expected a JSON value");
    }
};

}  // namespace

JsonValue json_parse(const std::string& text, const std::string& where) {
    Parser p{text, where};
    JsonValue v = p.parse_value(0);
    p.skip_ws();
    if (p.pos != text.size()) p.fail("unexpected text after the JSON value: expected one value only");
    return v;
}

JsonValue json_parse_file(const std::string& path) { return json_parse(read_file(path), path); }

std::string json_quote(const std::string& utf8) {
    std::string out = "\"";
    for (unsigned char c : utf8) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            default:
                if (c < 0x20 || c == 0x7F) {
                    char esc[8];
                    snprintf(esc, sizeof(esc), "\\u%04x", c);
                    out += esc;
                } else {
                    out.push_back((char)c);
                }
        }
    }
    out.push_back('"');
    return out;
}

std::string json_number(double x) {
    if (!std::isfinite(x)) return "null";
    char buf[40];
    snprintf(buf, sizeof(buf), "%.17g", x);
    return buf;
}

std::string json_number_f32(float x) {
    if (!std::isfinite(x)) return "null";
    // The fewest digits that read back as x: 16 stays "16", 0.1f is "0.1", not 0.100000001.
    char buf[40];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, sizeof(buf), "%.*g", digits, (double)x);
        if (strtof(buf, nullptr) == x) break;
    }
    return buf;
}

JsonlReader::JsonlReader(const std::string& path) : path_(path) {
    if (path == "-") {
        file_ = stdin;
        path_ = "<stdin>";
    } else {
        file_ = fopen(path.c_str(), "rb");
        if (!file_) throw GrpoError(path + ": cannot open: " + strerror(errno) + "; check the path");
        owns_file_ = true;
    }
}

JsonlReader::~JsonlReader() {
    if (owns_file_ && file_) fclose(file_);
}

std::string JsonlReader::where() const { return path_ + ":" + std::to_string(line_no_); }

bool JsonlReader::next(JsonValue* value) {
    for (;;) {
        line_.clear();
        int c;
        bool any = false;
        while ((c = fgetc(file_)) != EOF) {
            any = true;
            if (c == '\n') break;
            line_.push_back((char)c);
        }
        if (!any) {
            if (ferror(file_)) throw GrpoError(path_ + ": read error after line " + std::to_string(line_no_));
            return false;
        }
        line_no_++;
        bool blank = true;
        for (char ch : line_) if (ch != ' ' && ch != '\t' && ch != '\r') { blank = false; break; }
        if (blank) continue;
        *value = json_parse(line_, where());
        return true;
    }
}

std::vector<JsonValue> jsonl_read_all(const std::string& path) {
    JsonlReader reader(path);
    std::vector<JsonValue> values;
    JsonValue v;
    while (reader.next(&v)) values.push_back(std::move(v));
    return values;
}
