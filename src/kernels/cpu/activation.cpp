#include "kernels/cpu/activation.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/cpu/fast_exp.h"

namespace cepe::kernels {

namespace {

// σ(x) for a chunk: the vectorised sigmoid for f32 (fast_exp.h), the plain formula for the f64 test builds.
template <class T>
void sigmoid_of(const T* x, int64_t n, T* sig) {
  if constexpr (std::is_same_v<T, float>) {
    sigmoid(x, n, sig);
  } else {
    for (int64_t i = 0; i < n; ++i) sig[i] = T(1) / (T(1) + std::exp(-x[i]));
  }
}

// Runs f(i0, len, sig) over chunks [i0, i0 + len) of x, with sig[0, len) = σ(x[i0 + ...]): each activation
// below is one loop over a chunk that the compiler vectorises.
constexpr int64_t kChunk = 1024;
template <class T, class F>
void by_sigmoid_chunks(const T* x, int64_t n, F f) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t c = 0; c < chunks; ++c) {
    T sig[kChunk];
    const int64_t i0 = c * kChunk, len = std::min(kChunk, n - i0);
    sigmoid_of(x + i0, len, sig);
    f(i0, len, sig);
  }
}

}  // namespace

void swiglu(float* gate, const float* up, int64_t n) { swiglu<float>(gate, up, n, gate); }

template <class T>
void swiglu(const T* gate, const T* up, int64_t n, T* out) {
  by_sigmoid_chunks(gate, n, [&](int64_t i0, int64_t len, const T* sig) {
    for (int64_t i = 0; i < len; ++i) out[i0 + i] = gate[i0 + i] * sig[i] * up[i0 + i];
  });
}

template <class T>
void swiglu_backward(const T* dout, const T* gate, const T* up, int64_t n, T* dgate, T* dup) {
  by_sigmoid_chunks(gate, n, [&](int64_t i0, int64_t len, const T* sig) {
    for (int64_t i = 0; i < len; ++i) {
      const T g = gate[i0 + i], sg = sig[i], d = dout[i0 + i];
      dup[i0 + i] = d * (g * sg);
      dgate[i0 + i] = d * up[i0 + i] * sg * (T(1) + g * (T(1) - sg));
    }
  });
}

template <class T>
void silu(const T* x, int64_t n, T* out) {
  by_sigmoid_chunks(x, n, [&](int64_t i0, int64_t len, const T* sig) {
    for (int64_t i = 0; i < len; ++i) out[i0 + i] = x[i0 + i] * sig[i];
  });
}

template <class T>
void silu_backward(const T* dout, const T* x, int64_t n, T* dx) {
  by_sigmoid_chunks(x, n, [&](int64_t i0, int64_t len, const T* sig) {
    for (int64_t i = 0; i < len; ++i) dx[i0 + i] = dout[i0 + i] * sig[i] * (T(1) + x[i0 + i] * (T(1) - sig[i]));
  });
}

template <class T>
void add_inplace(T* h, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) h[i] += x[i];
}

template <class T>
void add_bias(T* y, const T* b, int64_t rows, int64_t n) {
#pragma omp parallel for schedule(static) if (rows * n > 65536)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i) y[r * n + i] += b[i];
}

template <class T>
void bias_backward(const T* dy, int64_t rows, int64_t n, T* db) {
  // Columns are independent: split them, sum each column's rows in order (deterministic for any thread count).
#pragma omp parallel for schedule(static) if (rows * n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    double s = 0.0;
    for (int64_t r = 0; r < rows; ++r) s += dy[r * n + i];
    db[i] += static_cast<T>(s);
  }
}

#define CEPE_ACTIVATION_INSTANTIATE(T)                                          \
  template void swiglu<T>(const T*, const T*, int64_t, T*);                     \
  template void swiglu_backward<T>(const T*, const T*, const T*, int64_t, T*, T*); \
  template void silu<T>(const T*, int64_t, T*);                                 \
  template void silu_backward<T>(const T*, const T*, int64_t, T*);              \
  template void add_inplace<T>(T*, const T*, int64_t);                          \
  template void add_bias<T>(T*, const T*, int64_t, int64_t);                    \
  template void bias_backward<T>(const T*, int64_t, int64_t, T*);
CEPE_ACTIVATION_INSTANTIATE(float)
CEPE_ACTIVATION_INSTANTIATE(double)
#undef CEPE_ACTIVATION_INSTANTIATE

}  // namespace cepe::kernels
