// mma.cuh: the one tensor-core instruction the hand-written kernels use (mma.sync m16n8k16, bf16 in, fp32 accumulate), with its fragment layout.
#pragma once
#include <cstdint>

// D = C + A B for one warp. Per lane (g = lane / 4, c = lane % 4):
//   A (16x16, row-major): a[0] = A[g][2c..2c+1], a[1] = A[g+8][2c..2c+1], a[2] = A[g][2c+8..2c+9], a[3] = A[g+8][2c+8..]
//   B (16x8, column-major): b[0] = B[2c..2c+1][g], b[1] = B[2c+8..2c+9][g]
//   C, D (16x8): d[0..1] = D[g][2c..2c+1], d[2..3] = D[g+8][2c..2c+1]
// Two bf16 share a 32-bit register, the lower index in the lower half. Not volatile: the instruction has no side
// effect, so the compiler may schedule it freely among the loads and dequantization around it.
__device__ __forceinline__ void mma_bf16_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
