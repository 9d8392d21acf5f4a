// main_score.cpp: the `score` program: per-token log-probs of given token sequences under a model, to check a converted or quantized model against HF.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "data/json.h"
#include "data/text.h"
#include "lora/peft.h"
#include "model/cpu_model.h"
#include "model/model_file.h"

static void usage(FILE* out) {
    fprintf(out,
            "usage: score -m MODEL [--nf4] [--adapter DIR] [--precision bf16|fp32] [--device cpu] [FILE]\n"
            "Reads JSON lines, each an array of token ids [t1, ..., tT], from FILE or stdin, and prints for each the\n"
            "JSON array of log p(t2 | t1), ..., log p(tT | t1..tT-1) (temperature 1). The weights are used as stored:\n"
            "bf16 stays bf16, NF4 stays NF4; --nf4 quantizes bf16 linears first, --adapter adds a PEFT LoRA adapter.\n"
            "--precision bf16 (default) rounds where HF's bf16 model rounds; fp32 rounds nowhere.\n");
}

int main(int argc, char** argv) {
    std::string model_path, adapter_dir, input = "-", device = "cpu";
    ModelLoadOptions load_opts;
    CpuPrecision precision = CpuPrecision::BF16;
    try {
        for (int i = 1; i < argc; i++) {
            std::string a = argv[i];
            auto value = [&]() -> std::string {
                if (i + 1 >= argc) throw GrpoError("option " + a + " needs a value; see score --help");
                return argv[++i];
            };
            if (a == "-h" || a == "--help") { usage(stdout); return 0; }
            else if (a == "-m") model_path = value();
            else if (a == "--adapter") adapter_dir = value();
            else if (a == "--nf4") load_opts.quantize_nf4 = true;
            else if (a == "--device") device = value();
            else if (a == "--precision") {
                std::string p = value();
                if (p != "bf16" && p != "fp32") throw GrpoError("--precision: expected bf16 or fp32, got '" + p + "'");
                precision = p == "bf16" ? CpuPrecision::BF16 : CpuPrecision::FP32;
            }
            else if (a.size() > 1 && a[0] == '-') throw GrpoError("unknown option " + a + "; see score --help");
            else input = a;
        }
        if (model_path.empty()) throw GrpoError("no model given: pass -m PATH; see score --help");
        if (device != "cpu")
            throw GrpoError("--device " + device + ": only the CPU backend exists in this version of grpo.cu");

        Qwen2Weights weights = load_model(model_path, load_opts);
        const int V = weights.config.V;
        LoraWeights lora;
        if (!adapter_dir.empty()) lora = peft_load(adapter_dir, weights.config);
        const LoraWeights* lora_ptr = adapter_dir.empty() ? nullptr : &lora;

        JsonlReader reader(input);
        JsonValue line;
        while (reader.next(&line)) {
            if (!line.is_array())
                throw GrpoError(reader.where() + ": expected a JSON array of token ids, found a " + line.type_name());
            std::vector<int32_t> tokens;
            for (size_t i = 0; i < line.array.size(); i++) {
                const JsonValue& v = line.array[i];
                if (!v.is_number() || v.number != (double)(int64_t)v.number || v.number < 0 || v.number >= V)
                    throw GrpoError(reader.where() + ": element " + std::to_string(i) + " is not a token id in [0, " +
                                    std::to_string(V) + "); the model's vocabulary has V = " + std::to_string(V));
                tokens.push_back((int32_t)v.number);
            }
            std::string out = "[";
            if (tokens.size() >= 2) {
                int T = (int)tokens.size();
                std::vector<float> logp(T - 1);
                cpu_forward_logprobs(weights, lora_ptr, tokens.data(), 1, T, 1.0f, precision, logp.data());
                for (int t = 0; t < T - 1; t++) {
                    char buf[32];
                    snprintf(buf, sizeof(buf), "%.9g", logp[t]);  // 9 digits round-trip a float
                    out += (t ? ", " : "") + std::string(buf);
                }
            }
            out += "]\n";
            fputs(out.c_str(), stdout);
        }
        return 0;
    } catch (const GrpoError& e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
