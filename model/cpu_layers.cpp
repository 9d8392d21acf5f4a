// cpu_layers.cpp: the per-op forward and backward functions of the CPU reference model (norm, linear, LoRA, RoPE, attention, SwiGLU, log-probs).
#include <cmath>
#include <vector>

#include "model/cpu_model.h"
#include "quant/nf4.h"

const char* cpu_precision_name(CpuPrecision precision) { return precision == CpuPrecision::BF16 ? "bf16" : "fp32"; }

// One bf16 row as floats: the weights stay bf16 in memory, the arithmetic is fp32.
static void bf16_row_to_f32(float* out, const bf16_bits* row, int n) {
    for (int i = 0; i < n; i++) out[i] = bf16_to_f32(row[i]);
}

void cpu_embedding_forward(float* out, const int32_t* tokens, const bf16_bits* embed, int N, int C) {
    for (int n = 0; n < N; n++) bf16_row_to_f32(out + (size_t)n * C, embed + (size_t)tokens[n] * C, C);
}

// ---- RMSNorm ----------------------------------------------------------------------------------------------------

void cpu_rmsnorm_forward(float* out, float* rstd, const float* x, const bf16_bits* w, int N, int C, float eps,
                         CpuPrecision precision) {
    for (int n = 0; n < N; n++) {
        const float* xn = x + (size_t)n * C;
        float* on = out + (size_t)n * C;
        double sum_sq = 0.0;  // a long reduction: double keeps the reference free of ordering noise
        for (int c = 0; c < C; c++) sum_sq += (double)xn[c] * xn[c];
        float r = 1.0f / sqrtf((float)(sum_sq / C) + eps);
        rstd[n] = r;
        for (int c = 0; c < C; c++) on[c] = cpu_round(bf16_to_f32(w[c]) * cpu_round(xn[c] * r, precision), precision);
    }
}

void cpu_rmsnorm_backward(float* dx, const float* dout, const float* x, const float* rstd, const bf16_bits* w,
                          int N, int C) {
    for (int n = 0; n < N; n++) {
        const float* xn = x + (size_t)n * C;
        const float* dn = dout + (size_t)n * C;
        float* dxn = dx + (size_t)n * C;
        float r = rstd[n];
        // y_c = w_c x_c r with r = (mean(x^2) + eps)^-1/2, so dr/dx_j = -r^3 x_j / C
        double dot = 0.0;
        for (int c = 0; c < C; c++) dot += (double)dn[c] * bf16_to_f32(w[c]) * xn[c];
        float coef = (float)(dot / C) * r * r * r;
        for (int c = 0; c < C; c++) dxn[c] += r * dn[c] * bf16_to_f32(w[c]) - coef * xn[c];
    }
}

// ---- linear layers -------------------------------------------------------------------------------------------------

void cpu_matmul_forward(float* out, const float* in, const bf16_bits* w, const bf16_bits* bias, int N, int IN,
                        int OUT, CpuPrecision precision) {
    std::vector<float> wrow(IN);
    for (int o = 0; o < OUT; o++) {
        bf16_row_to_f32(wrow.data(), w + (size_t)o * IN, IN);
        float b = bias ? bf16_to_f32(bias[o]) : 0.0f;
        for (int n = 0; n < N; n++) {
            const float* x = in + (size_t)n * IN;
            float sum = 0.0f;
            for (int i = 0; i < IN; i++) sum += x[i] * wrow[i];
            out[(size_t)n * OUT + o] = cpu_round(sum + b, precision);
        }
    }
}

void cpu_matmul_backward(float* din, const float* dout, const bf16_bits* w, int N, int IN, int OUT) {
    std::vector<float> wrow(IN);
    for (int o = 0; o < OUT; o++) {
        bf16_row_to_f32(wrow.data(), w + (size_t)o * IN, IN);
        for (int n = 0; n < N; n++) {
            float d = dout[(size_t)n * OUT + o];
            float* dx = din + (size_t)n * IN;
            for (int i = 0; i < IN; i++) dx[i] += d * wrow[i];
        }
    }
}

