// test_head.cpp: the training head on the GPU (lm_head log-probs forward/backward, the GRPO loss, AdamW and gradient clipping) against the CPU reference ops and the TRL dumps.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/json.h"
#include "data/rng.h"
#include "kernels/adamw.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/grpo_loss.cuh"
#include "kernels/logprob.cuh"
#include "lora/adamw.h"
#include "model/cpu_model.h"
#include "model/grpo_loss.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "quant/bf16.h"
#include "test/gpu/gpu_test_util.h"
#include "test/test_util.h"

namespace {

// |ours - ref| <= abs + rel * |ref|, remembering the worst use of the allowance for the summary line.
struct Tolerance {
    double abs, rel;
    double worst_error = 0.0, worst_fraction = 0.0;
    size_t compared = 0, exact = 0;
    bool ok(double ours, double ref, double extra_abs = 0.0) {
        double error = std::fabs(ours - ref), allowed = abs + extra_abs + rel * std::fabs(ref);
        compared++;
        if (ours == ref) exact++;
        worst_error = std::max(worst_error, error);
        worst_fraction = std::max(worst_fraction, error / allowed);
        return error <= allowed;  // NaN fails
    }
    void print(const char* tag, const char* what) const {
        std::printf("[%s] %zu %s: %zu exact, worst |err| %.3g (%.0f%% of tolerance)\n", tag, compared, what, exact,
                    worst_error, 100 * worst_fraction);
    }
};

// Checks every element, printing the first few failures; returns the number outside the tolerance.
size_t check_all(Tolerance& tol, const std::vector<float>& ours, const std::vector<float>& ref, const char* what) {
    REQUIRE(ours.size() == ref.size());
    size_t bad = 0;
    for (size_t i = 0; i < ours.size(); i++)
        if (!tol.ok(ours[i], ref[i]) && ++bad <= 5) UNSCOPED_INFO(what << "[" << i << "] = " << ours[i] << " vs " << ref[i]);
    return bad;
}

struct CublasLt {
    cublasLtHandle_t handle = nullptr;
    CublasLt() { cublasCheck(cublasLtCreate(&handle)); }
    ~CublasLt() { cublasLtDestroy(handle); }
};

// ---- log-probs --------------------------------------------------------------------------------------------------

// The CPU chain for one token row: logits (bf16 mode), log-prob, and (given dlogp) dlogits and dh += dlogits W.
struct CpuRow {
    std::vector<float> logits, probs, dlogits;
    float logp = 0.0f;
};
CpuRow cpu_row(const float* h, const bf16_bits* W, int V, int C, int target, float temperature, float dlogp,
               float* dh) {
    CpuRow r;
    r.logits.resize(V);
    r.probs.resize(V);
    r.dlogits.resize(V);
    cpu_logits_row(r.logits.data(), h, W, V, C, CpuPrecision::BF16);
    r.logp = cpu_logprob_forward(r.logits.data(), V, target, temperature, r.probs.data());
    if (dh && dlogp != 0.0f) {
        cpu_logprob_backward(r.dlogits.data(), r.probs.data(), V, target, dlogp, temperature);
        cpu_matmul_backward(dh, r.dlogits.data(), W, 1, C, V);
    }
    return r;
}

}  // namespace

