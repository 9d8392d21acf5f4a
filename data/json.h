// json.h: a small strict JSON reader (RFC 8259, full string escapes with surrogate pairs), a writer for strings, and JSONL files.
#pragma once
#include <cstdio>
#include <string>
#include <utility>
#include <vector>
#include "text.h"

struct JsonValue {
    enum Type { NUL, BOOL, NUMBER, STRING, ARRAY, OBJECT };
    Type type = NUL;
    bool boolean = false;
    double number = 0.0;
    std::string string;  // UTF-8
    std::vector<JsonValue> array;
    std::vector<std::pair<std::string, JsonValue>> object;  // in file order; keys may repeat, get() takes the last like Python

    bool is_string() const { return type == STRING; }
    bool is_number() const { return type == NUMBER; }
    bool is_array() const { return type == ARRAY; }
    bool is_object() const { return type == OBJECT; }
    // The member named key, or nullptr when this is not an object or has no such member.
    const JsonValue* get(const std::string& key) const;
    const char* type_name() const;
};

// Parses exactly one JSON value surrounded by optional whitespace. Throws GrpoError whose message starts
// with `where` (a file name, or file:line) and gives the column and what was expected.
JsonValue json_parse(const std::string& text, const std::string& where);
// Reads and parses a whole file.
JsonValue json_parse_file(const std::string& path);

// A JSON string literal for UTF-8 text: quotes, backslash and control characters escaped, the rest kept as UTF-8.
std::string json_quote(const std::string& utf8);
// A double as JSON with 17 significant digits (round-trips exactly); non-finite values become null.
std::string json_number(double x);
// A float as the shortest decimal that reads back as the same float ("16", "0.1", "1e-06"), for JSON that
// Python writes from fp32 values; non-finite values become null.
std::string json_number_f32(float x);

// Reads a JSON Lines file one value at a time. Lines holding only whitespace are skipped (an editor's
// trailing newline is not a record); every other line must be exactly one JSON value, or next() throws
// a GrpoError naming path:line. Nothing is ever dropped silently.
class JsonlReader {
public:
    // path is used in messages; "-" reads standard input.
    explicit JsonlReader(const std::string& path);
    ~JsonlReader();
    JsonlReader(const JsonlReader&) = delete;
    JsonlReader& operator=(const JsonlReader&) = delete;
    // Returns false at end of file.
    bool next(JsonValue* value);
    size_t line_number() const { return line_no_; }
    const std::string& path() const { return path_; }
    // "path:line", for messages about the value just read.
    std::string where() const;
private:
    std::string path_;
    FILE* file_ = nullptr;
    bool owns_file_ = false;
    size_t line_no_ = 0;
    std::string line_;
};

// Every value of a JSONL file, in order.
std::vector<JsonValue> jsonl_read_all(const std::string& path);
