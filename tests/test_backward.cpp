// Every backward kernel against central finite differences of its own forward, in double precision (the
// kernels are templates; f64 is the build these tests check, f32 the one the models run).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/loss.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"

namespace cepe {
namespace {

using Vec = std::vector<double>;

Vec random_vec(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  Vec v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks `analytic` = d(Σ weight∘f())/dx for every element of x by central differences (f reads x).
void expect_gradient(Vec& x, const Vec& analytic, const std::function<Vec()>& f, const Vec& weight, const char* what,
                     double tol = 1e-6) {
  ASSERT_EQ(analytic.size(), x.size()) << what;
  const double h = 1e-6;
  double max_abs = 0, worst = 0;
  for (double g : analytic) max_abs = std::max(max_abs, std::abs(g));
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double up = dot(f(), weight);
    x[i] = keep - h;
    const double down = dot(f(), weight);
    x[i] = keep;
    const double fd = (up - down) / (2 * h);
    worst = std::max(worst, std::abs(fd - analytic[i]));
    EXPECT_NEAR(analytic[i], fd, tol * std::max(1.0, max_abs)) << what << " element " << i;
  }
  EXPECT_GT(max_abs, 1e-3) << what << ": the gradient should not vanish in this test";
}

TEST(Backward, Linear) {
  const int64_t M = 5, K = 7, N = 4;
  Vec x = random_vec(M * K, 1), W = random_vec(N * K, 2), r = random_vec(M * N, 3);
  auto f = [&] {
    Vec y(M * N);
    kernels::gemm(false, true, M, N, K, 1.0, x.data(), K, W.data(), K, 0.0, y.data(), N);
    return y;
  };
  Vec dx(M * K, 0.5), dW(N * K, 0.0);
  kernels::linear_backward(x.data(), r.data(), M, K, N, W.data(), dx.data(), false, dW.data());
  expect_gradient(x, dx, f, r, "linear dx");
  expect_gradient(W, dW, f, r, "linear dW");
  // accumulate_dx adds to what is there.
  Vec acc(M * K, 1.0);
  kernels::linear_backward<double>(x.data(), r.data(), M, K, N, W.data(), acc.data(), true, nullptr);
  for (size_t i = 0; i < acc.size(); ++i) EXPECT_NEAR(acc[i], dx[i] + 1.0, 1e-12);
}

TEST(Backward, RmsNorm) {
  const int64_t rows = 4, d = 9;
  Vec x = random_vec(rows * d, 4), w = random_vec(d, 5), r = random_vec(rows * d, 6);
  const double eps = 1e-5;
  auto f = [&] {
    Vec y(rows * d);
    kernels::rmsnorm(x.data(), w.data(), rows, d, eps, y.data());
    return y;
  };
  Vec y(rows * d), rstd(rows), dx(rows * d), dw(d, 0.0);
  kernels::rmsnorm(x.data(), w.data(), rows, d, eps, y.data(), rstd.data());
  kernels::rmsnorm_backward(r.data(), x.data(), w.data(), rstd.data(), rows, d, dx.data(), false, dw.data());
  expect_gradient(x, dx, f, r, "rmsnorm dx");
  expect_gradient(w, dw, f, r, "rmsnorm dw");
}

TEST(Backward, SwiGluSiluBias) {
  const int64_t n = 11;
  Vec g = random_vec(n, 7, 2.0), u = random_vec(n, 8), r = random_vec(n, 9);
  auto f = [&] {
    Vec y(n);
    kernels::swiglu(g.data(), u.data(), n, y.data());
    return y;
  };
  Vec dg(n), du(n);
  kernels::swiglu_backward(r.data(), g.data(), u.data(), n, dg.data(), du.data());
  expect_gradient(g, dg, f, r, "swiglu dgate");
  expect_gradient(u, du, f, r, "swiglu dup");

  auto fs = [&] {
    Vec y(n);
    kernels::silu(g.data(), n, y.data());
    return y;
  };
  Vec ds(n);
  kernels::silu_backward(r.data(), g.data(), n, ds.data());
  expect_gradient(g, ds, fs, r, "silu dx");

  const int64_t rows = 3, m = 5;
  Vec b = random_vec(m, 10), base = random_vec(rows * m, 11), rb = random_vec(rows * m, 12);
  auto fb = [&] {
    Vec y = base;
    kernels::add_bias(y.data(), b.data(), rows, m);
    return y;
  };
  Vec db(m, 0.0);
  kernels::bias_backward(rb.data(), rows, m, db.data());
  expect_gradient(b, db, fb, rb, "bias db");
}

TEST(Backward, Embedding) {
  const int64_t V = 6, d = 4;
  const std::vector<int32_t> ids = {3, 1, 3, 0, 5, 3};  // repeated ids add up
  const int64_t n = static_cast<int64_t>(ids.size());
  Vec table = random_vec(V * d, 13), r = random_vec(n * d, 14);
  auto f = [&] {
    Vec y(n * d);
    kernels::embedding(table.data(), d, ids.data(), n, y.data());
    return y;
  };
  Vec dt(V * d, 0.0);
  kernels::embedding_backward(r.data(), ids.data(), n, d, dt.data());
  expect_gradient(table, dt, f, r, "embedding dtable");
  for (int64_t i = 0; i < d; ++i) EXPECT_EQ(dt[static_cast<size_t>(2 * d + i)], 0.0);  // id 2 is never used
  // padding_idx: lookups of that id pass no gradient to its row.
  Vec dp(V * d, 0.0);
  kernels::embedding_backward(r.data(), ids.data(), n, d, dp.data(), 3);
  for (int64_t v = 0; v < V; ++v)
    for (int64_t i = 0; i < d; ++i)
      EXPECT_EQ(dp[static_cast<size_t>(v * d + i)], v == 3 ? 0.0 : dt[static_cast<size_t>(v * d + i)]);
}

TEST(Backward, RopeIsItsInverseRotation) {
  LlamaConfig cfg;
  cfg.hidden_size = 32;
  cfg.num_attention_heads = 4;  // head_dim 8
  cfg.rope_theta = 10000;
  for (RopeScalingType type : {RopeScalingType::None, RopeScalingType::Linear, RopeScalingType::Dynamic}) {
    cfg.rope_scaling.type = type;
    cfg.rope_scaling.factor = 2.0;
    cfg.max_position_embeddings = 4;  // dynamic NTK rescales past it
    const kernels::Rope rope = kernels::Rope::make(cfg, 7);
    const int64_t rows = 7, heads = 2, hd = 8, stride = 20;
    std::vector<int64_t> pos = {0, 1, 2, 5, 6, 3, 4};
    Vec x = random_vec(rows * stride, 15), r = random_vec(rows * stride, 16);
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t i = heads * hd; i < stride; ++i) r[static_cast<size_t>(t * stride + i)] = 0;  // padding columns
    auto f = [&] {
      Vec y = x;
      kernels::apply_rope(y.data(), rows, heads, hd, stride, pos.data(), rope);
      return y;
    };
    Vec dx = r;
    kernels::apply_rope_backward(dx.data(), rows, heads, hd, stride, pos.data(), rope);
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t i = heads * hd; i < stride; ++i) dx[static_cast<size_t>(t * stride + i)] = 0;
    // The padding columns pass through the forward unchanged, but carry zero weight here.
    expect_gradient(x, dx, f, r, "rope dx");
  }
}