TEST_CASE("logprob row kernels equal the CPU log-softmax and its backward on the same bf16 logits",
          "[gpu][head][logprob]") {
    // Same logits in, so the only differences are the GPU's one-pass fp32 sum of exps (the CPU sums in double;
    // ~1e-6 relative over 1000 terms, i.e. ~1e-6 absolute on logp) and its expf (2 ulp): logp abs 1e-5.
    // dlogits are bf16 on the GPU (HF's gradient dtype for bf16 logits): one rounding, up to 2^-8 = 3.9e-3
    // relative (half an ulp of 8 significant bits, just above a power of two), plus the fp32 softmax
    // differences (~1e-6): rel 5e-3, abs 1e-9 for the tiny probabilities.
    Tolerance logp_tol{1e-5, 0.0}, dlogit_tol{1e-9, 5e-3};
    Rng rng(11);
    for (int V : {1000, 1003}) {  // 1000: 16-byte vector path; 1003: rows unaligned, scalar path
        INFO("V = " << V);
        const int Mc = 37;
        const float temperature = 0.7f;
        RandomBf16 logits(Mc * (size_t)V, rng, -6.0f, 6.0f);
        // the chunk's rows belong to token rows listed in shuffled order inside N = 2 * Mc rows
        const int N = 2 * Mc;
        std::vector<int> rows(Mc), targets(N);
        for (int j = 0; j < Mc; j++) rows[j] = (j * 29 + 5) % N;
        for (int n = 0; n < N; n++) targets[n] = (int)rng.next_below(V);
        std::vector<float> dlogp(N);
        for (int n = 0; n < N; n++) dlogp[n] = n % 5 == 0 ? 0.0f : 2.0f * rng.next_float() - 1.0f;
        for (bool listed : {false, true}) {
            INFO((listed ? "rows listed" : "rows row0.."));
            const int row0 = listed ? 0 : 3;
            DeviceBf16 d_logits(logits.bits);
            DeviceArray<int> d_rows(rows), d_targets(targets);
            DeviceArray<float> d_dlogp(dlogp), d_logp(std::vector<float>(N, NAN)), d_lse(std::vector<float>(N, NAN));
            logprob_rows_forward_cuda(d_logp.ptr, d_lse.ptr, d_logits.ptr, d_targets.ptr, listed ? d_rows.ptr : nullptr,
                                      row0, Mc, V, temperature, 0);
            logprob_rows_backward_cuda(d_logits.ptr, d_dlogp.ptr, d_lse.ptr, d_targets.ptr,
                                       listed ? d_rows.ptr : nullptr, row0, Mc, V, temperature, 0);
            std::vector<float> logp = d_logp.download(), dlogits = download_floats(d_logits);
            size_t bad = 0;
            std::vector<float> probs(V), ref_dlogits(V);
            for (int j = 0; j < Mc; j++) {
                const int n = listed ? rows[j] : row0 + j;
                const float* x = logits.values.data() + (size_t)j * V;
                float ref_logp = cpu_logprob_forward(x, V, targets[n], temperature, probs.data());
                if (!logp_tol.ok(logp[n], ref_logp) && ++bad <= 5) UNSCOPED_INFO("logp[" << n << "] " << logp[n] << " vs " << ref_logp);
                cpu_logprob_backward(ref_dlogits.data(), probs.data(), V, targets[n], dlogp[n], temperature);
                for (int v = 0; v < V; v++) {
                    float ours = dlogits[(size_t)j * V + v];
                    if (dlogp[n] == 0.0f) {
                        if (ours != 0.0f && ++bad <= 5) UNSCOPED_INFO("masked row " << n << " has dlogit " << ours);
                    } else if (!dlogit_tol.ok(ours, ref_dlogits[v]) && ++bad <= 5) {
                        UNSCOPED_INFO("dlogits[" << n << "][" << v << "] " << ours << " vs " << ref_dlogits[v]);
                    }
                }
            }
            // rows outside the chunk stay untouched
            for (int n = 0; n < N; n++) {
                bool in_chunk = listed ? std::find(rows.begin(), rows.end(), n) != rows.end() : (n >= row0 && n < row0 + Mc);
                if (!in_chunk && !std::isnan(logp[n]) && ++bad <= 5) UNSCOPED_INFO("row " << n << " was written");
            }
            CHECK(bad == 0);
        }
    }
    logp_tol.print("logprob", "row logp vs CPU");
    dlogit_tol.print("logprob", "row dlogits vs CPU");
}

