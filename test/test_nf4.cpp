// test_nf4.cpp: NF4 + double quantization (quant/nf4.cpp) against the PyTorch reference's dumps (dev/ref/nf4_ref.py), bit for bit, plus properties.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "data/json.h"
#include "data/rng.h"
#include "data/text.h"
#include "quant/bf16.h"
#include "quant/nf4.h"

// Written by dev/ref/nf4_ref.py on the GPU machine and committed; read relative to the repository root.
static const std::string NF4_REF_DIR = "test/ref/nf4/";

// One dumped matrix: what torch computed for it, following bitsandbytes' quantize_4bit / dequantize_4bit.
struct Nf4RefCase {
    std::string name;
    int64_t rows = 0, cols = 0;
    uint32_t offset_bits = 0;  // torch's absmax.mean() on the GPU, which bitsandbytes stores
    std::string offset_variants;  // the same mean computed other ways, to explain a mismatch
    std::vector<uint16_t> input, dequant, dequant_plain;
    std::vector<uint8_t> packed, absmax_q;
    std::vector<float> absmax, nested_absmax, absmax_dq;
};

struct Nf4Ref {
    std::vector<uint32_t> code_bits, threshold_bits, map_bits;
    std::vector<Nf4RefCase> cases;
};

static float float_of_bits(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

static std::vector<float> floats_of_bits(const std::vector<uint32_t>& bits) {
    std::vector<float> out;
    for (uint32_t b : bits) out.push_back(float_of_bits(b));
    return out;
}

static uint32_t bits_of_float(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof(bits));
    return bits;
}

static uint32_t json_u32(const JsonValue& object, const std::string& key) {
    const JsonValue* v = object.get(key);
    if (!v || !v->is_number()) throw GrpoError(NF4_REF_DIR + "index.json: missing number " + key);
    return (uint32_t)v->number;
}

static std::vector<uint32_t> json_u32_array(const JsonValue& object, const std::string& key) {
    const JsonValue* v = object.get(key);
    if (!v || !v->is_array()) throw GrpoError(NF4_REF_DIR + "index.json: missing array " + key);
    std::vector<uint32_t> out;
    for (const JsonValue& x : v->array) out.push_back((uint32_t)x.number);
    return out;
}

// One array of a case, copied out of the blob; its byte count must be count * sizeof(T).
template <typename T>
static std::vector<T> ref_array(const JsonValue& c, const std::string& blob, const std::string& key) {
    const JsonValue* arrays = c.get("arrays");
    const JsonValue* a = arrays ? arrays->get(key) : nullptr;
    if (!a) throw GrpoError(NF4_REF_DIR + "index.json: a case has no array " + key);
    uint32_t offset = json_u32(*a, "offset"), bytes = json_u32(*a, "bytes"), count = json_u32(*a, "count");
    if (bytes != count * sizeof(T) || (size_t)offset + bytes > blob.size())
        throw GrpoError(NF4_REF_DIR + "index.json: array " + key + " does not fit the blob or its element size");
    std::vector<T> out(count);
    memcpy(out.data(), blob.data() + offset, bytes);
    return out;
}

static const Nf4Ref& nf4_reference() {
    static const Nf4Ref ref = [] {
        Nf4Ref r;
        JsonValue index = json_parse_file(NF4_REF_DIR + "index.json");
        std::string blob = read_file(NF4_REF_DIR + index.get("blob")->string);
        r.code_bits = json_u32_array(index, "nf4_code_bits");
        r.threshold_bits = json_u32_array(index, "nf4_threshold_bits");
        r.map_bits = json_u32_array(index, "dynamic_map_bits");
        for (const JsonValue& c : index.get("cases")->array) {
            Nf4RefCase rc;
            rc.name = c.get("name")->string;
            rc.rows = json_u32(c, "rows");
            rc.cols = json_u32(c, "cols");
            rc.offset_bits = json_u32(c, "offset_bits");
            for (const char* key : {"offset_f64_bits", "offset_cpu_bits", "offset_sum_times_inv_n_bits"}) {
                char text[96];
                uint32_t bits = json_u32(c, key);
                snprintf(text, sizeof(text), " %s=0x%08x (%.9g)", key, bits, float_of_bits(bits));
                rc.offset_variants += text;
            }
            rc.input = ref_array<uint16_t>(c, blob, "input");
            rc.packed = ref_array<uint8_t>(c, blob, "packed");
            rc.absmax = ref_array<float>(c, blob, "absmax");
            rc.absmax_q = ref_array<uint8_t>(c, blob, "absmax_q");
            rc.nested_absmax = ref_array<float>(c, blob, "nested_absmax");
            rc.absmax_dq = ref_array<float>(c, blob, "absmax_dq");
            rc.dequant = ref_array<uint16_t>(c, blob, "dequant");
            rc.dequant_plain = ref_array<uint16_t>(c, blob, "dequant_plain");
            r.cases.push_back(std::move(rc));
        }
        return r;
    }();
    return ref;
}

