// Hostile inputs (issue 7): one regression test for each kind the fuzzers and the bad-input sweep found. Each must
// end in exactly one `error: ...` line naming the file and field, exit status 1, no signal, no hang and no leftover
// file; the in-process tests check the shared pieces (JSON reader, finite checks, interrupt cleanup) directly.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cepe/context.h"
#include "cepe/safetensors.h"
#include "cepe/tensor.h"
#include "cepe/tokenizer.h"
#include "cli_runner.h"
#include "core/atomic_file.h"
#include "core/interrupt.h"
#include "core/json_file.h"
#include "core/safetensors_writer.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using namespace cepe::testing;

const fs::path kFixture = fs::path(CEPE_TEST_DATA) / "cepe-tiny-a";

std::string nested_array(size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

// The whole error text of a cepe::Error thrown by `f`, or "" when nothing is thrown.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const cepe::Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, std::initializer_list<std::string> words) {
  for (const auto& w : words)
    if (s.find(w) == std::string::npos) return false;
  return true;
}

class Hostile : public CliScratchTest {
 protected:
  // A copy of the fixture with config.json replaced by `config_text` (the weights unchanged).
  std::string model_with_config(const std::string& config_text, const std::string& name = "m") {
    const fs::path m = dir_ / name;
    fs::create_directories(m);
    for (const char* f : {"model.safetensors", "tokenizer.model"})
      fs::copy_file(kFixture / f, m / f, fs::copy_options::overwrite_existing);
    write_text(m / "config.json", config_text);
    return m.string();
  }
  json fixture_config() const { return json::parse(read_text(kFixture / "config.json")); }

  // A copy of the fixture whose tensor `name` holds `value` at flat index `at`.
  std::string model_with_poison(const std::string& name, float value, int64_t at = 0, const std::string& dir = "p") {
    const fs::path m = dir_ / dir;
    fs::create_directories(m);
    for (const char* f : {"config.json", "tokenizer.model"})
      fs::copy_file(kFixture / f, m / f, fs::copy_options::overwrite_existing);
    const cepe::SafeTensors st = cepe::SafeTensors::open((kFixture / "model.safetensors").string());
    std::map<std::string, cepe::Tensor> all;
    for (const std::string& n : st.names()) all[n] = st.get(n).clone();
    EXPECT_TRUE(all.count(name)) << name;
    all[name].f32()[at] = value;
    cepe::save_safetensors((m / "model.safetensors").string(), all);
    return m.string();
  }

  std::string write(const std::string& name, const std::string& text) {
    write_text(dir_ / name, text);
    return path(name);
  }
  RunResult forward(const std::string& model, const std::string& req) {
    return run_cepe({"forward", "-m", model, "--request", req, "-o", path("out.json")});
  }
  std::string good_request() { return write("good.json", R"({"input_ids": [[1, 5, 9]]})"); }
  // Files in the scratch directory other than the runner's own and those listed.
  std::vector<std::string> leftovers(const fs::path& where) const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(where)) {
      const std::string n = e.path().filename().string();
      if (n.find(".tmp.") != std::string::npos) out.push_back(n);
    }
    return out;
  }
};

// --- 1. Deep nesting: an error, not a stack overflow ---------------------------------------------------------------

TEST(HostileJson, DeepNestingIsRefusedEverywhere) {
  const std::string deep = nested_array(100000);
  EXPECT_TRUE(contains(error_of([&] { cepe::parse_json(deep, "x.json"); }), {"x.json", "nested deeper than 64"}));
  EXPECT_TRUE(contains(error_of([&] { cepe::parse_json("{\"a\": {\"b\": " + deep + "}}", "x.json"); }),
                       {"nested deeper", "field 'a.b[0]"}));
  // 64 levels are fine, 65 are not.
  EXPECT_NO_THROW(cepe::parse_json(nested_array(64), "x"));
  EXPECT_FALSE(error_of([&] { cepe::parse_json(nested_array(65), "x"); }).empty());
}

