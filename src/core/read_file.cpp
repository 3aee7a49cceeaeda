#include "core/read_file.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include "cepe/error.h"

namespace cepe {

std::string read_file(const std::string& path) {
  std::error_code ec;
  // A folder opens as a stream on Linux and reads as nothing: name it instead.
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec))
    throw Error(path + ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(path + ": cannot read");
  return bytes;
}

}  // namespace cepe
