#include "kernels/cpu/softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/fast_exp.h"
#include "kernels/cpu/gemm.h"

namespace cepe::kernels {

void softmax_rows(float* x, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    float* v = x + r * n;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) m = v[i] > m ? v[i] : m;
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      v[i] = std::exp(v[i] - m);
      s += v[i];
    }
    const float inv = static_cast<float>(1.0 / s);
    for (int64_t i = 0; i < n; ++i) v[i] *= inv;
  }
}

void log_softmax_rows(const float* x, int64_t rows, int64_t n, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* v = x + r * n;
    float* o = out + r * n;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) m = v[i] > m ? v[i] : m;
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(v[i]) - m);
    const double log_s = std::log(s);  // (x - max) - log(sum), as torch: exact for logits far from 0
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<float>((v[i] - m) - log_s);
  }
}

template <class T>
void shifted_exp(T* x, int64_t n, T shift) {
  if constexpr (std::is_same_v<T, float>) {
    exp_shift(x, n, shift);
  } else {
    for (int64_t j = 0; j < n; ++j) x[j] = std::exp(std::min(x[j] - shift, T(0)));
  }
}
template void shifted_exp<float>(float*, int64_t, float);
template void shifted_exp<double>(double*, int64_t, double);

namespace {

double sum_in_double(const float* x, int64_t n) { return sum_f64(x, n); }
double sum_in_double(const double* x, int64_t n) {
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j) s += x[j];
  return s;
}

}  // namespace

template <class T>
bool masked_softmax_row(T* s, int64_t limit, int64_t n, const uint8_t* mask, T* lse) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  T m = neg_inf;
  bool any = false;
  for (int64_t j = 0; j < limit; ++j) {
    if (mask && !mask[j]) {
      s[j] = neg_inf;
      continue;
    }
    any = true;
    m = std::max(m, s[j]);
  }
  if (!any) {
    std::fill(s, s + n, T(0));
    return false;
  }
  shifted_exp(s, limit, m);
  const double sum = sum_in_double(s, limit);
  const T inv = static_cast<T>(1.0 / sum);
  for (int64_t j = 0; j < limit; ++j) s[j] *= inv;
  std::fill(s + limit, s + n, T(0));
  if (lse) *lse = m + static_cast<T>(std::log(sum));
  return true;
}
template bool masked_softmax_row<float>(float*, int64_t, int64_t, const uint8_t*, float*);
template bool masked_softmax_row<double>(double*, int64_t, int64_t, const uint8_t*, double*);

void online_softmax_block(float* s, int64_t M, int64_t n, const uint8_t* mask, float* m, float* l, float* acc,
                          int64_t acc_ld, const float* V, int64_t v_ld, int64_t D) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < M; ++r) {
    float* sr = s + r * n;
    float bm = neg_inf;
    for (int64_t j = 0; j < n; ++j)
      if (!mask || mask[j]) bm = std::max(bm, sr[j]);
    if (bm == neg_inf) {  // no real key in this block
      std::fill(sr, sr + n, 0.0f);
      continue;
    }
    const float mn = std::max(m[r], bm);
    const float scale = std::exp(m[r] - mn);  // 0 on the first real block
    if (scale != 1.0f) {
      l[r] *= scale;
      float* ar = acc + r * acc_ld;
      for (int64_t i = 0; i < D; ++i) ar[i] *= scale;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const float p = (!mask || mask[j]) ? std::exp(sr[j] - mn) : 0.0f;
      sr[j] = p;
      sum += p;
    }
    l[r] += static_cast<float>(sum);
    m[r] = mn;
  }
  if (M == 1) {  // decode: a GEMV streams V without packing it
    std::vector<float> tmp(static_cast<size_t>(D));
    gemv(true, n, D, 1.0f, V, v_ld, s, tmp.data());
    for (int64_t i = 0; i < D; ++i) acc[i] += tmp[static_cast<size_t>(i)];
  } else {
    gemm(false, false, M, D, n, 1.0f, s, n, V, v_ld, 1.0f, acc, acc_ld);
  }
}

void online_softmax_finish(float* acc, int64_t M, int64_t acc_ld, const float* l, int64_t D) {
  for (int64_t r = 0; r < M; ++r) {
    const float inv = 1.0f / l[r];
    for (int64_t i = 0; i < D; ++i) acc[r * acc_ld + i] *= inv;
  }
}

}  // namespace cepe::kernels