TEST_F(Hostile, DeepRequestIsRefused) {
  for (const std::string& req : {"{\"input_ids\": " + nested_array(100000) + "}", nested_array(100000),
                                 "{\"input_ids\": [[1]], \"attention_mask\": [" + nested_array(100000) + "]}"}) {
    const RunResult r = forward(kFixture.string(), write("deep.json", req));
    EXPECT_TRUE(CleanError(r, {"deep.json"})) << describe(r);
    EXPECT_LT(r.err.size(), 400u) << r.err.substr(0, 500);
  }
}

TEST_F(Hostile, DeepConfigIsRefused) {
  json cfg = fixture_config();
  std::string text = cfg.dump();
  text.insert(1, "\"extra\": " + nested_array(100000) + ", ");
  const RunResult r = forward(model_with_config(text), good_request());
  EXPECT_TRUE(CleanError(r, {"config.json", "nested deeper than 64", "extra"})) << describe(r);
  EXPECT_LT(r.err.size(), 400u);
}

// A safetensors file whose header is `header` (no data unless `data_bytes`).
std::string safetensors_with_header(const fs::path& p, const std::string& header, size_t data_bytes = 0) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>(static_cast<uint64_t>(header.size()) >> (8 * i));
  bytes += header;
  bytes.append(data_bytes, '\0');
  write_text(p, bytes);
  return p.string();
}

TEST_F(Hostile, DeepSafetensorsHeaderIsRefused) {
  const std::string deep = nested_array(100000);
  for (const std::string& h : {"{\"w\":{\"dtype\":\"F32\",\"shape\":" + deep + ",\"data_offsets\":[0,4]}}",
                               "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":" + deep + "}}"}) {
    const std::string p = safetensors_with_header(dir_ / "deep.safetensors", h, 4);
    const std::string e = error_of([&] { cepe::SafeTensors::open(p); });
    EXPECT_TRUE(contains(e, {"deep.safetensors", "header", "nested deeper than 64"})) << e;
    EXPECT_LT(e.size(), 400u);
  }
  // The same inside a checkpoint: one error line from the CLI.
  const fs::path m = dir_ / "deepmodel";
  fs::create_directories(m);
  fs::copy_file(kFixture / "config.json", m / "config.json");
  safetensors_with_header(m / "model.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":" + deep + ",\"data_offsets\":[0,4]}}", 4);
  EXPECT_TRUE(CleanError(forward(m.string(), good_request()), {"model.safetensors", "nested deeper"}));
}

// --- 2. A huge request under an address-space limit: an out-of-memory error, not std::terminate ------------------

TEST_F(Hostile, HugeRequestUnderAddressSpaceLimit) {
#ifdef CEPE_SANITIZED
  GTEST_SKIP() << "ASan reserves terabytes of shadow address space: a process under prlimit --as cannot start";
#endif
  std::string req = "{\"input_ids\": [[";
  const size_t n = 100000000;  // 200 MB of text
  req.reserve(2 * n + 32);
  for (size_t i = 0; i + 1 < n; ++i) req += "1,";
  req += "1]]}";
  const std::string p = write("huge.json", req);
  req = std::string();
  const RunResult r = run_cepe({"forward", "-m", kFixture.string(), "--request", p, "-o", path("out.json")},
                               {"prlimit", "--as=1500000000", "--"});
  EXPECT_TRUE(CleanError(r, {"huge.json", "out of memory", "input_ids"})) << describe(r);
  EXPECT_FALSE(fs::exists(dir_ / "out.json"));
}

// --- 3. NaN/Inf weights: an error naming the tensor or the step, never `⁇` tokens with exit 0 ---------------------

TEST_F(Hostile, NonFiniteNormIsRefusedAtLoad) {
  const std::string m = model_with_poison("model.norm.weight", std::numeric_limits<float>::quiet_NaN(), 3);
  EXPECT_TRUE(CleanError(forward(m, good_request()), {"model.norm.weight", "NaN", "[3]"}));
  const std::string m2 = model_with_poison("encoder.layers.1.input_layernorm.weight",
                                           -std::numeric_limits<float>::infinity(), 0, "p2");
  EXPECT_TRUE(CleanError(forward(m2, good_request()), {"encoder.layers.1.input_layernorm.weight", "-Inf"}));
}

