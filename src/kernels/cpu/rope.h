#pragma once
// Rotary position embedding in the LLaMA "rotate half" layout: pairs (x[j], x[j + d/2]).
#include <cstdint>
#include <vector>

#include "cepe/config.h"

namespace cepe::kernels {

// Inverse frequencies and position scale for one attention call, following the reference's rotary classes:
// plain (1/theta^(2i/d)), linear (positions divided by factor), dynamic NTK (theta rescaled once the
// sequence seen so far, `seq_len`, exceeds max_position_embeddings).
struct Rope {
  std::vector<float> inv_freq;  // [d/2]
  float position_divisor = 1.0f;

  static Rope make(const LlamaConfig& cfg, int64_t seq_len);
};

// x: [rows, heads, d] with row stride `row_stride` elements; pos: [rows]. Rotates in place. The rotation is
// orthogonal, so its backward is the inverse rotation (`inverse`), applied to the gradient.
template <class T>
void apply_rope(T* x, int64_t rows, int64_t heads, int64_t d, int64_t row_stride, const int64_t* pos, const Rope& rope,
                bool inverse = false);
template <class T>
void apply_rope_backward(T* dx, int64_t rows, int64_t heads, int64_t d, int64_t row_stride, const int64_t* pos,
                         const Rope& rope) {
  apply_rope(dx, rows, heads, d, row_stride, pos, rope, true);
}

}  // namespace cepe::kernels
