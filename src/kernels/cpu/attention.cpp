#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/gemm.h"

namespace cepe::kernels {

namespace {

constexpr int64_t kQueryBlock = 64;

// Turns one row of raw scores into softmax weights over the allowed keys (those before `limit` with a set
// mask bit). Returns false, with zero weights, when no key is allowed.
bool masked_softmax_row(float* s, int64_t limit, int64_t n, const uint8_t* mask) {
  float m = -std::numeric_limits<float>::infinity();
  bool any = false;
  for (int64_t j = 0; j < limit; ++j) {
    if (mask && !mask[j]) continue;
    any = true;
    m = std::max(m, s[j]);
  }
  if (!any) {
    std::fill(s, s + n, 0.0f);
    return false;
  }
  double sum = 0.0;
  for (int64_t j = 0; j < limit; ++j) {
    if (mask && !mask[j]) { s[j] = 0.0f; continue; }
    s[j] = std::exp(s[j] - m);
    sum += s[j];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t j = 0; j < limit; ++j) s[j] *= inv;
  for (int64_t j = limit; j < n; ++j) s[j] = 0.0f;
  return true;
}

// A query with no allowed key. The reference adds finfo.min for the padding mask and for the causal mask,
// so a key masked by both sums to -inf while a key masked by exactly one stays at finfo.min: the row
// averages V uniformly over the keys masked exactly once (its padded causal range plus the real keys after
// it; all keys when not causal).
void fully_masked_row(const AttentionArgs& a, const float* v, const uint8_t* mask, int64_t limit, float* out) {
  std::fill(out, out + a.head_dim, 0.0f);
  int64_t count = 0;
  for (int64_t j = 0; j < a.kv_len; ++j) {
    const bool valid = !mask || mask[j];
    if ((j < limit) == valid) continue;  // allowed (impossible here) or masked twice
    const float* vr = v + j * a.kv_stride;
    for (int64_t i = 0; i < a.head_dim; ++i) out[i] += vr[i];
    ++count;
  }
  if (count == 0) return;
  const float inv = 1.0f / static_cast<float>(count);
  for (int64_t i = 0; i < a.head_dim; ++i) out[i] *= inv;
}

}  // namespace

void attention(const AttentionArgs& a) {
  const int64_t group = a.q_heads / a.kv_heads;
  const int64_t q_blocks = (a.q_len + kQueryBlock - 1) / kQueryBlock;
  const int64_t work = a.batch * a.q_heads * q_blocks;
  // Small problems (a decode step of a tiny model) cost less than waking the thread team.
  const bool parallel = work > 1 && work * a.kv_len * a.head_dim > (1 << 16);
#pragma omp parallel if (parallel)
  {
    std::vector<float> scores;
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < work; ++w) {
      const int64_t qb = w % q_blocks;
      const int64_t h = (w / q_blocks) % a.q_heads;
      const int64_t b = w / (q_blocks * a.q_heads);
      const int64_t g = h / group;
      const int64_t t0 = qb * kQueryBlock, t1 = std::min(a.q_len, t0 + kQueryBlock);
      const int64_t rows = t1 - t0;
      // Keys beyond the last query's causal limit are never needed.
      const int64_t n = a.causal ? std::min(a.kv_len, a.causal_offset + t1) : a.kv_len;
      if (n <= 0) continue;
      scores.resize(static_cast<size_t>(rows * n));
      const float* q = a.q + (b * a.q_len + t0) * a.q_stride + h * a.head_dim;
      const float* k = a.k + b * a.kv_batch_stride + g * a.head_dim;
      const float* v = a.v + b * a.kv_batch_stride + g * a.head_dim;
      float* out = a.out + (b * a.q_len + t0) * a.out_stride + h * a.head_dim;
      const bool one_row = rows == 1;  // decode: GEMV, which streams K/V without packing them
      if (one_row)
        gemv(false, n, a.head_dim, a.scale, k, a.kv_stride, q, scores.data());
      else
        gemm(false, true, rows, n, a.head_dim, a.scale, q, a.q_stride, k, a.kv_stride, 0.0f, scores.data(), n);
      const uint8_t* mask = a.key_mask ? a.key_mask + b * a.mask_batch_stride : nullptr;
      bool any_fully_masked = false;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t limit = a.causal ? std::min(n, a.causal_offset + t0 + r + 1) : n;
        any_fully_masked |= !masked_softmax_row(scores.data() + r * n, limit, n, mask);
      }
      if (one_row)
        gemv(true, n, a.head_dim, 1.0f, v, a.kv_stride, scores.data(), out);
      else
        gemm(false, false, rows, a.head_dim, n, 1.0f, scores.data(), n, v, a.kv_stride, 0.0f, out, a.out_stride);
      if (any_fully_masked) {
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t limit = a.causal ? std::min(a.kv_len, a.causal_offset + t0 + r + 1) : a.kv_len;
          bool any = false;
          for (int64_t j = 0; j < limit && !any; ++j) any = !mask || mask[j];
          if (!any) fully_masked_row(a, v, mask, limit, out + r * a.out_stride);
        }
      }
    }
  }
}

}  // namespace cepe::kernels
