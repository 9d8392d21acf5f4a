// bin_format.h: the project's .bin model file (llm.c style): a fixed header, then the weight plan's buffer verbatim, so loading is one mmap.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/weights.h"

// File layout (all little-endian):
//   bytes [0, 1024)     int32 header[256]
//   bytes [1024, 2048)  float32 header[256]
//   bytes [2048, 4096)  zeros
//   bytes [4096, ...)   the payload: exactly the buffer of weight_plan(config, format), total_bytes long
// The payload starts at a page boundary (4096) because mmap returns page-aligned memory and the plan's
// offsets are relative to the payload start: every tensor then keeps its WEIGHT_ALIGN (256-byte) alignment
// in the mapped file, and weights_from_buffer can point straight into the map without copying.
// The gaps between planned tensors are zeros, so a file is a pure function of its weights (dev/export_hf.py
// writes byte-identical files).
//
// int32 header, by index (every unused slot is 0):
//   0 magic (GRPO_BIN_MAGIC: the file starts with the bytes "GRPO")   1 version (GRPO_BIN_VERSION)
//   2 V  3 C  4 I  5 L  6 NH  7 KVH  8 HD  9 tied embeddings (0/1)  10 qkv bias (0/1)
//   11 max_position_embeddings  12 linear format (BF16 = 0, NF4 = 1)  13 number of tensors in the plan
//   14 payload bytes, low 32 bits  15 payload bytes, high 32 bits  16 payload offset (4096)
// float32 header, by index:  0 rope_theta  1 rms_norm_eps
#define GRPO_BIN_MAGIC 0x4F505247  // "GRPO" read as a little-endian int32
#define GRPO_BIN_VERSION 1
#define GRPO_BIN_HEADER_INTS 256
#define GRPO_BIN_HEADER_FLOATS 256
#define GRPO_BIN_PAYLOAD_OFFSET 4096

// The GRPO_BIN_PAYLOAD_OFFSET bytes that precede the payload of a file holding a model laid out by `plan`.
std::vector<uint8_t> bin_header(const WeightPlan& plan);

// Maps a .bin and returns views into the map (no copy; the map stays alive as long as the weights).
// Validates the magic, the version, the config (qwen2_config_validate), the header's tensor count and payload
// size against the plan, and the file size (a truncated file names the first tensor that is not wholly inside
// it; bytes after the payload are refused). Throws GrpoError naming the file, what was found and what to do.
Qwen2Weights bin_load(const std::string& path);

// Writes weights (whose buffer is host memory) as a .bin atomically: everything goes to PATH.tmp, renamed over
// PATH only when every write succeeded. Throws GrpoError and removes PATH.tmp on any failure (e.g. a full disk).
void bin_save(const std::string& path, const Qwen2Weights& weights);

// True when the file exists and starts with the .bin magic (for choosing a loader; reads 4 bytes).
bool bin_has_magic(const std::string& path);
