#pragma once
// Errors: every failure on user input is a cepe::Error whose message names what was wrong and where.
#include <stdexcept>
#include <string>
#include <type_traits>

namespace cepe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws cepe::Error(message) when `cond` is false.
inline void check(bool cond, const std::string& message) {
  if (!cond) throw Error(message);
}

// The same with the message built only on failure: for hot paths (per call of a kernel or a tensor accessor),
// where building an error string every time costs more than the work. `make_message` returns std::string.
template <class F, class = std::enable_if_t<std::is_invocable_r_v<std::string, F&>>>
inline void check(bool cond, F&& make_message) {
  if (!cond) [[unlikely]] throw Error(make_message());
}

}  // namespace cepe
