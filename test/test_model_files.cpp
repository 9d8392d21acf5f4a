// test_model_files.cpp: the model files beyond the HF directory (.bin, bitsandbytes NF4 directories), load_model, `quantize` and dev/export_hf.py, against the reference dumps.
#include <catch2/catch.hpp>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <sys/resource.h>
#include <unistd.h>

#include "data/rng.h"
#include "data/text.h"
#include "model/bin_format.h"
#include "model/bnb_format.h"
#include "model/loader.h"
#include "model/model_file.h"
#include "model/safetensors.h"
#include "test/test_util.h"

namespace {

std::string ref(const std::string& model, const std::string& rel) { return REF_DIR + model + "/" + rel; }

// "identical", or where two files first differ (a readable failure instead of two dumps of binary).
std::string compare_files(const std::string& a, const std::string& b) {
    const std::string x = read_file(a), y = read_file(b);
    if (x == y) return "identical";
    size_t i = 0;
    while (i < x.size() && i < y.size() && x[i] == y[i]) i++;
    return "sizes " + std::to_string(x.size()) + " and " + std::to_string(y.size()) + ", first difference at byte " + std::to_string(i);
}

// A linear's weights as bf16, dequantized when NF4.
std::vector<bf16_bits> linear_values(const LinearWeight& lin) {
    std::vector<bf16_bits> out((size_t)(lin.out * lin.in));
    if (lin.format == LinearFormat::BF16) memcpy(out.data(), lin.w, out.size() * 2);
    else nf4_view_dequantize(lin.nf4, out.data());
    return out;
}

// Element-wise comparison of two models' weights as bf16 bit patterns (linears dequantized).
struct WeightDiff {
    int tensors = 0;
    int64_t elements = 0, mismatches = 0;
    std::string first;  // the first tensor that differs
    void compare(const std::string& name, const bf16_bits* a, const bf16_bits* b, int64_t n) {
        tensors++;
        elements += n;
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) bad += a[i] != b[i];
        if (bad && first.empty()) first = name + " (" + std::to_string(bad) + " of " + std::to_string(n) + " differ)";
        mismatches += bad;
    }
};

WeightDiff weight_diff(const Qwen2Weights& a, const Qwen2Weights& b) {
    const Qwen2Config& cfg = a.config;
    REQUIRE(b.config.V == cfg.V);
    REQUIRE(b.config.C == cfg.C);
    REQUIRE(b.config.L == cfg.L);
    REQUIRE(b.config.tied_embeddings == cfg.tied_embeddings);
    WeightDiff d;
    d.compare("embed", a.embed, b.embed, (int64_t)cfg.V * cfg.C);
    for (int l = 0; l < cfg.L; l++) {
        const LayerWeights &la = a.layers[l], &lb = b.layers[l];
        const std::string p = "layer " + std::to_string(l) + " ";
        d.compare(p + "input_norm", la.input_norm, lb.input_norm, cfg.C);
        d.compare(p + "post_attention_norm", la.post_attention_norm, lb.post_attention_norm, cfg.C);
        for (int s = 0; s < NUM_LINEAR; s++) {
            std::vector<bf16_bits> va = linear_values(la.linear[s]), vb = linear_values(lb.linear[s]);
            d.compare(p + LINEAR_NAMES[s], va.data(), vb.data(), (int64_t)va.size());
            if (la.linear[s].bias) d.compare(p + LINEAR_NAMES[s] + " bias", la.linear[s].bias, lb.linear[s].bias, la.linear[s].out);
        }
    }
    d.compare("final_norm", a.final_norm, b.final_norm, cfg.C);
    if (!cfg.tied_embeddings) d.compare("lm_head", a.lm_head, b.lm_head, (int64_t)cfg.V * cfg.C);
    return d;
}

#define CHECK_SAME_WEIGHTS(a, b)                                                              \
    do {                                                                                      \
        WeightDiff diff_ = weight_diff(a, b);                                                 \
        INFO("tensors compared: " << diff_.tensors << ", elements: " << diff_.elements        \
                                  << ", first difference: " << diff_.first);                 \
        CHECK(diff_.tensors > 0);                                                             \
        CHECK(diff_.mismatches == 0);                                                         \
    } while (0)

