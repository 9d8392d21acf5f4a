// main_merge.cpp: the `merge_lora` program: merges a PEFT adapter into its base model and writes a bf16 HF directory.
#include <cstdio>
#include <string>

#include "data/text.h"
#include "lora/merge.h"
#include "lora/peft.h"
#include "model/model_file.h"

int main(int argc, char** argv) {
    if (argc != 4 || std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help") {
        fprintf(argc == 2 ? stdout : stderr,
                "usage: merge_lora MODEL ADAPTER_DIR OUT_DIR\n"
                "Merges the PEFT adapter in ADAPTER_DIR (e.g. out/checkpoint-250) into MODEL (.bin, HF or bitsandbytes\n"
                "directory; an NF4 base is dequantized first) and writes OUT_DIR as a bf16 HF directory: W + scale*B*A,\n"
                "added in fp32 and rounded once, as PEFT's merge_and_unload does.\n");
        return argc == 2 ? 0 : 1;
    }
    try {
        std::string model_path = argv[1], adapter_dir = argv[2], out_dir = argv[3];
        Qwen2Weights base = load_model(model_path);
        LoraWeights lora = peft_load(adapter_dir, base.config);
        // an HF directory's tokenizer and generation files travel with the merged model
        std::string source = model_file_kind(model_path) == ModelFileKind::BIN ? "" : model_path;
        export_merged_hf_dir(out_dir, base, &lora, source);
        printf("wrote %s\n", out_dir.c_str());
        return 0;
    } catch (const GrpoError& e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
