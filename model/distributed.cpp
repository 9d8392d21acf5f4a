// distributed.cpp: ranks from flags or the launcher's environment, the prompt split, and the file-system rendezvous and collectives of data-parallel GRPO (see distributed.h).
#include "model/distributed.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <unistd.h>

#include "data/atomic_file.h"
#include "data/rng.h"
#include "data/text.h"

// ---- who is who ------------------------------------------------------------------------------------------

static int parse_env_int(const char* name, const char* value) {
    char* end = nullptr;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end != '\0' || v < 0 || v > (1 << 20))
        throw GrpoError(std::string("environment variable ") + name + "='" + value +
                        "' is not a rank or process count; unset it or pass --world-size and --rank");
    return (int)v;
}

DistConfig dist_config_resolve(int flag_world_size, int flag_rank, const EnvLookup& env) {
    // the launchers we read, in order: each names (world size, rank, local rank) variables
    struct Launcher { const char *name, *size, *rank, *local; };
    static const Launcher launchers[] = {
        {"mpirun (Open MPI)", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"},
        {"mpirun (MPICH / PMI)", "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"},
        {"Slurm (srun)", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"},
    };
    DistConfig d;
    const char* size_name = "--world-size";
    const char* rank_name = "--rank";
    if (flag_world_size > 0 || flag_rank >= 0) {
        if (flag_world_size <= 0)
            throw GrpoError("--rank " + std::to_string(flag_rank) + " needs --world-size N (the number of processes)");
        if (flag_rank < 0 && flag_world_size > 1)
            throw GrpoError("--world-size " + std::to_string(flag_world_size) + " needs --rank R (0.." +
                            std::to_string(flag_world_size - 1) + ") for each process, or launch with mpirun -np " +
                            std::to_string(flag_world_size) + " or srun, which set the ranks");
        d.world_size = flag_world_size;
        d.rank = std::max(flag_rank, 0);
        d.local_rank = d.rank;  // several processes started by hand are on one node
        d.launcher = "--world-size/--rank";
        // a launcher that knows the node's layout still says which GPU is ours
        for (const Launcher& l : launchers)
            if (const char* local = env(l.local)) { d.local_rank = parse_env_int(l.local, local); break; }
    } else {
        for (const Launcher& l : launchers) {
            const char* size = env(l.size);
            const char* rank = env(l.rank);
            if (!size || !rank) continue;
            d.world_size = parse_env_int(l.size, size);
            d.rank = parse_env_int(l.rank, rank);
            const char* local = env(l.local);
            d.local_rank = local ? parse_env_int(l.local, local) : d.rank;
            d.launcher = l.name;
            size_name = l.size;
            rank_name = l.rank;
            break;
        }
    }
    if (d.world_size < 1)
        throw GrpoError(std::string(size_name) + " = " + std::to_string(d.world_size) + ": need at least one process");
    if (d.rank >= d.world_size)
        throw GrpoError(std::string(rank_name) + " " + std::to_string(d.rank) + " is not below " + size_name + " " +
                        std::to_string(d.world_size) + ": the ranks are 0.." + std::to_string(d.world_size - 1));
    return d;
}

PromptRange dist_prompt_range(int P, int world_size, int rank) {
    if (world_size < 1 || rank < 0 || rank >= world_size)
        throw GrpoError("dist_prompt_range: rank " + std::to_string(rank) + " of world size " +
                        std::to_string(world_size));
    if (P % world_size != 0)
        throw GrpoError("--prompts-per-step " + std::to_string(P) + " is not a multiple of the world size " +
                        std::to_string(world_size) + ": each rank takes an equal share of whole prompts (with their G "
                        "completions); use --prompts-per-step " + std::to_string((P / world_size + 1) * world_size) +
                        " or another multiple of " + std::to_string(world_size));
    const int share = P / world_size;
    return {rank * share, (rank + 1) * share};
}

std::vector<double> dist_global_order(const std::vector<double>& gathered, int world_size, int A, int per_batch,
                                      int width) {
    const size_t batch_values = (size_t)per_batch * width, rank_values = batch_values * A;
    if (gathered.size() != rank_values * world_size)
        throw GrpoError("dist_global_order: " + std::to_string(gathered.size()) + " values, expected " +
                        std::to_string(rank_values * world_size));
    std::vector<double> global;
    global.reserve(gathered.size());
    for (int a = 0; a < A; a++)
        for (int r = 0; r < world_size; r++) {
            auto first = gathered.begin() + (ptrdiff_t)(r * rank_values + a * batch_values);
            global.insert(global.end(), first, first + (ptrdiff_t)batch_values);
        }
    return global;
}

// ---- the file exchange -------------------------------------------------------------------------------------

static bool read_whole_file(const std::string& path, std::string* contents) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    std::stringstream s;
    s << in.rdbuf();
    *contents = s.str();
    return true;
}

static std::string hello_path(const std::string& dir, int rank) { return dir + "/hello-" + std::to_string(rank); }

// A fresh random id per process: two runs in the same directory never share one.
static std::string make_nonce(int rank) {
    std::random_device device;
    uint64_t x = ((uint64_t)device() << 32) ^ device() ^
                 (uint64_t)std::chrono::steady_clock::now().time_since_epoch().count() ^ ((uint64_t)getpid() << 20) ^
                 (uint64_t)rank;
    char buf[24];
    snprintf(buf, sizeof(buf), "%016llx", (unsigned long long)Rng(x).next_u64());
    return buf;
}

FileExchange::FileExchange(const std::string& dir, int rank, int world_size, double timeout_s)
    : dir_(dir), rank_(rank), world_size_(world_size), timeout_s_(timeout_s) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec)
        throw GrpoError("--dist-dir " + dir_ + ": cannot create the rendezvous directory (" + ec.message() +
                        "); pick a directory on a file system every rank can write");
    const std::string session_path = dir_ + "/session";
    const std::string nonce = make_nonce(rank);
    if (rank_ == 0) {
        // What an earlier run left (its hellos, session and messages) must not be read as this run's. A peer's hello
        // removed here is written again by its owner, who checks for it while it waits.
        for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
            std::string name = entry.path().filename().string();
            if (name.rfind("hello-", 0) == 0 || name.rfind("session", 0) == 0 || name.rfind("x-", 0) == 0)
                std::filesystem::remove(entry.path(), ec);
        }
        std::string session = nonce + "\n";
        for (int r = 1; r < world_size_; r++)
            session += wait_for_file(hello_path(dir_, r), r, "its hello at the rendezvous") + "\n";
        write_file_atomic(session_path, session);
        session_ = nonce;
    } else {
        // say hello, and wait for a session file that lists our nonce as rank `rank`'s (a stale session never does)
        auto say_hello = [&] {
            try {
                write_file_atomic(hello_path(dir_, rank_), nonce);
            } catch (const GrpoError&) {
                // rank 0 may remove our temporary file while it clears the directory: the next poll writes it again
            }
        };
        say_hello();
        auto start = std::chrono::steady_clock::now();
        for (int polls = 0;; polls++) {
            std::string session;
            if (read_whole_file(session_path, &session)) {
                std::vector<std::string> lines = py_split(session, "\n");
                if ((int)lines.size() > rank_ && lines[rank_] == nonce) {
                    if ((int)lines.size() < world_size_ + 1 || !lines[world_size_].empty())
                        throw GrpoError("rank " + std::to_string(rank_) + ": " + session_path + " lists " +
                                        std::to_string((int)lines.size() - 1) + " ranks but this process was told the "
                                        "world size is " + std::to_string(world_size_) +
                                        "; start every rank with the same --world-size");
                    session_ = lines[0];
                    break;
                }
            }
            std::string mine;
            if (!read_whole_file(hello_path(dir_, rank_), &mine) || mine != nonce)
                say_hello();  // rank 0 cleared the directory after we wrote it
            double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            if (waited > timeout_s_)
                throw GrpoError("rank " + std::to_string(rank_) + " of " + std::to_string(world_size_) + " waited " +
                                std::to_string((int)(waited + 0.5)) + " s for rank 0 at the rendezvous in " + dir_ +
                                " (" + session_path + " never named this process): is rank 0 running, with the same "
                                "--world-size and a --dist-dir on a file system all ranks share? (--dist-timeout sets "
                                "the wait)");
            std::this_thread::sleep_for(std::chrono::milliseconds(polls < 100 ? 1 : 20));
        }
    }
}

