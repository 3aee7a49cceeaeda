#include "kernels/cpu/loss.h"

#include <cmath>
#include <vector>

namespace cepe::kernels {

namespace {

// Row log-sum-exp in double (max-shifted, as torch's log_softmax).
template <class T>
double row_lse(const T* x, int64_t V) {
  double m = -INFINITY;
  for (int64_t i = 0; i < V; ++i) m = std::max(m, static_cast<double>(x[i]));
  double s = 0.0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(static_cast<double>(x[i]) - m);
  return m + std::log(s);
}

}  // namespace

template <class T>
LossSum cross_entropy(const T* logits, int64_t rows, int64_t V, const int64_t* labels, T* dlogits, T grad_scale) {
  LossSum total;
  double sum = 0.0;
  int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum, count) if (rows * V > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t y = labels[r];
    if (y == kIgnoreIndex) continue;
    const T* x = logits + r * V;
    const double lse = row_lse(x, V);
    sum += lse - static_cast<double>(x[y]);
    ++count;
    if (dlogits) {
      T* g = dlogits + r * V;
      for (int64_t i = 0; i < V; ++i) g[i] += grad_scale * static_cast<T>(std::exp(static_cast<double>(x[i]) - lse));
      g[y] -= grad_scale;
    }
  }
  total.sum = sum;
  total.count = count;
  return total;
}

template <class T>
double distill_kl(const T* logits, int64_t rows, int64_t V, const int32_t* index, const T* prob, int64_t k,
                  KlMode mode, double delta, T* dlogits, T grad_scale) {
  const bool smooth = mode == KlMode::Smooth;
  const int64_t cols = smooth ? k + 1 : k;  // the "rest" column is dropped in drop mode
  const double norm = smooth ? 1.0 + delta * static_cast<double>(k + 1) : 1.0;
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (rows * V > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = logits + r * V;
    const int32_t* idx = index + r * k;
    const T* pr = prob + r * (k + 1);
    const double lse = row_lse(x, V);
    // q_j: the student's probabilities of the teacher's ids, then the rest.
    std::vector<double> q(static_cast<size_t>(k + 1)), g(static_cast<size_t>(k + 1), 0.0);
    double top = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      q[static_cast<size_t>(j)] = std::exp(static_cast<double>(x[idx[j]]) - lse);
      top += q[static_cast<size_t>(j)];
    }
    q[static_cast<size_t>(k)] = 1.0 - top;
    double kl = 0.0;
    for (int64_t j = 0; j < cols; ++j) {
      const double p = smooth ? (static_cast<double>(pr[j]) + delta) / norm : static_cast<double>(pr[j]);
      const double qj = smooth ? (q[static_cast<size_t>(j)] + delta) / norm : q[static_cast<size_t>(j)];
      if (p > 0) kl += p * (std::log(p) - std::log(qj));
      // ∂KL/∂q_j (before smoothing): −p / (q_j + δ) (δ = 0 for drop).
      g[static_cast<size_t>(j)] = -p / (q[static_cast<size_t>(j)] + (smooth ? delta : 0.0));
    }
    total += kl;
    if (!dlogits) continue;
    // ds_v for the softmax probabilities s: each top-k id gets its g_j, minus g_k through q_k = 1 − Σ.
    std::vector<double> ds(static_cast<size_t>(k));
    double s_dot_ds = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      ds[static_cast<size_t>(j)] = g[static_cast<size_t>(j)] - (smooth ? g[static_cast<size_t>(k)] : 0.0);
      s_dot_ds += q[static_cast<size_t>(j)] * ds[static_cast<size_t>(j)];
    }
    // Softmax backward: dlogit_v = s_v (ds_v − Σ_u s_u ds_u), ds sparse on the top-k ids.
    T* gl = dlogits + r * V;
    for (int64_t i = 0; i < V; ++i)
      gl[i] += grad_scale * static_cast<T>(-std::exp(static_cast<double>(x[i]) - lse) * s_dot_ds);
    for (int64_t j = 0; j < k; ++j)
      gl[idx[j]] += grad_scale * static_cast<T>(q[static_cast<size_t>(j)] * ds[static_cast<size_t>(j)]);
  }
  return total;
}

template LossSum cross_entropy<float>(const float*, int64_t, int64_t, const int64_t*, float*, float);
template LossSum cross_entropy<double>(const double*, int64_t, int64_t, const int64_t*, double*, double);
template double distill_kl<float>(const float*, int64_t, int64_t, const int32_t*, const float*, int64_t, KlMode, double,
                                  float*, float);
template double distill_kl<double>(const double*, int64_t, int64_t, const int32_t*, const double*, int64_t, KlMode,
                                   double, double*, double);

}  // namespace cepe::kernels