// The planned buffers are byte-identical (a stronger check than the values: padding, NF4 tables and all).
bool same_buffer(const Qwen2Weights& a, const Qwen2Weights& b) {
    return a.plan.total_bytes == b.plan.total_bytes && a.plan.format == b.plan.format &&
           memcmp(a.buffer, b.buffer, a.plan.total_bytes) == 0;
}

// A copy of a reference directory's config.json next to a new model.safetensors built from `tensors`.
void write_model_dir(const std::string& dir, const std::string& config_json, const std::vector<TensorToWrite>& tensors) {
    std::filesystem::create_directories(dir);
    write_file(dir + "/config.json", config_json);
    safetensors_write(dir + "/model.safetensors", tensors, {{"format", "pt"}});
}

// Every tensor of a file as TensorToWrite, pointing into the (still open) file.
std::vector<TensorToWrite> tensors_of(const SafetensorsFile& file) {
    std::vector<TensorToWrite> out;
    for (const TensorView& t : file.tensors()) out.push_back({t.name, t.dtype, t.shape, t.data, t.nbytes});
    return out;
}

// Patches int32 slot `slot` of a .bin header.
std::string with_header_int(std::string bin, int slot, int32_t value) {
    memcpy(&bin[4 * slot], &value, 4);
    return bin;
}

}  // namespace

// ---- .bin -------------------------------------------------------------------------------------------

TEST_CASE(".bin round trip: bf16 and NF4 weights come back byte for byte, mapped in place", "[model_files]") {
    TempDir tmp;
    for (const char* model : REF_MODELS) {
        INFO(model);
        for (LinearFormat format : {LinearFormat::BF16, LinearFormat::NF4}) {
            INFO(linear_format_name(format));
            Qwen2Weights original = load_hf_dir(ref(model, "hf_orig"), format);
            const std::string path = tmp / (std::string(model) + "_" + linear_format_name(format) + ".bin");
            bin_save(path, original);
            CHECK_FALSE(exists(path + ".tmp"));
            CHECK(std::filesystem::file_size(path) == GRPO_BIN_PAYLOAD_OFFSET + original.plan.total_bytes);

            Qwen2Weights loaded = load_model(path);
            CHECK(loaded.plan.format == format);
            CHECK(loaded.plan.tensors.size() == original.plan.tensors.size());
            CHECK(same_buffer(loaded, original));
            CHECK_SAME_WEIGHTS(loaded, original);
            // zero copy: the weights are the mapped file, and the page-aligned payload keeps WEIGHT_ALIGN
            CHECK((uintptr_t)loaded.buffer % 4096 == 0);
            CHECK((uintptr_t)loaded.embed == (uintptr_t)loaded.buffer);
            const Qwen2Config &a = loaded.config, &b = original.config;
            CHECK((a.V == b.V && a.C == b.C && a.I == b.I && a.L == b.L && a.NH == b.NH && a.KVH == b.KVH && a.HD == b.HD));
            CHECK((a.tied_embeddings == b.tied_embeddings && a.qkv_bias == b.qkv_bias &&
                   a.max_position_embeddings == b.max_position_embeddings));
            CHECK(a.rope_theta == b.rope_theta);
            CHECK(a.rms_norm_eps == b.rms_norm_eps);
        }
        // A bf16 .bin quantized on load is what the HF loader quantizes (and what bitsandbytes would).
        Qwen2Weights nf4_from_bin = load_model(tmp / (std::string(model) + "_bf16.bin"), {true, {}});
        CHECK(nf4_from_bin.plan.format == LinearFormat::NF4);
        CHECK(same_buffer(nf4_from_bin, load_hf_dir(ref(model, "hf_orig"), LinearFormat::NF4)));
    }
}

