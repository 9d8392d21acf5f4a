// atomic_file.h: writing a file atomically (PATH.tmp, flushed to disk, renamed over PATH), so PATH holds the old contents or the new, never a part.
#pragma once
#include <cstddef>
#include <cstdio>
#include <string>

// Usage: AtomicFile out(path); out.write(...); ...; out.commit();
// Every failure throws a GrpoError naming PATH.tmp, the failed step and the system's reason (a full disk says
// so), after removing PATH.tmp; PATH itself is untouched until commit() renames over it. If the AtomicFile is
// destroyed without a successful commit() (an exception in the caller, say), PATH.tmp is removed too.
class AtomicFile {
public:
    explicit AtomicFile(const std::string& path);  // creates PATH.tmp
    ~AtomicFile();
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;

    void write(const void* data, size_t nbytes);
    void write(const std::string& bytes) { write(bytes.data(), bytes.size()); }
    // Flushes and fsyncs PATH.tmp, closes it and renames it over PATH.
    void commit();

private:
    [[noreturn]] void fail(const char* what);
    void discard();  // closes and removes PATH.tmp

    std::string path_, tmp_path_;
    FILE* f_ = nullptr;
    bool committed_ = false;
};

// A whole (small) file written atomically with AtomicFile.
void write_file_atomic(const std::string& path, const std::string& contents);
