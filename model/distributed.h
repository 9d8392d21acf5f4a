// distributed.h: data-parallel GRPO's host side: which rank this process is (flags, mpirun or Slurm), how a step's prompts are split, and a rendezvous plus small collectives through a directory every rank can read.
//
// No MPI library is linked: mpirun and srun are only launchers here, read through the environment they set. The
// ranks meet in a directory (--dist-dir, on a file system all nodes share), which carries NCCL's unique id from
// rank 0 to the others, the step's rewards and metrics (a few kB), and on the CPU backend the LoRA gradients.
// With one process none of this runs.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

// Who this process is among the processes of one run.
struct DistConfig {
    int world_size = 1;
    int rank = 0;
    int local_rank = 0;    // rank among the processes of this node: which GPU it takes
    std::string launcher;  // where the numbers came from: "--world-size/--rank", "mpirun (Open MPI)", ...
};

typedef std::function<const char*(const char*)> EnvLookup;

// The ranks from --world-size / --rank when given (flag_world_size > 0; flag_rank < 0 means not given), else
// from the launcher's environment: Open MPI's mpirun (OMPI_COMM_WORLD_SIZE / _RANK / _LOCAL_RANK), MPICH's or
// Intel MPI's (PMI_SIZE / PMI_RANK, MPI_LOCALRANKID), Slurm's srun (SLURM_NTASKS / SLURM_PROCID /
// SLURM_LOCALID), else one process. Throws GrpoError, naming the flag or variable, when a rank is missing or
// outside [0, world size).
DistConfig dist_config_resolve(int flag_world_size, int flag_rank, const EnvLookup& env = getenv);

// This rank's contiguous share [begin, end) of a step's P prompts: rank r gets prompts r*P/W .. (r+1)*P/W - 1,
// so that each prompt's G completions stay on one rank and group statistics need no exchange. Throws GrpoError
// when P is not a multiple of the world size.
struct PromptRange {
    int begin = 0, end = 0;
    int size() const { return end - begin; }
};
PromptRange dist_prompt_range(int P, int world_size, int rank);

// The inverse of the split, for values gathered from every rank: gathered holds rank 0's values, then rank 1's,
// ...; each rank's are A batches of per_batch items of `width` numbers. Returns them in the order one process
// would have them: batch 0 of every rank in rank order, then batch 1, ...
std::vector<double> dist_global_order(const std::vector<double>& gathered, int world_size, int A, int per_batch,
                                      int width);

// A rendezvous and collectives through files in `dir`. Every message is one file, written to a temporary name
// and renamed (so a reader sees all of it or nothing), named by a session id that rank 0 picks at the rendezvous
// (so files of an earlier run in the same directory are never read), a sequence number and the writer's rank.
// Readers poll. Every call is collective: all ranks make the same calls in the same order.
class FileExchange {
public:
    // The rendezvous: rank 0 removes what earlier runs left in dir and waits for every other rank's hello; the
    // others wait until rank 0's session file names them. Waits at most timeout_s for any peer, here and in
    // every collective, then throws GrpoError saying who waited for whom, in which directory, and what to check.
    FileExchange(const std::string& dir, int rank, int world_size, double timeout_s);
    int rank() const { return rank_; }
    int world_size() const { return world_size_; }

    // Every rank's bytes, in rank order.
    std::vector<std::string> all_gather_bytes(const std::string& mine);
    // Every rank's values (each rank must pass the same count), concatenated in rank order.
    std::vector<double> all_gather(const std::vector<double>& mine);
    // values[i] = the sum over ranks of values[i], added in rank order (0 + 1 + 2 ...), so every rank holds the
    // same bits whatever the timing.
    void all_reduce_sum(float* values, size_t n);
    // Rank 0's bytes on every rank (others pass anything).
    std::string broadcast(const std::string& bytes);

private:
    std::string path_of(uint64_t seq, int rank) const;
    std::string wait_for_file(const std::string& path, int peer, const std::string& what) const;

    std::string dir_, session_;
    int rank_ = 0, world_size_ = 1;
    double timeout_s_ = 0;
    uint64_t seq_ = 0;  // collectives made so far
};

// The directory the ranks meet in when --dist-dir is not given.
inline std::string dist_default_dir(const std::string& out_dir) { return out_dir + "/dist"; }

// ---- NCCL, for the GPU build of train_grpo only ------------------------------------------------------------
// Only train_grpo.cu (compiled by nvcc, linked with -lnccl) compiles this part. It is not in model/gpu_backend.cu on
// purpose: every GPU program links that file, and the labs and benchmarks, which never run on several GPUs, do not
// link NCCL.
#if defined(__CUDACC__) && !defined(GRPO_CPU_ONLY)
#include <cstring>
#include <nccl.h>

#include "data/text.h"
#include "kernels/cuda_common.cuh"  // cudaCheck, ncclCheck: a failed call says where and stops the process

// The GPU this rank uses: local rank modulo the GPUs it can see (a launcher that gives each rank one GPU through
// CUDA_VISIBLE_DEVICES leaves one: device 0). Set before anything touches the device.
inline int dist_select_cuda_device(const DistConfig& dist) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0)
        throw GrpoError(std::string("rank ") + std::to_string(dist.rank) + ": no usable CUDA device (" +
                        cudaGetErrorString(err) + ")");
    const int device = dist.local_rank % count;
    cudaCheck(cudaSetDevice(device));
    return device;
}

// One NCCL communicator over all ranks: rank 0 makes the unique id and the file exchange carries it to the others
// (llm.c's file-system approach: no MPI library, works under mpirun, srun or by hand).
struct NcclCommunicator {
    ncclComm_t comm = nullptr;
    explicit NcclCommunicator(FileExchange& exchange) {
        // NVLink SHARP (NVLS) multicast stays off unless the user sets NCCL_NVLS_ENABLE: on shared multi-GPU hosts
        // its multicast objects can take the GPUs out of service for others, and one 80 M-float all-reduce per
        // optimizer step gains nothing from it. Set before the communicator reads its environment.
        setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
        ncclUniqueId id;
        memset(&id, 0, sizeof(id));
        if (exchange.rank() == 0) ncclCheck(ncclGetUniqueId(&id));
        std::string bytes = exchange.broadcast(std::string((const char*)&id, sizeof(id)));
        if (bytes.size() != sizeof(id))
            throw GrpoError("NCCL: rank 0's unique id has " + std::to_string(bytes.size()) + " bytes, expected " +
                            std::to_string(sizeof(id)) + "; are all ranks the same build?");
        memcpy(&id, bytes.data(), sizeof(id));
        ncclCheck(ncclCommInitRank(&comm, exchange.world_size(), id, exchange.rank()));
    }
    ~NcclCommunicator() {
        if (comm) ncclCommDestroy(comm);
    }
    NcclCommunicator(const NcclCommunicator&) = delete;
    NcclCommunicator& operator=(const NcclCommunicator&) = delete;

    // data[i] = the sum over ranks, in place, queued on `stream` after the work that wrote data (the backward);
    // every rank receives the same bits (NCCL's reduce-scatter then all-gather reduces each element once).
    void all_reduce_sum(float* device_data, size_t n, cudaStream_t stream) {
        ncclCheck(ncclAllReduce(device_data, device_data, n, ncclFloat, ncclSum, comm, stream));
    }
};
#endif