std::string FileExchange::path_of(uint64_t seq, int rank) const {
    return dir_ + "/x-" + session_ + "-" + std::to_string(seq) + "-" + std::to_string(rank);
}

// Polls for `path` (written by `peer`): every 0.25 ms at first (ranks usually arrive together), then every 2 ms.
std::string FileExchange::wait_for_file(const std::string& path, int peer, const std::string& what) const {
    auto start = std::chrono::steady_clock::now();
    std::string contents;
    for (int polls = 0; !read_whole_file(path, &contents); polls++) {
        double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (waited > timeout_s_)
            throw GrpoError("rank " + std::to_string(rank_) + " of " + std::to_string(world_size_) + " waited " +
                            std::to_string((int)(waited + 0.5)) + " s for rank " + std::to_string(peer) + " (" + what +
                            ": " + path + " never appeared): is every rank running the same command with --world-size " +
                            std::to_string(world_size_) + " and a --dist-dir on a file system all ranks share? "
                            "(--dist-timeout sets the wait)");
        std::this_thread::sleep_for(std::chrono::microseconds(polls < 200 ? 250 : 2000));
    }
    return contents;
}

std::vector<std::string> FileExchange::all_gather_bytes(const std::string& mine) {
    const uint64_t seq = seq_++;
    write_file_atomic(path_of(seq, rank_), mine);
    std::vector<std::string> all(world_size_);
    for (int r = 0; r < world_size_; r++)
        all[r] = r == rank_ ? mine : wait_for_file(path_of(seq, r), r, "message " + std::to_string(seq));
    // Having read every rank's message `seq`, we know each of them finished reading message seq - 1 (they wrote seq
    // after it), so our message seq - 1 is no longer needed by anyone.
    if (seq >= 1) {
        std::error_code ec;
        std::filesystem::remove(path_of(seq - 1, rank_), ec);
    }
    return all;
}

