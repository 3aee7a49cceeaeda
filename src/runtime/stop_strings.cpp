// Stop strings: StopMatcher (streaming cut at the first stop string) and unescape() for command-line values.
#include <algorithm>
#include <cstdio>
#include <string>

#include "cepe/chat.h"
#include "core/utf8.h"

namespace cepe {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (size_t i = 0; i < stops_.size(); ++i) {
    const std::string& s = stops_[i];
    check(!s.empty(), "stop string " + std::to_string(i + 1) + " is empty");
    size_t bad = 0;
    if (!utf8_valid(s, &bad))
      throw Error("stop string " + std::to_string(i + 1) + " is not valid UTF-8 at byte " + std::to_string(bad));
    max_len_ = std::max(max_len_, s.size());
  }
}

const std::string& StopMatcher::matched() const {
  static const std::string kEmpty;
  return stopped() ? stops_[matched_] : kEmpty;
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped()) return "";
  if (stops_.empty()) return std::string(text);
  std::string buf = std::move(held_);
  held_.clear();
  buf.append(text);

  // The held part holds no complete stop string (we would have stopped), so any occurrence ends in `text`.
  // The stream stops where the first occurrence ends; among those ending there, the one starting first wins.
  size_t best_begin = std::string::npos, best_end = std::string::npos, best = kNone;
  for (size_t i = 0; i < stops_.size(); ++i) {
    const size_t at = buf.find(stops_[i]);
    if (at == std::string::npos) continue;
    const size_t end = at + stops_[i].size();
    if (best == kNone || end < best_end || (end == best_end && at < best_begin)) {
      best_begin = at;
      best_end = end;
      best = i;
    }
  }
  if (best != kNone) {
    matched_ = best;
    buf.resize(best_begin);
    return buf;
  }

  // Hold back the longest suffix that is a proper prefix of some stop string: every occurrence still to come
  // starts inside it. Valid UTF-8 stop strings start with a lead byte, so the cut is on a character boundary.
  size_t hold = 0;
  for (size_t k = std::min(buf.size(), max_len_ - 1); k > 0 && hold == 0; --k) {
    const std::string_view tail = std::string_view(buf).substr(buf.size() - k);
    for (const std::string& s : stops_)
      if (s.size() > k && std::string_view(s).substr(0, k) == tail) {
        hold = k;
        break;
      }
  }
  held_.assign(buf, buf.size() - hold, hold);
  buf.resize(buf.size() - hold);
  return buf;
}

std::string StopMatcher::flush() {
  std::string out = std::move(held_);
  held_.clear();
  return stopped() ? std::string() : out;
}

void StopMatcher::reset() {
  held_.clear();
  matched_ = kNone;
}

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A printable rendering of one byte for error messages (never a raw control or non-ASCII byte).
std::string show_byte(char c) {
  const unsigned char b = static_cast<unsigned char>(c);
  if (b >= 0x21 && b < 0x7F) return std::string(1, c);
  char buf[8];
  std::snprintf(buf, sizeof buf, "\\x%02X", b);
  return buf;
}

void append_utf8(std::string& out, uint32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

}  // namespace

std::string unescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    const size_t at = i;
    if (i + 1 >= s.size())
      throw Error("trailing backslash at byte " + std::to_string(at) + " (write \\\\ for a backslash)");
    const char e = s[++i];
    switch (e) {
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'x':
      case 'u': {
        const size_t digits = e == 'x' ? 2 : 4;
        uint32_t v = 0;
        for (size_t k = 0; k < digits; ++k) {
          const int h = i + 1 + k < s.size() ? hex_value(s[i + 1 + k]) : -1;
          if (h < 0)
            throw Error(std::string("\\") + e + " at byte " + std::to_string(at) + " needs exactly " +
                        std::to_string(digits) + " hex digits");
          v = v * 16 + static_cast<uint32_t>(h);
        }
        i += digits;
        if (e == 'x') {
          out += static_cast<char>(v);
        } else {
          if (v >= 0xD800 && v <= 0xDFFF)
            throw Error("\\u at byte " + std::to_string(at) + " is a surrogate code point, not a character");
          append_utf8(out, v);
        }
        break;
      }
      default:
        throw Error("unknown escape \\" + show_byte(e) + " at byte " + std::to_string(at) +
                    " (known: \\n \\r \\t \\\\ \\' \\\" \\xHH \\uHHHH)");
    }
  }
  return out;
}

}  // namespace cepe
