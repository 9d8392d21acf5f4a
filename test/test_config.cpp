// test_config.cpp: Qwen2 presets, config.json parsing (both RoPE spellings), validation and the checkpoint tensor check.
#include <catch2/catch.hpp>

#include "data/text.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "quant/bf16.h"
#include "test/test_util.h"

static void check_same_architecture(const Qwen2Config& a, const Qwen2Config& b) {
    CHECK(a.V == b.V);
    CHECK(a.C == b.C);
    CHECK(a.I == b.I);
    CHECK(a.L == b.L);
    CHECK(a.NH == b.NH);
    CHECK(a.KVH == b.KVH);
    CHECK(a.HD == b.HD);
    CHECK(a.rope_theta == b.rope_theta);
    CHECK(a.rms_norm_eps == b.rms_norm_eps);
    CHECK(a.tied_embeddings == b.tied_embeddings);
    CHECK(a.qkv_bias == b.qkv_bias);
    CHECK(a.max_position_embeddings == b.max_position_embeddings);
    CHECK(a.dtype == b.dtype);
}

TEST_CASE("presets match the Qwen2.5 table", "[config]") {
    struct Row {
        const char* name;
        int V, C, I, L, NH, KVH, HD;
        bool tied;
        int64_t parameters;  // HF's model.num_parameters() for the released checkpoints
    };
    const Row table[] = {
        {"0.5B", 151936, 896, 4864, 24, 14, 2, 64, true, 494032768},
        {"1.5B", 151936, 1536, 8960, 28, 12, 2, 128, true, 1543714304},
        {"3B", 151936, 2048, 11008, 36, 16, 2, 128, true, 3085938688},
        {"7B", 152064, 3584, 18944, 28, 28, 4, 128, false, 7615616512},
        {"tiny", 512, 64, 128, 2, 4, 2, 16, true, 0},
        {"tiny-untied", 512, 64, 128, 2, 4, 2, 16, false, 0},
    };
    CHECK(qwen2_preset_names().size() == sizeof(table) / sizeof(table[0]));
    for (const Row& row : table) {
        INFO(row.name);
        Qwen2Config cfg = qwen2_preset(row.name);
        CHECK(cfg.V == row.V);
        CHECK(cfg.C == row.C);
        CHECK(cfg.I == row.I);
        CHECK(cfg.L == row.L);
        CHECK(cfg.NH == row.NH);
        CHECK(cfg.KVH == row.KVH);
        CHECK(cfg.HD == row.HD);
        CHECK(cfg.tied_embeddings == row.tied);
        CHECK(cfg.qkv_bias);
        CHECK(cfg.rope_theta == 1e6f);
        CHECK(cfg.rms_norm_eps == 1e-6f);
        CHECK(cfg.dtype == "bfloat16");
        CHECK_NOTHROW(qwen2_config_validate(cfg));

        std::vector<TensorSpec> specs = qwen2_tensor_specs(cfg);
        // embed_tokens + 12 per layer (2 norms, q/k/v weight+bias, o, gate, up, down) + norm + lm_head if untied
        CHECK(specs.size() == (size_t)(1 + 12 * row.L + 1 + (row.tied ? 0 : 1)));
        int64_t parameters = 0;
        std::map<std::string, std::vector<int64_t>> shapes;
        for (const TensorSpec& s : specs) {
            parameters += shape_numel(s.shape);
            CHECK(shapes.count(s.name) == 0);
            shapes[s.name] = s.shape;
        }
        if (row.parameters) CHECK(parameters == row.parameters);
        const int64_t C = row.C, I = row.I, V = row.V, Q = (int64_t)row.NH * row.HD, KV = (int64_t)row.KVH * row.HD;
        const std::string last = "model.layers." + std::to_string(row.L - 1) + ".";
        CHECK(shapes.at("model.embed_tokens.weight") == std::vector<int64_t>{V, C});
        CHECK(shapes.at(last + "input_layernorm.weight") == std::vector<int64_t>{C});
        CHECK(shapes.at(last + "post_attention_layernorm.weight") == std::vector<int64_t>{C});
        CHECK(shapes.at(last + "self_attn.q_proj.weight") == std::vector<int64_t>{Q, C});
        CHECK(shapes.at(last + "self_attn.q_proj.bias") == std::vector<int64_t>{Q});
        CHECK(shapes.at(last + "self_attn.k_proj.weight") == std::vector<int64_t>{KV, C});
        CHECK(shapes.at(last + "self_attn.v_proj.bias") == std::vector<int64_t>{KV});
        CHECK(shapes.at(last + "self_attn.o_proj.weight") == std::vector<int64_t>{C, Q});
        CHECK(shapes.at(last + "mlp.gate_proj.weight") == std::vector<int64_t>{I, C});
        CHECK(shapes.at(last + "mlp.up_proj.weight") == std::vector<int64_t>{I, C});
        CHECK(shapes.at(last + "mlp.down_proj.weight") == std::vector<int64_t>{C, I});
        CHECK(shapes.at("model.norm.weight") == std::vector<int64_t>{C});
        CHECK(shapes.count("model.layers." + std::to_string(row.L) + ".mlp.up_proj.weight") == 0);
        CHECK(shapes.count("lm_head.weight") == (row.tied ? 0u : 1u));
        CHECK(shapes.count(last + "self_attn.o_proj.bias") == 0);  // Qwen2: biases on q/k/v only
    }
    CHECK_THAT(error_of([] { qwen2_preset("13B"); }), Catch::Contains("13B") && Catch::Contains("0.5B, 1.5B, 3B, 7B"));
}

