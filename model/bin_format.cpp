// bin_format.cpp: reading (one mmap, fully validated) and atomically writing the project's .bin model file.
#include "model/bin_format.h"

#include <cstdio>
#include <cstring>

#include "data/atomic_file.h"
#include "data/text.h"
#include "model/mmap_file.h"
#include "model/safetensors.h"

// Header slots (see bin_format.h).
enum BinInt {
    BIN_MAGIC, BIN_VERSION, BIN_V, BIN_C, BIN_I, BIN_L, BIN_NH, BIN_KVH, BIN_HD, BIN_TIED, BIN_QKV_BIAS,
    BIN_MAX_POSITIONS, BIN_FORMAT, BIN_NUM_TENSORS, BIN_PAYLOAD_LO, BIN_PAYLOAD_HI, BIN_PAYLOAD_OFFSET,
};
enum BinFloat { BIN_ROPE_THETA, BIN_RMS_NORM_EPS };

static const size_t kHeaderBytes = GRPO_BIN_HEADER_INTS * 4 + GRPO_BIN_HEADER_FLOATS * 4;
static_assert(kHeaderBytes <= GRPO_BIN_PAYLOAD_OFFSET, "the header must fit before the payload");
static_assert(GRPO_BIN_PAYLOAD_OFFSET % WEIGHT_ALIGN == 0, "the payload offset must keep the plan's alignment");

static const char* kReexport = "re-create it with `quantize` or dev/export_hf.py";

// Little-endian whatever the host, like the safetensors reader.
static void put_u32(uint8_t* p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t* p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void put_f32(uint8_t* p, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32(p, u);
}
static float get_f32(const uint8_t* p) {
    uint32_t u = get_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static int32_t header_int(const uint8_t* file, int slot) { return (int32_t)get_u32(file + 4 * slot); }
static float header_float(const uint8_t* file, int slot) { return get_f32(file + 4 * GRPO_BIN_HEADER_INTS + 4 * slot); }

std::vector<uint8_t> bin_header(const WeightPlan& plan) {
    const Qwen2Config& cfg = plan.config;
    std::vector<uint8_t> header(GRPO_BIN_PAYLOAD_OFFSET, 0);
    const int32_t ints[] = {
        GRPO_BIN_MAGIC, GRPO_BIN_VERSION, cfg.V, cfg.C, cfg.I, cfg.L, cfg.NH, cfg.KVH, cfg.HD,
        cfg.tied_embeddings ? 1 : 0, cfg.qkv_bias ? 1 : 0, cfg.max_position_embeddings, (int32_t)plan.format,
        (int32_t)plan.tensors.size(), (int32_t)(uint32_t)(plan.total_bytes & 0xFFFFFFFFu),
        (int32_t)(uint32_t)((uint64_t)plan.total_bytes >> 32), GRPO_BIN_PAYLOAD_OFFSET,
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) put_u32(header.data() + 4 * i, (uint32_t)ints[i]);
    put_f32(header.data() + 4 * GRPO_BIN_HEADER_INTS + 4 * BIN_ROPE_THETA, cfg.rope_theta);
    put_f32(header.data() + 4 * GRPO_BIN_HEADER_INTS + 4 * BIN_RMS_NORM_EPS, cfg.rms_norm_eps);
    return header;
}

bool bin_has_magic(const std::string& path) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) return false;
    uint8_t magic[4];
    bool ok = fread(magic, 1, 4, f) == 4 && get_u32(magic) == (uint32_t)GRPO_BIN_MAGIC;
    fclose(f);
    return ok;
}

