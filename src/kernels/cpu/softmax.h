#pragma once
#include <cstdint>

namespace cepe::kernels {

// In-place softmax of each row of x: [rows, n].
void softmax_rows(float* x, int64_t rows, int64_t n);
// out[r, :] = log_softmax(x[r, :]) (may alias).
void log_softmax_rows(const float* x, int64_t rows, int64_t n, float* out);

}  // namespace cepe::kernels