TEST_CASE("config.json in both RoPE spellings reads as the presets", "[config]") {
    // transformers >= 5: rope_parameters + dtype; tied
    Qwen2Config t5 = qwen2_config_load(fixture("qwen_tiny"));
    check_same_architecture(t5, qwen2_preset("tiny"));
    CHECK(t5.source == fixture("qwen_tiny/config.json"));
    // transformers 4.x: top-level rope_theta + torch_dtype + rope_scaling null; untied; path to the file itself
    Qwen2Config t4 = qwen2_config_load(fixture("qwen_tiny_untied/config.json"));
    check_same_architecture(t4, qwen2_preset("tiny-untied"));
    // The published Qwen2.5 configs
    check_same_architecture(qwen2_config_load(fixture("configs/qwen2.5-0.5b-instruct")), qwen2_preset("0.5B"));
    check_same_architecture(qwen2_config_load(fixture("configs/qwen2.5-7b-instruct")), qwen2_preset("7B"));

    // head_dim, when present, wins over C / NH
    std::string text = read_file(fixture("qwen_tiny/config.json"));
    Qwen2Config with_head_dim = qwen2_config_parse(replace_once(text, "\"hidden_size\": 64,", "\"hidden_size\": 64, \"head_dim\": 32,"), "x/config.json");
    CHECK(with_head_dim.HD == 32);
    // Both RoPE spellings at once are fine when they agree
    Qwen2Config both = qwen2_config_parse(replace_once(text, "\"hidden_size\": 64,", "\"hidden_size\": 64, \"rope_theta\": 1000000,"), "x/config.json");
    CHECK(both.rope_theta == 1e6f);
}

