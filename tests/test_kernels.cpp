// CPU kernels against plain, obviously-correct references computed in double precision.
// Every reference below is a direct transcription of the definition (triple-loop matmul, full score
// matrix with an additive -inf mask, ...), so a disagreement points at the kernel.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cepe/config.h"
#include "cepe/error.h"
#include "cepe/tensor.h"
#include "core/half.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/fast_exp.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemv_half.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/shared_kv_attention.h"
#include "kernels/cpu/softmax.h"

namespace cepe {
namespace {

using kernels::AttentionArgs;
using kernels::Rope;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> random_vec(std::mt19937& rng, int64_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

size_t idx(int64_t i) { return static_cast<size_t>(i); }

uint32_t f32_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float bits_f32(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// |got - want| <= abs_tol + rel_tol * scale, reported with the position on failure.
::testing::AssertionResult close_all(const std::vector<float>& got, const std::vector<double>& want, double abs_tol,
                                     double rel_tol, const std::vector<double>* scale = nullptr) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
  for (size_t i = 0; i < got.size(); ++i) {
    const double s = scale ? (*scale)[i] : std::fabs(want[i]);
    const double tol = abs_tol + rel_tol * s;
    if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol))
      return ::testing::AssertionFailure() << "at " << i << ": got " << got[i] << ", want " << want[i]
                                           << " (diff " << std::fabs(got[i] - want[i]) << ", tol " << tol << ")";
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------------------
// linear / gemm
// ---------------------------------------------------------------------------------------------------

// Weight tensor [N, K] in `dt`, plus the widened f32 values the kernel must multiply with.
Tensor make_weight(std::mt19937& rng, int64_t N, int64_t K, DType dt, std::vector<float>* widened) {
  const std::vector<float> w = random_vec(rng, N * K);
  Tensor t = Tensor::empty(dt, {N, K});
  widened->resize(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    switch (dt) {
      case DType::F32:
        t.data<float>()[i] = w[i];
        (*widened)[i] = w[i];
        break;
      case DType::BF16: {
        const uint16_t h = f32_to_bf16(w[i]);
        t.data<uint16_t>()[i] = h;
        (*widened)[i] = bf16_to_f32(h);
        break;
      }
      case DType::F16: {
        const uint16_t h = f32_to_f16(w[i]);
        t.data<uint16_t>()[i] = h;
        (*widened)[i] = f16_to_f32(h);
        break;
      }
      default: ADD_FAILURE() << "bad dtype";
    }
  }
  return t;
}

struct LinearCase {
  int64_t M, K, N;
};

void check_linear(DType dt, const LinearCase& c, bool accumulate, uint32_t seed) {
  SCOPED_TRACE("dtype=" + std::string(dtype_name(dt)) + " M=" + std::to_string(c.M) + " K=" + std::to_string(c.K) +
               " N=" + std::to_string(c.N) + " accumulate=" + std::to_string(accumulate));
  std::mt19937 rng(seed);
  std::vector<float> wf;
  const Tensor W = make_weight(rng, c.N, c.K, dt, &wf);
  const std::vector<float> x = random_vec(rng, c.M * c.K);
  std::vector<float> y = accumulate ? random_vec(rng, c.M * c.N) : std::vector<float>(idx(c.M * c.N), kNaN);
  std::vector<double> want(idx(c.M * c.N)), scale(idx(c.M * c.N));
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t n = 0; n < c.N; ++n) {
      double s = accumulate ? y[idx(i * c.N + n)] : 0.0;
      double a = accumulate ? std::fabs(s) : 0.0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double p = static_cast<double>(x[idx(i * c.K + k)]) * wf[idx(n * c.K + k)];
        s += p;
        a += std::fabs(p);
      }
      want[idx(i * c.N + n)] = s;
      scale[idx(i * c.N + n)] = a;
    }
  kernels::linear(x.data(), c.M, c.K, W, y.data(), accumulate);
  // fp32 accumulation over K terms: bound the error by the sum of |terms|.
  EXPECT_TRUE(close_all(y, want, 1e-6, 1e-5, &scale));
}

const LinearCase kLinearCases[] = {
    {1, 1, 1},   {1, 3, 17},  {1, 17, 3},   {1, 130, 64},  {1, 64, 130}, {1, 1000, 37}, {1, 5000, 130},
    {3, 1, 1},   {3, 17, 130}, {17, 130, 3}, {64, 64, 64}, {130, 17, 1}, {2, 5000, 130}, {5, 33, 300},
};

TEST(KernelGemm, LinearF32) {
  uint32_t seed = 1;
  for (const auto& c : kLinearCases)
    for (bool acc : {false, true}) check_linear(DType::F32, c, acc, seed++);
}

TEST(KernelGemm, LinearBF16) {
  uint32_t seed = 100;
  for (const auto& c : kLinearCases)
    for (bool acc : {false, true}) check_linear(DType::BF16, c, acc, seed++);
}

TEST(KernelGemm, LinearF16) {
  uint32_t seed = 200;
  for (const auto& c : kLinearCases)
    for (bool acc : {false, true}) check_linear(DType::F16, c, acc, seed++);
}

TEST(KernelGemm, LinearHalfWeightsAreWidenedExactly) {
  // Integer-valued operands: every product and partial sum is exact in fp32, so the result must be
  // bit-identical to the widened-weight product (checks no extra rounding of the weights happens).
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> d(-8, 8);
  const int64_t M = 3, K = 129, N = 70;
  std::vector<float> x(idx(M * K));
  for (auto& v : x) v = static_cast<float>(d(rng));
  for (DType dt : {DType::BF16, DType::F16}) {
    Tensor W = Tensor::empty(dt, {N, K});
    std::vector<float> wf(idx(N * K));
    for (size_t i = 0; i < wf.size(); ++i) {
      // Values exactly representable in both formats: small integers and halves.
      wf[i] = static_cast<float>(d(rng)) * 0.5f;
      W.data<uint16_t>()[i] = dt == DType::BF16 ? f32_to_bf16(wf[i]) : f32_to_f16(wf[i]);
    }
    for (int64_t m : {int64_t{1}, M}) {
      std::vector<float> y(idx(m * N), kNaN);
      kernels::linear(x.data(), m, K, W, y.data());
      for (int64_t i = 0; i < m; ++i)
        for (int64_t n = 0; n < N; ++n) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[idx(i * K + k)]) * wf[idx(n * K + k)];
          ASSERT_EQ(y[idx(i * N + n)], static_cast<float>(s)) << dtype_name(dt) << " m=" << m << " " << i << "," << n;
        }
    }
  }
}

TEST(KernelGemm, LinearOverwritesNaNWhenNotAccumulating) {
  // accumulate=false must not read y (beta = 0 semantics), on both the sgemv (M=1) and sgemm paths.
  std::mt19937 rng(8);
  for (DType dt : {DType::F32, DType::BF16}) {
    for (int64_t M : {1, 4}) {
      std::vector<float> wf;
      const Tensor W = make_weight(rng, 9, 11, dt, &wf);
      const std::vector<float> x = random_vec(rng, M * 11);
      std::vector<float> y(idx(M * 9), kNaN);
      kernels::linear(x.data(), M, 11, W, y.data(), false);
      for (float v : y) EXPECT_TRUE(std::isfinite(v)) << dtype_name(dt) << " M=" << M;
    }
  }
}

TEST(KernelGemm, LinearShapeMismatchThrows) {
  std::vector<float> x(64, 1.0f), y(64, 0.0f);
  const Tensor W = Tensor::zeros(DType::F32, {4, 8});
  EXPECT_THROW(kernels::linear(x.data(), 1, 7, W, y.data()), Error);
  EXPECT_THROW(kernels::linear(x.data(), 2, 9, W, y.data()), Error);
  const Tensor W1 = Tensor::zeros(DType::F32, {32});
  EXPECT_THROW(kernels::linear(x.data(), 1, 32, W1, y.data()), Error);
  const Tensor Wb = Tensor::zeros(DType::BF16, {4, 8});
  EXPECT_THROW(kernels::linear(x.data(), 3, 5, Wb, y.data()), Error);
  const Tensor Wi = Tensor::zeros(DType::I32, {4, 8});
  EXPECT_THROW(kernels::linear(x.data(), 1, 8, Wi, y.data()), Error);
  EXPECT_NO_THROW(kernels::linear(x.data(), 2, 8, W, y.data()));
}

