// reward_command.h: an external reward program, any language: JSON lines in on its stdin, one number per line out on its stdout.
#pragma once
#include <string>
#include <vector>

struct RewardSample {
    std::string prompt;      // the chat-formatted prompt text the completion continues
    std::string completion;  // decoded, special tokens skipped
    std::string answer;      // the reference answer
};

// Runs `command` with /bin/sh once for the whole batch. Its stdin is one JSON line per sample,
// {"prompt": ..., "completion": ..., "answer": ...}, in order; it must print exactly one finite number
// per line on stdout, in the same order, and exit 0. Its stderr passes through to ours.
// The batch is written to a temporary file first and the command reads it as `(command) < file`, so a
// command that prints before reading everything cannot deadlock against us.
// Throws GrpoError naming the command and what went wrong (exit status, line count, the bad line);
// the batch file is then kept, and the message names it, so the command can be rerun by hand.
std::vector<double> run_reward_command(const std::string& command, const std::vector<RewardSample>& batch);
