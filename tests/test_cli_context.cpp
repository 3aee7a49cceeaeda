// End-to-end tests of encoded contexts and the tools around them, through the real binary (CEPE_BINARY) on
// tests/data/cepe-tiny-a: `cepe encode` + `generate --ctx` give exactly the text of encoding on the fly (f32 and
// bf16 states, inline and file contexts, several contexts combined), every --cross-attn strategy gives the same
// greedy text, --verbose reports the memory, bad context files fail cleanly, `cepe bench` writes its table, JSON
// and plot (and reports what does not fit a budget), and `cepe init` writes a checkpoint that `cepe forward` runs.
// Every run uses one thread (-t 1): on a busy machine the threads' barriers can stall a tiny run for a second or
// more; the multi-threaded kernels are tested in test_kernels.cpp and test_cli.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cepe/safetensors.h"
#include "cepe/tensor.h"
#include "cli_runner.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using namespace cepe::testing;

const fs::path kFixture = fs::path(CEPE_TEST_DATA) / "cepe-tiny-a";

// Long enough for several 16-token chunks (with a padded last one); the second is a different, shorter context.
constexpr const char* kContextA =
    "CEPE encodes 16 context chunks in parallel. Hello world! This is a longer piece of context text that spans "
    "several chunks of sixteen tokens each, so that the encoder sees more than one chunk.\n";
constexpr const char* kContextB = "Second file: the quick brown fox jumps over the lazy dog.\n";

// The lines of `text` that start with `prefix`.
std::vector<std::string> lines_starting_with(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix, 0) == 0) out.push_back(line);
  return out;
}

class CliContext : public CliScratchTest {
 protected:
  void SetUp() override {
    CliScratchTest::SetUp();
    write_text(dir_ / "a.txt", kContextA);
    write_text(dir_ / "b.txt", kContextB);
  }

  static std::string fixture() { return kFixture.string(); }

