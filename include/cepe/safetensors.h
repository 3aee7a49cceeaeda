#pragma once
// safetensors checkpoints: an 8-byte little-endian header length N, N bytes of JSON describing each
// tensor (dtype, shape, data_offsets relative to the byte buffer), then the byte buffer.
// Files are memory-mapped and validated in full on open, so later accesses cannot go out of bounds.
#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cepe/tensor.h"

namespace cepe {

class MappedFile;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  size_t begin = 0, end = 0;  // byte range relative to the start of the data section
};

// A parsed, validated, memory-mapped .safetensors file. Cheap to copy (the mapping is shared).
class SafeTensors {
 public:
  // Maps and validates the whole header; every problem is a cepe::Error starting with the path.
  static SafeTensors open(const std::string& path);

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // throws "<path>: no tensor named 'x'"
  // A view into the mapping (which the view keeps alive). The memory is read-only: clone() before
  // writing. Only a tensor whose offset is misaligned for its dtype is copied instead.
  Tensor get(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"

 private:
  std::string path_;
  std::shared_ptr<MappedFile> file_;
  const uint8_t* data_ = nullptr;  // start of the byte buffer inside the mapping
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (contiguous, any dtype) as a standard safetensors file, atomically (temporary
// file + rename). The header JSON lists names in sorted order and is space-padded to a multiple of
// 8 bytes; the data is laid out gap-free, as the reference implementation requires, ordered by
// element size (largest first) then name, so every tensor starts aligned to its element size.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace cepe
