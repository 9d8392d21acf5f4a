// test_safetensors.cpp: the safetensors reader, sharded index and writer against fixtures from an independent Python writer.
#include <catch2/catch.hpp>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sys/resource.h>

#include "data/text.h"
#include "model/mmap_file.h"
#include "model/safetensors.h"
#include "quant/bf16.h"
#include "test/test_util.h"

// ---- helpers ------------------------------------------------------------------------------------------

// IEEE half to float, for checking F16 tensors: written with ldexp, independently of quant/bf16.h's bit twiddling.
static float f16_value(uint16_t h) {
    int sign = h >> 15, exponent = (h >> 10) & 31, mantissa = h & 1023;
    float magnitude = exponent == 0 ? std::ldexp((float)mantissa, -24)
                                    : std::ldexp((float)(mantissa | 1024), exponent - 25);
    return sign ? -magnitude : magnitude;
}

template <typename T>
static T load(const uint8_t* p) {
    T x;
    memcpy(&x, p, sizeof(T));
    return x;
}

// Element i of a tensor as a double, whatever its dtype.
static double element(const TensorView& t, int64_t i) {
    const uint8_t* p = t.data + i * safetensors_dtype_size(t.dtype);
    if (t.dtype == "BF16") return bf16_to_f32(load<uint16_t>(p));
    if (t.dtype == "F16") return f16_value(load<uint16_t>(p));
    if (t.dtype == "F32") return load<float>(p);
    if (t.dtype == "F64") return load<double>(p);
    if (t.dtype == "I32") return load<int32_t>(p);
    if (t.dtype == "I64") return (double)load<int64_t>(p);
    if (t.dtype == "U8") return *p;
    FAIL("no decoder for " + t.dtype);
    return 0;
}

// Every element equals the fixture formula.
static void check_formula(const TensorView& t) {
    INFO(t.name);
    REQUIRE(t.nbytes == (size_t)t.numel() * safetensors_dtype_size(t.dtype));
    bool is_float = t.dtype == "BF16" || t.dtype == "F16" || t.dtype == "F32" || t.dtype == "F64";
    for (int64_t i = 0; i < t.numel(); i++) {
        int code = fixture_value_code(t.name, i);
        double expected = is_float ? (code - 125) / 128.0 : t.dtype == "U8" ? code : code - 125;
        REQUIRE(element(t, i) == expected);
    }
}

static std::string run_capture(const std::string& cmd) {
    CommandResult result = run_shell(cmd);
    REQUIRE(result.exit_code == 0);
    return result.output;
}

static std::string python_describe(const std::string& path) {
    return run_capture("python3 dev/ref/make_safetensors_fixtures.py --describe " + path);
}

static uint64_t fnv1a64(const uint8_t* p, size_t n) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

// A scratch folder inside the fixture folder.
static std::string scratch(const std::string& name) {
    std::string dir = fixture("scratch_" + name);
    std::filesystem::create_directories(dir);
    return dir;
}

// ---- tests --------------------------------------------------------------------------------------------

TEST_CASE("dtype sizes and shape helpers", "[safetensors]") {
    CHECK(safetensors_dtype_size("BF16") == 2);
    CHECK(safetensors_dtype_size("F32") == 4);
    CHECK(safetensors_dtype_size("I64") == 8);
    CHECK(safetensors_dtype_size("U8") == 1);
    CHECK(safetensors_dtype_size("F4") == 0);  // sub-byte: refused on purpose
    CHECK(safetensors_dtype_size("bf16") == 0);
    CHECK(shape_to_string({18944, 3584}) == "[18944, 3584]");
    CHECK(shape_to_string({}) == "[]");
    CHECK(shape_numel({}) == 1);
    CHECK(shape_numel({0, 3}) == 0);
}

