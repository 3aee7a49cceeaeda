// The evaluation commands end to end on tests/data/cepe-tiny-a (random weights: the plumbing and the contracts,
// not the quality): `cepe perplexity` (the --json contract, the same scored tokens for every row), `cepe passkey`,
// `cepe data synth`, `cepe export`, `cepe demo`, and their clean errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "cli_runner.h"

namespace cepe::testing {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
const fs::path kFixture = fs::path(CEPE_TEST_DATA) / "cepe-tiny-a";
const fs::path kDecoderOnly = fs::path(CEPE_TEST_DATA) / "grad-causal-tied";

class CliEval : public CliScratchTest {
 protected:
  // Real text of some length: the GPL-3 (on every Debian system) or, failing that, generated sentences.
  std::string text_file(const std::string& name, int copies = 1) {
    std::string t = read_text("/usr/share/common-licenses/GPL-3");
    if (t.size() < 10000) {
      t.clear();
      for (int i = 0; i < 600; ++i) t += "Sentence number " + std::to_string(i) + " of the test text is here.\n";
    }
    std::string all;
    for (int i = 0; i < copies; ++i) all += t;
    write_text(path(name), all);
    return path(name);
  }
};

TEST_F(CliEval, PerplexityRowsFollowTheContractAndScoreTheSameTokens) {
  const std::string f = text_file("doc.txt");
  const RunResult r = run_cepe({"perplexity", "-m", kFixture.string(), "-f", f, "--protocol", "cepe,vanilla,streaming,replug",
                                "--context-tokens", "0,64,256", "--max-windows", "3", "--json", path("p.json"), "--plot",
                                path("p.png"), "-t", "1", "-q"});
  ASSERT_TRUE(Succeeded(r)) << describe(r);
  const json rows = json::parse(read_text(path("p.json")));
  ASSERT_EQ(rows.size(), 12u);
  std::set<std::string> protocols;
  for (const json& row : rows) {
    for (const char* k : {"protocol", "context_tokens", "decoder_tokens", "scored_tokens", "windows", "ppl", "ppl_ci95"})
      ASSERT_TRUE(row.contains(k)) << k;
    protocols.insert(row["protocol"].get<std::string>());
    EXPECT_EQ(row["windows"], 3);
    EXPECT_EQ(row["scored_tokens"], 3 * 32);  // D = 128 (the fixture's window), E = D / 4
    const double ppl = row["ppl"], lo = row["ppl_ci95"][0], hi = row["ppl_ci95"][1];
    EXPECT_GT(ppl, 1);
    EXPECT_LE(lo, ppl);
    EXPECT_GE(hi, ppl);
    EXPECT_EQ(row["decoder_tokens"], row["protocol"] == "replug" ? 64 : 128);
  }
  EXPECT_EQ(protocols.size(), 4u);
  // Without context every protocol is the decoder on its window: the same perplexity.
  for (const json& row : rows)
    if (row["context_tokens"] == 0) {
      EXPECT_NEAR(row["ppl"].get<double>(), rows[0]["ppl"].get<double>(), 1e-3);
    }
  EXPECT_EQ(read_text(path("p.png")).substr(1, 3), "PNG");
  EXPECT_NE(r.out.find("streaming"), std::string::npos);
}

TEST_F(CliEval, PerplexityErrors) {
  const std::string f = text_file("doc.txt");
  const std::string m = kFixture.string();
  EXPECT_TRUE(CleanError(run_cepe({"perplexity", "-m", m, "-f", f, "--context-tokens", "0,abc"}), {"--context-tokens", "abc"}));
  EXPECT_TRUE(CleanError(run_cepe({"perplexity", "-m", m, "--context-tokens", "0"}), {"-f"}));
  EXPECT_TRUE(CleanError(run_cepe({"perplexity", "-m", m, "-f", f, "--context-tokens", "0", "--protocol", "cepe,fast"}),
                         {"protocol", "fast"}));
  EXPECT_TRUE(CleanError(run_cepe({"perplexity", "-m", m, "-f", f, "--context-tokens", "1000000"}), {"tokens a window needs"}));
  EXPECT_TRUE(CleanError(run_cepe({"perplexity", "-m", m, "-f", path("missing.txt"), "--context-tokens", "0"}), {"missing.txt"}));
  EXPECT_TRUE(CleanError(run_cepe({"perplexity", "-m", m, "-f", f, "--context-tokens", "0", "--eval-window", "128"}),
                         {"--eval-window"}));
  // A decoder without cross-attention (with the fixture's tokenizer beside it) cannot run the cepe protocol.
  fs::create_directories(path("dec"));
  for (const char* x : {"config.json", "model.safetensors"}) fs::copy_file(kDecoderOnly / x, path("dec") + "/" + x);
  fs::copy_file(kFixture / "tokenizer.model", path("dec") + "/tokenizer.model");
  EXPECT_TRUE(CleanError(run_cepe({"perplexity", "-m", path("dec"), "-f", f, "--context-tokens", "0,64",
                                   "--decoder-tokens", "32"}),
                         {"no context encoder"}));
  write_text(path("bad.txt"), std::string("ok \xff\xfe bytes"));
  EXPECT_TRUE(CleanError(run_cepe({"perplexity", "-m", m, "-f", path("bad.txt"), "--context-tokens", "0"}), {"bad.txt", "UTF-8"}));
}

TEST_F(CliEval, PasskeyTableJsonHeatMapAndSavedCases) {
  const std::string f = text_file("filler.txt");
  const RunResult r = run_cepe({"passkey", "-m", kFixture.string(), "-f", f, "--context-tokens", "128,512", "--depths",
                                "0,0.5,1", "--trials", "2", "--json", path("k.json"), "--plot", path("k.png"),
                                "--save-cases", path("cases"), "-t", "1", "-q"});
  ASSERT_TRUE(Succeeded(r)) << describe(r);
  const json j = json::parse(read_text(path("k.json")));
  ASSERT_EQ(j["cases"].size(), 12u);
  ASSERT_EQ(j["accuracy"].size(), 6u);
  std::set<std::string> keys;
  for (const json& c : j["cases"]) {
    EXPECT_EQ(c["key"].get<std::string>().size(), 5u);
    EXPECT_EQ(c["correct"].get<bool>(), c["answer"] == c["key"]);
    // Where the needle went: at the start for depth 0, past it for depth 1 (moved back to a sentence start, so
    // not necessarily in the second half of a short context), always inside the context.
    const int64_t at = c["needle_start"], n = c["context_tokens"];
    EXPECT_TRUE(at >= 0 && at < n) << at;
    if (c["depth"] == 0) {
      EXPECT_EQ(at, 0);
    }
    if (c["depth"] == 1) {
      EXPECT_GT(at, 0);
    }
    keys.insert(c["key"]);
  }
  EXPECT_GT(keys.size(), 8u);  // each case has its own key
  EXPECT_EQ(read_text(path("k.png")).substr(1, 3), "PNG");
  const std::string tsv = read_text(path("cases") + "/cases.tsv");
  EXPECT_EQ(std::count(tsv.begin(), tsv.end(), '\n'), 12);
  const std::string first = read_text(path("cases") + "/case-0000.txt");
  const std::string key = j["cases"][0]["key"];
  EXPECT_NE(first.find("The pass key is " + key + ". Remember it. " + key + " is the pass key."), std::string::npos);
  EXPECT_NE(r.out.find("depth"), std::string::npos);
  EXPECT_TRUE(CleanError(run_cepe({"passkey", "-m", kFixture.string(), "-f", f, "--depths", "0,1.5"}), {"--depths"}));
  EXPECT_TRUE(CleanError(run_cepe({"passkey", "-m", kFixture.string(), "-f", f, "--context-tokens", "100000000"}),
                         {"filler"}));
  EXPECT_TRUE(CleanError(run_cepe({"passkey", "-m", kFixture.string()}), {"-f"}));
}

TEST_F(CliEval, SynthWritesRetrievalDocumentsOfTheStagesShape) {
  const std::string corpus = text_file("corpus.txt", 3);
  ASSERT_TRUE(Succeeded(run_cepe({"data", "tokenize", "-m", kFixture.string(), "-o", path("c.tokens"), "--quiet", corpus})));
  write_text(path("facts.tsv"), "capital\tGhana\tAccra\ncapital\tPeru\tLima\nchemical symbol\tIron\tFe\n");
  const RunResult r = run_cepe({"data", "synth", "-m", kFixture.string(), "--filler", path("c.tokens"), "--facts",
                                path("facts.tsv"), "--context-tokens", "256", "--decoder-tokens", "64", "-n", "20", "-o",
                                path("s.tokens")});
  ASSERT_TRUE(Succeeded(r)) << describe(r);
  const RunResult info = run_cepe({"data", "info", path("s.tokens"), "-m", kFixture.string()});
  ASSERT_TRUE(Succeeded(info)) << describe(info);
  EXPECT_NE(info.out.find("documents:   20"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("min 320, median 320, max 320"), std::string::npos) << info.out;
  // The same seed gives the same file; the `filtered` layout reads one sample per document.
  ASSERT_TRUE(Succeeded(run_cepe({"data", "synth", "-m", kFixture.string(), "--filler", path("c.tokens"), "--facts",
                                  path("facts.tsv"), "--context-tokens", "256", "--decoder-tokens", "64", "-n", "20", "-o",
                                  path("s2.tokens")})));
  EXPECT_EQ(read_text(path("s.tokens")), read_text(path("s2.tokens")));
  const RunResult s = run_cepe({"data", "sample", path("s.tokens"), "--layout", "filtered", "--seq-len", "64", "--n-ctx", "4",
                                "--ctx-len", "64", "--eval", "--count", "20"});
  ASSERT_TRUE(Succeeded(s)) << describe(s);
  EXPECT_EQ(json::parse(s.out).size(), 20u);
  write_text(path("bad.tsv"), "capital Ghana Accra\n");
  EXPECT_TRUE(CleanError(run_cepe({"data", "synth", "-m", kFixture.string(), "--filler", path("c.tokens"), "--facts",
                                   path("bad.tsv"), "-n", "2", "-o", path("x.tokens")}),
                         {"bad.tsv:1"}));
  EXPECT_FALSE(fs::exists(path("x.tokens")));
  EXPECT_TRUE(CleanError(run_cepe({"data", "synth", "-m", kFixture.string(), "--filler", path("c.tokens"), "-n", "2",
                                   "--context-tokens", "100000", "-o", path("x.tokens")}),
                         {"filler"}));
  EXPECT_FALSE(fs::exists(path("x.tokens")));
  // Labelled pass keys take their labels from the facts: without --facts, one clear error and no file.
  EXPECT_TRUE(CleanError(run_cepe({"data", "synth", "-m", kFixture.string(), "--filler", path("c.tokens"), "-n", "2",
                                   "--max-numbers", "3", "-o", path("x.tokens")}),
                         {"--max-numbers needs --facts"}));
  EXPECT_FALSE(fs::exists(path("x.tokens")));
  ASSERT_TRUE(Succeeded(run_cepe({"data", "synth", "-m", kFixture.string(), "--filler", path("c.tokens"), "--facts",
                                  path("facts.tsv"), "--max-numbers", "3", "--context-tokens", "256", "--decoder-tokens",
                                  "64", "-n", "20", "-o", path("s3.tokens")})));
  EXPECT_NE(read_text(path("s3.tokens")), read_text(path("s.tokens")));
}

TEST_F(CliEval, ExportConvertsTheWeightsAndRecordsTheWindows) {
  const RunResult r = run_cepe({"export", "-m", kFixture.string(), "-o", path("out"), "--dtype", "bf16", "--decoder-window",
                                "96", "--encoder-window", "48"});
  ASSERT_TRUE(Succeeded(r)) << describe(r);
  const json cfg = json::parse(read_text(path("out") + "/config.json"));
  EXPECT_EQ(cfg["max_position_embeddings"], 96);
  EXPECT_EQ(cfg["encoder_config"]["max_position_embeddings"], 48);
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
  EXPECT_TRUE(fs::exists(path("out") + "/tokenizer.model"));
  const auto f32 = fs::file_size(kFixture / "model.safetensors"), bf16 = fs::file_size(path("out") + "/model.safetensors");
  EXPECT_LT(bf16, f32 * 0.55);
  // The export generates; the decoder window is what perplexity takes by default (E = 96 / 4).
  const std::string f = text_file("doc.txt");
  const RunResult p = run_cepe({"perplexity", "-m", path("out"), "-f", f, "--context-tokens", "0", "--max-windows", "2",
                                "--json", path("p.json"), "-q"});
  ASSERT_TRUE(Succeeded(p)) << describe(p);
  EXPECT_EQ(json::parse(read_text(path("p.json")))[0]["decoder_tokens"], 96);
  EXPECT_TRUE(CleanError(run_cepe({"export", "-m", kFixture.string(), "-o", kFixture.string()}), {"--output"}));
  EXPECT_TRUE(CleanError(run_cepe({"export", "-m", kFixture.string(), "-o", path("o2"), "--dtype", "int3"}), {"--dtype"}));
}

TEST_F(CliEval, DemoRunsEveryPartOnAHeldOutFolder) {
  // A corpus of one domain: a held-out "book" and facts. The fixture's window is 128, so 64x is 8192 tokens.
  fs::create_directories(path("corpus/held/books"));
  fs::create_directories(path("corpus/facts"));
  text_file("corpus/held/books/book.txt", 3);
  write_text(path("corpus/facts/held.tsv"), "capital\tGhana\tAccra\ncapital\tPeru\tLima\ncapital\tChad\tN'Djamena\n");
  const RunResult r = run_cepe({"demo", "-m", kFixture.string(), "--corpus", path("corpus"), "--out", path("demo"),
                                "--windows", "1", "--longest", "8", "-t", "2"});
  ASSERT_TRUE(Succeeded(r)) << describe(r);
  for (const char* f : {"perplexity.png", "passkey.png", "bench.png", "perplexity.json", "passkey.json", "bench.json"})
    EXPECT_TRUE(fs::exists(path("demo") + "/" + f)) << f;
  for (const char* s : {"== 1/4", "== 2/4", "== 3/4", "== 4/4", "with the document as context", "Plots:"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s;
  // Every cell scores the same tokens, as many per window as RePlug allows (its chunk precedes the last D - C tokens).
  const json rows = json::parse(read_text(path("demo") + "/perplexity.json"));
  ASSERT_FALSE(rows.empty());
  const int64_t D = rows[0]["decoder_tokens"], C = rows[0]["chunk_len"];
  EXPECT_EQ(rows[0]["protocol"], "cepe");
  EXPECT_EQ(rows[0]["eval_window"], std::min(D / 2, D - C - 1));
  for (const auto& row : rows) EXPECT_EQ(row["scored_tokens"], rows[0]["scored_tokens"]) << row.dump();
  // Every fact is hidden once and asked for once, then the tally.
  for (const char* s : {"The capital of Ghana is Accra.", "The capital of Peru is Lima.", "The capital of Chad is N'Djamena.",
                        "3 facts hidden in it", " of 3 with the document as context"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s;
  EXPECT_TRUE(CleanError(run_cepe({"demo", "-m", kFixture.string(), "--corpus", path("nowhere")}), {"fetch-corpus.sh"}));
  fs::remove(path("corpus/facts/held.tsv"));
  EXPECT_TRUE(CleanError(run_cepe({"demo", "-m", kFixture.string(), "--corpus", path("corpus"), "--out", path("demo")}),
                         {"held.tsv"}));
}

}  // namespace
}  // namespace cepe::testing