TEST(KernelGemm, GemmTransposesAndLeadingDimensions) {
  std::mt19937 rng(11);
  struct Dims {
    int64_t M, N, K;
  };
  const Dims dims[] = {{1, 1, 1}, {3, 17, 1}, {17, 3, 64}, {64, 130, 17}, {130, 1, 3}, {1, 64, 130}};
  const int64_t pad = 5;
  const float sentinel = -12345.0f;
  for (const auto& dm : dims)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.0f, 1.0f, -0.5f}) {
          SCOPED_TRACE("M=" + std::to_string(dm.M) + " N=" + std::to_string(dm.N) + " K=" + std::to_string(dm.K) +
                       " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " beta=" + std::to_string(beta));
          const float alpha = 0.75f;
          // A stored as [M, K] (or [K, M] when transposed) with lda = width + pad.
          const int64_t a_rows = ta ? dm.K : dm.M, a_cols = ta ? dm.M : dm.K, lda = a_cols + pad;
          const int64_t b_rows = tb ? dm.N : dm.K, b_cols = tb ? dm.K : dm.N, ldb = b_cols + pad + 2;
          const int64_t ldc = dm.N + pad + 1;
          std::vector<float> A = random_vec(rng, a_rows * lda), B = random_vec(rng, b_rows * ldb);
          std::vector<float> C = random_vec(rng, dm.M * ldc);
          for (int64_t i = 0; i < dm.M; ++i)
            for (int64_t j = dm.N; j < ldc; ++j) C[idx(i * ldc + j)] = sentinel;
          if (beta == 0.0f)
            for (int64_t i = 0; i < dm.M; ++i)
              for (int64_t j = 0; j < dm.N; ++j) C[idx(i * ldc + j)] = kNaN;  // must not be read
          auto a_at = [&](int64_t i, int64_t k) { return ta ? A[idx(k * lda + i)] : A[idx(i * lda + k)]; };
          auto b_at = [&](int64_t k, int64_t j) { return tb ? B[idx(j * ldb + k)] : B[idx(k * ldb + j)]; };
          std::vector<double> want(idx(dm.M * ldc)), scale(idx(dm.M * ldc));
          for (int64_t i = 0; i < dm.M; ++i)
            for (int64_t j = 0; j < ldc; ++j) {
              if (j >= dm.N) {
                want[idx(i * ldc + j)] = sentinel;
                scale[idx(i * ldc + j)] = 0;
                continue;
              }
              double s = 0, a = 0;
              for (int64_t k = 0; k < dm.K; ++k) {
                const double p = static_cast<double>(a_at(i, k)) * b_at(k, j);
                s += p;
                a += std::fabs(p);
              }
              const double c0 = beta == 0.0f ? 0.0 : static_cast<double>(C[idx(i * ldc + j)]);
              want[idx(i * ldc + j)] = alpha * s + beta * c0;
              scale[idx(i * ldc + j)] = alpha * a + std::fabs(beta * c0);
            }
          kernels::gemm(ta, tb, dm.M, dm.N, dm.K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
          EXPECT_TRUE(close_all(C, want, 1e-6, 1e-5, &scale));
        }
}

TEST(KernelGemm, GemvBothOrientationsWithLeadingDimension) {
  std::mt19937 rng(12);
  for (int64_t M : {1, 3, 17, 130})
    for (int64_t N : {1, 3, 64, 130})
      for (bool trans : {false, true}) {
        SCOPED_TRACE("M=" + std::to_string(M) + " N=" + std::to_string(N) + " trans=" + std::to_string(trans));
        const int64_t lda = N + 6;
        const std::vector<float> A = random_vec(rng, M * lda);
        const int64_t nx = trans ? M : N, ny = trans ? N : M;
        const std::vector<float> x = random_vec(rng, nx);
        std::vector<float> y(idx(ny), kNaN);  // y is written, never read
        const float alpha = -1.25f;
        std::vector<double> want(idx(ny)), scale(idx(ny));
        for (int64_t i = 0; i < ny; ++i) {
          double s = 0, a = 0;
          for (int64_t k = 0; k < nx; ++k) {
            const double p = static_cast<double>(trans ? A[idx(k * lda + i)] : A[idx(i * lda + k)]) * x[idx(k)];
            s += p;
            a += std::fabs(p);
          }
          want[idx(i)] = alpha * s;
          scale[idx(i)] = std::fabs(alpha) * a;
        }
        kernels::gemv(trans, M, N, alpha, A.data(), lda, x.data(), y.data());
        EXPECT_TRUE(close_all(y, want, 1e-6, 1e-5, &scale));
      }
}

TEST(KernelGemm, GemmZeroK) {
  std::vector<float> C = {1, 2, 3, 4, 5, 6};
  kernels::gemm(false, false, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 2.0f, C.data(), 3);
  EXPECT_EQ(C, (std::vector<float>{2, 4, 3, 8, 10, 6}));
  std::vector<float> D = {kNaN, kNaN, 7};
  kernels::gemm(false, false, 1, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.0f, D.data(), 3);
  EXPECT_EQ(D, (std::vector<float>{0, 0, 7}));
}

// β = 0 on a dense C large enough that gemm clears it over the thread team itself (then accumulates): NaN in the
// old C is never read, and the product equals the one computed with a zeroed C and β = 1, bit for bit.
TEST(KernelGemm, BetaZeroClearsALargeDenseOutput) {
  std::mt19937 rng(31);
  const int64_t M = 300, N = 257, K = 19;
  const std::vector<float> A = random_vec(rng, M * K), B = random_vec(rng, K * N);
  std::vector<float> C(idx(M * N), kNaN), Z(idx(M * N), 0.0f);
  kernels::gemm(false, false, M, N, K, 1.5f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
  kernels::gemm(false, false, M, N, K, 1.5f, A.data(), K, B.data(), N, 1.0f, Z.data(), N);
  EXPECT_EQ(C, Z);
  for (int64_t i = 0; i < M; i += 37)
    for (int64_t j = 0; j < N; j += 41) {
      double want = 0;
      for (int64_t k = 0; k < K; ++k) want += static_cast<double>(A[idx(i * K + k)]) * B[idx(k * N + j)];
      EXPECT_NEAR(C[idx(i * N + j)], 1.5 * want, 1e-4) << i << "," << j;
    }
}

// ---------------------------------------------------------------------------------------------------
// rmsnorm
// ---------------------------------------------------------------------------------------------------

std::vector<double> rmsnorm_ref(const std::vector<float>& x, const std::vector<float>& w, int64_t rows, int64_t d,
                                double eps) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(x[idx(r * d + i)]) * x[idx(r * d + i)];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    for (int64_t i = 0; i < d; ++i) y[idx(r * d + i)] = w[idx(i)] * (x[idx(r * d + i)] * inv);
  }
  return y;
}

TEST(KernelRmsNorm, MatchesReference) {
  std::mt19937 rng(21);
  for (int64_t rows : {1, 3, 17, 130})
    for (int64_t d : {1, 3, 17, 64, 130, 4096}) {
      SCOPED_TRACE("rows=" + std::to_string(rows) + " d=" + std::to_string(d));
      const std::vector<float> x = random_vec(rng, rows * d, -3.0f, 3.0f), w = random_vec(rng, d, -2.0f, 2.0f);
      std::vector<float> y(x.size(), kNaN);
      kernels::rmsnorm(x.data(), w.data(), rows, d, 1e-6f, y.data());
      EXPECT_TRUE(close_all(y, rmsnorm_ref(x, w, rows, d, 1e-6f), 1e-6, 1e-5));
    }
}

TEST(KernelRmsNorm, InPlace) {
  std::mt19937 rng(22);
  for (int64_t d : {3, 64, 130}) {
    const int64_t rows = 17;
    const std::vector<float> x = random_vec(rng, rows * d), w = random_vec(rng, d);
    const std::vector<double> want = rmsnorm_ref(x, w, rows, d, 1e-5f);
    std::vector<float> buf = x;
    kernels::rmsnorm(buf.data(), w.data(), rows, d, 1e-5f, buf.data());
    std::vector<float> sep(x.size());
    kernels::rmsnorm(x.data(), w.data(), rows, d, 1e-5f, sep.data());
    EXPECT_TRUE(close_all(buf, want, 1e-6, 1e-5)) << "d=" << d;
    EXPECT_EQ(buf, sep) << "in-place result differs from out-of-place, d=" << d;
  }
}

TEST(KernelRmsNorm, EpsMatters) {
  // Tiny activations: mean(x^2) ~ 3e-9, so eps (1e-6 vs 1e-2) dominates the denominator.
  std::mt19937 rng(23);
  const int64_t rows = 3, d = 17;
  const std::vector<float> x = random_vec(rng, rows * d, -1e-4f, 1e-4f), w = random_vec(rng, d, 0.5f, 1.5f);
  std::vector<float> a(x.size()), b(x.size());
  kernels::rmsnorm(x.data(), w.data(), rows, d, 1e-6f, a.data());
  kernels::rmsnorm(x.data(), w.data(), rows, d, 1e-2f, b.data());
  EXPECT_TRUE(close_all(a, rmsnorm_ref(x, w, rows, d, 1e-6f), 1e-9, 1e-5));
  EXPECT_TRUE(close_all(b, rmsnorm_ref(x, w, rows, d, 1e-2f), 1e-12, 1e-5));
  double ratio_min = 1e30;
  for (size_t i = 0; i < a.size(); ++i)
    if (x[i] != 0.0f) ratio_min = std::min(ratio_min, std::fabs(static_cast<double>(a[i]) / b[i]));
  EXPECT_GT(ratio_min, 10.0);  // larger eps shrinks the output a lot here
  // All-zero rows stay finite (zero) thanks to eps.
  std::vector<float> z(idx(d), 0.0f), zo(idx(d), kNaN);
  kernels::rmsnorm(z.data(), w.data(), 1, d, 1e-6f, zo.data());
  for (float v : zo) EXPECT_EQ(v, 0.0f);
}

// ---------------------------------------------------------------------------------------------------
// rope
// ---------------------------------------------------------------------------------------------------

LlamaConfig rope_config(int64_t d, int64_t heads, double theta, RopeScalingType type, double factor,
                        int64_t max_pos) {
  LlamaConfig c;
  c.num_attention_heads = heads;
  c.num_key_value_heads = heads;
  c.hidden_size = heads * d;
  c.rope_theta = theta;
  c.rope_scaling.type = type;
  c.rope_scaling.factor = factor;
  c.max_position_embeddings = max_pos;
  return c;
}

std::vector<double> inv_freq_ref(double base, int64_t d) {
  std::vector<double> f(idx(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) f[idx(i)] = 1.0 / std::pow(base, static_cast<double>(2 * i) / d);
  return f;
}

// Reference rotation: rotate-half pairs (j, j + d/2) by angle pos / divisor * inv_freq[j].
std::vector<double> rope_ref(const std::vector<float>& x, int64_t rows, int64_t heads, int64_t d, int64_t stride,
                             const std::vector<int64_t>& pos, const std::vector<double>& inv_freq, double divisor) {
  std::vector<double> y(x.begin(), x.end());
  const int64_t half = d / 2;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < half; ++j) {
        const double ang = static_cast<double>(pos[idx(r)]) / divisor * inv_freq[idx(j)];
        const size_t i0 = idx(r * stride + h * d + j), i1 = i0 + idx(half);
        const double a = x[i0], b = x[i1];
        y[i0] = a * std::cos(ang) - b * std::sin(ang);
        y[i1] = b * std::cos(ang) + a * std::sin(ang);
      }
  return y;
}

// Per-element tolerance: the kernel forms the angle in fp32 (as the reference implementation does), so
// the error grows with the position; 1e-5 for small positions.
std::vector<double> rope_scale(int64_t rows, int64_t stride, const std::vector<int64_t>& pos) {
  std::vector<double> s(idx(rows * stride));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < stride; ++i) s[idx(r * stride + i)] = 1.0 + 0.04 * static_cast<double>(pos[idx(r)]);
  return s;
}

