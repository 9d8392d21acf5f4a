#!/usr/bin/env bash
# wgmma_check.sh: on the GPU machine, the wgmma path of decode_linear: the instruction probe, the decode_linear GPU tests (whose wide groups at 49-64 rows take the wgmma path), the decode_linear lab's layer graphs (production, wgmma0, wgwave, wgp4b4, wgall), and generation at batch 48 / 64 with the path and without it (the same tree built with -DDL_CFG_WGMMA=0), last a short table.
# Usage (repo root, carry dev/carry for the Catch2 header): bash dev/wgmma_check.sh   (about 5 minutes with the build)
set -uo pipefail
out="${OUT:-/tmp}"
make -j16 CATCH_INC=dev/carry build/lab_wgmma_probe build/test_gpu build/bench_generate build/lab_decode_linear train_grpo \
    > "$out/wgmma_build.log" 2>&1 ||
    { grep -E "error" "$out/wgmma_build.log" | head -20; exit 1; }
timeout 120 ./build/lab_wgmma_probe; echo "lab_wgmma_probe rc $?"
timeout 200 ./build/test_gpu "[decode_linear],[gpu_generate],[gpu_model]" > "$out/wgmma_tests.log" 2>&1
echo "GPU tests rc $?"; grep -E "FAILED|failed" -A3 "$out/wgmma_tests.log" | head -20; tail -2 "$out/wgmma_tests.log"
# a 7B layer's linears as a CUDA graph: production (wide groups on wgmma at M 49-64) against the variants
timeout 240 ./build/lab_decode_linear > "$out/lab_decode_linear.txt" 2>&1; echo "lab_decode_linear rc $?"
grep -E "validation|FAIL" "$out/lab_decode_linear.txt" | head -5
grep -E "layer M=(48|64) graph(, (wgmma0|wgwave|wgp4b4|wgall))? " "$out/lab_decode_linear.txt"
# the same bench_generate without the wgmma path
objs=$(ls build/kernels/*.o build/model/*.o | grep -v "kernels/decode_linear.o")
nvcc -O2 -std=c++17 -gencode arch=compute_90a,code=sm_90a -DDL_SM90A=1 -DDL_CFG_WGMMA=0 -I. -c kernels/decode_linear.cu \
    -o /tmp/dl_wgmma0.o && nvcc -O2 -std=c++17 -arch=sm_90 -I. dev/bench_generate.cu $objs /tmp/dl_wgmma0.o \
    build/libgrpo.a -o /tmp/bench_generate_wgmma0 -lcublasLt || exit 1
row() { timeout 60 "$2" 7B 256 512 48,64 2>&1 | grep RESULT | sed -E \
    "s/.*\"M\": ([0-9]+).*\"tokens_per_s\": ([0-9]+), \"step_ms\": ([0-9.]+).*/$1 M=\1 tokens_per_s=\2 step_ms=\3/"; }
row wgmma ./build/bench_generate
row streaming /tmp/bench_generate_wgmma0
row wgmma ./build/bench_generate