const bf16_bits* cpu_linear_weight(const LinearWeight& lin, std::vector<bf16_bits>* scratch) {
    if (lin.format == LinearFormat::BF16) return lin.w;
    scratch->resize((size_t)lin.out * lin.in);
    nf4_view_dequantize(lin.nf4, scratch->data());
    return scratch->data();
}

void cpu_lora_forward(float* y, float* ax, const float* in, const float* A, const float* B, int N, int IN, int OUT,
                      int R, float scale, CpuPrecision precision) {
    for (int n = 0; n < N; n++) {
        const float* x = in + (size_t)n * IN;
        float* axn = ax + (size_t)n * R;
        for (int r = 0; r < R; r++) {
            const float* a = A + (size_t)r * IN;
            float sum = 0.0f;
            for (int i = 0; i < IN; i++) sum += a[i] * x[i];
            axn[r] = sum;
        }
        float* yn = y + (size_t)n * OUT;
        for (int o = 0; o < OUT; o++) {
            const float* b = B + (size_t)o * R;
            float sum = 0.0f;
            for (int r = 0; r < R; r++) sum += b[r] * axn[r];
            yn[o] = cpu_round(yn[o] + sum * scale, precision);  // PEFT: result + lora_B(lora_A(x)) * scaling
        }
    }
}

void cpu_lora_backward(float* din, float* dA, float* dB, const float* dy, const float* in, const float* ax,
                       const float* A, const float* B, int N, int IN, int OUT, int R, float scale) {
    std::vector<float> dax(R);
    for (int n = 0; n < N; n++) {
        const float* dyn = dy + (size_t)n * OUT;
        const float* axn = ax + (size_t)n * R;
        const float* x = in + (size_t)n * IN;
        for (int r = 0; r < R; r++) dax[r] = 0.0f;
        for (int o = 0; o < OUT; o++) {
            float d = dyn[o] * scale;
            const float* b = B + (size_t)o * R;
            float* db = dB + (size_t)o * R;
            for (int r = 0; r < R; r++) {
                db[r] += d * axn[r];
                dax[r] += d * b[r];
            }
        }
        float* dx = din + (size_t)n * IN;
        for (int r = 0; r < R; r++) {
            const float* a = A + (size_t)r * IN;
            float* da = dA + (size_t)r * IN;
            for (int i = 0; i < IN; i++) {
                da[i] += dax[r] * x[i];
                dx[i] += dax[r] * a[i];
            }
        }
    }
}

// ---- RoPE --------------------------------------------------------------------------------------------------------

std::vector<float> cpu_rope_inv_freq(int HD, float theta) {
    // HF: 1.0 / (theta ** (arange(0, HD, 2).float() / HD)), every step in fp32 (pow correctly rounded here)
    std::vector<float> inv_freq(HD / 2);
    for (int i = 0; i < HD / 2; i++) {
        float exponent = (float)(2 * i) / (float)HD;
        float power = (float)std::pow((double)theta, (double)exponent);
        inv_freq[i] = 1.0f / power;
    }
    return inv_freq;
}

void cpu_rope_tables(float* cos_out, float* sin_out, int T, int HD, float theta, CpuPrecision precision) {
    std::vector<float> inv_freq = cpu_rope_inv_freq(HD, theta);
    int H2 = HD / 2;
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < H2; i++) {
            float angle = (float)t * inv_freq[i];  // fp32, as HF's inv_freq @ position_ids
            cos_out[t * H2 + i] = cpu_round((float)std::cos((double)angle), precision);
            sin_out[t * H2 + i] = cpu_round((float)std::sin((double)angle), precision);
        }
    }
}