TEST_F(Hostile, NonFiniteLmHeadFailsTheStep) {
  // Row 7 of lm_head: the logit of token 7 is NaN at every position.
  const std::string m = model_with_poison("lm_head.weight", std::numeric_limits<float>::quiet_NaN(), 7 * 64);
  EXPECT_TRUE(CleanError(forward(m, good_request()), {"logits", "NaN", "7]"}));
  EXPECT_FALSE(fs::exists(dir_ / "out.json"));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", m, "-p", "hello", "-n", "4", "--greedy"}), {"prefill", "logits", "NaN"},
                         /*allow_stdout=*/true));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", m, "--request", good_request(), "-o", path("g.json"), "-n", "3"}),
                         {"logits", "NaN"}));
  EXPECT_FALSE(fs::exists(dir_ / "g.json"));
}

TEST_F(Hostile, NonFiniteEncoderFailsEveryStrategyAndEncode) {
  const std::string m = model_with_poison("encoder.layers.0.mlp.down_proj.weight", std::numeric_limits<float>::infinity(), 5);
  for (const char* mode : {"absorbed", "auto", "recompute", "cached"}) {
    const RunResult r = run_cepe({"generate", "-m", m, "-p", "hello", "--context-text", "some context to read here", "-n",
                                  "3", "--greedy", "--cross-attn", mode});
    EXPECT_TRUE(CleanError(r, {"encoder states are not finite", "chunk 0"}, /*allow_stdout=*/true)) << mode << describe(r);
  }
  const RunResult r = run_cepe({"encode", "-m", m, "--context-text", "some context", "-o", path("c.ctx")});
  EXPECT_TRUE(CleanError(r, {"encoder states are not finite"})) << describe(r);
  EXPECT_FALSE(fs::exists(dir_ / "c.ctx"));
}

TEST(HostileFinite, CheckFiniteNamesTheIndex) {
  cepe::Tensor t = cepe::Tensor::zeros(cepe::DType::F32, {2, 3});
  EXPECT_NO_THROW(cepe::check_finite(t, "t"));
  t.f32()[4] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(contains(error_of([&] { cepe::check_finite(t, "t"); }), {"t holds +Inf at [1, 1] of [2, 3]"}));
  cepe::Tensor h = cepe::Tensor::zeros(cepe::DType::BF16, {5});
  h.data<uint16_t>()[2] = 0x7fc0;  // bf16 NaN
  EXPECT_TRUE(contains(error_of([&] { cepe::check_finite(h, "h"); }), {"NaN at [2]"}));
  std::vector<float> v(5000, 1.0f);
  EXPECT_EQ(cepe::first_non_finite(v.data(), 5000), -1);
  v[4321] = std::nanf("");
  EXPECT_EQ(cepe::first_non_finite(v.data(), 5000), 4321);
}

// --- 4. Encoded-context files whose layout lies -----------------------------------------------------------------

class HostileContext : public Hostile {
 protected:
  // A valid context file of the fixture, then its tensors and metadata for rewriting.
  void SetUp() override {
    Hostile::SetUp();
    const RunResult r = run_cepe({"encode", "-m", kFixture.string(), "--context-text", "a context of some tokens",
                                  "--chunk-len", "4", "-o", path("good.ctx")});
    ASSERT_TRUE(Succeeded(r)) << describe(r);
    const cepe::SafeTensors st = cepe::SafeTensors::open(path("good.ctx"));
    meta_ = st.metadata();
    for (const std::string& n : st.names()) tensors_[n] = st.get(n).clone();
  }
  std::string rewritten(const std::map<std::string, std::string>& meta_changes, const std::string& name = "bad.ctx") {
    auto meta = meta_;
    for (const auto& [k, v] : meta_changes) meta[k] = v;
    cepe::save_safetensors(path(name), tensors_, meta);
    return path(name);
  }
  RunResult generate_with(const std::string& ctx) {
    return run_cepe({"generate", "-m", kFixture.string(), "--ctx", ctx, "-p", "hi", "-n", "2", "--greedy"});
  }
  std::map<std::string, std::string> meta_;
  std::map<std::string, cepe::Tensor> tensors_;
};