TEST_CASE(".bin header layout", "[model_files]") {
    Qwen2Weights w = load_hf_dir(ref("tiny_untied", "hf"), LinearFormat::BF16);
    std::vector<uint8_t> header = bin_header(w.plan);
    REQUIRE(header.size() == GRPO_BIN_PAYLOAD_OFFSET);
    CHECK(std::string((const char*)header.data(), 4) == "GRPO");
    auto i32 = [&](int slot) { int32_t v; memcpy(&v, &header[4 * slot], 4); return v; };
    auto f32 = [&](int slot) { float v; memcpy(&v, &header[1024 + 4 * slot], 4); return v; };
    const Qwen2Config& c = w.config;
    const int32_t expected[] = {GRPO_BIN_MAGIC, GRPO_BIN_VERSION, c.V, c.C, c.I, c.L, c.NH, c.KVH, c.HD, 0, 1,
                                c.max_position_embeddings, 0, (int32_t)w.plan.tensors.size(), (int32_t)w.plan.total_bytes, 0,
                                GRPO_BIN_PAYLOAD_OFFSET};
    for (int slot = 0; slot < 17; slot++) {
        INFO("int slot " << slot);
        CHECK(i32(slot) == expected[slot]);
    }
    CHECK(f32(0) == c.rope_theta);
    CHECK(f32(1) == c.rms_norm_eps);
    for (size_t i = 17 * 4; i < 1024; i++) REQUIRE(header[i] == 0);
    for (size_t i = 1024 + 8; i < header.size(); i++) REQUIRE(header[i] == 0);
}

TEST_CASE(".bin reading refuses damaged files with one clear message each", "[model_files]") {
    TempDir tmp;
    Qwen2Weights w = load_hf_dir(ref("tiny_tied", "hf"), LinearFormat::NF4);
    const std::string good_path = tmp / "good.bin";
    bin_save(good_path, w);
    const std::string good = read_file(good_path);
    const std::string path = tmp / "bad.bin";
    auto error_for = [&](const std::string& bytes) {
        write_file(path, bytes);
        return error_of([&] { load_model(path); });
    };

    std::string wrong_magic = error_for("PK\x03\x04 this is a zip file, not a model" + std::string(5000, 'x'));
    CHECK_THAT(wrong_magic, Catch::Contains(path) && Catch::Contains("not a grpo.cu .bin") &&
                                Catch::Contains("expected magic 0x4F505247") && Catch::Contains("found 0x04034B50") &&
                                Catch::Contains("dev/export_hf.py") && Catch::Contains("quantize"));
    CHECK_THAT(error_for(with_header_int(good, 1, 99)), Catch::Contains("version 99") && Catch::Contains("not supported"));
    // C = 64 is not a multiple of NH = 3: qwen2_config_validate names the file and the fields
    CHECK_THAT(error_for(with_header_int(good, 6, 3)), Catch::Contains(path) && Catch::Contains("num_attention_heads (NH) = 3"));
    CHECK_THAT(error_for(with_header_int(good, 12, 7)), Catch::Contains("expected 0 or 1"));
    CHECK_THAT(error_for(with_header_int(good, 13, 5)),
               Catch::Contains("header says 5 tensors") && Catch::Contains(std::to_string(w.plan.tensors.size()) + " tensors"));
    CHECK_THAT(error_for(good.substr(0, 3000)), Catch::Contains("truncated") && Catch::Contains("3000 bytes"));

    // Cut inside a tensor: the message names the first planned tensor that is not wholly in the file.
    const PlannedTensor& cut_in = w.plan.tensors[w.plan.tensors.size() / 2];
    const size_t cut = GRPO_BIN_PAYLOAD_OFFSET + cut_in.offset + cut_in.bytes / 2;
    std::string truncated = error_for(good.substr(0, cut));
    INFO(truncated);
    CHECK_THAT(truncated, Catch::Contains(path) && Catch::Contains("truncated: tensor " + cut_in.name + " ") &&
                              Catch::Contains("the file has " + std::to_string(cut) + " bytes") &&
                              Catch::Contains("expected " + std::to_string(good.size())));
    CHECK_THAT(error_for(good + "extra"),
               Catch::Contains("5 bytes of trailing data") && Catch::Contains("expected " + std::to_string(good.size())));
    // and the intact file still loads
    CHECK(same_buffer(load_model(good_path), w));
}

