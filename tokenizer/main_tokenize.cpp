// main_tokenize.cpp: the `tokenize` program: text on stdin to Qwen2.5 token ids as JSON, or ids back to text with --decode.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <string>
#include "data/json.h"
#include "data/text.h"
#include "tokenizer/tokenizer.h"

static const char kUsage[] =
    "usage: tokenize [-t TOKENIZER_JSON] [--jsonl | --decode [--skip-special]]\n"
    "  (default)       read all of stdin as UTF-8 text, print its ids as one JSON array\n"
    "  --jsonl         read one JSON string per line, print one JSON array of ids per line\n"
    "  --decode        read one JSON array of ids per line, print one JSON string per line\n"
    "  --skip-special  with --decode, drop special tokens (<|endoftext|>, <|im_start|>, ...)\n"
    "  -t PATH         the tokenizer.json to use (default " DEFAULT_TOKENIZER_PATH ", made by `make tokenizer`)\n"
    "Blank input lines are skipped in the line modes.\n";

static std::string ids_json(const std::vector<int>& ids) {
    std::string out = "[";
    for (size_t i = 0; i < ids.size(); i++) {
        if (i) out += ',';
        out += std::to_string(ids[i]);
    }
    return out + "]";
}

// The next line's JSON value; a malformed line's error also says what the mode reads.
static bool next_line(JsonlReader* reader, JsonValue* line, const std::string& expected) {
    try {
        return reader->next(line);
    } catch (const GrpoError& e) {
        throw GrpoError(e.what() + expected);
    }
}

static void encode_lines(const Tokenizer& tokenizer) {
    JsonlReader reader("-");
    JsonValue line;
    while (next_line(&reader, &line, "; --jsonl reads one JSON string per line")) {
        if (!line.is_string())
            throw GrpoError(reader.where() + ": expected a JSON string (text to encode), got a JSON " + line.type_name() +
                            "; --jsonl reads one JSON string per line");
        std::string out = ids_json(tokenizer.encode(line.string));
        std::fwrite(out.data(), 1, out.size(), stdout);
        std::fputc('\n', stdout);
    }
}

static void decode_lines(const Tokenizer& tokenizer, bool skip_special) {
    JsonlReader reader("-");
    JsonValue line;
    std::string expected = "; --decode reads one JSON array of token ids (integers 0.." +
                           std::to_string(tokenizer.vocab_size() - 1) + ") per line";
    while (next_line(&reader, &line, expected)) {
        if (!line.is_array()) throw GrpoError(reader.where() + ": expected a JSON array of token ids, got a JSON " + line.type_name() + expected);
        std::vector<int> ids;
        for (size_t i = 0; i < line.array.size(); i++) {
            const JsonValue& v = line.array[i];
            if (!v.is_number() || v.number != (double)(long long)v.number || v.number < 0 || v.number >= tokenizer.vocab_size())
                throw GrpoError(reader.where() + ": element " + std::to_string(i) + " is " +
                                (v.is_number() ? json_number(v.number) : std::string("a JSON ") + v.type_name()) +
                                ", not a token id" + expected);
            ids.push_back((int)v.number);
        }
        std::string out;
        try {
            out = json_quote(tokenizer.decode(ids, skip_special));
        } catch (const GrpoError& e) {
            throw GrpoError(reader.where() + ": " + e.what());
        }
        std::fwrite(out.data(), 1, out.size(), stdout);
        std::fputc('\n', stdout);
    }
}

int main(int argc, char** argv) {
    std::string path = DEFAULT_TOKENIZER_PATH;
    bool jsonl = false, decode = false, skip_special = false;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        if ((arg == "-t" || arg == "--tokenizer") && i + 1 < argc) path = argv[++i];
        else if (arg == "--jsonl") jsonl = true;
        else if (arg == "--decode") decode = true;
        else if (arg == "--skip-special") skip_special = true;
        else if (arg == "-h" || arg == "--help") { std::fputs(kUsage, stdout); return 0; }
        else {
            std::fprintf(stderr, "tokenize: unknown or incomplete option '%s'\n%s", arg.c_str(), kUsage);
            return 1;
        }
    }
    if (jsonl && decode) { std::fprintf(stderr, "tokenize: --jsonl and --decode exclude each other\n%s", kUsage); return 1; }
    if (skip_special && !decode) { std::fprintf(stderr, "tokenize: --skip-special only applies with --decode\n%s", kUsage); return 1; }
    try {
        Tokenizer tokenizer = Tokenizer::load(path);
        if (decode) {
            decode_lines(tokenizer, skip_special);
        } else if (jsonl) {
            encode_lines(tokenizer);
        } else {
            std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
            try {
                std::printf("%s\n", ids_json(tokenizer.encode(text)).c_str());
            } catch (const GrpoError& e) {
                throw GrpoError(std::string("<stdin>: ") + e.what());
            }
        }
    } catch (const GrpoError& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "tokenize: %s\n", e.what());
        return 1;
    }
    return 0;
}