static std::string show(uint8_t v) {
    char text[16];
    snprintf(text, sizeof(text), "0x%02x", v);
    return text;
}

static std::string show(uint16_t bf16) {
    char text[48];
    snprintf(text, sizeof(text), "0x%04x (%.6g)", bf16, bf16_to_f32(bf16));
    return text;
}

static std::string show(float v) {
    char text[48];
    snprintf(text, sizeof(text), "0x%08x (%.9g)", bits_of_float(v), v);
    return text;
}

// Bit-for-bit equality, reporting how many elements differ and the first one.
template <typename T>
static void require_identical(const std::string& what, const std::vector<T>& got, const std::vector<T>& expected) {
    INFO(what << ": got " << got.size() << " entries, expected " << expected.size());
    REQUIRE(got.size() == expected.size());
    size_t mismatches = 0, first = 0;
    for (size_t i = 0; i < expected.size(); i++)
        if (memcmp(&got[i], &expected[i], sizeof(T)) != 0 && mismatches++ == 0) first = i;
    INFO(what << ": " << mismatches << " of " << expected.size() << " differ"
              << (mismatches ? "; first at [" + std::to_string(first) + "]: got " + show(got[first]) +
                                   ", expected " + show(expected[first])
                             : std::string()));
    REQUIRE(mismatches == 0);
}

static std::vector<uint16_t> dequantized(const NF4Tensor& t) {
    std::vector<uint16_t> out(t.numel());
    nf4_dequantize(t, out.data());
    return out;
}

static std::vector<float> block_absmaxes(const NF4Tensor& t) {
    std::vector<float> out;
    for (int64_t b = 0; b < t.num_blocks(); b++) out.push_back(nf4_block_absmax(t, b));
    return out;
}

static NF4Tensor quantized(const std::vector<uint16_t>& w, int64_t rows, int64_t cols, bool double_quant) {
    NF4Tensor t;
    nf4_quantize(w.data(), rows, cols, double_quant, &t);
    return t;
}

TEST_CASE("nf4: the code table, thresholds and dynamic map equal the reference's", "[nf4]") {
    const Nf4Ref& ref = nf4_reference();
    float code[16], map[256];
    nf4_default_code(code);
    nf4_default_nested_code(map);
    require_identical("NF4 code table", std::vector<float>(code, code + 16), floats_of_bits(ref.code_bits));
    require_identical("dynamic map (quant/dynamic_map.h vs torch)", std::vector<float>(map, map + 256),
                      floats_of_bits(ref.map_bits));

    // "strictly below": a value equal to threshold i still gets code i, the next float up gets i + 1.
    // Passing for every threshold also pins our thresholds to the reference's exact float bits.
    REQUIRE(ref.threshold_bits.size() == 15);
    for (int i = 0; i < 15; i++) {
        float threshold = float_of_bits(ref.threshold_bits[i]);
        INFO("threshold " << i << " = " << show(threshold));
        REQUIRE(nf4_code_of(threshold) == i);
        REQUIRE(nf4_code_of(std::nextafter(threshold, INFINITY)) == i + 1);
    }
    REQUIRE(nf4_code_of(NAN) == 0);
}

