#pragma once
// Process and machine memory figures from /proc (Linux), for budgets and benchmarks.
#include <cstddef>
#include <string>

namespace cepe {

size_t current_rss_bytes();    // VmRSS
size_t peak_rss_bytes();       // VmHWM: the peak since start or since reset_peak_rss()
void reset_peak_rss();         // writes 5 to /proc/self/clear_refs (a no-op where unsupported)
size_t total_memory_bytes();   // MemTotal
size_t available_memory_bytes();  // MemAvailable

// "20G", "512M", "1.5GB", "1000000" -> bytes; errors name the text.
constexpr size_t kMaxParsedBytes = size_t{1} << 60;
size_t parse_bytes(const std::string& text);

}  // namespace cepe