TEST_CASE("chunked lm_head log-probs and their backward match the CPU chain", "[gpu][head][logprob]") {
    // The GPU rounds logits to bf16 from a cuBLAS fp32 sum in another order than the CPU's, so a logit within
    // ~1e-6 relative of a bf16 rounding boundary can land one bf16 step away: logp may move by one bf16 ulp of
    // its target logit / temperature (per row, below), plus 1e-4 for such flips among the other logits (each
    // moves lse by p_v * ulp / T) and the fp32 softmax sum. dh: dlogits and dh are each rounded to bf16
    // (up to 2^-8 relative) and the sum over V runs in another order: rel 1e-2, abs 1e-2 of the largest |dh|.
    Tolerance logp_tol{1e-4, 0.0};
    Rng rng(12);
    CublasLt lt;
    const int N = 40, C = 128, V = 1000, chunk_rows = 16;  // three chunks, the last one partial
    const float temperature = 0.7f;
    RandomBf16 h(N * (size_t)C, rng, -2.0f, 2.0f), W(V * (size_t)C, rng, -0.25f, 0.25f);
    std::vector<int> targets(N);
    for (int n = 0; n < N; n++) targets[n] = (int)rng.next_below(V);
    std::vector<float> dlogp(N);
    for (int n = 0; n < N; n++) dlogp[n] = n % 7 == 3 ? 0.0f : 0.5f * (2.0f * rng.next_float() - 1.0f);
    // listed: 27 of the 40 rows in shuffled order (the backend lists completion tokens only)
    std::vector<int> listed_rows;
    for (int k = 0; k < N; k++) {
        int n = (k * 17 + 3) % N;
        if (n % 3 != 1) listed_rows.push_back(n);
    }
    // the CPU chain for every row
    std::vector<float> ref_logp(N), ref_dh((size_t)N * C, 0.0f), target_logit(N);
    for (int n = 0; n < N; n++) {
        CpuRow r = cpu_row(h.values.data() + (size_t)n * C, W.bits.data(), V, C, targets[n], temperature, dlogp[n],
                           ref_dh.data() + (size_t)n * C);
        ref_logp[n] = r.logp;
        target_logit[n] = r.logits[targets[n]];
    }
    Tolerance dh_tol{1e-2 * max_abs(ref_dh), 1e-2};

    DeviceBf16 d_h(h.bits), d_W(W.bits), d_dh((size_t)N * C);
    DeviceArray<int> d_targets(targets), d_listed(listed_rows);
    DeviceArray<float> d_dlogp(dlogp);
    DeviceArray<char> scratch(logprob_scratch_bytes(chunk_rows, V, C));
    for (bool listed : {false, true}) {
        INFO((listed ? "27 rows listed" : "all rows"));
        const int M = listed ? (int)listed_rows.size() : N;
        const int* rows = listed ? d_listed.ptr : nullptr;
        DeviceArray<float> d_logp(std::vector<float>(N, NAN)), d_lse(std::vector<float>(N, NAN));
        logprob_forward_cuda(d_logp.ptr, d_lse.ptr, d_h.ptr, d_W.ptr, d_targets.ptr, rows, M, V, C, temperature,
                             chunk_rows, scratch.ptr, lt.handle, 0);
        cudaCheck(cudaMemset(d_dh.ptr, 0xff, d_dh.n * sizeof(__nv_bfloat16)));  // poison: NaN bf16
        logprob_backward_cuda(d_dh.ptr, d_dlogp.ptr, d_lse.ptr, d_h.ptr, d_W.ptr, d_targets.ptr, rows, M, N, V, C,
                              temperature, chunk_rows, scratch.ptr, lt.handle, 0);
        std::vector<float> logp = d_logp.download(), dh = download_floats(d_dh);
        size_t bad = 0;
        for (int n = 0; n < N; n++) {
            bool in_list = !listed || std::find(listed_rows.begin(), listed_rows.end(), n) != listed_rows.end();
            if (!in_list) {
                if (!std::isnan(logp[n]) && ++bad <= 5) UNSCOPED_INFO("unlisted row " << n << " got a logp");
                for (int c = 0; c < C; c++)
                    if (dh[(size_t)n * C + c] != 0.0f && ++bad <= 5) UNSCOPED_INFO("unlisted row " << n << " has dh != 0");
                continue;
            }
            if (!logp_tol.ok(logp[n], ref_logp[n], bf16_ulp(target_logit[n]) / temperature) && ++bad <= 5)
                UNSCOPED_INFO("logp[" << n << "] " << logp[n] << " vs " << ref_logp[n]);
            for (int c = 0; c < C; c++) {
                size_t i = (size_t)n * C + c;
                if (dlogp[n] == 0.0f ? dh[i] != 0.0f : !dh_tol.ok(dh[i], ref_dh[i])) {
                    if (++bad <= 5) UNSCOPED_INFO("dh[" << n << "][" << c << "] " << dh[i] << " vs " << ref_dh[i]);
                }
            }
        }
        CHECK(bad == 0);
    }
    logp_tol.print("logprob", "chunked logp vs CPU chain");
    dh_tol.print("logprob", "chunked dh vs CPU chain");
}