TEST_CASE("nf4: quantize and dequantize are bit-identical to the PyTorch reference dumps", "[nf4]") {
    const Nf4Ref& ref = nf4_reference();
    REQUIRE(ref.cases.size() >= 7);
    for (const Nf4RefCase& rc : ref.cases) {
        INFO("case " << rc.name << " [" << rc.rows << ", " << rc.cols << "]");
        REQUIRE(rc.input.size() == (size_t)(rc.rows * rc.cols));

        // double quantization, the QLoRA default
        NF4Tensor t = quantized(rc.input, rc.rows, rc.cols, true);
        require_identical("packed codes", t.packed, rc.packed);
        INFO("torch's offset " << show(float_of_bits(rc.offset_bits)) << ";" << rc.offset_variants);
        require_identical("offset (mean of absmax)", std::vector<float>{t.nested_offset},
                          std::vector<float>{float_of_bits(rc.offset_bits)});
        require_identical("absmax_q", t.absmax_q, rc.absmax_q);
        require_identical("nested_absmax", t.nested_absmax, rc.nested_absmax);
        require_identical("dequantized absmax", block_absmaxes(t), rc.absmax_dq);
        require_identical("dequantized bf16", dequantized(t), rc.dequant);

        // the second level alone, from the reference's absmax and offset
        NF4Tensor nested;
        nf4_default_nested_code(nested.nested_code);
        nf4_double_quantize(rc.absmax.data(), (int64_t)rc.absmax.size(), float_of_bits(rc.offset_bits), &nested);
        require_identical("absmax_q from the reference's absmax", nested.absmax_q, rc.absmax_q);
        require_identical("nested_absmax from the reference's absmax", nested.nested_absmax, rc.nested_absmax);

        // dequantizing the reference's own quantized state, as when loading a checkpoint
        NF4Tensor loaded;
        loaded.rows = rc.rows;
        loaded.cols = rc.cols;
        loaded.packed = rc.packed;
        loaded.absmax_q = rc.absmax_q;
        loaded.nested_absmax = rc.nested_absmax;
        loaded.nested_offset = float_of_bits(rc.offset_bits);
        memcpy(loaded.code, ref.code_bits.data(), sizeof(loaded.code));
        memcpy(loaded.nested_code, ref.map_bits.data(), sizeof(loaded.nested_code));
        require_identical("dequantized bf16 of the reference's state", dequantized(loaded), rc.dequant);

        // without double quantization
        NF4Tensor plain = quantized(rc.input, rc.rows, rc.cols, false);
        require_identical("absmax (fp32)", plain.absmax_f32, rc.absmax);
        require_identical("packed codes without double quantization", plain.packed, rc.packed);
        require_identical("dequantized bf16 without double quantization", dequantized(plain), rc.dequant_plain);
    }
}

TEST_CASE("nf4: quantize -> dequantize -> quantize is stable", "[nf4]") {
    int64_t blocks_checked_with_double_quant = 0;
    for (const Nf4RefCase& rc : nf4_reference().cases) {
        INFO("case " << rc.name);
        // Without double quantization the block maximum dequantizes to itself (code +-1), so the second
        // round reproduces everything bit for bit.
        NF4Tensor first = quantized(rc.input, rc.rows, rc.cols, false);
        std::vector<uint16_t> once = dequantized(first);
        NF4Tensor second = quantized(once, rc.rows, rc.cols, false);
        require_identical("absmax after a round trip", second.absmax_f32, first.absmax_f32);
        require_identical("codes after a round trip", second.packed, first.packed);
        require_identical("dequantized after a round trip", dequantized(second), once);

        // With it, a block's codes survive as long as its dequantized absmax stays positive (a tiny block
        // next to large ones can come back <= 0, which flips or zeroes it: bitsandbytes does the same).
        NF4Tensor dq_first = quantized(rc.input, rc.rows, rc.cols, true);
        NF4Tensor dq_second = quantized(dequantized(dq_first), rc.rows, rc.cols, true);
        std::vector<uint8_t> codes_first, codes_second;  // the bytes of the blocks that qualify
        for (int64_t b = 0; b < dq_first.num_blocks(); b++) {
            if (!(nf4_block_absmax(dq_first, b) > 0.0f)) continue;
            blocks_checked_with_double_quant++;
            int64_t begin = b * NF4_BLOCK / 2, end = std::min<int64_t>(begin + NF4_BLOCK / 2, dq_first.packed.size());
            codes_first.insert(codes_first.end(), dq_first.packed.begin() + begin, dq_first.packed.begin() + end);
            codes_second.insert(codes_second.end(), dq_second.packed.begin() + begin, dq_second.packed.begin() + end);
        }
        require_identical("codes after a double-quantized round trip (blocks with absmax > 0)", codes_second,
                          codes_first);
    }
    REQUIRE(blocks_checked_with_double_quant > 0);
}

