// Evaluation (src/eval): the perplexity protocols against each other and against plain forwards on the fixture
// model, StreamingLLM's cache eviction against a fresh prefill, the retrieval cases and synthetic documents.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "cepe/error.h"
#include "cepe/model.h"
#include "cepe/tokenizer.h"
#include "core/plot.h"
#include "eval/perplexity.h"
#include "eval/retrieval.h"

namespace cepe::eval {
namespace {

namespace fs = std::filesystem;
const fs::path kFixture = fs::path(CEPE_TEST_DATA) / "cepe-tiny-a";

std::shared_ptr<CepeModel> fixture() {
  static std::shared_ptr<CepeModel> m = CepeModel::load(kFixture.string());
  return m;
}

// A document of `n` pseudo-random ids in [3, vocab) (no BOS/EOS inside), BOS first.
std::vector<int32_t> random_doc(int64_t n, uint64_t seed, int32_t vocab = 512) {
  CaseRng rng(seed, 0);
  std::vector<int32_t> d{1};
  for (int64_t i = 1; i < n; ++i) d.push_back(static_cast<int32_t>(3 + rng.below(vocab - 3)));
  return d;
}

PerplexityOptions small_options() {
  PerplexityOptions o;
  o.decoder_tokens = 32;
  o.eval_window = 8;
  o.chunk_len = 8;
  return o;
}

// NLLs of the last E tokens of tokens[begin, end) from one plain decoder forward over all of them.
std::vector<double> plain_nll(const CepeModel& m, const std::vector<int32_t>& doc, int64_t begin, int64_t end, int64_t e,
                              const EncodedContext* ctx = nullptr) {
  const int64_t L = end - begin;
  std::vector<int64_t> pos(static_cast<size_t>(L));
  std::iota(pos.begin(), pos.end(), 0);
  const Tensor logits = m.decode(doc.data() + begin, 1, L, pos.data(), nullptr, nullptr, const_cast<EncodedContext*>(ctx));
  const int64_t V = logits.dim(2);
  std::vector<double> out;
  for (int64_t t = L - e; t < L; ++t) {
    const float* row = logits.f32() + (t - 1) * V;
    double mx = -INFINITY, s = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
    for (int64_t v = 0; v < V; ++v) s += std::exp(row[v] - mx);
    out.push_back(std::log(s) + mx - row[doc[static_cast<size_t>(begin + t)]]);
  }
  return out;
}

void expect_near_all(const std::vector<double>& a, const std::vector<double>& b, double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], tol) << "token " << i;
}

TEST(EvalPerplexity, WithoutContextEveryProtocolIsTheDecoderOnItsWindow) {
  const auto m = fixture();
  const auto doc = random_doc(200, 1);
  const PerplexityOptions o = small_options();
  const auto ref = plain_nll(*m, doc, 150 - 32, 150, 8);
  for (Protocol p : {Protocol::Cepe, Protocol::Vanilla, Protocol::Streaming, Protocol::Replug})
    expect_near_all(window_nll(*m, doc, 150, p, 0, o), ref, 2e-5);
}

TEST(EvalPerplexity, VanillaInBlocksEqualsOneForwardOverEverything) {
  const auto m = fixture();
  const auto doc = random_doc(300, 2);
  const PerplexityOptions o = small_options();
  // 100 context tokens + 32: blocks of 32 through the KV cache, then the decoder part.
  expect_near_all(window_nll(*m, doc, 250, Protocol::Vanilla, 100, o), plain_nll(*m, doc, 250 - 132, 250, 8), 2e-5);
}

TEST(EvalPerplexity, StreamingWithACacheThatHoldsEverythingIsVanilla) {
  const auto m = fixture();
  const auto doc = random_doc(300, 3);
  PerplexityOptions o = small_options();
  o.streaming_cache = 200;  // nothing is ever evicted
  o.streaming_step = 16;
  expect_near_all(window_nll(*m, doc, 250, Protocol::Streaming, 96, o), plain_nll(*m, doc, 250 - 128, 250, 8), 2e-5);
  // With the default cache (sinks + D/2) the far context is dropped: different, and finite.
  const auto s = window_nll(*m, doc, 250, Protocol::Streaming, 96, small_options());
  double diff = 0;
  const auto v = plain_nll(*m, doc, 250 - 128, 250, 8);
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_TRUE(std::isfinite(s[i]));
    diff += std::fabs(s[i] - v[i]);
  }
  EXPECT_GT(diff, 1e-3);
}

