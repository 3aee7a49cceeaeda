// The model against the original reference (every fixture in tests/data) and the invariances of spec §7.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "cepe/generate.h"
#include "cepe/model.h"
#include "cepe/safetensors.h"
#include "golden.h"
#include "kernels/cpu/softmax.h"
#include "cepe/kv_cache.h"

namespace cepe {
namespace {

using testing::data_dir;
using testing::Golden;

constexpr float kTol = 1e-4f;

const char* kFixtures[] = {"cepe-tiny-a", "ref-gqa", "ref-narrow-enc", "ref-padded-batch", "ref-tied",
                           "ref-multi-hid", "ref-with-query", "ref-rope-linear", "ref-rope-dynamic",
                           "ref-encoder-is-model", "ref-with-query-hid", "ref-mqa-wide-enc", "ref-long-chunks-batch"};

Tensor forward(const CepeModel& m, const Golden& g, bool with_context, EncodedContext* ctx_out = nullptr) {
  EncodedContext ctx;
  if (with_context && g.has_context) ctx = m.encode(g.chunks, g.ids.data(), g.mask.data(), g.len);
  Tensor logits = m.decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr,
                           with_context && g.has_context ? &ctx : nullptr);
  if (ctx_out) *ctx_out = std::move(ctx);
  return logits;
}

// Every logits row, padded decoder positions included: their values follow from the reference's
// additive masks too (see kernels/cpu/attention.h), so they must agree as well.
std::vector<uint8_t> all_rows(const Golden& g) { return std::vector<uint8_t>(static_cast<size_t>(g.batch * g.len), 1); }

float max_diff_rows(const float* a, const float* b, const std::vector<uint8_t>& rows, int64_t width) {
  float m = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    if (!rows[r]) continue;
    for (int64_t j = 0; j < width; ++j) m = std::max(m, std::abs(a[r * width + j] - b[r * width + j]));
  }
  return m;
}

class Parity : public ::testing::TestWithParam<const char*> {};

TEST_P(Parity, LogitsLogprobsAndEncoderStates) {
  const std::string dir = data_dir(GetParam());
  auto m = CepeModel::load(dir);
  Golden g(dir);
  EncodedContext ctx;
  Tensor logits = forward(*m, g, true, &ctx);
  const int64_t V = m->config().decoder.vocab_size;
  const auto rows = all_rows(g);
  const auto ref = g.f32("logits");
  ASSERT_EQ(static_cast<int64_t>(ref.size()), logits.numel());
  EXPECT_LT(max_diff_rows(logits.f32(), ref.data(), rows, V), kTol);

  // Log-probs of the next token, as the reference's target_logprobs.
  if (g.has("target_logprobs")) {
    std::vector<float> lp(static_cast<size_t>(logits.numel()));
    kernels::log_softmax_rows(logits.f32(), g.batch * g.len, V, lp.data());
    const auto ref_lp = g.f32("target_logprobs");
    for (int64_t b = 0; b < g.batch; ++b)
      for (int64_t t = 0; t + 1 < g.len; ++t) {
        if (!rows[static_cast<size_t>(b * g.len + t)]) continue;
        const int32_t next = g.ids[static_cast<size_t>(b * g.len + t + 1)];
        EXPECT_NEAR(lp[static_cast<size_t>((b * g.len + t) * V + next)], ref_lp[static_cast<size_t>(b * (g.len - 1) + t)], kTol)
            << "b=" << b << " t=" << t;
      }
  }

  if (g.has_context) {
    const std::string key = g.has("encoder_states") ? "encoder_states" : "encoder_last_hidden_state";
    const auto ref_states = g.f32(key);
    const auto valid = g.i64(g.has("encoder_valid_mask") ? "encoder_valid_mask" : "encoder_attention_mask");
    const Tensor& s = ctx.final_states();
    ASSERT_EQ(static_cast<int64_t>(ref_states.size()), s.numel());
    const int64_t de = s.dim(2);
    std::vector<uint8_t> vr(valid.begin(), valid.end());
    EXPECT_LT(max_diff_rows(s.f32(), ref_states.data(), vr, de), kTol);
  }
  if (g.has("encoder_hidden_states.0")) {  // every entry, for num_cross_attn_hidden_states > 1
    const auto valid = g.i64("encoder_valid_mask");
    std::vector<uint8_t> vr(valid.begin(), valid.end());
    ASSERT_EQ(ctx.states.size(), static_cast<size_t>(m->config().encoder_trunk().num_hidden_layers + 1));
    for (size_t k = 0; k < ctx.states.size(); ++k) {
      const auto ref_k = g.f32("encoder_hidden_states." + std::to_string(k));
      EXPECT_LT(max_diff_rows(ctx.states[k].f32(), ref_k.data(), vr, ctx.states[k].dim(2)), kTol) << "entry " << k;
    }
  }
}