TEST_CASE("MappedFile maps a file and names the path when it cannot", "[safetensors]") {
    std::string path = fixture("valid.safetensors");
    MappedFile map(path);
    CHECK(map.size() == std::filesystem::file_size(path));
    CHECK(std::string((const char*)map.data(), map.size()) == read_file(path));
    MappedFile moved = std::move(map);
    CHECK(moved.size() == std::filesystem::file_size(path));
    CHECK(map.data() == nullptr);

    std::string missing = fixture("no_such_file.safetensors");
    CHECK_THAT(error_of([&] { MappedFile m(missing); }), Catch::Contains(missing) && Catch::Contains("cannot open"));
    std::string empty = fixture("broken/empty.safetensors");
    CHECK_THAT(error_of([&] { MappedFile m(empty); }), Catch::Contains(empty) && Catch::Contains("empty"));
    CHECK_THAT(error_of([&] { MappedFile m(safetensors_fixture_dir()); }), Catch::Contains("not a regular file"));
}

TEST_CASE("a Python-written file reads back with the formula's values", "[safetensors]") {
    SafetensorsFile file(fixture("valid.safetensors"));
    REQUIRE(file.tensors().size() == 8);
    CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "fixture \"quoted\" caf\xc3\xa9"}});
    CHECK(file.header_length() % 8 == 0);

    const std::map<std::string, std::pair<std::string, std::vector<int64_t>>> expected = {
        {"embed.weight", {"BF16", {4, 6}}}, {"mask", {"U8", {7}}},   {"norm.weight", {"F32", {6}}},
        {"half", {"F16", {3, 2}}},          {"ids", {"I64", {5}}},   {"count", {"I32", {2, 2}}},
        {"scalar", {"F64", {}}},            {"empty", {"F32", {0, 3}}},
    };
    for (const auto& [name, dtype_shape] : expected) {
        const TensorView& t = file.get(name);
        CHECK(t.dtype == dtype_shape.first);
        CHECK(t.shape == dtype_shape.second);
        CHECK(t.file == file.path());
        check_formula(t);
    }
    // tensors() is in data order
    for (size_t i = 1; i < file.tensors().size(); i++) CHECK(file.tensors()[i - 1].file_offset <= file.tensors()[i].file_offset);
    CHECK(file.tensors().front().name == "embed.weight");

    CHECK(file.find("nope") == nullptr);
    CHECK_THAT(error_of([&] { file.get("nope"); }), Catch::Contains("valid.safetensors") && Catch::Contains("nope"));
}

TEST_CASE("a sharded checkpoint gives one name -> tensor view", "[safetensors]") {
    for (const std::string& path : {fixture("sharded"), fixture("sharded/model.safetensors.index.json")}) {
        SafetensorsCheckpoint ckpt(path);
        CHECK(ckpt.path() == fixture("sharded/model.safetensors.index.json"));
        CHECK(ckpt.files().size() == 2);
        REQUIRE(ckpt.size() == 3);  // unlisted.weight is in shard 2 but not in the index
        CHECK(ckpt.find("unlisted.weight") == nullptr);
        std::vector<std::string> names;
        for (const TensorView* t : ckpt.tensors()) {
            names.push_back(t->name);
            check_formula(*t);
        }
        CHECK(names == std::vector<std::string>{"a.weight", "b.bias", "c.weight"});
        CHECK_THAT(ckpt.get("c.weight").file, Catch::EndsWith("model-00002-of-00002.safetensors"));
        CHECK_THAT(ckpt.get("a.weight").file, Catch::EndsWith("model-00001-of-00002.safetensors"));
        CHECK_THAT(error_of([&] { ckpt.get("zzz"); }), Catch::Contains("index.json") && Catch::Contains("zzz"));
    }
    SafetensorsCheckpoint single(fixture("valid.safetensors"));
    CHECK(single.size() == 8);
    CHECK(single.files().size() == 1);
    CHECK_THAT(error_of([&] { SafetensorsCheckpoint c(fixture("configs")); }),
               Catch::Contains("configs") && Catch::Contains("model.safetensors"));
}