TEST(EvalPerplexity, ReplugWithOneChunkIsVanillaAndAveragesTheChunksDistributions) {
  const auto m = fixture();
  const auto doc = random_doc(300, 4);
  const PerplexityOptions o = small_options();  // D = 32, C = 8: RePlug's text is the last 24 tokens
  // N = 0: one chunk, the 8 tokens before the last 24 -> the decoder over those 32 tokens.
  expect_near_all(window_nll(*m, doc, 250, Protocol::Replug, 0, o), plain_nll(*m, doc, 250 - 32, 250, 8), 2e-5);
  // N = 8: two chunks; the mixture of their two forwards, token by token.
  const auto a = plain_nll(*m, [&] {
    std::vector<int32_t> x(doc.begin() + 250 - 32, doc.begin() + 250 - 24);  // chunk 0: just before the text
    x.insert(x.end(), doc.begin() + 250 - 24, doc.begin() + 250);
    return x;
  }(), 0, 32, 8);
  const auto b = plain_nll(*m, [&] {
    std::vector<int32_t> x(doc.begin() + 250 - 40, doc.begin() + 250 - 32);  // chunk 1: the older one
    x.insert(x.end(), doc.begin() + 250 - 24, doc.begin() + 250);
    return x;
  }(), 0, 32, 8);
  std::vector<double> mix;
  for (size_t i = 0; i < a.size(); ++i) mix.push_back(-std::log(0.5 * std::exp(-a[i]) + 0.5 * std::exp(-b[i])));
  expect_near_all(window_nll(*m, doc, 250, Protocol::Replug, 8, o), mix, 2e-5);
}

TEST(EvalPerplexity, CepeReadsTheContextAndTheSharedEncodingEqualsEncodingEachLength) {
  const auto m = fixture();
  const auto doc = random_doc(400, 5);
  Source src{"doc", {doc}};
  PerplexityOptions o = small_options();
  o.protocols = {Protocol::Cepe};
  o.context_tokens = {0, 16, 64};
  o.max_windows = 3;
  const auto rows = evaluate_perplexity(*m, src, o);  // one encoder pass per window, sliced per length
  const auto windows = place_windows(src, o);
  ASSERT_EQ(windows.size(), 3u);
  ASSERT_EQ(rows.size(), 3u);
  for (size_t k = 0; k < rows.size(); ++k) {
    EXPECT_EQ(rows[k].windows, 3);
    EXPECT_EQ(rows[k].scored_tokens, 24);
    for (size_t w = 0; w < windows.size(); ++w) {
      const auto nll = window_nll(*m, doc, windows[w].end, Protocol::Cepe, o.context_tokens[k], o);  // its own encoding
      EXPECT_NEAR(rows[k].window_nll[w], std::accumulate(nll.begin(), nll.end(), 0.0) / 8, 2e-5);
    }
  }
  // The context changes the prediction (the cross-attention reads it).
  EXPECT_GT(std::fabs(rows[2].mean_nll - rows[0].mean_nll), 1e-4);
  // 64 context tokens as 8 chunks of 8, by hand.
  const int64_t end = windows[1].end;
  ContextChunks ch{1, 8, 8, std::vector<int32_t>(doc.begin() + end - 32 - 64, doc.begin() + end - 32),
                   std::vector<uint8_t>(64, 1)};
  EncodedContext ctx = m->encode(ch);
  const auto want = plain_nll(*m, doc, end - 32, end, 8, &ctx);
  EXPECT_NEAR(rows[2].window_nll[1], std::accumulate(want.begin(), want.end(), 0.0) / 8, 2e-5);
}