  // `cepe generate` of 12 greedy tokens after "Hello" on the fixture, with `extra` options.
  RunResult generate(const std::vector<std::string>& extra, const std::string& model = fixture()) const {
    std::vector<std::string> a = {"generate", "-m", model, "-p", "Hello", "-n", "12", "--greedy", "-t", "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return run_cepe(a);
  }
  // The stdout of a generate that must succeed and print the prompt first.
  std::string generated(const std::vector<std::string>& extra) const {
    const RunResult r = generate(extra);
    EXPECT_TRUE(Succeeded(r));
    EXPECT_EQ(r.out.rfind("Hello", 0), 0u) << r.out;
    return r.out;
  }
  // `cepe encode -m MODEL INPUTS... --chunk-len 16 EXTRA... -o NAME`, which must succeed; the path of NAME.
  std::string encode(const std::string& name, const std::vector<std::string>& inputs,
                     const std::vector<std::string>& extra = {}, const std::string& model = fixture()) const {
    std::vector<std::string> a = {"encode", "-m", model, "-t", "1"};
    a.insert(a.end(), inputs.begin(), inputs.end());
    a.insert(a.end(), {"--chunk-len", "16"});
    a.insert(a.end(), extra.begin(), extra.end());
    a.insert(a.end(), {"-o", path(name)});
    EXPECT_TRUE(Succeeded(run_cepe(a)));
    EXPECT_TRUE(fs::is_regular_file(dir_ / name)) << name;
    return path(name);
  }
};

// ---------------------------------------------------------------------------------------------------
// Encoded contexts give the text of encoding on the fly
// ---------------------------------------------------------------------------------------------------

TEST_F(CliContext, EncodedContextMatchesEncodingOnTheFly) {
  const std::string ctx = encode("a.ctx", {"-c", path("a.txt")});
  const std::string fresh = generated({"-c", path("a.txt"), "--chunk-len", "16"});
  EXPECT_EQ(generated({"--ctx", ctx}), fresh);
  // The comparison means something: the context changes the text.
  EXPECT_NE(generated({}), fresh);
  EXPECT_NE(generated({"-c", path("b.txt"), "--chunk-len", "16"}), fresh);
}

TEST_F(CliContext, Bf16StatesMatchEncodingOnTheFlyInBf16) {
  const std::string ctx16 = encode("a16.ctx", {"-c", path("a.txt")}, {"--ctx-dtype", "bf16"});
  const std::string ctx32 = encode("a32.ctx", {"-c", path("a.txt")});
  EXPECT_EQ(cepe::SafeTensors::open(ctx16).get("states.0").dtype(), cepe::DType::BF16);
  EXPECT_EQ(cepe::SafeTensors::open(ctx32).get("states.0").dtype(), cepe::DType::F32);
  EXPECT_LT(fs::file_size(ctx16), fs::file_size(ctx32));
  EXPECT_EQ(generated({"--ctx", ctx16}), generated({"-c", path("a.txt"), "--chunk-len", "16", "--ctx-dtype", "bf16"}));
}

TEST_F(CliContext, InlineContextEqualsFile) {
  const std::string from_file = generated({"-c", path("a.txt"), "--chunk-len", "16"});
  EXPECT_EQ(generated({"--context-text", kContextA, "--chunk-len", "16"}), from_file);
  // Also through `cepe encode`.
  const std::string ctx = encode("inline.ctx", {"--context-text", kContextA});
  EXPECT_EQ(generated({"--ctx", ctx}), from_file);
}

TEST_F(CliContext, CombinedContextsEqualSeveralFiles) {
  const std::string a = encode("a.ctx", {"-c", path("a.txt")});
  const std::string b = encode("b.ctx", {"-c", path("b.txt")});
  const std::string files = generated({"-c", path("a.txt"), "-c", path("b.txt"), "--chunk-len", "16"});
  EXPECT_EQ(generated({"--ctx", a, "--ctx", b}), files);
  // One encoded context and one file, combined.
  EXPECT_EQ(generated({"--ctx", a, "-c", path("b.txt"), "--chunk-len", "16"}), files);
  // Both contexts count.
  EXPECT_NE(generated({"--ctx", a}), files);
  EXPECT_NE(generated({"--ctx", b}), files);
}

// ---------------------------------------------------------------------------------------------------
// Cross-attention strategies and the memory report
// ---------------------------------------------------------------------------------------------------

TEST_F(CliContext, EveryCrossAttnStrategyGivesTheSameText) {
  const std::string a = encode("a.ctx", {"-c", path("a.txt")});
  const std::string b = encode("b.ctx", {"-c", path("b.txt")});
  const std::string fresh = generated({"-c", path("a.txt"), "--chunk-len", "16"});
  const std::string combined = generated({"--ctx", a, "--ctx", b});
  for (const char* mode : {"recompute", "cached", "absorbed", "auto"}) {
    SCOPED_TRACE(mode);
    EXPECT_EQ(generated({"-c", path("a.txt"), "--chunk-len", "16", "--cross-attn", mode}), fresh);
    EXPECT_EQ(generated({"--ctx", a, "--ctx", b, "--cross-attn", mode}), combined);
  }
  EXPECT_TRUE(CleanError(generate({"-c", path("a.txt"), "--chunk-len", "16", "--cross-attn", "bogus"}),
                         {"--cross-attn", "bogus"}));
  EXPECT_TRUE(CleanError(generate({"--ctx", a, "--cross-attn", ""}), {"--cross-attn"}));
}

TEST_F(CliContext, VerboseReportsWhereTheMemoryWent) {
  const std::string plain = generated({"-c", path("a.txt"), "--chunk-len", "16"});
  for (const char* mode : {"cached", "absorbed"}) {
    SCOPED_TRACE(mode);
    const RunResult r = generate({"-c", path("a.txt"), "--chunk-len", "16", "--cross-attn", mode, "--verbose"});
    ASSERT_TRUE(Succeeded(r));
    EXPECT_EQ(r.out, plain);  // the report goes to stderr
    const std::vector<std::string> memory = lines_starting_with(r.err, "memory:");
    ASSERT_EQ(memory.size(), 1u) << r.err;
    for (const char* part : {"weights", "KV cache", "encoder states", "cross K/V", "scratch", "peak RSS"})
      EXPECT_NE(memory[0].find(part), std::string::npos) << part << " not in: " << memory[0];
  }
  // Not without --verbose.
  const RunResult quiet = generate({"-c", path("a.txt"), "--chunk-len", "16"});
  ASSERT_TRUE(Succeeded(quiet));
  EXPECT_TRUE(lines_starting_with(quiet.err, "memory:").empty()) << quiet.err;
}

// ---------------------------------------------------------------------------------------------------
// Bad context files and options
// ---------------------------------------------------------------------------------------------------

TEST_F(CliContext, ContextOfAnotherModelIsRejected) {
  // A checkpoint of the fixture's shape and tokenizer with other weights.
  const std::string other = path("other");
  ASSERT_TRUE(Succeeded(run_cepe({"init", "--config", (kFixture / "config.json").string(), "--seed", "7", "--tokenizer",
                                  (kFixture / "tokenizer.model").string(), "-o", other, "-t", "1"})));
  const std::string theirs = encode("theirs.ctx", {"-c", path("a.txt")}, {}, other);
  EXPECT_TRUE(CleanError(generate({"--ctx", theirs}), {"theirs.ctx", "different model"}));
  // Among good contexts too.
  const std::string ours = encode("ours.ctx", {"-c", path("a.txt")});
  EXPECT_TRUE(CleanError(generate({"--ctx", ours, "--ctx", theirs}), {"theirs.ctx", "different model"}));
  EXPECT_TRUE(CleanError(generate({"--ctx", ours}, other), {"ours.ctx", "different model"}));

  // Another fixture (other shapes; it has no tokenizer, so it gets the fixture's).
  const fs::path rope = dir_ / "rope-linear";
  fs::create_directories(rope);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(fs::path(CEPE_TEST_DATA) / "ref-rope-linear" / f, rope / f);
  fs::copy_file(kFixture / "tokenizer.model", rope / "tokenizer.model");
  EXPECT_TRUE(CleanError(generate({"--ctx", ours}, rope.string()), {"ours.ctx", "different model"}));
}

TEST_F(CliContext, TruncatedContextIsRejected) {
  const std::string whole = read_text(encode("a.ctx", {"-c", path("a.txt")}));
  ASSERT_GT(whole.size(), 1000u);
  for (size_t cut : {size_t{0}, size_t{4}, size_t{8}, size_t{100}, size_t{1000}, whole.size() / 2, whole.size() - 1}) {
    SCOPED_TRACE("cut at byte " + std::to_string(cut));
    write_text(dir_ / "cut.ctx", whole.substr(0, cut));
    EXPECT_TRUE(CleanError(generate({"--ctx", path("cut.ctx")}), {"cut.ctx", "truncated"}));
  }
}

TEST_F(CliContext, ContextOptionsNeedTextMode) {
  const std::string ctx = encode("a.ctx", {"-c", path("a.txt")});
  write_text(dir_ / "req.json", R"({"input_ids": [[1, 5, 6]]})");
  const std::vector<std::string> token_mode = {"generate", "-m", fixture(), "--request", path("req.json"), "-o",
                                               path("o.json"), "--greedy", "-n", "2", "-t", "1"};
  auto with = [&](std::initializer_list<std::string> more) {
    std::vector<std::string> a = token_mode;
    a.insert(a.end(), more);
    return a;
  };
  EXPECT_TRUE(CleanError(run_cepe(with({"--ctx", ctx})), {"--ctx", "--request"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"--context-text", "some text"})), {"--context-text", "--request"}));
  EXPECT_FALSE(fs::exists(dir_ / "o.json"));
  // The request alone works.
  EXPECT_TRUE(Succeeded(run_cepe(token_mode)));
}

