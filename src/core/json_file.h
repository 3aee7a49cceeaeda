#pragma once
// Reads and parses a JSON file; errors name the file ("<path>: cannot open <what>" / "malformed JSON").
#include <string>

#include <nlohmann/json.hpp>

namespace cepe {

nlohmann::json read_json_file(const std::string& path, const std::string& what);

}  // namespace cepe
