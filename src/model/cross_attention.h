#pragma once
// The decoder's cross-attention over the encoder states Φ, in the strategies of CrossAttnMode
// (include/cepe/model.h). Every strategy computes o_proj(softmax(q·kᵀ/√hd + mask)·v) of the reference.
#include <cstdint>
#include <vector>

#include "cepe/config.h"
#include "cepe/model.h"
#include "cepe/tensor.h"

namespace cepe {

struct CrossAttentionWeights {
  Tensor norm;        // f32 [hidden]
  Tensor q, k, v, o;  // q: [H*hd, hidden], k/v: [Hkv*hd, enc_hidden], o: [hidden, H*hd]
};

// What the cross-attention layers read.
struct CrossInput {
  std::vector<const Tensor*> states;  // per decoder layer: Φ [B, K, enc_hidden] (F32/BF16), null = no cross-attn
  const uint8_t* mask = nullptr;      // [B, K]
  int64_t keys = 0;
  CrossAttnMode mode = CrossAttnMode::Recompute;  // resolved: never Auto
  std::vector<Tensor>* kv_k = nullptr;  // per-layer K/V for Cached, filled on first use
  std::vector<Tensor>* kv_v = nullptr;
  CrossAttnStats* stats = nullptr;
};

// h[B*T, hidden] += CrossAttn(RMSNorm_ca(h), Φ) for decoder layer `layer`.
void cross_attention(const LlamaConfig& cfg, const CrossAttentionWeights& w, size_t layer, const CrossInput& in,
                     int64_t batch, int64_t len, float* h);

// The strategy Auto picks for `len` query tokens (see include/cepe/model.h).
CrossAttnMode resolve_cross_attn(CrossAttnMode requested, const LlamaConfig& dec, int64_t enc_hidden, int64_t len,
                                 bool kv_cached, size_t kv_bytes, size_t kv_budget);

}  // namespace cepe
