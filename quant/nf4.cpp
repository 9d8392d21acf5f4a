// nf4.cpp: NF4 quantize/dequantize with double quantization on the CPU, step for step what bitsandbytes' CUDA kernels compute.
#include "quant/nf4.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "data/text.h"
#include "quant/bf16.h"
#include "quant/dynamic_map.h"

// Written as float literals exactly as bitsandbytes writes them (dDequantizeNF4, dQuantizeNF4 in
// csrc/kernels.cu): the compiler rounds each decimal straight to float. The thresholds are the midpoints of
// adjacent code values; four of them (-0.848, 0.120, 0.502, 0.861) are ties between two floats when the
// decimal is first read as a double, so building them via double would land on the other neighbour. For bf16
// weights this can never show (no bf16 weight and bf16 absmax scale onto a threshold exactly: checked over
// every pair), but it would for fp32 inputs, and the CUDA kernels should use the same literals.
static const float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
static const float NF4_THRESHOLDS[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};

void nf4_default_code(float code[16]) { memcpy(code, NF4_CODE, sizeof(NF4_CODE)); }

void nf4_default_nested_code(float nested_code[256]) {
    static_assert(sizeof(DYNAMIC_MAP_BITS) == 256 * sizeof(float), "the dynamic map has 256 float entries");
    memcpy(nested_code, DYNAMIC_MAP_BITS, sizeof(DYNAMIC_MAP_BITS));
}

uint8_t nf4_code_of(float scaled) {
    // Counting is the same as bitsandbytes' decision tree of `x > t` because the thresholds are sorted.
    uint8_t code = 0;
    for (float threshold : NF4_THRESHOLDS) code += scaled > threshold;
    return code;
}

uint8_t dynamic_map_index(const float map[256], float x) {
    // bitsandbytes' dQuantize<0>: seven halving steps from the middle, remembering the last entry x did not
    // exceed (upper, map[255] if none) and the last one it exceeded (lower, map[0] if none)...
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    for (int step = 64; step > 0; step /= 2) {
        if (x > map[pivot]) {
            lower_pivot = pivot;
            pivot += step;
        } else {
            upper_pivot = pivot;
            pivot -= step;
        }
    }
    // ...then one comparison with the midpoint towards the side x lies on; a tie keeps the final pivot.
    // NaN (an all-equal nested block: 0 * inf) exceeds nothing, walks down to 0 and stays there.
    float val = map[pivot];
    if (x > val) {
        float midpoint = (map[upper_pivot] + val) * 0.5f;
        return (uint8_t)(x > midpoint ? upper_pivot : pivot);
    } else {
        float midpoint = (map[lower_pivot] + val) * 0.5f;
        return (uint8_t)(x < midpoint ? lower_pivot : pivot);
    }
}

float nf4_absmax_offset(const float* absmax, int64_t count) {
    // bitsandbytes takes torch's absmax.mean() on the GPU. torch's CUDA mean is not sum / n: it reduces
    // to an fp32 sum and multiplies by an fp32 factor 1.0f / n (MeanOps), two roundings; the correctly
    // rounded sum / n differed from torch's by an ulp in one of the seven dumped cases, this in none.
    // The fp32 sum comes from a reduction tree whose order we cannot reproduce; we take the double sum
    // rounded once, which is what torch got in every dumped case (up to 2048 blocks). For much larger
    // tensors torch's fp32 accumulation may drift from it by an ulp; a stored offset always wins on load.
    double sum = 0.0;
    for (int64_t i = 0; i < count; i++) sum += absmax[i];
    return (float)sum * (1.0f / (float)count);
}

