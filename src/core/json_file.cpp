#include "core/json_file.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "cepe/error.h"

namespace cepe {

nlohmann::json read_json_file(const std::string& path, const std::string& what) {
  if (std::filesystem::is_directory(path)) throw Error(path + ": " + what + " is a directory");
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open " + what);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(path + ": malformed JSON: " + e.what());
  }
}

}  // namespace cepe
