// test_lora.cpp: the LoRA layout and initialisation, PEFT adapter save/load against the reference adapters, and merging/export (lora/).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "data/json.h"
#include "data/rng.h"
#include "data/text.h"
#include "lora/lora.h"
#include "lora/merge.h"
#include "lora/peft.h"
#include "model/config.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "quant/bf16.h"
#include "test/test_util.h"

// The features of each linear written out from the Qwen2 architecture (independently of weights.cpp).
static void expected_features(const Qwen2Config& c, int slot, int64_t* out, int64_t* in) {
    const int64_t q = (int64_t)c.NH * c.HD, kv = (int64_t)c.KVH * c.HD;
    const int64_t table[NUM_LINEAR][2] = {{q, c.C}, {kv, c.C}, {kv, c.C}, {c.C, q}, {c.I, c.C}, {c.I, c.C}, {c.C, c.I}};
    *out = table[slot][0];
    *in = table[slot][1];
}

// Runs a python3 script with a JSON file we wrote as its argument (python3's json module is the independent
// reader); the script exits non-zero, printing what is wrong, when a field is not what it should be.
static void check_json_with_python(const std::string& script, const std::string& json_path) {
    TempDir tmp;
    write_file(tmp / "check.py", script);
    const CommandResult python = run_shell("python3 " + (tmp / "check.py") + " " + json_path + " 2>&1");
    INFO(python.output);
    CHECK(python.exit_code == 0);
}

// ---- layout and initialisation ------------------------------------------------------------------------

TEST_CASE("lora: the layout packs A [R, in] then B [out, R] per layer and targeted slot", "[lora]") {
    const Qwen2Config cfg = qwen2_preset("tiny-untied");
    LoraConfig lc;
    lc.R = 8;
    LoraWeights w = lora_create(cfg, lc);
    size_t offset = 0;
    for (int l = 0; l < cfg.L; l++) {
        for (int s = 0; s < NUM_LINEAR; s++) {
            const LoraWeights::Slot& slot = w.slots[l][s];
            int64_t out, in;
            expected_features(cfg, s, &out, &in);
            CHECK(slot.present);
            CHECK(slot.out == out);
            CHECK(slot.in == in);
            CHECK(slot.a_offset == offset);
            CHECK(slot.b_offset == offset + (size_t)(lc.R * in));
            offset += (size_t)lc.R * (in + out);
        }
    }
    CHECK(w.num_params() == offset);
    CHECK(w.grads.size() == offset);
    CHECK(w.adam_m.size() == offset);
    CHECK(w.adam_v.size() == offset);
    std::vector<size_t> sizes = lora_tensor_sizes(w);
    CHECK(sizes.size() == (size_t)cfg.L * NUM_LINEAR * 2);

    // only q and v: the other slots are absent and take no space
    lc.targets = (1u << LIN_Q) | (1u << LIN_V);
    LoraWeights qv = lora_create(cfg, lc);
    int64_t q_out, v_out, in;
    expected_features(cfg, LIN_Q, &q_out, &in);
    expected_features(cfg, LIN_V, &v_out, &in);
    CHECK(qv.num_params() == (size_t)cfg.L * lc.R * (q_out + in + v_out + in));
    CHECK_FALSE(qv.slots[0][LIN_K].present);
    CHECK(lora_target_names(lc.targets) == std::vector<std::string>{"q_proj", "v_proj"});

    lc.R = 0;
    CHECK_THROWS_WITH(lora_create(cfg, lc), Catch::Contains("rank"));
    lc.R = 8;
    lc.targets = 0;
    CHECK_THROWS_WITH(lora_create(cfg, lc), Catch::Contains("targets"));
}

TEST_CASE("lora: scale is alpha/r, or alpha/sqrt(r) with rsLoRA", "[lora]") {
    LoraConfig lc;
    lc.R = 16;
    lc.alpha = 32;
    CHECK(lc.scale() == 2.0f);
    lc.rslora = true;
    CHECK(lc.scale() == 8.0f);  // 32 / sqrt(16)
    lc.R = 8;
    lc.alpha = 16;
    CHECK(lc.scale() == (float)(16.0 / std::sqrt(8.0)));
}

