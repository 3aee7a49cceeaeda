#pragma once
// Read-only memory mapping of a whole file. Checkpoint tensors are views into the mapping, so a
// MappedFile is held by shared_ptr and kept alive by every Tensor that points into it.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace cepe {

class MappedFile {
 public:
  // Maps `path` read-only (PROT_READ, MAP_PRIVATE). A 0-byte file maps to nothing: data() is null
  // and size() is 0. Throws cepe::Error naming the path and the system's reason on failure.
  static std::shared_ptr<MappedFile> open(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace cepe