TEST_CASE("lm_head log-probs from the dumped final hidden states match HF's, both tiny models",
          "[gpu][head][logprob]") {
    // Same bf16 hidden states and lm_head, HF's own bf16 logits rounding: ours differ only where the fp32
    // GEMM sums (another order) straddle a bf16 boundary. Per position one bf16 ulp of the target logit /
    // temperature, plus 1e-4 for flips elsewhere and HF's fp32 log_softmax.
    Tolerance tol{1e-4, 0.0};
    CublasLt lt;
    for (const char* model : REF_MODELS) {
        INFO(model);
        SafetensorsFile dump(REF_DIR + model + "/dump_bfloat16.safetensors");
        JsonValue meta = json_parse(dump.metadata().at("meta"), "dump meta");
        const int B = (int)meta.get("B")->number, T = (int)meta.get("T")->number, P = (int)meta.get("P")->number;
        const float temperature = (float)meta.get("temperature")->number;
        Qwen2Weights weights = load_hf_dir(REF_DIR + model + "/hf", LinearFormat::BF16);
        const int C = weights.config.C, V = weights.config.V, L = weights.config.L, N = B * T;
        const TensorView& hidden = dump.get("hidden_states");  // [L+2, B, T, C] fp32, bf16-valued
        REQUIRE(hidden.shape == std::vector<int64_t>{L + 2, B, T, C});
        std::vector<float> all_hidden = tensor_to_f32(hidden);
        std::vector<bf16_bits> h((size_t)N * C);
        for (size_t i = 0; i < h.size(); i++) h[i] = f32_to_bf16(all_hidden[(size_t)(L + 1) * N * C + i]);
        const TensorView& ids_view = dump.get("input_ids");
        std::vector<int32_t> ids(N);
        std::memcpy(ids.data(), ids_view.data, N * sizeof(int32_t));
        std::vector<float> logits_hf = tensor_to_f32(dump.get("logits"));  // [B, T, V]
        std::vector<int> targets(N, 0);
        for (int n = 0; n < N; n++) targets[n] = n % T < T - 1 ? ids[n + 1] : 0;
        std::vector<bf16_bits> lm_head(weights.lm_head, weights.lm_head + (size_t)V * C);

        DeviceBf16 d_h(h), d_W(lm_head);
        DeviceArray<int> d_targets(targets);
        DeviceArray<char> scratch(logprob_scratch_bytes(32, V, C));
        struct Case {
            const char* tensor;
            float temperature;
            int first, count;  // positions t of each row: [first, first + count)
        };
        for (Case c : {Case{"logp_t1_lora", 1.0f, 0, T - 1}, Case{"logp", temperature, P - 1, T - P}}) {
            INFO(c.tensor);
            std::vector<int> rows;
            for (int b = 0; b < B; b++)
                for (int t = c.first; t < c.first + c.count; t++) rows.push_back(b * T + t);
            DeviceArray<int> d_rows(rows);
            DeviceArray<float> d_logp((size_t)N), d_lse((size_t)N);
            logprob_forward_cuda(d_logp.ptr, d_lse.ptr, d_h.ptr, d_W.ptr, d_targets.ptr, d_rows.ptr, (int)rows.size(),
                                 V, C, c.temperature, 32, scratch.ptr, lt.handle, 0);  // 32-row chunks: several
            std::vector<float> logp = d_logp.download();
            std::vector<float> ref = tensor_to_f32(dump.get(c.tensor));
            REQUIRE(ref.size() == rows.size());
            size_t bad = 0;
            for (size_t k = 0; k < rows.size(); k++) {
                int n = rows[k];
                float ulp = bf16_ulp(logits_hf[(size_t)n * V + targets[n]]) / c.temperature;
                if (!tol.ok(logp[n], ref[k], ulp) && ++bad <= 5) UNSCOPED_INFO("row " << n << ": " << logp[n] << " vs " << ref[k]);
            }
            CHECK(bad == 0);
        }
    }
    tol.print("logprob", "dump logp vs HF");
}

// ---- the GRPO loss ----------------------------------------------------------------------------------------------