void check_rope(const LlamaConfig& cfg, int64_t seq_len, int64_t rows, int64_t pad, const std::vector<int64_t>& pos,
                double expect_base, double expect_divisor, uint32_t seed) {
  const int64_t d = cfg.head_dim(), heads = cfg.num_attention_heads, stride = heads * d + pad;
  SCOPED_TRACE("d=" + std::to_string(d) + " heads=" + std::to_string(heads) + " rows=" + std::to_string(rows) +
               " pad=" + std::to_string(pad) + " seq_len=" + std::to_string(seq_len));
  const Rope rope = Rope::make(cfg, seq_len);
  const std::vector<double> f = inv_freq_ref(expect_base, d);
  ASSERT_EQ(rope.inv_freq.size(), f.size());
  for (size_t i = 0; i < f.size(); ++i) EXPECT_NEAR(rope.inv_freq[i], f[i], 2e-6 * f[i]) << "inv_freq " << i;
  EXPECT_FLOAT_EQ(rope.position_divisor, static_cast<float>(expect_divisor));

  std::mt19937 rng(seed);
  std::vector<float> x = random_vec(rng, rows * stride);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = heads * d; i < stride; ++i) x[idx(r * stride + i)] = -777.0f;  // padding: untouched
  const std::vector<double> want = rope_ref(x, rows, heads, d, stride, pos, f, expect_divisor);
  kernels::apply_rope(x.data(), rows, heads, d, stride, pos.data(), rope);
  const std::vector<double> scale = rope_scale(rows, stride, pos);
  // 1e-5 at position 0, plus 4e-7 per unit of position (fp32 rounding of the angle and of inv_freq).
  EXPECT_TRUE(close_all(x, want, 0.0, 1e-5, &scale));
}

std::vector<int64_t> positions(std::mt19937& rng, int64_t rows, int64_t max_pos) {
  std::uniform_int_distribution<int64_t> d(0, max_pos);
  std::vector<int64_t> p(idx(rows));
  for (int64_t r = 0; r < rows; ++r) p[idx(r)] = r < 4 ? r : d(rng);
  return p;
}

TEST(KernelRope, Plain) {
  std::mt19937 rng(31);
  uint32_t seed = 1;
  for (int64_t d : {2, 6, 64, 130})
    for (int64_t heads : {1, 3})
      for (int64_t rows : {1, 17, 130})
        for (int64_t pad : {0, 7}) {
          const LlamaConfig cfg = rope_config(d, heads, 10000.0, RopeScalingType::None, 1.0, 2048);
          check_rope(cfg, rows, rows, pad, positions(rng, rows, 300), 10000.0, 1.0, seed++);
        }
  // Another theta, and positions beyond max_position_embeddings (plain rope does not care).
  const LlamaConfig cfg = rope_config(64, 2, 500000.0, RopeScalingType::None, 1.0, 64);
  check_rope(cfg, 5000, 17, 3, positions(rng, 17, 4000), 500000.0, 1.0, seed++);
}

TEST(KernelRope, LinearScaling) {
  std::mt19937 rng(32);
  uint32_t seed = 50;
  for (double factor : {2.0, 4.0, 3.0})
    for (int64_t d : {6, 64, 130})
      for (int64_t seq : {10, 5000}) {  // linear scaling ignores the sequence length
        const LlamaConfig cfg = rope_config(d, 3, 10000.0, RopeScalingType::Linear, factor, 2048);
        check_rope(cfg, seq, 17, 5, positions(rng, 17, 300), 10000.0, factor, seed++);
      }
}

TEST(KernelRope, DynamicNtkScaling) {
  std::mt19937 rng(33);
  uint32_t seed = 90;
  const int64_t max_pos = 64;
  for (double factor : {2.0, 4.0})
    for (int64_t d : {6, 64, 130})
      for (int64_t seq : {1, 50, 64, 65, 100, 1000}) {
        const LlamaConfig cfg = rope_config(d, 2, 10000.0, RopeScalingType::Dynamic, factor, max_pos);
        double base = 10000.0;
        if (seq > max_pos)
          base = 10000.0 * std::pow(factor * static_cast<double>(seq) / max_pos - (factor - 1.0),
                                    static_cast<double>(d) / static_cast<double>(d - 2));
        check_rope(cfg, seq, 17, 2, positions(rng, 17, std::max<int64_t>(seq - 1, 0)), base, 1.0, seed++);
        if (seq <= max_pos) {  // unchanged: identical to plain rope
          const Rope plain = Rope::make(rope_config(d, 2, 10000.0, RopeScalingType::None, 1.0, max_pos), seq);
          EXPECT_EQ(Rope::make(cfg, seq).inv_freq, plain.inv_freq) << "seq=" << seq;
        }
      }
}

TEST(KernelRope, RotateHalfLayout) {
  // A unit vector on coordinate j must rotate within the pair (j, j + d/2) only.
  const int64_t d = 16, half = d / 2;
  const LlamaConfig cfg = rope_config(d, 1, 10000.0, RopeScalingType::None, 1.0, 2048);
  const Rope rope = Rope::make(cfg, 8);
  const std::vector<double> f = inv_freq_ref(10000.0, d);
  for (int64_t j = 0; j < d; ++j) {
    std::vector<float> x(idx(d), 0.0f);
    x[idx(j)] = 1.0f;
    const int64_t p = 3;
    kernels::apply_rope(x.data(), 1, 1, d, d, &p, rope);
    const int64_t i = j % half;
    const double c = std::cos(p * f[idx(i)]), s = std::sin(p * f[idx(i)]);
    for (int64_t k = 0; k < d; ++k) {
      double want = 0.0;
      if (j < half) {  // (1, 0) -> (c, s)
        if (k == j) want = c;
        if (k == j + half) want = s;
      } else {  // (0, 1) -> (-s, c)
        if (k == j - half) want = -s;
        if (k == j) want = c;
      }
      EXPECT_NEAR(x[idx(k)], want, 1e-6) << "j=" << j << " k=" << k;
    }
  }
}

TEST(KernelRope, PreservesPairNorms) {
  std::mt19937 rng(34);
  const int64_t d = 64, heads = 3, rows = 17, stride = heads * d + 1;
  const LlamaConfig cfg = rope_config(d, heads, 10000.0, RopeScalingType::None, 1.0, 2048);
  const Rope rope = Rope::make(cfg, 4096);
  std::vector<float> x = random_vec(rng, rows * stride);
  const std::vector<float> x0 = x;
  const std::vector<int64_t> pos = positions(rng, rows, 4000);
  kernels::apply_rope(x.data(), rows, heads, d, stride, pos.data(), rope);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < d / 2; ++j) {
        const size_t i0 = idx(r * stride + h * d + j), i1 = i0 + idx(d / 2);
        const double n0 = std::hypot(static_cast<double>(x0[i0]), static_cast<double>(x0[i1]));
        const double n1 = std::hypot(static_cast<double>(x[i0]), static_cast<double>(x[i1]));
        EXPECT_NEAR(n1, n0, 1e-6 + 1e-6 * n0) << r << "," << h << "," << j;
      }
}

TEST(KernelRope, RelativePosition) {
  // <rope(q, m), rope(k, n)> depends only on m - n.
  std::mt19937 rng(35);
  const int64_t d = 64;
  const LlamaConfig cfg = rope_config(d, 1, 10000.0, RopeScalingType::None, 1.0, 2048);
  const Rope rope = Rope::make(cfg, 256);
  const std::vector<float> q = random_vec(rng, d), k = random_vec(rng, d);
  for (int64_t delta : {0, 1, 3, -5, 17}) {
    std::vector<double> dots;
    for (int64_t n : {20, 21, 57, 100, 130}) {
      const int64_t m = n + delta;
      std::vector<float> qq = q, kk = k;
      kernels::apply_rope(qq.data(), 1, 1, d, d, &m, rope);
      kernels::apply_rope(kk.data(), 1, 1, d, d, &n, rope);
      double s = 0;
      for (int64_t i = 0; i < d; ++i) s += static_cast<double>(qq[idx(i)]) * kk[idx(i)];
      dots.push_back(s);
    }
    for (double s : dots) EXPECT_NEAR(s, dots[0], 2e-4) << "delta=" << delta;
  }
}

// ---------------------------------------------------------------------------------------------------
// attention
// ---------------------------------------------------------------------------------------------------

struct AttnCase {
  int64_t batch = 1, q_len = 1, kv_len = 1, q_heads = 1, kv_heads = 1, d = 8;
  bool causal = false;
  int64_t offset = 0;
  std::vector<uint8_t> mask;  // [batch, mask_stride] or empty
  int64_t mask_stride = 0;
  int64_t q_pad = 0, out_pad = 0, kv_batch_extra = 0;
  bool fused_kv = false;  // K and V interleaved in one row: [k heads | v heads]
  std::string name;
};

