// bench_tokenizer.cpp: times loading tokenizer.json and encoding every GSM8K train question (and the adversarial corpus) on one core.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>
#include "data/json.h"
#include "data/text.h"
#include "tokenizer/tokenizer.h"

static double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int main(int argc, char** argv) {
    std::string tokenizer_path = argc > 1 ? argv[1] : DEFAULT_TOKENIZER_PATH;
    std::string data_path = argc > 2 ? argv[2] : "data/gsm8k/train.jsonl";
    // 3,000-character words and long whitespace runs: a quadratic step would show here first.
    std::string adversarial_path = "test/corpus/tokenizer_adversarial.jsonl";
    try {
        auto start = std::chrono::steady_clock::now();
        Tokenizer tokenizer = Tokenizer::load(tokenizer_path);
        double load_s = seconds_since(start);

        std::vector<std::string> questions;
        JsonlReader reader(data_path);
        JsonValue record;
        while (reader.next(&record)) {
            const JsonValue* q = record.get("question");
            if (!q || !q->is_string()) throw GrpoError(reader.where() + ": expected an object with a \"question\" string");
            questions.push_back(q->string);
        }
        size_t bytes = 0;
        for (const std::string& q : questions) bytes += q.size();

        start = std::chrono::steady_clock::now();
        size_t tokens = 0;
        for (const std::string& q : questions) tokens += tokenizer.encode(q).size();
        double encode_s = seconds_since(start);

        std::vector<std::string> adversarial;
        for (const JsonValue& line : jsonl_read_all(adversarial_path)) adversarial.push_back(line.string);
        size_t adversarial_bytes = 0;
        for (const std::string& t : adversarial) adversarial_bytes += t.size();
        start = std::chrono::steady_clock::now();
        size_t adversarial_tokens = 0;
        for (const std::string& t : adversarial) adversarial_tokens += tokenizer.encode(t).size();
        double adversarial_s = seconds_since(start);

        std::printf("tokenizer: load %.3f s (%s)\n", load_s, tokenizer_path.c_str());
        std::printf("tokenizer: encode %zu questions (%zu bytes) in %.3f s: %zu tokens, %.0f tokens/s, %.1f MB/s\n",
                    questions.size(), bytes, encode_s, tokens, tokens / encode_s, bytes / encode_s / 1e6);
        std::printf("tokenizer: encode %zu adversarial texts (%zu bytes) in %.3f s: %zu tokens\n", adversarial.size(),
                    adversarial_bytes, adversarial_s, adversarial_tokens);
    } catch (const GrpoError& e) {
        std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
        return 1;
    }
    return 0;
}
