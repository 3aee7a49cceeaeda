#pragma once
// Scaled dot-product attention over strided Q/K/V rows, with GQA, a causal option and a key padding mask.
#include <cstdint>

namespace cepe::kernels {

struct AttentionArgs {
  // q/out row (b, t) starts at q + (b*T + t) * q_stride; head h at + h*head_dim.
  const float* q = nullptr;
  float* out = nullptr;
  int64_t q_stride = 0, out_stride = 0;
  // k/v row (b, j) starts at k + b * kv_batch_stride + j * kv_stride; KV head g at + g*head_dim.
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t kv_stride = 0, kv_batch_stride = 0;
  int64_t batch = 0, q_len = 0, kv_len = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  // key_mask[b * mask_batch_stride + j] != 0 means key j may be attended; null means all keys.
  const uint8_t* key_mask = nullptr;
  int64_t mask_batch_stride = 0;
  // Causal: query t sits at key index causal_offset + t and sees keys up to it.
  bool causal = false;
  int64_t causal_offset = 0;
  float scale = 1.0f;
};

// Softmax over the allowed keys (causal range ∩ mask). A query with no allowed key (a padded position)
// gets what the reference's additive finfo.min masks give it: the uniform average of V over the keys masked
// exactly once — its padded causal range and the real keys after it (all keys when not causal).
void attention(const AttentionArgs& a);

}  // namespace cepe::kernels