TEST_CASE("nf4: an all-zero block stores code 0 (-1.0), -0.0 once dequantized without double quant", "[nf4]") {
    // Block 0 all zeros, block 1 a ramp. With double quantization the block's absmax 0 comes back as
    // nested_code[q] * absmax2 + offset, not exactly 0 in general (in the nested_600 dump it comes back
    // slightly negative, so the zeros dequantize to small positive values, as in bitsandbytes).
    std::vector<uint16_t> w(2 * NF4_BLOCK, 0);
    for (int i = 0; i < NF4_BLOCK; i++) w[NF4_BLOCK + i] = f32_to_bf16((float)(i - 20) / 16.0f);
    for (bool double_quant : {false, true}) {
        INFO("double_quant " << double_quant);
        NF4Tensor t = quantized(w, 2, NF4_BLOCK, double_quant);
        for (int j = 0; j < NF4_BLOCK / 2; j++) REQUIRE(t.packed[j] == 0x00);
        // 1/0 = inf and 0 * inf = NaN, above no threshold: code 0, and -1.0 * absmax
        std::vector<uint16_t> out = dequantized(t);
        uint16_t expected = f32_to_bf16(-1.0f * nf4_block_absmax(t, 0));
        for (int i = 0; i < NF4_BLOCK; i++) REQUIRE(out[i] == expected);
        if (!double_quant) REQUIRE(expected == 0x8000);  // absmax 0: -0.0
    }
}

TEST_CASE("nf4: an odd element count quantizes the padding zero into the last low nibble", "[nf4]") {
    // absmax 1.0, so the scaled values are the weights themselves
    std::vector<uint16_t> w = {f32_to_bf16(0.5f), f32_to_bf16(-1.0f), f32_to_bf16(0.25f)};
    NF4Tensor t = quantized(w, 1, 3, false);
    REQUIRE(t.packed.size() == 2);
    REQUIRE((t.packed[1] >> 4) == nf4_code_of(0.25f));
    REQUIRE((t.packed[1] & 0x0F) == nf4_code_of(0.0f));
    REQUIRE(t.packed[0] == (nf4_code_of(0.5f) << 4 | nf4_code_of(-1.0f)));
}

TEST_CASE("nf4: each dynamic map entry searches to its own index; NaN to 0", "[nf4]") {
    float map[256];
    nf4_default_nested_code(map);
    for (int i = 0; i < 256; i++) {
        INFO("entry " << i << " = " << show(map[i]));
        REQUIRE(dynamic_map_index(map, map[i]) == i);
    }
    REQUIRE(dynamic_map_index(map, NAN) == 0);
}