struct AttnCase {
  const char* name;
  int64_t B, T, K, Hq, Hkv, hd;
  bool causal;
  std::vector<uint8_t> mask;  // [B, K], empty = all keys
};

void check_attention(const AttnCase& c) {
  SCOPED_TRACE(c.name);
  const int64_t qd = c.Hq * c.hd, kvd = c.Hkv * c.hd;
  Vec q = random_vec(c.B * c.T * qd, 17), k = random_vec(c.B * c.K * kvd, 18), v = random_vec(c.B * c.K * kvd, 19);
  Vec r = random_vec(c.B * c.T * qd, 20);
  auto args = [&](Vec& out, Vec* lse) {
    kernels::AttentionArgsT<double> a;
    a.q = q.data();
    a.q_stride = qd;
    a.out = out.data();
    a.out_stride = qd;
    a.k = k.data();
    a.v = v.data();
    a.kv_stride = kvd;
    a.kv_batch_stride = c.K * kvd;
    a.batch = c.B;
    a.q_len = c.T;
    a.kv_len = c.K;
    a.q_heads = c.Hq;
    a.kv_heads = c.Hkv;
    a.head_dim = c.hd;
    a.key_mask = c.mask.empty() ? nullptr : c.mask.data();
    a.mask_batch_stride = c.K;
    a.causal = c.causal;
    a.scale = 1.0 / std::sqrt(static_cast<double>(c.hd));
    a.lse = lse ? lse->data() : nullptr;
    return a;
  };
  auto f = [&] {
    Vec out(c.B * c.T * qd);
    kernels::attention(args(out, nullptr));
    return out;
  };
  Vec out(c.B * c.T * qd), lse(c.B * c.Hq * c.T);
  const auto a = args(out, &lse);
  kernels::attention(a);
  Vec dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
  kernels::attention_backward(a, r.data(), qd, dq.data(), dk.data(), dv.data());
  expect_gradient(q, dq, f, r, "attention dq");
  expect_gradient(k, dk, f, r, "attention dk");
  expect_gradient(v, dv, f, r, "attention dv");

  // The same with the forward's softmax weights kept (probs): the backward reads them instead of recomputing
  // scale·QKᵀ and exp; the gradients agree with finite differences and with the recomputing backward.
  Vec out2(c.B * c.T * qd), lse2(c.B * c.Hq * c.T), probs(c.B * c.Hq * c.T * c.K, -7.0);
  auto a2 = args(out2, &lse2);
  a2.probs = probs.data();
  kernels::attention(a2);
  EXPECT_EQ(out2, out);
  Vec dq2(q.size(), 0.0), dk2(k.size(), 0.0), dv2(v.size(), 0.0);
  kernels::attention_backward(a2, r.data(), qd, dq2.data(), dk2.data(), dv2.data());
  expect_gradient(q, dq2, f, r, "attention dq (kept weights)");
  expect_gradient(k, dk2, f, r, "attention dk (kept weights)");
  expect_gradient(v, dv2, f, r, "attention dv (kept weights)");
  for (size_t i = 0; i < dq.size(); ++i) EXPECT_NEAR(dq2[i], dq[i], 1e-12) << "dq " << i;
  for (size_t i = 0; i < dk.size(); ++i) EXPECT_NEAR(dk2[i], dk[i], 1e-12) << "dk " << i;
  for (size_t i = 0; i < dv.size(); ++i) EXPECT_NEAR(dv2[i], dv[i], 1e-12) << "dv " << i;
}