TEST_CASE("every broken file gives a GrpoError naming the file and the tensor", "[safetensors]") {
    struct Broken {
        const char* file;
        std::vector<std::string> says;
    };
    const Broken cases[] = {
        {"truncated.safetensors",
         {"model.layers.0.mlp.up_proj.weight", "truncated: expected at least", "re-download or re-export"}},
        {"header_past_eof.safetensors", {"header length 1000000 is larger than the file"}},
        {"bad_json.safetensors", {"header", "column"}},
        {"not_object.safetensors", {"JSON array", "expected an object"}},
        {"shape_mismatch.safetensors",
         {"model.layers.3.mlp.up_proj.weight: shape [4, 8] BF16 needs 64 bytes, the file's offsets give 40"}},
        {"unknown_dtype.safetensors", {"model.embed_tokens.weight", "unknown dtype \"Q4_K\""}},
        {"overlap.safetensors", {"first.weight", "second.weight", "overlap"}},
        {"too_small.safetensors", {"only 5 bytes"}},
        {"empty.safetensors", {"empty"}},
    };
    for (const Broken& c : cases) {
        std::string path = fixture(std::string("broken/") + c.file);
        std::string message = error_of([&] { SafetensorsFile f(path); });
        INFO(message);
        CHECK_THAT(message, Catch::Contains(path));
        for (const std::string& s : c.says) CHECK_THAT(message, Catch::Contains(s));
    }
    // The exact numbers of the truncation message: 8 + header + 80 bytes of data, 10 bytes cut off.
    std::string path = fixture("broken/truncated.safetensors");
    size_t size = std::filesystem::file_size(path);
    CHECK_THAT(error_of([&] { SafetensorsFile f(path); }),
               Catch::Contains("expected at least " + std::to_string(size + 10) + " bytes, file has " + std::to_string(size)));

    std::string message = error_of([&] { SafetensorsCheckpoint c(fixture("broken/missing_in_shard")); });
    INFO(message);
    CHECK_THAT(message, Catch::Contains("model.safetensors.index.json") && Catch::Contains("lost.weight") &&
                            Catch::Contains("model-00002-of-00002.safetensors"));
}

// The byte strings below are the expected outputs in the Rust safetensors library's own tests
// (safetensors/src/tensor.rs: test_serialization, test_serialization_forced_alignement, test_empty).
TEST_CASE("the header matches the safetensors library byte for byte", "[safetensors]") {
    std::vector<size_t> order;
    float six[6] = {0, 1, 2, 3, 4, 5};
    CHECK(safetensors_header({{"attn.0", "F32", {1, 2, 3}, six, 24}}, {}, &order, "t") ==
          "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}");
    CHECK(safetensors_header({{"attn0", "F32", {1, 1, 2, 3}, six, 24}}, {}, &order, "t") ==
          "{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}       ");
    CHECK(safetensors_header({}, {}, &order, "t") == "{}      ");
    CHECK(safetensors_header({}, {{"framework", "pt"}}, &order, "t") == "{\"__metadata__\":{\"framework\":\"pt\"}}     ");

    // Whole file: 8-byte length, header, data.
    std::string path = scratch("exact") + "/attn.safetensors";
    safetensors_write(path, {{"attn.0", "F32", {1, 2, 3}, six, 24}});
    const unsigned char expected[] = {
        64,  0,   0,   0,   0,   0,   0,   0,   123, 34,  97,  116, 116, 110, 46,  48,  34, 58,  123, 34,
        100, 116, 121, 112, 101, 34,  58,  34,  70,  51,  50,  34,  44,  34,  115, 104, 97, 112, 101, 34,
        58,  91,  49,  44,  50,  44,  51,  93,  44,  34,  100, 97,  116, 97,  95,  111, 102, 102, 115, 101,
        116, 115, 34,  58,  91,  48,  44,  50,  52,  93,  125, 125, 0,   0,   0,   0,   0,  0,   128, 63,
        0,   0,   0,   64,  0,   0,   64,  64,  0,   0,   128, 64,  0,   0,   160, 64};
    CHECK(read_file(path) == std::string((const char*)expected, sizeof(expected)));

    // Data order: descending dtype rank (F64 > F32 > BF16 > U8), then name.
    uint8_t buf[64] = {};
    std::vector<TensorToWrite> mixed = {
        {"b", "U8", {1}, buf, 1}, {"z", "BF16", {1}, buf, 2}, {"a", "BF16", {1}, buf, 2},
        {"m", "F32", {1}, buf, 4}, {"d", "F64", {1}, buf, 8}, {"c", "U8", {1}, buf, 1},
    };
    safetensors_header(mixed, {}, &order, "t");
    std::vector<std::string> names;
    for (size_t i : order) names.push_back(mixed[i].name);
    CHECK(names == std::vector<std::string>{"d", "m", "a", "z", "b", "c"});
}

