// chat_template.cpp: renders Qwen2.5-Instruct conversations to text, encodes them, and left-truncates prompt ids.
#include "tokenizer/chat_template.h"
#include "data/text.h"

const char* const QWEN_DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

namespace {

void append_turn(std::string* out, const std::string& role, const std::string& content) {
    *out += "<|im_start|>";
    *out += role;
    *out += "\n";
    *out += content;
    *out += "<|im_end|>\n";
}

}  // namespace

std::string chat_render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
    if (messages.empty())
        throw GrpoError("chat_render: empty conversation: expected at least one message (the official template fails on it too)");
    for (size_t i = 0; i < messages.size(); i++) {
        const std::string& role = messages[i].role;
        if (role != "system" && role != "user" && role != "assistant")
            throw GrpoError("chat_render: message " + std::to_string(i) + " has role \"" + role +
                            "\": expected \"system\", \"user\" or \"assistant\"");
    }
    std::string text;
    // The template prints a leading system message itself and skips it in its loop; any later system
    // message is an ordinary turn. Without one, Qwen's default system prompt goes first.
    size_t first = 0;
    if (messages[0].role == "system") {
        append_turn(&text, "system", messages[0].content);
        first = 1;
    } else {
        append_turn(&text, "system", QWEN_DEFAULT_SYSTEM_PROMPT);
    }
    for (size_t i = first; i < messages.size(); i++) append_turn(&text, messages[i].role, messages[i].content);
    if (add_generation_prompt) text += "<|im_start|>assistant\n";
    return text;
}

std::vector<int> chat_encode(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
    return tokenizer.encode(chat_render(messages, add_generation_prompt));
}

std::vector<int> chat_stop_token_ids(const Tokenizer& tokenizer) {
    std::vector<int> ids;
    for (const char* content : {"<|im_end|>", "<|endoftext|>"}) {
        int id = tokenizer.added_token_id(content);
        if (id < 0)
            throw GrpoError(std::string("tokenizer has no added token ") + content +
                            ": expected a Qwen2.5 tokenizer.json; check the tokenizer path (default " DEFAULT_TOKENIZER_PATH ")");
        ids.push_back(id);
    }
    return ids;
}

bool truncate_prompt_left(std::vector<int>* ids, size_t max_prompt_length) {
    if (max_prompt_length == 0 || ids->size() <= max_prompt_length) return false;
    ids->erase(ids->begin(), ids->end() - (std::ptrdiff_t)max_prompt_length);
    return true;
}

EncodedPrompts encode_prompts(const Tokenizer& tokenizer, const std::vector<std::vector<ChatMessage>>& conversations,
                              size_t max_prompt_length) {
    EncodedPrompts out;
    out.max_prompt_length = max_prompt_length;
    out.ids.reserve(conversations.size());
    for (const std::vector<ChatMessage>& conversation : conversations) {
        std::vector<int> ids = chat_encode(tokenizer, conversation, true);
        out.full_length.push_back(ids.size());
        bool cut = truncate_prompt_left(&ids, max_prompt_length);
        out.truncated.push_back(cut);
        out.num_truncated += cut;
        out.ids.push_back(std::move(ids));
    }
    return out;
}
