#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/softmax.h"

namespace cepe::kernels {

namespace {

constexpr int64_t kQueryBlock = 64;

// Keys query row t (0-based in the call) may see: the causal limit (all keys when not causal).
template <class T>
int64_t key_limit(const AttentionArgsT<T>& a, int64_t t) {
  return a.causal ? std::min(a.kv_len, a.causal_offset + t + 1) : a.kv_len;
}

template <class T>
bool has_allowed_key(const uint8_t* mask, int64_t limit) {
  if (!mask) return limit > 0;
  for (int64_t j = 0; j < limit; ++j)
    if (mask[j]) return true;
  return false;
}

// The keys a query with no allowed key averages over (see attention.h): the reference adds finfo.min for the
// padding mask and for the causal mask, so a key masked by both sums to -inf while a key masked by exactly
// one stays at finfo.min. Calls f(j) for each, returns their count.
template <class F>
int64_t for_each_masked_once(int64_t kv_len, const uint8_t* mask, int64_t limit, F f) {
  int64_t count = 0;
  for (int64_t j = 0; j < kv_len; ++j) {
    const bool valid = !mask || mask[j];
    if ((j < limit) == valid) continue;  // allowed (impossible here) or masked twice
    f(j);
    ++count;
  }
  return count;
}

template <class T>
void fully_masked_row(const AttentionArgsT<T>& a, const T* v, const uint8_t* mask, int64_t limit, T* out) {
  std::fill(out, out + a.head_dim, T(0));
  const int64_t count = for_each_masked_once(a.kv_len, mask, limit, [&](int64_t j) {
    const T* vr = v + j * a.kv_stride;
    for (int64_t i = 0; i < a.head_dim; ++i) out[i] += vr[i];
  });
  if (count == 0) return;
  const T inv = T(1) / static_cast<T>(count);
  for (int64_t i = 0; i < a.head_dim; ++i) out[i] *= inv;
}

}  // namespace

bool keep_attention_probs(int64_t batch, int64_t q_heads, int64_t q_len, int64_t kv_len) {
  return static_cast<double>(batch) * static_cast<double>(q_heads) * static_cast<double>(q_len) *
             static_cast<double>(kv_len) * 4.0 <= 32.0 * 1024 * 1024;
}

AttentionArgs heads_layout(int64_t q_heads, int64_t kv_heads, int64_t head_dim, const float* q, float* out,
                           int64_t batch, int64_t q_len, const float* k, const float* v, int64_t kv_len) {
  AttentionArgs a;
  a.q = q;
  a.out = out;
  a.q_stride = a.out_stride = q_heads * head_dim;
  a.k = k;
  a.v = v;
  a.kv_stride = kv_heads * head_dim;
  a.kv_batch_stride = kv_len * a.kv_stride;
  a.batch = batch;
  a.q_len = q_len;
  a.kv_len = kv_len;
  a.q_heads = q_heads;
  a.kv_heads = kv_heads;
  a.head_dim = head_dim;
  a.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  return a;
}

template <class T>
void attention(const AttentionArgsT<T>& a) {
  const int64_t group = a.q_heads / a.kv_heads;
  const int64_t q_blocks = (a.q_len + kQueryBlock - 1) / kQueryBlock;
  const int64_t work = a.batch * a.q_heads * q_blocks;
  // Small problems (a decode step of a tiny model) cost less than waking the thread team.
  const bool parallel = work > 1 && work * a.kv_len * a.head_dim > (1 << 16);
#pragma omp parallel if (parallel)
  {
    std::vector<T> scores;
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
      T* lse = a.lse ? a.lse + (b * a.q_heads + h) * a.q_len + t0 : nullptr;
      if (n <= 0) {
        if (lse) std::fill(lse, lse + rows, std::numeric_limits<T>::quiet_NaN());
        continue;
      }
      scores.resize(static_cast<size_t>(rows * n));
      const T* q = a.q + (b * a.q_len + t0) * a.q_stride + h * a.head_dim;
      const T* k = a.k + b * a.kv_batch_stride + g * a.head_dim;
      const T* v = a.v + b * a.kv_batch_stride + g * a.head_dim;
      T* out = a.out + (b * a.q_len + t0) * a.out_stride + h * a.head_dim;
      const bool one_row = rows == 1;  // decode: GEMV, which streams K/V without packing them
      if (one_row)
        gemv(false, n, a.head_dim, a.scale, k, a.kv_stride, q, scores.data());
      else
        gemm(false, true, rows, n, a.head_dim, a.scale, q, a.q_stride, k, a.kv_stride, T(0), scores.data(), n);
      const uint8_t* mask = a.key_mask ? a.key_mask + b * a.mask_batch_stride : nullptr;
      bool any_fully_masked = false;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t limit = std::min(n, key_limit(a, t0 + r));
        const bool ok = masked_softmax_row(scores.data() + r * n, limit, n, mask, lse ? lse + r : nullptr);
        if (!ok && lse) lse[r] = std::numeric_limits<T>::quiet_NaN();
        any_fully_masked |= !ok;
      }
      if (a.probs) {
        T* kept = a.probs + ((b * a.q_heads + h) * a.q_len + t0) * a.kv_len;
        for (int64_t r = 0; r < rows; ++r) std::copy(scores.data() + r * n, scores.data() + (r + 1) * n, kept + r * a.kv_len);
      }
      if (one_row)
        gemv(true, n, a.head_dim, T(1), v, a.kv_stride, scores.data(), out);
      else
        gemm(false, false, rows, a.head_dim, n, T(1), scores.data(), n, v, a.kv_stride, T(0), out, a.out_stride);
      if (any_fully_masked) {
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t limit = key_limit(a, t0 + r);
          if (!has_allowed_key<T>(mask, limit)) fully_masked_row(a, v, mask, limit, out + r * a.out_stride);
        }
      }
    }
  }
}

