// `cepe grad` against PyTorch autograd through the original reference (tests/data/grad-*/, written by
// tests/reference/make_grad_goldens.py): the loss within 1e-5 relative, every gradient within 2e-4 of its
// tensor's largest |value|, and exactly the trainable set's names. Then the bad requests of the contract.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <set>

#include <nlohmann/json.hpp>

#include "cepe/safetensors.h"
#include "cli_runner.h"
#include "golden.h"

namespace cepe {
namespace {

namespace fs = std::filesystem;
using testing::CleanError;
using testing::data_dir;
using testing::Succeeded;

std::string model_dir_of(const std::string& spec) {
  const std::string shared = "shared:";
  if (spec.rfind(shared, 0) == 0) {
    // The shared fixtures sit beside the repository (../shared); tests/data keeps a copy of cepe-tiny-a.
    const fs::path beside = fs::path(CEPE_TEST_DATA) / ".." / ".." / ".." / "shared" / spec.substr(shared.size());
    if (fs::exists(beside / "model.safetensors")) return beside.string();
    return data_dir(fs::path(spec).filename().string());
  }
  return data_dir(spec);
}

struct GradCase {
  std::string fixture, set, trainable_arg, file;
};

std::vector<GradCase> grad_cases() {
  std::vector<GradCase> out;
  for (const auto& entry : fs::directory_iterator(CEPE_TEST_DATA)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("grad-", 0) != 0) continue;
    const nlohmann::json g = nlohmann::json::parse(testing::read_text(entry.path() / "golden.json"));
    for (const auto& [set, s] : g.at("sets").items())
      if (s.value("written", false)) out.push_back({name, set, s.at("trainable_arg"), s.at("file")});
  }
  std::sort(out.begin(), out.end(), [](const GradCase& a, const GradCase& b) {
    return a.fixture + a.set < b.fixture + b.set;
  });
  return out;
}

class GradGolden : public testing::CliScratchTest, public ::testing::WithParamInterface<GradCase> {};

// One gradient against the reference's: within 2e-4 of the tensor's largest |value|.
void expect_gradient_matches(const SafeTensors& got, const SafeTensors& want, const std::string& name,
                             const std::string& where) {
  const Tensor a = got.get(name), b = want.get(name);
  ASSERT_EQ(a.shape(), b.shape()) << where << " " << name;
  float max_abs = 0, worst = 0;
  for (int64_t i = 0; i < b.numel(); ++i) max_abs = std::max(max_abs, std::abs(b.f32()[i]));
  for (int64_t i = 0; i < b.numel(); ++i) worst = std::max(worst, std::abs(a.f32()[i] - b.f32()[i]));
  EXPECT_LE(worst, 2e-4f * std::max(max_abs, 1e-30f))
      << where << " " << name << ": max |diff| " << worst << ", max |grad| " << max_abs;
}

TEST_P(GradGolden, MatchesReferenceAutograd) {
  const GradCase& c = GetParam();
  const fs::path dir = data_dir(c.fixture);
  const nlohmann::json g = nlohmann::json::parse(testing::read_text(dir / "golden.json"));
  const std::string out = path("grads.safetensors");
  const auto r = run_cepe({"grad", "--model", model_dir_of(g.at("model_dir")), "--request", (dir / "request.json").string(),
                           "--output", out, "--trainable", c.trainable_arg});
  ASSERT_TRUE(Succeeded(r));
  const auto want = SafeTensors::open((dir / c.file).string());
  const auto got = SafeTensors::open(out);
  const std::vector<std::string> wn = want.names(), gn = got.names();
  const std::set<std::string> want_names(wn.begin(), wn.end()), got_names(gn.begin(), gn.end());
  EXPECT_EQ(got_names, want_names) << "the gradients must be exactly the trainable set's";
  const float wl = want.get("loss").f32()[0], gl = got.get("loss").f32()[0];
  EXPECT_LE(std::abs(gl - wl), 1e-5 * std::abs(wl)) << "loss " << gl << " vs reference " << wl;
  for (const std::string& name : want.names()) {
    if (name == "loss" || !got.has(name)) continue;
    expect_gradient_matches(got, want, name, c.fixture);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GradGolden, ::testing::ValuesIn(grad_cases()),
                         [](const ::testing::TestParamInfo<GradCase>& info) {
                           std::string n = info.param.fixture.substr(5) + "_" + info.param.set;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

// Per-layer recomputation reruns the same kernels on the same layer inputs: the gradients are the same bits.
TEST_P(GradGolden, RecomputeGivesTheSameGradients) {
  const GradCase& c = GetParam();
  const fs::path dir = data_dir(c.fixture);
  const nlohmann::json g = nlohmann::json::parse(testing::read_text(dir / "golden.json"));
  const std::string plain = path("plain.safetensors"), redo = path("recompute.safetensors");
  for (const auto& [out, extra] : {std::pair{plain, std::string()}, std::pair{redo, std::string("--recompute")}}) {
    std::vector<std::string> a = {"grad", "--model", model_dir_of(g.at("model_dir")), "--request",
                                  (dir / "request.json").string(), "--output", out, "--trainable", c.trainable_arg};
    if (!extra.empty()) a.push_back(extra);
    ASSERT_TRUE(Succeeded(run_cepe(a)));
  }
  EXPECT_EQ(testing::read_text(plain), testing::read_text(redo)) << "gradients differ with --recompute";
}

// `encoder` (ours; the reference trains the encoder only with the cross-attention): the encoder's gradients do
// not depend on whether the cross-attention it flows through trains, so they are the encoder part of the
// reference's `cross_attn,encoder` gradients, and nothing else.
class GradEncoderSet : public testing::CliScratchTest {};

TEST_F(GradEncoderSet, IsTheEncoderPartOfTheReferenceCrossAttnEncoderGradients) {
  int checked = 0;
  for (const GradCase& c : grad_cases()) {
    if (c.trainable_arg != "cross_attn,encoder") continue;
    const fs::path dir = data_dir(c.fixture);
    const nlohmann::json g = nlohmann::json::parse(testing::read_text(dir / "golden.json"));
    const std::string out = path(c.fixture + ".safetensors");
    ASSERT_TRUE(Succeeded(run_cepe({"grad", "--model", model_dir_of(g.at("model_dir")), "--request",
                                    (dir / "request.json").string(), "--output", out, "--trainable", "encoder"})));
    const auto want = SafeTensors::open((dir / c.file).string());
    const auto got = SafeTensors::open(out);
    std::set<std::string> want_names = {"loss"};
    for (const std::string& n : want.names())
      if (n.rfind("encoder.", 0) == 0) want_names.insert(n);
    ASSERT_GT(want_names.size(), 2u) << c.fixture;
    const std::vector<std::string> gn = got.names();
    EXPECT_EQ(std::set<std::string>(gn.begin(), gn.end()), want_names) << c.fixture;
    for (const std::string& name : want_names) {
      if (got.has(name)) expect_gradient_matches(got, want, name, c.fixture);
    }
    ++checked;
  }
  EXPECT_GE(checked, 2) << "the cross_attn,encoder goldens (grad-multi-hid, grad-mini-kl-config)";
}

TEST(GradGoldenSet, CoversEveryArchitectureAndTheKl) {
  std::set<std::string> fixtures;
  for (const GradCase& c : grad_cases()) fixtures.insert(c.fixture);
  for (const char* f : {"grad-tiny-a", "grad-causal-tied", "grad-mlm", "grad-gqa-kl-drop", "grad-padded-batch-kl-smooth",
                        "grad-multi-hid", "grad-encoder-is-model"})
    EXPECT_TRUE(fixtures.count(f)) << f;
}

// --- bad requests: one error line naming the problem ---------------------------------------------------------

class GradErrors : public testing::CliScratchTest {
 protected:
  // The grad-gqa-kl-drop request with `edit` applied, written to the scratch dir.
  std::string request_with(const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = nlohmann::json::parse(testing::read_text(fs::path(data_dir("grad-gqa-kl-drop")) / "request.json"));
    edit(j);
    const std::string p = path("req.json");
    testing::write_text(p, j.dump());
    return p;
  }
  testing::RunResult grad(const std::string& req, const std::string& set = "cross_attn") {
    return run_cepe({"grad", "-m", data_dir("ref-gqa"), "--request", req, "-o", path("out.safetensors"), "--trainable", set});
  }
};

TEST_F(GradErrors, EveryBadRequestGetsOneClearError) {
  using J = nlohmann::json;
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j.erase("labels"); })), {"labels", "missing"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j["labels"][0].erase(0); })), {"labels"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j["labels"] = J::array({J::array({1, 2}), J::array({3, 4})}); })),
                         {"labels", "shape"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j["labels"][0][1] = 100000; })), {"labels", "100000"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j["labels"][0][1] = -5; })), {"labels", "-5"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j["distill_index"][0][0][0] = 100000; })), {"distill_index"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) {
                           for (auto& row : j["distill_prob"])
                             for (auto& p : row) p.erase(p.size() - 1);  // k columns instead of k+1
                         })),
                         {"distill_prob", "k+1"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j["distill_prob"][1][2][0] = 1.5; })), {"distill_prob", "[0, 1]"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j["distill_prob"][1][2][0] = -0.1; })), {"distill_prob"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j.erase("distill_prob"); })), {"distill_index", "distill_prob"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j["kl_loss_mode"] = "smooth"; })), {"kl_loss_mode", "smooth"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j["kl_loss_mode"] = "smooth_x"; })), {"kl_loss_mode"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j["kl_loss_cof"] = "2"; })), {"kl_loss_cof"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) { j["teacher"] = 1; })), {"teacher"}));
  EXPECT_TRUE(CleanError(grad(request_with([](J& j) {
                           for (auto& row : j["labels"])
                             for (auto& l : row) l = -100;
                         })),
                         {"labels", "no position"}));
  // The message lists every set that parses, from the one list.
  EXPECT_TRUE(CleanError(grad(request_with([](J&) {}), "decoder"),
                         {"--trainable", "decoder", "cross_attn, encoder, cross_attn,encoder or all"}));
  // `encoder` on a model whose encoder is its decoder would train nothing.
  const auto self_read = run_cepe({"grad", "-m", data_dir("ref-encoder-is-model"), "--request",
                                   (fs::path(data_dir("grad-encoder-is-model")) / "request.json").string(), "-o",
                                   path("out.safetensors"), "--trainable", "encoder"});
  EXPECT_TRUE(CleanError(self_read, {"encoder_is_model", "encoder"}));
  // A model without cross-attention has only `all`.
  const auto r = run_cepe({"grad", "-m", data_dir("grad-causal-tied"), "--request",
                           (fs::path(data_dir("grad-causal-tied")) / "request.json").string(), "-o",
                           path("out.safetensors"), "--trainable", "cross_attn"});
  EXPECT_TRUE(CleanError(r, {"LlamaForCausalLM", "all"}));
  EXPECT_FALSE(fs::exists(path("out.safetensors"))) << "a failed run writes nothing";
}

}  // namespace
}  // namespace cepe