namespace {

struct LossInputs {
    int B = 0, Tc = 0;
    std::vector<float> logp, old_logp, ref_logp, mask, advantages;
    float mask_sum() const { return std::accumulate(mask.begin(), mask.end(), 0.0f); }
};

struct GpuLossOutput {
    GrpoLossGpuResult result;
    std::vector<float> per_token_loss, dloss_dlogp;
};

GpuLossOutput gpu_loss(const GrpoLossConfig& config, const LossInputs& in, bool with_old, float num_items) {
    DeviceArray<float> logp(in.logp), old_logp(in.old_logp), ref_logp(in.ref_logp), mask(in.mask), adv(in.advantages);
    DeviceArray<float> per_token((size_t)in.B * in.Tc), grad((size_t)in.B * in.Tc);
    DeviceArray<GrpoLossGpuResult> result(1);
    DeviceArray<char> scratch(grpo_loss_scratch_bytes(in.B));
    grpo_loss_cuda(result.ptr, per_token.ptr, grad.ptr, config, in.B, in.Tc, logp.ptr, with_old ? old_logp.ptr : nullptr,
                   config.beta != 0.0 ? ref_logp.ptr : nullptr, mask.ptr, adv.ptr, num_items, scratch.ptr, 0);
    GpuLossOutput out;
    out.result = result.download()[0];
    out.per_token_loss = per_token.download();
    out.dloss_dlogp = grad.download();
    return out;
}

std::vector<float> dump_f32(const SafetensorsFile& file, const std::string& name, size_t n) {
    std::vector<float> v = tensor_to_f32(file.get(name));
    REQUIRE(v.size() == n);
    return v;
}

const char* const LOSS_NAMES[] = {"grpo", "bnpo", "dr_grpo", "dapo"};

}  // namespace

TEST_CASE("GPU GRPO loss and gradient match TRL's dumps and the CPU grpo_loss", "[gpu][head][grpo_gpu]") {
    // Against TRL: the CPU test's tolerances (test_grpo_loss.cpp says why): loss abs 2e-7 + rel 2e-6,
    // gradient abs 1e-10 + rel 2e-6. Against the CPU: the same fp32 operations in the same order and double
    // sums (in another order). Our exp is correctly rounded, glibc's expf is within 0.502 ulp, so an exp can
    // rarely differ by 1 ulp: a gradient then moves by ~2 ulp of itself (coef_1 times a rounded product),
    // rel 3.6e-7, abs 1e-12 where the KL terms cancel; the loss and metrics by 1 ulp of an O(1) per-token
    // term over the token count (>= 10 here), abs 1e-8, rel 2.4e-7 otherwise. The exact counts are printed.
    Tolerance trl_loss{2e-7, 2e-6}, trl_grad{1e-10, 2e-6}, cpu_tol{1e-8, 2.4e-7}, cpu_grad_tol{1e-12, 3.6e-7};
    for (const char* model : REF_MODELS) {
        for (const char* dtype : {"bfloat16", "float32"}) {
            std::string path = REF_DIR + model + "/dump_" + dtype + ".safetensors";
            INFO(path);
            SafetensorsFile file(path);
            JsonValue meta = json_parse(file.metadata().at("meta"), path + " meta");
            LossInputs in;
            in.B = (int)meta.get("B")->number;
            in.Tc = (int)(meta.get("T")->number - meta.get("P")->number);
            size_t n = (size_t)in.B * in.Tc;
            in.logp = dump_f32(file, "logp", n);
            in.old_logp = dump_f32(file, "old_logp", n);
            in.ref_logp = dump_f32(file, "ref_logp", n);
            in.mask = dump_f32(file, "completion_mask", n);
            in.advantages = dump_f32(file, "advantages", in.B);
            for (const char* name : LOSS_NAMES) {
                INFO("loss_type " << name);
                GrpoLossConfig config;
                config.loss_type = loss_type_from_name(name);
                config.beta = meta.get("beta")->number;
                config.epsilon_low = meta.get("epsilon_low")->number;
                config.epsilon_high = meta.get("epsilon_high")->number;
                config.max_completion_length = (int)meta.get("max_completion_length")->number;
                GpuLossOutput gpu = gpu_loss(config, in, true, in.mask_sum());
                std::vector<float> cpu_grad(n);
                GrpoLossResult cpu = grpo_loss(config, in.B, in.Tc, in.logp.data(), in.old_logp.data(),
                                               in.ref_logp.data(), in.mask.data(), in.advantages.data(), in.mask_sum(),
                                               cpu_grad.data());
                CHECK(trl_loss.ok(gpu.result.loss, meta.get("losses")->get(name)->number));
                CHECK(check_all(trl_grad, gpu.dloss_dlogp, dump_f32(file, std::string("dloss_dlogp.") + name, n),
                                "dloss_dlogp vs TRL") == 0);
                CHECK(cpu_tol.ok(gpu.result.loss, cpu.loss));
                CHECK(cpu_tol.ok(gpu.result.kl, cpu.metrics.kl));
                CHECK(cpu_tol.ok(gpu.result.clip_ratio_low_mean, cpu.metrics.clip_ratio_low_mean));
                CHECK(cpu_tol.ok(gpu.result.clip_ratio_high_mean, cpu.metrics.clip_ratio_high_mean));
                CHECK(cpu_tol.ok(gpu.result.clip_ratio_region_mean, cpu.metrics.clip_ratio_region_mean));
                CHECK(check_all(cpu_grad_tol, gpu.dloss_dlogp, cpu_grad, "dloss_dlogp vs CPU") == 0);
            }
        }
    }
    trl_loss.print("grpo_gpu", "losses vs TRL");
    trl_grad.print("grpo_gpu", "gradients vs TRL");
    cpu_tol.print("grpo_gpu", "losses and metrics vs CPU");
    cpu_grad_tol.print("grpo_gpu", "gradients vs CPU");
}

