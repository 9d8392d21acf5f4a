// chat_template.h: the Qwen2.5-Instruct chat template, conversations to prompt ids, and TRL-style left-truncation of prompts.
#pragma once
#include <cstddef>
#include <string>
#include <vector>
#include "tokenizer/tokenizer.h"

struct ChatMessage {
    std::string role;     // "system", "user" or "assistant"
    std::string content;  // UTF-8; rendered verbatim, so "<|im_end|>" typed inside content becomes that special token
};

// What the official template inserts when a conversation does not open with a system message.
extern const char* const QWEN_DEFAULT_SYSTEM_PROMPT;

// The text of tokenizer_config.json's chat_template (no tools) for these messages: every message as
// "<|im_start|>{role}\n{content}<|im_end|>\n", the default system message first when the first message is not
// a system message, then "<|im_start|>assistant\n" when add_generation_prompt. Throws GrpoError for an
// empty conversation or a role other than system/user/assistant (the template would silently drop or
// reinterpret it, which is never what a caller meant).
std::string chat_render(const std::vector<ChatMessage>& messages, bool add_generation_prompt = true);

// chat_render, then Tokenizer::encode without special tokens added: what TRL feeds the model
// (apply_chat_template to text, then tokenizer(text, add_special_tokens=False)).
std::vector<int> chat_encode(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt = true);

// The ids that end a sampled completion: <|im_end|> (the template's end of turn) and <|endoftext|>
// (the pad/eos token). Looked up by content; throws GrpoError if this tokenizer lacks either.
std::vector<int> chat_stop_token_ids(const Tokenizer& tokenizer);

// Keeps the last max_prompt_length ids, as TRL does with prompt_ids[:, -max_prompt_length:]: the start of
// a long prompt (the system message) is what gets lost, the question and generation prompt survive.
// max_prompt_length 0 means no limit (TRL's None). Returns whether anything was cut.
bool truncate_prompt_left(std::vector<int>* ids, size_t max_prompt_length);

// Prompt ids of many conversations after left-truncation, with the numbers a run should log.
struct EncodedPrompts {
    std::vector<std::vector<int>> ids;  // per prompt, at most max_prompt_length ids
    std::vector<size_t> full_length;    // per prompt, the length in tokens before truncation
    std::vector<bool> truncated;        // per prompt, whether truncation cut it
    size_t num_truncated = 0;           // how many prompts were cut
    size_t max_prompt_length = 0;       // the limit applied (0: none)
};

// Encodes every conversation with the generation prompt and left-truncates each to max_prompt_length.
EncodedPrompts encode_prompts(const Tokenizer& tokenizer, const std::vector<std::vector<ChatMessage>>& conversations,
                              size_t max_prompt_length);
