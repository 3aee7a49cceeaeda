#include "kernels/cpu/softmax.h"

#include <cmath>
#include <limits>

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

}  // namespace cepe::kernels
