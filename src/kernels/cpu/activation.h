#pragma once
#include <cstdint>

namespace cepe::kernels {

// gate[i] = silu(gate[i]) * up[i]  (the SwiGLU of the LLaMA MLP), n elements, in place in `gate`.
void swiglu(float* gate, const float* up, int64_t n);

}  // namespace cepe::kernels
