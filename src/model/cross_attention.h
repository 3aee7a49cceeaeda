#pragma once
// The decoder's cross-attention over the encoder states Φ, in the strategies of CrossAttnMode
// (include/cepe/model.h). Every strategy computes o_proj(softmax(q·kᵀ/√hd + mask)·v) of the reference.
#include <cstdint>
#include <vector>

#include "cepe/config.h"
#include "cepe/model.h"
#include "cepe/tensor.h"
#include "model/weights.h"

namespace cepe {

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

// What the backward of a cross-attention layer needs (F32).
struct CrossActivations {
  Tensor rstd, normed;  // RMSNorm_ca of the layer input: [BT], [BT, d]
  Tensor q;             // [BT, H*hd]
  Tensor k, v;          // projected from Φ: [B*K, Hkv*hd]
  Tensor attn, lse;     // attention output [BT, H*hd], log-sum-exp [B, H, T]
  Tensor probs;         // softmax weights [B, H, T, K] when small enough (else the backward recomputes them)
};

// Training forward of one layer's cross-attention: h [B*T, hidden] += CrossAttn(RMSNorm_ca(h), Φ), with Φ
// F32 [B, K, enc_hidden] and its mask [B, K]; K/V are projected whole (their gradients need them) and the
// attention runs in kernels::attention, keeping `saved`.
void cross_attention_train(const LlamaConfig& cfg, const CrossAttentionWeights& w, const Tensor& phi,
                           const uint8_t* mask, int64_t batch, int64_t len, float* h, CrossActivations& saved);

// Its backward: `input` is h before the residual (as given to the forward), `dh` the gradient of h after it;
// adds the branch's gradient to dh (the residual passes dh through unchanged). `dw` (F32, defined tensors
// only) receives weight gradients, `dphi` [B, K, enc_hidden] the gradient of Φ; either may be null.
void cross_attention_backward(const LlamaConfig& cfg, const CrossAttentionWeights& w, const Tensor& phi,
                              const uint8_t* mask, int64_t batch, int64_t len, const float* input,
                              const CrossActivations& saved, float* dh, CrossAttentionWeights* dw, float* dphi);

// The strategy Auto picks for `len` query tokens (see include/cepe/model.h).
CrossAttnMode resolve_cross_attn(CrossAttnMode requested, const LlamaConfig& dec, int64_t enc_hidden, int64_t len,
                                 bool kv_cached, size_t kv_bytes, size_t kv_budget);

}  // namespace cepe
