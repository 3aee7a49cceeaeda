#include "kernels/cpu/copy.h"

#include <algorithm>

namespace cepe::kernels {

template <class T>
void copy_rows_strided(const T* src, int64_t rows, int64_t n, T* dst, int64_t dst_stride) {
  for (int64_t r = 0; r < rows; ++r) std::copy(src + r * n, src + (r + 1) * n, dst + r * dst_stride);
}

template void copy_rows_strided<float>(const float*, int64_t, int64_t, float*, int64_t);
template void copy_rows_strided<uint8_t>(const uint8_t*, int64_t, int64_t, uint8_t*, int64_t);
template void copy_rows_strided<int32_t>(const int32_t*, int64_t, int64_t, int32_t*, int64_t);

}  // namespace cepe::kernels
