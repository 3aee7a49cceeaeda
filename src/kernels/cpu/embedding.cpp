#include "kernels/cpu/embedding.h"

#include <algorithm>

#include "core/half.h"

namespace cepe::kernels {

void embedding(const Tensor& table, const int32_t* ids, int64_t n, float* out) {
  const int64_t d = table.dim(1);
  const size_t es = dtype_size(table.dtype());
  const char* base = static_cast<const char*>(table.raw());
  for (int64_t i = 0; i < n; ++i)
    convert_to_f32(table.dtype(), base + static_cast<size_t>(ids[i]) * static_cast<size_t>(d) * es, out + i * d, d);
}

template <class T>
void embedding(const T* table, int64_t d, const int32_t* ids, int64_t n, T* out) {
  for (int64_t i = 0; i < n; ++i) std::copy(table + ids[i] * d, table + (ids[i] + 1) * d, out + i * d);
}

template <class T>
void embedding_backward(const T* dout, const int32_t* ids, int64_t n, int64_t d, T* dtable, int64_t padding_idx) {
  // Split the columns, not the rows: repeated ids would race, and each element's sum keeps index order.
#pragma omp parallel for schedule(static) if (n * d > 65536 && d >= 64)
  for (int64_t c0 = 0; c0 < d; c0 += 16) {
    const int64_t c1 = std::min(d, c0 + 16);
    for (int64_t i = 0; i < n; ++i) {
      if (ids[i] == padding_idx) continue;
      T* dst = dtable + ids[i] * d;
      const T* src = dout + i * d;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

template void embedding<float>(const float*, int64_t, const int32_t*, int64_t, float*);
template void embedding<double>(const double*, int64_t, const int32_t*, int64_t, double*);
template void embedding_backward<float>(const float*, const int32_t*, int64_t, int64_t, float*, int64_t);
template void embedding_backward<double>(const double*, const int32_t*, int64_t, int64_t, double*, int64_t);

}  // namespace cepe::kernels
