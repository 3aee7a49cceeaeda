#pragma once
// A small command-line parser: named options with values, flags, repeatable options and positionals.
// Unknown options, missing values and malformed numbers are errors that name the option.
#include <map>
#include <string>
#include <vector>

#include "cepe/tensor.h"

namespace cepe::cli {

class Args {
 public:
  // `spec`: option names that take a value (e.g. {"-m", "--model"}) and flags (no value).
  Args(int argc, char** argv, const std::vector<std::vector<std::string>>& valued,
       const std::vector<std::vector<std::string>>& flags);

  bool has(const std::string& name) const;
  std::string str(const std::string& name, const std::string& def = "") const;
  std::string required(const std::string& name) const;
  std::vector<std::string> all(const std::string& name) const;
  // Numeric options are validated here, once for every command: malformed, out of [lo, hi] or (for numbers)
  // non-finite values are errors naming the option and the accepted range.
  long long integer(const std::string& name, long long def, long long lo, long long hi) const;
  double number(const std::string& name, double def, double lo, double hi) const;
  // A memory size such as 16G or 512MiB (see parse_bytes), at most 2^60 bytes.
  size_t bytes(const std::string& name, size_t def) const;
  // -t/--threads: 0 (the default) lets the machine decide.
  int threads() const { return static_cast<int>(integer("--threads", 0, 0, 4096)); }
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> canonical_;  // alias -> first spelling
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

// --dtype values: f32 | bf16 | f16 (also F32, float32, ...); anything else is an error naming the option.
DType parse_dtype(const std::string& s);

}  // namespace cepe::cli