TEST_CASE("nf4: malformed tensors and shapes throw GrpoError with what was expected and found", "[nf4]") {
    std::vector<uint16_t> w(3 * 100);
    for (size_t i = 0; i < w.size(); i++) w[i] = f32_to_bf16(std::sin((float)i));
    NF4Tensor good = quantized(w, 3, 100, true);  // 300 elements: 150 bytes, 5 blocks, 1 nested block
    std::vector<uint16_t> out(w.size());
    REQUIRE_NOTHROW(nf4_dequantize(good, out.data()));

    NF4Tensor t = good;
    t.packed.pop_back();
    REQUIRE_THROWS_AS(nf4_dequantize(t, out.data()), GrpoError);
    REQUIRE_THROWS_WITH(nf4_dequantize(t, out.data()), Catch::Contains("packed has 149 entries, expected 150"));

    t = good;
    t.absmax_q.push_back(0);
    REQUIRE_THROWS_WITH(nf4_dequantize(t, out.data()), Catch::Contains("absmax_q has 6 entries, expected 5"));
    REQUIRE_THROWS_AS(nf4_block_absmax(t, 0), GrpoError);

    t = good;
    t.nested_absmax.clear();
    REQUIRE_THROWS_WITH(nf4_dequantize(t, out.data()), Catch::Contains("nested_absmax has 0 entries, expected 1"));

    NF4Tensor plain = quantized(w, 3, 100, false);
    plain.absmax_f32.resize(4);
    REQUIRE_THROWS_WITH(nf4_dequantize(plain, out.data()), Catch::Contains("absmax_f32 has 4 entries, expected 5"));

    t = good;
    t.cols = 101;  // the shape no longer fits the arrays
    REQUIRE_THROWS_AS(nf4_dequantize(t, out.data()), GrpoError);
    REQUIRE_THROWS_WITH(nf4_block_absmax(good, 5), Catch::Contains("block 5 is outside the 5 blocks"));
    REQUIRE_THROWS_AS(nf4_block_absmax(good, -1), GrpoError);
    REQUIRE_THROWS_AS(nf4_quantize(w.data(), 0, 100, true, &t), GrpoError);
    REQUIRE_THROWS_AS(nf4_quantize(w.data(), 3, -1, true, &t), GrpoError);
}

TEST_CASE("nf4: the decode-tile order puts every code and block scale where a decode warp's lane reads it", "[nf4]") {
    Rng rng(77);
    CHECK(nf4_tile_ok(16, 64));
    CHECK(nf4_tile_ok(512, 3584));
    CHECK_FALSE(nf4_tile_ok(8, 64));
    CHECK_FALSE(nf4_tile_ok(16, 96));
    CHECK_FALSE(nf4_tile_ok(0, 64));
    const int64_t rows = 48, cols = 192, nkb = cols / NF4_BLOCK;
    std::vector<bf16_bits> w_bf16((size_t)(rows * cols));
    for (bf16_bits& v : w_bf16) v = f32_to_bf16(2.0f * rng.next_float() - 1.0f);
    NF4Tensor t;
    nf4_quantize(w_bf16.data(), rows, cols, true, &t);
    std::vector<uint8_t> codes(t.packed.size()), absmax(t.absmax_q.size());
    nf4_tile(nf4_view(t), codes.data(), absmax.data());
    // element (row, k): unit (row / 16, k / 64); lane 4 * (row % 8) + (k % 64) / 16; its row half (row % 16) / 8
    // picks the second 8 bytes; within them byte (k % 16) / 2, the high nibble for even k
    for (int64_t row = 0; row < rows; row++)
        for (int64_t k = 0; k < cols; k++) {
            const int64_t unit = row / 16 * nkb + k / NF4_BLOCK;
            const int64_t lane = 4 * (row % 8) + (k % NF4_BLOCK) / 16, half = (row % 16) / 8;
            const uint8_t byte = codes[unit * 512 + lane * 16 + half * 8 + (k % 16) / 2];
            const unsigned got = k % 2 == 0 ? byte >> 4 : byte & 15u;
            const uint8_t src = t.packed[(row * cols + k) / 2];
            const unsigned want = k % 2 == 0 ? src >> 4 : src & 15u;
            if (got != want) FAIL("code of row " << row << ", k " << k);
        }
    for (int64_t row = 0; row < rows; row++)
        for (int64_t kb = 0; kb < nkb; kb++) REQUIRE(absmax[(row / 16 * nkb + kb) * 16 + row % 16] == t.absmax_q[row * nkb + kb]);
    // a permutation: the same multiset of bytes
    std::vector<uint8_t> a = codes, b = t.packed;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    CHECK(a == b);
}