TEST_CASE(".bin writing is atomic: a full disk leaves the old file and no temp file", "[model_files]") {
    TempDir tmp;
    Qwen2Weights small = load_hf_dir(ref("tiny_tied", "hf"), LinearFormat::NF4);
    Qwen2Weights big = load_hf_dir(ref("tiny_untied", "hf"), LinearFormat::BF16);
    const std::string path = tmp / "model.bin";
    bin_save(path, small);
    const std::string before = read_file(path);

    struct rlimit old_limit;
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    auto old_handler = signal(SIGXFSZ, SIG_IGN);  // otherwise exceeding the limit kills the process
    struct rlimit limit = old_limit;
    limit.rlim_cur = big.plan.total_bytes / 2;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &limit) == 0);
    std::string full_disk = error_of([&] { bin_save(path, big); });
    setrlimit(RLIMIT_FSIZE, &old_limit);
    signal(SIGXFSZ, old_handler);
    INFO(full_disk);
    CHECK_THAT(full_disk, Catch::Contains(path + ".tmp") && Catch::Contains("write failed") && Catch::Contains("was not changed"));
    CHECK_FALSE(exists(path + ".tmp"));
    CHECK((read_file(path) == before));  // parenthesized: a failure should not print the binary

    const std::string nowhere = tmp / "no/such/folder/model.bin";
    CHECK_THAT(error_of([&] { bin_save(nowhere, small); }), Catch::Contains(nowhere) && Catch::Contains("directory exists"));
}

// ---- bitsandbytes directories --------------------------------------------------------------------------

TEST_CASE("bitsandbytes NF4 directories load bit-identical to the reference's dequantized weights", "[model_files]") {
    for (const char* model : REF_MODELS) {
        INFO(model);
        CHECK(model_file_kind(ref(model, "bnb")) == ModelFileKind::BNB_DIR);
        CHECK(model_file_kind(ref(model, "hf")) == ModelFileKind::HF_DIR);
        Qwen2Weights bnb = load_model(ref(model, "bnb"));
        CHECK(bnb.plan.format == LinearFormat::NF4);
        // hf/ holds the linears as bitsandbytes dequantized them (bf16), and the other tensors unchanged
        CHECK_SAME_WEIGHTS(bnb, load_hf_dir(ref(model, "hf"), LinearFormat::BF16));
        // our quantizer on hf_orig/ gives the same bytes (codes, absmax bytes, nested absmax, offset, maps)
        CHECK(same_buffer(bnb, load_hf_dir(ref(model, "hf_orig"), LinearFormat::NF4)));
        // the quantize flag changes nothing for an input that is already NF4
        CHECK(same_buffer(bnb, load_model(ref(model, "bnb"), {true, {}})));
    }
}

