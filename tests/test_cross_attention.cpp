// Cross-attention strategies (recompute, cached, absorbed) against each other and the reference goldens,
// streaming encoding against one-pass encoding, and BF16 context states.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "cepe/generate.h"
#include "cepe/model.h"
#include "golden.h"
#include "model/cross_attention.h"

namespace cepe {
namespace {

using testing::data_dir;
using testing::Golden;

const char* kFixtures[] = {"cepe-tiny-a", "ref-gqa", "ref-narrow-enc", "ref-padded-batch", "ref-tied",
                           "ref-multi-hid", "ref-with-query", "ref-rope-linear", "ref-rope-dynamic",
                           "ref-encoder-is-model", "ref-with-query-hid", "ref-mqa-wide-enc", "ref-long-chunks-batch"};
const CrossAttnMode kModes[] = {CrossAttnMode::Recompute, CrossAttnMode::Cached, CrossAttnMode::Absorbed};

float max_abs_diff(const float* a, const float* b, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

Tensor forward(const CepeModel& m, const Golden& g, CrossAttnMode mode, const EncodeOptions& eo = {}) {
  EncodedContext ctx = m.encode(g.chunks, g.ids.data(), g.mask.data(), g.len, eo);
  DecodeOptions o;
  o.cross_attn = mode;
  return m.decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, &ctx, o);
}

class Strategies : public ::testing::TestWithParam<const char*> {};

TEST_P(Strategies, EveryStrategyMatchesTheReference) {
  const std::string dir = data_dir(GetParam());
  auto m = CepeModel::load(dir);
  Golden g(dir);
  const auto ref = g.f32("logits");
  Tensor base = forward(*m, g, CrossAttnMode::Recompute);
  for (CrossAttnMode mode : kModes) {
    Tensor l = forward(*m, g, mode);
    ASSERT_EQ(l.numel(), static_cast<int64_t>(ref.size()));
    EXPECT_LT(max_abs_diff(l.f32(), ref.data(), l.numel()), 1e-4f) << cross_attn_mode_name(mode);
    EXPECT_LT(max_abs_diff(l.f32(), base.f32(), l.numel()), 1e-5f) << cross_attn_mode_name(mode) << " vs recompute";
  }
}

TEST_P(Strategies, GreedyGenerationIsExactWithEveryStrategy) {
  const std::string dir = data_dir(GetParam());
  auto m = CepeModel::load(dir);
  Golden g(dir);
  if (!g.has("generated_sequences")) GTEST_SKIP() << "the reference cannot generate with this config";
  const auto ref = g.i64("generated_sequences");
  const int64_t total = g.shape("generated_sequences")[1];
  for (CrossAttnMode mode : kModes) {
    GenerateRequest req;
    req.batch = g.batch;
    req.len = g.len;
    req.ids = g.ids;
    req.mask = g.mask;
    req.context = g.chunks;
    GenerateOptions opt;
    opt.max_new_tokens = total - g.len;
    opt.decode.cross_attn = mode;
    GenerateResult res = generate(*m, req, opt);
    for (int64_t b = 0; b < g.batch; ++b) {
      std::vector<int64_t> want(ref.begin() + b * total, ref.begin() + (b + 1) * total);
      std::vector<int64_t> got(res.sequences[static_cast<size_t>(b)].begin(), res.sequences[static_cast<size_t>(b)].end());
      EXPECT_EQ(got, want) << cross_attn_mode_name(mode) << " row " << b;
    }
  }
}

// Encoding pass by pass (one chunk at a time) equals encoding all chunks in one pass.
TEST_P(Strategies, StreamingEncodeEqualsOnePass) {
  const std::string dir = data_dir(GetParam());
  auto m = CepeModel::load(dir);
  Golden g(dir);
  EncodeOptions one, streamed;
  one.batch_tokens = 1 << 20;
  streamed.batch_tokens = 1;  // one chunk per pass
  int64_t calls = 0, last_done = 0;
  streamed.progress = [&](int64_t done, int64_t total) {
    ++calls;
    EXPECT_GT(done, last_done);
    EXPECT_EQ(total, g.batch * g.chunks.n_ctx);
    last_done = done;
  };
  EncodedContext a = m->encode(g.chunks, g.ids.data(), g.mask.data(), g.len, one);
  EncodedContext b = m->encode(g.chunks, g.ids.data(), g.mask.data(), g.len, streamed);
  EXPECT_EQ(calls, g.batch * g.chunks.n_ctx);
  ASSERT_EQ(a.states.size(), b.states.size());
  for (size_t e = 0; e < a.states.size(); ++e)
    // Not bit-exact: the BLAS may sum in another order for another number of rows.
    EXPECT_LT(max_abs_diff(a.states[e].f32(), b.states[e].f32(), a.states[e].numel()), 1e-5f) << "entry " << e;
  EXPECT_TRUE(std::equal(a.mask.data<uint8_t>(), a.mask.data<uint8_t>() + a.mask.numel(), b.mask.data<uint8_t>()));
}

// BF16 context states: half the memory, logits within bf16 rounding of the F32-state logits, for every strategy.
TEST_P(Strategies, Bf16StatesStayClose) {
  const std::string dir = data_dir(GetParam());
  auto m = CepeModel::load(dir);
  Golden g(dir);
  EncodeOptions bf;
  bf.state_dtype = DType::BF16;
  EncodedContext c16 = m->encode(g.chunks, g.ids.data(), g.mask.data(), g.len, bf);
  EncodedContext c32 = m->encode(g.chunks, g.ids.data(), g.mask.data(), g.len);
  EXPECT_EQ(c16.final_states().dtype(), DType::BF16);
  EXPECT_LT(c16.state_bytes(), c32.state_bytes());
  Tensor ref = forward(*m, g, CrossAttnMode::Recompute);
  for (CrossAttnMode mode : kModes) {
    Tensor l = forward(*m, g, mode, bf);
    EXPECT_LT(max_abs_diff(l.f32(), ref.f32(), l.numel()), 5e-2f) << cross_attn_mode_name(mode);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Strategies, ::testing::ValuesIn(kFixtures), [](const auto& info) {
  std::string n = info.param;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
});

// A batch row whose context is entirely padding averages V over all keys (the eager reference's result),
// the same in every strategy.
TEST(CrossAttention, AllPaddingRowIsTheSameInEveryStrategy) {
  auto m = CepeModel::load(data_dir("ref-gqa"));
  Golden g(data_dir("ref-gqa"));
  ContextChunks c = g.chunks;
  const int64_t per_row = c.n_ctx * c.ctx_len;
  std::fill(c.mask.begin() + per_row, c.mask.begin() + 2 * per_row, 0);  // row 1: no real context token
  EncodedContext ctx = m->encode(c);
  std::vector<Tensor> out;
  for (CrossAttnMode mode : kModes) {
    EncodedContext copy = ctx;
    DecodeOptions o;
    o.cross_attn = mode;
    out.push_back(m->decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, &copy, o));
  }
  for (size_t i = 1; i < out.size(); ++i) EXPECT_LT(max_abs_diff(out[0].f32(), out[i].f32(), out[0].numel()), 1e-5f);
  for (int64_t i = 0; i < out[0].numel(); ++i) ASSERT_TRUE(std::isfinite(out[0].f32()[i]));
}

LlamaConfig decoder_shape(int64_t hidden, int64_t heads, int64_t kv_heads) {
  LlamaConfig c;
  c.hidden_size = hidden;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  return c;
}

TEST(CrossAttention, AutoFollowsTheCostModel) {
  const size_t big = size_t{1} << 40;
  using M = CrossAttnMode;
  // LLaMA-2-7B decoder (32 KV heads) over the 1024-wide encoder: decoding from Φ (131 kFLOP per key and
  // layer) beats streaming 32 KiB of cached f32 K/V per key, so Auto never caches, whatever the budget;
  // long prefills project K/V instead (absorbed's cost grows with T).
  const LlamaConfig llama7b = decoder_shape(4096, 32, 32);
  EXPECT_EQ(resolve_cross_attn(M::Auto, llama7b, 1024, 1, false, 1000, big), M::Absorbed);
  EXPECT_EQ(resolve_cross_attn(M::Auto, llama7b, 1024, 16, false, 1000, big), M::Absorbed);
  EXPECT_EQ(resolve_cross_attn(M::Auto, llama7b, 1024, 1, true, 1000, big), M::Absorbed);
  EXPECT_EQ(resolve_cross_attn(M::Auto, llama7b, 1024, 1000, false, 1000, 0), M::Recompute);
  // One KV head: the cache is 1/32 as large and decoding from it is cheapest, so Auto fills it, but only
  // within the budget.
  const LlamaConfig mqa = decoder_shape(4096, 32, 1);
  EXPECT_EQ(resolve_cross_attn(M::Auto, mqa, 1024, 1, false, 1000, big), M::Cached);
  EXPECT_EQ(resolve_cross_attn(M::Auto, mqa, 1024, 1000, false, 1000, big), M::Cached);
  EXPECT_EQ(resolve_cross_attn(M::Auto, mqa, 1024, 1, true, 1000, 0), M::Cached);  // already filled
  EXPECT_EQ(resolve_cross_attn(M::Auto, mqa, 1024, 1, false, 1000, 999), M::Absorbed);
  // An explicit strategy is kept.
  for (M m : {M::Recompute, M::Cached, M::Absorbed})
    EXPECT_EQ(resolve_cross_attn(m, mqa, 1024, 1, false, 1000, 0), m);
}

TEST(CrossAttention, AutoCachesOnlyWhereItPaysAndWithinBudget) {
  for (const char* name : {"ref-mqa-wide-enc", "cepe-tiny-a"}) {
    SCOPED_TRACE(name);
    const bool pays = std::string(name) == "ref-mqa-wide-enc";  // one KV head of 16 against a 96-wide encoder
    auto m = CepeModel::load(data_dir(name));
    Golden g(data_dir(name));
    EncodedContext ctx = m->encode(g.chunks);
    DecodeOptions o;  // budget 0: nothing may be cached
    m->decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, &ctx, o);
    EXPECT_EQ(ctx.cross_kv_bytes(), 0u);
    o.cross_kv_budget = m->cross_kv_bytes(g.batch, ctx.keys());
    m->decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, &ctx, o);
    EXPECT_EQ(ctx.cross_kv_bytes(), pays ? o.cross_kv_budget : 0u);
  }
}

}  // namespace
}  // namespace cepe

