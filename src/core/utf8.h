#pragma once
// Strict UTF-8 (RFC 3629 / Unicode table 3-7): no overlong forms, no surrogates, nothing above U+10FFFF.
#include <cstddef>
#include <string_view>

namespace cepe {

// Byte length (1..4) of the well-formed UTF-8 character at the start of `s`, or 0 when `s` is empty or
// does not start with one (bad lead byte, bad continuation, overlong, surrogate, > U+10FFFF, truncated).
size_t utf8_char_len(std::string_view s);

// Length (1..4) a character starting with lead byte `b` must have, or 0 when `b` can never start one.
size_t utf8_lead_len(unsigned char b);

inline bool utf8_is_continuation(unsigned char b) { return (b & 0xC0) == 0x80; }

// True when `s` is entirely well-formed UTF-8. Otherwise false, and `*bad_offset` (when not null) is the
// byte offset where the first ill-formed sequence starts.
bool utf8_valid(std::string_view s, size_t* bad_offset = nullptr);

}  // namespace cepe