TEST_CASE("bitsandbytes checkpoints we cannot represent are refused with a clear message", "[model_files]") {
    TempDir tmp;
    const std::string config = read_file(ref("tiny_tied", "bnb/config.json"));
    SafetensorsFile bnb(ref("tiny_tied", "bnb/model.safetensors"));
    const std::string linear = "model.layers.1.mlp.up_proj.weight";
    const std::string state_name = linear + ".quant_state.bitsandbytes__nf4";
    const TensorView& state_view = bnb.get(state_name);
    const std::string state((const char*)state_view.data, state_view.nbytes);

    // Each case: the reference tensors with one change, loaded from a fresh directory.
    int case_number = 0;
    auto load_changed = [&](const std::function<void(std::vector<TensorToWrite>*, std::deque<std::string>*)>& change,
                            const std::string& config_json) {
        std::vector<TensorToWrite> tensors = tensors_of(bnb);
        std::deque<std::string> storage;
        change(&tensors, &storage);
        const std::string dir = tmp / ("case" + std::to_string(case_number++));
        write_model_dir(dir, config_json, tensors);
        return error_of([&] { load_model(dir); });
    };
    auto set_state = [&](const std::string& json) {
        return [=](std::vector<TensorToWrite>* tensors, std::deque<std::string>* storage) {
            storage->push_back(json);
            for (TensorToWrite& t : *tensors)
                if (t.name == state_name) t = {state_name, "U8", {(int64_t)json.size()}, storage->back().data(), json.size()};
        };
    };
    auto no_change = [](std::vector<TensorToWrite>*, std::deque<std::string>*) {};

    // The unchanged copy loads (so every failure below is due to its one change).
    CHECK(load_changed(no_change, config) == "(no GrpoError thrown)");

    std::string fp4 = load_changed(set_state(replace_once(state, "\"nf4\"", "\"fp4\"")), config);
    CHECK_THAT(fp4, Catch::Contains(state_name) && Catch::Contains("nf4") && Catch::Contains("quantize"));
    std::string block128 = load_changed(set_state(replace_once(state, "\"blocksize\": 64", "\"blocksize\": 128")), config);
    CHECK_THAT(block128, Catch::Contains(state_name) && Catch::Contains("blocksize is 128, expected 64"));
    std::string nested512 = load_changed(set_state(replace_once(state, "\"nested_blocksize\": 256", "\"nested_blocksize\": 512")), config);
    CHECK_THAT(nested512, Catch::Contains("nested_blocksize is 512, expected 256"));
    std::string shape = load_changed(set_state(replace_once(state, "\"shape\": [160, 64]", "\"shape\": [64, 160]")), config);
    CHECK_THAT(shape, Catch::Contains(state_name) && Catch::Contains("shape is [64, 160], expected [160, 64]"));

    // Without double quantization: absmax stored as F32 and no nested state.
    std::vector<float> absmax_f32(160 * 64 / 64, 0.5f);
    std::string no_double = load_changed(
        [&](std::vector<TensorToWrite>* tensors, std::deque<std::string>* storage) {
            std::vector<TensorToWrite> kept;
            for (const TensorToWrite& t : *tensors) {
                if (t.name == linear + ".absmax") kept.push_back({t.name, "F32", {(int64_t)absmax_f32.size()}, absmax_f32.data(), absmax_f32.size() * 4});
                else if (t.name != linear + ".nested_absmax" && t.name != linear + ".nested_quant_map") kept.push_back(t);
            }
            *tensors = kept;
            set_state("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [160, 64]}")(tensors, storage);
        },
        config);
    CHECK_THAT(no_double, Catch::Contains(state_name) && Catch::Contains("without double quantization") &&
                              Catch::Contains("re-quantize") && Catch::Contains("quantize --format bnb"));
    CHECK_THAT(load_changed(no_change, replace_once(config, "\"bnb_4bit_use_double_quant\": true", "\"bnb_4bit_use_double_quant\": false")),
               Catch::Contains("config.json") && Catch::Contains("bnb_4bit_use_double_quant is false") && Catch::Contains("quantize"));

    // Missing and wrongly sized companions name the tensor with expected and found sizes.
    std::string missing = load_changed(
        [&](std::vector<TensorToWrite>* tensors, std::deque<std::string>*) {
            std::vector<TensorToWrite> kept;
            for (const TensorToWrite& t : *tensors) if (t.name != linear + ".nested_quant_map") kept.push_back(t);
            *tensors = kept;
        },
        config);
    CHECK_THAT(missing, Catch::Contains("tensor " + linear + ".nested_quant_map is missing"));
    std::string short_absmax = load_changed(
        [&](std::vector<TensorToWrite>* tensors, std::deque<std::string>*) {
            for (TensorToWrite& t : *tensors)
                if (t.name == linear + ".absmax") { t.shape = {t.shape[0] - 1}; t.nbytes -= 1; }
        },
        config);
    CHECK_THAT(short_absmax, Catch::Contains(linear + ".absmax has 159 elements") && Catch::Contains("expected 160"));
}

// ---- quantize ---------------------------------------------------------------------------------------

