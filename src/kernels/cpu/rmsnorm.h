#pragma once
#include <cstdint>

namespace cepe::kernels {

// y[r, :] = w * (x[r, :] / sqrt(mean(x[r, :]^2) + eps)); x, y: [rows, d] (may alias), w: [d].
// The mean is accumulated in double so the result is the fp32 rounding of the exact value, as the
// reference computes it in fp32 before the weight multiply.
void rmsnorm(const float* x, const float* w, int64_t rows, int64_t d, float eps, float* y);

}  // namespace cepe::kernels
