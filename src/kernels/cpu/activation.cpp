#include "kernels/cpu/activation.h"

#include <cmath>

namespace cepe::kernels {

void swiglu(float* gate, const float* up, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace cepe::kernels