TEST_CASE("GPU GRPO loss on a 48 x 200 micro-batch equals the CPU's for every loss type and option",
          "[gpu][head][grpo_gpu]") {
    // The tolerances of the dump test above, for the same reasons. The per-token loss has no CPU output of its
    // own, so its masked sum over the token count (in double) is checked against the CPU's bnpo loss, which is
    // exactly that sum: the same tolerance as the losses.
    Tolerance cpu_tol{1e-8, 2.4e-7}, cpu_grad_tol{1e-12, 3.6e-7}, bnpo_tol{1e-8, 2.4e-7};
    Rng rng(21);
    LossInputs in;
    in.B = 48;
    in.Tc = 200;
    size_t n = (size_t)in.B * in.Tc;
    in.logp.resize(n);
    in.old_logp.resize(n);
    in.ref_logp.resize(n);
    in.mask.assign(n, 0.0f);
    in.advantages.resize(in.B);
    for (int b = 0; b < in.B; b++) {
        // a zero advantage (a group where every completion scored the same) and an all-masked row included
        in.advantages[b] = b % 11 == 0 ? 0.0f : 3.0f * (rng.next_float() - 0.5f);
        int length = b == 5 ? 0 : 1 + (int)rng.next_below(in.Tc);
        for (int t = 0; t < length; t++) in.mask[(size_t)b * in.Tc + t] = 1.0f;
    }
    for (size_t i = 0; i < n; i++) {
        in.logp[i] = -5.0f * rng.next_float();
        in.old_logp[i] = in.logp[i] + 0.6f * (rng.next_float() - 0.5f);  // ratios inside and outside the clip
        in.ref_logp[i] = in.logp[i] + 0.4f * (rng.next_float() - 0.5f);
    }
    in.old_logp[7] = in.logp[7];  // ratio exactly 1
    for (const char* name : LOSS_NAMES) {
        for (double beta : {0.0, 0.04}) {
            for (bool with_old : {true, false}) {
                INFO(name << " beta " << beta << (with_old ? " with old_logp" : " old_logp = logp"));
                GrpoLossConfig config;
                config.loss_type = loss_type_from_name(name);
                config.beta = beta;
                config.epsilon_low = 0.2;
                config.epsilon_high = 0.28;
                config.max_completion_length = in.Tc;
                config.grad_accum_steps = 3;
                const float num_items = 3.0f * in.mask_sum();  // dapo: the whole accumulated batch's tokens
                GpuLossOutput gpu = gpu_loss(config, in, with_old, num_items);
                GpuLossOutput again = gpu_loss(config, in, with_old, num_items);
                std::vector<float> cpu_grad(n);
                GrpoLossResult cpu = grpo_loss(config, in.B, in.Tc, in.logp.data(), with_old ? in.old_logp.data() : nullptr,
                                               beta != 0.0 ? in.ref_logp.data() : nullptr, in.mask.data(),
                                               in.advantages.data(), num_items, cpu_grad.data());
                CHECK(cpu_tol.ok(gpu.result.loss, cpu.loss));
                CHECK(cpu_tol.ok(gpu.result.kl, cpu.metrics.kl));
                CHECK(cpu_tol.ok(gpu.result.clip_ratio_low_mean, cpu.metrics.clip_ratio_low_mean));
                CHECK(cpu_tol.ok(gpu.result.clip_ratio_high_mean, cpu.metrics.clip_ratio_high_mean));
                CHECK(cpu_tol.ok(gpu.result.clip_ratio_region_mean, cpu.metrics.clip_ratio_region_mean));
                CHECK(check_all(cpu_grad_tol, gpu.dloss_dlogp, cpu_grad, "dloss_dlogp vs CPU") == 0);
                // run to run: bit-identical
                CHECK(std::memcmp(&gpu.result, &again.result, sizeof(gpu.result)) == 0);
                CHECK(std::memcmp(gpu.dloss_dlogp.data(), again.dloss_dlogp.data(), n * sizeof(float)) == 0);
                // the per-token losses reproduce the bnpo aggregation
                GrpoLossConfig bnpo = config;
                bnpo.loss_type = LossType::BNPO;
                bnpo.grad_accum_steps = 1;
                GrpoLossResult cpu_bnpo = grpo_loss(bnpo, in.B, in.Tc, in.logp.data(),
                                                    with_old ? in.old_logp.data() : nullptr,
                                                    beta != 0.0 ? in.ref_logp.data() : nullptr, in.mask.data(),
                                                    in.advantages.data(), num_items, nullptr);
                double masked_sum = 0.0;
                for (size_t i = 0; i < n; i++) masked_sum += gpu.per_token_loss[i] * in.mask[i];
                CHECK(bnpo_tol.ok((float)masked_sum / in.mask_sum(), cpu_bnpo.loss));
            }
        }
    }
    cpu_tol.print("grpo_gpu", "random-batch losses and metrics vs CPU");
    cpu_grad_tol.print("grpo_gpu", "random-batch gradients vs CPU");
    bnpo_tol.print("grpo_gpu", "per-token loss sums vs CPU bnpo");
}

