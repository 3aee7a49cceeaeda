#include "core/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>

#include "cepe/error.h"
#include "core/interrupt.h"

namespace cepe {

namespace {
std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}
}  // namespace

std::string temp_path_for(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

// Best effort: some file systems refuse fsync on a directory, and the data is already safely in place by then.
void sync_parent_dir(const std::string& path) {
  const int fd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write) {
  const std::string tmp = temp_path_for(path);
  const TempFileGuard guard(tmp);  // removed on Ctrl-C/SIGTERM too
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) {
    throw Error(path + ": cannot create temporary file " + tmp + ": " + std::strerror(errno));
  }

  // Removes the temporary file and reports `what` (plus errno's reason when there is one).
  auto fail = [&](const std::string& what, int err) {
    if (f) std::fclose(f);
    std::remove(tmp.c_str());
    throw Error(path + ": " + what + (err ? std::string(": ") + std::strerror(err) : std::string()));
  };

  errno = 0;  // so that a stream error below reports the writer's errno, not a stale one
  try {
    write(f);
  } catch (const std::exception& e) {
    fail(std::string("write failed: ") + e.what(), 0);
  } catch (...) {
    fail("write failed: unknown exception", 0);
  }
  if (std::ferror(f)) fail("write error", errno);
  if (std::fflush(f) != 0) fail("cannot flush", errno);
  if (::fsync(::fileno(f)) != 0) fail("cannot fsync", errno);
  const int rc = std::fclose(f);
  f = nullptr;
  if (rc != 0) fail("cannot close", errno);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename " + tmp + " over it", errno);
  sync_parent_dir(path);
}

void write_text_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, [&](std::FILE* f) {
    if (!text.empty() && std::fwrite(text.data(), 1, text.size(), f) != text.size()) {
      throw Error(std::string("short write: ") + std::strerror(errno));
    }
  });
}

}  // namespace cepe
