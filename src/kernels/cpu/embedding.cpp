#include "kernels/cpu/embedding.h"

#include "core/half.h"

namespace cepe::kernels {

void embedding(const Tensor& table, const int32_t* ids, int64_t n, float* out) {
  const int64_t d = table.dim(1);
  const size_t es = dtype_size(table.dtype());
  const char* base = static_cast<const char*>(table.raw());
  for (int64_t i = 0; i < n; ++i)
    convert_to_f32(table.dtype(), base + static_cast<size_t>(ids[i]) * static_cast<size_t>(d) * es, out + i * d, d);
}

}  // namespace cepe::kernels
