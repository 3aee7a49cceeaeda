// The CPU feature probe against the kernel's own view (/proc/cpuinfo "flags"), which Linux also masks by the
// register state it enables, so the two must agree on every feature both name.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "core/cpu_features.h"

namespace cepe {
namespace {

std::set<std::string> proc_cpu_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

TEST(CpuFeatures, AgreesWithProcCpuinfo) {
#if !defined(__x86_64__) && !defined(__i386__)
  GTEST_SKIP() << "x86 only";
#endif
  const std::set<std::string> flags = proc_cpu_flags();
  if (flags.empty()) GTEST_SKIP() << "no flags line in /proc/cpuinfo";
  const CpuFeatures& f = cpu_features();
  const std::pair<const char*, bool> features[] = {
      {"sse4_2", f.sse42},         {"avx", f.avx},           {"avx2", f.avx2},
      {"fma", f.fma},              {"f16c", f.f16c},         {"bmi2", f.bmi2},
      {"avx_vnni", f.avx_vnni},    {"avx512f", f.avx512f},   {"avx512dq", f.avx512dq},
      {"avx512cd", f.avx512cd},    {"avx512bw", f.avx512bw}, {"avx512vl", f.avx512vl},
      {"avx512_vnni", f.avx512_vnni}, {"avx512_bf16", f.avx512_bf16}, {"avx512_fp16", f.avx512_fp16}};
  for (const auto& [name, have] : features) EXPECT_EQ(have, flags.count(name) == 1) << name;
}

TEST(CpuFeatures, ExtensionsImplyTheirBase) {
  const CpuFeatures& f = cpu_features();
  // EXPECT_* expand to an if/else, hence the "a implies b" form rather than `if (a) EXPECT_TRUE(b)`.
  EXPECT_TRUE(!(f.avx2 || f.fma || f.f16c) || f.avx);
  for (bool x : {f.avx512dq, f.avx512cd, f.avx512bw, f.avx512vl, f.avx512_vnni, f.avx512_bf16, f.avx512_fp16})
    EXPECT_TRUE(!x || f.avx512f);
  EXPECT_TRUE(!f.avx512f || f.avx);
  EXPECT_EQ(&f, &cpu_features());  // probed once
}

}  // namespace
}  // namespace cepe
