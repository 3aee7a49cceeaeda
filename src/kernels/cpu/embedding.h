#pragma once
#include <cstdint>

#include "cepe/tensor.h"

namespace cepe::kernels {

// out[i, :] = table[ids[i], :] widened to f32; table: [V, d] f32/bf16/f16. Ids are validated by the caller.
void embedding(const Tensor& table, const int32_t* ids, int64_t n, float* out);

}  // namespace cepe::kernels
