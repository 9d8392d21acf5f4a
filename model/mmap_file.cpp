// mmap_file.cpp: MappedFile on POSIX mmap.
#include "model/mmap_file.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>

#include "data/text.h"

MappedFile::MappedFile(const std::string& path) : path_(path) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        throw GrpoError(path + ": cannot open: " + strerror(errno) + "; check the path (and that the download finished)");
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        throw GrpoError(path + ": cannot stat: " + strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        throw GrpoError(path + ": not a regular file; pass the path of the file itself");
    }
    if (st.st_size == 0) {
        close(fd);
        throw GrpoError(path + ": file is empty (0 bytes); re-download or re-export it");
    }
    void* p = mmap(nullptr, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);  // the mapping keeps its own reference to the file
    if (p == MAP_FAILED) throw GrpoError(path + ": cannot mmap: " + strerror(err));
    data_ = (const uint8_t*)p;
    size_ = (size_t)st.st_size;
}

MappedFile::~MappedFile() { unmap(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)), data_(other.data_), size_(other.size_) {
    other.data_ = nullptr;
    other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
    if (this != &other) {
        unmap();
        path_ = std::move(other.path_);
        data_ = other.data_;
        size_ = other.size_;
        other.data_ = nullptr;
        other.size_ = 0;
    }
    return *this;
}

void MappedFile::unmap() {
    if (data_) munmap((void*)data_, size_);
    data_ = nullptr;
    size_ = 0;
}
