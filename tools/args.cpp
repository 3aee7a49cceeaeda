#include "args.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "cepe/error.h"
#include "core/memory.h"

namespace cepe::cli {

Args::Args(int argc, char** argv, const std::vector<std::vector<std::string>>& valued,
           const std::vector<std::vector<std::string>>& flags) {
  std::map<std::string, bool> takes_value;
  for (const auto& names : valued)
    for (const auto& n : names) canonical_[n] = names[0], takes_value[n] = true;
  for (const auto& names : flags)
    for (const auto& n : names) canonical_[n] = names[0], takes_value[n] = false;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.size() > 1 && a[0] == '-' && !(a.size() > 1 && (std::isdigit(static_cast<unsigned char>(a[1])) || a[1] == '.'))) {
      std::string value;
      bool inline_value = false;
      if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        inline_value = true;
      }
      auto it = canonical_.find(a);
      if (it == canonical_.end()) throw Error("unknown option '" + a + "'");
      if (takes_value[a]) {
        if (!inline_value) {
          if (i + 1 >= argc) throw Error("option '" + a + "' needs a value");
          value = argv[++i];
        }
        values_[it->second].push_back(value);
      } else {
        if (inline_value) throw Error("option '" + a + "' takes no value");
        values_[it->second].push_back("1");
      }
    } else {
      positional_.push_back(a);
    }
  }
}

bool Args::has(const std::string& name) const { return values_.count(canonical_.at(name)) != 0; }

std::string Args::str(const std::string& name, const std::string& def) const {
  auto it = values_.find(canonical_.at(name));
  return it == values_.end() ? def : it->second.back();
}

std::string Args::required(const std::string& name) const {
  if (!has(name)) throw Error("missing required option " + name);
  return str(name);
}

std::vector<std::string> Args::all(const std::string& name) const {
  auto it = values_.find(canonical_.at(name));
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

long long Args::integer(const std::string& name, long long def, long long lo, long long hi) const {
  if (!has(name)) return def;
  const std::string s = str(name);
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  const bool malformed = s.empty() || *end != '\0' || std::isspace(static_cast<unsigned char>(s[0]));
  if (!malformed && errno != ERANGE && v >= lo && v <= hi) return v;
  std::string range = "[";  // built step by step: `"[" + std::to_string(..)` trips a GCC 12 -Wrestrict false positive
  range += std::to_string(lo);
  range += ", ";
  range += std::to_string(hi);
  range += "]";
  if (malformed) throw Error("option " + name + ": '" + s + "' is not an integer (expected one in " + range + ")");
  throw Error("option " + name + ": " + s + " is out of range (expected an integer in " + range + ")");
}

double Args::number(const std::string& name, double def, double lo, double hi) const {
  if (!has(name)) return def;
  const std::string s = str(name);
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  std::ostringstream range;
  range << "[" << lo << ", " << hi << "]";
  if (s.empty() || *end != '\0' || std::isspace(static_cast<unsigned char>(s[0])) || !std::isfinite(v))
    throw Error("option " + name + ": '" + s + "' is not a number (expected a finite number in " + range.str() + ")");
  if (v < lo || v > hi) throw Error("option " + name + ": " + s + " is out of range (expected a number in " + range.str() + ")");
  return v;
}

size_t Args::bytes(const std::string& name, size_t def) const {
  if (!has(name)) return def;
  try {
    return parse_bytes(str(name));
  } catch (const Error& e) {
    throw Error("option " + name + ": " + e.what());
  }
}

DType parse_dtype(const std::string& s) {
  if (s == "f32" || s == "F32" || s == "float32") return DType::F32;
  if (s == "bf16" || s == "BF16" || s == "bfloat16") return DType::BF16;
  if (s == "f16" || s == "F16" || s == "float16") return DType::F16;
  throw Error("--dtype: unknown dtype '" + s + "' (supported: f32, bf16, f16)");
}

}  // namespace cepe::cli