TEST_CASE("GPU GRPO loss rejects what grpo_loss rejects", "[gpu][head][grpo_gpu]") {
    GrpoLossConfig config;
    config.beta = 0.04;
    GrpoLossGpuResult* result = nullptr;
    float x = 0.0f;
    CHECK_THROWS_AS(grpo_loss_cuda(result, nullptr, nullptr, config, 1, 1, &x, nullptr, nullptr, &x, &x, 1.0f, nullptr, 0),
                    GrpoError);  // beta != 0 without ref_logp
    config.beta = 0.0;
    config.loss_type = LossType::DAPO;
    CHECK_THROWS_AS(grpo_loss_cuda(result, nullptr, nullptr, config, 1, 1, &x, nullptr, nullptr, &x, &x, 0.0f, nullptr, 0),
                    GrpoError);  // dapo without a token count
}

// ---- AdamW and gradient clipping -----------------------------------------------------------------------------

namespace {

struct OptimizerState {
    std::vector<float> params, grads, m, v;
    explicit OptimizerState(size_t n, Rng& rng) : params(n), grads(n), m(n), v(n) {
        for (size_t i = 0; i < n; i++) {
            params[i] = 0.1f * (rng.next_float() - 0.5f);
            grads[i] = 0.01f * (rng.next_float() - 0.5f);
            m[i] = 0.005f * (rng.next_float() - 0.5f);
            v[i] = 1e-5f * rng.next_float();
        }
    }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
    REQUIRE(a.size() == b.size());
    size_t differ = 0, first = 0;
    for (size_t i = 0; i < a.size(); i++)
        if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0 && differ++ == 0) first = i;
    if (differ) UNSCOPED_INFO(what << ": " << differ << " of " << a.size() << " differ, first [" << first << "] "
                                   << a[first] << " vs " << b[first]);
    return differ == 0;
}

}  // namespace