// f32: the recomputing backward (used when the weights would be too large to keep) and the kept-weights one give
// the same gradients to float rounding, through the vectorised exp (fast_exp.h).
TEST(Backward, AttentionF32KeptWeightsEqualRecomputed) {
  const int64_t B = 2, T = 70, Hq = 4, Hkv = 2, hd = 8, qd = Hq * hd, kvd = Hkv * hd;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.5f, 1.5f);
  auto rnd = [&](int64_t n) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& e : x) e = u(rng);
    return x;
  };
  const std::vector<float> q = rnd(B * T * qd), k = rnd(B * T * kvd), v = rnd(B * T * kvd), r = rnd(B * T * qd);
  std::vector<uint8_t> mask(static_cast<size_t>(B * T), 1);
  mask[0] = mask[1] = mask[static_cast<size_t>(T + 5)] = 0;
  std::vector<float> grads[2][3];
  for (int keep = 0; keep < 2; ++keep) {
    std::vector<float> out(q.size()), lse(static_cast<size_t>(B * Hq * T)), probs(static_cast<size_t>(B * Hq * T * T));
    kernels::AttentionArgs a = kernels::heads_layout(Hq, Hkv, hd, q.data(), out.data(), B, T, k.data(), v.data(), T);
    a.causal = true;
    a.key_mask = mask.data();
    a.mask_batch_stride = T;
    a.lse = lse.data();
    a.probs = keep ? probs.data() : nullptr;
    kernels::attention(a);
    for (auto& g : grads[keep]) g.clear();
    grads[keep][0].assign(q.size(), 0.0f);
    grads[keep][1].assign(k.size(), 0.0f);
    grads[keep][2].assign(v.size(), 0.0f);
    kernels::attention_backward(a, r.data(), qd, grads[keep][0].data(), grads[keep][1].data(), grads[keep][2].data());
  }
  for (int t = 0; t < 3; ++t) {
    float scale = 0;
    for (float g : grads[0][t]) scale = std::max(scale, std::fabs(g));
    ASSERT_GT(scale, 0.0f);
    for (size_t i = 0; i < grads[0][t].size(); ++i)
      EXPECT_NEAR(grads[1][t][i], grads[0][t][i], 2e-6f * scale) << "tensor " << t << " element " << i;
  }
}

TEST(Backward, AttentionCausalGqaPadded) {
  // Row 0 left-padded: its first two queries have no allowed key (uniform average over the masked-once keys).
  AttnCase c{"causal gqa padded", 2, 5, 5, 4, 2, 3, true, {0, 0, 1, 1, 1, 1, 1, 1, 0, 1}};
  check_attention(c);
}

TEST(Backward, AttentionCausalLongerThanABlock) {
  AttnCase c{"causal, 70 queries (two query blocks)", 1, 70, 70, 2, 1, 2, true, {}};
  check_attention(c);
}

