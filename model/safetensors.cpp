// safetensors.cpp: the safetensors reader (validated views into a memory map), the sharded index and the atomic writer.
#include "model/safetensors.h"

#include <algorithm>
#include <cmath>
#include <sys/stat.h>

#include "data/atomic_file.h"
#include "data/json.h"
#include "data/text.h"

// The Rust safetensors library's Dtype enum, in its declaration order: the writer sorts tensors by this
// order, descending ("descending alignment"), then by name. F4/F6 are sub-byte and left out on purpose.
struct DtypeInfo {
    const char* name;
    size_t size;
};
static const DtypeInfo kDtypes[] = {
    {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1}, {"I16", 2},
    {"U16", 2},  {"F16", 2}, {"BF16", 2}, {"I32", 4},    {"U32", 4},     {"F32", 4},     {"C64", 8},
    {"F64", 8},  {"I64", 8}, {"U64", 8},
};
static const int kNumDtypes = (int)(sizeof(kDtypes) / sizeof(kDtypes[0]));

// Position in kDtypes, or -1.
static int dtype_rank(const std::string& dtype) {
    for (int i = 0; i < kNumDtypes; i++) if (dtype == kDtypes[i].name) return i;
    return -1;
}

size_t safetensors_dtype_size(const std::string& dtype) {
    int rank = dtype_rank(dtype);
    return rank < 0 ? 0 : kDtypes[rank].size;
}

std::string safetensors_known_dtypes() {
    std::string out;
    for (int i = 0; i < kNumDtypes; i++) out += std::string(i ? ", " : "") + kDtypes[i].name;
    return out;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
    std::string out = "[";
    for (size_t i = 0; i < shape.size(); i++) out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
}

int64_t shape_numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

// ---- reading ----------------------------------------------------------------------------------

// The largest header the Rust library accepts; anything bigger is corruption, not a model.
static const uint64_t kMaxHeaderLength = 100000000;
// JSON numbers are doubles: integers above 2^53 are not exact, and no real tensor is that big.
static const double kMaxExactInteger = 9007199254740992.0;

static const char* kRedownload = "re-download or re-export the file";

// A JSON number that must be a non-negative integer (a dimension or an offset).
static bool json_to_count(const JsonValue& v, uint64_t* out) {
    if (!v.is_number() || v.number < 0 || v.number > kMaxExactInteger || v.number != std::floor(v.number)) return false;
    *out = (uint64_t)v.number;
    return true;
}