// ---------------------------------------------------------------------------------------------------
// cepe bench
// ---------------------------------------------------------------------------------------------------

const std::set<std::string> kBenchFields = {"mode",
                                            "cross_attn",
                                            "context_tokens",
                                            "encode_tokens_per_s",
                                            "prefill_tokens_per_s",
                                            "decode_tokens_per_s",
                                            "peak_rss_bytes",
                                            "kv_bytes",
                                            "context_state_bytes",
                                            "cross_attn_gflops"};

// Checks the JSON rows (exactly the documented fields; cepe x {recompute, absorbed, cached} and full at 64 and 256
// context tokens, once each) and the markdown table (a header, a separator and one row each).
void expect_bench_rows(const json& rows, const std::string& table) {
  ASSERT_TRUE(rows.is_array()) << rows.dump();
  std::multiset<std::tuple<std::string, std::string, int64_t>> got;
  for (const json& row : rows) {
    ASSERT_TRUE(row.is_object()) << row.dump();
    std::set<std::string> keys;
    for (const auto& [k, v] : row.items()) keys.insert(k);
    EXPECT_EQ(keys, kBenchFields) << row.dump();
    ASSERT_TRUE(row["mode"].is_string() && row["cross_attn"].is_string() && row["context_tokens"].is_number_integer())
        << row.dump();
    const std::string mode = row["mode"].get<std::string>();
    got.insert({mode, mode == "cepe" ? row["cross_attn"].get<std::string>() : "", row["context_tokens"].get<int64_t>()});
    for (const char* k : {"kv_bytes", "context_state_bytes"})
      EXPECT_TRUE(row[k].is_number() && row[k].get<double>() >= 0) << k << ": " << row.dump();
  }
  const std::multiset<std::tuple<std::string, std::string, int64_t>> want = {
      {"cepe", "recompute", 64}, {"cepe", "absorbed", 64}, {"cepe", "cached", 64}, {"full", "", 64},
      {"cepe", "recompute", 256}, {"cepe", "absorbed", 256}, {"cepe", "cached", 256}, {"full", "", 256}};
  EXPECT_EQ(got, want) << rows.dump(1);

  const std::vector<std::string> lines = lines_starting_with(table, "|");
  ASSERT_EQ(lines.size(), 2 + want.size()) << table;
  for (const char* column : {"mode", "cross_attn", "context_tokens"})
    EXPECT_NE(lines[0].find(column), std::string::npos) << column << " not in: " << lines[0];
  EXPECT_EQ(lines[1].rfind("|---", 0), 0u) << lines[1];
  const auto columns = [](const std::string& l) { return std::count(l.begin(), l.end(), '|'); };
  for (const std::string& l : lines) EXPECT_EQ(columns(l), columns(lines[0])) << l;
}