TEST_CASE("unsupported or broken config.json fields are named", "[config]") {
    const std::string t5 = read_file(fixture("qwen_tiny/config.json"));
    const std::string t4 = read_file(fixture("qwen_tiny_untied/config.json"));
    struct Bad {
        std::string text;
        std::vector<std::string> says;
    };
    const Bad cases[] = {
        {replace_once(t5, "\"use_sliding_window\": false", "\"use_sliding_window\": true"), {"\"use_sliding_window\"", "not implemented"}},
        {replace_once(t5, "\"rope_type\": \"default\"", "\"rope_type\": \"yarn\""), {"rope_parameters.rope_type", "yarn", "default"}},
        {replace_once(t4, "\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0}"),
         {"rope_scaling.rope_type", "dynamic"}},
        {replace_once(t5, "\"model_type\": \"qwen2\"", "\"model_type\": \"llama\""), {"\"model_type\"", "llama", "qwen2"}},
        {replace_once(t5, "\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""), {"\"hidden_act\"", "gelu", "silu"}},
        {replace_once(t5, "\"num_hidden_layers\": 2,", ""), {"\"num_hidden_layers\"", "missing"}},
        {replace_once(t5, "\"vocab_size\": 512", "\"vocab_size\": \"512\""), {"\"vocab_size\"", "positive integer"}},
        {replace_once(t5, "\"hidden_size\": 64,", "\"hidden_size\": 64.5,"), {"\"hidden_size\"", "64.5"}},
        {replace_once(t5, "\"rms_norm_eps\": 1e-06,", ""), {"\"rms_norm_eps\"", "missing"}},
        {replace_once(t4, "\"rope_theta\": 1000000.0,", ""), {"rope_theta", "missing"}},
        {replace_once(t5, "\"rope_theta\": 1000000.0", "\"rope_theta\": -1"), {"rope_parameters.rope_theta", "positive"}},
        {replace_once(t5, "\"dtype\": \"bfloat16\"", "\"dtype\": \"int8\""), {"int8", "bfloat16, float16, float32"}},
        {replace_once(t4, "\"torch_dtype\": \"bfloat16\",", ""), {"torch_dtype", "missing"}},
        {replace_once(t5, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": 1"), {"tie_word_embeddings", "true or false"}},
        {replace_once(t5, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"), {"num_key_value_heads (KVH) = 3", "not a multiple"}},
        {replace_once(t5, "\"num_attention_heads\": 4", "\"num_attention_heads\": 5"), {"hidden_size (C) = 64", "num_attention_heads (NH) = 5"}},
        {"[1, 2]", {"expected a JSON object"}},
        {"{\"model_type\": ", {"column"}},
    };
    for (const Bad& c : cases) {
        std::string message = error_of([&] { qwen2_config_parse(c.text, "/models/x/config.json"); });
        INFO(message);
        CHECK_THAT(message, Catch::Contains("/models/x/config.json"));
        for (const std::string& s : c.says) CHECK_THAT(message, Catch::Contains(s));
    }
    CHECK_THAT(error_of([] { qwen2_config_load(fixture("sharded")); }),
               Catch::Contains(fixture("sharded/config.json")) && Catch::Contains("cannot open"));
}

TEST_CASE("validation checks the config's internal consistency", "[config]") {
    Qwen2Config cfg = qwen2_preset("tiny");
    cfg.source = "my.json";
    auto with = [&](const std::function<void(Qwen2Config&)>& edit) {
        Qwen2Config c = cfg;
        edit(c);
        return error_of([&] { qwen2_config_validate(c); });
    };
    CHECK_THAT(with([](Qwen2Config& c) { c.L = 0; }), Catch::Contains("my.json") && Catch::Contains("num_hidden_layers (L) = 0"));
    CHECK_THAT(with([](Qwen2Config& c) { c.HD = 15; }), Catch::Contains("head_dim (HD) = 15 is odd"));
    CHECK_THAT(with([](Qwen2Config& c) { c.KVH = 3; }), Catch::Contains("not a multiple of num_key_value_heads"));
    CHECK_THAT(with([](Qwen2Config& c) { c.qkv_bias = false; }), Catch::Contains("qkv_bias"));
    CHECK_THAT(with([](Qwen2Config& c) { c.rms_norm_eps = 0; }), Catch::Contains("rms_norm_eps"));
    CHECK_THAT(with([](Qwen2Config& c) { c.dtype = "fp8"; }), Catch::Contains("fp8"));
}

TEST_CASE("checkpoints are checked against the config's tensor list", "[config]") {
    for (const char* dir : {"qwen_tiny", "qwen_tiny_untied"}) {
        INFO(dir);
        Qwen2Config cfg = qwen2_config_load(fixture(dir));
        SafetensorsCheckpoint ckpt(fixture(dir));
        CHECK_NOTHROW(qwen2_check_checkpoint(cfg, ckpt));
        CHECK(ckpt.size() == qwen2_tensor_specs(cfg).size());
        // The values are the fixture formula's, through bf16.
        for (const TensorSpec& spec : qwen2_tensor_specs(cfg)) {
            const TensorView& t = ckpt.get(spec.name);
            REQUIRE(t.dtype == "BF16");
            const uint16_t* bits = (const uint16_t*)t.data;
            for (int64_t i = 0; i < t.numel(); i += 7) REQUIRE(bf16_to_f32(bits[i]) == fixture_float(spec.name, i));
        }
    }

    // A tied checkpoint for an untied config lacks lm_head.
    std::string message = error_of([] { qwen2_check_checkpoint(qwen2_preset("tiny-untied"), SafetensorsCheckpoint(fixture("qwen_tiny"))); });
    CHECK_THAT(message, Catch::Contains("qwen_tiny/model.safetensors") && Catch::Contains("lm_head.weight is missing") &&
                            Catch::Contains("[V, C] = [512, 64]"));

    message = error_of([] {
        qwen2_check_checkpoint(qwen2_config_load(fixture("broken/qwen_tiny_badshape")), SafetensorsCheckpoint(fixture("broken/qwen_tiny_badshape")));
    });
    CHECK_THAT(message, Catch::Contains("qwen_tiny_badshape/model.safetensors") &&
                            Catch::Contains("model.layers.1.mlp.down_proj.weight has shape [128, 64], expected [C, I] = [64, 128]"));

    message = error_of([] {
        qwen2_check_checkpoint(qwen2_config_load(fixture("broken/qwen_tiny_missing")), SafetensorsCheckpoint(fixture("broken/qwen_tiny_missing")));
    });
    CHECK_THAT(message, Catch::Contains("model.layers.1.self_attn.k_proj.bias is missing; expected shape [KVH*HD] = [32]"));

    // A real size mismatch: the tiny checkpoint against the 0.5B config names the embedding first.
    message = error_of([] { qwen2_check_checkpoint(qwen2_preset("0.5B"), SafetensorsCheckpoint(fixture("qwen_tiny"))); });
    CHECK_THAT(message, Catch::Contains("model.embed_tokens.weight has shape [512, 64], expected [V, C] = [151936, 896]") &&
                            Catch::Contains("preset 0.5B"));
}
