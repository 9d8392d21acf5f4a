// model_file.h: load_model, the one entry point that loads the base weights from any supported file (.bin, bitsandbytes NF4 directory, HF directory).
#pragma once
#include <string>

#include "model/loader.h"
#include "model/weights.h"

// What a model path holds, decided from the path alone (and config.json / the first 4 bytes of a file).
enum class ModelFileKind {
    BIN,      // the project's .bin (bin_format.h): bf16 or NF4 linears
    BNB_DIR,  // a directory whose config.json has quantization_config.quant_method "bitsandbytes" (NF4)
    HF_DIR,   // a plain HF directory: config.json + model.safetensors (or shards) in bf16 / f16 / f32
};
const char* model_file_kind_name(ModelFileKind kind);
// Throws GrpoError for a path that does not exist, a directory without config.json, a quantization method other
// than bitsandbytes, or a bare .safetensors / .json file (pass its directory).
ModelFileKind model_file_kind(const std::string& path);

struct ModelLoadOptions {
    // Quantize bf16 linears to NF4 while loading (HF directory or bf16 .bin), exactly as bitsandbytes would.
    // NF4 inputs (bnb directories, NF4 .bin files) are NF4 whatever this says.
    bool quantize_nf4 = false;
    LoadProgress progress;  // optional: called before each tensor
};

// Loads the base weights from a .bin, a bitsandbytes NF4 directory or a plain HF directory. Every failure is
// a GrpoError naming the file (and the tensor, with expected and actual sizes) and what to do.
Qwen2Weights load_model(const std::string& path, const ModelLoadOptions& options = ModelLoadOptions());
