// model_file.cpp: picks the loader for a model path (.bin, bitsandbytes directory, HF directory) and applies the load options.
#include "model/model_file.h"

#include <cerrno>
#include <cstring>
#include <sys/stat.h>

#include "data/json.h"
#include "data/text.h"
#include "model/bin_format.h"
#include "model/bnb_format.h"

static const char* kWhatToPass =
    "pass an HF model directory (config.json + model.safetensors), a bitsandbytes NF4 directory, or a .bin written by "
    "`quantize` or dev/export_hf.py";

static bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

const char* model_file_kind_name(ModelFileKind kind) {
    switch (kind) {
        case ModelFileKind::BIN: return ".bin";
        case ModelFileKind::BNB_DIR: return "bitsandbytes NF4 directory";
        default: return "HF directory";
    }
}

ModelFileKind model_file_kind(const std::string& path) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) throw GrpoError(path + ": cannot open: " + strerror(errno) + "; " + kWhatToPass);
    if (!S_ISDIR(st.st_mode)) {
        if (ends_with(path, ".safetensors") || ends_with(path, ".json")) {
            throw GrpoError(path + ": a model is loaded from the directory holding config.json and the safetensors files, "
                            "not from one file; pass that directory (or a .bin)");
        }
        return ModelFileKind::BIN;  // bin_load checks the magic and says what to do if it is something else
    }
    const std::string config = (ends_with(path, "/") ? path : path + "/") + "config.json";
    if (stat(config.c_str(), &st) != 0) {
        throw GrpoError(path + ": directory has no config.json; " + kWhatToPass);
    }
    const JsonValue root = json_parse_file(config);
    const JsonValue* q = root.is_object() ? root.get("quantization_config") : nullptr;
    if (!q || q->type == JsonValue::NUL) return ModelFileKind::HF_DIR;
    const JsonValue* method = q->is_object() ? q->get("quant_method") : nullptr;
    if (method && method->is_string() && method->string == "bitsandbytes") return ModelFileKind::BNB_DIR;
    throw GrpoError(config + ": quantization_config.quant_method is " +
                    (method && method->is_string() ? json_quote(method->string) : std::string("missing")) +
                    "; only bitsandbytes NF4 checkpoints are supported: use the original bf16 release (it is quantized "
                    "to NF4 on load or by `quantize`)");
}

Qwen2Weights load_model(const std::string& path, const ModelLoadOptions& options) {
    switch (model_file_kind(path)) {
        case ModelFileKind::BIN: {
            Qwen2Weights weights = bin_load(path);
            if (options.quantize_nf4 && weights.plan.format == LinearFormat::BF16)
                return weights_quantize_nf4(weights, options.progress);
            return weights;
        }
        case ModelFileKind::BNB_DIR: return bnb_load_dir(path, options.progress);
        default:
            return load_hf_dir(path, options.quantize_nf4 ? LinearFormat::NF4 : LinearFormat::BF16, options.progress);
    }
}
