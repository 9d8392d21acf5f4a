// bf16.h: bfloat16 <-> fp32 conversion on the host, rounding to nearest even exactly like PyTorch's .to(torch.bfloat16), and IEEE half -> fp32.
#pragma once
#include <cstdint>
#include <cstring>

typedef uint16_t bf16_bits;  // the raw bits; host code never does arithmetic in bf16, only rounds to it

inline float bf16_to_f32(bf16_bits b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

inline bf16_bits f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    // NaN must stay NaN: rounding could carry its payload into the exponent and make it inf
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return (bf16_bits)((u >> 16) | 0x0040u);
    uint32_t rounding_bias = 0x7FFFu + ((u >> 16) & 1u);  // ties go to the even neighbour
    return (bf16_bits)((u + rounding_bias) >> 16);
}

// fp32 rounded through bf16 and back: what HF gets when it casts an fp32 activation to bf16.
inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// IEEE half to float, exact (for F16 checkpoints and adapters): rebias the exponent; subnormal halves become normal floats.
inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
    if (exp == 0x1F) bits = sign | 0x7F800000u | (mant << 13);
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (mant << 13);
    else if (mant == 0) bits = sign;
    else {
        int shift = 0;
        while (!(mant & 0x400)) { mant <<= 1; shift++; }
        bits = sign | ((uint32_t)(113 - shift) << 23) | ((mant & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}
