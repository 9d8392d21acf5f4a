// ew_embedding.cu: lab for the token embedding gather out[n] = embed[tokens[n]] (bf16 rows; the table is frozen).
// Build and run: make build/lab_ew_embedding && ./build/lab_ew_embedding
// One version: one thread per 16-byte chunk of the output (kernels/embedding.cu). A copy has nothing else to try.
#include "dev/cuda/lab_common.cuh"
#include "kernels/embedding.cuh"
#include "model/config.h"
#include "model/cpu_model.h"

int main() {
    Rng rng(42);
    const Qwen2Config q05 = qwen2_preset("0.5B"), q7 = qwen2_preset("7B");
    struct Shape { int N, V, C; };
    const Shape shapes[] = {{96, 384, 64}, {15744, q05.V, q05.C}, {15744, q7.V, q7.C}};
    bool all_ok = true;
    for (const Shape& s : shapes) {
        const int N = s.N, V = s.V, C = s.C;
        printf("== N %d V %d C %d\n", N, V, C);
        std::vector<bf16_bits> embed((size_t)V * C);  // 1 GB at 7B: drawn straight as bf16
        for (bf16_bits& e : embed) e = f32_to_bf16(rng.next_float() * 2.0f - 1.0f);
        std::vector<int32_t> tokens(N);
        for (int32_t& t : tokens) t = (int32_t)rng.next_below(V);
        std::vector<float> ref((size_t)N * C);
        cpu_embedding_forward(ref.data(), tokens.data(), embed.data(), N, C);

        bf16_bits *d_embed = to_device(embed), *d_out = to_device(std::vector<bf16_bits>((size_t)N * C));
        int32_t* d_tokens = to_device(tokens);
        embedding_forward((__nv_bfloat16*)d_out, d_tokens, (const __nv_bfloat16*)d_embed, N, C, 0);
        std::vector<float> got = bf16_to_floats(to_host(d_out, (size_t)N * C));
        all_ok &= validate("v1 16-byte gather", got.data(), ref.data(), got.size(), 0.0f, 0.0f);  // a copy: exact

        float ms = time_kernel_ms(
            [&] { embedding_forward((__nv_bfloat16*)d_out, d_tokens, (const __nv_bfloat16*)d_embed, N, C, 0); });
        report("v1 16-byte gather", ms, 2.0 * N * C * 2 + N * 4.0, 0);
        cudaCheck(cudaFree(d_embed));
        cudaCheck(cudaFree(d_out));
        cudaCheck(cudaFree(d_tokens));
    }
    printf(all_ok ? "all versions ok\n" : "FAIL: some version disagrees with the CPU reference\n");
    return all_ok ? 0 : 1;
}
