#pragma once
// Scaled dot-product attention over strided Q/K/V rows, with GQA, a causal option and a key padding mask;
// forward and backward side by side (the backward recomputes the scores from Q, K and the saved log-sum-exp, or
// reads the weights the forward kept).
#include <cstdint>

namespace cepe::kernels {

template <class T>
struct AttentionArgsT {
  // q/out row (b, t) starts at q + (b*T + t) * q_stride; head h at + h*head_dim.
  const T* q = nullptr;
  T* out = nullptr;
  int64_t q_stride = 0, out_stride = 0;
  // k/v row (b, j) starts at k + b * kv_batch_stride + j * kv_stride; KV head g at + g*head_dim.
  const T* k = nullptr;
  const T* v = nullptr;
  int64_t kv_stride = 0, kv_batch_stride = 0;
  int64_t batch = 0, q_len = 0, kv_len = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  // key_mask[b * mask_batch_stride + j] != 0 means key j may be attended; null means all keys.
  const uint8_t* key_mask = nullptr;
  int64_t mask_batch_stride = 0;
  // Causal: query t sits at key index causal_offset + t and sees keys up to it.
  bool causal = false;
  int64_t causal_offset = 0;
  T scale = 1;
  // Optional output [batch, q_heads, q_len]: each row's log-sum-exp of the scaled scores, which is all the
  // backward needs besides Q, K, V and the output (NaN for a row with no allowed key).
  T* lse = nullptr;
  // Optional output [batch, q_heads, q_len, kv_len] (with lse): the softmax weights of the forward, which the
  // backward then reads instead of recomputing scale·QKᵀ and its exp (one product of seven fewer). 4·B·H·T·N
  // bytes: worth it at training lengths, not at long ones (keep_attention_probs says when).
  T* probs = nullptr;
};

// Whether a training forward should keep the softmax weights of an attention of this shape (<= 32 MiB).
bool keep_attention_probs(int64_t batch, int64_t q_heads, int64_t q_len, int64_t kv_len);
using AttentionArgs = AttentionArgsT<float>;

// The layout of one call over a model's heads: queries/outputs [batch·q_len, Hq·hd], keys/values
// [batch·kv_len, Hkv·hd] (row stride Hkv·hd, batch stride kv_len rows), scale 1/√hd, no mask, not causal.
AttentionArgs heads_layout(int64_t q_heads, int64_t kv_heads, int64_t head_dim, const float* q, float* out,
                           int64_t batch, int64_t q_len, const float* k, const float* v, int64_t kv_len);

// Softmax over the allowed keys (causal range ∩ mask). A query with no allowed key (a padded position)
// gets what the reference's additive finfo.min masks give it: the uniform average of V over the keys masked
// exactly once — its padded causal range and the real keys after it (all keys when not causal).
template <class T>
void attention(const AttentionArgsT<T>& a);

// Gradients of attention(a) given dout (laid out like out, row stride dout_stride), a.out and a.lse from the
// forward: dq (laid out like q) and dk/dv (laid out like k/v) are accumulated into (the caller zeroes them).
// The uniform average of a query with no allowed key passes its gradient to those keys' values only.
template <class T>
void attention_backward(const AttentionArgsT<T>& a, const T* dout, int64_t dout_stride, T* dq, T* dk, T* dv);

}  // namespace cepe::kernels
