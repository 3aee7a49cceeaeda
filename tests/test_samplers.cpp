// Samplers (src/train/samplers.h): each layout's slicing on hand-made token files with known values, determinism and
// resume, rank sharding, mixtures, MLM masking and context-masking statistics, eval mode, and bad configurations.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "cepe/error.h"
#include "cli_runner.h"
#include "train/samplers.h"
#include "train/token_file.h"

namespace cepe {
namespace {

namespace fs = std::filesystem;

constexpr int32_t kVocab = 1000;

class SamplerTest : public testing::CliScratchTest {
 protected:
  std::shared_ptr<const TokenFile> make_file(const std::string& name, const std::vector<std::vector<int32_t>>& docs,
                                             const std::string& sha = std::string(64, 'c')) {
    TokenizerIdentity t;
    t.sha256 = sha;
    t.vocab_size = kVocab;
    t.bos_id = 1, t.eos_id = 2, t.unk_id = 0;
    TokenFileWriter w(path(name), t, {name});
    for (const auto& d : docs) w.add_document(d);
    w.commit();
    return std::make_shared<const TokenFile>(TokenFile::open(path(name)));
  }
  // Documents of the given lengths whose token at global position p has id 10 + p (mod 980): every slice says where it
  // came from.
  std::shared_ptr<const TokenFile> positional_file(const std::string& name, const std::vector<int64_t>& lengths) {
    std::vector<std::vector<int32_t>> docs;
    int64_t p = 0;
    for (int64_t n : lengths) {
      docs.emplace_back();
      for (int64_t i = 0; i < n; ++i, ++p) docs.back().push_back(static_cast<int32_t>(10 + p % 980));
    }
    return make_file(name, docs);
  }
  // doc lengths 5, 20, 12, 30, 8 -> 75 tokens, ids 10 .. 84; doc starts 0, 5, 25, 37, 67.
  std::shared_ptr<const TokenFile> standard() { return positional_file("std.tokens", {5, 20, 12, 30, 8}); }