TEST(EvalPerplexity, WindowsAreTheSameForEveryLengthAndSpreadOverTheCandidates) {
  Source src{"s", {random_doc(1000, 6), random_doc(100, 7), random_doc(600, 8)}};
  PerplexityOptions o = small_options();
  o.context_tokens = {0, 256};
  o.max_windows = 1000;
  const auto all = place_windows(src, o);
  // Doc 0: ends 288, 296, ..., 1000 -> 90; doc 1 is too short; doc 2: 288..600 -> 40.
  ASSERT_EQ(all.size(), 130u);
  EXPECT_EQ(all.front().doc, 0);
  EXPECT_EQ(all.front().end, 288);
  EXPECT_EQ(all.back().doc, 2);
  EXPECT_EQ(all.back().end, 600);
  o.context_tokens = {0};
  o.place_for_context = 256;  // another run with shorter contexts still scores the same tokens
  EXPECT_EQ(place_windows(src, o).size(), 130u);
  o.max_windows = 4;
  const auto some = place_windows(src, o);
  ASSERT_EQ(some.size(), 4u);
  EXPECT_EQ(some[0].doc, 0);
  EXPECT_EQ(some[3].doc, 2);
  o.place_for_context = 5000;
  EXPECT_TRUE(place_windows(src, o).empty());
  EXPECT_THROW(evaluate_perplexity(*fixture(), src, o), Error);
}

TEST(EvalPerplexity, IntervalsAndBadOptions) {
  PerplexityRow r;
  r.eval_window = 4;
  r.window_nll = {1.0, 2.0, 3.0};
  summarize(r);
  EXPECT_DOUBLE_EQ(r.mean_nll, 2.0);
  EXPECT_NEAR(r.ppl, std::exp(2.0), 1e-12);
  // sd 1, n 3, t(0.975, 2) = 4.303.
  EXPECT_NEAR(std::log(r.ppl_hi), 2.0 + 4.303 / std::sqrt(3.0), 1e-9);
  EXPECT_NEAR(std::log(r.ppl_lo), 2.0 - 4.303 / std::sqrt(3.0), 1e-9);
  EXPECT_EQ(r.scored_tokens, 12);
  EXPECT_THROW(parse_protocols("cepe,bogus"), Error);
  EXPECT_EQ(parse_protocols("replug,cepe,replug").size(), 2u);
  const auto m = fixture();
  Source src{"s", {random_doc(400, 9)}};
  PerplexityOptions o = small_options();
  o.protocols = {Protocol::Replug};
  o.chunk_len = 28;  // leaves 4 text tokens, fewer than the 8 scored
  EXPECT_THROW(evaluate_perplexity(*m, src, o), Error);
  o = small_options();
  o.eval_window = 32;
  EXPECT_THROW(evaluate_perplexity(*m, src, o), Error);
}

TEST(EvalStreaming, EvictionReassignsPositionsLikeAFreshPrefillOfTheKeptTokens) {
  // Layer 0's keys and values depend only on the token and its position, so after eviction they must equal a
  // fresh prefill of the kept tokens at positions 0, 1, ... (the deeper layers saw more context, by design).
  const auto m = fixture();
  const auto doc = random_doc(64, 10);
  auto run = [&](const std::vector<int32_t>& ids, int64_t capacity) {
    auto c = m->make_cache(1, capacity);
    std::vector<int64_t> pos(ids.size());
    std::iota(pos.begin(), pos.end(), 0);
    m->decode(ids.data(), 1, static_cast<int64_t>(ids.size()), pos.data(), nullptr, c.get(), nullptr);
    return c;
  };
  auto full = run(doc, 64);
  m->evict_cache(*full, 4, 20);
  ASSERT_EQ(full->length, 24);
  std::vector<int32_t> kept(doc.begin(), doc.begin() + 4);
  kept.insert(kept.end(), doc.end() - 20, doc.end());
  auto fresh = run(kept, 64);
  const int64_t kv = full->kv_dim;
  double max_diff = 0, max_abs = 0;
  for (int64_t i = 0; i < 24 * kv; ++i) {
    max_diff = std::max({max_diff, static_cast<double>(std::fabs(full->k[0].f32()[i] - fresh->k[0].f32()[i])),
                         static_cast<double>(std::fabs(full->v[0].f32()[i] - fresh->v[0].f32()[i]))});
    max_abs = std::max(max_abs, static_cast<double>(std::fabs(fresh->k[0].f32()[i])));
  }
  EXPECT_LT(max_diff, 1e-5 * std::max(1.0, max_abs));
  // Nothing to drop: unchanged.
  m->evict_cache(*full, 4, 20);
  EXPECT_EQ(full->length, 24);
}

class EvalRetrieval : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tok_ = new Tokenizer(Tokenizer::load((kFixture / "tokenizer.model").string())); }
  static void TearDownTestSuite() { delete tok_; }
  static Tokenizer* tok_;
  std::vector<int32_t> filler() const {
    std::string text;
    for (int i = 0; i < 200; ++i) text += "The grass is green. The sky is blue. Here we go, and back again " + std::to_string(i) + ".\n";
    return tok_->encode(text, false);
  }
};
Tokenizer* EvalRetrieval::tok_ = nullptr;

