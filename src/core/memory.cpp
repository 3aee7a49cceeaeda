#include "core/memory.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "cepe/error.h"

namespace cepe {

namespace {
// The value in kB of `key` in a /proc file with "Key:   123 kB" lines, in bytes (0 when absent).
size_t proc_kb(const char* file, const char* key) {
  std::ifstream in(file);
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(in, line))
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':')
      return static_cast<size_t>(std::strtoull(line.c_str() + n + 1, nullptr, 10)) * 1024;
  return 0;
}
}  // namespace

size_t current_rss_bytes() { return proc_kb("/proc/self/status", "VmRSS"); }
size_t peak_rss_bytes() { return proc_kb("/proc/self/status", "VmHWM"); }
size_t total_memory_bytes() { return proc_kb("/proc/meminfo", "MemTotal"); }
size_t available_memory_bytes() { return proc_kb("/proc/meminfo", "MemAvailable"); }

void reset_peak_rss() {
  if (std::FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
    std::fputs("5", f);
    std::fclose(f);
  }
}

size_t parse_bytes(const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  std::string unit = end ? end : "";
  if (!unit.empty() && (unit.back() == 'B' || unit.back() == 'b')) unit.pop_back();
  double mult = 1;
  if (unit == "") mult = 1;
  else if (unit == "k" || unit == "K") mult = 1e3;
  else if (unit == "M" || unit == "m") mult = 1e6;
  else if (unit == "G" || unit == "g") mult = 1e9;
  else if (unit == "T" || unit == "t") mult = 1e12;
  else if (unit == "Ki") mult = 1024.0;
  else if (unit == "Mi") mult = 1024.0 * 1024;
  else if (unit == "Gi") mult = 1024.0 * 1024 * 1024;
  else throw Error("'" + text + "' is not a size (examples: 20G, 512M, 1.5GB, 1000000)");
  if (text.empty() || end == text.c_str() || !(v >= 0) || !std::isfinite(v))
    throw Error("'" + text + "' is not a size (examples: 20G, 512M, 1.5GB, 1000000)");
  // Checked before the conversion, which would be undefined beyond size_t.
  if (!(v * mult <= kMaxParsedBytes))
    throw Error("'" + text + "' is larger than any memory (at most " + std::to_string(kMaxParsedBytes >> 50) + " PiB)");
  return static_cast<size_t>(v * mult);
}

}  // namespace cepe