// Naive reference: full score matrix, additive mask of -inf on disallowed keys; a row with no allowed key
// averages V uniformly over the keys masked exactly once (padded keys in its causal range, real keys after
// it), as the reference's summed finfo.min masks give (all keys when not causal).
void check_attention(const AttnCase& c, uint32_t seed) {
  SCOPED_TRACE(c.name);
  std::mt19937 rng(seed);
  const int64_t hq = c.q_heads * c.d, hkv = c.kv_heads * c.d;
  const int64_t q_stride = hq + c.q_pad, out_stride = hq + c.out_pad;
  const int64_t kv_stride = c.fused_kv ? 2 * hkv : hkv + 3;
  const int64_t kv_batch_stride = c.kv_len * kv_stride + c.kv_batch_extra;
  const std::vector<float> q = random_vec(rng, c.batch * c.q_len * q_stride);
  const std::vector<float> kbuf = random_vec(rng, c.batch * kv_batch_stride);
  const std::vector<float> vbuf = c.fused_kv ? std::vector<float>() : random_vec(rng, c.batch * kv_batch_stride);
  const float* kp = kbuf.data();
  const float* vp = c.fused_kv ? kbuf.data() + hkv : vbuf.data();
  const float sentinel = -999.0f;
  std::vector<float> out(idx(c.batch * c.q_len * out_stride), sentinel);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.d)));

  std::vector<double> want(out.size(), sentinel);
  const int64_t group = c.q_heads / c.kv_heads;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t t = 0; t < c.q_len; ++t)
      for (int64_t h = 0; h < c.q_heads; ++h) {
        const int64_t g = h / group;
        const float* qr = q.data() + (b * c.q_len + t) * q_stride + h * c.d;
        std::vector<double> s(idx(c.kv_len)), add(idx(c.kv_len), 0.0);
        bool any = false;
        int64_t causal_end = c.kv_len;
        if (c.causal) causal_end = std::min(c.kv_len, c.offset + t + 1);
        for (int64_t j = 0; j < c.kv_len; ++j) {
          const float* kr = kp + b * kv_batch_stride + j * kv_stride + g * c.d;
          double dot = 0;
          for (int64_t i = 0; i < c.d; ++i) dot += static_cast<double>(qr[i]) * kr[i];
          s[idx(j)] = static_cast<double>(scale) * dot;
          const bool allowed = j < causal_end && (c.mask.empty() || c.mask[idx(b * c.mask_stride + j)] != 0);
          if (!allowed) add[idx(j)] = -std::numeric_limits<double>::infinity();
          any = any || allowed;
        }
        std::vector<double> p(idx(c.kv_len), 0.0);
        if (any) {
          double m = -std::numeric_limits<double>::infinity();
          for (int64_t j = 0; j < c.kv_len; ++j) m = std::max(m, s[idx(j)] + add[idx(j)]);
          double z = 0;
          for (int64_t j = 0; j < c.kv_len; ++j) z += p[idx(j)] = std::exp(s[idx(j)] + add[idx(j)] - m);
          for (auto& x : p) x /= z;
        } else {
          int64_t count = 0;
          for (int64_t j = 0; j < c.kv_len; ++j) {
            const bool valid = c.mask.empty() || c.mask[idx(b * c.mask_stride + j)] != 0;
            if ((j < causal_end) != valid) p[idx(j)] = 1.0, ++count;
          }
          for (auto& x : p) x /= static_cast<double>(count);
        }
        for (int64_t i = 0; i < c.d; ++i) {
          double o = 0;
          for (int64_t j = 0; j < c.kv_len; ++j) o += p[idx(j)] * vp[b * kv_batch_stride + j * kv_stride + g * c.d + i];
          want[idx((b * c.q_len + t) * out_stride + h * c.d + i)] = o;
        }
      }

  AttentionArgs a;
  a.q = q.data();
  a.out = out.data();
  a.q_stride = q_stride;
  a.out_stride = out_stride;
  a.k = kp;
  a.v = vp;
  a.kv_stride = kv_stride;
  a.kv_batch_stride = kv_batch_stride;
  a.batch = c.batch;
  a.q_len = c.q_len;
  a.kv_len = c.kv_len;
  a.q_heads = c.q_heads;
  a.kv_heads = c.kv_heads;
  a.head_dim = c.d;
  a.key_mask = c.mask.empty() ? nullptr : c.mask.data();
  a.mask_batch_stride = c.mask_stride;
  a.causal = c.causal;
  a.causal_offset = c.offset;
  a.scale = scale;
  kernels::attention(a);
  EXPECT_TRUE(close_all(out, want, 1e-5, 1e-5));
}

std::vector<uint8_t> random_mask(std::mt19937& rng, int64_t batch, int64_t stride, double p_keep) {
  std::bernoulli_distribution keep(p_keep);
  std::vector<uint8_t> m(idx(batch * stride));
  for (auto& x : m) x = keep(rng) ? static_cast<uint8_t>(1 + rng() % 255) : 0;  // any nonzero means "attend"
  return m;
}

TEST(KernelAttention, Bidirectional) {
  uint32_t seed = 1;
  for (int64_t q_len : {1, 3, 17})
    for (int64_t kv_len : {1, 3, 17, 130})
      for (int64_t d : {1, 3, 64}) {
        AttnCase c;
        c.q_len = q_len;
        c.kv_len = kv_len;
        c.d = d;
        c.q_heads = c.kv_heads = 3;
        c.q_pad = 2;
        c.out_pad = 1;
        c.name = "bidir q=" + std::to_string(q_len) + " kv=" + std::to_string(kv_len) + " d=" + std::to_string(d);
        check_attention(c, seed++);
      }
}

TEST(KernelAttention, Causal) {
  uint32_t seed = 100;
  for (int64_t len : {1, 3, 17, 64, 65, 130})
    for (int64_t d : {3, 64}) {
      AttnCase c;
      c.q_len = c.kv_len = len;
      c.d = d;
      c.q_heads = c.kv_heads = 2;
      c.causal = true;
      c.name = "causal len=" + std::to_string(len) + " d=" + std::to_string(d);
      check_attention(c, seed++);
    }
}

TEST(KernelAttention, CausalOffsetKvCacheDecode) {
  uint32_t seed = 200;
  for (int64_t past : {1, 5, 63, 129})
    for (int64_t q_len : {1, 3, 17, 70}) {
      AttnCase c;
      c.q_len = q_len;
      c.kv_len = past + q_len;
      c.offset = past;
      c.causal = true;
      c.d = 17;
      c.q_heads = 4;
      c.kv_heads = 2;
      c.fused_kv = true;
      c.name = "decode past=" + std::to_string(past) + " q=" + std::to_string(q_len);
      check_attention(c, seed++);
    }
}

TEST(KernelAttention, GroupedQueryAttention) {
  uint32_t seed = 300;
  for (int64_t kv_heads : {4, 2, 1})
    for (bool causal : {false, true}) {
      AttnCase c;
      c.batch = 2;
      c.q_len = 17;
      c.kv_len = 17;
      c.q_heads = 4;
      c.kv_heads = kv_heads;
      c.d = 16;
      c.causal = causal;
      c.name = "gqa kv_heads=" + std::to_string(kv_heads) + " causal=" + std::to_string(causal);
      check_attention(c, seed++);
      // A GQA result must equal the MHA result with K/V heads repeated (repeat_kv): checked implicitly by
      // the reference, which maps query head h to KV head h / (q_heads / kv_heads).
    }
}

TEST(KernelAttention, KeyPaddingMask) {
  std::mt19937 rng(41);
  uint32_t seed = 400;
  for (bool causal : {false, true})
    for (int64_t len : {3, 17, 130}) {
      AttnCase c;
      c.batch = 3;
      c.q_len = c.kv_len = len;
      c.q_heads = 4;
      c.kv_heads = 2;
      c.d = 8;
      c.causal = causal;
      c.mask_stride = len + 5;
      c.mask = random_mask(rng, c.batch, c.mask_stride, 0.7);
      for (int64_t b = 0; b < c.batch; ++b) c.mask[idx(b * c.mask_stride + len - 1)] = 1;
      c.name = "mask causal=" + std::to_string(causal) + " len=" + std::to_string(len);
      check_attention(c, seed++);
    }
}

TEST(KernelAttention, FullyMaskedRowsAverageKeysMaskedOnce) {
  uint32_t seed = 500;
  for (int64_t len : {3, 17, 130}) {
    // Left padding: batch row 0 has its first `pad` keys masked, so causal queries t < pad see nothing.
    // Batch row 1 has every key masked.
    for (bool causal : {true, false}) {
      AttnCase c;
      c.batch = 2;
      c.q_len = c.kv_len = len;
      c.q_heads = 2;
      c.kv_heads = 1;
      c.d = 5;
      c.causal = causal;
      c.mask_stride = len;
      c.mask.assign(idx(2 * len), 1);
      const int64_t pad = std::min<int64_t>(len - 1, 70);  // crosses the 64-query block boundary at len 130
      for (int64_t j = 0; j < pad; ++j) c.mask[idx(j)] = 0;
      for (int64_t j = 0; j < len; ++j) c.mask[idx(len + j)] = 0;
      c.name = "fully masked len=" + std::to_string(len) + " causal=" + std::to_string(causal);
      check_attention(c, seed++);
    }
  }
  // Explicit value check of the rule on a tiny case, keys 0 and 1 padded, key 2 real: query 0 (causal range
  // {0}) -> mean(V[0], V[2]); query 1 (range {0,1}) -> mean(V[0], V[1], V[2]); non-causal -> softmax over
  // the one real key = V[2].
  const float q[2] = {0.3f, -0.2f}, k[3] = {1.0f, 2.0f, 3.0f}, v[3] = {10.0f, 20.0f, 60.0f};
  const uint8_t mask[3] = {0, 0, 1};
  float out[2] = {0, 0};
  AttentionArgs a;
  a.q = q;
  a.out = out;
  a.q_stride = a.out_stride = 1;
  a.k = k;
  a.v = v;
  a.kv_stride = 1;
  a.kv_batch_stride = 3;
  a.batch = 1;
  a.q_len = 2;
  a.kv_len = 3;
  a.q_heads = a.kv_heads = a.head_dim = 1;
  a.key_mask = mask;
  a.causal = true;
  kernels::attention(a);
  EXPECT_FLOAT_EQ(out[0], 35.0f);
  EXPECT_FLOAT_EQ(out[1], 30.0f);
  a.causal = false;
  kernels::attention(a);
  EXPECT_FLOAT_EQ(out[0], 60.0f);
  EXPECT_FLOAT_EQ(out[1], 60.0f);
}

TEST(KernelAttention, LongQueriesAcrossBlocks) {
  std::mt19937 rng(42);
  uint32_t seed = 600;
  for (int64_t q_len : {65, 130, 200})
    for (bool causal : {false, true}) {
      AttnCase c;
      c.batch = 2;
      c.q_len = q_len;
      c.kv_len = causal ? q_len + 11 : 37;
      c.offset = causal ? 11 : 0;
      c.q_heads = 4;
      c.kv_heads = 1;
      c.d = 32;
      c.causal = causal;
      c.mask_stride = c.kv_len;
      c.mask = random_mask(rng, c.batch, c.mask_stride, 0.8);
      c.name = "long q=" + std::to_string(q_len) + " causal=" + std::to_string(causal);
      check_attention(c, seed++);
    }
}

TEST(KernelAttention, BatchWithPaddedKvBatchStride) {
  uint32_t seed = 700;
  for (bool causal : {false, true})
    for (bool fused : {false, true}) {
      AttnCase c;
      c.batch = 3;
      c.q_len = causal ? 4 : 9;
      c.kv_len = 13;
      c.offset = causal ? 9 : 0;
      c.q_heads = 4;
      c.kv_heads = 2;
      c.d = 17;
      c.causal = causal;
      c.kv_batch_extra = 7 * (2 * 2 * 17) + 3;  // e.g. a KV cache allocated for more positions
      c.fused_kv = fused;
      c.q_pad = 4;
      c.out_pad = 9;
      c.name = "batch-stride causal=" + std::to_string(causal) + " fused=" + std::to_string(fused);
      check_attention(c, seed++);
    }
}

