// mmap_file.h: a read-only memory map of a whole file, the one way every loader (weights, tokenizer, data) reads big files.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

// Maps the whole file at construction and unmaps it at destruction. The mapping's address never changes,
// so pointers into data() stay valid when the object is moved. Throws GrpoError naming the path when the
// file is missing, unreadable, not a regular file or empty (an empty weight or data file is always a
// failed download or export, never something to load).
class MappedFile {
public:
    MappedFile() = default;
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(MappedFile&& other) noexcept;
    MappedFile& operator=(MappedFile&& other) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }

private:
    void unmap();
    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
};