void cpu_rope_forward(float* x, const int* pos, const float* cos_table, const float* sin_table, int N, int H,
                      int HD, CpuPrecision precision) {
    int H2 = HD / 2;
    for (int n = 0; n < N; n++) {
        const float* c = cos_table + (size_t)pos[n] * H2;
        const float* s = sin_table + (size_t)pos[n] * H2;
        for (int h = 0; h < H; h++) {
            float* xh = x + ((size_t)n * H + h) * HD;
            for (int i = 0; i < H2; i++) {
                float x1 = xh[i], x2 = xh[i + H2];  // rotate_half: first half gets -x2, second half gets x1
                xh[i] = cpu_round(cpu_round(x1 * c[i], precision) + cpu_round(-x2 * s[i], precision), precision);
                xh[i + H2] = cpu_round(cpu_round(x2 * c[i], precision) + cpu_round(x1 * s[i], precision), precision);
            }
        }
    }
}

void cpu_rope_backward(float* dx, const int* pos, const float* cos_table, const float* sin_table, int N, int H,
                       int HD) {
    // forward per pair: y1 = c x1 - s x2, y2 = c x2 + s x1; its transpose: dx1 = c dy1 + s dy2, dx2 = c dy2 - s dy1
    int H2 = HD / 2;
    for (int n = 0; n < N; n++) {
        const float* c = cos_table + (size_t)pos[n] * H2;
        const float* s = sin_table + (size_t)pos[n] * H2;
        for (int h = 0; h < H; h++) {
            float* d = dx + ((size_t)n * H + h) * HD;
            for (int i = 0; i < H2; i++) {
                float dy1 = d[i], dy2 = d[i + H2];
                d[i] = c[i] * dy1 + s[i] * dy2;
                d[i + H2] = c[i] * dy2 - s[i] * dy1;
            }
        }
    }
}

// ---- attention ------------------------------------------------------------------------------------------------

void cpu_attention_forward(float* out, float* probs, const float* q, const float* k, const float* v, int B, int Tq,
                           int pos0, int kv_T, int NH, int KVH, int HD, CpuPrecision precision) {
    const int Tk = pos0 + Tq;
    const int group = NH / KVH;  // query heads per key/value head
    const float scale = (float)(1.0 / std::sqrt((double)HD));  // HF: head_dim ** -0.5, applied as an fp32 scalar
    std::vector<float> p(Tk);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            int kvh = h / group;
            for (int i = 0; i < Tq; i++) {
                int t = pos0 + i;  // causal: keys 0..t
                const float* qh = q + (((size_t)b * Tq + i) * NH + h) * HD;
                float max_score = -INFINITY;
                for (int s = 0; s <= t; s++) {
                    const float* kh = k + (((size_t)b * kv_T + s) * KVH + kvh) * HD;
                    float dot = 0.0f;
                    for (int d = 0; d < HD; d++) dot += qh[d] * kh[d];
                    p[s] = cpu_round(cpu_round(dot, precision) * scale, precision);
                    max_score = fmaxf(max_score, p[s]);
                }
                double sum = 0.0;
                for (int s = 0; s <= t; s++) {
                    p[s] = expf(p[s] - max_score);
                    sum += p[s];
                }
                for (int s = 0; s <= t; s++) p[s] = cpu_round(p[s] / (float)sum, precision);
                float* oh = out + (((size_t)b * Tq + i) * NH + h) * HD;
                for (int d = 0; d < HD; d++) {
                    float acc = 0.0f;
                    for (int s = 0; s <= t; s++) acc += p[s] * v[(((size_t)b * kv_T + s) * KVH + kvh) * HD + d];
                    oh[d] = cpu_round(acc, precision);
                }
                if (probs) {
                    float* row = probs + (((size_t)b * NH + h) * Tq + i) * Tk;
                    for (int s = 0; s < Tk; s++) row[s] = s <= t ? p[s] : 0.0f;
                }
            }
        }
    }
}