TEST(KernelAttention, LargeScoresStayFinite) {
  // Scores of order 1e2 (exp would overflow fp32 without subtracting the row maximum).
  std::mt19937 rng(43);
  AttnCase c;
  c.q_len = 5;
  c.kv_len = 9;
  c.d = 4;
  c.name = "large";
  // check_attention draws q/k in [-1, 1]; emulate large scores with a big scale instead.
  const int64_t n = c.q_len * c.d;
  std::vector<float> q = random_vec(rng, n, -10.0f, 10.0f), k = random_vec(rng, c.kv_len * c.d, -10.0f, 10.0f);
  std::vector<float> v = random_vec(rng, c.kv_len * c.d), out(idx(n), kNaN);
  AttentionArgs a;
  a.q = q.data();
  a.out = out.data();
  a.q_stride = a.out_stride = c.d;
  a.k = k.data();
  a.v = v.data();
  a.kv_stride = c.d;
  a.kv_batch_stride = c.kv_len * c.d;
  a.batch = 1;
  a.q_len = c.q_len;
  a.kv_len = c.kv_len;
  a.q_heads = a.kv_heads = 1;
  a.head_dim = c.d;
  a.scale = 1.0f;
  kernels::attention(a);
  for (int64_t t = 0; t < c.q_len; ++t) {
    std::vector<double> s(idx(c.kv_len));
    double m = -1e300;
    for (int64_t j = 0; j < c.kv_len; ++j) {
      double dot = 0;
      for (int64_t i = 0; i < c.d; ++i) dot += static_cast<double>(q[idx(t * c.d + i)]) * k[idx(j * c.d + i)];
      s[idx(j)] = dot;
      m = std::max(m, dot);
    }
    double z = 0;
    for (auto& x : s) z += x = std::exp(x - m);
    for (int64_t i = 0; i < c.d; ++i) {
      double o = 0;
      for (int64_t j = 0; j < c.kv_len; ++j) o += s[idx(j)] / z * v[idx(j * c.d + i)];
      // Scores ~1e2 carry fp32 rounding of ~1e-5 absolute into the exponent.
      EXPECT_NEAR(out[idx(t * c.d + i)], o, 1e-4) << t << "," << i;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// swiglu, embedding, softmax
// ---------------------------------------------------------------------------------------------------

TEST(KernelMisc, SwiGLU) {
  std::mt19937 rng(51);
  for (int64_t n : {1, 3, 17, 64, 130, 70001}) {
    std::vector<float> g = random_vec(rng, n, -12.0f, 12.0f);
    const std::vector<float> u = random_vec(rng, n, -3.0f, 3.0f);
    if (n >= 3) {
      g[0] = -100.0f;  // exp overflows in fp32: result must still be ~0, not NaN
      g[1] = 100.0f;
      g[2] = 0.0f;
    }
    std::vector<double> want(idx(n));
    for (int64_t i = 0; i < n; ++i) {
      const double x = g[idx(i)];
      want[idx(i)] = x / (1.0 + std::exp(-x)) * u[idx(i)];
    }
    kernels::swiglu(g.data(), u.data(), n);
    EXPECT_TRUE(close_all(g, want, 1e-6, 1e-5)) << "n=" << n;
  }
}

TEST(KernelMisc, Embedding) {
  std::mt19937 rng(52);
  const int64_t V = 37;
  for (int64_t d : {1, 3, 17, 130})
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      std::vector<float> wf;
      const Tensor table = make_weight(rng, V, d, dt, &wf);
      std::vector<int32_t> ids = {0, static_cast<int32_t>(V - 1), 5, 5, 17, 0, 36, 2};
      std::vector<float> out(ids.size() * idx(d), kNaN);
      kernels::embedding(table, ids.data(), static_cast<int64_t>(ids.size()), out.data());
      for (size_t i = 0; i < ids.size(); ++i)
        for (int64_t j = 0; j < d; ++j)
          ASSERT_EQ(out[i * idx(d) + idx(j)], wf[idx(ids[i]) * idx(d) + idx(j)])
              << dtype_name(dt) << " d=" << d << " i=" << i << " j=" << j;
    }
}

std::vector<double> log_softmax_ref(const std::vector<float>& x, int64_t rows, int64_t n) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[idx(r * n + i)]));
    double z = 0;
    for (int64_t i = 0; i < n; ++i) z += std::exp(x[idx(r * n + i)] - m);
    for (int64_t i = 0; i < n; ++i) y[idx(r * n + i)] = x[idx(r * n + i)] - m - std::log(z);
  }
  return y;
}

TEST(KernelMisc, SoftmaxRows) {
  std::mt19937 rng(53);
  for (int64_t rows : {1, 3, 17})
    for (int64_t n : {1, 3, 17, 64, 130, 32000})
      for (float mag : {1.0f, 30.0f}) {
        std::vector<float> x = random_vec(rng, rows * n, -mag, mag);
        const std::vector<double> ls = log_softmax_ref(x, rows, n);
        std::vector<double> want(ls.size());
        for (size_t i = 0; i < ls.size(); ++i) want[i] = std::exp(ls[i]);
        kernels::softmax_rows(x.data(), rows, n);
        EXPECT_TRUE(close_all(x, want, 1e-9, 1e-5)) << "rows=" << rows << " n=" << n << " mag=" << mag;
        for (int64_t r = 0; r < rows; ++r) {
          double s = 0;
          for (int64_t i = 0; i < n; ++i) s += x[idx(r * n + i)];
          EXPECT_NEAR(s, 1.0, 1e-5);
        }
      }
}

TEST(KernelMisc, LogSoftmaxRows) {
  std::mt19937 rng(54);
  for (int64_t rows : {1, 3, 17})
    for (int64_t n : {1, 3, 17, 64, 130, 32000}) {
      const std::vector<float> x = random_vec(rng, rows * n, -20.0f, 20.0f);
      std::vector<float> out(x.size(), kNaN);
      kernels::log_softmax_rows(x.data(), rows, n, out.data());
      const std::vector<double> want = log_softmax_ref(x, rows, n);
      // Output magnitudes up to ~50: error relative to the input scale.
      EXPECT_TRUE(close_all(out, want, 1e-5, 1e-6)) << "rows=" << rows << " n=" << n;
      std::vector<float> inplace = x;
      kernels::log_softmax_rows(inplace.data(), rows, n, inplace.data());
      EXPECT_EQ(inplace, out) << "aliased output differs";
    }
}

TEST(KernelMisc, SoftmaxLargeMagnitudeInputs) {
  // Rows offset by a large constant (and with huge negative outliers / -inf) must give the same
  // distribution as the unshifted row, finite and exact to fp32 precision.
  std::mt19937 rng(55);
  for (float offset : {1e4f, -1e4f, 1e6f, 3e37f}) {
    const int64_t n = 17;
    std::vector<float> x = random_vec(rng, n, -4.0f, 4.0f);
    std::vector<float> shifted(idx(n));
    // Values exactly representable after the shift: round the small parts to the shifted grid.
    for (int64_t i = 0; i < n; ++i) {
      shifted[idx(i)] = x[idx(i)] + offset;
      x[idx(i)] = static_cast<float>(static_cast<double>(shifted[idx(i)]) - offset);
    }
    shifted[3] = -3e38f;
    x[3] = -kInf;
    shifted[5] = -kInf;
    x[5] = -kInf;
    std::vector<double> want_log = log_softmax_ref(x, 1, n), want(idx(n));
    for (int64_t i = 0; i < n; ++i) want[idx(i)] = std::exp(want_log[idx(i)]);

    std::vector<float> p = shifted;
    kernels::softmax_rows(p.data(), 1, n);
    EXPECT_TRUE(close_all(p, want, 1e-9, 1e-5)) << "softmax offset=" << offset;

    std::vector<float> lp(idx(n));
    kernels::log_softmax_rows(shifted.data(), 1, n, lp.data());
    EXPECT_EQ(lp[5], -kInf);
    for (int64_t i = 0; i < n; ++i) {
      if (i == 3 || i == 5) continue;
      EXPECT_TRUE(std::isfinite(lp[idx(i)])) << "offset=" << offset << " i=" << i;
      // torch computes (x - max) - log(sum): exact-ish, independent of the offset.
      EXPECT_NEAR(lp[idx(i)], want_log[idx(i)], 1e-5 + 1e-6 * std::fabs(want_log[idx(i)]))
          << "log_softmax offset=" << offset << " i=" << i;
    }
    EXPECT_LT(lp[3], -1e37f);
  }
}

// ---------------------------------------------------------------------------------------------------
// half.h conversions
// ---------------------------------------------------------------------------------------------------

// Exact value of an f16 bit pattern, by the IEEE binary16 definition.
double f16_value(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  double v;
  if (exp == 0)
    v = std::ldexp(static_cast<double>(mant), -24);
  else if (exp == 31)
    v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else
    v = std::ldexp(1.0 + mant / 1024.0, exp - 15);
  return sign ? -v : v;
}

// Reference f32 -> f16: nearest representable value, ties to the even bit pattern, |x| >= 65520 -> inf.
uint16_t f16_ref(float f) {
  if (std::isnan(f)) return 0x7e00;
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7c00;
  uint16_t lo = 0, hi = 0x7bff;  // largest pattern with value <= a, by bisection over finite positives
  while (lo < hi) {
    const uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
    if (f16_value(mid) <= a) lo = mid; else hi = static_cast<uint16_t>(mid - 1);
  }
  if (f16_value(lo) == a) return sign | lo;
  const uint16_t up = static_cast<uint16_t>(lo + 1);
  const double dl = a - f16_value(lo), du = f16_value(up) - a;  // up may be 0x7c00 only when a >= 65520
  if (dl < du) return sign | lo;
  if (du < dl) return sign | up;
  return sign | ((lo & 1) ? up : lo);
}

