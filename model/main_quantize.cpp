// main_quantize.cpp: `quantize IN OUT` converts a bf16 model (HF directory or .bin) to NF4, as a .bin or a bitsandbytes-layout safetensors file.
#include <cstdio>
#include <string>
#include <unistd.h>
#include <vector>

#include "data/text.h"
#include "model/bin_format.h"
#include "model/bnb_format.h"
#include "model/model_file.h"

static const char* kUsage =
    "usage: quantize [--format bin|bnb] IN OUT\n"
    "  IN   an HF model directory or a .bin with bf16 weights (NF4 inputs are passed through unchanged)\n"
    "  OUT  --format bin (default): a .bin with NF4 linears, what `train_grpo -m OUT` loads\n"
    "       --format bnb: one safetensors file laid out like a bitsandbytes pre-quantized checkpoint; put it\n"
    "       next to a config.json with quantization_config (quant_method bitsandbytes) to load it as a directory\n"
    "The linears are quantized exactly as bitsandbytes does (NF4, blocks of 64, double-quantized absmax).\n";

int main(int argc, char** argv) {
    std::string format = "bin";
    std::vector<std::string> paths;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            fputs(kUsage, stdout);
            return 0;
        } else if (arg == "--format" && i + 1 < argc) {
            format = argv[++i];
        } else if (arg.rfind("--format=", 0) == 0) {
            format = arg.substr(9);
        } else if (!arg.empty() && arg[0] == '-') {
            fprintf(stderr, "quantize: unknown option %s\n%s", arg.c_str(), kUsage);
            return 1;
        } else {
            paths.push_back(arg);
        }
    }
    if (paths.size() != 2 || (format != "bin" && format != "bnb")) {
        if (format != "bin" && format != "bnb") fprintf(stderr, "quantize: --format must be bin or bnb, got %s\n", format.c_str());
        fputs(kUsage, stderr);
        return 1;
    }
    const std::string& in = paths[0];
    const std::string& out = paths[1];
    try {
        ModelLoadOptions options;
        options.quantize_nf4 = true;
        // On a terminal one line updated in place; in a log about ten lines, so a 7B model shows it is alive.
        const bool tty = isatty(2);
        options.progress = [tty](size_t i, size_t n, const std::string& name) {
            if (tty) fprintf(stderr, "\rquantize: tensor %zu of %zu: %-60s", i + 1, n, name.c_str());
            else if (i == 0 || (i + 1) * 10 / n != i * 10 / n) fprintf(stderr, "quantize: tensor %zu of %zu: %s\n", i + 1, n, name.c_str());
            fflush(stderr);
        };
        Qwen2Weights weights = load_model(in, options);
        if (tty) fputc('\n', stderr);
        if (format == "bnb") bnb_save(out, weights);
        else bin_save(out, weights);
        fprintf(stderr, "quantize: wrote %s (%s, %zu planned tensors, %.1f MiB of weights, NF4 linears)\n", out.c_str(),
                format == "bnb" ? "bitsandbytes safetensors" : ".bin", weights.plan.tensors.size(),
                weights.plan.total_bytes / 1048576.0);
    } catch (const GrpoError& e) {
        fprintf(stderr, "%squantize: error: %s\n", isatty(2) ? "\n" : "", e.what());
        return 1;
    }
    return 0;
}
