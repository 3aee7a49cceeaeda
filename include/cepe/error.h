#pragma once
// Errors: every failure on user input is a cepe::Error whose message names what was wrong and where.
#include <stdexcept>
#include <string>

namespace cepe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws cepe::Error(message) when `cond` is false.
inline void check(bool cond, const std::string& message) {
  if (!cond) throw Error(message);
}

}  // namespace cepe
