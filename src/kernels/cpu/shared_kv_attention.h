#pragma once
// Attention whose keys are also its values: out[r] = Σ_j softmax_j(q_r · s_j) · s_j over the rows s_j of
// S [N, D], stored in f32, bf16 or f16. This is CEPE's absorbed cross-attention in decode (design.md §1):
// the queries are folded into encoder space (q' = W_kᵀ q · 1/√hd, by the caller), the rows are the encoder
// states Φ shared by all heads, and W_v is applied to the result afterwards.
//
// One pass over S. Each thread takes a contiguous range of keys and walks it in blocks that are widened
// once to f32 and stay in L2; per block, two register-tiled products (all rows' scores, then the weighted
// sum) with an online softmax between them. The threads' partial results (running max, normaliser,
// unnormalised sum) are merged at the end, as in flash-decoding. Numerics are fp32 throughout; half states
// are widened exactly. For a given isa and thread count the result is the same run to run.
#include <cstdint>

#include "cepe/tensor.h"
#include "kernels/cpu/gemv_half.h"

namespace cepe::kernels {

// q: [M, D] f32 (scale already applied), s: [N, D] dense in `dt`, mask: N bytes (null = every key is real),
// out: [M, D] f32. Requires M, N, D >= 1; if every key is masked, out is zeros (callers handle that case,
// which the reference defines differently).
void shared_kv_attention(const float* q, int64_t M, int64_t D, const void* s, DType dt, int64_t N,
                         const uint8_t* mask, float* out);

// The absorbed form's query fold: out[h*tokens + t, :] = scale · Σ_i q[t, h*hd + i] · W_k[g*hd + i, :] with
// g = h / (Hq/Hkv), i.e. each head's query mapped into encoder space through its KV group's rows of W_k
// ([Hkv*hd, de], f32/bf16/f16, streamed row by row). q: `tokens` rows of stride q_stride; out: [Hq*tokens, de].
void fold_queries(const float* q, int64_t q_stride, int64_t tokens, int64_t Hq, int64_t Hkv, int64_t hd,
                  const Tensor& Wk, float scale, float* out);

namespace detail {
// The same, pinned to an instruction set: Avx512 and Avx2 run tiled kernels of that instruction set, Generic
// the portable C++ ones (tests and benchmarks compare them).
void shared_kv_attention(const float* q, int64_t M, int64_t D, const void* s, DType dt, int64_t N,
                         const uint8_t* mask, float* out, GemvIsa isa);
}  // namespace detail

}  // namespace cepe::kernels
