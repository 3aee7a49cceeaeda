#include "kernels/cpu/rope.h"

#include <cmath>

namespace cepe::kernels {

static std::vector<float> inv_freq_for(double base, int64_t d) {
  // fp32 throughout, as torch computes `1 / base ** (arange(0, d, 2).float() / d)`.
  std::vector<float> f(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(d);
    f[static_cast<size_t>(i)] = 1.0f / std::pow(static_cast<float>(base), expo);
  }
  return f;
}

Rope Rope::make(const LlamaConfig& cfg, int64_t seq_len) {
  const int64_t d = cfg.head_dim();
  Rope r;
  double base = cfg.rope_theta;
  if (cfg.rope_scaling.type == RopeScalingType::Dynamic && seq_len > cfg.max_position_embeddings) {
    const double f = cfg.rope_scaling.factor;
    base = cfg.rope_theta *
           std::pow(f * static_cast<double>(seq_len) / static_cast<double>(cfg.max_position_embeddings) - (f - 1.0),
                    static_cast<double>(d) / static_cast<double>(d - 2));
  }
  r.inv_freq = inv_freq_for(base, d);
  if (cfg.rope_scaling.type == RopeScalingType::Linear) r.position_divisor = static_cast<float>(cfg.rope_scaling.factor);
  return r;
}

template <class T>
void apply_rope(T* x, int64_t rows, int64_t heads, int64_t d, int64_t row_stride, const int64_t* pos, const Rope& rope,
                bool inverse) {
  const int64_t half = d / 2;
#pragma omp parallel if (rows * heads * d > 65536)
  {
    std::vector<T> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      float t = static_cast<float>(pos[r]);
      if (rope.position_divisor != 1.0f) t = t / rope.position_divisor;
      for (int64_t i = 0; i < half; ++i) {
        const float ang = t * rope.inv_freq[static_cast<size_t>(i)];
        c[static_cast<size_t>(i)] = std::cos(ang);
        // The tables are f32, as the reference's; the f64 build only widens them.
        s[static_cast<size_t>(i)] = inverse ? -std::sin(ang) : std::sin(ang);
      }
      for (int64_t h = 0; h < heads; ++h) {
        T* v = x + r * row_stride + h * d;
        for (int64_t i = 0; i < half; ++i) {
          const T a = v[i], b = v[i + half];
          v[i] = a * c[static_cast<size_t>(i)] - b * s[static_cast<size_t>(i)];
          v[i + half] = b * c[static_cast<size_t>(i)] + a * s[static_cast<size_t>(i)];
        }
      }
    }
  }
}

template void apply_rope<float>(float*, int64_t, int64_t, int64_t, int64_t, const int64_t*, const Rope&, bool);
template void apply_rope<double>(double*, int64_t, int64_t, int64_t, int64_t, const int64_t*, const Rope&, bool);

}  // namespace cepe::kernels
