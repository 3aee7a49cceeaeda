#pragma once
// Streaming safetensors writer: for files too large to hold in memory. Every name, dtype and shape is
// known up front, so the header (and each tensor's offsets) is written first and the data is then
// appended in any number of pieces, tensor after tensor in `order()`. The file layout is exactly
// save_safetensors's (names sorted in the header, header space-padded to 8 bytes, data gap-free ordered
// by element size then name, so each tensor is aligned to its element size): the same tensors give the
// same bytes either way.
//
// Atomic like write_file_atomic: the data goes to `path.tmp.<pid>`, which commit() fsyncs and renames over
// `path`; a writer destroyed without commit() removes it. While writing, finished ranges are flushed and
// dropped from the page cache as it goes, so a file larger than RAM does not crowd out everything else.
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cepe/safetensors.h"
#include "cepe/tensor.h"
#include "core/interrupt.h"

namespace cepe {

struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
};

// The layout of a file holding `tensors`: the header bytes (8-byte length + padded JSON) and every
// tensor's data range, in data order. Errors (duplicate or reserved names, bad shapes) name `path`.
struct SafeTensorsLayout {
  std::string header;
  std::vector<TensorInfo> order;  // begin/end relative to the data section, which starts at header.size()
  uint64_t data_bytes = 0;
  uint64_t file_bytes() const { return header.size() + data_bytes; }
};
SafeTensorsLayout plan_safetensors(const std::string& path, const std::vector<TensorSpec>& tensors,
                                   const std::map<std::string, std::string>& metadata = {});

class SafeTensorsWriter {
 public:
  // Creates the temporary file, reserves the whole size (a full disk fails here, before any data is
  // generated) and writes the header.
  SafeTensorsWriter(const std::string& path, const std::vector<TensorSpec>& tensors,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafeTensorsWriter();
  SafeTensorsWriter(const SafeTensorsWriter&) = delete;
  SafeTensorsWriter& operator=(const SafeTensorsWriter&) = delete;

  const SafeTensorsLayout& layout() const { return layout_; }
  const std::vector<TensorInfo>& order() const { return layout_.order; }  // the order to write the data in
  uint64_t file_bytes() const { return layout_.file_bytes(); }
  uint64_t bytes_written() const { return written_; }  // header included

  // Appends the next `n` bytes of the data section (pieces may split or span tensors). Writing past the
  // end is an error.
  void write(const void* data, size_t n);
  // Checks that every byte was written, then fsyncs, renames over `path` and syncs the directory.
  void commit();

 private:
  void fail(const std::string& what, int err);
  void drop_written_pages();

  std::string path_, tmp_;
  std::unique_ptr<TempFileGuard> guard_;  // removes tmp_ on Ctrl-C/SIGTERM
  SafeTensorsLayout layout_;
  int fd_ = -1;
  uint64_t written_ = 0;
  uint64_t started_ = 0;  // writeback of bytes [0, started_) has been started
  uint64_t flushed_ = 0;  // bytes [0, flushed_) are on disk and dropped from the page cache
};

}  // namespace cepe