// Reference f32 -> bf16: the two neighbouring bf16 values by truncation, nearest, ties to even.
uint16_t bf16_ref(float f) {
  const uint32_t b = f32_bits(f);
  const uint16_t lo = static_cast<uint16_t>(b >> 16);
  if ((b & 0xffffu) == 0) return lo;
  const uint16_t hi = static_cast<uint16_t>(lo + 1);  // next magnitude up (may become inf)
  const double a = std::fabs(static_cast<double>(f));
  const double vl = std::fabs(static_cast<double>(bf16_to_f32(lo)));
  const double vh = std::fabs(static_cast<double>(bf16_to_f32(hi)));
  // The exact midpoint between max-finite and "next binade" is what decides rounding to inf.
  const double vh_eff = std::isinf(vh) ? std::ldexp(1.0, 128) : vh;
  const double dl = a - vl, dh = vh_eff - a;
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(HalfConversion, Bf16RoundToNearestEven) {
  const float one = 1.0f;
  EXPECT_EQ(f32_to_bf16(one), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);                        // tie -> even (down)
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);                    // tie -> even (up)
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);  // above tie
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) - std::ldexp(1.0f, -20)), 0x3f80);  // below tie
  EXPECT_EQ(f32_to_bf16(-1.0f - 3 * std::ldexp(1.0f, -8)), 0xbf82);
  EXPECT_EQ(f32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(kInf), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-kInf), 0xff80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // above the last midpoint -> inf
  EXPECT_EQ(f32_to_bf16(bits_f32(0x7f7f7fffu)), 0x7f7f);              // just below it
  EXPECT_EQ(f32_to_bf16(bits_f32(0x00000001u)), 0x0000);              // f32 subnormals round too
  EXPECT_EQ(f32_to_bf16(bits_f32(0x00018000u)), 0x0002);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xc040), -3.0f);
  // Random bit patterns (all classes) against the reference.
  std::mt19937 rng(61);
  for (int i = 0; i < 200000; ++i) {
    const float f = bits_f32(static_cast<uint32_t>(rng()));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), bf16_ref(f)) << std::hex << f32_bits(f);
  }
}

TEST(HalfConversion, Bf16NaNAndInf) {
  for (uint32_t b : {0x7fc00000u, 0x7f800001u, 0x7f810000u, 0xff800001u, 0x7fffffffu, 0xffc00000u, 0x7f80ffffu}) {
    const uint16_t h = f32_to_bf16(bits_f32(b));
    EXPECT_EQ(h & 0x7f80, 0x7f80) << std::hex << b;
    EXPECT_NE(h & 0x007f, 0) << "NaN became inf: " << std::hex << b;
    EXPECT_EQ(static_cast<uint32_t>(h & 0x8000), (b >> 16) & 0x8000u) << std::hex << b;
    EXPECT_TRUE(std::isnan(bf16_to_f32(h)));
  }
  EXPECT_TRUE(std::isinf(bf16_to_f32(0x7f80)));
  EXPECT_TRUE(std::isinf(bf16_to_f32(0xff80)));
}

TEST(HalfConversion, Bf16RoundTripAllPatterns) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float f = bf16_to_f32(h);
    if ((h & 0x7f80) == 0x7f80 && (h & 0x7f)) {
      ASSERT_TRUE(std::isnan(f));
      continue;
    }
    ASSERT_EQ(f32_to_bf16(f), h) << std::hex << i;
  }
}

TEST(HalfConversion, F16ToF32AllPatterns) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float f = f16_to_f32(h);
    const double want = f16_value(h);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << i;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << i;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << i;
  }
}

TEST(HalfConversion, F16RoundTripAllPatterns) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float f = f16_to_f32(h);
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
      ASSERT_TRUE(std::isnan(f));
      const uint16_t back = f32_to_f16(f);
      ASSERT_EQ(back & 0x7c00, 0x7c00);
      ASSERT_NE(back & 0x3ff, 0) << "NaN became inf: " << std::hex << i;
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << i;
  }
}

TEST(HalfConversion, F16RoundToNearestEven) {
  auto p2 = [](int e) { return std::ldexp(1.0f, e); };
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.0f + p2(-11)), 0x3c00);                    // tie -> even (down)
  EXPECT_EQ(f32_to_f16(1.0f + 3 * p2(-11)), 0x3c02);                // tie -> even (up)
  EXPECT_EQ(f32_to_f16(1.0f + p2(-11) + p2(-20)), 0x3c01);
  EXPECT_EQ(f32_to_f16(-2.0f - 3 * p2(-10)), 0xc002);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.996f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);                          // tie with odd max -> inf
  EXPECT_EQ(f32_to_f16(-1e6f), 0xfc00);
  EXPECT_EQ(f32_to_f16(kInf), 0x7c00);
  EXPECT_EQ(f32_to_f16(-kInf), 0xfc00);
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  // Subnormals (2^-24 is the smallest).
  EXPECT_EQ(f32_to_f16(p2(-24)), 0x0001);
  EXPECT_EQ(f32_to_f16(p2(-25)), 0x0000);                           // tie -> even (zero)
  EXPECT_EQ(f32_to_f16(std::nextafter(p2(-25), 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(-std::nextafter(p2(-25), 1.0f)), 0x8001);
  EXPECT_EQ(f32_to_f16(p2(-26)), 0x0000);
  EXPECT_EQ(f32_to_f16(3 * p2(-25)), 0x0002);                       // tie -> even (up)
  EXPECT_EQ(f32_to_f16(5 * p2(-25)), 0x0002);                       // tie -> even (down)
  EXPECT_EQ(f32_to_f16(1023 * p2(-24)), 0x03ff);                    // largest subnormal
  EXPECT_EQ(f32_to_f16(p2(-14) - p2(-25)), 0x0400);                 // rounds up into the normals
  EXPECT_EQ(f32_to_f16(p2(-14)), 0x0400);
  EXPECT_EQ(f32_to_f16(bits_f32(0x00000001u)), 0x0000);             // f32 subnormal
  EXPECT_EQ(f16_to_f32(0x0001), p2(-24));
  EXPECT_EQ(f16_to_f32(0x8001), -p2(-24));
  EXPECT_EQ(f16_to_f32(0x03ff), 1023 * p2(-24));
  EXPECT_EQ(f16_to_f32(0x0200), p2(-15));
  // Random f32 values across and around the f16 range against the bisection reference.
  std::mt19937 rng(62);
  std::uniform_int_distribution<uint32_t> exp_dist(100, 145);  // 2^-27 .. 2^18
  for (int i = 0; i < 200000; ++i) {
    const uint32_t b = (rng() & 0x807fffffu) | (exp_dist(rng) << 23);
    const float f = bits_f32(b);
    ASSERT_EQ(f32_to_f16(f), f16_ref(f)) << std::hex << b;
  }
  // Every midpoint between adjacent finite f16 values (exactly representable in f32).
  for (uint16_t h = 0; h < 0x7bff; ++h) {
    const float mid = static_cast<float>((f16_value(h) + f16_value(static_cast<uint16_t>(h + 1))) / 2);
    ASSERT_EQ(f32_to_f16(mid), (h & 1) ? h + 1 : h) << std::hex << h;
    ASSERT_EQ(f32_to_f16(-mid), 0x8000 | ((h & 1) ? h + 1 : h)) << std::hex << h;
  }
}

TEST(HalfConversion, F16NaNAndInf) {
  for (uint32_t b : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0x7f802000u}) {
    const uint16_t h = f32_to_f16(bits_f32(b));
    EXPECT_EQ(h & 0x7c00, 0x7c00) << std::hex << b;
    EXPECT_NE(h & 0x3ff, 0) << "NaN became inf: " << std::hex << b;
    EXPECT_TRUE(std::isnan(f16_to_f32(h)));
  }
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
  EXPECT_GT(f16_to_f32(0x7c00), 0.0f);
  EXPECT_LT(f16_to_f32(0xfc00), 0.0f);
}