TEST_P(Parity, NoContextIsPlainLlama) {
  const std::string dir = data_dir(GetParam());
  auto m = CepeModel::load(dir);
  Golden g(dir);
  if (!g.has("logits_no_context")) GTEST_SKIP() << "fixture has no no-context logits";
  Tensor logits = forward(*m, g, false);
  const auto ref = g.f32("logits_no_context");
  EXPECT_LT(max_diff_rows(logits.f32(), ref.data(), all_rows(g), m->config().decoder.vocab_size), kTol);
}

TEST_P(Parity, GreedyGenerationIsExact) {
  const std::string dir = data_dir(GetParam());
  auto m = CepeModel::load(dir);
  Golden g(dir);
  if (!g.has("generated_sequences")) GTEST_SKIP() << "the reference cannot generate with this config";
  const auto ref = g.i64("generated_sequences");
  const Shape rs = g.shape("generated_sequences");
  GenerateRequest req;
  req.batch = g.batch;
  req.len = g.len;
  req.ids = g.ids;
  req.mask = g.mask;
  if (g.has_context) req.context = g.chunks;
  GenerateOptions opt;
  opt.max_new_tokens = rs[1] - g.len;
  opt.sampling.greedy = true;
  GenerateResult res = generate(*m, req, opt);
  ASSERT_EQ(static_cast<int64_t>(res.sequences.size()), g.batch);
  for (int64_t b = 0; b < g.batch; ++b) {
    std::vector<int64_t> want(ref.begin() + b * rs[1], ref.begin() + (b + 1) * rs[1]);
    std::vector<int64_t> got(res.sequences[static_cast<size_t>(b)].begin(), res.sequences[static_cast<size_t>(b)].end());
    EXPECT_EQ(got, want) << "row " << b;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Parity, ::testing::ValuesIn(kFixtures),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// --- invariances (spec §7) ---------------------------------------------------------------------------

struct Loaded {
  std::shared_ptr<CepeModel> m;
  Golden g;
  explicit Loaded(const std::string& name) : m(CepeModel::load(data_dir(name))), g(data_dir(name)) {}
};

Tensor run(const Loaded& l, const ContextChunks& chunks) {
  EncodedContext ctx = l.m->encode(chunks, l.g.ids.data(), l.g.mask.data(), l.g.len);
  return l.m->decode(l.g.ids.data(), l.g.batch, l.g.len, l.g.positions.data(), l.g.mask.data(), nullptr, &ctx);
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  float m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(a.f32()[i] - b.f32()[i]));
  return m;
}

ContextChunks permute_chunks(const ContextChunks& c, const std::vector<int64_t>& perm) {
  ContextChunks p = c;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t j = 0; j < c.n_ctx; ++j)
      for (int64_t t = 0; t < c.ctx_len; ++t) {
        const size_t dst = static_cast<size_t>((b * c.n_ctx + j) * c.ctx_len + t);
        const size_t src = static_cast<size_t>((b * c.n_ctx + perm[static_cast<size_t>(j)]) * c.ctx_len + t);
        p.ids[dst] = c.ids[src];
        p.mask[dst] = c.mask[src];
      }
  return p;
}

TEST(Invariance, ChunkPermutationLeavesLogitsUnchanged) {
  Loaded l("ref-gqa");
  Tensor base = run(l, l.g.chunks);
  Tensor perm = run(l, permute_chunks(l.g.chunks, {2, 0, 1}));
  EXPECT_LT(max_abs_diff(base, perm), 1e-5f);
}

TEST(Invariance, TokenOrderInsideAChunkMatters) {
  Loaded l("ref-gqa");
  ContextChunks c = l.g.chunks;
  std::swap(c.ids[0], c.ids[3]);
  EXPECT_GT(max_abs_diff(run(l, l.g.chunks), run(l, c)), 1e-3f);
}