std::vector<double> FileExchange::all_gather(const std::vector<double>& mine) {
    std::vector<std::string> all =
        all_gather_bytes(std::string((const char*)mine.data(), mine.size() * sizeof(double)));
    std::vector<double> out(mine.size() * world_size_);
    for (int r = 0; r < world_size_; r++) {
        if (all[r].size() != mine.size() * sizeof(double))
            throw GrpoError("rank " + std::to_string(r) + " sent " + std::to_string(all[r].size() / sizeof(double)) +
                            " values where rank " + std::to_string(rank_) + " sent " + std::to_string(mine.size()) +
                            "; are all ranks running the same command?");
        memcpy(out.data() + mine.size() * r, all[r].data(), all[r].size());
    }
    return out;
}

void FileExchange::all_reduce_sum(float* values, size_t n) {
    std::vector<std::string> all = all_gather_bytes(std::string((const char*)values, n * sizeof(float)));
    for (int r = 0; r < world_size_; r++)
        if (all[r].size() != n * sizeof(float))
            throw GrpoError("rank " + std::to_string(r) + " sent " + std::to_string(all[r].size() / sizeof(float)) +
                            " values to sum where rank " + std::to_string(rank_) + " sent " + std::to_string(n) +
                            "; are all ranks running the same command (same model and --lora-* options)?");
    std::vector<float> sum(n), part(n);
    memcpy(sum.data(), all[0].data(), n * sizeof(float));
    for (int r = 1; r < world_size_; r++) {
        memcpy(part.data(), all[r].data(), n * sizeof(float));
        for (size_t i = 0; i < n; i++) sum[i] += part[i];
    }
    memcpy(values, sum.data(), n * sizeof(float));
}

std::string FileExchange::broadcast(const std::string& bytes) {
    return all_gather_bytes(rank_ == 0 ? bytes : std::string())[0];
}
