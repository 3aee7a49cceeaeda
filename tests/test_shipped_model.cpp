// The shipped default model (models/cepe-tiny) still does what its card says, on text that is in no training
// stage (the GPL-3, on every Debian system): the encoder's context lowers the decoder's perplexity, and a pass
// key far beyond the 256-token window is retrieved, in-process and through `cepe generate` text mode. These are
// regression checks on the committed weights and on the code that runs them, with margins a healthy model clears
// easily (docs/evaluation.md has the full figures).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_runner.h"

namespace cepe::testing {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
const fs::path kShipped = fs::path(CEPE_TEST_DATA) / ".." / ".." / "models" / "cepe-tiny";
const char* kLicense = "/usr/share/common-licenses/GPL-3";

class ShippedModel : public CliScratchTest {
 protected:
  void SetUp() override {
    CliScratchTest::SetUp();
    if (!fs::exists(kShipped / "config.json")) GTEST_SKIP() << "no shipped model at " << kShipped;
    if (!fs::exists(kLicense)) GTEST_SKIP() << "no " << kLicense;
  }
  std::string model() const { return kShipped.lexically_normal().string(); }
};

TEST_F(ShippedModel, ContextLowersPerplexityOnUnseenText) {
  const RunResult r = run_cepe({"perplexity", "-m", model(), "-f", kLicense, "--protocol", "cepe", "--context-tokens",
                                "0,512,2048", "--max-windows", "4", "--json", path("p.json"), "-q"});
  ASSERT_TRUE(Succeeded(r)) << describe(r);
  const json rows = json::parse(read_text(path("p.json")));
  ASSERT_EQ(rows.size(), 3u);
  const double none = rows[0]["ppl"], some = rows[1]["ppl"], more = rows[2]["ppl"];
  EXPECT_EQ(rows[0]["context_tokens"], 0);
  EXPECT_EQ(rows[2]["context_tokens"], 2048);
  EXPECT_LT(some, none * 0.97) << "512 context tokens barely help";
  EXPECT_LT(more, some) << "2048 context tokens are worse than 512";
}

TEST_F(ShippedModel, RetrievesAPassKeyFarBeyondItsWindowInProcessAndInTextMode) {
  const RunResult r = run_cepe({"passkey", "-m", model(), "-f", kLicense, "--context-tokens", "4096", "--depths",
                                "0,0.5,1", "--trials", "2", "--json", path("k.json"), "--save-cases", path("cases"),
                                "-q"});
  ASSERT_TRUE(Succeeded(r)) << describe(r);
  const json j = json::parse(read_text(path("k.json")));
  ASSERT_EQ(j["cases"].size(), 6u);
  int correct = 0;
  for (const json& c : j["cases"]) correct += c["correct"].get<bool>();
  EXPECT_GE(correct, 5) << "pass keys at 16x the window: " << correct << "/6";

  // The first case again as a user runs it: the saved text through generate's own tokenizing and chunking.
  const json& c = j["cases"][0];
  const std::string key = c["key"];
  const RunResult g = run_cepe({"generate", "-m", model(), "-c", path("cases") + "/case-0000.txt", "-p",
                                "What is the pass key? The pass key is", "--greedy", "-n", "8"});
  ASSERT_TRUE(Succeeded(g)) << describe(g);
  EXPECT_NE(g.out.find("The pass key is " + key), std::string::npos) << g.out;
}

}  // namespace
}  // namespace cepe::testing