TEST_F(CliContext, BenchWritesTableJsonAndPlot) {
  const RunResult r = run_cepe({"bench", "-m", fixture(), "--context-tokens", "64,256", "--prompt-tokens", "4",
                                "--gen-tokens", "2", "--baseline", "full", "--json", path("J.json"), "-t", "1",
                                "--plot", path("P.png")});
  ASSERT_TRUE(Succeeded(r));
  const json rows = json::parse(read_text(dir_ / "J.json"));
  expect_bench_rows(rows, r.out);
  EXPECT_EQ(r.out.find("does not fit"), std::string::npos) << r.out;
  for (const json& row : rows) {
    const bool cepe = row["mode"] == "cepe";
    for (const char* k : {"prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_bytes"})
      EXPECT_TRUE(row[k].is_number() && row[k].get<double>() > 0) << k << ": " << row.dump();
    if (cepe) {
      for (const char* k : {"encode_tokens_per_s", "context_state_bytes", "cross_attn_gflops"})
        EXPECT_TRUE(row[k].is_number() && row[k].get<double>() > 0) << k << ": " << row.dump();
    } else {
      EXPECT_TRUE(row["encode_tokens_per_s"].is_null()) << row.dump();  // no encoder in full attention
    }
  }

  // The PNG itself is checked in test_plot.cpp; here, that bench wrote one of the size it draws.
  const std::string png = read_text(dir_ / "P.png");
  ASSERT_GT(png.size(), 24u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << "P.png: " << png.size() << " bytes";
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  EXPECT_EQ(png.substr(16, 8), std::string("\0\0\x04\xb0\0\0\x01\xf4", 8));  // 1200 x 500
}

TEST_F(CliContext, BenchReportsRunsThatDoNotFitTheBudget) {
  const RunResult r = run_cepe({"bench", "-m", fixture(), "--context-tokens", "64,256", "--prompt-tokens", "4",
                                "--gen-tokens", "2", "--baseline", "full", "--json", path("J.json"), "--mem-budget",
                                "1M", "-t", "1"});
  ASSERT_TRUE(Succeeded(r));
  const json rows = json::parse(read_text(dir_ / "J.json"));
  expect_bench_rows(rows, r.out);
  EXPECT_EQ(lines_starting_with(r.out, "|").size(), 10u);
  size_t not_fitting = 0;
  for (const std::string& l : lines_starting_with(r.out, "|")) not_fitting += l.find("does not fit") != std::string::npos;
  EXPECT_EQ(not_fitting, 8u) << r.out;
  for (const json& row : rows)
    for (const char* k : {"encode_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s"})
      EXPECT_TRUE(row[k].is_null()) << k << ": " << row.dump();
}

// ---------------------------------------------------------------------------------------------------
// cepe init
// ---------------------------------------------------------------------------------------------------

TEST_F(CliContext, InitPresetRunsForward) {
  const fs::path dir2 = dir_ / "DIR2";
  ASSERT_TRUE(Succeeded(run_cepe({"init", "--preset", "cepe-tiny", "-o", dir2.string(), "--dtype", "bf16", "-t", "1"})));
  const cepe::SafeTensors st = cepe::SafeTensors::open((dir2 / "model.safetensors").string());
  ASSERT_FALSE(st.names().empty());
  for (const std::string& n : st.names()) EXPECT_EQ(st.get(n).dtype(), cepe::DType::BF16) << n;

  const json cfg = json::parse(read_text(dir2 / "config.json"));
  const int64_t vocab = cfg["vocab_size"].get<int64_t>();
  const int64_t enc_hidden = cfg["encoder_hidden_size"].get<int64_t>();
  write_text(dir_ / "req.json",
             json{{"input_ids", {{1, 450, 4996, 17354}}},
                  {"encoder_input_ids", {{{1, 2, 3, 4, 5, 6}, {7, 8, 9, 10, 11, 12}}}}}
                 .dump());
  ASSERT_TRUE(Succeeded(
      run_cepe({"forward", "-m", dir2.string(), "--request", path("req.json"), "-o", path("out.json"), "-t", "1"})));
  const json out = json::parse(read_text(dir_ / "out.json"));
  const json& logits = out["logits"];
  ASSERT_TRUE(logits.is_array() && logits.size() == 1 && logits[0].size() == 4) << out.dump().substr(0, 200);
  bool any_nonzero = false;
  for (const json& row : logits[0]) {
    ASSERT_EQ(static_cast<int64_t>(row.size()), vocab);
    for (const json& v : row) {
      ASSERT_TRUE(v.is_number() && std::isfinite(v.get<double>())) << v.dump();  // NaN/inf are written as null
      any_nonzero = any_nonzero || v.get<double>() != 0;
    }
  }
  EXPECT_TRUE(any_nonzero);
  const json& enc = out["encoder_hidden_states"];
  ASSERT_TRUE(enc.is_array() && enc.size() == 1 && enc[0].size() == 2 && enc[0][0].size() == 6);
  EXPECT_EQ(static_cast<int64_t>(enc[0][0][0].size()), enc_hidden);

  EXPECT_TRUE(CleanError(run_cepe({"init", "--preset", "cepe-bogus", "-o", path("DIR3")}), {"preset", "cepe-bogus"}));
  EXPECT_FALSE(fs::exists(dir_ / "DIR3"));
}

}  // namespace
