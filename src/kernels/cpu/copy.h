#pragma once
// Data movement between layouts (appending to a strided cache, gathering and scattering chunk rows).
#include <cstdint>

namespace cepe::kernels {

// dst[r * dst_stride + i] = src[r * n + i] for r < rows, i < n.
template <class T>
void copy_rows_strided(const T* src, int64_t rows, int64_t n, T* dst, int64_t dst_stride);

}  // namespace cepe::kernels