TEST_CASE("quantize --format bnb reproduces the bitsandbytes checkpoint byte for byte", "[model_files]") {
    require_program("./quantize", "quantize");
    TempDir tmp;
    for (const char* model : REF_MODELS) {
        INFO(model);
        const std::string out = tmp / (std::string(model) + ".safetensors");
        const CommandResult quantize = run_shell("./quantize --format bnb " + ref(model, "hf_orig") + " " + out + " 2>&1");
        REQUIRE(quantize.exit_code == 0);
        INFO(quantize.output);
        CHECK_THAT(quantize.output, Catch::Contains("tensor 1 of ") && Catch::Contains("wrote " + out));
        CHECK_FALSE(exists(out + ".tmp"));

        SafetensorsFile ours(out), theirs(ref(model, "bnb/model.safetensors"));
        CHECK(ours.tensors().size() == theirs.tensors().size());
        CHECK(ours.metadata() == theirs.metadata());
        int same = 0;
        for (const TensorView& t : theirs.tensors()) {
            INFO(t.name);
            const TensorView* o = ours.find(t.name);
            REQUIRE(o);
            CHECK(o->dtype == t.dtype);
            CHECK(o->shape == t.shape);
            bool bytes_equal = o->nbytes == t.nbytes && memcmp(o->data, t.data, t.nbytes) == 0;
            if (!bytes_equal && t.name.find("quant_state") != std::string::npos)
                INFO("ours: " << std::string((const char*)o->data, o->nbytes) << "\ntheirs: " << std::string((const char*)t.data, t.nbytes));
            CHECK(bytes_equal);
            same += bytes_equal;
        }
        CHECK(same == (int)theirs.tensors().size());
        CHECK((ours.find("lm_head.weight") != nullptr) == (std::string(model) == "tiny_untied"));
        // same header order and padding too: the whole file is identical
        CHECK(compare_files(out, ref(model, "bnb/model.safetensors")) == "identical");

        // What quantize wrote loads back (as a directory with the bnb config) to the same weights.
        const std::string dir = tmp / (std::string(model) + "_bnb");
        std::filesystem::create_directories(dir);
        std::filesystem::copy_file(ref(model, "bnb/config.json"), dir + "/config.json");
        std::filesystem::rename(out, dir + "/model.safetensors");
        CHECK(same_buffer(load_model(dir), load_model(ref(model, "bnb"))));
    }
}

TEST_CASE("quantize IN OUT.bin: NF4 linears bit-identical to bitsandbytes, from an HF directory or a bf16 .bin", "[model_files]") {
    require_program("./quantize", "quantize");
    TempDir tmp;
    for (const char* model : REF_MODELS) {
        INFO(model);
        const std::string from_dir = tmp / (std::string(model) + "_nf4.bin");
        REQUIRE(run_shell("./quantize " + ref(model, "hf_orig") + " " + from_dir + " 2>&1").exit_code == 0);
        Qwen2Weights loaded = load_model(from_dir);
        CHECK(loaded.plan.format == LinearFormat::NF4);
        CHECK_SAME_WEIGHTS(loaded, load_hf_dir(ref(model, "hf"), LinearFormat::BF16));
        CHECK(same_buffer(loaded, load_model(ref(model, "bnb"))));

        // from a bf16 .bin: the same file
        const std::string bf16_bin = tmp / (std::string(model) + "_bf16.bin");
        const std::string from_bin = tmp / (std::string(model) + "_nf4_from_bin.bin");
        bin_save(bf16_bin, load_hf_dir(ref(model, "hf_orig"), LinearFormat::BF16));
        REQUIRE(run_shell("./quantize " + bf16_bin + " " + from_bin + " 2>&1").exit_code == 0);
        CHECK(compare_files(from_bin, from_dir) == "identical");
    }
    const CommandResult missing = run_shell("./quantize " + (tmp / "missing_dir") + " " + (tmp / "x.bin") + " 2>&1");
    CHECK(missing.exit_code == 1);
    CHECK_THAT(missing.output, Catch::Contains("quantize: error:") && Catch::Contains(tmp / "missing_dir"));
    const CommandResult gguf = run_shell("./quantize --format gguf a b 2>&1");
    CHECK(gguf.exit_code == 1);
    CHECK_THAT(gguf.output, Catch::Contains("--format must be bin or bnb"));
    CHECK_FALSE(exists(tmp / "x.bin"));
}

// ---- dev/export_hf.py ---------------------------------------------------------------------------------

