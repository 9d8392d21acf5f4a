#!/usr/bin/env bash
# wgmma_check.sh: on the GPU machine, the two wgmma labs (branch next/wgmma-probe): the instruction rates and the descriptor convention (lab_wgmma_probe), then the draft batch-64 NF4 decode linear against the CPU and beside the production kernel (lab_decode_wgmma).
# Usage (repo root): bash dev/wgmma_check.sh   (about a minute with the build)
set -uo pipefail
make -j16 build/lab_wgmma_probe build/lab_decode_wgmma > "${OUT:-/tmp}/wgmma_build.log" 2>&1 ||
    { grep -E "error" "${OUT:-/tmp}/wgmma_build.log" | head -20; exit 1; }
timeout 120 ./build/lab_wgmma_probe; echo "lab_wgmma_probe rc $?"
timeout 240 ./build/lab_decode_wgmma; echo "lab_decode_wgmma rc $?"