void cpu_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q,
                            const float* k, const float* v, int B, int T, int NH, int KVH, int HD) {
    const int group = NH / KVH;
    const float scale = (float)(1.0 / std::sqrt((double)HD));
    std::vector<float> dp(T);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            int kvh = h / group;
            for (int t = 0; t < T; t++) {
                const float* p = probs + (((size_t)b * NH + h) * T + t) * T;
                size_t qrow = (((size_t)b * T + t) * NH + h) * HD;
                const float* dout_h = dout + qrow;
                // out = sum_s p_s v_s: dp_s = dout . v_s and dv_s += p_s dout
                double sum_pdp = 0.0;
                for (int s = 0; s <= t; s++) {
                    size_t kvrow = (((size_t)b * T + s) * KVH + kvh) * HD;
                    float dot = 0.0f;
                    for (int d = 0; d < HD; d++) {
                        dot += dout_h[d] * v[kvrow + d];
                        dv[kvrow + d] += p[s] * dout_h[d];
                    }
                    dp[s] = dot;
                    sum_pdp += (double)p[s] * dot;
                }
                // softmax: dscore_s = p_s (dp_s - sum_r p_r dp_r); score = scale * q . k_s
                for (int s = 0; s <= t; s++) {
                    float ds = p[s] * (dp[s] - (float)sum_pdp) * scale;
                    size_t kvrow = (((size_t)b * T + s) * KVH + kvh) * HD;
                    for (int d = 0; d < HD; d++) {
                        dq[qrow + d] += ds * k[kvrow + d];
                        dk[kvrow + d] += ds * q[qrow + d];
                    }
                }
            }
        }
    }
}

// ---- MLP, residual -----------------------------------------------------------------------------------------------

void cpu_swiglu_forward(float* out, float* a, const float* g, const float* u, int N, int I, CpuPrecision precision) {
    for (size_t j = 0; j < (size_t)N * I; j++) {
        a[j] = cpu_round(g[j] / (1.0f + expf(-g[j])), precision);  // silu in fp32 on the rounded gate
        out[j] = cpu_round(a[j] * u[j], precision);
    }
}

void cpu_swiglu_backward(float* dg, float* du, const float* dout, const float* g, const float* u, const float* a,
                         int N, int I) {
    for (size_t j = 0; j < (size_t)N * I; j++) {
        float s = 1.0f / (1.0f + expf(-g[j]));
        dg[j] += dout[j] * u[j] * s * (1.0f + g[j] * (1.0f - s));
        du[j] += dout[j] * a[j];
    }
}

void cpu_residual_forward(float* out, const float* x, const float* y, int N, CpuPrecision precision) {
    for (int j = 0; j < N; j++) out[j] = cpu_round(x[j] + y[j], precision);
}

// ---- lm_head and log-probs -----------------------------------------------------------------------------------------

void cpu_logits_row(float* logits, const float* x, const bf16_bits* lm_head, int V, int C, CpuPrecision precision) {
    for (int v = 0; v < V; v++) {
        const bf16_bits* w = lm_head + (size_t)v * C;
        float sum = 0.0f;
        for (int c = 0; c < C; c++) sum += x[c] * bf16_to_f32(w[c]);
        logits[v] = cpu_round(sum, precision);
    }
}

float cpu_logprob_forward(const float* logits, int V, int target, float temperature, float* probs) {
    // TRL: log_softmax(logits.float() / temperature) — a true division, not a multiply by 1/temperature
    float max_z = -INFINITY;
    for (int v = 0; v < V; v++) max_z = fmaxf(max_z, logits[v] / temperature);
    double sum = 0.0;
    for (int v = 0; v < V; v++) sum += expf(logits[v] / temperature - max_z);
    float log_sum = (float)std::log(sum);
    if (probs)
        for (int v = 0; v < V; v++) probs[v] = (float)(expf(logits[v] / temperature - max_z) / sum);
    return (logits[target] / temperature - max_z) - log_sum;
}

void cpu_logprob_backward(float* dlogits, const float* probs, int V, int target, float dlogp, float temperature) {
    for (int v = 0; v < V; v++) dlogits[v] = dlogp * ((v == target ? 1.0f : 0.0f) - probs[v]) / temperature;
}