TEST_CASE("lora: PEFT's initialisation, A uniform in +-1/sqrt(in) and B zero, seeded", "[lora]") {
    const Qwen2Config cfg = qwen2_preset("tiny");
    LoraConfig lc;
    lc.R = 16;
    LoraWeights w = lora_create(cfg, lc);
    lora_init_peft(&w, 42);
    for (int l = 0; l < cfg.L; l++) {
        for (int s = 0; s < NUM_LINEAR; s++) {
            const LoraWeights::Slot& slot = w.slots[l][s];
            // kaiming_uniform_(a=sqrt(5)) on [R, in]: bound = sqrt(6 / ((1 + 5) * in)) = 1/sqrt(in)
            const double bound = 1.0 / std::sqrt((double)slot.in);
            const int64_t n = lc.R * slot.in;
            double sum = 0.0, sum_sq = 0.0, lo = 1e9, hi = -1e9;
            for (int64_t i = 0; i < n; i++) {
                double a = w.A(l, s)[i];
                sum += a, sum_sq += a * a, lo = std::min(lo, a), hi = std::max(hi, a);
            }
            CHECK(lo >= -bound);
            CHECK(hi <= bound);
            // uniform(-b, b): mean 0 and variance b^2/3; with n >= 1024 draws the sample mean's standard error is
            // b/sqrt(3n) <= b/55 and the variance's about b^2/(3*sqrt(1.25 n)), so these are > 5 sigma bounds
            CHECK(std::fabs(sum / n) <= 0.1 * bound);
            CHECK(std::fabs(sum_sq / n - bound * bound / 3) <= 0.2 * bound * bound / 3);
            // the range is actually used, not a narrower one
            CHECK(hi - lo >= 1.9 * bound);
            for (int64_t i = 0; i < slot.out * lc.R; i++) REQUIRE(w.B(l, s)[i] == 0.0f);
        }
    }
    LoraWeights again = lora_create(cfg, lc);
    lora_init_peft(&again, 42);
    CHECK(again.params == w.params);
    lora_init_peft(&again, 43);
    CHECK(again.params != w.params);
}

// ---- PEFT adapters ------------------------------------------------------------------------------------

TEST_CASE("lora: the reference PEFT adapters load as the dump's step0 tensors, with their scale", "[lora]") {
    for (const char* name : REF_MODELS) {
        INFO(name);
        const std::string dir = REF_DIR + name;
        const Qwen2Config cfg = qwen2_config_load(dir + "/hf");
        PeftAdapterConfig pc;
        LoraWeights w = peft_load(dir + "/adapter", cfg, &pc);
        SafetensorsFile dump(dir + "/dump_float32.safetensors");
        const JsonValue meta = json_parse(dump.metadata().at("meta"), dump.path());
        const JsonValue& lora = *meta.get("lora");
        CHECK(w.lora.R == (int)lora.get("r")->number);
        CHECK(w.lora.alpha == (float)lora.get("lora_alpha")->number);
        CHECK(w.lora.rslora == lora.get("use_rslora")->boolean);
        // PEFT: scaling = lora_alpha / math.sqrt(r) with rsLoRA, else lora_alpha / r, a Python float
        const double r = lora.get("r")->number, alpha = lora.get("lora_alpha")->number;
        CHECK(w.lora.scale() == (float)(lora.get("use_rslora")->boolean ? alpha / std::sqrt(r) : alpha / r));
        CHECK(w.lora.targets == (1u << NUM_LINEAR) - 1);
        CHECK(pc.lora_dropout == 0.0);
        size_t compared = 0;
        for (int l = 0; l < cfg.L; l++) {
            for (int s = 0; s < NUM_LINEAR; s++) {
                for (char matrix : {'A', 'B'}) {
                    std::vector<float> ref = tensor_to_f32(dump.get("step0." + ref_lora_name(l, s, matrix)));
                    const float* ours = matrix == 'A' ? w.A(l, s) : w.B(l, s);
                    REQUIRE(memcmp(ours, ref.data(), ref.size() * sizeof(float)) == 0);  // both fp32 copies of one tensor
                    compared += ref.size();
                }
            }
        }
        CHECK(compared == w.num_params());
    }
}