TEST_F(EvalRetrieval, NeedlesGoInWholeAtSentenceStartsAndTheLengthIsExact) {
  const auto f = filler();
  const std::vector<int32_t> a = tok_->encode("The pass key is 12345.", false), b = tok_->encode("ZZZ QQQ.", false);
  std::vector<int64_t> at;
  const auto ctx = insert_needles(*tok_, f, 600, {Needle{a, 0.7}, Needle{b, 0.2}}, &at);
  ASSERT_EQ(ctx.size(), 600u);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), ctx.begin() + at[0]));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), ctx.begin() + at[1]));
  EXPECT_LT(at[1], at[0]);
  EXPECT_NEAR(static_cast<double>(at[0]), 0.7 * 600, 60);
  // The token before each needle ends a sentence; removing the needles gives the filler back in order.
  for (int64_t p : at) {
    const std::string prev = tok_->piece(ctx[static_cast<size_t>(p - 1)]);
    EXPECT_TRUE(prev.back() == '.' || prev.back() == '\n') << prev;
  }
  std::vector<int32_t> rest(ctx.begin(), ctx.begin() + at[1]);
  rest.insert(rest.end(), ctx.begin() + at[1] + static_cast<long>(b.size()), ctx.begin() + at[0]);
  rest.insert(rest.end(), ctx.begin() + at[0] + static_cast<long>(a.size()), ctx.end());
  EXPECT_TRUE(std::equal(rest.begin(), rest.end(), f.begin()));
  EXPECT_THROW(insert_needles(*tok_, std::span<const int32_t>(f).first(10), 600, {}), Error);
}

TEST_F(EvalRetrieval, PasskeyCasesAndAnswers) {
  const auto f = filler();
  const PasskeyCase c = make_passkey_case(*tok_, f, 500, 0.5, "71432", true);
  ASSERT_EQ(c.context.size(), 500u);
  EXPECT_EQ(c.question.answer, "71432");
  const std::string text = tok_->decode(c.context);
  EXPECT_EQ(text.rfind(kPasskeyTask, 0), 0u);
  EXPECT_NE(text.find("The pass key is 71432. Remember it. 71432 is the pass key."), std::string::npos);
  EXPECT_EQ(extract_answer(" 71432. Remember", true), "71432");
  EXPECT_EQ(extract_answer("7143", true), "7143");
  EXPECT_EQ(extract_answer("  Ouagadougou. The", false), "Ouagadougou");
  EXPECT_EQ(extract_answer(" Porto-Novo\nX", false), "Porto-Novo");
  CaseRng r1(3, 9), r2(3, 9), r3(3, 10);
  const std::string k1 = random_passkey(r1);
  EXPECT_EQ(k1, random_passkey(r2));
  EXPECT_EQ(k1.size(), 5u);
  EXPECT_NE(CaseRng(3, 9).next(), r3.next());
  // Training keys: five digits, and about half of them with equal neighbours (vs 34% of uniform keys).
  int repeats = 0;
  for (uint64_t i = 0; i < 400; ++i) {
    CaseRng r(11, i);
    const std::string k = training_passkey(r);
    ASSERT_EQ(k.size(), 5u);
    ASSERT_NE(k[0], '0');
    for (char c : k) ASSERT_TRUE(c >= '0' && c <= '9') << k;
    bool equal_neighbours = false;
    for (size_t j = 1; j < k.size(); ++j) equal_neighbours |= k[j] == k[j - 1];
    repeats += equal_neighbours;
  }
  EXPECT_GT(repeats, 220);
  EXPECT_LT(repeats, 320);
}