TEST_F(HostileContext, LayoutThatOverflowsOrIsEmptyIsRefused) {
  const int64_t keys = tensors_.at("mask").dim(1);
  ASSERT_EQ(std::stoll(meta_.at("n_ctx")) * std::stoll(meta_.at("ctx_len")), keys);
  // n_ctx * ctx_len wraps around 2^64 to exactly the real key count.
  const uint64_t wrap_n = (uint64_t{1} << 62) + 1;
  const std::string big_len = std::to_string(keys);
  EXPECT_TRUE(CleanError(generate_with(rewritten({{"n_ctx", std::to_string(wrap_n)}, {"ctx_len", big_len}})),
                         {"bad.ctx", "n_ctx", "does not match"}));
  EXPECT_TRUE(CleanError(generate_with(rewritten({{"ctx_len", "0"}})), {"bad.ctx", "ctx_len 0"}));
  EXPECT_TRUE(CleanError(generate_with(rewritten({{"n_ctx", "0"}})), {"bad.ctx", "n_ctx 0"}));
  EXPECT_TRUE(CleanError(generate_with(rewritten({{"batch", "0"}})), {"bad.ctx", "batch"}));
  EXPECT_TRUE(CleanError(generate_with(rewritten({{"n_ctx", "99999999999999999999"}})), {"bad.ctx", "n_ctx"}));
}

TEST_F(HostileContext, NonFiniteStatesAreRefused) {
  tensors_.at("states.0").f32()[10] = std::numeric_limits<float>::quiet_NaN();
  for (const char* mode : {"absorbed", "auto"}) {
    const RunResult r = run_cepe({"generate", "-m", kFixture.string(), "--ctx", rewritten({}), "-p", "hi", "-n", "2",
                                  "--greedy", "--cross-attn", mode});
    EXPECT_TRUE(CleanError(r, {"bad.ctx", "states.0", "NaN"})) << describe(r);
  }
}

// --- 5/6/7/8/10. Config values and options -------------------------------------------------------------------

TEST_F(Hostile, ConfigNumbersOutOfRange) {
  const std::string req = good_request();
  // The fixture's config with `key` set to the raw JSON text `raw`.
  auto with = [&](const std::string& key, const std::string& raw) {
    json j = fixture_config();
    j.erase(key);
    std::string text = j.dump();
    text.insert(1, "\"" + key + "\": " + raw + ", ");
    return forward(model_with_config(text), req);
  };
  EXPECT_TRUE(CleanError(with("vocab_size", "1e300"), {"config.json", "vocab_size", "integer"}));
  EXPECT_TRUE(CleanError(with("vocab_size", "-1e300"), {"config.json", "vocab_size"}));
  EXPECT_TRUE(CleanError(with("hidden_size", "18446744073709551615"), {"config.json", "hidden_size"}));
  EXPECT_TRUE(CleanError(with("vocab_size", "1e400"), {"config.json", "vocab_size", "out of range"}));
  EXPECT_TRUE(CleanError(with("rope_theta", "1e400"), {"config.json", "rope_theta", "out of range"}));
  EXPECT_TRUE(CleanError(with("eos_token_id", "1099511627776"), {"config.json", "eos_token_id"}));
  EXPECT_TRUE(CleanError(with("eos_token_id", "-5"), {"config.json", "eos_token_id", "-5"}));
  EXPECT_TRUE(CleanError(with("bos_token_id", "512"), {"config.json", "bos_token_id", "512", "[0, 512)"}));
  EXPECT_TRUE(CleanError(with("pad_token_id", "-5"), {"config.json", "pad_token_id"}));
  // -1 is how older LLaMA conversions say "no pad token": accepted.
  const RunResult ok = with("pad_token_id", "-1");
  EXPECT_TRUE(Succeeded(ok)) << describe(ok);
  // A 10,000-deep value: a short error, not a 20 KB line quoting it.
  const RunResult deep = with("rope_scaling", nested_array(10000));
  EXPECT_TRUE(CleanError(deep, {"config.json", "rope_scaling"}));
  EXPECT_LT(deep.err.size(), 400u);
  const RunResult wide = with("rope_scaling", "[" + std::string(20000, '1') + "]");
  EXPECT_TRUE(CleanError(wide, {"config.json", "rope_scaling"}));
  EXPECT_LT(wide.err.size(), 400u);
}