TEST(HalfConversion, TensorConvertRoundTrip) {
  // convert_to_f32 / convert_from_f32 agree with the scalar conversions.
  std::mt19937 rng(63);
  const std::vector<float> x = random_vec(rng, 1001, -70000.0f, 70000.0f);
  for (DType dt : {DType::BF16, DType::F16}) {
    std::vector<uint16_t> h(x.size());
    convert_from_f32(x.data(), dt, h.data(), static_cast<int64_t>(x.size()));
    std::vector<float> back(x.size());
    convert_to_f32(dt, h.data(), back.data(), static_cast<int64_t>(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      const uint16_t want = dt == DType::BF16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
      ASSERT_EQ(h[i], want);
      ASSERT_EQ(back[i], dt == DType::BF16 ? bf16_to_f32(want) : f16_to_f32(want));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// small-M linear: half (and f32) weights widened in registers (gemv_half.h)
// ---------------------------------------------------------------------------------------------------

using kernels::detail::GemvIsa;

std::vector<GemvIsa> gemv_isas() {
  std::vector<GemvIsa> isas;
  for (GemvIsa isa : {GemvIsa::Generic, GemvIsa::Avx2, GemvIsa::Avx512})
    if (kernels::detail::gemv_isa_supported(isa)) isas.push_back(isa);
  return isas;
}

// x · widen(W)ᵀ in double, and the sum of |terms| of each output (the scale of its fp32 rounding error).
struct GemvRef {
  std::vector<double> dot, mag;
};

GemvRef gemv_reference(const std::vector<float>& x, const std::vector<float>& wf, int64_t M, int64_t K, int64_t N) {
  GemvRef r{std::vector<double>(idx(M * N)), std::vector<double>(idx(M * N))};
  for (int64_t i = 0; i < M; ++i)
    for (int64_t n = 0; n < N; ++n) {
      const float* xr = x.data() + i * K;
      const float* wr = wf.data() + n * K;
      double s = 0, a = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(xr[k]) * wr[k];
        s += p;
        a += std::fabs(p);
      }
      r.dot[idx(i * N + n)] = s;
      r.mag[idx(i * N + n)] = a;
    }
  return r;
}

// Runs `fn(y, accumulate)` with accumulate off (y pre-filled with NaN: must not be read) and on (y random),
// checks y against the reference to 1e-6 of the sum of |terms| (fp32 sums, in another order than the
// double reference), and checks that the `guard` floats after y are untouched.
template <typename Fn>
void check_gemv_against(const GemvRef& ref, std::mt19937& rng, const std::string& what, Fn fn) {
  constexpr size_t guard = 17;
  constexpr float sentinel = -31.0f;
  const size_t n = ref.dot.size();
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(what + " accumulate=" + std::to_string(accumulate));
    std::vector<float> y0 = accumulate ? random_vec(rng, static_cast<int64_t>(n)) : std::vector<float>(n, kNaN);
    std::vector<float> y = y0;
    y.resize(n + guard, sentinel);
    fn(y.data(), accumulate);
    std::vector<double> want(n + guard, sentinel), scale(n + guard, 0.0);
    for (size_t i = 0; i < n; ++i) {
      want[i] = ref.dot[i] + (accumulate ? static_cast<double>(y0[i]) : 0.0);
      scale[i] = ref.mag[i] + (accumulate ? std::fabs(static_cast<double>(y0[i])) : 0.0);
    }
    EXPECT_TRUE(close_all(y, want, 1e-30, 1e-6, &scale));
  }
}

const int64_t kGemvM[] = {1, 2, 3, 5, 8, 9};
const int64_t kGemvK[] = {1, 15, 16, 17, 31, 64, 100, 4096};
const int64_t kGemvN[] = {1, 7, 64, 1000};

TEST(KernelGemvHalf, LinearMatchesDoubleReference) {
  // kernels::linear: M <= 8 takes the small-M kernel of the best instruction set, M = 9 the sgemm path.
  uint32_t seed = 500;
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (int64_t K : kGemvK)
      for (int64_t N : kGemvN) {
        std::mt19937 rng(seed++);
        std::vector<float> wf;
        const Tensor W = make_weight(rng, N, K, dt, &wf);
        for (int64_t M : kGemvM) {
          const std::vector<float> x = random_vec(rng, M * K);
          const GemvRef ref = gemv_reference(x, wf, M, K, N);
          const std::string what = std::string(dtype_name(dt)) + " M=" + std::to_string(M) + " K=" +
                                   std::to_string(K) + " N=" + std::to_string(N);
          check_gemv_against(ref, rng, what,
                             [&](float* y, bool acc) { kernels::linear(x.data(), M, K, W, y, acc); });
        }
      }
}

TEST(KernelGemvHalf, EveryIsaMatchesDoubleReference) {
  // Each compiled instruction set this CPU runs (the portable C++ one always), called directly.
  const auto isas = gemv_isas();
  ASSERT_FALSE(isas.empty());
  uint32_t seed = 900;
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (int64_t K : kGemvK)
      for (int64_t N : kGemvN) {
        std::mt19937 rng(seed++);
        std::vector<float> wf;
        const Tensor W = make_weight(rng, N, K, dt, &wf);
        for (int64_t M : kGemvM) {
          if (M > kernels::detail::kGemvMaxRows) continue;
          const std::vector<float> x = random_vec(rng, M * K);
          const GemvRef ref = gemv_reference(x, wf, M, K, N);
          for (GemvIsa isa : isas) {
            const std::string what = std::string(kernels::detail::gemv_isa_name(isa)) + " " + dtype_name(dt) +
                                     " M=" + std::to_string(M) + " K=" + std::to_string(K) +
                                     " N=" + std::to_string(N);
            check_gemv_against(ref, rng, what, [&](float* y, bool acc) {
              kernels::detail::gemv_rows(x.data(), M, K, W.raw(), dt, N, y, acc, isa);
            });
          }
        }
      }
}

TEST(KernelGemvHalf, IntegerOperandsAreExact) {
  // Small integers times small integers and halves: every product and partial sum is exact in fp32, so
  // each isa must reproduce the double result bit for bit, whatever its summation order (K covers the
  // unrolled main loop, the single steps and the masked / padded tail).
  std::mt19937 rng(77);
  std::uniform_int_distribution<int> d(-8, 8);
  const int64_t K = 16 * 9 + 7, N = 37;
  for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
    Tensor W = Tensor::empty(dt, {N, K});
    std::vector<float> wf(idx(N * K));
    for (size_t i = 0; i < wf.size(); ++i) {
      wf[i] = static_cast<float>(d(rng)) * 0.5f;
      if (dt == DType::F32) W.data<float>()[i] = wf[i];
      else W.data<uint16_t>()[i] = dt == DType::BF16 ? f32_to_bf16(wf[i]) : f32_to_f16(wf[i]);
    }
    for (int64_t M = 1; M <= kernels::detail::kGemvMaxRows; ++M) {
      std::vector<float> x(idx(M * K));
      for (auto& v : x) v = static_cast<float>(d(rng));
      const GemvRef ref = gemv_reference(x, wf, M, K, N);
      for (GemvIsa isa : gemv_isas()) {
        std::vector<float> y(idx(M * N), kNaN);
        kernels::detail::gemv_rows(x.data(), M, K, W.raw(), dt, N, y.data(), false, isa);
        for (size_t i = 0; i < y.size(); ++i)
          ASSERT_EQ(y[i], static_cast<float>(ref.dot[i]))
              << kernels::detail::gemv_isa_name(isa) << " " << dtype_name(dt) << " M=" << M << " at " << i;
      }
    }
  }
}

TEST(KernelGemvHalf, WidensEveryBitPattern) {
  // W = every 16-bit pattern as a column (K = 1), x = 1: y must be the scalar widening exactly
  // (f16 subnormals, infinities, signed zeros and NaNs included).
  const int64_t N = 65536;
  const float one = 1.0f;
  for (DType dt : {DType::BF16, DType::F16}) {
    Tensor W = Tensor::empty(dt, {N, 1});
    for (int64_t i = 0; i < N; ++i) W.data<uint16_t>()[i] = static_cast<uint16_t>(i);
    for (GemvIsa isa : gemv_isas()) {
      std::vector<float> y(idx(N), 0.0f);
      kernels::detail::gemv_rows(&one, 1, 1, W.raw(), dt, N, y.data(), false, isa);
      for (int64_t i = 0; i < N; ++i) {
        const auto h = static_cast<uint16_t>(i);
        const float want = dt == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
        if (std::isnan(want)) {
          ASSERT_TRUE(std::isnan(y[idx(i)])) << kernels::detail::gemv_isa_name(isa) << " " << dtype_name(dt) << " " << i;
        } else {
          // w * 1 + 0 turns -0 into +0; compare values.
          ASSERT_EQ(y[idx(i)], want) << kernels::detail::gemv_isa_name(isa) << " " << dtype_name(dt) << " " << i;
        }
      }
    }
  }
}

TEST(KernelGemvHalf, DeterministicAcrossRunsAndThreadCounts) {
  // Each output is one thread's fixed-order sum: bit-identical run to run, and (by construction, not a
  // requirement of linear()) for any thread count.
  std::mt19937 rng(78);
  const int64_t K = 4096 + 5, N = 1000 + 3;
  const int saved = kernels::num_threads();
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (int64_t M : {1, 3, 8}) {
      if (dt == DType::F32 && M == 1) continue;  // OpenBLAS sgemv, whose sums depend on its threads
      std::vector<float> wf;
      const Tensor W = make_weight(rng, N, K, dt, &wf);
      const std::vector<float> x = random_vec(rng, M * K);
      std::vector<float> first(idx(M * N)), again(idx(M * N)), single(idx(M * N));
      kernels::set_num_threads(2);
      kernels::linear(x.data(), M, K, W, first.data());
      kernels::linear(x.data(), M, K, W, again.data());
      kernels::set_num_threads(1);
      kernels::linear(x.data(), M, K, W, single.data());
      kernels::set_num_threads(saved);
      ASSERT_EQ(0, std::memcmp(first.data(), again.data(), first.size() * sizeof(float))) << dtype_name(dt) << M;
      ASSERT_EQ(0, std::memcmp(first.data(), single.data(), first.size() * sizeof(float))) << dtype_name(dt) << M;
    }
}

TEST(KernelGemvHalf, RowsDoNotMix) {
  // A NaN in one row of x poisons exactly that row of y.
  std::mt19937 rng(79);
  const int64_t M = 5, K = 33, N = 70;
  for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
    std::vector<float> wf;
    const Tensor W = make_weight(rng, N, K, dt, &wf);
    std::vector<float> x = random_vec(rng, M * K);
    x[idx(2 * K + K - 1)] = kNaN;  // last element of row 2: the masked tail
    for (GemvIsa isa : gemv_isas()) {
      std::vector<float> y(idx(M * N), 0.0f);
      kernels::detail::gemv_rows(x.data(), M, K, W.raw(), dt, N, y.data(), false, isa);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t n = 0; n < N; ++n)
          ASSERT_EQ(std::isnan(y[idx(i * N + n)]), i == 2) << kernels::detail::gemv_isa_name(isa) << " " << i;
    }
  }
}

TEST(KernelGemvHalf, RejectsBadArguments) {
  const Tensor Wi = Tensor::zeros(DType::I32, {4, 8});
  std::vector<float> x(64, 1.0f), y(64, 0.0f);
  EXPECT_THROW(kernels::detail::gemv_rows(x.data(), 1, 8, Wi.raw(), DType::I32, 4, y.data(), false), Error);
  const Tensor W = Tensor::zeros(DType::BF16, {4, 8});
  EXPECT_THROW(kernels::detail::gemv_rows(x.data(), 0, 8, W.raw(), DType::BF16, 4, y.data(), false), Error);
  EXPECT_THROW(kernels::detail::gemv_rows(x.data(), 9, 8, W.raw(), DType::BF16, 4, y.data(), false), Error);
  EXPECT_NO_THROW(kernels::detail::gemv_rows(x.data(), 8, 8, W.raw(), DType::BF16, 4, y.data(), false));
}

// ---------------------------------------------------------------------------------------------------
// shared_kv_attention: keys that are also the values (absorbed cross-attention, shared_kv_attention.h)
// ---------------------------------------------------------------------------------------------------

// softmax over the real keys of q_r · s_j, then Σ p_j s_j, in double from the widened states.
std::vector<double> shared_kv_reference(const std::vector<float>& q, const std::vector<float>& s, int64_t M,
                                        int64_t D, int64_t N, const std::vector<uint8_t>& mask) {
  std::vector<double> out(idx(M * D), 0.0);
  for (int64_t r = 0; r < M; ++r) {
    std::vector<double> sc(idx(N), -std::numeric_limits<double>::infinity());
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < N; ++j) {
      if (!mask.empty() && !mask[idx(j)]) continue;
      double d = 0;
      for (int64_t e = 0; e < D; ++e) d += static_cast<double>(q[idx(r * D + e)]) * s[idx(j * D + e)];
      sc[idx(j)] = d;
      mx = std::max(mx, d);
    }
    if (mx == -std::numeric_limits<double>::infinity()) continue;  // every key masked: zeros
    double z = 0;
    for (int64_t j = 0; j < N; ++j) z += std::exp(sc[idx(j)] - mx);
    for (int64_t j = 0; j < N; ++j) {
      const double p = std::exp(sc[idx(j)] - mx) / z;
      if (p == 0) continue;
      for (int64_t e = 0; e < D; ++e) out[idx(r * D + e)] += p * s[idx(j * D + e)];
    }
  }
  return out;
}

struct SharedKvCase {
  int64_t M, D, N;
  float q_scale;  // scores are up to ~q_scale·D/3 in magnitude
};

