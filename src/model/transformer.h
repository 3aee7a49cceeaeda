#pragma once
// One LLaMA trunk (embeddings, layers, final norm), used as the CEPE decoder (causal, with cross-attention
// in its last layers) and as the encoder (bidirectional, no cross-attention). One definition of the math.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cepe/config.h"
#include "cepe/tensor.h"
#include "cepe/kv_cache.h"
#include "model/cross_attention.h"
#include "model/weight_store.h"

namespace cepe {

struct AttentionWeights {
  Tensor q, k, v, o;  // [out, in]
};

struct LayerWeights {
  Tensor input_norm, post_norm;  // f32 [hidden]
  AttentionWeights self_attn;
  std::optional<CrossAttentionWeights> cross;
  Tensor gate, up, down;
};

struct TrunkWeights {
  Tensor embed;  // [V, hidden]
  std::vector<LayerWeights> layers;
  Tensor norm;   // f32 [hidden]
};

// Loads `prefix` + "embed_tokens.weight", "layers.{i}.*", "norm.weight". Layers listed in `cross_layers`
// also get their cross-attention (k/v in-features = enc_hidden).
TrunkWeights load_trunk(const WeightStore& ws, const std::string& prefix, const LlamaConfig& cfg,
                        const std::vector<bool>& cross_layers, int64_t enc_hidden);

struct TrunkCall {
  const int32_t* ids = nullptr;  // [B, T]
  int64_t batch = 0, len = 0;
  const int64_t* positions = nullptr;  // [B, T]
  const uint8_t* key_mask = nullptr;   // [B, past + T], 1 = attend; null = all
  int64_t key_mask_stride = 0;         // row stride of key_mask; 0 = past + T
  bool causal = true;
  KVCache* cache = nullptr;            // null: no past
  const CrossInput* cross = nullptr;
  // When set, receives the hidden states in the HF `output_hidden_states` order: the input of every
  // layer, then the final normed output (layers + 1 entries, each [B*T, hidden]).
  std::vector<Tensor>* all_hidden = nullptr;
};

// Returns the final-normed hidden states [B*T, hidden].
Tensor trunk_forward(const LlamaConfig& cfg, const TrunkWeights& w, const TrunkCall& call);

}  // namespace cepe
