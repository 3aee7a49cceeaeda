#include "kernels/cpu/rmsnorm.h"

#include <cmath>
#include <vector>

#include <omp.h>

namespace cepe::kernels {

template <class T>
void rmsnorm(const T* x, const T* w, int64_t rows, int64_t d, T eps, T* y, T* rstd) {
#pragma omp parallel for schedule(static) if (rows * d > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * d;
    T* yr = y + r * d;
    double ss = 0.0;
    for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const T var = static_cast<T>(ss / static_cast<double>(d));
    const T inv = T(1) / std::sqrt(var + eps);
    if (rstd) rstd[r] = inv;
    for (int64_t i = 0; i < d; ++i) yr[i] = w[i] * (xr[i] * inv);
  }
}

template <class T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, int64_t rows, int64_t d, T* dx,
                      bool accumulate_dx, T* dw) {
  // dw is a sum over rows: each thread sums its rows into its own buffer, then the buffers are added in a
  // fixed order (the same result for a given thread count).
  const int threads = rows * d > 32768 ? omp_get_max_threads() : 1;
  std::vector<double> partial(dw ? static_cast<size_t>(threads * d) : 0, 0.0);
#pragma omp parallel num_threads(threads)  // no if(): see shared_kv_attention.cpp (clang 14)
  {
    double* mine = dw ? partial.data() + static_cast<size_t>(omp_get_thread_num()) * static_cast<size_t>(d) : nullptr;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * d;
      const T* gr = dy + r * d;
      const double inv = rstd[r];
      if (dx) {
        double dot = 0.0;
        for (int64_t i = 0; i < d; ++i) dot += static_cast<double>(w[i]) * gr[i] * xr[i];
        const double c = inv * inv * inv * dot / static_cast<double>(d);
        T* o = dx + r * d;
        for (int64_t i = 0; i < d; ++i) {
          const T v = static_cast<T>(inv * w[i] * gr[i] - c * xr[i]);
          o[i] = accumulate_dx ? o[i] + v : v;
        }
      }
      if (mine)
        for (int64_t i = 0; i < d; ++i) mine[i] += static_cast<double>(gr[i]) * xr[i] * inv;
    }
  }
  if (dw)
    for (int t = 0; t < threads; ++t)
      for (int64_t i = 0; i < d; ++i) dw[i] += static_cast<T>(partial[static_cast<size_t>(t * d + i)]);
}

template void rmsnorm<float>(const float*, const float*, int64_t, int64_t, float, float*, float*);
template void rmsnorm<double>(const double*, const double*, int64_t, int64_t, double, double*, double*);
template void rmsnorm_backward<float>(const float*, const float*, const float*, const float*, int64_t, int64_t, float*,
                                      bool, float*);
template void rmsnorm_backward<double>(const double*, const double*, const double*, const double*, int64_t, int64_t,
                                       double*, bool, double*);

}  // namespace cepe::kernels