// Overflow-checked numel * itemsize; false when the product does not fit (a corrupt shape).
static bool checked_nbytes(const std::vector<int64_t>& shape, size_t itemsize, uint64_t* out) {
    unsigned __int128 n = itemsize;
    for (int64_t d : shape) {
        n *= (uint64_t)d;
        if (n > (unsigned __int128)UINT64_MAX) return false;
    }
    *out = (uint64_t)n;
    return true;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : map_(path) {
    const uint8_t* bytes = map_.data();
    const uint64_t file_size = map_.size();
    if (file_size < 8) {
        throw GrpoError(path + ": only " + std::to_string(file_size) +
                        " bytes; a safetensors file starts with an 8-byte header length. Truncated or not safetensors: " +
                        kRedownload);
    }
    uint64_t N = 0;
    for (int i = 7; i >= 0; i--) N = (N << 8) | bytes[i];  // little-endian whatever the host
    if (N > file_size - 8) {
        throw GrpoError(path + ": header length " + std::to_string(N) + " is larger than the file (" +
                        std::to_string(file_size) + " bytes, so at most " + std::to_string(file_size - 8) +
                        "). Truncated or not a safetensors file: " + kRedownload);
    }
    if (N > kMaxHeaderLength) {
        throw GrpoError(path + ": header length " + std::to_string(N) + " exceeds the " +
                        std::to_string(kMaxHeaderLength) + "-byte limit of safetensors; the file is corrupt: " + kRedownload);
    }
    header_length_ = (size_t)N;
    const uint64_t data_start = 8 + N;
    const uint64_t data_size = file_size - data_start;

    JsonValue header;
    try {
        header = json_parse(std::string((const char*)bytes + 8, (size_t)N), path + ": header");
    } catch (const GrpoError& e) {
        throw GrpoError(std::string(e.what()) + "; the header is not valid JSON: " + kRedownload);
    }
    if (!header.is_object()) {
        throw GrpoError(path + ": header is a JSON " + std::string(header.type_name()) +
                        ", expected an object {tensor name: {dtype, shape, data_offsets}}: " + kRedownload);
    }

    for (const auto& [name, info] : header.object) {
        if (name == "__metadata__") {
            if (!info.is_object()) throw GrpoError(path + ": __metadata__ must be an object of strings, got " + info.type_name());
            for (const auto& [key, value] : info.object) {
                if (!value.is_string()) {
                    throw GrpoError(path + ": __metadata__[\"" + key + "\"] must be a string, got " + value.type_name());
                }
                metadata_[key] = value.string;
            }
            continue;
        }
        const std::string where = path + ": tensor " + name;
        if (index_.count(name)) throw GrpoError(where + ": listed twice in the header: " + kRedownload);
        if (!info.is_object()) throw GrpoError(where + ": expected an object {dtype, shape, data_offsets}, got " + info.type_name());

        TensorView t;
        t.name = name;
        t.file = path;
        const JsonValue* dtype = info.get("dtype");
        if (!dtype || !dtype->is_string()) throw GrpoError(where + ": missing \"dtype\" string");
        t.dtype = dtype->string;
        size_t itemsize = safetensors_dtype_size(t.dtype);
        if (itemsize == 0) {
            throw GrpoError(where + ": unknown dtype \"" + t.dtype + "\" (this reader knows " + safetensors_known_dtypes() +
                            "); re-export the checkpoint in bf16, fp16 or fp32");
        }
        const JsonValue* shape = info.get("shape");
        if (!shape || !shape->is_array()) throw GrpoError(where + ": missing \"shape\" array");
        for (const JsonValue& d : shape->array) {
            uint64_t dim;
            if (!json_to_count(d, &dim)) throw GrpoError(where + ": shape entries must be non-negative integers: " + kRedownload);
            t.shape.push_back((int64_t)dim);
        }
        const JsonValue* offsets = info.get("data_offsets");
        uint64_t begin, end;
        if (!offsets || !offsets->is_array() || offsets->array.size() != 2 || !json_to_count(offsets->array[0], &begin) ||
            !json_to_count(offsets->array[1], &end) || end < begin) {
            throw GrpoError(where + ": \"data_offsets\" must be [begin, end] with 0 <= begin <= end: " + kRedownload);
        }
        uint64_t needed = 0;
        bool fits = checked_nbytes(t.shape, itemsize, &needed);
        if (!fits || needed != end - begin) {
            throw GrpoError(where + ": shape " + shape_to_string(t.shape) + " " + t.dtype + " needs " +
                            (fits ? std::to_string(needed) : std::string("more than 2^64")) + " bytes, the file's offsets give " +
                            std::to_string(end - begin) + ": " + kRedownload);
        }
        if (end > data_size) {
            throw GrpoError(where + ": truncated: expected at least " + std::to_string(data_start + end) +
                            " bytes, file has " + std::to_string(file_size) + " — " + kRedownload);
        }
        t.file_offset = (size_t)(data_start + begin);
        t.data = bytes + t.file_offset;
        t.nbytes = (size_t)(end - begin);
        index_[name] = tensors_.size();
        tensors_.push_back(std::move(t));
    }

    // Gaps are harmless (the data is never read), overlaps mean two tensors share bytes: a corrupt header.
    std::stable_sort(tensors_.begin(), tensors_.end(),
                     [](const TensorView& a, const TensorView& b) { return a.file_offset < b.file_offset; });
    for (size_t i = 0; i < tensors_.size(); i++) {
        index_[tensors_[i].name] = i;
        if (i == 0) continue;
        const TensorView& prev = tensors_[i - 1];
        const TensorView& cur = tensors_[i];
        if (cur.nbytes > 0 && prev.nbytes > 0 && prev.file_offset + prev.nbytes > cur.file_offset) {
            throw GrpoError(path + ": tensors " + prev.name + " (data_offsets [" + std::to_string(prev.file_offset - data_start) +
                            ", " + std::to_string(prev.file_offset - data_start + prev.nbytes) + ")) and " + cur.name +
                            " (data_offsets [" + std::to_string(cur.file_offset - data_start) + ", " +
                            std::to_string(cur.file_offset - data_start + cur.nbytes) + ")) overlap: " + kRedownload);
        }
    }
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& SafetensorsFile::get(const std::string& name) const {
    const TensorView* t = find(name);
    if (!t) throw GrpoError(path() + ": no tensor named " + name + "; check the checkpoint matches the model config");
    return *t;
}

// ---- checkpoints: one file or an index of shards ------------------------------------------------

static bool is_directory(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

static bool file_exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0;
}

static bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

static std::string parent_directory(const std::string& path) {
    size_t slash = path.find_last_of('/');
    return slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& path) {
    std::string target = path;
    if (is_directory(path)) {
        std::string dir = ends_with(path, "/") ? path : path + "/";
        if (file_exists(dir + "model.safetensors.index.json")) target = dir + "model.safetensors.index.json";
        else if (file_exists(dir + "model.safetensors")) target = dir + "model.safetensors";
        else {
            throw GrpoError(path + ": holds neither model.safetensors.index.json nor model.safetensors; "
                            "point at the downloaded HF model directory");
        }
    }
    path_ = target;
    if (ends_with(target, ".json")) {
        open_index(target);
        return;
    }
    files_.push_back(std::make_unique<SafetensorsFile>(target));
    for (const TensorView& t : files_.back()->tensors()) by_name_[t.name] = &t;
}

void SafetensorsCheckpoint::open_index(const std::string& index_path) {
    JsonValue index = json_parse_file(index_path);
    const JsonValue* weight_map = index.is_object() ? index.get("weight_map") : nullptr;
    if (!weight_map || !weight_map->is_object() || weight_map->object.empty()) {
        throw GrpoError(index_path + ": expected {\"weight_map\": {tensor name: shard file, ...}} with at least one entry; "
                        "re-download the index");
    }
    const std::string dir = parent_directory(index_path);
    std::map<std::string, SafetensorsFile*> shard_by_file;
    for (const auto& [name, file] : weight_map->object) {
        if (!file.is_string() || file.string.empty()) {
            throw GrpoError(index_path + ": weight_map[\"" + name + "\"] must be a shard file name, got " + file.type_name());
        }
        SafetensorsFile*& shard = shard_by_file[file.string];
        if (!shard) {
            try {
                files_.push_back(std::make_unique<SafetensorsFile>(dir + "/" + file.string));
            } catch (const GrpoError& e) {
                throw GrpoError(index_path + ": shard " + file.string + " (holding " + name + "): " + e.what());
            }
            shard = files_.back().get();
        }
        const TensorView* t = shard->find(name);
        if (!t) {
            throw GrpoError(index_path + " lists tensor " + name + " in shard " + shard->path() +
                            ", but that shard has no such tensor; the download is incomplete or mixes two versions: re-download");
        }
        by_name_[name] = t;
    }
}

const TensorView* SafetensorsCheckpoint::find(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
}

const TensorView& SafetensorsCheckpoint::get(const std::string& name) const {
    const TensorView* t = find(name);
    if (!t) throw GrpoError(path_ + ": no tensor named " + name + "; check the checkpoint matches the model config");
    return *t;
}

std::vector<const TensorView*> SafetensorsCheckpoint::tensors() const {
    std::vector<const TensorView*> out;
    out.reserve(by_name_.size());
    for (const auto& entry : by_name_) out.push_back(entry.second);
    return out;
}

// ---- writing ----------------------------------------------------------------------------------

std::string safetensors_header(const std::vector<TensorToWrite>& tensors,
                               const std::map<std::string, std::string>& metadata,
                               std::vector<size_t>* data_order, const std::string& where) {
    std::map<std::string, int> seen;
    for (const TensorToWrite& t : tensors) {
        const std::string at = where + ": tensor " + t.name;
        if (t.name.empty() || t.name == "__metadata__") throw GrpoError(at + ": not a valid tensor name");
        if (seen[t.name]++) throw GrpoError(at + ": given twice; tensor names must be unique");
        size_t itemsize = safetensors_dtype_size(t.dtype);
        if (itemsize == 0) throw GrpoError(at + ": unknown dtype \"" + t.dtype + "\"; use one of " + safetensors_known_dtypes());
        for (int64_t d : t.shape) if (d < 0) throw GrpoError(at + ": negative dimension in shape " + shape_to_string(t.shape));
        uint64_t needed = 0;
        if (!checked_nbytes(t.shape, itemsize, &needed) || needed != t.nbytes) {
            throw GrpoError(at + ": shape " + shape_to_string(t.shape) + " " + t.dtype + " needs " + std::to_string(needed) +
                            " bytes, " + std::to_string(t.nbytes) + " were given (a bug in the caller)");
        }
        if (t.nbytes > 0 && !t.data) throw GrpoError(at + ": no data pointer");
    }

    data_order->resize(tensors.size());
    for (size_t i = 0; i < tensors.size(); i++) (*data_order)[i] = i;
    std::stable_sort(data_order->begin(), data_order->end(), [&](size_t a, size_t b) {
        int ra = dtype_rank(tensors[a].dtype), rb = dtype_rank(tensors[b].dtype);
        if (ra != rb) return ra > rb;
        return tensors[a].name < tensors[b].name;  // byte-wise, like Rust's String ordering
    });

    std::string header = "{";
    if (!metadata.empty()) {
        header += "\"__metadata__\":{";
        bool first = true;
        for (const auto& [key, value] : metadata) {
            header += (first ? "" : ",") + json_quote(key) + ":" + json_quote(value);
            first = false;
        }
        header += "}";
    }
    uint64_t offset = 0;
    for (size_t i : *data_order) {
        const TensorToWrite& t = tensors[i];
        if (header.size() > 1) header += ",";
        header += json_quote(t.name) + ":{\"dtype\":\"" + t.dtype + "\",\"shape\":[";
        for (size_t d = 0; d < t.shape.size(); d++) header += (d ? "," : "") + std::to_string(t.shape[d]);
        header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.nbytes) + "]}";
        offset += t.nbytes;
    }
    header += "}";
    // Spaces up to a multiple of 8, as the library does, so the data section starts 8-byte aligned.
    header.append((8 - header.size() % 8) % 8, ' ');
    return header;
}

void safetensors_write(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    std::vector<size_t> data_order;
    const std::string header = safetensors_header(tensors, metadata, &data_order, path);
    uint8_t length_bytes[8];
    uint64_t N = header.size();
    for (int i = 0; i < 8; i++) length_bytes[i] = (uint8_t)(N >> (8 * i));
    AtomicFile out(path);
    out.write(length_bytes, 8);
    out.write(header);
    for (size_t i : data_order) out.write(tensors[i].data, tensors[i].nbytes);
    out.commit();
}