TEST_CASE("GPU AdamW is bit-identical to adamw_update", "[gpu][head][adamw_gpu]") {
    Rng rng(31);
    AdamWConfig cfg;
    cfg.beta2 = 0.99;  // the reference dumps' betas
    cfg.weight_decay = 0.1;
    // 1,000,003: float4 body plus a 3-element tail; offset 1: unaligned buffers, the scalar path
    for (size_t offset : {(size_t)0, (size_t)1}) {
        const size_t n = 1000003;
        INFO("offset " << offset);
        OptimizerState cpu(n + offset, rng);
        DeviceArray<float> p(cpu.params), g(cpu.grads), m(cpu.m), v(cpu.v);
        int64_t step = 0;
        for (double lr : {0.0, 5e-3, 2.5e-3, 1e-4}) {
            step++;
            adamw_update(cpu.params.data() + offset, cpu.grads.data() + offset, cpu.m.data() + offset,
                         cpu.v.data() + offset, n, cfg, lr, step);
            adamw_cuda(p.ptr + offset, g.ptr + offset, m.ptr + offset, v.ptr + offset, n, cfg, lr, step, nullptr, 0);
        }
        CHECK(same_bits(p.download(), cpu.params, "params"));
        CHECK(same_bits(m.download(), cpu.m, "adam_m"));
        CHECK(same_bits(v.download(), cpu.v, "adam_v"));
    }
    std::printf("[adamw_gpu] 2 x 1000003 parameters after 4 steps: params, m and v bit-identical to the CPU\n");
}

TEST_CASE("GPU gradient norm, clipping and the fused clip + AdamW equal clip_grad_norm then adamw_update",
          "[gpu][head][adamw_gpu]") {
    // The norm: squares are exact in double and both sides round each tensor's norm and the total to fp32
    // from double sums (in different orders), so the fp32 results are the same: compared exactly.
    Rng rng(41);
    // tensor sizes that span several stage-1 chunks (16384), end mid-chunk, and are tiny
    std::vector<size_t> sizes = {114688, 16384, 16385, 1, 606208, 3, 50000};
    size_t n = std::accumulate(sizes.begin(), sizes.end(), (size_t)0);
    std::vector<int64_t> offsets = {0};
    for (size_t s : sizes) offsets.push_back(offsets.back() + (int64_t)s);
    int64_t max_size = (int64_t)*std::max_element(sizes.begin(), sizes.end());
    DeviceArray<int64_t> d_offsets(offsets);
    DeviceArray<char> scratch(grad_norm_scratch_bytes((int)sizes.size(), max_size));
    DeviceArray<float> norm_and_coef(2);
    AdamWConfig cfg;
    for (double max_norm : {0.1, 1e9}) {  // clipping, and a coefficient clamped to 1
        INFO("max_norm " << max_norm);
        OptimizerState cpu(n, rng);
        DeviceArray<float> p(cpu.params), g(cpu.grads), m(cpu.m), v(cpu.v), g2(cpu.grads);
        grad_norm_cuda(norm_and_coef.ptr, g.ptr, d_offsets.ptr, (int)sizes.size(), max_size, max_norm, scratch.ptr, 0);
        DeviceArray<float> norm_again(2);
        grad_norm_cuda(norm_again.ptr, g.ptr, d_offsets.ptr, (int)sizes.size(), max_size, max_norm, scratch.ptr, 0);
        // fused: AdamW reads g * coef; separate: scale the gradients, then AdamW
        adamw_cuda(p.ptr, g.ptr, m.ptr, v.ptr, n, cfg, 1e-3, 1, norm_and_coef.ptr + 1, 0);
        scale_grads_cuda(g2.ptr, n, norm_and_coef.ptr + 1, 0);
        std::vector<float> gpu_norm = norm_and_coef.download(), gpu_norm_again = norm_again.download();
        float cpu_norm = clip_grad_norm(cpu.grads.data(), sizes, max_norm);
        adamw_update(cpu.params.data(), cpu.grads.data(), cpu.m.data(), cpu.v.data(), n, cfg, 1e-3, 1);
        CHECK(gpu_norm[0] == cpu_norm);
        CHECK(std::memcmp(gpu_norm.data(), gpu_norm_again.data(), 2 * sizeof(float)) == 0);
        CHECK(same_bits(g2.download(), cpu.grads, "clipped grads"));
        CHECK(same_bits(p.download(), cpu.params, "params after fused clip + AdamW"));
        CHECK(same_bits(m.download(), cpu.m, "adam_m after fused clip + AdamW"));
        CHECK(same_bits(v.download(), cpu.v, "adam_v after fused clip + AdamW"));
        // the coefficient itself is checked through the clipped gradients, which clip_grad_norm scaled by its own
        std::printf("[adamw_gpu] max_norm %g: norm %.9g (CPU %.9g), coef %.9g; clipped grads and the fused step "
                    "bit-identical over %zu parameters\n",
                    max_norm, gpu_norm[0], cpu_norm, gpu_norm[1], n);
    }
}
