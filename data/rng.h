// rng.h: a small seeded random number generator (splitmix64), the same sequence on every machine and backend.
#pragma once
#include <cstdint>

// splitmix64: tiny state, good statistical quality, and trivially reproducible, which is what a
// resumable run needs (the state is one integer to checkpoint).
struct Rng {
    uint64_t state;
    explicit Rng(uint64_t seed) : state(seed) {}
    uint64_t next_u64() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    // Uniform in [0, 1) with 24 bits, exactly representable as a float.
    float next_float() { return (float)(next_u64() >> 40) * (1.0f / 16777216.0f); }
    // Uniform integer in [0, n) without modulo bias.
    uint64_t next_below(uint64_t n) {
        uint64_t limit = UINT64_MAX - UINT64_MAX % n;
        uint64_t x;
        do { x = next_u64(); } while (x >= limit);
        return x % n;
    }
};