// Moving a chunk's padding from the right to the left, changing the pad id, and appending an all-pad
// chunk change nothing (RoPE is relative; pads are masked).
TEST(Invariance, PaddingSidePadIdAndEmptyChunks) {
  Loaded l("cepe-tiny-a");
  const ContextChunks& c0 = l.g.chunks;  // 3 chunks of 8, no padding
  const int64_t pad = 4;                 // make chunk 1 hold 4 real tokens, padded on the right
  ContextChunks right = c0, left = c0, other_pad = c0;
  for (int64_t t = 0; t < c0.ctx_len; ++t) {
    const size_t i = static_cast<size_t>(1 * c0.ctx_len + t);
    if (t >= c0.ctx_len - pad) { right.ids[i] = 0; right.mask[i] = 0; other_pad.ids[i] = 77; other_pad.mask[i] = 0; }
    // left-padded: the same 4 real tokens at the end of the chunk
    const size_t src = static_cast<size_t>(1 * c0.ctx_len + t - pad);
    if (t < pad) { left.ids[i] = 5; left.mask[i] = 0; } else { left.ids[i] = c0.ids[src]; left.mask[i] = 1; }
  }
  Tensor r = run(l, right);
  EXPECT_LT(max_abs_diff(r, run(l, left)), 1e-5f);
  EXPECT_LT(max_abs_diff(r, run(l, other_pad)), 1e-5f);
  EXPECT_GT(max_abs_diff(r, run(l, c0)), 1e-4f);  // padding really removed tokens

  ContextChunks extra = right;  // append one all-pad chunk
  extra.n_ctx += 1;
  for (int64_t t = 0; t < c0.ctx_len; ++t) { extra.ids.push_back(9); extra.mask.push_back(0); }
  EXPECT_LT(max_abs_diff(r, run(l, extra)), 1e-5f);
}

TEST(Invariance, EncoderIsBidirectionalAndChunksAreIndependent) {
  Loaded l("cepe-tiny-a");
  const ContextChunks& c0 = l.g.chunks;
  EncodedContext a = l.m->encode(c0);
  ContextChunks c1 = c0;
  c1.ids[static_cast<size_t>(2 * c0.ctx_len + c0.ctx_len - 1)] ^= 1;  // last token of chunk 2
  EncodedContext b = l.m->encode(c1);
  const int64_t de = a.final_states().dim(2), L = c0.ctx_len;
  auto row_diff = [&](int64_t chunk, int64_t t) {
    float m = 0;
    const float* x = a.final_states().f32() + (chunk * L + t) * de;
    const float* y = b.final_states().f32() + (chunk * L + t) * de;
    for (int64_t i = 0; i < de; ++i) m = std::max(m, std::abs(x[i] - y[i]));
    return m;
  };
  EXPECT_GT(row_diff(2, 0), 1e-4f);   // the first token of chunk 2 sees its last token
  for (int64_t t = 0; t < L; ++t) {
    EXPECT_EQ(row_diff(0, t), 0.0f);  // other chunks are untouched
    EXPECT_EQ(row_diff(1, t), 0.0f);
  }
}

// Step-by-step decoding with the KV cache and the cached encoder states equals the full forward.
TEST(Invariance, IncrementalDecodingEqualsFullForward) {
  for (const char* name : {"ref-gqa", "ref-multi-hid", "ref-narrow-enc"}) {
    Loaded l(name);
    const Golden& g = l.g;
    EncodedContext ctx = l.m->encode(g.chunks, g.ids.data(), g.mask.data(), g.len);
    Tensor full = l.m->decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, &ctx);
    auto cache = l.m->make_cache(g.batch, g.len);
    const int64_t V = l.m->config().decoder.vocab_size;
    float worst = 0;
    for (int64_t t = 0; t < g.len; ++t) {
      std::vector<int32_t> ids(static_cast<size_t>(g.batch));
      std::vector<int64_t> pos(static_cast<size_t>(g.batch));
      for (int64_t b = 0; b < g.batch; ++b) {
        ids[static_cast<size_t>(b)] = g.ids[static_cast<size_t>(b * g.len + t)];
        pos[static_cast<size_t>(b)] = t;
      }
      std::vector<uint8_t> mask(static_cast<size_t>(g.batch * (t + 1)), 1);
      Tensor step = l.m->decode(ids.data(), g.batch, 1, pos.data(), mask.data(), cache.get(), &ctx);
      for (int64_t b = 0; b < g.batch; ++b)
        for (int64_t v = 0; v < V; ++v)
          worst = std::max(worst, std::abs(step.f32()[b * V + v] - full.f32()[(b * g.len + t) * V + v]));
    }
    EXPECT_LT(worst, 1e-5f) << name;
  }
}