template <class T>
void attention_backward(const AttentionArgsT<T>& a, const T* dout, int64_t dout_stride, T* dq, T* dk, T* dv) {
  const int64_t group = a.q_heads / a.kv_heads;
  // The heads of one KV group write the same dK/dV rows: a task is one (batch row, KV group), its heads and
  // query blocks in order, so the sums are race-free and deterministic.
  const int64_t work = a.batch * a.kv_heads;
  const bool parallel = work > 1 && work * a.q_len * a.kv_len * a.head_dim > (1 << 16);
#pragma omp parallel if (parallel)
  {
    std::vector<T> p, dp, rowdot;
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < work; ++w) {
      const int64_t b = w / a.kv_heads, g = w % a.kv_heads;
      const T* k = a.k + b * a.kv_batch_stride + g * a.head_dim;
      const T* v = a.v + b * a.kv_batch_stride + g * a.head_dim;
      T* dkb = dk + b * a.kv_batch_stride + g * a.head_dim;
      T* dvb = dv + b * a.kv_batch_stride + g * a.head_dim;
      const uint8_t* mask = a.key_mask ? a.key_mask + b * a.mask_batch_stride : nullptr;
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        for (int64_t t0 = 0; t0 < a.q_len; t0 += kQueryBlock) {
          const int64_t t1 = std::min(a.q_len, t0 + kQueryBlock), rows = t1 - t0;
          const int64_t n = a.causal ? std::min(a.kv_len, a.causal_offset + t1) : a.kv_len;
          if (n <= 0) continue;
          const T* q = a.q + (b * a.q_len + t0) * a.q_stride + h * a.head_dim;
          const T* o = a.out + (b * a.q_len + t0) * a.out_stride + h * a.head_dim;
          const T* go = dout + (b * a.q_len + t0) * dout_stride + h * a.head_dim;
          T* gq = dq + (b * a.q_len + t0) * a.q_stride + h * a.head_dim;
          const T* lse = a.lse + (b * a.q_heads + h) * a.q_len + t0;
          dp.resize(static_cast<size_t>(rows * n));
          rowdot.resize(static_cast<size_t>(rows));
          // P = exp(scale·QKᵀ − lse) over the allowed keys (or the forward's, kept); dP = dO·Vᵀ; D = rowsum(dO ∘ O).
          T* P = nullptr;
          int64_t ldp = n;
          if (a.probs) {
            P = a.probs + ((b * a.q_heads + h) * a.q_len + t0) * a.kv_len;
            ldp = a.kv_len;
          } else {
            p.resize(static_cast<size_t>(rows * n));
            P = p.data();
            gemm(false, true, rows, n, a.head_dim, a.scale, q, a.q_stride, k, a.kv_stride, T(0), P, n);
          }
          gemm(false, true, rows, n, a.head_dim, T(1), go, dout_stride, v, a.kv_stride, T(0), dp.data(), n);
          for (int64_t r = 0; r < rows; ++r) {
            T* pr = P + r * ldp;
            T* dr = dp.data() + r * n;
            const int64_t limit = std::min(n, key_limit(a, t0 + r));
            if (std::isnan(lse[r])) {
              // No allowed key: out = mean of V over the keys masked exactly once, independent of Q and K.
              std::fill(pr, pr + n, T(0));
              std::fill(dr, dr + n, T(0));
              const T* gor = go + r * dout_stride;
              const int64_t full = key_limit(a, t0 + r);
              std::vector<int64_t> keys;
              const int64_t count = for_each_masked_once(a.kv_len, mask, full, [&](int64_t j) { keys.push_back(j); });
              for (int64_t j : keys) {
                T* dvr = dvb + j * a.kv_stride;
                for (int64_t i = 0; i < a.head_dim; ++i) dvr[i] += gor[i] / static_cast<T>(count);
              }
              continue;
            }
            double dot = 0.0;
            for (int64_t i = 0; i < a.head_dim; ++i)
              dot += static_cast<double>(go[r * dout_stride + i]) * o[r * a.out_stride + i];
            const T D = static_cast<T>(dot);
            if (!a.probs) {  // recompute the weights: exp(score - lse) over the allowed keys, 0 elsewhere
              const T neg_inf = -std::numeric_limits<T>::infinity();
              if (mask)
                for (int64_t j = 0; j < limit; ++j)
                  if (!mask[j]) pr[j] = neg_inf;
              std::fill(pr + limit, pr + n, neg_inf);
              shifted_exp(pr, n, lse[r]);
            }
            for (int64_t j = 0; j < n; ++j) dr[j] = pr[j] * (dr[j] - D);  // dS (before the scale)
          }
          // dV += Pᵀ·dO; dQ += scale·dS·K; dK += scale·dSᵀ·Q.
          gemm(true, false, n, a.head_dim, rows, T(1), P, ldp, go, dout_stride, T(1), dvb, a.kv_stride);
          gemm(false, false, rows, a.head_dim, n, a.scale, dp.data(), n, k, a.kv_stride, T(1), gq, a.q_stride);
          gemm(true, false, n, a.head_dim, rows, a.scale, dp.data(), n, q, a.q_stride, T(1), dkb, a.kv_stride);
        }
      }
    }
  }
}

template void attention<float>(const AttentionArgsT<float>&);
template void attention<double>(const AttentionArgsT<double>&);
template void attention_backward<float>(const AttentionArgsT<float>&, const float*, int64_t, float*, float*, float*);
template void attention_backward<double>(const AttentionArgsT<double>&, const double*, int64_t, double*, double*,
                                         double*);

}  // namespace cepe::kernels