TEST_CASE("dev/export_hf.py writes the same .bin as the C++ writer", "[model_files]") {
    TempDir tmp;
    for (const char* model : REF_MODELS) {
        INFO(model);
        const std::string py_bin = tmp / (std::string(model) + "_py.bin"), cpp_bin = tmp / (std::string(model) + "_cpp.bin");
        REQUIRE(run_shell("python3 dev/export_hf.py " + ref(model, "hf") + " " + py_bin + " 2>&1").exit_code == 0);
        Qwen2Weights hf = load_hf_dir(ref(model, "hf"), LinearFormat::BF16);
        CHECK_SAME_WEIGHTS(load_model(py_bin), hf);
        bin_save(cpp_bin, hf);
        CHECK(compare_files(py_bin, cpp_bin) == "identical");
    }

    // F32 and F16 tensors: both sides round to bf16 (nearest even). The F32 values carry low mantissa bits,
    // exact ties between two bf16 values among them, so the rounding rule itself is compared.
    const std::string model = "tiny_untied";
    SafetensorsFile orig(ref(model, "hf_orig/model.safetensors"));
    std::vector<TensorToWrite> tensors = tensors_of(orig);
    std::deque<std::vector<uint8_t>> storage;
    Rng rng(2024);
    for (TensorToWrite& t : tensors) {
        const TensorView& view = orig.get(t.name);
        const int64_t n = view.numel();
        std::vector<bf16_bits> values((size_t)n);
        memcpy(values.data(), view.data, view.nbytes);
        if (t.name == "model.embed_tokens.weight" || t.name.find("mlp.up_proj") != std::string::npos) {
            storage.emplace_back((size_t)n * 4);
            for (int64_t i = 0; i < n; i++) {
                uint32_t low = (uint32_t)rng.next_below(4) == 0 ? 0x8000u : (uint32_t)rng.next_below(0x10000);  // 1 in 4 a tie
                uint32_t bits = ((uint32_t)values[i] << 16) | low;
                memcpy(storage.back().data() + 4 * i, &bits, 4);
            }
            t = {t.name, "F32", t.shape, storage.back().data(), (size_t)n * 4};
        } else if (t.name.find("norm") != std::string::npos || t.name.find("bias") != std::string::npos) {
            storage.emplace_back((size_t)n * 2);
            for (int64_t i = 0; i < n; i++) {
                // a finite half with a random mantissa: 11 significant bits, so most are not bf16 values
                uint16_t h = (uint16_t)((rng.next_below(2) << 15) | ((8 + rng.next_below(14)) << 10) | rng.next_below(1024));
                memcpy(storage.back().data() + 2 * i, &h, 2);
            }
            t = {t.name, "F16", t.shape, storage.back().data(), (size_t)n * 2};
        }
    }
    const std::string mixed_dir = tmp / "mixed";
    write_model_dir(mixed_dir, read_file(ref(model, "hf_orig/config.json")), tensors);
    const std::string py_bin = tmp / "mixed_py.bin", cpp_bin = tmp / "mixed_cpp.bin";
    REQUIRE(run_shell("python3 dev/export_hf.py " + mixed_dir + " " + py_bin + " 2>&1").exit_code == 0);
    Qwen2Weights mixed = load_hf_dir(mixed_dir, LinearFormat::BF16);
    bin_save(cpp_bin, mixed);
    CHECK(compare_files(py_bin, cpp_bin) == "identical");
    CHECK_SAME_WEIGHTS(load_model(py_bin), mixed);
    // the F32 tensors were not bf16 values, so rounding really happened
    CHECK_FALSE(same_buffer(mixed, load_hf_dir(ref(model, "hf_orig"), LinearFormat::BF16)));
    CHECK_FALSE(exists(py_bin + ".tmp"));
}

TEST_CASE("python_float_repr matches Python's repr()", "[model_files]") {
    // documented CPython outputs: fixed notation for decimal exponents in [-4, 16), else e-notation
    CHECK(python_float_repr(0.1) == "0.1");
    CHECK(python_float_repr(1e-4) == "0.0001");
    CHECK(python_float_repr(1e-5) == "1e-05");
    CHECK(python_float_repr(1e16) == "1e+16");
    CHECK(python_float_repr(1e15) == "1000000000000000.0");
    CHECK(python_float_repr(-0.0) == "-0.0");
    CHECK(python_float_repr(2.5) == "2.5");
    CHECK(python_float_repr(123456789.0) == "123456789.0");
    // and Python itself on float32 values of every magnitude (as the nested offset is), via float.hex
    TempDir tmp;
    Rng rng(7);
    std::string hex_lines, ours;
    for (int i = 0; i < 2000; i++) {
        uint32_t bits = (uint32_t)rng.next_u64();
        float f;
        memcpy(&f, &bits, 4);
        if (!std::isfinite(f)) continue;
        char buf[64];
        snprintf(buf, sizeof(buf), "%a\n", (double)f);
        hex_lines += buf;
        ours += python_float_repr(f) + "\n";
    }
    write_file(tmp / "values.txt", hex_lines);
    const CommandResult python =
        run_shell("python3 -c \"import sys; [print(repr(float.fromhex(l))) for l in open(sys.argv[1])]\" " + (tmp / "values.txt") + " 2>&1");
    REQUIRE(python.exit_code == 0);
    CHECK(python.output == ours);
}