TEST_F(Hostile, DuplicateKeysAreRefused) {
  std::string text = fixture_config().dump();
  text.insert(1, "\"vocab_size\": 512, ");
  EXPECT_TRUE(CleanError(forward(model_with_config(text), good_request()), {"config.json", "duplicate key 'vocab_size'"}));
  std::string nested = fixture_config().dump();
  const size_t enc = nested.find("\"encoder_config\":{");
  ASSERT_NE(enc, std::string::npos);
  nested.insert(enc + 18, "\"hidden_size\":64,\"hidden_size\":64,");
  EXPECT_TRUE(CleanError(forward(model_with_config(nested, "m2"), good_request()),
                         {"config.json", "duplicate key 'hidden_size'", "encoder_config"}));
  EXPECT_TRUE(CleanError(forward(kFixture.string(), write("dup.json", R"({"input_ids": [[1]], "input_ids": [[2]]})")),
                         {"dup.json", "duplicate key 'input_ids'"}));
}

TEST_F(Hostile, RequestNumbersOutOfRange) {
  EXPECT_TRUE(CleanError(forward(kFixture.string(), write("r.json", R"({"input_ids": [[1, 1e400]]})")),
                         {"r.json", "out of range", "input_ids[0][1]"}));
  EXPECT_TRUE(CleanError(forward(kFixture.string(), write("r.json", R"({"input_ids": [[1, 18446744073709551615]]})")),
                         {"r.json", "out of range", "input_ids[0][1]"}));
  EXPECT_TRUE(CleanError(forward(kFixture.string(), write("r.json", R"({"input_ids": [[1, 2.5]]})")),
                         {"r.json", "expected an integer", "input_ids[0][1]"}));
  EXPECT_TRUE(CleanError(forward(kFixture.string(), write("r.json", R"({"input_ids": [[1, 2], [3]]})")),
                         {"r.json", "ragged", "input_ids[1]"}));
  EXPECT_TRUE(CleanError(forward(kFixture.string(), write("r.json", R"({"input_ids": [[1, {"a": 1}]]})")),
                         {"r.json", "input_ids[0][1]", "object"}));
}

TEST_F(Hostile, NumericOptionsAreValidated) {
  const std::vector<std::string> base = {"generate", "-m", kFixture.string(), "-p", "hi", "-n", "2"};
  auto with = [&](std::initializer_list<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra);
    return run_cepe(a);
  };
  EXPECT_TRUE(CleanError(with({"-t", "-5"}), {"--threads", "-5", "out of range"}));
  EXPECT_TRUE(CleanError(with({"-t", "99999999999"}), {"--threads", "out of range"}));
  EXPECT_TRUE(CleanError(with({"-t", " 4"}), {"--threads", "not an integer"}));
  EXPECT_TRUE(CleanError(with({"--mem-budget", "1e30T"}), {"--mem-budget", "1e30T", "larger than any memory"}));
  EXPECT_TRUE(CleanError(with({"--mem-budget", "inf"}), {"--mem-budget"}));
  EXPECT_TRUE(CleanError(with({"--temp", "inf"}), {"--temp", "not a number"}));
  EXPECT_TRUE(CleanError(with({"--temp", "1e999"}), {"--temp"}));
  EXPECT_TRUE(CleanError(run_cepe({"bench", "-m", kFixture.string(), "--context-tokens", "64", "--mem-budget", "1e30T"}),
                         {"--mem-budget", "larger than any memory"}));
  EXPECT_TRUE(CleanError(run_cepe({"encode", "-m", kFixture.string(), "--context-text", "x", "-o", path("x.ctx"), "-t", "-1"}),
                         {"--threads"}));
  // Valid extremes still run.
  EXPECT_TRUE(Succeeded(with({"-t", "1", "--mem-budget", "1T", "--greedy"})));
}

