#pragma once
// Building the model a training stage starts from (spec §3.3): a CEPE model assembled from a decoder
// checkpoint and an MLM-pretrained encoder (its `model.*` trunk becomes `encoder.*`, the MLM head is
// dropped), with the cross-attention initialised as the reference's train.py does.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "cepe/config.h"
#include "cepe/model.h"

namespace cepe::train {

// train.py's init_mode: q ← self q; k, v ← self k, v sliced to [:out, :in]; o ← self o (copy), 0 (zero) or
// Kaiming-normal (normal); layernorm ← post_attention_layernorm. none keeps the loaded weights.
enum class CrossInit { Copy, Zero, Normal, None };
CrossInit parse_cross_init(const std::string& name);  // copy | zero | normal | none
const char* cross_init_name(CrossInit m);

struct CepeAssembly {
  std::string decoder;  // checkpoint dir: a LlamaForCausalLM (or a CEPE model, whose own modules are kept)
  std::string encoder;  // a LlamaForMLM (or any LLaMA trunk) checkpoint dir; empty: see encoder_config
  // A random encoder of this shape when `encoder` is empty; neither: the decoder encodes (encoder_is_model).
  std::optional<LlamaConfig> encoder_config;
  int64_t num_cross_attn_layers = 0;  // 0: every decoder layer
  std::string encode_mode = "context_only";
  CrossInit init = CrossInit::Copy;
  uint64_t seed = 0;                   // the generic init of new modules (Linear ~ N(0, 0.02), norms 1)
  double initializer_range = 0.02;
};

// Owned f32 weights, ready to train.
std::shared_ptr<CepeModel> assemble_cepe(const CepeAssembly& a);

// Copies into `model` (random, owned f32) every tensor of the checkpoint `dir` stored under the same name: of the
// same shape, or with fewer rows when only the first dimension differs (a vocabulary the model extends, e.g.
// the MLM's [MASK] row; the extra rows keep their init). Layers the checkpoint lacks keep their init, its extra
// layers are not read. Any other shape mismatch is an error. Returns how many tensors were copied (> 0).
// For small models trained here: an MLM encoder started from the decoder shares the decoder's basis.
int64_t init_from_checkpoint(CepeModel& model, const std::string& dir);

// Applies `mode` to every cross-attention module of `model` (its weights must be owned f32).
void init_cross_attention(CepeModel& model, CrossInit mode, uint64_t seed);

}  // namespace cepe::train
