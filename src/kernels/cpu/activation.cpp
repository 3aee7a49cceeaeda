#include "kernels/cpu/activation.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/cpu/fast_exp.h"

namespace cepe::kernels {

namespace {

// f32: σ of a chunk at a time through the vectorised sigmoid (fast_exp.h), then plain loops the compiler
// vectorises. f(i0, len, sig) handles elements [i0, i0 + len) given sig[0, len) = σ(x[i0 + ...]).
constexpr int64_t kChunk = 1024;
template <class F>
void by_sigmoid_chunks(const float* x, int64_t n, F f) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t c = 0; c < chunks; ++c) {
    float sig[kChunk];
    const int64_t i0 = c * kChunk, len = std::min(kChunk, n - i0);
    sigmoid(x + i0, len, sig);
    f(i0, len, sig);
  }
}

}  // namespace

void swiglu(float* gate, const float* up, int64_t n) { swiglu<float>(gate, up, n, gate); }

template <class T>
void swiglu(const T* gate, const T* up, int64_t n, T* out) {
  if constexpr (std::is_same_v<T, float>) {
    by_sigmoid_chunks(gate, n, [&](int64_t i0, int64_t len, const float* sig) {
      for (int64_t i = 0; i < len; ++i) out[i0 + i] = gate[i0 + i] * sig[i] * up[i0 + i];
    });
    return;
  }
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const T g = gate[i];
    out[i] = g / (T(1) + std::exp(-g)) * up[i];
  }
}

template <class T>
void swiglu_backward(const T* dout, const T* gate, const T* up, int64_t n, T* dgate, T* dup) {
  if constexpr (std::is_same_v<T, float>) {
    by_sigmoid_chunks(gate, n, [&](int64_t i0, int64_t len, const float* sig) {
      for (int64_t i = 0; i < len; ++i) {
        const float g = gate[i0 + i], sg = sig[i], d = dout[i0 + i];
        dup[i0 + i] = d * (g * sg);
        dgate[i0 + i] = d * up[i0 + i] * sg * (1.0f + g * (1.0f - sg));
      }
    });
    return;
  }
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const T g = gate[i], sig = T(1) / (T(1) + std::exp(-g)), s = g * sig;
    dup[i] = dout[i] * s;
    dgate[i] = dout[i] * up[i] * sig * (T(1) + g * (T(1) - sig));
  }
}

template <class T>
void silu(const T* x, int64_t n, T* out) {
  if constexpr (std::is_same_v<T, float>) {
    by_sigmoid_chunks(x, n, [&](int64_t i0, int64_t len, const float* sig) {
      for (int64_t i = 0; i < len; ++i) out[i0 + i] = x[i0 + i] * sig[i];
    });
    return;
  }
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] / (T(1) + std::exp(-x[i]));
}

template <class T>
void silu_backward(const T* dout, const T* x, int64_t n, T* dx) {
  if constexpr (std::is_same_v<T, float>) {
    by_sigmoid_chunks(x, n, [&](int64_t i0, int64_t len, const float* sig) {
      for (int64_t i = 0; i < len; ++i) dx[i0 + i] = dout[i0 + i] * sig[i] * (1.0f + x[i0 + i] * (1.0f - sig[i]));
    });
    return;
  }
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const T sig = T(1) / (T(1) + std::exp(-x[i]));
    dx[i] = dout[i] * sig * (T(1) + x[i] * (T(1) - sig));
  }
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
