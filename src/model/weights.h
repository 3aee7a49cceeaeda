#pragma once
// The weights of a model and the one table of its tensors. Loading, random init, checkpoint writing,
// gradients and optimizer state all walk `model_tensors()`: a tensor is named, shaped and classified once.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cepe/config.h"
#include "cepe/tensor.h"

namespace cepe {

struct AttentionWeights {
  Tensor q, k, v, o;  // [out, in]
};

struct CrossAttentionWeights {
  Tensor norm;        // f32 [hidden]
  Tensor q, k, v, o;  // q: [H*hd, hidden], k/v: [Hkv*hd, enc_hidden], o: [hidden, H*hd]
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

// LlamaForMLM's head (spec §3.2): lm_dense (with bias) → SiLU → lm_layer_norm → lm_head (the embedding when
// tied, as in mlm_config.json) + lm_bias.
struct MlmHeadWeights {
  Tensor dense, dense_bias;  // [hidden, hidden], [hidden]
  Tensor norm;               // f32 [hidden]
  Tensor bias;               // f32 [V]
};

struct ModelWeights {
  TrunkWeights decoder;  // `model.*`: the decoder (or the MLM trunk)
  TrunkWeights encoder;  // `encoder.*`: empty when the model has none or does not use it
  Tensor lm_head;        // [V, hidden]: the decoder embedding when tied (tie_word_embeddings)
  MlmHeadWeights mlm;    // LlamaForMLM only
};

enum class TensorRole { Embedding, Linear, Norm, Bias };
// Trainable groups, as the reference's train.py selects them by name: `cross_attn` modules, the `encoder`,
// and the rest (decoder trunk and heads).
enum class TensorGroup { Decoder, CrossAttn, Encoder };

struct TensorEntry {
  std::string name;  // the checkpoint's (PyTorch named_parameters) name
  Shape shape;
  TensorRole role = TensorRole::Linear;
  TensorGroup group = TensorGroup::Decoder;
  Tensor* slot = nullptr;  // where it lives in the ModelWeights given to model_tensors (null without one)
  // Other names of the same weight, which checkpoints may also store (tied lm_head.weight, lm_head.bias).
  std::vector<std::string> aliases;
  int64_t padding_row = -1;  // an embedding's padding_idx row (zero at init), -1: none
};

// Every tensor of `cfg`'s model, in checkpoint order, each once (tied weights under their first name, the
// others as aliases). With `w`, each entry points at its slot; layers and cross-attention modules missing
// from `w` are created (existing ones are kept, so this also walks a loaded model's weights).
std::vector<TensorEntry> model_tensors(const CepeConfig& cfg, ModelWeights* w = nullptr);
// Re-points the tied views (lm_head = the embedding) after the slots were filled.
void bind_tied(const CepeConfig& cfg, ModelWeights& w);
// Whether the model reads a separate encoder (`encoder.*`): cross-attention layers exist and the encoder is
// not the decoder itself.
bool uses_separate_encoder(const CepeConfig& cfg);

}  // namespace cepe
