// Definitions of cli_runner.h.
#include "cli_runner.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <system_error>

extern char** environ;

namespace cepe::testing {

namespace fs = std::filesystem;

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
  ASSERT_TRUE(out.good()) << p;
}

std::string describe(const RunResult& r) {
  std::string s = "command: " + r.cmdline + "\n";
  s += r.signaled ? "killed by signal " + std::to_string(r.signal) : "exit code " + std::to_string(r.exit_code);
  s += "\n--- stdout ---\n" + r.out.substr(0, 2000) + "\n--- stderr ---\n" + r.err.substr(0, 2000);
  return s;
}

RunResult run_cepe_in(const fs::path& scratch, const std::vector<std::string>& args,
                      const std::vector<std::string>& prefix) {
  static std::atomic<int> counter{0};
  const int n = counter++;
  const fs::path out_path = scratch / ("stdout." + std::to_string(n));
  const fs::path err_path = scratch / ("stderr." + std::to_string(n));

  std::vector<std::string> full = {"timeout", "-k", "5", std::to_string(kCliTimeoutS)};
  full.insert(full.end(), prefix.begin(), prefix.end());
  full.push_back(CEPE_BINARY);
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);

  RunResult r;
  for (size_t i = 4; i < full.size(); ++i) r.cmdline += (i > 4 ? " " : "") + full[i];

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, "timeout", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    r.err = std::string("posix_spawnp failed: ") + std::strerror(rc);
    return r;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status)) {
    r.signaled = true;
    r.signal = WTERMSIG(status);
  } else if (WIFEXITED(status)) {
    r.exit_code = WEXITSTATUS(status);
  }
  r.out = read_text(out_path);
  r.err = read_text(err_path);
  fs::remove(out_path);
  fs::remove(err_path);
  return r;
}

::testing::AssertionResult Finished(const RunResult& r) {
  if (r.signaled) return ::testing::AssertionFailure() << "crashed\n" << describe(r);
  if (r.exit_code == 124)
    return ::testing::AssertionFailure() << "timed out after " << kCliTimeoutS << " s\n" << describe(r);
  if (r.exit_code < 0 || r.exit_code >= 125) return ::testing::AssertionFailure() << "abnormal end\n" << describe(r);
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult Succeeded(const RunResult& r) {
  if (auto f = Finished(r); !f) return f;
  if (r.exit_code != 0) return ::testing::AssertionFailure() << "expected exit 0\n" << describe(r);
  if (r.err.find("error:") != std::string::npos)
    return ::testing::AssertionFailure() << "error on stderr\n" << describe(r);
  return ::testing::AssertionSuccess();
}

namespace {

::testing::AssertionResult clean_error(const RunResult& r, std::initializer_list<std::string_view> keywords,
                                       bool allow_stdout, int exit_code) {
  if (auto f = Finished(r); !f) return f;
  if (r.exit_code != exit_code)
    return ::testing::AssertionFailure() << "expected exit " << exit_code << "\n" << describe(r);
  if (r.err.rfind("error: ", 0) != 0)
    return ::testing::AssertionFailure() << "stderr does not start with 'error: '\n" << describe(r);
  if (r.err.back() != '\n' || r.err.find('\n') != r.err.size() - 1)
    return ::testing::AssertionFailure() << "stderr is not exactly one line\n" << describe(r);
  for (std::string_view k : keywords)
    if (r.err.find(k) == std::string::npos)
      return ::testing::AssertionFailure() << "message lacks '" << k << "'\n" << describe(r);
  if (!allow_stdout && !r.out.empty()) return ::testing::AssertionFailure() << "unexpected stdout\n" << describe(r);
  return ::testing::AssertionSuccess();
}

}  // namespace

::testing::AssertionResult CleanError(const RunResult& r, std::initializer_list<std::string_view> keywords,
                                      bool allow_stdout) {
  return clean_error(r, keywords, allow_stdout, 1);
}

::testing::AssertionResult CleanUsageError(const RunResult& r, std::initializer_list<std::string_view> keywords) {
  return clean_error(r, keywords, /*allow_stdout=*/false, 2);
}

void CliScratchTest::SetUp() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  dir_ = fs::temp_directory_path() /
         ("cepe-cli-" + std::string(info->test_suite_name()) + "-" + info->name() + "-" + std::to_string(::getpid()));
  fs::remove_all(dir_);
  fs::create_directories(dir_);
}

void CliScratchTest::TearDown() {
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

}  // namespace cepe::testing