TEST_F(EvalRetrieval, SynthDocumentsHaveTheExactShapeAndAskWhatTheContextHolds) {
  const auto f = filler();
  const std::vector<Fact> facts = {{"capital", "Ghana", "Accra"}, {"capital", "Peru", "Lima"}, {"capital", "Chad", "N'Djamena"}};
  SynthOptions o;
  o.context_len = 400;
  o.decoder_len = 192;  // room for every question: a pass key, 3 facts, 2 labelled keys
  o.max_facts = 3;
  o.max_numbers = 2;
  int bos_first = 0, with_key = 0, numbers = 0;
  for (uint64_t i = 0; i < 40; ++i) {
    CaseRng rng(7, i);
    const auto d = make_synth_document(*tok_, f, facts, o, rng);
    ASSERT_EQ(d.size(), 592u);
    const std::vector<int32_t> ctx(d.begin(), d.begin() + 400), dec(d.begin() + 400, d.end());
    const std::string c = tok_->decode(ctx), q = tok_->decode(dec);
    bos_first += dec[0] == tok_->bos_id();
    // Every question asked in the decoder part is answered by a statement in the context.
    for (const Fact& fact : facts) {
      const std::string ask = "What is the capital of " + fact.key + "? The capital of " + fact.key + " is ";
      const size_t at = q.find(ask);
      if (at == std::string::npos) continue;
      const std::string value = extract_answer(q.substr(at + ask.size()), false);
      EXPECT_NE(c.find("The capital of " + fact.key + " is " + value + "."), std::string::npos) << c;
    }
    // Labelled pass keys too: "The pass key of Ghana is 48213."
    for (const Fact& fact : facts) {
      const std::string ask = "What is the pass key of " + fact.key + "? The pass key of " + fact.key + " is ";
      const size_t at = q.find(ask);
      if (at == std::string::npos) continue;
      ++numbers;
      const std::string value = extract_answer(q.substr(at + ask.size()), true);
      EXPECT_EQ(value.size(), 5u);
      EXPECT_NE(c.find("The pass key of " + fact.key + " is " + value + "."), std::string::npos) << c;
    }
    const size_t k = q.find("The pass key is ");
    if (k != std::string::npos) {
      ++with_key;
      const std::string key = extract_answer(q.substr(k + 16), true);
      EXPECT_NE(c.find("The pass key is " + key + "."), std::string::npos);
    }
  }
  EXPECT_GT(bos_first, 5);
  EXPECT_LT(bos_first, 35);
  EXPECT_GT(with_key, 15);
  EXPECT_GT(numbers, 10);
}

TEST_F(EvalRetrieval, FactsFilesAreCheckedLineByLine) {
  const fs::path p = fs::temp_directory_path() / ("cepe-facts-" + std::to_string(::getpid()) + ".tsv");
  {
    std::ofstream(p) << "capital\tGhana\tAccra\n\nchemical symbol\tIron\tFe\n";
  }
  const auto facts = load_facts(p.string());
  ASSERT_EQ(facts.size(), 2u);
  EXPECT_EQ(facts[1].statement(), "The chemical symbol of Iron is Fe.");
  EXPECT_EQ(facts[0].question(), "What is the capital of Ghana? The capital of Ghana is");
  {
    std::ofstream(p) << "capital\tGhana\n";
  }
  try {
    load_facts(p.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(":1:"), std::string::npos) << e.what();
  }
  fs::remove(p);
  EXPECT_THROW(load_facts(p.string()), Error);
}

TEST(EvalPlot, HeatMapCellsAreColouredByValue) {
  plot::Figure fig;
  fig.width = 400;
  fig.height = 300;
  plot::Chart c;
  c.heatmap.columns = {"1k", "4k"};
  c.heatmap.rows = {"0%", "100%"};
  c.heatmap.values = {1.0, 0.0, 0.5, NAN};
  fig.charts.push_back(c);
  const plot::Image img = plot::render(fig);
  // Sample near each cell's corner (away from the text): green, red, yellow, grey.
  auto at = [&](double fx, double fy) {
    const int x = static_cast<int>(fx * img.width), y = static_cast<int>(fy * img.height);
    const uint8_t* p = &img.rgb[static_cast<size_t>((y * img.width + x) * 3)];
    return std::array<int, 3>{p[0], p[1], p[2]};
  };
  const auto green = at(0.25, 0.1), red = at(0.9, 0.1), yellow = at(0.25, 0.75), grey = at(0.9, 0.75);
  EXPECT_GT(green[1], green[0]);
  EXPECT_GT(red[0], red[1]);
  EXPECT_GT(yellow[0], 200);
  EXPECT_GT(yellow[1], 200);
  EXPECT_EQ(grey[0], grey[2]);
  c.heatmap.values.pop_back();
  fig.charts[0] = c;
  EXPECT_THROW(plot::render(fig), Error);
}

}  // namespace
}  // namespace cepe::eval
