// decode_advance.cuh: launcher of the per-token bookkeeping of batched generation: record the token each row just drew, move the row to its next position, and count the rows still unfinished, all on the GPU so that the decode loop needs no host round trip per token.
#pragma once
#include <cuda_runtime.h>

// After sample_tokens has drawn token t = steps[m] of every row m (tokens [M], finished [M] as it left them), row m
// being rollout slots[m] (nullptr: m):
//   completions[slots[m] * stride + t] = tokens[m]    (the host reads the completions once, at the end)
//   positions[m] = prompt_lens[m] + t, lens[m] = positions[m] + 1   (where the next decode step feeds tokens[m])
//   steps[m] = t + 1
// A row whose draw failed (tokens[m] < 0: every allowed logit -inf or NaN) keeps -1 in its completion for the
// host to report, is marked finished and feeds the pad id 0, so no later step reads outside the embedding.
// *unfinished = the number of rows with finished[m] == 0 (may point to host-mapped memory: the host polls it).
// All pointers on the device (or mapped); one block, any M.
void decode_advance(int* completions, int stride, const int* slots, int* tokens, int* finished, int* positions, int* lens, int* steps,
                    const int* prompt_lens, int M, int* unfinished, cudaStream_t stream);