// Tensors with the formula's values, as the C++ writer takes them. The byte buffers never move when
// storage grows (moving a vector keeps its heap block), so the data pointers stay valid.
struct OwnedTensors {
    std::vector<std::vector<uint8_t>> storage;
    std::vector<TensorToWrite> tensors;
    void add(const std::string& name, const std::string& dtype, std::vector<int64_t> shape) {
        std::vector<uint8_t> bytes(shape_numel(shape) * safetensors_dtype_size(dtype));
        for (int64_t i = 0; i < shape_numel(shape); i++) {
            int code = fixture_value_code(name, i);
            uint8_t* p = bytes.data() + i * safetensors_dtype_size(dtype);
            if (dtype == "BF16") { bf16_bits b = f32_to_bf16(fixture_float(name, i)); memcpy(p, &b, 2); }
            else if (dtype == "F32") { float f = fixture_float(name, i); memcpy(p, &f, 4); }
            else if (dtype == "F64") { double d = (code - 125) / 128.0; memcpy(p, &d, 8); }
            else if (dtype == "I64") { int64_t v = code - 125; memcpy(p, &v, 8); }
            else if (dtype == "I32") { int32_t v = code - 125; memcpy(p, &v, 4); }
            else if (dtype == "U8") { *p = (uint8_t)code; }
            else FAIL("no encoder for " + dtype);
        }
        storage.push_back(std::move(bytes));
        tensors.push_back({name, dtype, std::move(shape), storage.back().data(), storage.back().size()});
    }
};

TEST_CASE("C++-written files read back identically here and in Python", "[safetensors]") {
    OwnedTensors w;
    w.add("model.embed_tokens.weight", "BF16", {8, 4});
    w.add("mask", "U8", {5});  // odd size: the library's order still puts it after the wider types
    w.add("lm_head.weight", "BF16", {8, 4});
    w.add("model.norm.weight", "F32", {4});
    w.add("positions", "I64", {3});
    w.add("counts", "I32", {2, 3});
    w.add("scale", "F64", {});
    w.add("nothing", "F32", {0, 4});
    const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "12"}, {"note", "caf\xc3\xa9 \"q\""}};
    std::string path = scratch("roundtrip") + "/model.safetensors";
    safetensors_write(path, w.tensors, metadata);
    CHECK_FALSE(exists(path + ".tmp"));

    SafetensorsFile back(path);
    CHECK(back.metadata() == metadata);
    REQUIRE(back.tensors().size() == w.tensors.size());
    std::string expected_description = "padding_ok 1\norder_ok 1\nstrict_ok 1\n";
    for (const auto& [k, v] : metadata) expected_description += "metadata " + k + "=" + v + "\n";
    std::map<std::string, const TensorToWrite*> by_name;
    for (const TensorToWrite& t : w.tensors) by_name[t.name] = &t;
    for (const auto& [name, t] : by_name) {
        const TensorView& r = back.get(name);
        CHECK(r.dtype == t->dtype);
        CHECK(r.shape == t->shape);
        REQUIRE(r.nbytes == t->nbytes);
        CHECK(memcmp(r.data, t->data, t->nbytes) == 0);
        check_formula(r);
        std::string dims;
        for (size_t d = 0; d < t->shape.size(); d++) dims += (d ? "," : "") + std::to_string(t->shape[d]);
        char fnv[17];
        snprintf(fnv, sizeof(fnv), "%016llx", (unsigned long long)fnv1a64((const uint8_t*)t->data, t->nbytes));
        expected_description += "tensor " + name + " " + t->dtype + " [" + dims + "] " + fnv + "\n";
    }
    CHECK(python_describe(path) == expected_description);
}

