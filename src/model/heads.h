#pragma once
// The output heads over the trunk's final normed states: lm_head (CEPE, LlamaForCausalLM) or LlamaForMLM's
// dense → SiLU → RMSNorm → tied embedding + bias. Forward and backward side by side.
#include <cstdint>

#include "cepe/config.h"
#include "cepe/tensor.h"
#include "model/weights.h"

namespace cepe {

struct HeadActivations {
  Tensor dense, act, rstd, normed;  // MLM head only: lm_dense output, its SiLU, lm_layer_norm's 1/rms and output
};

// logits [rows, V] of hidden states h [rows, d]; `saved` keeps what head_backward needs.
void head_forward(const CepeConfig& cfg, const ModelWeights& w, const float* h, int64_t rows, float* logits,
                  HeadActivations* saved = nullptr);

// dh [rows, d] (overwritten) from dlogits; weight gradients go to the defined tensors of `g`.
void head_backward(const CepeConfig& cfg, const ModelWeights& w, const float* h, int64_t rows,
                   const HeadActivations& saved, const float* dlogits, float* dh, ModelWeights& g);

}  // namespace cepe
