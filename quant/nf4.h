// nf4.h: NF4 4-bit blockwise quantization with double-quantized absmax, bit-identical to bitsandbytes (codes, absmax bytes, dequantized bf16).
#pragma once
#include <cstdint>
#include <vector>

// Block sizes bitsandbytes uses for QLoRA: 64 weights share one absmax, and 256 absmax values
// share one fp32 scale in the second (nested) quantization.
#define NF4_BLOCK 64
#define NF4_NESTED_BLOCK 256

// One quantized weight matrix [rows, cols] (row-major, flattened), held on the host.
// With double quantization (the QLoRA default) absmax lives in absmax_q (one byte per block, an index
// into nested_code) and is recovered as nested_code[absmax_q[b]] * nested_absmax[b / 256] + nested_offset.
// Without it, absmax_f32 holds the block scales directly (older bitsandbytes checkpoints).
struct NF4Tensor {
    int64_t rows = 0, cols = 0;
    std::vector<uint8_t> packed;        // (rows*cols+1)/2 bytes; element 2j in the HIGH nibble of byte j
    bool double_quant = true;
    std::vector<uint8_t> absmax_q;      // ceil(n/64) bytes, double_quant only
    std::vector<float> nested_absmax;   // ceil(ceil(n/64)/256) fp32, double_quant only
    float nested_offset = 0.0f;         // mean of the fp32 absmax values (nf4_absmax_offset), double_quant only
    std::vector<float> absmax_f32;      // ceil(n/64) fp32, when !double_quant
    float code[16];                     // the NF4 table; stored maps are authoritative when loading
    float nested_code[256];             // bitsandbytes' signed dynamic map

    int64_t numel() const { return rows * cols; }
    int64_t num_blocks() const { return (numel() + NF4_BLOCK - 1) / NF4_BLOCK; }
    int64_t num_nested_blocks() const { return (num_blocks() + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK; }
};

// The same matrix as pointers into storage owned elsewhere: a memory-mapped checkpoint, the model's one
// flat weight buffer, or (with device pointers) GPU memory. Nothing is checked or freed through a view.
struct NF4View {
    int64_t rows = 0, cols = 0;
    const uint8_t* packed = nullptr;
    bool double_quant = true;
    const uint8_t* absmax_q = nullptr;       // double_quant only
    const float* nested_absmax = nullptr;    // double_quant only
    float nested_offset = 0.0f;              // double_quant only
    const float* absmax_f32 = nullptr;       // !double_quant only
    const float* code = nullptr;             // [16]
    const float* nested_code = nullptr;      // [256]
    bool default_code = false;               // code[] equals nf4_default_code (set by nf4_view and the loaders):
                                             // tensors that share it may share a decode kernel's code tables
    bool tiled = false;                      // packed and absmax_q in decode-tile order (nf4_tile), not row-major

    int64_t numel() const { return rows * cols; }
    int64_t num_blocks() const { return (numel() + NF4_BLOCK - 1) / NF4_BLOCK; }
};
// A view of t's arrays (valid while t lives and is not resized).
NF4View nf4_view(const NF4Tensor& t);
// nf4_dequantize and nf4_block_absmax on a view, unchecked: the caller (a loader) has validated the sizes.
void nf4_view_dequantize(const NF4View& t, uint16_t* bf16_out);
float nf4_view_block_absmax(const NF4View& t, int64_t block);

// The 16 NF4 values, index = 4-bit code (bitsandbytes' get_4bit_type("nf4")).
void nf4_default_code(float code[16]);
// The decode-tile order of a [rows, cols] tensor's codes and 8-bit block scales (rows % 16 == 0, cols % 64 == 0):
// for each tile of 16 rows and each 64-block of k, in tile-major order, 512 bytes of codes where lane L = 4 gq + c
// of a warp finds at L * 16 the 8 code bytes of row gq (k c*16 .. c*16+15 of the block) then the 8 of row gq + 8,
// and 16 scale bytes, one per row of the tile. A decode kernel then reads its work as one contiguous stream (see
// kernels/decode_linear.cu). nested_absmax keeps its order (indexed by the row-major block number).
// packed_out: rows * cols / 2 bytes; absmax_q_out: rows * cols / 64 bytes (double quantization only, else nullptr).
bool nf4_tile_ok(int64_t rows, int64_t cols);
void nf4_tile(const NF4View& t, uint8_t* packed_out, uint8_t* absmax_q_out);
// Whether code[16] is exactly nf4_default_code.
bool nf4_is_default_code(const float code[16]);
// bitsandbytes' signed 8-bit dynamic map, the nested code of double quantization (quant/dynamic_map.h).
void nf4_default_nested_code(float nested_code[256]);

// Quantizes a row-major bf16 [rows, cols] matrix exactly as bitsandbytes' quantize_4bit(blocksize=64,
// quant_type="nf4", compress_statistics=double_quant) does on the GPU. Replaces *out, with the default tables.
// Throws GrpoError when rows or cols is not positive.
void nf4_quantize(const uint16_t* bf16_weights, int64_t rows, int64_t cols, bool double_quant, NF4Tensor* out);
// bf16(code[q] * absmax) for each of the rows*cols elements, as dequantize_4bit does. Uses t's own tables:
// a loaded checkpoint's stored maps are authoritative. Throws GrpoError when t's arrays do not fit its shape.
void nf4_dequantize(const NF4Tensor& t, uint16_t* bf16_out);
// The absmax block `block` dequantizes with: nested_code[absmax_q] * nested_absmax, then + nested_offset
// (two fp32 roundings), or absmax_f32 without double quantization. Throws GrpoError like nf4_dequantize,
// and for a block out of range.
float nf4_block_absmax(const NF4Tensor& t, int64_t block);
// Throws GrpoError naming the first array whose length does not fit rows x cols, with expected and found.
void nf4_check(const NF4Tensor& t);

// ---- the steps, exposed for the tests and as the reference the CUDA kernels are checked against ----
// The 4-bit code of a weight already multiplied by 1/absmax: the number of NF4 thresholds strictly below it
// (bitsandbytes' dQuantizeNF4 tree of `x > t`). NaN is above no threshold and gets 0.
uint8_t nf4_code_of(float scaled);
// The index bitsandbytes' dQuantize<0> picks for x in a sorted 256-entry map (binary search + midpoint).
uint8_t dynamic_map_index(const float map[256], float x);
// The offset of double quantization, mean(absmax) in fp32 (see nf4.cpp for how it relates to torch's).
float nf4_absmax_offset(const float* absmax, int64_t count);
// The second level: quantizes absmax - offset in blocks of 256 with t->nested_code, filling t->absmax_q,
// t->nested_absmax and t->nested_offset and setting t->double_quant.
void nf4_double_quantize(const float* absmax, int64_t count, float offset, NF4Tensor* t);