TEST(Backward, AttentionBidirectionalMaskedKeys) {
  // Cross-attention shape: more keys than queries, row 1 entirely padding (every query averages all keys).
  std::vector<uint8_t> mask(2 * 9, 1);
  mask[2] = mask[7] = 0;
  for (int j = 9; j < 18; ++j) mask[static_cast<size_t>(j)] = 0;
  AttnCase c{"bidirectional, masked keys, one fully padded row", 2, 3, 9, 4, 1, 4, false, mask};
  check_attention(c);
}

TEST(Backward, CrossEntropyWithIgnoredRows) {
  const int64_t rows = 5, V = 7;
  Vec logits = random_vec(rows * V, 21, 2.0);
  const std::vector<int64_t> labels = {3, kernels::kIgnoreIndex, 0, 6, 3};
  auto f = [&] {
    const kernels::LossSum s = kernels::cross_entropy<double>(logits.data(), rows, V, labels.data(), nullptr, 0.0);
    return Vec{s.sum / static_cast<double>(s.count)};
  };
  Vec g(rows * V, 0.0);
  const kernels::LossSum s = kernels::cross_entropy(logits.data(), rows, V, labels.data(), g.data(), 1.0 / 4.0);
  EXPECT_EQ(s.count, 4);
  expect_gradient(logits, g, f, {1.0}, "cross-entropy dlogits");
  for (int64_t i = 0; i < V; ++i) EXPECT_EQ(g[static_cast<size_t>(V + i)], 0.0);  // the ignored row
  // The value against a direct computation.
  double want = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[static_cast<size_t>(r)] < 0) continue;
    double z = 0;
    for (int64_t i = 0; i < V; ++i) z += std::exp(logits[static_cast<size_t>(r * V + i)]);
    want += std::log(z) - logits[static_cast<size_t>(r * V + labels[static_cast<size_t>(r)])];
  }
  EXPECT_NEAR(s.sum, want, 1e-12);
}

TEST(Backward, DistillKlDropAndSmooth) {
  const int64_t rows = 3, V = 9, k = 3;
  Vec logits = random_vec(rows * V, 22, 1.5);
  const std::vector<int32_t> index = {4, 1, 7, 0, 2, 2, 8, 5, 3};  // row 1 repeats an id
  // Teacher: top-k then the rest; one exact zero (contributes nothing).
  Vec prob = {0.5, 0.2, 0.1, 0.2, 0.6, 0.3, 0.0, 0.1, 0.4, 0.3, 0.2, 0.1};
  for (auto [mode, delta] : {std::pair{kernels::KlMode::Drop, 0.0}, std::pair{kernels::KlMode::Smooth, 1e-3},
                             std::pair{kernels::KlMode::Smooth, 0.25}}) {
    auto f = [&, mode = mode, delta = delta] {
      return Vec{kernels::distill_kl<double>(logits.data(), rows, V, index.data(), prob.data(), k, mode, delta, nullptr,
                                             0.0) /
                 rows};
    };
    Vec g(rows * V, 0.0);
    const double kl =
        kernels::distill_kl(logits.data(), rows, V, index.data(), prob.data(), k, mode, delta, g.data(), 1.0 / rows);
    expect_gradient(logits, g, f, {1.0}, mode == kernels::KlMode::Drop ? "kl drop" : "kl smooth");
    // Row 0 directly.
    double z = 0;
    for (int64_t i = 0; i < V; ++i) z += std::exp(logits[static_cast<size_t>(i)]);
    std::vector<double> q(k + 1);
    double top = 0;
    for (int64_t j = 0; j < k; ++j) top += q[static_cast<size_t>(j)] = std::exp(logits[static_cast<size_t>(index[static_cast<size_t>(j)])]) / z;
    q[k] = 1 - top;
    double want0 = 0;
    const int64_t cols = mode == kernels::KlMode::Drop ? k : k + 1;
    const double norm = 1 + delta * (k + 1);
    for (int64_t j = 0; j < cols; ++j) {
      const double p = (prob[static_cast<size_t>(j)] + delta) / norm, qq = (q[static_cast<size_t>(j)] + delta) / norm;
      want0 += p * (std::log(p) - std::log(qq));
    }
    const double rest = kernels::distill_kl<double>(logits.data() + V, rows - 1, V, index.data() + k, prob.data() + k + 1,
                                                    k, mode, delta, nullptr, 0.0);
    EXPECT_NEAR(kl - rest, want0, 1e-12);
  }
}

}  // namespace
}  // namespace cepe
