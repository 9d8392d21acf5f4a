// test_util.h: helpers the CPU test files share: scratch folders and files, GrpoError messages, shell commands, and where the oracles and reference dumps live.
#pragma once
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "data/json.h"
#include "data/text.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

// ---- scratch folders and files ------------------------------------------------------------------------

// A fresh folder /tmp/PREFIX_XXXXXX for one test case, removed with everything in it when the case ends.
struct TempDir {
    std::string path;
    explicit TempDir(const std::string& prefix = "grpo_test") {
        std::string pattern = "/tmp/" + prefix + "_XXXXXX";
        std::vector<char> name(pattern.begin(), pattern.end());
        name.push_back('\0');
        if (!mkdtemp(name.data())) FAIL("mkdtemp failed for " << pattern);
        path = name.data();
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string operator/(const std::string& name) const { return path + "/" + name; }
};

// A file under TMPDIR (or /tmp) holding `contents`, its name ending in `suffix` (".jsonl", say), removed
// when the test case ends.
struct TempFile {
    std::string path;
    explicit TempFile(const std::string& contents, const std::string& suffix = "") {
        const char* dir = getenv("TMPDIR");
        std::string pattern = std::string(dir && *dir ? dir : "/tmp") + "/grpo_test_XXXXXX" + suffix;
        std::vector<char> name(pattern.begin(), pattern.end());
        name.push_back('\0');
        int fd = mkstemps(name.data(), (int)suffix.size());
        REQUIRE(fd >= 0);
        path = name.data();
        REQUIRE(write(fd, contents.data(), contents.size()) == (ssize_t)contents.size());
        close(fd);
    }
    ~TempFile() { unlink(path.c_str()); }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
};

// Writes `bytes` to PATH (read files back with read_file from data/text.h).
inline void write_file(const std::string& path, const std::string& bytes) {
    FILE* f = fopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    bool ok = fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    ok = fclose(f) == 0 && ok;
    REQUIRE(ok);
}

inline bool exists(const std::string& path) { return std::filesystem::exists(path); }

// The text with its one occurrence of `from` replaced; fails the test when it is not there exactly once.
inline std::string replace_once(std::string text, const std::string& from, const std::string& to) {
    size_t at = text.find(from);
    REQUIRE(at != std::string::npos);
    REQUIRE(text.find(from, at + 1) == std::string::npos);
    return text.replace(at, from.size(), to);
}

// The records of a JSONL file (a train_grpo log.jsonl, say), one per line.
inline std::vector<JsonValue> read_log(const std::string& path) {
    std::vector<JsonValue> lines;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) lines.push_back(json_parse(line, path));
    return lines;
}

// ---- errors and programs -----------------------------------------------------------------------------

// The message of the GrpoError that f throws, or "(no GrpoError thrown)", which no expected message matches.
inline std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const GrpoError& e) {
        return e.what();
    }
    return "(no GrpoError thrown)";
}

struct CommandResult {
    int exit_code;       // -1 when the command did not exit normally
    std::string output;  // its stdout; append " 2>&1" to the command to capture stderr too
};

inline CommandResult run_shell(const std::string& command) {
    FILE* pipe = popen(command.c_str(), "r");
    REQUIRE(pipe != nullptr);
    CommandResult result;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) result.output.append(buf, n);
    int status = pclose(pipe);
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return result;
}

// Fails the test unless the program (built by `make TARGET`) is there, e.g. require_program("./quantize", "quantize").
inline void require_program(const std::string& path, const std::string& make_target) {
    if (access(path.c_str(), X_OK) != 0)
        FAIL(path << " is missing: run `make " << make_target << "` (or `make test`) from the repository root");
}

// ---- oracles and reference dumps ---------------------------------------------------------------------

// A file the oracles (dev/oracle/, run by `make oracles`) wrote into build/oracle/; fails the test loudly
// when they have not been generated.
inline std::string oracle_file(const std::string& name) {
    std::string path = "build/oracle/" + name;
    if (access(path.c_str(), R_OK) != 0) FAIL(path << " is missing: run `make test` (it generates build/oracle first)");
    return path;
}

// Written by dev/ref/qwen2_grpo_ref.py (torch 2.11, transformers 5.17, peft 0.21 on an H200) and committed:
// one folder per tiny model, see the file's header for what each holds.
inline const std::string REF_DIR = "test/ref/qwen2/";
inline const char* const REF_MODELS[] = {"tiny_tied", "tiny_untied"};

// The CPU build of the trainer that the end-to-end tests run, and the tiny model they train.
inline const char* const kTrainer = "./build/train_grpo_cpu";
inline const std::string kTinyModel = REF_DIR + "tiny_tied/hf";
// Fails the test unless kTrainer has been built.
inline void require_trainer() { require_program(kTrainer, "build/train_grpo_cpu"); }

// The dump's name for a LoRA matrix: "layers.0.self_attn.q_proj.lora_A" (PEFT's key without its prefix and suffix).
inline std::string ref_lora_name(int layer, int slot, char matrix) {
    return "layers." + std::to_string(layer) + "." + linear_parent(slot) + "." + LINEAR_NAMES[slot] + ".lora_" + std::string(1, matrix);
}

// ---- the safetensors fixtures (test_safetensors.cpp, test_config.cpp) --------------------------------

// The folder dev/ref/make_safetensors_fixtures.py wrote (once per process, removed at exit).
inline const std::string& safetensors_fixture_dir() {
    struct FixtureDir : TempDir {
        FixtureDir() : TempDir("grpo_safetensors") {
            std::string cmd = "python3 dev/ref/make_safetensors_fixtures.py " + path;
            if (system(cmd.c_str()) != 0) FAIL("fixture writer failed (run the tests from the repository root): " + cmd);
        }
    };
    static FixtureDir dir;
    return dir.path;
}
inline std::string fixture(const std::string& rel) { return safetensors_fixture_dir() + "/" + rel; }

// The fixture formula (see the script's header): code = (i * 31 + seed) % 251, seed = byte sum of name % 251.
inline int fixture_value_code(const std::string& name, int64_t i) {
    int seed = 0;
    for (unsigned char c : name) seed += c;
    return (int)((i * 31 + seed % 251) % 251);
}
inline float fixture_float(const std::string& name, int64_t i) { return (fixture_value_code(name, i) - 125) / 128.0f; }

// ---- the tokenizer ------------------------------------------------------------------------------------

// Qwen2.5's tokenizer, loaded once and shared by every test that needs ids.
inline const Tokenizer& qwen_tokenizer() {
    if (access(DEFAULT_TOKENIZER_PATH, R_OK) != 0) FAIL(DEFAULT_TOKENIZER_PATH << " is missing: run `make tokenizer` (or `make test`)");
    static const Tokenizer tokenizer = Tokenizer::load(DEFAULT_TOKENIZER_PATH);
    return tokenizer;
}