TEST_CASE("lora: save then load is bit-identical, and Python reads our adapter_config.json", "[lora]") {
    TempDir tmp;
    const Qwen2Config cfg = qwen2_config_load(REF_DIR + "tiny_untied/hf");
    LoraConfig lc;
    lc.R = 6;
    lc.alpha = 12.5f;
    lc.rslora = true;
    lc.targets = (1u << LIN_Q) | (1u << LIN_O) | (1u << LIN_DOWN);
    LoraWeights w = lora_create(cfg, lc);
    lora_init_peft(&w, 5);
    Rng rng(9);
    for (int l = 0; l < cfg.L; l++)
        for (int s : {LIN_Q, LIN_O, LIN_DOWN})
            for (int64_t i = 0; i < w.slots[l][s].out * lc.R; i++) w.B(l, s)[i] = rng.next_float() - 0.5f;

    const std::string dir = tmp / "adapter";  // created by peft_save
    peft_save(dir, w, "Qwen/Qwen2.5-7B-Instruct");
    CHECK_FALSE(std::filesystem::exists(dir + "/adapter_config.json.tmp"));
    CHECK_FALSE(std::filesystem::exists(dir + "/adapter_model.safetensors.tmp"));
    PeftAdapterConfig pc;
    LoraWeights back = peft_load(dir, cfg, &pc);
    CHECK(back.params == w.params);
    CHECK(back.lora.R == lc.R);
    CHECK(back.lora.alpha == lc.alpha);
    CHECK(back.lora.rslora);
    CHECK(back.lora.targets == lc.targets);
    CHECK(pc.base_model_name_or_path == "Qwen/Qwen2.5-7B-Instruct");

    // python3's json module is the independent reader: every field PEFT needs, with our values
    const std::string check =
        "import json, sys\n"
        "c = json.load(open(sys.argv[1]))\n"
        "want = dict(peft_type='LORA', task_type='CAUSAL_LM', r=6, lora_alpha=12.5, lora_dropout=0.0, bias='none',\n"
        "            use_rslora=True, fan_in_fan_out=False, inference_mode=True, use_dora=False,\n"
        "            base_model_name_or_path='Qwen/Qwen2.5-7B-Instruct')\n"
        "bad = {k: c.get(k) for k, v in want.items() if c.get(k) != v or type(c.get(k)) != type(v)}\n"
        "bad.update({} if sorted(c['target_modules']) == ['down_proj', 'o_proj', 'q_proj'] else {'target_modules': c['target_modules']})\n"
        "sys.exit(str(bad) if bad else 0)\n";
    check_json_with_python(check, dir + "/adapter_config.json");

    // the tensors as Python's safetensors would name and shape them
    SafetensorsFile file(dir + "/adapter_model.safetensors");
    CHECK(file.tensors().size() == (size_t)cfg.L * 3 * 2);
    const TensorView& a = file.get("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
    CHECK(a.dtype == "F32");
    CHECK(a.shape == std::vector<int64_t>{lc.R, cfg.I});
    CHECK(file.get("base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight").shape == std::vector<int64_t>{cfg.C, lc.R});
}

TEST_CASE("lora: BF16 and F16 adapter tensors load converted exactly to fp32", "[lora]") {
    TempDir tmp;
    const Qwen2Config cfg = qwen2_preset("tiny");
    LoraConfig lc;
    lc.R = 2;
    lc.targets = 1u << LIN_UP;
    LoraWeights w = lora_create(cfg, lc);
    lora_init_peft(&w, 1);
    // values exact in both bf16 and f16: multiples of 1/64 in (-1, 1)
    for (float& p : w.params) p = std::round(p * 64.0f) / 64.0f;
    peft_save(tmp.path, w);
    for (const char* dtype : {"BF16", "F16"}) {
        INFO(dtype);
        std::vector<std::vector<uint16_t>> storage;
        std::vector<TensorToWrite> tensors;
        for (int l = 0; l < cfg.L; l++) {
            for (char matrix : {'A', 'B'}) {
                const LoraWeights::Slot& slot = w.slots[l][LIN_UP];
                const float* src = matrix == 'A' ? w.A(l, LIN_UP) : w.B(l, LIN_UP);
                size_t n = (size_t)lc.R * (matrix == 'A' ? slot.in : slot.out);
                storage.emplace_back(n);
                for (size_t i = 0; i < n; i++) {
                    uint32_t bits;
                    memcpy(&bits, &src[i], 4);
                    // f16 of a multiple of 1/64 below 1 in magnitude: sign, exponent rebiased from 127 to 15, top 10 mantissa bits
                    uint16_t f16 = src[i] == 0.0f ? (uint16_t)((bits >> 16) & 0x8000)
                                                  : (uint16_t)(((bits >> 16) & 0x8000) | ((((bits >> 23) & 0xFF) - 112) << 10) | ((bits >> 13) & 0x3FF));
                    storage.back()[i] = std::string(dtype) == "BF16" ? f32_to_bf16(src[i]) : f16;
                }
                std::vector<int64_t> shape = matrix == 'A' ? std::vector<int64_t>{lc.R, slot.in} : std::vector<int64_t>{slot.out, lc.R};
                tensors.push_back({lora_peft_key(l, LIN_UP, matrix), dtype, shape, storage.back().data(), n * 2});
            }
        }
        safetensors_write(tmp / "adapter_model.safetensors", tensors);
        LoraWeights back = peft_load(tmp.path, cfg);
        CHECK(back.params == w.params);
    }
}

TEST_CASE("lora: malformed adapters are refused naming the file, the field or tensor, and the shapes", "[lora]") {
    TempDir tmp;
    const std::string ref = REF_DIR + "tiny_tied/adapter";
    const Qwen2Config cfg = qwen2_config_load(REF_DIR + "tiny_tied/hf");
    const std::string config_text = read_file(ref + "/adapter_config.json");
    LoraWeights good = peft_load(ref, cfg);
    const std::string dir = tmp.path, config_path = tmp / "adapter_config.json", tensors_path = tmp / "adapter_model.safetensors";

    // Writes the adapter's tensors, leaving out `skip` and giving `reshape` the shape [1, 1] (with one float).
    auto write_tensors = [&](const std::string& skip, const std::string& reshape, const std::string& extra) {
        std::vector<TensorToWrite> tensors;
        static const float one = 1.0f;
        for (int l = 0; l < cfg.L; l++) {
            for (int s = 0; s < NUM_LINEAR; s++) {
                const LoraWeights::Slot& slot = good.slots[l][s];
                tensors.push_back({lora_peft_key(l, s, 'A'), "F32", {good.lora.R, slot.in}, good.A(l, s), (size_t)good.lora.R * slot.in * 4});
                tensors.push_back({lora_peft_key(l, s, 'B'), "F32", {slot.out, good.lora.R}, good.B(l, s), (size_t)slot.out * good.lora.R * 4});
            }
        }
        std::vector<TensorToWrite> kept;
        for (TensorToWrite& t : tensors) {
            if (t.name == skip) continue;
            if (t.name == reshape) t.shape = {1, 1}, t.nbytes = 4, t.data = &one;
            kept.push_back(t);
        }
        if (!extra.empty()) kept.push_back({extra, "F32", {1, 1}, &one, 4});
        safetensors_write(tensors_path, kept);
    };

    write_file(config_path, config_text);
    write_tensors("", "", "");
    CHECK(peft_load(dir, cfg).params == good.params);  // the unmodified copy loads

    const std::string key = lora_peft_key(1, LIN_GATE, 'B');
    write_tensors(key, "", "");
    CHECK_THROWS_WITH(peft_load(dir, cfg), Catch::Contains(tensors_path) && Catch::Contains(key) && Catch::Contains("missing") &&
                                               Catch::Contains("[160, 4]"));
    write_tensors("", key, "");
    CHECK_THROWS_WITH(peft_load(dir, cfg), Catch::Contains(tensors_path) && Catch::Contains(key) &&
                                               Catch::Contains("has shape [1, 1], expected [160, 4]"));
    const std::string stray = "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight";  // a third layer in a 2-layer model
    write_tensors("", "", stray);
    CHECK_THROWS_WITH(peft_load(dir, cfg), Catch::Contains(tensors_path) && Catch::Contains("unexpected tensor " + stray));
    write_tensors("", "", "");

    // config fields we refuse: each message names the file and the field
    struct Edit {
        std::string from, to, field;
    };
    const std::vector<Edit> edits = {
        {"\"use_dora\": false", "\"use_dora\": true", "use_dora"},
        {"\"bias\": \"none\"", "\"bias\": \"lora_only\"", "bias"},
        {"\"fan_in_fan_out\": false", "\"fan_in_fan_out\": true", "fan_in_fan_out"},
        {"\"layers_to_transform\": null", "\"layers_to_transform\": [0]", "layers_to_transform"},
        {"\"rank_pattern\": {}", "\"rank_pattern\": {\"q_proj\": 8}", "rank_pattern"},
        {"\"alpha_pattern\": {}", "\"alpha_pattern\": {\"q_proj\": 8}", "alpha_pattern"},
        {"\"modules_to_save\": null", "\"modules_to_save\": [\"lm_head\"]", "modules_to_save"},
        {"\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\"", "peft_type"},
        {"\"r\": 4", "\"r\": 4.5", "\"r\""},
        {"\"init_lora_weights\": true", "\"init_lora_weights\": \"pissa\"", "init_lora_weights"},
        {"\"o_proj\",", "\"dense\",", "target_modules"},
    };
    for (const Edit& e : edits) {
        INFO(e.to);
        write_file(config_path, replace_once(config_text, e.from, e.to));
        CHECK_THROWS_WITH(peft_load(dir, cfg), Catch::Contains(config_path) && Catch::Contains(e.field));
    }
    // a regular expression as target_modules is refused; "all-linear" is understood
    std::string targets = config_text.substr(config_text.find("\"target_modules\""));
    targets = targets.substr(0, targets.find(']') + 1);
    write_file(config_path, replace_once(config_text, targets, "\"target_modules\": \".*proj\""));
    CHECK_THROWS_WITH(peft_load(dir, cfg), Catch::Contains(config_path) && Catch::Contains("target_modules") && Catch::Contains("list"));
    write_file(config_path, replace_once(config_text, targets, "\"target_modules\": \"all-linear\""));
    CHECK(peft_load(dir, cfg).params == good.params);
    // fewer targets in the config than tensors in the file: the rest are unexpected
    write_file(config_path, replace_once(config_text, targets, "\"target_modules\": [\"q_proj\"]"));
    CHECK_THROWS_WITH(peft_load(dir, cfg), Catch::Contains("unexpected tensor") && Catch::Contains("[q_proj]"));
    // the wrong model: tiny_untied's shapes differ
    write_file(config_path, config_text);
    CHECK_THROWS_WITH(peft_load(dir, qwen2_config_load(REF_DIR + "tiny_untied/hf")), Catch::Contains("expected"));
    std::filesystem::remove(tensors_path);
    CHECK_THROWS_WITH(peft_load(dir, cfg), Catch::Contains(tensors_path));
}

// ---- merging and export ---------------------------------------------------------------------------------

// The bf16 neighbours' half-gap at x: the largest distance round-to-nearest may move x.
static double half_bf16_ulp(double x) {
    int exp;
    std::frexp(x, &exp);  // |x| in [2^(exp-1), 2^exp): bf16 keeps 8 significant bits
    return std::ldexp(1.0, exp - 1 - 8);
}

TEST_CASE("lora: merged weights follow bf16(W + scale * B A), and B = 0 leaves W bit for bit", "[lora]") {
    for (const char* name : REF_MODELS) {
        INFO(name);
        const std::string dir = REF_DIR + name;
        Qwen2Weights base = load_hf_dir(dir + "/hf", LinearFormat::BF16);
        LoraWeights lora = peft_load(dir + "/adapter", base.config);
        const float scale = lora.lora.scale();
        size_t checked = 0, not_nearest = 0;
        for (int l = 0; l < base.config.L; l++) {
            for (int s = 0; s < NUM_LINEAR; s++) {
                const LinearWeight& lin = base.layers[l].linear[s];
                std::vector<bf16_bits> merged((size_t)lin.out * lin.in);
                lora_merge_linear(lin, lora.A(l, s), lora.B(l, s), lora.lora.R, scale, merged.data());
                // every entry against the formula evaluated in double (the oracle) and rounded once
                for (int64_t o = 0; o < lin.out; o++) {
                    for (int64_t i = 0; i < lin.in; i++) {
                        double delta = 0.0;
                        for (int r = 0; r < lora.lora.R; r++) delta += (double)lora.B(l, s)[o * lora.lora.R + r] * lora.A(l, s)[r * lin.in + i];
                        const double w = bf16_to_f32(lin.w[o * lin.in + i]);
                        const double exact = w + (double)scale * delta;
                        const double ours = bf16_to_f32(merged[o * lin.in + i]);
                        // Round-to-nearest moves at most half a bf16 gap; ours rounds three times in fp32 first
                        // (the product, the scaling, the sum: each 2^-24 relative), which can tip a near-tie
                        // the other way, so those three roundings are the slack.
                        const double slack = 3 * std::ldexp(std::fabs(w) + std::fabs(scale * delta), -24);
                        REQUIRE(std::fabs(ours - exact) <= half_bf16_ulp(exact) + slack);
                        not_nearest += std::fabs(ours - exact) > half_bf16_ulp(exact);
                        checked++;
                    }
                }
                // B = 0: the adapter is a no-op and W comes back unchanged
                std::vector<float> zeros((size_t)lin.out * lora.lora.R, 0.0f);
                lora_merge_linear(lin, lora.A(l, s), zeros.data(), lora.lora.R, scale, merged.data());
                REQUIRE(memcmp(merged.data(), lin.w, merged.size() * sizeof(bf16_bits)) == 0);
            }
        }
        INFO(checked << " entries checked, " << not_nearest << " not the nearest bf16 of the exact value");
        CHECK(checked > 0);
        CHECK(not_nearest <= checked / 1000);
    }
}

TEST_CASE("lora: an NF4 base merges as its dequantized bf16 weights", "[lora]") {
    const std::string dir = REF_DIR + "tiny_untied";
    Qwen2Weights nf4 = load_hf_dir(dir + "/hf_orig", LinearFormat::NF4);
    LoraWeights lora = peft_load(dir + "/adapter", nf4.config);
    for (int s = 0; s < NUM_LINEAR; s++) {
        const LinearWeight& lin = nf4.layers[1].linear[s];
        REQUIRE(lin.format == LinearFormat::NF4);
        std::vector<bf16_bits> dequantized((size_t)lin.out * lin.in), from_nf4(dequantized.size()), from_bf16(dequantized.size());
        nf4_view_dequantize(lin.nf4, dequantized.data());
        LinearWeight as_bf16 = lin;
        as_bf16.format = LinearFormat::BF16;
        as_bf16.w = dequantized.data();
        lora_merge_linear(lin, lora.A(1, s), lora.B(1, s), lora.lora.R, lora.lora.scale(), from_nf4.data());
        lora_merge_linear(as_bf16, lora.A(1, s), lora.B(1, s), lora.lora.R, lora.lora.scale(), from_bf16.data());
        CHECK(from_nf4 == from_bf16);
    }
}

TEST_CASE("lora: the exported HF directory loads back as exactly the merged weights", "[lora]") {
    for (const char* name : REF_MODELS) {
        for (LinearFormat format : {LinearFormat::BF16, LinearFormat::NF4}) {
            INFO(name << " " << linear_format_name(format));
            TempDir tmp;
            const std::string dir = REF_DIR + name;
            Qwen2Weights base = load_hf_dir(dir + "/hf", format);
            LoraWeights lora = peft_load(dir + "/adapter", base.config);
            const std::string out = tmp / "merged";
            export_merged_hf_dir(out, base, &lora, dir + "/hf");
            CHECK_FALSE(std::filesystem::exists(out + "/model.safetensors.tmp"));
            CHECK_FALSE(std::filesystem::exists(out + "/config.json.tmp"));
            CHECK(std::filesystem::exists(out + "/generation_config.json"));

            Qwen2Weights back = load_hf_dir(out, LinearFormat::BF16);
            const Qwen2Config& a = base.config;
            const Qwen2Config& b = back.config;
            CHECK((a.V == b.V && a.C == b.C && a.I == b.I && a.L == b.L && a.NH == b.NH && a.KVH == b.KVH && a.HD == b.HD));
            CHECK((a.rope_theta == b.rope_theta && a.rms_norm_eps == b.rms_norm_eps && a.tied_embeddings == b.tied_embeddings));
            CHECK(a.max_position_embeddings == b.max_position_embeddings);
            // tied models have no lm_head tensor (transformers ties it to the embedding)
            SafetensorsFile file(out + "/model.safetensors");
            CHECK((file.find("lm_head.weight") != nullptr) == !a.tied_embeddings);
            for (const TensorView& t : file.tensors()) CHECK(t.dtype == "BF16");

            for (int l = 0; l < a.L; l++) {
                for (int s = 0; s < NUM_LINEAR; s++) {
                    const LinearWeight& lin = base.layers[l].linear[s];
                    std::vector<bf16_bits> merged((size_t)lin.out * lin.in);
                    lora_merge_linear(lin, lora.A(l, s), lora.B(l, s), lora.lora.R, lora.lora.scale(), merged.data());
                    REQUIRE(memcmp(back.layers[l].linear[s].w, merged.data(), merged.size() * 2) == 0);
                    if (lin.bias) REQUIRE(memcmp(back.layers[l].linear[s].bias, lin.bias, lin.out * 2) == 0);
                }
                REQUIRE(memcmp(back.layers[l].input_norm, base.layers[l].input_norm, a.C * 2) == 0);
                REQUIRE(memcmp(back.layers[l].post_attention_norm, base.layers[l].post_attention_norm, a.C * 2) == 0);
            }
            CHECK(memcmp(back.embed, base.embed, (size_t)a.V * a.C * 2) == 0);
            CHECK(memcmp(back.lm_head, base.lm_head, (size_t)a.V * a.C * 2) == 0);
            CHECK(memcmp(back.final_norm, base.final_norm, a.C * 2) == 0);

            // transformers 4 reads the top-level rope_theta, 5 the one in rope_parameters: both there, equal
            const std::string check =
                "import json, sys\n"
                "c = json.load(open(sys.argv[1]))\n"
                "ok = c['model_type'] == 'qwen2' and c['architectures'] == ['Qwen2ForCausalLM'] and c['hidden_act'] == 'silu'\n"
                "ok = ok and c['rope_theta'] == c['rope_parameters']['rope_theta'] == 1e6 and c['rope_parameters']['rope_type'] == 'default'\n"
                "ok = ok and c['torch_dtype'] == c['dtype'] == 'bfloat16' and c['use_sliding_window'] is False\n"
                "sys.exit(0 if ok else str(c))\n";
            check_json_with_python(check, out + "/config.json");
        }
    }
}

TEST_CASE("lora: export refuses an adapter made for another model shape", "[lora]") {
    TempDir tmp;
    Qwen2Weights base = load_hf_dir(REF_DIR + "tiny_tied/hf", LinearFormat::BF16);
    LoraWeights other = lora_create(qwen2_config_load(REF_DIR + "tiny_untied/hf"), LoraConfig());
    CHECK_THROWS_WITH(export_merged_hf_dir(tmp / "out", base, &other), Catch::Contains("merge it into the model it was trained on"));
}