// --- 9. Interrupts: no temporary file left behind, one error line, exit 1 -----------------------------------------

// Runs `body` in a child process with the interrupt handler installed; returns its wait status.
template <class F>
int in_child(F&& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    cepe::install_interrupt_cleanup();
    body();
    ::_exit(0);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

TEST_F(Hostile, InterruptMidWriteRemovesTheTemporaryFile) {
  for (const int sig : {SIGINT, SIGTERM}) {
    const std::string out = path("x.bin");
    const int status = in_child([&] {
      cepe::write_file_atomic(out, [&](std::FILE* f) {
        std::fputs("partial", f);
        std::fflush(f);
        ::raise(sig);
        ::pause();
      });
    });
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
    EXPECT_FALSE(fs::exists(out));
    EXPECT_TRUE(leftovers(dir_).empty()) << leftovers(dir_)[0];

    const std::string st = path("x.safetensors");
    const int status2 = in_child([&] {
      cepe::SafeTensorsWriter w(st, {{"t", cepe::DType::F32, {1024}}});
      std::vector<float> half(512, 1.0f);
      w.write(half.data(), half.size() * sizeof(float));
      ::raise(sig);
      ::pause();
    });
    EXPECT_TRUE(WIFEXITED(status2) && WEXITSTATUS(status2) == 1) << status2;
    EXPECT_FALSE(fs::exists(st));
    EXPECT_TRUE(leftovers(dir_).empty());
  }
}

TEST_F(Hostile, InterruptedEncodeLeavesNothing) {
  // Long enough (several seconds of encoding on a fast AVX-512 core; three copies were done in 0.4 s there) that
  // the signal lands while it runs.
  const std::string gpl = read_text("/usr/share/common-licenses/GPL-3");
  ASSERT_FALSE(gpl.empty());
  std::string text;
  for (int i = 0; i < 16; ++i) text += gpl;
  const std::string ctx = write("long.txt", text);
  for (const char* sig : {"INT", "TERM"}) {
    const RunResult r = run_cepe({"encode", "-m", kFixture.string(), "-c", ctx, "--chunk-len", "32", "-o", path("c.ctx")},
                                 {"timeout", "--preserve-status", "-s", sig, "0.4"});
    ASSERT_TRUE(Finished(r)) << describe(r);
    EXPECT_EQ(r.exit_code, 1) << describe(r);
    const std::string last = r.err.substr(r.err.rfind("error:") == std::string::npos ? 0 : r.err.rfind("error:"));
    EXPECT_TRUE(contains(last, {"error: interrupted by SIG", sig})) << r.err;
    EXPECT_FALSE(fs::exists(dir_ / "c.ctx"));
    EXPECT_TRUE(leftovers(dir_).empty());
  }
}

// --- 11. Empty context files ------------------------------------------------------------------------------------

TEST_F(Hostile, EmptyContextFileIsAnError) {
  const std::string empty = write("empty.txt", "");
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", kFixture.string(), "-p", "hi", "-c", empty, "-n", "2"}),
                         {"empty.txt", "empty"}));
  EXPECT_TRUE(CleanError(run_cepe({"encode", "-m", kFixture.string(), "-c", empty, "-o", path("e.ctx")}),
                         {"empty.txt", "empty"}));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", kFixture.string(), "-p", "hi", "--context-text", "", "-n", "2"}),
                         {"--context-text 1", "empty"}));
  EXPECT_FALSE(fs::exists(dir_ / "e.ctx"));
}

// --- The streaming field reader, in process ---------------------------------------------------------------------

