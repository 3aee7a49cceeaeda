// Running the real `cepe` binary (CEPE_BINARY) from tests: no shell, stdin from /dev/null, stdout/stderr
// through files, a `timeout` around every run, and the assertions that say how a run must end. Shared by the
// end-to-end suites (test_cli.cpp, test_chat.cpp, test_cli_context.cpp); definitions in support_cli_runner.cpp.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace cepe::testing {

// Every run is killed after this many seconds (`timeout` then reports 124).
inline constexpr int kCliTimeoutS = 60;

// The whole file as bytes ("" when it cannot be read).
std::string read_text(const std::filesystem::path& p);
// Writes `s` as the whole file (a fatal test failure when that fails).
void write_text(const std::filesystem::path& p, const std::string& s);

struct RunResult {
  int exit_code = -1;     // meaningful when !signaled
  bool signaled = false;  // killed by a signal (a crash, or `timeout -k` gave up)
  int signal = 0;
  std::string out, err;
  std::string cmdline;  // for failure messages
};

// The command, how it ended and the start of its stdout/stderr, for failure messages.
std::string describe(const RunResult& r);

// Runs `timeout -k 5 60 cepe ARGS...` with stdin from /dev/null and stdout/stderr into files of `scratch` (removed
// afterwards). Arguments go to the process as-is (no shell), so raw bytes and newlines reach argv untouched.
// `prefix` goes between `timeout` and cepe: e.g. {"prlimit", "--as=N", "--"} to limit its address space.
RunResult run_cepe_in(const std::filesystem::path& scratch, const std::vector<std::string>& args,
                      const std::vector<std::string>& prefix = {});

// The process ended on its own (no signal; `timeout` reports 124 for a hang, 125-127 for its own failures and 128+N
// when the child died of signal N).
::testing::AssertionResult Finished(const RunResult& r);

// Exit 0 with nothing that looks like an error on stderr.
::testing::AssertionResult Succeeded(const RunResult& r);

// A clean failure (docs/cli.md): exit status 1, nothing on stdout (unless `allow_stdout`), and stderr exactly one
// line `error: ...` that contains every keyword. Text-mode generate streams the prompt before it runs, so a late
// failure may follow it (`allow_stdout`).
::testing::AssertionResult CleanError(const RunResult& r, std::initializer_list<std::string_view> keywords,
                                      bool allow_stdout = false);

// The same for a missing or unknown command, which exits with status 2.
::testing::AssertionResult CleanUsageError(const RunResult& r, std::initializer_list<std::string_view> keywords);

// A fixture with a per-test scratch directory under the system temporary directory, removed afterwards: tests
// write (and corrupt) files there freely, tests/data is never written.
class CliScratchTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  RunResult run_cepe(const std::vector<std::string>& args, const std::vector<std::string>& prefix = {}) const {
    return run_cepe_in(dir_, args, prefix);
  }
  // `name` inside the scratch directory.
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  std::filesystem::path dir_;
};

}  // namespace cepe::testing
