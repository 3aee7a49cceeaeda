#pragma once
// One LLaMA trunk (embeddings, layers, final norm), used as the CEPE decoder (causal, with cross-attention
// in its last layers), as the encoder (bidirectional, no cross-attention) and as the MLM trunk. One
// definition of the math: inference runs trunk_forward; training runs the same with `saved` set, then
// trunk_backward.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cepe/config.h"
#include "cepe/kv_cache.h"
#include "cepe/tensor.h"
#include "model/cross_attention.h"
#include "model/weights.h"

namespace cepe {

// What the backward of one layer needs (all F32, [B*T, ...] unless noted).
struct LayerActivations {
  Tensor input;                     // the layer's input h [BT, d]
  Tensor input_rstd, input_normed;  // RMSNorm_in: 1/rms [BT], its output [BT, d]
  Tensor q, k, v;                   // projections, q/k after RoPE
  Tensor attn, attn_lse;            // attention output [BT, qd], log-sum-exp [B, H, T]
  Tensor attn_probs;                // softmax weights [B, H, T, T] when small enough (else the backward recomputes)
  Tensor after_attn;                // h after the self-attention residual (the cross-attention's input)
  CrossActivations cross;           // cross-attention layers
  Tensor before_mlp;                // h before the MLP (after the cross-attention residual)
  Tensor mlp_rstd, mlp_normed;      // RMSNorm_post
  Tensor gate, up, act;             // gate/up projections [BT, ff], silu(gate)·up
};

struct TrunkActivations {
  std::vector<LayerActivations> layers;
  Tensor last;       // h before the final norm [BT, d]
  Tensor last_rstd;  // [BT]
};

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
  // Training: keeps what trunk_backward needs (no cache; cross-attention projects K/V and keeps them).
  TrunkActivations* saved = nullptr;
  // With `saved`: keep only each layer's input; trunk_backward recomputes the layer's activations from it
  // (the same kernels on the same input, so the same values) just before that layer's backward.
  bool recompute = false;
};

// Returns the final-normed hidden states [B*T, hidden].
Tensor trunk_forward(const LlamaConfig& cfg, const TrunkWeights& w, const TrunkCall& call);

// Where trunk_backward puts gradients: `weights` has F32 tensors (zeroed or holding earlier sums, added to)
// exactly for the trainable weights, undefined ones for frozen weights (no weight gradient is computed).
struct TrunkGradients {
  TrunkWeights* weights = nullptr;
  // Per decoder layer, the gradient of the Φ it read ([B, K, enc_hidden], added to), or null when Φ is not
  // trained; empty = none.
  std::vector<Tensor*> cross_states;
  // Extra gradients at the hidden-state entries of `all_hidden` (layers + 1, null entries = none): how the
  // encoder receives the decoder's gradients with num_cross_attn_hidden_states > 1.
  std::vector<const Tensor*> hidden_entries;
};

// Backward of trunk_forward(call) with call.saved filled: `d_out` is the gradient of the final normed
// output [BT, d] (consumed). Stops below the lowest layer that has anything to train.
void trunk_backward(const LlamaConfig& cfg, const TrunkWeights& w, const TrunkCall& call, Tensor d_out,
                    const TrunkGradients& grads);

}  // namespace cepe
