// wgmma.cuh: Hopper's warpgroup MMA (wgmma m64n64k16, bf16 in, fp32 accumulate, A from registers, B from shared memory through a descriptor), its fences, the shared-memory layout of B, and the bulk copy (TMA) with the mbarriers that feed B (sm_90a only).
#pragma once
#include <cstdint>

#include <cuda_bf16.h>

// A shared-memory matrix descriptor without swizzle: start address, leading and stride byte offsets, each in units
// of 16 bytes (bits 0-13, 16-29 and 32-45), base offset 0 (bits 49-51), swizzle mode 0 (bits 62-63).
__device__ __forceinline__ uint64_t wg_descriptor(const void* smem, uint32_t leading_bytes, uint32_t stride_bytes) {
    const uint32_t address = (uint32_t)__cvta_generic_to_shared(smem);
    uint64_t d = 0;
    d |= (uint64_t)((address & 0x3FFFF) >> 4);
    d |= (uint64_t)((leading_bytes >> 4) & 0x3FFF) << 16;
    d |= (uint64_t)((stride_bytes >> 4) & 0x3FFF) << 32;
    return d;
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// until at most N of this warpgroup's committed groups are still running
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Pins the accumulators in place: the compiler sees wgmma's outputs as ready when the instruction issues, so
// without this it could read (or move) them before wgmma.wait_group says they are (as CUTLASS fences its operands).
__device__ __forceinline__ void wg_fence_operands(float (&d)[32]) {
#pragma unroll
    for (int i = 0; i < 32; i++) asm volatile("" : "+f"(d[i])::"memory");
}
// The same for A fragments in registers (4 k-steps of 4): wgmma reads them after it issues, so they must stay where
// they are until the wgmma.wait_group that covers it; calling this after that wait keeps the compiler from reusing
// their registers earlier.
__device__ __forceinline__ void wg_fence_operands(uint32_t (&a)[4][4]) {
#pragma unroll
    for (int s = 0; s < 4; s++)
#pragma unroll
        for (int i = 0; i < 4; i++) asm volatile("" : "+r"(a[s][i])::"memory");
}
// ordinary stores to shared memory, made visible to the async proxy that wgmma reads through
__device__ __forceinline__ void wg_fence_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// D (64 x 64, fp32, 32 registers a thread) += A (64 x 16 from registers) B (16 x 64 from shared memory).
__device__ __forceinline__ void wgmma_m64n64k16_rs(float d[32], const uint32_t a[4], uint64_t desc_b) {
    asm volatile(
        "{\n"
        ".reg .pred accumulate;\n"  // scale-d is a predicate: D = A B + D when set, A B when not
        "setp.ne.b32 accumulate, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, accumulate, 1, 1, 0;\n"  // scale A and B by +1, B not transposed (K-major)
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

// Where element (n, k) of a 64 x 16 B tile (64 rows of 16 k) lies in the labs' layout, in bf16 elements: core
// matrix (n / 8, k / 8) at byte (n / 8) * 256 + (k / 8) * 128, row n % 8 of it at 16 bytes a row.
__host__ __device__ inline int wg_b_offset(int n, int k) { return (n / 8) * 128 + (k / 8) * 64 + (n % 8) * 8 + k % 8; }

// ---- the bulk copy into shared memory (TMA) and its mbarriers ----
// An mbarrier counts arrivals (and, for a bulk copy, bytes) per phase; a phase completes when both reach zero, and
// waiting names the phase by its parity (0 for the first, 1 for the second, ...). 32-bit addresses are shared ones.
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
}
// after the inits, before any thread or bulk copy uses the barriers (then a __syncthreads)
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// until the phase of this parity has completed
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n"
                     ".reg .pred complete;\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 complete, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, complete;\n"
                     "}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
}
// One thread: copy `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to shared memory; the
// barrier's phase then completes with this thread's arrival and the bytes' landing.
__device__ __forceinline__ void tma_copy_arrive(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