Qwen2Weights bin_load(const std::string& path) {
    auto map = std::make_shared<MappedFile>(path);
    const uint8_t* file = map->data();
    const size_t file_size = map->size();
    const uint32_t magic = file_size >= 4 ? get_u32(file) : 0;
    if (magic != (uint32_t)GRPO_BIN_MAGIC) {
        char text[80];
        if (file_size < 4) snprintf(text, sizeof(text), "0x%08X, found a %zu-byte file", (uint32_t)GRPO_BIN_MAGIC, file_size);
        else snprintf(text, sizeof(text), "0x%08X, found 0x%08X", (uint32_t)GRPO_BIN_MAGIC, magic);
        throw GrpoError(path + ": not a grpo.cu .bin: expected magic " + text +
                        "; convert with dev/export_hf.py or quantize (or pass the HF model directory itself)");
    }
    if (file_size < GRPO_BIN_PAYLOAD_OFFSET) {
        throw GrpoError(path + ": truncated: " + std::to_string(file_size) + " bytes, but the header alone takes " +
                        std::to_string(GRPO_BIN_PAYLOAD_OFFSET) + "; " + kReexport);
    }
    const int32_t version = header_int(file, BIN_VERSION);
    if (version != GRPO_BIN_VERSION) {
        throw GrpoError(path + ": .bin format version " + std::to_string(version) + " is not supported (this build reads version " +
                        std::to_string(GRPO_BIN_VERSION) + "); " + kReexport + " from the original checkpoint");
    }
    const int32_t payload_offset = header_int(file, BIN_PAYLOAD_OFFSET);
    if (payload_offset != GRPO_BIN_PAYLOAD_OFFSET) {
        throw GrpoError(path + ": header says the payload starts at byte " + std::to_string(payload_offset) + ", expected " +
                        std::to_string(GRPO_BIN_PAYLOAD_OFFSET) + "; the header is corrupt: " + kReexport);
    }
    for (int slot : {BIN_TIED, BIN_QKV_BIAS, BIN_FORMAT}) {
        int32_t v = header_int(file, slot);
        if (v != 0 && v != 1) {
            throw GrpoError(path + ": header int " + std::to_string(slot) + " is " + std::to_string(v) +
                            ", expected 0 or 1 (slot 9: tied, 10: qkv bias, 12: format BF16 = 0 / NF4 = 1); the header is corrupt: " +
                            kReexport);
        }
    }

    Qwen2Config cfg;
    cfg.source = path;
    cfg.V = header_int(file, BIN_V);
    cfg.C = header_int(file, BIN_C);
    cfg.I = header_int(file, BIN_I);
    cfg.L = header_int(file, BIN_L);
    cfg.NH = header_int(file, BIN_NH);
    cfg.KVH = header_int(file, BIN_KVH);
    cfg.HD = header_int(file, BIN_HD);
    cfg.tied_embeddings = header_int(file, BIN_TIED) == 1;
    cfg.qkv_bias = header_int(file, BIN_QKV_BIAS) == 1;
    cfg.max_position_embeddings = header_int(file, BIN_MAX_POSITIONS);
    cfg.rope_theta = header_float(file, BIN_ROPE_THETA);
    cfg.rms_norm_eps = header_float(file, BIN_RMS_NORM_EPS);
    cfg.dtype = "bfloat16";  // whatever the source was, the .bin holds bf16 (and NF4)
    qwen2_config_validate(cfg);
    const LinearFormat format = header_int(file, BIN_FORMAT) == 1 ? LinearFormat::NF4 : LinearFormat::BF16;
    WeightPlan plan = weight_plan(cfg, format);

    // The count and size are redundant with the config; they catch a header edited by hand or a writer bug.
    const uint64_t payload_bytes = (uint64_t)(uint32_t)header_int(file, BIN_PAYLOAD_LO) |
                                   (uint64_t)(uint32_t)header_int(file, BIN_PAYLOAD_HI) << 32;
    const int32_t num_tensors = header_int(file, BIN_NUM_TENSORS);
    if (num_tensors != (int32_t)plan.tensors.size() || payload_bytes != plan.total_bytes) {
        throw GrpoError(path + ": header says " + std::to_string(num_tensors) + " tensors in " + std::to_string(payload_bytes) +
                        " payload bytes, but its config (" + linear_format_name(format) + " linears) plans " +
                        std::to_string(plan.tensors.size()) + " tensors in " + std::to_string(plan.total_bytes) +
                        " bytes; the header is corrupt: " + kReexport);
    }
    const uint64_t expected_size = GRPO_BIN_PAYLOAD_OFFSET + plan.total_bytes;
    if (file_size < expected_size) {
        for (const PlannedTensor& t : plan.tensors) {
            const uint64_t begin = GRPO_BIN_PAYLOAD_OFFSET + t.offset, end = begin + t.bytes;
            if (end <= file_size) continue;
            throw GrpoError(path + ": truncated: tensor " + t.name + " (" + t.dtype + " " + shape_to_string(t.shape) +
                            ") needs file bytes [" + std::to_string(begin) + ", " + std::to_string(end) + "), but the file has " +
                            std::to_string(file_size) + " bytes (expected " + std::to_string(expected_size) +
                            "); the copy or export was cut short: " + kReexport);
        }
    }
    if (file_size > expected_size) {
        throw GrpoError(path + ": " + std::to_string(file_size - expected_size) + " bytes of trailing data after the payload (the file has " +
                        std::to_string(file_size) + " bytes, expected " + std::to_string(expected_size) +
                        "); the file is corrupt or not what its header says: " + kReexport);
    }
    const uint8_t* payload = file + GRPO_BIN_PAYLOAD_OFFSET;
    return weights_from_buffer(plan, payload, payload, map);
}

void bin_save(const std::string& path, const Qwen2Weights& weights) {
    const std::vector<uint8_t> header = bin_header(weights.plan);
    AtomicFile out(path);
    out.write(header.data(), header.size());
    out.write(weights.buffer, weights.plan.total_bytes);
    out.commit();
}