  static SamplerConfig one_stream(Layout layout, std::shared_ptr<const TokenFile> f, int64_t seq_len, int64_t n_ctx = 0,
                                  int64_t ctx_len = 0) {
    SamplerConfig c;
    StreamConfig s;
    s.layout = layout;
    s.files = {std::move(f)};
    c.streams = {s};
    c.seq_len = seq_len;
    c.n_ctx = n_ctx;
    c.ctx_len = ctx_len;
    return c;
  }
  static std::vector<int32_t> range_ids(int32_t first, int32_t n) {
    std::vector<int32_t> v;
    for (int32_t i = 0; i < n; ++i) v.push_back(first + i);
    return v;
  }
  static std::vector<int32_t> row(const std::vector<int32_t>& v, int64_t r, int64_t n) {
    return {v.begin() + r * n, v.begin() + (r + 1) * n};
  }
};

void expect_same(const Batch& a, const Batch& b) {
  EXPECT_EQ(a.rows, b.rows);
  EXPECT_EQ(a.input_ids, b.input_ids);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_EQ(a.attention_mask, b.attention_mask);
  EXPECT_EQ(a.encoder_input_ids, b.encoder_input_ids);
  EXPECT_EQ(a.encoder_attention_mask, b.encoder_attention_mask);
  EXPECT_EQ(a.sample_index, b.sample_index);
  EXPECT_EQ(a.stream, b.stream);
}

// Rows [first, first + n) of `b` as a batch of their own.
Batch rows_of(const Batch& b, int64_t first, int64_t n) {
  Batch o;
  o.rows = n, o.seq_len = b.seq_len, o.n_ctx = b.n_ctx, o.ctx_len = b.ctx_len;
  const int64_t T = b.seq_len, E = b.n_ctx * b.ctx_len;
  auto cut = [&](const auto& v, int64_t w, auto& out) { out.assign(v.begin() + first * w, v.begin() + (first + n) * w); };
  cut(b.input_ids, T, o.input_ids);
  cut(b.labels, T, o.labels);
  cut(b.attention_mask, T, o.attention_mask);
  cut(b.encoder_input_ids, E, o.encoder_input_ids);
  cut(b.encoder_attention_mask, E, o.encoder_attention_mask);
  cut(b.sample_index, 1, o.sample_index);
  cut(b.stream, 1, o.stream);
  return o;
}

TEST(IndexPermutation, IsABijectionForAnySize) {
  for (uint64_t n : {1ull, 2ull, 3ull, 7ull, 64ull, 100ull, 1000ull, 4097ull}) {
    SCOPED_TRACE(n);
    const IndexPermutation p(n, 12345);
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < n; ++i) seen.insert(p(i));
    EXPECT_EQ(seen.size(), n);
    EXPECT_EQ(*seen.rbegin(), n - 1);
  }
  // Keys give different orders, and a large order is not close to the identity.
  const IndexPermutation a(1000, 1), b(1000, 2);
  int same = 0, fixed = 0;
  for (uint64_t i = 0; i < 1000; ++i) same += a(i) == b(i), fixed += a(i) == i;
  EXPECT_LT(same, 20);
  EXPECT_LT(fixed, 20);
}

TEST_F(SamplerTest, FilteredSlicesLongDocumentsOnly) {
  SamplerConfig c = one_stream(Layout::Filtered, standard(), 4, 2, 3);  // L = 10, stride 4
  c.shuffle = false;
  const Sampler s(c);
  // doc 1 (20 tokens at 5): windows at 5, 9, 13; doc 2 (12 at 25): 25; doc 3 (30 at 37): 37, 41, ..., 57.
  ASSERT_EQ(s.size(), 10);
  const std::vector<int64_t> starts = {5, 9, 13, 25, 37, 41, 45, 49, 53, 57};
  const Batch b = s.samples(0, 10);
  ASSERT_EQ(b.rows, 10);
  ASSERT_TRUE(b.has_encoder());
  for (int64_t r = 0; r < 10; ++r) {
    SCOPED_TRACE(r);
    const auto w = static_cast<int32_t>(10 + starts[r]);
    EXPECT_EQ(s.locate(r).token_offset, starts[r]);
    // encoder = the window's first 6 tokens as [2, 3], decoder = the next 4, labels = the decoder tokens.
    EXPECT_EQ(row(b.encoder_input_ids, r, 6), range_ids(w, 6));
    EXPECT_EQ(row(b.input_ids, r, 4), range_ids(w + 6, 4));
    EXPECT_EQ(row(b.labels, r, 4), range_ids(w + 6, 4));
  }
  EXPECT_EQ(b.attention_mask, std::vector<uint8_t>(40, 1));
  EXPECT_EQ(b.encoder_attention_mask, std::vector<uint8_t>(60, 1));
}

TEST_F(SamplerTest, FilteredWithTheReferencesLongerWindows) {
  // ab_32k read with less context (test_ab_32k_prevdoc_8x_2048 in miniature): windows of 12 with a 6-token context
  // part, encoder = the last 3 of those, decoder = the first 2 of the decoder part; stride 6 (the decoder part).
  SamplerConfig c = one_stream(Layout::Filtered, standard(), 2, 1, 3);
  c.streams[0].prev_len = 6;
  c.streams[0].window_len = 12;
  c.shuffle = false;
  const Sampler s(c);
  ASSERT_EQ(s.size(), 2 + 1 + 4);  // doc 1: (20-12)/6+1 = 2; doc 2: (12-12)/6+1 = 1; doc 3: (30-12)/6+1 = 4
  const Batch b = s.samples(0, 1);
  EXPECT_EQ(b.encoder_input_ids, range_ids(15 + 3, 3));
  EXPECT_EQ(b.input_ids, range_ids(15 + 6, 2));
}

TEST_F(SamplerTest, ConcatCutsTheWholeStream) {
  SamplerConfig c = one_stream(Layout::Concat, standard(), 4, 2, 3);
  c.shuffle = false;
  const Sampler s(c);
  ASSERT_EQ(s.size(), 17);  // (75 - 10) / 4 + 1, across document boundaries
  for (int64_t r : {0, 1, 16}) {
    const Batch b = s.samples(r, 1);
    const auto w = static_cast<int32_t>(10 + 4 * r);
    EXPECT_EQ(b.encoder_input_ids, range_ids(w, 6));
    EXPECT_EQ(b.input_ids, range_ids(w + 6, 4));
  }
  // Windows never cross from one file into the next.
  SamplerConfig two = c;
  two.streams[0].files.push_back(positional_file("second.tokens", {9, 3}));  // 12 tokens: 1 window
  const Sampler s2(two);
  EXPECT_EQ(s2.size(), 18);
  EXPECT_EQ(s2.locate(17).file, 1);
  EXPECT_EQ(s2.locate(17).token_offset, 0);
  EXPECT_EQ(s2.samples(17, 1).input_ids, range_ids(10 + 6, 4));
}

TEST_F(SamplerTest, DuplicateAndDecoderLayouts) {
  SamplerConfig c = one_stream(Layout::Duplicate, standard(), 6, 2, 3);
  c.shuffle = false;
  const Sampler dup(c);
  ASSERT_EQ(dup.size(), 12);  // (75 - 6) / 6 + 1
  const Batch b = dup.samples(3, 1);
  EXPECT_EQ(b.input_ids, range_ids(10 + 18, 6));
  EXPECT_EQ(b.encoder_input_ids, b.input_ids);  // the same tokens as [2, 3]
  EXPECT_EQ(b.labels, b.input_ids);

  SamplerConfig d = one_stream(Layout::Decoder, standard(), 8);
  d.shuffle = false;
  const Sampler dec(d);
  ASSERT_EQ(dec.size(), 9);
  const Batch db = dec.samples(0, 9);
  EXPECT_FALSE(db.has_encoder());
  EXPECT_TRUE(db.encoder_input_ids.empty());
  for (int64_t r = 0; r < 9; ++r) EXPECT_EQ(row(db.input_ids, r, 8), range_ids(static_cast<int32_t>(10 + 8 * r), 8));
  EXPECT_EQ(db.labels, db.input_ids);
}

TEST_F(SamplerTest, LossWindowKeepsOnlyTheLastLabels) {
  SamplerConfig c = one_stream(Layout::Concat, standard(), 4, 2, 3);
  c.shuffle = false;
  c.loss_window = 1;
  const Batch b = Sampler(c).samples(0, 1);
  EXPECT_EQ(b.input_ids, range_ids(16, 4));
  EXPECT_EQ(b.labels, (std::vector<int32_t>{-100, -100, -100, 19}));
}

TEST_F(SamplerTest, TrainModeEpochsArePermutations) {
  const SamplerConfig c = one_stream(Layout::Filtered, standard(), 4, 2, 3);
  const Sampler s(c);
  ASSERT_EQ(s.stream_windows(0), 10);
  std::vector<int64_t> e0, e1;
  for (int64_t i = 0; i < 10; ++i) e0.push_back(s.locate(i).window), e1.push_back(s.locate(10 + i).window);
  EXPECT_EQ(std::set<int64_t>(e0.begin(), e0.end()).size(), 10u);
  EXPECT_EQ(std::set<int64_t>(e1.begin(), e1.end()).size(), 10u);
  EXPECT_NE(e0, e1);
  EXPECT_EQ(s.locate(10).epoch, 1);
  std::vector<int64_t> ordered(10);
  std::iota(ordered.begin(), ordered.end(), 0);
  EXPECT_NE(e0, ordered);
  SamplerConfig other = c;
  other.seed = 7;
  const Sampler t(other);
  std::vector<int64_t> f0;
  for (int64_t i = 0; i < 10; ++i) f0.push_back(t.locate(i).window);
  EXPECT_NE(e0, f0);
  // The window's tokens match the window index.
  const SampleSource src = s.locate(3);
  const std::vector<int64_t> starts = {5, 9, 13, 25, 37, 41, 45, 49, 53, 57};
  EXPECT_EQ(src.token_offset, starts[static_cast<size_t>(src.window)]);
  EXPECT_EQ(s.samples(3, 1).input_ids, range_ids(static_cast<int32_t>(10 + src.token_offset + 6), 4));
}

TEST_F(SamplerTest, DeterministicAndResumable) {
  SamplerConfig c = one_stream(Layout::Concat, standard(), 4, 2, 3);
  c.seed = 42;
  c.batch_size = 3;
  c.context_masking = {0.5, 0.2};
  const Sampler a(c);
  std::vector<Batch> run;
  for (int64_t g = 0; g < 8; ++g) run.push_back(a.batch(g));
  // A fresh sampler that jumps straight to batch 5 (a resume) sees the same batch, masks included.
  const Sampler resumed(c);
  expect_same(resumed.batch(5), run[5]);
  expect_same(resumed.batch(7), run[7]);
  // Any grouping of the same indices gives the same rows.
  expect_same(rows_of(a.samples(0, 24), 9, 3), run[3]);
  expect_same(a.samples(10, 1), rows_of(run[3], 1, 1));
  EXPECT_EQ(run[2].sample_index, (std::vector<int64_t>{6, 7, 8}));
}

TEST_F(SamplerTest, TwoRanksOfBEqualOneRankOf2B) {
  for (Layout layout : {Layout::Concat, Layout::Mlm}) {
    SCOPED_TRACE(layout_name(layout));
    const bool enc = layout_has_encoder(layout);
    SamplerConfig one = one_stream(layout, standard(), 4, enc ? 2 : 0, enc ? 3 : 0);
    one.seed = 9;
    one.batch_size = 4;
    if (enc) one.context_masking = {0.6, 0.3};
    SamplerConfig r0 = one, r1 = one;
    r0.batch_size = r1.batch_size = 2;
    r0.world_size = r1.world_size = 2;
    r1.rank = 1;
    const Sampler s(one), s0(r0), s1(r1);
    for (int64_t g : {0, 1, 2, 17}) {
      const Batch full = s.batch(g);
      expect_same(s0.batch(g), rows_of(full, 0, 2));
      expect_same(s1.batch(g), rows_of(full, 2, 2));
    }
  }
}

TEST_F(SamplerTest, EvalModeIsOrderedAndEndsWithAPartialBatch) {
  SamplerConfig c = one_stream(Layout::Filtered, standard(), 4, 2, 3);
  c.shuffle = false;
  c.world_size = 2;
  c.batch_size = 3;
  c.context_masking = {1.0, 1.0};  // never applied in eval mode
  SamplerConfig c1 = c;
  c1.rank = 1;
  const Sampler s0(c), s1(c1);
  EXPECT_EQ(s0.num_batches(), 2);
  EXPECT_EQ(s0.batch(1).sample_index, (std::vector<int64_t>{6, 7, 8}));
  EXPECT_EQ(s1.batch(1).sample_index, (std::vector<int64_t>{9}));
  EXPECT_EQ(s1.batch(2).rows, 0);
  EXPECT_EQ(s0.batch(0).encoder_attention_mask, std::vector<uint8_t>(18, 1));
  EXPECT_THROW(s0.locate(10), Error);
  SamplerConfig capped = c;
  capped.max_samples = 4;
  EXPECT_EQ(Sampler(capped).size(), 4);
}

TEST_F(SamplerTest, MixtureHonoursWeightsExactlyPerBlock) {
  const auto f = standard();
  SamplerConfig c = one_stream(Layout::Filtered, f, 4, 2, 3);
  StreamConfig concat;
  concat.layout = Layout::Concat;
  concat.files = {f};
  c.streams.push_back(concat);
  c.streams[0].weight = 2;
  c.streams[1].weight = 1;
  const Sampler s(c);
  EXPECT_EQ(s.block_slots(), (std::vector<int64_t>{2, 1}));
  std::map<int, std::set<int64_t>> stream_indices;
  for (int64_t b = 0; b < 50; ++b) {
    int from_filtered = 0;
    for (int64_t i = 3 * b; i < 3 * b + 3; ++i) {
      const SampleSource src = s.locate(i);
      from_filtered += src.stream == 0;
      EXPECT_TRUE(stream_indices[src.stream].insert(src.stream_index).second) << "stream index reused";
    }
    EXPECT_EQ(from_filtered, 2) << "block " << b;
  }
  // Each stream's own counter runs 0, 1, 2, ... without gaps.
  EXPECT_EQ(*stream_indices[0].rbegin(), 99);
  EXPECT_EQ(*stream_indices[1].rbegin(), 49);
  // The stream tag and the slicing agree.
  const Batch b = s.samples(0, 30);
  for (int64_t r = 0; r < 30; ++r) {
    const SampleSource src = s.locate(r);
    EXPECT_EQ(b.stream[r], src.stream);
    EXPECT_EQ(row(b.input_ids, r, 4), range_ids(static_cast<int32_t>(10 + src.token_offset + 6), 4));
  }
  // Without weights: proportional to the window counts (10 filtered, 17 concat).
  c.streams[0].weight = c.streams[1].weight = 0;
  EXPECT_EQ(Sampler(c).block_slots(), (std::vector<int64_t>{10, 17}));
  c.streams[0].weight = 0.67;
  c.streams[1].weight = 0.33;
  EXPECT_EQ(Sampler(c).block_slots(), (std::vector<int64_t>{67, 33}));
}

TEST_F(SamplerTest, MlmMaskingMatchesTheReferenceCollator) {
  // A long document of ordinary ids with specials sprinkled in: BOS 1, EOS 2, UNK 0, and [MASK] itself (1000 = vocab).
  std::vector<int32_t> doc;
  for (int i = 0; i < 40000; ++i) {
    if (i % 97 == 0) doc.push_back(1);
    else if (i % 97 == 50) doc.push_back(2);
    else if (i % 211 == 7) doc.push_back(0);
    else doc.push_back(3 + (i * 7919) % 990);
  }
  const auto f = make_file("mlm.tokens", {doc});
  SamplerConfig c = one_stream(Layout::Mlm, f, 512);
  c.seed = 3;
  const Sampler s(c);
  const int32_t kMask = kVocab;
  int64_t eligible = 0, selected = 0;
  const Batch b = s.samples(0, 200);
  SamplerConfig eval = c;
  eval.shuffle = false;
  for (int64_t r = 0; r < b.rows; ++r) {
    const SampleSource src = s.locate(r);
    const int32_t* orig = f->tokens().data() + src.token_offset;
    for (int64_t t = 0; t < 512; ++t) {
      const int32_t in = b.input_ids[r * 512 + t], lab = b.labels[r * 512 + t], o = orig[t];
      const bool special = o == 0 || o == 1 || o == 2;
      EXPECT_EQ(b.attention_mask[r * 512 + t], 1);
      if (special) {
        ASSERT_EQ(in, o) << "specials are never selected";
        ASSERT_EQ(lab, -100);
        continue;
      }
      ++eligible;
      if (lab != -100) {
        ++selected;
        ASSERT_EQ(lab, o) << "label = the original id";
        ASSERT_EQ(in, kMask) << "always [MASK], no 80/10/10";
      } else {
        ASSERT_EQ(in, o) << "unselected tokens are kept";
      }
    }
  }
  const double rate = static_cast<double>(selected) / static_cast<double>(eligible);
  const double sd = std::sqrt(0.3 * 0.7 / static_cast<double>(eligible));
  EXPECT_NEAR(rate, 0.3, 4 * sd) << selected << " of " << eligible;
  EXPECT_GT(eligible, 90000);
  // p is configurable; the same index gives the same masks; [MASK] in the data is never selected.
  c.mlm_probability = 0.5;
  c.mask_id = 5;  // pretend id 5 is [MASK]
  const Batch h = Sampler(c).samples(0, 50);
  int64_t sel = 0, elig = 0;
  for (size_t i = 0; i < h.labels.size(); ++i) {
    const int32_t o = h.labels[i] != -100 ? h.labels[i] : h.input_ids[i];
    if (o == 5 && h.labels[i] == -100) continue;
    ASSERT_NE(h.labels[i], 5) << "a [MASK] in the data is special";
    if (o > 2 && o != 5) ++elig, sel += h.labels[i] != -100;
  }
  EXPECT_NEAR(static_cast<double>(sel) / static_cast<double>(elig), 0.5, 0.02);
  expect_same(Sampler(c).samples(7, 1), rows_of(h, 7, 1));
}

TEST_F(SamplerTest, ContextMaskingProbabilities) {
  // 64 chunks of 8 per sample, mask_prob 0.3, mask_seq_prob 0.1: whole chunks 3%, a suffix of 1..7 tokens 27%.
  std::vector<int64_t> lengths(1, 64 * 8 * 40 + 8 * 40);
  const auto f = positional_file("long.tokens", lengths);
  SamplerConfig c = one_stream(Layout::Concat, f, 8, 64, 8);
  c.context_masking = {0.3, 0.1};
  c.seed = 11;
  const Sampler s(c);
  SamplerConfig plain = c;
  plain.context_masking = {};
  const Sampler unmasked(plain);
  int64_t chunks = 0, whole = 0, partial = 0;
  std::map<int, int64_t> suffix;
  for (int64_t i = 0; i < 300; i += 10) {
    const Batch b = s.samples(i, 10);
    EXPECT_EQ(b.encoder_input_ids, unmasked.samples(i, 10).encoder_input_ids) << "masking leaves the ids alone";
    for (int64_t k = 0; k < b.rows * 64; ++k) {
      const uint8_t* m = b.encoder_attention_mask.data() + k * 8;
      int zeros = 0;
      for (int t = 0; t < 8; ++t) zeros += m[t] == 0;
      for (int t = 0; t < 8 - zeros; ++t) ASSERT_EQ(m[t], 1) << "only a suffix is masked";
      ++chunks;
      if (zeros == 8) ++whole;
      else if (zeros > 0) ++partial, ++suffix[zeros];
    }
  }
  const auto n = static_cast<double>(chunks);
  EXPECT_NEAR(static_cast<double>(whole) / n, 0.03, 4 * std::sqrt(0.03 * 0.97 / n));
  EXPECT_NEAR(static_cast<double>(partial) / n, 0.27, 4 * std::sqrt(0.27 * 0.73 / n));
  EXPECT_EQ(suffix.begin()->first, 1);
  EXPECT_EQ(suffix.rbegin()->first, 7);  // randint(1, ctx_len): 1 .. ctx_len - 1
  for (const auto& [z, count] : suffix)  // uniform over 1..7: each ≈ partial / 7
    EXPECT_NEAR(static_cast<double>(count), static_cast<double>(partial) / 7, 5 * std::sqrt(static_cast<double>(partial) / 7));
  // The decoder side is never masked.
  EXPECT_EQ(s.samples(0, 1).attention_mask, std::vector<uint8_t>(8, 1));
}

TEST_F(SamplerTest, MinContextChunksKeepsARandomNumberOfTheNearestChunks) {
  // 16 chunks of 4, min_context_chunks 1: k = min(16, floor(17^u)) chunks nearest the decoder stay visible, the
  // ones before them are masked whole. P(k = 1) = log 2 / log 17, P(2 <= k <= 3) = P(4..7) = P(8..15) the same,
  // P(k = 16) = log(17/16) / log 17.
  std::vector<int64_t> lengths(1, 64 * 3000);
  const auto f = positional_file("long.tokens", lengths);
  SamplerConfig c = one_stream(Layout::Concat, f, 8, 16, 4);
  c.seed = 5;
  c.streams[0].min_context_chunks = 1;
  SamplerConfig plain = c;
  plain.streams[0].min_context_chunks = 0;
  const Sampler s(c), unmasked(plain);
  std::map<int64_t, int64_t> kept;
  const int64_t n = 2000;
  for (int64_t i = 0; i < n; i += 50) {
    const Batch b = s.samples(i, 50), u = unmasked.samples(i, 50);
    ASSERT_EQ(b.encoder_input_ids, u.encoder_input_ids) << "the ids are left as they are";
    ASSERT_EQ(b.input_ids, u.input_ids);
    for (int64_t r = 0; r < b.rows; ++r) {
      const uint8_t* m = b.encoder_attention_mask.data() + r * 64;
      int64_t zeros = 0;
      while (zeros < 64 && m[zeros] == 0) ++zeros;
      ASSERT_EQ(zeros % 4, 0) << "whole chunks only";
      for (int64_t t = zeros; t < 64; ++t) ASSERT_EQ(m[t], 1) << "the masked chunks are the farthest ones";
      ++kept[16 - zeros / 4];
    }
  }
  ASSERT_GE(kept.begin()->first, 1);
  ASSERT_LE(kept.rbegin()->first, 16);
  auto share = [&](int64_t lo, int64_t hi) {
    int64_t k = 0;
    for (int64_t v = lo; v <= hi; ++v) k += kept.count(v) ? kept.at(v) : 0;
    return static_cast<double>(k) / static_cast<double>(n);
  };
  const double doubling = std::log(2.0) / std::log(17.0), last = std::log(17.0 / 16.0) / std::log(17.0);
  const std::pair<int64_t, int64_t> doublings[] = {{1, 1}, {2, 3}, {4, 7}, {8, 15}};
  for (const auto& [lo, hi] : doublings)
    EXPECT_NEAR(share(lo, hi), doubling, 4 * std::sqrt(doubling * (1 - doubling) / static_cast<double>(n))) << lo;
  EXPECT_NEAR(share(16, 16), last, 4 * std::sqrt(last * (1 - last) / static_cast<double>(n)));
  // A pure function of the sample index, like every other draw.
  EXPECT_EQ(Sampler(c).samples(77, 3).encoder_attention_mask, s.samples(77, 3).encoder_attention_mask);
  // Eval mode never masks.
  SamplerConfig eval = c;
  eval.shuffle = false;
  const Batch e = Sampler(eval).samples(0, 4);
  EXPECT_EQ(e.encoder_attention_mask, std::vector<uint8_t>(4 * 64, 1));
}

TEST_F(SamplerTest, BadConfigurationsAreClearErrors) {
  const auto f = standard();
  auto fails = [&](SamplerConfig c, const std::string& piece) {
    try {
      Sampler s(std::move(c));
      ADD_FAILURE() << "accepted (expected '" << piece << "')";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(piece), std::string::npos) << e.what();
    }
  };
  SamplerConfig base = one_stream(Layout::Concat, f, 4, 2, 3);
  fails(SamplerConfig{}, "no streams");
  SamplerConfig c = base;
  c.seq_len = 0;
  fails(c, "seq_len must be positive");
  c = base, c.n_ctx = 0;
  fails(c, "need n_ctx > 0");
  c = one_stream(Layout::Decoder, f, 4, 2, 3);
  fails(c, "only for layouts with an encoder");
  c = base, c.rank = 2, c.world_size = 2;
  fails(c, "rank 2 is outside world size 2");
  c = base, c.context_masking.mask_prob = 1.5;
  fails(c, "mask_prob and mask_seq_prob must be in [0, 1]");
  c = base, c.streams[0].min_context_chunks = 3;
  fails(c, "min_context_chunks 3 must be in [1, n_ctx = 2]");
  c = base, c.context_masking.mask_prob = 0.3, c.ctx_len = 1, c.n_ctx = 6;
  fails(c, "ctx_len >= 2");
  c = base, c.streams[0].prev_len = 5;
  fails(c, "prev_len 5 is shorter than the encoder's n_ctx x ctx_len = 6");
  c = base, c.streams[0].window_len = 8;
  fails(c, "window_len 8 is shorter than prev_len + seq_len = 10");
  c = one_stream(Layout::Duplicate, f, 4, 2, 3);
  fails(c, "duplicate needs n_ctx x ctx_len (6) <= seq_len (4)");
  c = one_stream(Layout::Filtered, f, 100, 2, 3);
  fails(c, "has no windows: no document has at least window_len = 106 tokens");
  c = base;
  c.streams.push_back(one_stream(Layout::Decoder, f, 4).streams[0]);
  fails(c, "cannot mix with concat");
  c = base;
  c.streams.push_back(base.streams[0]);
  c.streams[0].weight = 1;
  fails(c, "has weight 0 while others have weights");
  c = base;
  c.streams[0].files.push_back(make_file("other.tokens", {{1, 2, 3}}, std::string(64, 'd')));
  fails(c, "different tokenizer");
  c = one_stream(Layout::Mlm, f, 4);
  c.loss_window = 2;
  fails(c, "loss_window does not apply to the mlm layout");
  c = base, c.loss_window = 5;
  fails(c, "loss_window 5 is outside [0, seq_len = 4]");
  EXPECT_THROW(parse_layout("ab_8k"), Error);
  EXPECT_EQ(parse_layout("duplicate"), Layout::Duplicate);
}

TEST_F(SamplerTest, CliSamplePrintsTheLayout) {
  standard();
  const auto r = run_cepe({"data", "sample", path("std.tokens"), "--layout", "filtered", "--seq-len", "4", "--n-ctx", "2",
                           "--ctx-len", "3", "--eval", "--index", "3"});
  ASSERT_TRUE(testing::Succeeded(r)) << testing::describe(r);
  EXPECT_NE(r.out.find("\"input_ids\":[41,42,43,44]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"encoder_input_ids\":[[35,36,37],[38,39,40]]"), std::string::npos) << r.out;
  EXPECT_TRUE(testing::CleanError(run_cepe({"data", "sample", path("std.tokens"), "--layout", "ab", "--seq-len", "4"}),
                                  {"unknown data layout"}));
}

}  // namespace
}  // namespace cepe
