// atomic_file.cpp: the temp-file + fsync + rename writer behind every file the project saves.
#include "data/atomic_file.h"

#include <cerrno>
#include <cstring>
#include <unistd.h>

#include "data/text.h"

AtomicFile::AtomicFile(const std::string& path) : path_(path), tmp_path_(path + ".tmp") {
    f_ = fopen(tmp_path_.c_str(), "wb");
    if (!f_) {
        throw GrpoError(tmp_path_ + ": cannot create: " + strerror(errno) + "; check that the directory exists and is writable");
    }
}

AtomicFile::~AtomicFile() {
    if (!committed_) discard();
}

void AtomicFile::discard() {
    if (f_) fclose(f_);
    f_ = nullptr;
    remove(tmp_path_.c_str());
}

// One error path for every failed call: the half-written temp file is removed, PATH is untouched.
void AtomicFile::fail(const char* what) {
    int err = errno;  // before fclose/remove can change it
    discard();
    throw GrpoError(tmp_path_ + ": " + what + ": " + strerror(err) + "; free disk space or choose another output path (" + path_ +
                    " was not changed)");
}

void AtomicFile::write(const void* data, size_t nbytes) {
    if (nbytes == 0) return;
    if (!f_ || fwrite(data, 1, nbytes, f_) != nbytes) fail("write failed");
}

void AtomicFile::commit() {
    // A full disk often shows up only when the buffer is flushed; fsync so the rename never publishes
    // a file whose data is still only in the page cache.
    if (!f_ || fflush(f_) != 0 || fsync(fileno(f_)) != 0) fail("write failed");
    int close_result = fclose(f_);
    f_ = nullptr;
    if (close_result != 0) fail("close failed");
    if (rename(tmp_path_.c_str(), path_.c_str()) != 0) fail("cannot rename over the destination");
    committed_ = true;
}

void write_file_atomic(const std::string& path, const std::string& contents) {
    AtomicFile out(path);
    out.write(contents);
    out.commit();
}
