#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "cepe/error.h"

namespace cepe {

static std::string sys_error(const std::string& path, const char* what, int err) {
  return path + ": " + what + ": " + std::strerror(err);
}

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  // O_NONBLOCK so that a FIFO given by mistake is rejected below instead of blocking the open.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(sys_error(path, "cannot open", errno));

  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(sys_error(path, "cannot stat", err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw Error(sys_error(path, "cannot map", EISDIR));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": cannot map: not a regular file");
  }

  const size_t size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {  // mmap rejects a zero length, and an empty file has nothing to map anyway
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw Error(sys_error(path, "cannot mmap", err));
    }
    data = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping holds its own reference to the file
  return std::shared_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace cepe
