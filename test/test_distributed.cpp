// test_distributed.cpp: data-parallel GRPO on the CPU: ranks from flags and launchers' environments, the prompt split, the file-system rendezvous and collectives, and train_grpo run as 2 and 4 processes against one process with the same global batch.
#include <catch2/catch.hpp>

#include <cmath>
#include <csignal>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "data/json.h"
#include "lora/adamw.h"
#include "lora/peft.h"
#include "model/config.h"
#include "model/distributed.h"
#include "test/test_util.h"

namespace {

EnvLookup fake_env(const std::map<std::string, std::string>& vars) {
    return [vars](const char* name) -> const char* {
        auto it = vars.find(name);
        return it == vars.end() ? nullptr : it->second.c_str();
    };
}

// The tiny model on the token-range task (as test_train.cpp), a few fast steps with KL, so that every logged
// number is non-trivial; `extra` adds options (loss type, accumulation, ...). The learning rate is 10x lower than
// test_train.cpp's because AdamW turns rounding differences of a gradient into parameter differences of up to
// lr x (their relative size) wherever the gradient is small; at 1e-2 that drift flips a sampled token within four
// steps, after which one process and several ranks are no longer comparable token for token.
std::string tiny_args(const std::string& out, int max_steps, const std::string& extra) {
    return std::string(kTrainer) + " --device cpu -m " + kTinyModel +
           " --task token-range:0:64 -g 4 --max-completion-length 8 --lora-r 4 --lora-alpha 16 --lr 1e-3"
           " --warmup-ratio 0 --max-grad-norm 1.0 --beta 0.04 --save-every 2 --seed 5 --max-steps " +
           std::to_string(max_steps) + " --out " + out + " " + extra;
}

// Runs `args` as W processes (ranks 1..W-1 in the background, rank 0 in front, all waited for) with their outputs
// in DIR/rank-R.txt; rank R writes to --out DIR/out-R, all meet in DIR/dist. Returns each rank's exit code.
std::vector<int> run_ranks(const TempDir& dir, int W, int max_steps, const std::string& extra) {
    std::string script;
    for (int r = W - 1; r >= 0; r--) {
        std::string rank = std::to_string(r);
        script += tiny_args(dir / ("out-" + rank), max_steps, extra) + " --world-size " + std::to_string(W) +
                  " --rank " + rank + " --dist-dir " + (dir / "dist") + " > " + (dir / ("rank-" + rank + ".txt")) +
                  " 2>&1";
        script += r > 0 ? " & p" + rank + "=$!; " : "; r0=$?; ";
    }
    std::string codes = "echo $r0";
    for (int r = 1; r < W; r++) script += "wait $p" + std::to_string(r) + "; r" + std::to_string(r) + "=$?; ";
    for (int r = 1; r < W; r++) codes += " $r" + std::to_string(r);
    CommandResult result = run_shell(script + codes);
    std::vector<int> exit_codes;
    std::istringstream in(result.output);
    for (int code; in >> code;) exit_codes.push_back(code);
    return exit_codes;
}

std::string file_text(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// The logged fields that measure time, which no two runs share.
bool is_timing(const std::string& key) {
    return key == "step_time" || key.rfind("time/", 0) == 0 || key.rfind("tokens_per_s/", 0) == 0;
}

LoraWeights load_checkpoint(const std::string& dir) {
    LoraWeights w = peft_load(dir, qwen2_config_load(kTinyModel));
    adamw_state_load(dir + "/optimizer.safetensors", &w);
    return w;
}

}  // namespace

TEST_CASE("ranks come from --world-size/--rank, or from mpirun's or srun's environment", "[distributed]") {
    const EnvLookup none = fake_env({});
    DistConfig one = dist_config_resolve(0, -1, none);
    CHECK(one.world_size == 1);
    CHECK(one.rank == 0);
    CHECK(one.launcher.empty());

    DistConfig flags = dist_config_resolve(4, 3, none);
    CHECK(flags.world_size == 4);
    CHECK(flags.rank == 3);
    CHECK(flags.local_rank == 3);  // processes started by hand are on one node
    CHECK(dist_config_resolve(1, -1, none).world_size == 1);

    DistConfig ompi = dist_config_resolve(0, -1, fake_env({{"OMPI_COMM_WORLD_SIZE", "8"}, {"OMPI_COMM_WORLD_RANK", "5"},
                                                           {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}}));
    CHECK(ompi.world_size == 8);
    CHECK(ompi.rank == 5);
    CHECK(ompi.local_rank == 1);
    CHECK(ompi.launcher == "mpirun (Open MPI)");

    DistConfig pmi = dist_config_resolve(0, -1, fake_env({{"PMI_SIZE", "2"}, {"PMI_RANK", "1"}}));
    CHECK(pmi.world_size == 2);
    CHECK(pmi.rank == 1);
    CHECK(pmi.local_rank == 1);  // no MPI_LOCALRANKID: the rank

    DistConfig slurm = dist_config_resolve(0, -1, fake_env({{"SLURM_NTASKS", "16"}, {"SLURM_PROCID", "9"},
                                                            {"SLURM_LOCALID", "1"}}));
    CHECK(slurm.world_size == 16);
    CHECK(slurm.rank == 9);
    CHECK(slurm.local_rank == 1);
    CHECK(slurm.launcher == "Slurm (srun)");

    // flags win over the environment (e.g. --world-size 1 inside an allocation), and still take its local rank
    DistConfig both = dist_config_resolve(2, 1, fake_env({{"SLURM_NTASKS", "16"}, {"SLURM_PROCID", "9"},
                                                          {"SLURM_LOCALID", "0"}}));
    CHECK(both.world_size == 2);
    CHECK(both.rank == 1);
    CHECK(both.local_rank == 0);

    CHECK_THAT(error_of([&] { dist_config_resolve(2, 2, none); }),
               Catch::Contains("--rank 2 is not below --world-size 2: the ranks are 0..1"));
    CHECK_THAT(error_of([&] { dist_config_resolve(2, -1, none); }), Catch::Contains("--world-size 2 needs --rank R"));
    CHECK_THAT(error_of([&] { dist_config_resolve(0, 1, none); }), Catch::Contains("--rank 1 needs --world-size"));
    CHECK_THAT(error_of([&] {
                   dist_config_resolve(0, -1, fake_env({{"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_RANK", "2"}}));
               }),
               Catch::Contains("OMPI_COMM_WORLD_RANK 2 is not below OMPI_COMM_WORLD_SIZE 2"));
    CHECK_THAT(error_of([&] {
                   dist_config_resolve(0, -1, fake_env({{"SLURM_NTASKS", "two"}, {"SLURM_PROCID", "0"}}));
               }),
               Catch::Contains("SLURM_NTASKS='two'"));
}

TEST_CASE("a step's prompts split into equal contiguous ranges, and gathered values go back to one process's order",
          "[distributed]") {
    for (int W : {1, 2, 3, 4}) {
        int next = 0;
        for (int r = 0; r < W; r++) {
            PromptRange range = dist_prompt_range(12, W, r);
            CHECK(range.begin == next);
            CHECK(range.size() == 12 / W);
            next = range.end;
        }
        CHECK(next == 12);
    }
    CHECK_THAT(error_of([] { dist_prompt_range(3, 2, 0); }),
               Catch::Contains("--prompts-per-step 3 is not a multiple of the world size 2") &&
                   Catch::Contains("use --prompts-per-step 4"));

    // one process's values: A batches of P prompts x G items of `width` numbers, value = its position. Each rank's
    // share is cut out of it as train_grpo's split does; gathered in rank order and put back, it must be the same.
    const int W = 3, A = 2, P = 6, G = 2, width = 2, PL = P / W;
    std::vector<double> global;
    for (int i = 0; i < A * P * G * width; i++) global.push_back(i);
    std::vector<double> gathered;
    for (int r = 0; r < W; r++) {
        PromptRange range = dist_prompt_range(P, W, r);
        for (int a = 0; a < A; a++)
            for (int p = range.begin; p < range.end; p++)
                for (int k = 0; k < G * width; k++) gathered.push_back(global[((size_t)a * P + p) * G * width + k]);
    }
    CHECK(dist_global_order(gathered, W, A, PL * G, width) == global);
}

TEST_CASE("the file exchange meets, gathers, sums in rank order and broadcasts; stale files and missing peers",
          "[distributed]") {
    TempDir dir("grpo_dist");
    const std::string where = dir / "meet";
    // what an earlier run left: a session naming other processes, and messages of its session
    std::filesystem::create_directories(where);
    write_file(where + "/session", "feedbeeffeedbeef\n1111\n2222\n");
    write_file(where + "/x-feedbeeffeedbeef-0-1", "stale");
    write_file(where + "/hello-1", "1111");

    const int W = 3;
    std::vector<std::vector<double>> gathered(W);
    std::vector<std::vector<float>> summed(W);
    std::vector<std::string> broadcast(W), errors(W);
    // values whose float sum depends on the order: 1e8 + 1 - 1e8 is 0 or 1 depending on who is added first
    const float parts[W][2] = {{1e8f, 0.5f}, {1.0f, 0.25f}, {-1e8f, 3.0f}};
    std::vector<std::thread> threads;
    for (int r = 0; r < W; r++)
        threads.emplace_back([&, r] {
            try {
                FileExchange ex(where, r, W, 20.0);
                gathered[r] = ex.all_gather({(double)r, 10.0 * r});
                summed[r] = {parts[r][0], parts[r][1]};
                ex.all_reduce_sum(summed[r].data(), 2);
                broadcast[r] = ex.broadcast(r == 0 ? "the nccl id" : "ignored");
                for (int i = 0; i < 20; i++) ex.all_gather({(double)i});  // old messages are cleaned up as it goes
            } catch (const GrpoError& e) {
                errors[r] = e.what();
            }
        });
    for (std::thread& t : threads) t.join();
    const float expected0 = (parts[0][0] + parts[1][0]) + parts[2][0];  // rank order
    const float expected1 = (parts[0][1] + parts[1][1]) + parts[2][1];
    for (int r = 0; r < W; r++) {
        INFO("rank " << r);
        CHECK(errors[r].empty());
        CHECK(gathered[r] == std::vector<double>{0, 0, 1, 10, 2, 20});
        REQUIRE(summed[r].size() == 2);
        CHECK(summed[r][0] == expected0);
        CHECK(summed[r][1] == expected1);
        CHECK(broadcast[r] == "the nccl id");
    }
    CHECK(!exists(where + "/x-feedbeeffeedbeef-0-1"));  // rank 0 cleared the earlier run's files
    int messages = 0;
    for (const auto& entry : std::filesystem::directory_iterator(where))
        messages += entry.path().filename().string().rfind("x-", 0) == 0;
    CHECK(messages <= 2 * W);  // each rank keeps at most its last two messages

    // a peer that never comes: one clear message from each side, after the timeout
    CHECK_THAT(error_of([&] { FileExchange(dir / "alone1", 1, 2, 0.2); }),
               Catch::Contains("rank 1 of 2 waited") && Catch::Contains("for rank 0 at the rendezvous in " + (dir / "alone1")) &&
                   Catch::Contains("--dist-timeout"));
    CHECK_THAT(error_of([&] { FileExchange(dir / "alone0", 0, 2, 0.2); }),
               Catch::Contains("rank 0 of 2 waited") && Catch::Contains("for rank 1 (its hello at the rendezvous") &&
                   Catch::Contains("a --dist-dir on a file system all ranks share"));
}

TEST_CASE("train_grpo --world-size 1 is the run without flags", "[distributed]") {
    require_trainer();
    TempDir temp("grpo_dist");
    REQUIRE(run_shell(tiny_args(temp / "plain", 3, "") + " > /dev/null 2>&1").exit_code == 0);
    REQUIRE(run_shell(tiny_args(temp / "flags", 3, "--world-size 1 --rank 0") + " > /dev/null 2>&1").exit_code == 0);
    std::vector<JsonValue> plain = read_log(temp / "plain/log.jsonl"), flags = read_log(temp / "flags/log.jsonl");
    REQUIRE(plain.size() == 3);
    REQUIRE(flags.size() == 3);
    int compared = 0;
    for (size_t i = 0; i < plain.size(); i++) {
        REQUIRE(plain[i].object.size() == flags[i].object.size());
        for (size_t k = 0; k < plain[i].object.size(); k++) {
            const std::string& key = plain[i].object[k].first;
            INFO("step " << i + 1 << " " << key);
            REQUIRE(flags[i].object[k].first == key);
            if (is_timing(key)) continue;
            CHECK(flags[i].object[k].second.number == plain[i].object[k].second.number);
            compared++;
        }
    }
    printf("[distributed] --world-size 1: %d logged numbers identical to the run without flags\n", compared);
    CHECK(file_text(temp / "plain/checkpoint-3/adapter_model.safetensors") ==
          file_text(temp / "flags/checkpoint-3/adapter_model.safetensors"));
    CHECK(!exists(temp / "flags/dist"));  // no rendezvous for one process
}

TEST_CASE("train_grpo on 2 and 4 processes repeats one process with the same global batch", "[distributed]") {
    require_trainer();
    struct Case { int W; std::string options; };
    // every loss type; accumulation (whose batches interleave the ranks' rollouts) and batch-scaled rewards
    const Case cases[] = {
        {2, "--prompts-per-step 2"},
        {2, "--prompts-per-step 2 --loss-type grpo --scale-rewards batch"},
        {2, "--prompts-per-step 4 --loss-type dr_grpo --grad-accum 2"},
        {2, "--prompts-per-step 2 --loss-type dapo --grad-accum 2 --scale-rewards batch"},
        {4, "--prompts-per-step 4 --grad-accum 2"},
    };
    const int steps = 4;
    double worst_first = 0, worst_later = 0, worst_param = 0;  // relative differences at step 1 and after; params
    for (const Case& c : cases) {
        INFO("world size " << c.W << ": " << c.options);
        TempDir temp("grpo_dist");
        REQUIRE(run_shell(tiny_args(temp / "one", steps, c.options) + " > /dev/null 2>&1").exit_code == 0);
        std::vector<int> codes = run_ranks(temp, c.W, steps, c.options);
        INFO("rank 0 said: " << file_text(temp / "rank-0.txt") << "\nrank 1 said: " << file_text(temp / "rank-1.txt"));
        REQUIRE(codes == std::vector<int>(c.W, 0));

        // rank 0 alone wrote the log and the checkpoints; the others said who they are in one line
        for (int r = 1; r < c.W; r++) {
            std::string out = temp / ("out-" + std::to_string(r));
            CHECK(!exists(out + "/log.jsonl"));
            CHECK(!exists(out + "/checkpoint-" + std::to_string(steps)));
            std::string said = file_text(temp / ("rank-" + std::to_string(r) + ".txt"));
            CHECK_THAT(said, Catch::StartsWith("data parallel: rank " + std::to_string(r) + " of " + std::to_string(c.W)));
            CHECK(std::count(said.begin(), said.end(), '\n') == 1);
        }
        std::vector<JsonValue> one = read_log(temp / "one/log.jsonl");
        std::vector<JsonValue> many = read_log(temp / "out-0/log.jsonl");
        REQUIRE(one.size() == (size_t)steps);
        REQUIRE(many.size() == (size_t)steps);
        for (int i = 0; i < steps; i++) {
            INFO("step " << i + 1);
            REQUIRE(one[i].object.size() == many[i].object.size());
            for (size_t k = 0; k < one[i].object.size(); k++) {
                const std::string& key = one[i].object[k].first;
                INFO(key);
                REQUIRE(many[i].object[k].first == key);
                if (is_timing(key)) continue;
                double a = one[i].object[k].second.number, b = many[i].object[k].second.number;
                if (key.rfind("reward", 0) == 0 || key.rfind("completions/", 0) == 0 || key.rfind("tokens/", 0) == 0 ||
                    key == "step" || key == "learning_rate" || key == "frac_reward_zero_std") {
                    // the same tokens were sampled: the rewards, lengths and counts are the same numbers
                    CHECK(b == a);
                } else {
                    // loss, grad_norm, kl and clip ratios, compared as |a - b| / (|a| + 1e-3): the loss of step 1 is
                    // a sum of terms of size ~|advantage| that cancel (the ratio is 1), so its rounding is absolute
                    // (~1e-9), and the clip ratios are 0. At step 1 both runs hold the same adapters: the numbers
                    // differ only by float32 summation order (gradients summed over the rollouts per rank, then over
                    // the ranks; bnpo normalized in one division instead of two): ~1e-7, one ulp; tolerance 1e-6.
                    // From step 2 on the adapters differ by what AdamW made of those roundings (~1e-6, below) while
                    // they have moved only ~k x lr = 3e-3 from where KL is 0: the KL (quadratic in that distance) and
                    // the losses holding it may differ by ~2 x 1e-6 / 3e-3 = 7e-4 relative (measured: 4e-5);
                    // tolerance 2e-3. A wrong normalizer changes these numbers by a factor of about W, and a wrong
                    // split of the prompts changes the rewards, compared exactly above.
                    const double tolerance = i == 0 ? 1e-6 : 2e-3;
                    double relative = std::fabs(a - b) / (std::fabs(a) + 1e-3);
                    double& worst = i == 0 ? worst_first : worst_later;
                    worst = std::max(worst, relative);
                    CHECK(relative <= tolerance);
                }
            }
        }
        // the final adapters: the same updates up to the gradients' summation order, which AdamW's m / sqrt(v) turns
        // into up to lr x (relative difference) per step where a gradient is small (measured: 7e-7 after 4 steps at
        // lr 1e-3). 1e-5 is 1% of one step's largest update (lr); a wrong gradient moves parameters by about lr.
        LoraWeights a = load_checkpoint(temp / ("one/checkpoint-" + std::to_string(steps)));
        LoraWeights b = load_checkpoint(temp / ("out-0/checkpoint-" + std::to_string(steps)));
        CHECK(a.adam_step == b.adam_step);
        REQUIRE(a.params.size() == b.params.size());
        for (size_t i = 0; i < a.params.size(); i++) {
            double d = std::fabs(a.params[i] - b.params[i]);
            worst_param = std::max(worst_param, d);
            if (d > 1e-5) {
                FAIL_CHECK("parameter " << i << ": one process " << a.params[i] << ", " << c.W << " ranks " << b.params[i]);
                break;
            }
        }
    }
    printf("[distributed] 1 vs 2 and 4 ranks, 5 configurations x %d steps, worst relative difference of loss, "
           "grad_norm, kl and clip ratios: %.3g at step 1, %.3g after; final adapter parameters: %.3g\n",
           steps, worst_first, worst_later, worst_param);
}

TEST_CASE("train_grpo refuses bad data-parallel setups with one clear message", "[distributed]") {
    require_trainer();
    TempDir temp("grpo_dist");
    struct Bad { std::string args, says; };
    const Bad bad[] = {
        {"--prompts-per-step 3 --world-size 2 --rank 0",
         "--prompts-per-step 3 is not a multiple of the world size 2"},
        {"--prompts-per-step 2 --world-size 2 --rank 2", "--rank 2 is not below --world-size 2"},
        {"--prompts-per-step 2 --world-size 2", "--world-size 2 needs --rank R"},
        {"--prompts-per-step 2 --world-size 2 --rank 1 --dist-timeout 0.3",
         "rank 1 of 2 waited 0 s for rank 0 at the rendezvous"},
        {"--prompts-per-step 2 --world-size 2 --rank 0 --dist-timeout 0.3", "waited 0 s for rank 1"},
    };
    for (const Bad& b : bad) {
        std::string command = tiny_args(temp / "out", 2, b.args) + " 2>&1";
        CommandResult result = run_shell(command);
        INFO(command << " -> " << result.output);
        CHECK(result.exit_code == 1);
        CHECK(result.output.find("error: " ) != std::string::npos);
        CHECK(result.output.find(b.says) != std::string::npos);
        CHECK(!exists(temp / "out/log.jsonl"));
    }
    // as mpirun would launch it: the ranks come from the environment
    CommandResult mpi = run_shell("OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=3 " + tiny_args(temp / "out", 2, "") + " 2>&1");
    CHECK(mpi.exit_code == 1);
    CHECK_THAT(mpi.output, Catch::Contains("OMPI_COMM_WORLD_RANK 3 is not below OMPI_COMM_WORLD_SIZE 2"));
}

TEST_CASE("Ctrl-C on one rank stops every rank after the same step, and rank 0 saves", "[distributed]") {
    require_trainer();
    TempDir temp("grpo_dist");
    // rank 1 in the background (its pid written out), rank 0 in front; rank 1 is interrupted once rank 0 logged 2 steps
    std::string rank1 = tiny_args(temp / "out-1", 1000000, "--prompts-per-step 2 --world-size 2 --rank 1 --dist-dir " +
                                  (temp / "dist"));
    std::string rank0 = tiny_args(temp / "out-0", 1000000, "--prompts-per-step 2 --world-size 2 --rank 0 --dist-dir " +
                                  (temp / "dist"));
    std::string log = temp / "out-0/log.jsonl";
    std::string script = rank1 + " > " + (temp / "rank-1.txt") + " 2>&1 & p1=$!; " +
                         rank0 + " > " + (temp / "rank-0.txt") + " 2>&1 & p0=$!; " +
                         "for i in $(seq 600); do [ -f " + log + " ] && [ $(wc -l < " + log + ") -ge 2 ] && break; "
                         "sleep 0.1; done; kill -INT $p1; wait $p0; r0=$?; wait $p1; echo $r0 $?";
    CommandResult result = run_shell(script);
    std::string said = file_text(temp / "rank-0.txt");
    INFO(result.output << "\nrank 0 said: " << said);
    CHECK(result.output == "0 0\n");
    CHECK_THAT(said, Catch::Contains("interrupted: saved"));
    size_t logged = read_log(log).size();
    CHECK(logged >= 2);
    CHECK(exists(temp / ("out-0/checkpoint-" + std::to_string(logged) + "/adapter_model.safetensors")));
}