void nf4_double_quantize(const float* absmax, int64_t count, float offset, NF4Tensor* t) {
    t->double_quant = true;
    t->nested_offset = offset;
    t->absmax_q.assign(count, 0);
    t->nested_absmax.assign((count + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK, 0.0f);
    std::vector<float> centered(count);
    for (int64_t i = 0; i < count; i++) centered[i] = absmax[i] - offset;
    for (size_t nb = 0; nb < t->nested_absmax.size(); nb++) {
        int64_t begin = (int64_t)nb * NF4_NESTED_BLOCK, end = std::min(begin + NF4_NESTED_BLOCK, count);
        float block_max = 0.0f;
        for (int64_t i = begin; i < end; i++) block_max = fmaxf(block_max, fabsf(centered[i]));
        t->nested_absmax[nb] = block_max;
        float inv = 1.0f / block_max;  // the kernel multiplies by the reciprocal, so must we
        for (int64_t i = begin; i < end; i++) t->absmax_q[i] = dynamic_map_index(t->nested_code, centered[i] * inv);
    }
}

static void check_shape(int64_t rows, int64_t cols, const char* who) {
    if (rows <= 0 || cols <= 0 || rows > INT64_MAX / cols)
        throw GrpoError(std::string(who) + ": an NF4 matrix needs positive rows and cols whose product fits in "
                        "int64, found [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
}

static void check_length(const NF4Tensor& t, const char* array, size_t found, int64_t expected, const char* rule) {
    if ((int64_t)found == expected) return;
    throw GrpoError("NF4 tensor [" + std::to_string(t.rows) + ", " + std::to_string(t.cols) + "]: " + array +
                    " has " + std::to_string(found) + " entries, expected " + std::to_string(expected) + " (" +
                    rule + ")");
}

void nf4_check(const NF4Tensor& t) {
    check_shape(t.rows, t.cols, "nf4_check");
    check_length(t, "packed", t.packed.size(), (t.numel() + 1) / 2, "two 4-bit codes a byte");
    if (t.double_quant) {
        check_length(t, "absmax_q", t.absmax_q.size(), t.num_blocks(), "one byte per 64-element block");
        check_length(t, "nested_absmax", t.nested_absmax.size(), t.num_nested_blocks(),
                     "one fp32 per 256 blocks");
    } else {
        check_length(t, "absmax_f32", t.absmax_f32.size(), t.num_blocks(), "one fp32 per 64-element block");
    }
}

NF4View nf4_view(const NF4Tensor& t) {
    NF4View v;
    v.rows = t.rows;
    v.cols = t.cols;
    v.packed = t.packed.data();
    v.double_quant = t.double_quant;
    v.absmax_q = t.double_quant ? t.absmax_q.data() : nullptr;
    v.nested_absmax = t.double_quant ? t.nested_absmax.data() : nullptr;
    v.nested_offset = t.nested_offset;
    v.absmax_f32 = t.double_quant ? nullptr : t.absmax_f32.data();
    v.code = t.code;
    v.nested_code = t.nested_code;
    v.default_code = nf4_is_default_code(t.code);
    return v;
}

bool nf4_tile_ok(int64_t rows, int64_t cols) { return rows > 0 && rows % 16 == 0 && cols > 0 && cols % NF4_BLOCK == 0; }

void nf4_tile(const NF4View& t, uint8_t* packed_out, uint8_t* absmax_q_out) {
    const int64_t nkb = t.cols / NF4_BLOCK;
    for (int64_t tile = 0; tile < t.rows / 16; tile++)
        for (int64_t kb = 0; kb < nkb; kb++) {
            uint8_t* unit = packed_out + (tile * nkb + kb) * 512;
            for (int lane = 0; lane < 32; lane++)
                for (int h = 0; h < 2; h++) {
                    const int64_t row = tile * 16 + lane / 4 + 8 * h;
                    memcpy(unit + lane * 16 + h * 8, t.packed + row * (t.cols / 2) + kb * 32 + (lane % 4) * 8, 8);
                }
            if (absmax_q_out)
                for (int r = 0; r < 16; r++) absmax_q_out[(tile * nkb + kb) * 16 + r] = t.absmax_q[(tile * 16 + r) * nkb + kb];
        }
}

bool nf4_is_default_code(const float code[16]) {
    float standard[16];
    nf4_default_code(standard);
    return memcmp(standard, code, sizeof(standard)) == 0;
}

// nf4_block_absmax without the checks, for callers that have made them.
float nf4_view_block_absmax(const NF4View& t, int64_t block) {
    if (!t.double_quant) return t.absmax_f32[block];
    // dequantize_blockwise writes code * absmax2 as fp32, then `absmax += offset` adds in a separate pass:
    // two roundings. A fused multiply-add would round once and differ (hence -ffp-contract=off).
    float scaled = t.nested_code[t.absmax_q[block]] * t.nested_absmax[block / NF4_NESTED_BLOCK];
    return scaled + t.nested_offset;
}

float nf4_block_absmax(const NF4Tensor& t, int64_t block) {
    nf4_check(t);
    if (block < 0 || block >= t.num_blocks())
        throw GrpoError("nf4_block_absmax: block " + std::to_string(block) + " is outside the " +
                        std::to_string(t.num_blocks()) + " blocks of an NF4 tensor [" + std::to_string(t.rows) +
                        ", " + std::to_string(t.cols) + "]");
    return nf4_view_block_absmax(nf4_view(t), block);
}

void nf4_quantize(const uint16_t* bf16_weights, int64_t rows, int64_t cols, bool double_quant, NF4Tensor* out) {
    check_shape(rows, cols, "nf4_quantize");
    NF4Tensor& t = *out;
    t = NF4Tensor();
    t.rows = rows;
    t.cols = cols;
    t.double_quant = double_quant;
    nf4_default_code(t.code);
    nf4_default_nested_code(t.nested_code);

    int64_t n = t.numel(), blocks = t.num_blocks();
    t.packed.assign((n + 1) / 2, 0);
    std::vector<float> absmax(blocks);
    for (int64_t b = 0; b < blocks; b++) {
        // Like the kernel, load a whole block with zeros past the end: they leave the absmax alone, so a
        // partial last block takes it over the elements present, and an odd count's last low nibble gets
        // the code of that padding zero.
        int64_t begin = b * NF4_BLOCK;
        float x[NF4_BLOCK];
        for (int i = 0; i < NF4_BLOCK; i++) x[i] = begin + i < n ? bf16_to_f32(bf16_weights[begin + i]) : 0.0f;
        float block_max = 0.0f;
        for (int i = 0; i < NF4_BLOCK; i++) block_max = fmaxf(block_max, fabsf(x[i]));
        absmax[b] = block_max;
        // The kernel multiplies by the reciprocal rather than dividing (the two can differ in the last bit).
        // An all-zero block gives 1/0 = inf and 0 * inf = NaN: code 0 (-1.0) everywhere, bytes 0x00.
        float inv = 1.0f / block_max;
        uint8_t codes[NF4_BLOCK];
        for (int i = 0; i < NF4_BLOCK; i++) codes[i] = nf4_code_of(x[i] * inv);
        int64_t bytes = std::min<int64_t>(NF4_BLOCK / 2, (int64_t)t.packed.size() - begin / 2);
        for (int64_t j = 0; j < bytes; j++) t.packed[begin / 2 + j] = (uint8_t)(codes[2 * j] << 4 | codes[2 * j + 1]);
    }
    if (double_quant)
        nf4_double_quantize(absmax.data(), blocks, nf4_absmax_offset(absmax.data(), blocks), &t);
    else
        t.absmax_f32 = std::move(absmax);
}

void nf4_view_dequantize(const NF4View& t, uint16_t* bf16_out) {
    int64_t n = t.numel();
    for (int64_t b = 0; b < t.num_blocks(); b++) {
        float absmax = nf4_view_block_absmax(t, b);
        int64_t begin = b * NF4_BLOCK, end = std::min(begin + NF4_BLOCK, n);
        for (int64_t i = begin; i < end; i++) {
            uint8_t byte = t.packed[i / 2];
            uint8_t q = i % 2 == 0 ? byte >> 4 : byte & 0x0F;  // element 2j is the high nibble
            bf16_out[i] = f32_to_bf16(t.code[q] * absmax);
        }
    }
}

void nf4_dequantize(const NF4Tensor& t, uint16_t* bf16_out) {
    nf4_check(t);
    nf4_view_dequantize(nf4_view(t), bf16_out);
}
