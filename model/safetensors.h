// safetensors.h: reading (memory-mapped, fully validated) and writing HF safetensors files, single or sharded.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model/mmap_file.h"

// A file is: 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {str: str}, name: {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...}
// then the data section; offsets are relative to the end of the header.

// Bytes per element of a safetensors dtype name ("BF16" -> 2), or 0 when the name is not one we know.
// Sub-byte types (F4, F6_*) are deliberately unknown: their byte length is not numel * itemsize.
size_t safetensors_dtype_size(const std::string& dtype);
// The known dtype names, comma-separated, for error messages.
std::string safetensors_known_dtypes();
// "[18944, 3584]"
std::string shape_to_string(const std::vector<int64_t>& shape);
// Product of the dimensions (1 for a scalar's empty shape).
int64_t shape_numel(const std::vector<int64_t>& shape);

// One tensor of a mapped file: no copy, data points into the map.
struct TensorView {
    std::string name;
    std::string dtype;           // as in the header: "BF16", "F32", "I64", ...
    std::vector<int64_t> shape;  // linear weights are [out_features, in_features]
    const uint8_t* data = nullptr;
    size_t nbytes = 0;
    size_t file_offset = 0;      // where data starts in the file, for messages and direct reads
    std::string file;            // the file that holds it, for messages

    int64_t numel() const { return shape_numel(shape); }
};

// An open, validated safetensors file. Everything in the header is checked at construction (dtype known,
// byte length == numel * itemsize, offsets inside the data section, no overlaps), so a view handed out
// is always safe to read. Throws GrpoError naming the file, the tensor and what to do.
class SafetensorsFile {
public:
    explicit SafetensorsFile(const std::string& path);
    SafetensorsFile(SafetensorsFile&&) = default;
    SafetensorsFile& operator=(SafetensorsFile&&) = default;

    const std::string& path() const { return map_.path(); }
    // In data order (increasing offset).
    const std::vector<TensorView>& tensors() const { return tensors_; }
    // nullptr when absent.
    const TensorView* find(const std::string& name) const;
    // Throws GrpoError naming the file and the tensor when absent.
    const TensorView& get(const std::string& name) const;
    // The "__metadata__" map (empty when the header has none).
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    size_t header_length() const { return header_length_; }

private:
    MappedFile map_;
    size_t header_length_ = 0;
    std::vector<TensorView> tensors_;
    std::unordered_map<std::string, size_t> index_;
    std::map<std::string, std::string> metadata_;
};

// One name -> tensor view over a whole checkpoint: a single .safetensors file, or every shard that a
// model.safetensors.index.json ({"metadata": .., "weight_map": {tensor: shard file}}) lists. Tensors a shard
// holds but the index does not list are left out, as transformers does.
class SafetensorsCheckpoint {
public:
    // path: a .safetensors file, a *.index.json, or a directory holding model.safetensors.index.json
    // or model.safetensors (the index wins when both are there, as in transformers).
    explicit SafetensorsCheckpoint(const std::string& path);

    // What was opened: the single file or the index.
    const std::string& path() const { return path_; }
    const TensorView* find(const std::string& name) const;
    const TensorView& get(const std::string& name) const;
    // Every tensor, sorted by name.
    std::vector<const TensorView*> tensors() const;
    size_t size() const { return by_name_.size(); }
    const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

private:
    void open_index(const std::string& index_path);
    std::string path_;
    std::vector<std::unique_ptr<SafetensorsFile>> files_;  // unique_ptr: by_name_ points into them
    std::map<std::string, const TensorView*> by_name_;
};

// One tensor to write; data must hold exactly numel(shape) * itemsize(dtype) bytes.
struct TensorToWrite {
    std::string name;
    std::string dtype;
    std::vector<int64_t> shape;
    const void* data = nullptr;
    size_t nbytes = 0;
};

// The header exactly as the Rust safetensors library (what Python's save_file calls) serializes it:
// compact JSON, "__metadata__" first, tensors sorted by descending dtype alignment and then by name,
// padded with spaces to a multiple of 8 bytes. Fills *data_order with the tensors' indices in data order.
// Metadata keys are sorted by name (the library iterates a HashMap there, so its order is unspecified).
std::string safetensors_header(const std::vector<TensorToWrite>& tensors,
                               const std::map<std::string, std::string>& metadata,
                               std::vector<size_t>* data_order, const std::string& where);

// Writes a safetensors file atomically: everything goes to PATH.tmp, which is renamed over PATH only when
// every write succeeded, so a crash or a full disk never leaves a half-written checkpoint under PATH.
// Throws GrpoError (and removes PATH.tmp) on invalid tensors or any I/O failure.
void safetensors_write(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
