// reward_command.cpp: runs the external reward command on a batch through a temporary file and parses its numbers strictly.
#include "reward_command.h"
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/wait.h>
#include <unistd.h>
#include "json.h"
#include "text.h"

namespace {

// POSIX single quotes: everything literal except the quote itself, which is closed, escaped and reopened.
std::string shell_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\'') out += "'\\''";
        else out.push_back(c);
    }
    return out + "'";
}

// The batch file: removed when we are done, unless an error wants it kept for the user to rerun.
struct BatchFile {
    std::string path;
    bool keep = false;
    ~BatchFile() {
        if (!path.empty() && !keep) unlink(path.c_str());
    }
};

std::string line_label(size_t i) { return "line " + std::to_string(i + 1); }

// A number line: optional surrounding blanks, then one C/JSON-style decimal number and nothing else.
bool parse_number_line(std::string line, double* value) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
    size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos) return false;
    const char* begin = line.c_str() + start;
    // strtod also accepts hex floats, "inf" and "nan"; none of those is a reward a user meant to print
    for (const char* p = begin; *p; p++)
        if (!strchr("0123456789+-.eE", *p)) return false;
    char* end = nullptr;
    double x = strtod(begin, &end);  // overflow gives inf, refused below; underflow to a tiny value is fine
    if (end == begin || *end != '\0' || !std::isfinite(x)) return false;
    *value = x;
    return true;
}

}  // namespace

std::vector<double> run_reward_command(const std::string& command, const std::vector<RewardSample>& batch) {
    if (batch.empty()) return {};
    const std::string who = "reward command `" + command + "`";

    const char* tmpdir = getenv("TMPDIR");
    BatchFile file;
    file.path = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/grpo_reward_batch_XXXXXX";
    std::vector<char> path_buf(file.path.begin(), file.path.end());
    path_buf.push_back('\0');
    int fd = mkstemp(path_buf.data());
    if (fd < 0) {
        file.path.clear();
        throw GrpoError(who + ": cannot create a temporary batch file in " + std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") +
                        ": " + strerror(errno) + "; set TMPDIR to a writable folder");
    }
    file.path = path_buf.data();
    FILE* out = fdopen(fd, "wb");
    if (!out) {
        close(fd);
        throw GrpoError(who + ": cannot open the batch file " + file.path + ": " + strerror(errno));
    }
    for (const RewardSample& s : batch) {
        std::string line = "{\"prompt\": " + json_quote(s.prompt) + ", \"completion\": " + json_quote(s.completion) +
                           ", \"answer\": " + json_quote(s.answer) + "}\n";
        fwrite(line.data(), 1, line.size(), out);
    }
    if (fclose(out) != 0)
        throw GrpoError(who + ": cannot write the batch file " + file.path + " (disk full?); free space in TMPDIR");

    fflush(nullptr);  // the child inherits our stdio buffers' file descriptors, not their contents
    std::string shell_line = "(" + command + ") < " + shell_quote(file.path);
    FILE* pipe = popen(shell_line.c_str(), "r");
    if (!pipe) throw GrpoError(who + ": cannot start /bin/sh: " + strerror(errno));
    std::string output;
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) output.append(buf, n);
    int status = pclose(pipe);

    const std::string rerun = "; rerun it by hand with `(" + command + ") < " + file.path + "` to see why";
    if (status == -1) {
        file.keep = true;
        throw GrpoError(who + ": could not collect its exit status: " + strerror(errno) + rerun);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        file.keep = true;
        std::string how = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                            : "was killed by signal " + std::to_string(WTERMSIG(status));
        throw GrpoError(who + " " + how + " on a batch of " + std::to_string(batch.size()) + " completions" + rerun);
    }

    std::vector<std::string> lines = py_split(output, "\n");
    if (!lines.empty() && lines.back().empty()) lines.pop_back();  // the newline that ends the last line
    if (lines.size() != batch.size()) {
        file.keep = true;
        throw GrpoError(who + " printed " + std::to_string(lines.size()) + " lines for " + std::to_string(batch.size()) +
                        " completions: expected exactly one number per input line, in order (print nothing else to stdout; "
                        "use stderr for messages)" + rerun);
    }
    std::vector<double> rewards(batch.size());
    for (size_t i = 0; i < lines.size(); i++) {
        if (!parse_number_line(lines[i], &rewards[i])) {
            file.keep = true;
            std::string shown = lines[i].size() > 80 ? lines[i].substr(0, 80) + "..." : lines[i];
            throw GrpoError(who + ": output " + line_label(i) + " is " + json_quote(shown) +
                            ", expected one finite decimal number (e.g. 0.5) for input " + line_label(i) + rerun);
        }
    }
    return rewards;
}