std::vector<uint8_t> make_mask(std::mt19937& rng, int64_t N, int kind) {
  std::vector<uint8_t> m;
  switch (kind) {
    case 0: break;  // no mask
    case 1: {       // ~70 % real, at least one
      std::bernoulli_distribution real(0.7);
      m.resize(idx(N));
      for (auto& v : m) v = real(rng);
      m[idx(N / 2)] = 1;
      break;
    }
    case 2:  // only the last key is real: every earlier block is skipped
      m.assign(idx(N), 0);
      m.back() = 1;
      break;
    case 3:  // first half padding, then real keys
      m.assign(idx(N), 1);
      std::fill(m.begin(), m.begin() + N / 2, 0);
      break;
  }
  return m;
}

TEST(KernelSharedKvAttention, MatchesDoubleReference) {
  const SharedKvCase cases[] = {{1, 1, 1, 1.0f},    {1, 16, 64, 0.5f},  {3, 5, 65, 2.0f},   {8, 48, 300, 0.3f},
                                {9, 47, 257, 0.4f}, {13, 100, 130, 0.2f}, {32, 64, 1000, 0.3f}, {2, 33, 600, 0.5f},
                                {32, 1024, 700, 0.02f}, {7, 17, 1, 1.0f}};
  uint32_t seed = 900;
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (const auto& c : cases)
      for (int mask_kind = 0; mask_kind < 4; ++mask_kind) {
        std::mt19937 rng(seed++);
        std::vector<float> sf;
        const Tensor S = make_weight(rng, c.N, c.D, dt, &sf);
        std::vector<float> q = random_vec(rng, c.M * c.D, -c.q_scale, c.q_scale);
        const std::vector<uint8_t> mask = make_mask(rng, c.N, mask_kind);
        const std::vector<double> want = shared_kv_reference(q, sf, c.M, c.D, c.N, mask);
        for (GemvIsa isa : gemv_isas()) {
          SCOPED_TRACE(std::string(dtype_name(dt)) + " " + kernels::detail::gemv_isa_name(isa) + " M=" +
                       std::to_string(c.M) + " D=" + std::to_string(c.D) + " N=" + std::to_string(c.N) +
                       " mask=" + std::to_string(mask_kind));
          std::vector<float> out(idx(c.M * c.D), kNaN);
          kernels::detail::shared_kv_attention(q.data(), c.M, c.D, S.raw(), dt, c.N,
                                               mask.empty() ? nullptr : mask.data(), out.data(), isa);
          // Outputs are convex combinations of values in [-1, 1]: fp32 errors stay far below 1e-5.
          ASSERT_TRUE(close_all(out, want, 2e-6, 1e-5));
        }
      }
}

TEST(KernelSharedKvAttention, PeakedAndFlatScores) {
  // Scores of several hundred (one key dominates: the online max must rescale exactly) and all-equal
  // scores (a plain mean over the real keys).
  std::mt19937 rng(950);
  const int64_t M = 10, D = 40, N = 777;
  std::vector<float> sf;
  const Tensor S = make_weight(rng, N, D, DType::F32, &sf);
  const std::vector<uint8_t> mask = make_mask(rng, N, 1);
  for (float q_scale : {30.0f, 0.0f}) {
    std::vector<float> q = random_vec(rng, M * D, -q_scale, q_scale);
    const std::vector<double> want = shared_kv_reference(q, sf, M, D, N, mask);
    for (GemvIsa isa : gemv_isas()) {
      std::vector<float> out(idx(M * D), kNaN);
      kernels::detail::shared_kv_attention(q.data(), M, D, S.raw(), DType::F32, N, mask.data(), out.data(), isa);
      // Scores of ~400 carry fp32 rounding of ~400·6e-8 in any implementation (the reference's too), which
      // exp turns into relative errors of ~3e-5 in the weights.
      const double tol = q_scale > 0 ? 1e-4 : 2e-6;
      EXPECT_TRUE(close_all(out, want, tol, 1e-5)) << q_scale << " " << kernels::detail::gemv_isa_name(isa);
    }
  }
}

TEST(KernelSharedKvAttention, EveryKeyMaskedGivesZeros) {
  std::mt19937 rng(951);
  const int64_t M = 4, D = 20, N = 600;
  std::vector<float> sf;
  const Tensor S = make_weight(rng, N, D, DType::BF16, &sf);
  const std::vector<float> q = random_vec(rng, M * D);
  const std::vector<uint8_t> mask(idx(N), 0);
  for (GemvIsa isa : gemv_isas()) {
    std::vector<float> out(idx(M * D), kNaN);
    kernels::detail::shared_kv_attention(q.data(), M, D, S.raw(), DType::BF16, N, mask.data(), out.data(), isa);
    for (float v : out) ASSERT_EQ(v, 0.0f);
  }
}

TEST(KernelSharedKvAttention, DeterministicAndThreadCountIndependentWithinRounding) {
  // Same threads: bit-identical. Other thread counts split the keys differently, which changes only the
  // fp32 rounding of the merge.
  std::mt19937 rng(952);
  const int64_t M = 32, D = 96, N = 3000;
  std::vector<float> sf;
  const Tensor S = make_weight(rng, N, D, DType::BF16, &sf);
  const std::vector<float> q = random_vec(rng, M * D, -0.3f, 0.3f);
  const int saved = kernels::num_threads();
  std::vector<float> first(idx(M * D)), again(idx(M * D)), single(idx(M * D));
  kernels::set_num_threads(2);
  kernels::shared_kv_attention(q.data(), M, D, S.raw(), DType::BF16, N, nullptr, first.data());
  kernels::shared_kv_attention(q.data(), M, D, S.raw(), DType::BF16, N, nullptr, again.data());
  kernels::set_num_threads(1);
  kernels::shared_kv_attention(q.data(), M, D, S.raw(), DType::BF16, N, nullptr, single.data());
  kernels::set_num_threads(saved);
  ASSERT_EQ(0, std::memcmp(first.data(), again.data(), first.size() * sizeof(float)));
  std::vector<double> single_d(single.begin(), single.end());
  EXPECT_TRUE(close_all(first, single_d, 1e-6, 1e-6));  // outputs are convex combinations of values in [-1, 1]
}

TEST(KernelSharedKvAttention, RejectsBadArguments) {
  std::vector<float> q(64, 0.1f), out(64, 0.0f);
  const Tensor S = Tensor::zeros(DType::BF16, {4, 8});
  const Tensor Si = Tensor::zeros(DType::I32, {4, 8});
  EXPECT_THROW(kernels::shared_kv_attention(q.data(), 0, 8, S.raw(), DType::BF16, 4, nullptr, out.data()), Error);
  EXPECT_THROW(kernels::shared_kv_attention(q.data(), 1, 0, S.raw(), DType::BF16, 4, nullptr, out.data()), Error);
  EXPECT_THROW(kernels::shared_kv_attention(q.data(), 1, 8, S.raw(), DType::BF16, 0, nullptr, out.data()), Error);
  EXPECT_THROW(kernels::shared_kv_attention(q.data(), 1, 8, Si.raw(), DType::I32, 4, nullptr, out.data()), Error);
  EXPECT_NO_THROW(kernels::shared_kv_attention(q.data(), 1, 8, S.raw(), DType::BF16, 4, nullptr, out.data()));
}

// fast_exp.h on every instruction set this CPU runs, against double-precision exp.
TEST(KernelFastExp, EveryIsaMatchesDoubleReference) {
  std::mt19937 rng(77);
  const float inf = std::numeric_limits<float>::infinity();
  for (GemvIsa isa : gemv_isas()) {
    for (int64_t n : {1, 7, 8, 9, 16, 17, 31, 1000}) {
      std::vector<float> x = random_vec(rng, n, -30.0f, 5.0f);
      x[0] = -inf;  // a masked key
      if (n > 2) x[1] = 5.0f, x[2] = -200.0f;
      const float shift = 5.0f;
      std::vector<float> y = x;
      kernels::detail::exp_shift(y.data(), n, shift, isa);
      for (int64_t i = 0; i < n; ++i) {
        const float d = x[idx(i)] - shift;  // the kernel's f32 difference (its rounding is not exp's error)
        const double want = std::exp(std::min(static_cast<double>(d), 0.0));
        // ~2 ulp relative; below the normal range an absolute 1e-37
        EXPECT_NEAR(y[idx(i)], want, 3e-7 * want + 1e-37) << kernels::detail::gemv_isa_name(isa) << " x=" << x[idx(i)];
      }
      EXPECT_EQ(y[0], 0.0f);
      // The sum: every path sums the same lanes in the same order, so the results are identical.
      const double s = kernels::detail::sum_f64(y.data(), n, isa);
      EXPECT_EQ(s, kernels::detail::sum_f64(y.data(), n, GemvIsa::Generic)) << kernels::detail::gemv_isa_name(isa);
      double want_sum = 0.0;
      for (float v : y) want_sum += v;
      EXPECT_NEAR(s, want_sum, 1e-12 * (1 + want_sum));

      std::vector<float> z = random_vec(rng, n, -40.0f, 40.0f), sig(idx(n));
      z[0] = -inf;
      if (n > 2) z[1] = inf, z[2] = 0.0f;
      kernels::detail::sigmoid(z.data(), n, sig.data(), isa);
      for (int64_t i = 0; i < n; ++i) {
        const double want = 1.0 / (1.0 + std::exp(-static_cast<double>(z[idx(i)])));
        EXPECT_NEAR(sig[idx(i)], want, 4e-7 * want + 1e-37) << kernels::detail::gemv_isa_name(isa) << " x=" << z[idx(i)];
      }
    }
    // NaN stays NaN (a silently finite result would hide it from the checks downstream), in the vector body
    // and in the tail.
    for (int64_t n : {1, 9}) {
      std::vector<float> nan_in(idx(n), std::numeric_limits<float>::quiet_NaN()), nan_out(idx(n));
      kernels::detail::sigmoid(nan_in.data(), n, nan_out.data(), isa);
      kernels::detail::exp_shift(nan_in.data(), n, 0.0f, isa);
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_TRUE(std::isnan(nan_out[idx(i)])) << kernels::detail::gemv_isa_name(isa);
        EXPECT_TRUE(std::isnan(nan_in[idx(i)])) << kernels::detail::gemv_isa_name(isa);
      }
    }
  }
}

}  // namespace
}  // namespace cepe