namespace cepe {
namespace {

// Thousands of keys: recompute and cached walk 512-key blocks, absorbed 64-key blocks split over the
// threads, so the online softmax is exercised across blocks with different partitions; reversing the chunks
// moves every block boundary. All must agree, with padding spread through the context.
TEST(CrossAttention, ManyKeyBlocksAgreeAcrossStrategiesAndChunkOrder) {
  auto m = CepeModel::load(data_dir("cepe-tiny-a"));
  Golden g(data_dir("cepe-tiny-a"));
  ContextChunks c;
  c.batch = 1;
  c.ctx_len = 8;
  c.n_ctx = 650;  // 5200 keys
  std::mt19937 rng(11);
  for (int64_t j = 0; j < c.n_ctx; ++j) {
    const int64_t valid = 1 + static_cast<int64_t>(rng() % 8);
    for (int64_t t = 0; t < c.ctx_len; ++t) {
      c.ids.push_back(static_cast<int32_t>(3 + rng() % 500));
      c.mask.push_back(t < valid ? 1 : 0);
    }
  }
  ContextChunks rev = c;
  for (int64_t j = 0; j < c.n_ctx; ++j)
    for (int64_t t = 0; t < c.ctx_len; ++t) {
      rev.ids[static_cast<size_t>(j * 8 + t)] = c.ids[static_cast<size_t>((c.n_ctx - 1 - j) * 8 + t)];
      rev.mask[static_cast<size_t>(j * 8 + t)] = c.mask[static_cast<size_t>((c.n_ctx - 1 - j) * 8 + t)];
    }
  std::vector<Tensor> outs;
  for (const ContextChunks* chunks : {&c, &rev})
    for (CrossAttnMode mode : kModes) {
      EncodedContext ctx = m->encode(*chunks);
      DecodeOptions o;
      o.cross_attn = mode;
      outs.push_back(m->decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, &ctx, o));
    }
  for (size_t i = 1; i < outs.size(); ++i)
    EXPECT_LT(max_abs_diff(outs[0].f32(), outs[i].f32(), outs[0].numel()), 1e-5f) << "variant " << i;
}

}  // namespace
}  // namespace cepe