// With every cross-attention o_proj zeroed, any context gives the plain-LLaMA logits.
TEST(Invariance, ZeroCrossOutputEqualsNoContext) {
  namespace fs = std::filesystem;
  const fs::path tmp = fs::temp_directory_path() / ("cepe-zero-oproj-" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  const std::string src = data_dir("ref-gqa");
  fs::copy_file(src + "/config.json", tmp / "config.json", fs::copy_options::overwrite_existing);
  SafeTensors st = SafeTensors::open(src + "/model.safetensors");
  std::map<std::string, Tensor> tensors;
  for (const std::string& n : st.names()) {
    Tensor t = st.get(n).clone();
    if (n.find("cross_attn.o_proj") != std::string::npos) std::fill(t.f32(), t.f32() + t.numel(), 0.0f);
    tensors[n] = t;
  }
  save_safetensors((tmp / "model.safetensors").string(), tensors);
  auto m = CepeModel::load(tmp.string());
  Golden g(src);
  EncodedContext ctx = m->encode(g.chunks, g.ids.data(), g.mask.data(), g.len);
  Tensor with = m->decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, &ctx);
  Tensor without = m->decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, nullptr);
  EXPECT_EQ(max_abs_diff(with, without), 0.0f);
  fs::remove_all(tmp);
}

TEST(Generation, SamplingIsSeededAndRespectsTopK) {
  Loaded l("cepe-tiny-a");
  GenerateRequest req;
  req.batch = l.g.batch;
  req.len = l.g.len;
  req.ids = l.g.ids;
  req.context = l.g.chunks;
  GenerateOptions opt;
  opt.max_new_tokens = 12;
  opt.sampling.greedy = false;
  opt.sampling.temperature = 1.5f;
  opt.sampling.seed = 7;
  GenerateRequest r2 = req;
  auto a = generate(*l.m, req, opt).sequences;
  auto b = generate(*l.m, r2, opt).sequences;
  EXPECT_EQ(a, b);
  opt.sampling.seed = 8;
  GenerateRequest r3 = req;
  EXPECT_NE(a, generate(*l.m, r3, opt).sequences);
  // top-k 1 is greedy whatever the temperature.
  opt.sampling.top_k = 1;
  GenerateRequest r4 = req;
  auto k1 = generate(*l.m, r4, opt).sequences;
  GenerateOptions greedy;
  greedy.max_new_tokens = 12;
  GenerateRequest r5 = req;
  EXPECT_EQ(k1, generate(*l.m, r5, greedy).sequences);
}

TEST(Sampler, TopPKeepsTheNucleus) {
  SamplingOptions o;
  o.greedy = false;
  o.top_p = 0.5f;
  o.seed = 3;
  Sampler s(o);
  // Probabilities 0.6, 0.3, 0.1: the nucleus for top-p 0.5 is the first token only.
  const float logits[3] = {std::log(0.6f), std::log(0.3f), std::log(0.1f)};
  for (int i = 0; i < 200; ++i) EXPECT_EQ(s.sample(logits, 3), 0);
  o.top_p = 0.8f;  // now tokens 0 and 1
  Sampler s2(o);
  int seen1 = 0;
  for (int i = 0; i < 400; ++i) {
    const int32_t t = s2.sample(logits, 3);
    EXPECT_NE(t, 2);
    seen1 += t == 1;
  }
  EXPECT_GT(seen1, 60);   // ~1/3 of 400
  EXPECT_LT(seen1, 220);
}

}  // namespace
}  // namespace cepe

namespace cepe {
namespace {

// A bf16 checkpoint is used as stored (weights widened per tile inside the kernels) and gives the logits
// of an f32 checkpoint holding the same bf16-rounded values.
TEST(HalfPrecision, Bf16AndF16CheckpointsMatchRoundedF32) {
  namespace fs = std::filesystem;
  const std::string src = data_dir("ref-gqa");
  SafeTensors st = SafeTensors::open(src + "/model.safetensors");
  for (DType half : {DType::BF16, DType::F16}) {
    const fs::path root = fs::temp_directory_path() / ("cepe-half-" + std::to_string(::getpid()));
    const fs::path dh = root / "half", dr = root / "rounded";
    fs::create_directories(dh);
    fs::create_directories(dr);
    std::map<std::string, Tensor> h, r;
    for (const std::string& n : st.names()) {
      h[n] = st.get(n).to(half);
      r[n] = h[n].to(DType::F32);
    }
    save_safetensors((dh / "model.safetensors").string(), h);
    save_safetensors((dr / "model.safetensors").string(), r);
    fs::copy_file(src + "/config.json", dh / "config.json");
    fs::copy_file(src + "/config.json", dr / "config.json");
    auto mh = CepeModel::load(dh.string());
    auto mr = CepeModel::load(dr.string());
    EXPECT_LT(mh->weight_bytes(), mr->weight_bytes() * 6 / 10);  // kept in half precision
    Golden g(src);
    Tensor a = forward(*mh, g, true), b = forward(*mr, g, true);
    EXPECT_LT(max_abs_diff(a, b), 1e-5f) << dtype_name(half);
    fs::remove_all(root);
  }
}

}  // namespace
}  // namespace cepe
