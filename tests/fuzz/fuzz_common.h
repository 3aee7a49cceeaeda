#pragma once
// What every fuzz target shares: a file holding the input (the loaders take paths), the rule for which
// outcomes are expected, and a sink that makes the sanitizers see every byte a loader hands back.
//
// Expected: the call returns, or throws cepe::Error (rejected input, with a message) or another
// std::exception (what the CLI also reports as `error: ...`, e.g. std::bad_alloc). A finding: a crash, a
// sanitizer report, a leak, a timeout, an exception of a non-std type, or a broken invariant (fuzz_check).
// CEPE_FUZZ_STRICT=1 makes a non-cepe::Error exception a finding too: the design promises cepe::Error,
// naming the problem, for every bad input, so this finds messages that leak a library's internals.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <typeinfo>

#include <unistd.h>

#include "cepe/error.h"

namespace cepe::fuzz {

// A per-process file for the input: /dev/shm when present (no disk traffic per run), else $TMPDIR or /tmp.
// Keyed by target and pid, since libFuzzer's -jobs/-workers and parallel ctest runs are separate processes.
class InputFile {
 public:
  explicit InputFile(const char* target) {
    const char* dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : std::getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    path_ = std::string(dir) + "/cepe-fuzz-" + target + "-" + std::to_string(getpid());
  }
  ~InputFile() { std::remove(path_.c_str()); }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  // Replaces the file's contents with the input; returns its path.
  const std::string& write(const uint8_t* data, size_t size) {
    std::FILE* f = std::fopen(path_.c_str(), "wb");
    if (!f || (size && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
      std::perror(path_.c_str());  // the harness, not the input, is broken: stop rather than report nothing
      std::abort();
    }
    return path_;
  }

 private:
  std::string path_;
};

inline bool strict() {
  static const bool s = [] {
    const char* v = std::getenv("CEPE_FUZZ_STRICT");
    return v && *v && *v != '0';
  }();
  return s;
}

// Runs `fn` and swallows the expected exceptions (see the top of this file).
template <class F>
void expect_errors(F&& fn) {
  try {
    fn();
  } catch (const cepe::Error&) {
  } catch (const std::exception& e) {
    if (strict()) {
      std::fprintf(stderr, "fuzz: non-cepe::Error exception %s: %s\n", typeid(e).name(), e.what());
      std::abort();
    }
  }
}

// An invariant of accepted input; a failure is a finding (abort, so libFuzzer saves the input).
inline void fuzz_check(bool cond, const char* what) {
  if (!cond) {
    std::fprintf(stderr, "fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

// Where touch() leaves its result, so the compiler cannot drop the reads.
inline volatile unsigned char touch_sink;

// Reads every byte of [p, p + n), so ASan reports a view that points outside its buffer.
inline void touch(const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  unsigned char acc = 0;
  for (size_t i = 0; i < n; ++i) acc ^= b[i];
  touch_sink = acc;
}

}  // namespace cepe::fuzz
