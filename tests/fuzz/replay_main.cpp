// A main() for the fuzz targets where libFuzzer is not linked (g++ builds, CEPE_FUZZ=OFF): runs
// LLVMFuzzerTestOneInput once on the empty input (libFuzzer does too) and once on every file given and
// every regular file in every directory given, so CI keeps each target compiling and its corpus passing.
//   fuzz_<target> FILE_OR_DIR...
// Exit status 0 when every input returned; a finding aborts (or is reported by the sanitizers, if built in).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

bool run_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "replay: cannot read %s\n", p.c_str());
    return false;
  }
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // An exactly sized heap copy, so a sanitizer build catches a read one byte past the input.
  const auto buf = std::make_unique<uint8_t[]>(bytes.size());
  std::copy(bytes.begin(), bytes.end(), buf.get());
  LLVMFuzzerTestOneInput(buf.get(), bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  LLVMFuzzerTestOneInput(nullptr, 0);
  size_t n = 1;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg = argv[i];
    std::error_code ec;
    if (std::filesystem::is_directory(arg, ec)) {
      std::vector<std::filesystem::path> files;  // sorted: the same order on every machine
      for (const auto& e : std::filesystem::directory_iterator(arg, ec))
        if (e.is_regular_file()) files.push_back(e.path());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) {
        std::fprintf(stderr, "replay: %s\n", f.c_str());
        ok = run_file(f) && ok;
        ++n;
      }
    } else {
      ok = run_file(arg) && ok;
      ++n;
    }
    if (ec) {
      std::fprintf(stderr, "replay: %s: %s\n", arg.c_str(), ec.message().c_str());
      ok = false;
    }
  }
  std::fprintf(stderr, "replay: %zu inputs%s\n", n, ok ? "" : ", some unreadable");
  return ok ? 0 : 1;
}
