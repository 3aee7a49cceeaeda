#pragma once
#include <cstdint>

#include "cepe/tensor.h"

namespace cepe::kernels {

// out[i, :] = table[ids[i], :] widened to f32; table: [V, d] f32/bf16/f16. Ids are validated by the caller.
void embedding(const Tensor& table, const int32_t* ids, int64_t n, float* out);
// The same over a dense table (the f64 build is what the finite-difference tests check).
template <class T>
void embedding(const T* table, int64_t d, const int32_t* ids, int64_t n, T* out);
// Backward: dtable[ids[i], :] += dout[i, :] (rows of repeated ids add up, in index order), except for
// `padding_idx`, whose row gets no gradient from lookups (nn.Embedding's padding_idx; -1: none).
template <class T>
void embedding_backward(const T* dout, const int32_t* ids, int64_t n, int64_t d, T* dtable, int64_t padding_idx = -1);

}  // namespace cepe::kernels