// ---- load_model errors ----------------------------------------------------------------------------------

TEST_CASE("load_model: each bad path gets one message naming the file, what is wrong and what to do", "[model_files]") {
    TempDir tmp;
    const std::string missing = tmp / "no_such_model";
    CHECK_THAT(error_of([&] { load_model(missing); }),
               Catch::Contains(missing) && Catch::Contains("cannot open") && Catch::Contains("pass an HF model directory"));

    const std::string empty_dir = tmp / "empty";
    std::filesystem::create_directories(empty_dir);
    CHECK_THAT(error_of([&] { load_model(empty_dir); }), Catch::Contains(empty_dir) && Catch::Contains("no config.json"));

    CHECK_THAT(error_of([&] { load_model(ref("tiny_tied", "hf/model.safetensors")); }),
               Catch::Contains("model.safetensors") && Catch::Contains("pass that directory"));

    const std::string config = read_file(ref("tiny_tied", "hf/config.json"));
    const std::string model_bytes = read_file(ref("tiny_tied", "hf/model.safetensors"));
    auto make_dir = [&](const std::string& name, const std::string& config_json, const std::string& safetensors) {
        const std::string dir = tmp / name;
        std::filesystem::create_directories(dir);
        write_file(dir + "/config.json", config_json);
        write_file(dir + "/model.safetensors", safetensors);
        return dir;
    };

    // config.json says I = 96, the tensors are [160, 64]: qwen2_check_checkpoint names the first one
    const std::string mismatch = make_dir("mismatch", replace_once(config, "\"intermediate_size\": 160", "\"intermediate_size\": 96"), model_bytes);
    std::string mismatch_error = error_of([&] { load_model(mismatch); });
    CHECK_THAT(mismatch_error, Catch::Contains(mismatch + "/model.safetensors") && Catch::Contains("model.layers.0.mlp.gate_proj.weight") &&
                                   Catch::Contains("[160, 64]") && Catch::Contains("[96, 64]"));
    // the same mismatch in a bnb directory
    std::string bnb_config = read_file(ref("tiny_tied", "bnb/config.json"));
    const std::string bnb_mismatch = make_dir("bnb_mismatch", replace_once(bnb_config, "\"intermediate_size\": 160", "\"intermediate_size\": 96"),
                                              read_file(ref("tiny_tied", "bnb/model.safetensors")));
    CHECK_THAT(error_of([&] { load_model(bnb_mismatch); }),
               Catch::Contains("model.layers.0.mlp.gate_proj.weight") && Catch::Contains("expected [96, 64]"));

    // a safetensors file cut short: the file and the tensor, with expected and actual sizes
    const size_t cut = model_bytes.size() - 1000;
    const std::string truncated = make_dir("truncated", config, model_bytes.substr(0, cut));
    std::string truncated_error = error_of([&] { load_model(truncated, {true, {}}); });
    CHECK_THAT(truncated_error, Catch::Contains(truncated + "/model.safetensors") && Catch::Contains("tensor ") &&
                                    Catch::Contains("truncated") && Catch::Contains("file has " + std::to_string(cut)) &&
                                    Catch::Contains("re-download"));

    REQUIRE(config[0] == '{');  // the key goes first in the top-level object
    const std::string gptq = make_dir("gptq", "{\"quantization_config\": {\"quant_method\": \"gptq\"}," + config.substr(1), model_bytes);
    CHECK_THAT(error_of([&] { load_model(gptq); }), Catch::Contains("\"gptq\"") && Catch::Contains("bitsandbytes"));
}