TEST_CASE("a Python-written file re-written by C++ keeps every tensor", "[safetensors]") {
    SafetensorsFile original(fixture("valid.safetensors"));
    std::vector<TensorToWrite> copy;
    for (const TensorView& t : original.tensors()) copy.push_back({t.name, t.dtype, t.shape, t.data, t.nbytes});
    std::string path = scratch("rewrite") + "/valid.safetensors";
    safetensors_write(path, copy, original.metadata());
    // The same tensors and metadata; only the layout changes (Python laid them out in insertion order).
    std::string before = python_describe(original.path()), after = python_describe(path);
    CHECK(before.substr(before.find("metadata")) == after.substr(after.find("metadata")));
    CHECK_THAT(after, Catch::StartsWith("padding_ok 1\norder_ok 1\nstrict_ok 1\n"));
}

TEST_CASE("the writer is atomic and refuses bad input", "[safetensors]") {
    std::string dir = scratch("atomic");
    std::string path = dir + "/ckpt.safetensors";
    OwnedTensors first;
    first.add("w", "F32", {2});
    safetensors_write(path, first.tensors);
    std::string first_bytes = read_file(path);

    // Overwriting replaces the file in one step.
    OwnedTensors second;
    second.add("w", "BF16", {3});
    safetensors_write(path, second.tensors);
    CHECK(SafetensorsFile(path).get("w").dtype == "BF16");
    safetensors_write(path, first.tensors);
    CHECK(read_file(path) == first_bytes);

    // Invalid tensors: nothing is written, the message names the tensor.
    uint8_t buf[16] = {};
    const std::string wrong_size = error_of([&] { safetensors_write(path, {{"x.weight", "BF16", {2, 3}, buf, 10}}); });
    CHECK_THAT(wrong_size, Catch::Contains("x.weight") && Catch::Contains("needs 12 bytes"));
    CHECK_THAT(error_of([&] { safetensors_write(path, {{"x.weight", "Q4", {2}, buf, 2}}); }),
               Catch::Contains("x.weight") && Catch::Contains("unknown dtype"));
    CHECK_THAT(error_of([&] { safetensors_write(path, {{"x", "U8", {1}, buf, 1}, {"x", "U8", {1}, buf, 1}}); }),
               Catch::Contains("given twice"));
    CHECK(read_file(path) == first_bytes);
    CHECK_FALSE(exists(path + ".tmp"));

    // A folder that does not exist.
    std::string nowhere = dir + "/no/such/folder/x.safetensors";
    CHECK_THAT(error_of([&] { safetensors_write(nowhere, first.tensors); }),
               Catch::Contains(nowhere) && Catch::Contains("directory exists"));

    // A full disk, simulated by a file-size limit: the temp file goes away and the old checkpoint survives.
    std::vector<uint8_t> big(1 << 20, 7);
    struct rlimit old_limit;
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    auto old_handler = signal(SIGXFSZ, SIG_IGN);  // otherwise exceeding the limit kills the process
    struct rlimit small = old_limit;
    small.rlim_cur = 1 << 16;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
    std::string full_disk = error_of([&] { safetensors_write(path, {{"big", "U8", {1 << 20}, big.data(), big.size()}}); });
    setrlimit(RLIMIT_FSIZE, &old_limit);
    signal(SIGXFSZ, old_handler);
    INFO(full_disk);
    CHECK_THAT(full_disk, Catch::Contains(path + ".tmp") && Catch::Contains("write failed") && Catch::Contains("was not changed"));
    CHECK_FALSE(exists(path + ".tmp"));
    CHECK(read_file(path) == first_bytes);
}