TEST_F(Hostile, FieldReaderShapesAndErrors) {
  using Kind = cepe::JsonFieldSpec::Kind;
  const std::vector<cepe::JsonFieldSpec> specs = {{"a", Kind::Integers, 2}, {"p", Kind::Numbers, 3}, {"s", Kind::Scalar, 0}};
  auto f = cepe::read_json_fields(write("f.json", R"({"a": [[1, -2, 3], [4, 5, 6]], "p": [[[0.5], [1]]], "s": "drop"})"),
                                  "request", specs);
  EXPECT_EQ(f["a"].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f["a"].ints, (std::vector<int64_t>{1, -2, 3, 4, 5, 6}));
  EXPECT_EQ(f["p"].shape, (std::vector<int64_t>{1, 2, 1}));
  EXPECT_EQ(f["p"].numbers, (std::vector<double>{0.5, 1.0}));
  EXPECT_EQ(f["s"].scalar, json("drop"));
  auto err = [&](const std::string& text) {
    return error_of([&] { cepe::read_json_fields(write("f.json", text), "request", specs); });
  };
  EXPECT_TRUE(contains(err(R"({"a": [[1], [2, 3]]})"), {"f.json", "a[1]", "ragged"}));
  EXPECT_TRUE(contains(err(R"({"a": [[]]})"), {"empty dimension"}));
  EXPECT_TRUE(contains(err(R"({"a": [1]})"), {"2-dimensional"}));
  EXPECT_TRUE(contains(err(R"({"a": [[[1]]]})"), {"expected an integer, got an array"}));
  EXPECT_TRUE(contains(err(R"({"s": [1]})"), {"'s'", "got an array"}));
  EXPECT_TRUE(contains(err(R"({"b": 1})"), {"unknown field 'b'", "expected a, p, s"}));
  EXPECT_TRUE(contains(err(R"({"a": [[1]], "a": [[1]]})"), {"duplicate key 'a'"}));
  EXPECT_TRUE(contains(err(R"([1])"), {"expected a JSON object"}));
  EXPECT_TRUE(contains(err(R"({"a": [[1,]]})"), {"malformed JSON", "a[0][1]"}));
  EXPECT_TRUE(contains(err(""), {"f.json", "malformed JSON"}));
  const std::string big(2000, 'x');
  EXPECT_LT(err("{\"a\": [[\"" + big + "\"]]}").size(), 300u);
  EXPECT_LT(err("{\"" + big + "\": 1}").size(), 300u);
}

TEST(HostileJson, ExcerptIsBounded) {
  json big = json::array();
  for (int i = 0; i < 100000; ++i) big.push_back(i);
  EXPECT_LE(cepe::json_excerpt(big).size(), 60u);
  EXPECT_EQ(cepe::json_excerpt(json::parse("[1,2]")), "[1,2]");
  EXPECT_LE(cepe::json_excerpt(json(std::string(100000, 'a'))).size(), 60u);
  // Invalid UTF-8 in a string does not throw (nlohmann's dump() would).
  EXPECT_NO_THROW(cepe::json_excerpt(json(std::string("\xff\xfe"))));
}

}  // namespace

// --- Tokenizer models whose normalization tables would make SentencePiece read out of bounds ----------------------

namespace {

TEST(HostileTokenizer, CorruptCharsmapIsRefusedValidOneLoads) {
  const fs::path fuzz = fs::path(CEPE_TEST_DATA).parent_path() / "fuzz";
  // A real nmt_nfkc model (SentencePiece trained on GPL-3, 300 pieces) has a 237 KB charsmap: it must load.
  const cepe::Tokenizer ok = cepe::Tokenizer::load((fuzz / "corpus/tokenizer/nfkc_gpl3.model").string());
  EXPECT_EQ(ok.decode(ok.encode("\xef\xbc\xa1 license", false)), "A license");  // NFKC: fullwidth A -> A
  // Found by fuzz_tokenizer: a denormalizer trie of under one unit, which SentencePiece reads past.
  const std::string e = error_of(
      [&] { cepe::Tokenizer::load((fuzz / "regressions/tokenizer/charsmap_out_of_bounds.model").string()); });
  EXPECT_TRUE(contains(e, {"charsmap_out_of_bounds.model", "precompiled_charsmap", "corrupt or hostile"})) << e;
}

}  // namespace
