#include "core/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "cepe/error.h"
#include "core/atomic_file.h"

namespace cepe {

using json = nlohmann::json;

namespace {

// Page-cache window: once this much more has been written, the previous window is waited for and dropped.
constexpr uint64_t kCacheWindow = 64ull << 20;

}  // namespace

SafeTensorsLayout plan_safetensors(const std::string& path, const std::vector<TensorSpec>& tensors,
                                   const std::map<std::string, std::string>& metadata) {
  // save_safetensors's rules: names sorted, then (stable) largest element size first, data gap-free.
  std::vector<const TensorSpec*> order;
  std::set<std::string> seen;
  for (const TensorSpec& t : tensors) {
    check(t.name != "__metadata__", path + ": '__metadata__' is reserved and cannot name a tensor");
    check(seen.insert(t.name).second, path + ": tensor '" + t.name + "' is listed twice");
    uint64_t numel = 1;
    for (const int64_t d : t.shape) {
      check(d >= 0, path + ": tensor '" + t.name + "' has a negative dimension in shape " + shape_str(t.shape));
      check(!__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel),
            path + ": tensor '" + t.name + "' shape " + shape_str(t.shape) + " overflows");
    }
    uint64_t nbytes = 0;
    check(numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) &&
              !__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.dtype)), &nbytes),
          path + ": tensor '" + t.name + "' shape " + shape_str(t.shape) + " overflows the byte count");
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const TensorSpec* a, const TensorSpec* b) { return a->name < b->name; });
  std::stable_sort(order.begin(), order.end(), [](const TensorSpec* a, const TensorSpec* b) {
    return dtype_size(a->dtype) > dtype_size(b->dtype);
  });

  SafeTensorsLayout lay;
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorSpec* t : order) {
    const uint64_t nbytes = static_cast<uint64_t>(shape_numel(t->shape)) * dtype_size(t->dtype);
    check(!__builtin_add_overflow(offset, nbytes, &offset), path + ": the data section overflows");
    TensorInfo ti;
    ti.name = t->name;
    ti.dtype = t->dtype;
    ti.shape = t->shape;
    ti.begin = static_cast<size_t>(offset - nbytes);
    ti.end = static_cast<size_t>(offset);
    header[t->name] = {{"dtype", dtype_name(t->dtype)}, {"shape", t->shape}, {"data_offsets", {ti.begin, ti.end}}};
    lay.order.push_back(std::move(ti));
  }
  lay.data_bytes = offset;

  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {  // e.g. a name or metadata value that is not valid UTF-8
    throw Error(path + ": cannot encode the header: " + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  lay.header.resize(8);
  for (int i = 0; i < 8; ++i) lay.header[static_cast<size_t>(i)] = static_cast<char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  lay.header += text;
  return lay;
}

SafeTensorsWriter::SafeTensorsWriter(const std::string& path, const std::vector<TensorSpec>& tensors,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path),
      tmp_(temp_path_for(path)),
      guard_(std::make_unique<TempFileGuard>(tmp_)),
      layout_(plan_safetensors(path, tensors, metadata)) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd_ < 0) throw Error(path_ + ": cannot create temporary file " + tmp_ + ": " + std::strerror(errno));
  // Reserve the space now: a disk that cannot hold the file fails here, not hours into the data.
  // File systems without fallocate just skip this.
  const uint64_t size = file_bytes();
  if (size > 0 && ::fallocate(fd_, 0, 0, static_cast<off_t>(size)) != 0) {
    const int err = errno;
    if (err == ENOSPC || err == EFBIG || err == EDQUOT)
      fail("cannot reserve " + std::to_string(size) + " bytes for the file (not enough disk space?)", err);
  }
  const std::string& h = layout_.header;
  size_t off = 0;
  while (off < h.size()) {
    const ssize_t w = ::write(fd_, h.data() + off, h.size() - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("write failed", w < 0 ? errno : EIO);
    off += static_cast<size_t>(w);
  }
  written_ = h.size();
}

SafeTensorsWriter::~SafeTensorsWriter() {
  if (fd_ < 0) return;  // committed, or already cleaned up by fail()
  ::close(fd_);
  ::unlink(tmp_.c_str());
}

void SafeTensorsWriter::fail(const std::string& what, int err) {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(tmp_.c_str());
  }
  throw Error(path_ + ": " + what + (err ? std::string(": ") + std::strerror(err) : std::string()));
}

void SafeTensorsWriter::write(const void* data, size_t n) {
  if (fd_ < 0) throw Error(path_ + ": write after the writer failed or was committed");
  if (n > file_bytes() - written_)
    fail("write of " + std::to_string(n) + " bytes past the end of the data (" +
             std::to_string(file_bytes() - written_) + " bytes left)", 0);
  const char* p = static_cast<const char*>(data);
  size_t off = 0;
  while (off < n) {
    const ssize_t w = ::write(fd_, p + off, std::min<size_t>(n - off, 1u << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("write failed", w < 0 ? errno : EIO);
    off += static_cast<size_t>(w);
  }
  written_ += n;
  drop_written_pages();
}

void SafeTensorsWriter::drop_written_pages() {
  // Streaming-write pattern: start writeback of the newest window, wait for the one before and drop it
  // from the page cache. Only hints: errors surface at fsync in commit().
  if (written_ - started_ < kCacheWindow) return;
  if (started_ > flushed_) {
    const off_t off = static_cast<off_t>(flushed_), len = static_cast<off_t>(started_ - flushed_);
    (void)::sync_file_range(fd_, off, len,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
    (void)::posix_fadvise(fd_, off, len, POSIX_FADV_DONTNEED);
    flushed_ = started_;
  }
  (void)::sync_file_range(fd_, static_cast<off_t>(started_), static_cast<off_t>(written_ - started_),
                          SYNC_FILE_RANGE_WRITE);
  started_ = written_;
}

void SafeTensorsWriter::commit() {
  if (fd_ < 0) throw Error(path_ + ": commit after the writer failed or was committed");
  if (written_ != file_bytes())
    fail("incomplete: " + std::to_string(written_) + " of " + std::to_string(file_bytes()) + " bytes written", 0);
  if (::fsync(fd_) != 0) fail("cannot fsync", errno);
  if (started_ > 0) (void)::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED);  // a large file: drop the rest too
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    throw Error(path_ + ": cannot close: " + std::strerror(err));
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    throw Error(path_ + ": cannot rename " + tmp_ + " over it: " + std::strerror(err));
  }
  sync_parent_dir(path_);
}

}  // namespace cepe
