#include "core/utf8.h"

#include <cstdint>

namespace cepe {

size_t utf8_lead_len(unsigned char b) {
  if (b < 0x80) return 1;
  if ((b & 0xE0) == 0xC0) return 2;
  if ((b & 0xF0) == 0xE0) return 3;
  if ((b & 0xF8) == 0xF0) return 4;
  return 0;  // a continuation byte or 0xF8..0xFF
}

size_t utf8_char_len(std::string_view s) {
  if (s.empty()) return 0;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = utf8_lead_len(p[0]);
  if (n == 0 || s.size() < n) return 0;
  if (n == 1) return 1;
  uint32_t cp = p[0] & (0x7F >> n);
  for (size_t i = 1; i < n; ++i) {
    if (!utf8_is_continuation(p[i])) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};  // shortest form for each length
  if (cp < kMin[n]) return 0;                                        // overlong
  if (cp >= 0xD800 && cp <= 0xDFFF) return 0;                        // UTF-16 surrogate
  if (cp > 0x10FFFF) return 0;
  return n;
}

bool utf8_valid(std::string_view s, size_t* bad_offset) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII fast path.
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t n = utf8_char_len(s.substr(i));
    if (n == 0) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    i += n;
  }
  return true;
}

}  // namespace cepe
