#pragma once
// Loss and gradients of a model on one batch: the training forward (the inference code with its activations
// kept), the losses of the reference (shifted cross-entropy for causal models, masked-token cross-entropy
// for LlamaForMLM, the CEPED KL), and the backward into the trainable weights only.
#include <cstdint>
#include <string>
#include <vector>

#include "cepe/model.h"
#include "kernels/cpu/loss.h"
#include "model/weights.h"

namespace cepe {

// The reference train.py's parameter sets: names containing `cross_attn`; plus every `encoder.*`
// (--train_encoder); or everything (--train_everything, and the only set for models without cross-attention).
// Ours: `encoder` alone, the encoder learning through a frozen cross-attention.
enum class TrainableSet { CrossAttn, Encoder, CrossAttnEncoder, All };
bool parse_trainable_set(const std::string& name, TrainableSet* out);  // cross_attn | encoder | cross_attn,encoder | all
const char* trainable_set_name(TrainableSet s);
// "cross_attn, encoder, cross_attn,encoder or all": the names parse_trainable_set accepts, for error messages.
std::string trainable_set_names();
bool is_trainable(const TensorEntry& e, TrainableSet s);

// CEPED teacher targets for the last `len` positions of every row.
struct Distillation {
  int64_t len = 0, k = 0;
  std::vector<int32_t> index;  // [B, len, k]
  std::vector<float> prob;     // [B, len, k+1]: the top k, then the rest
  kernels::KlMode mode = kernels::KlMode::Drop;
  double delta = 0;            // smooth_δ
};

// kl_loss_mode: drop | smooth_<δ>, δ a number >= 0 (the reference parses float(mode.split("_")[-1])); errors
// start with `origin`.
kernels::KlMode parse_kl_mode(const std::string& mode, const std::string& origin, double* delta);

struct LossInput {
  const int32_t* ids = nullptr;  // [B, T]
  int64_t batch = 0, len = 0;
  const uint8_t* mask = nullptr;       // [B, T], null = all ones
  const int64_t* positions = nullptr;  // [B, T]
  const ContextChunks* context = nullptr;
  const int64_t* labels = nullptr;  // [B, T], kIgnoreIndex = not scored
  const Distillation* distill = nullptr;
  double lm_loss_cof = 1.0, kl_loss_cof = 0.0;  // CEPE models only (the others' loss is the plain CE)
  // What the sums are divided by (0 = this batch's own): the scored positions and KL rows of a whole
  // optimizer step (every micro-batch and rank), so that the gradient is that of one mean over the step.
  double ce_normalizer = 0, kl_normalizer = 0;
  // Per-layer recomputation: the forward keeps only each layer's input; the backward recomputes the layer's
  // activations from it just before its own backward (the same gradients, less memory, one more forward).
  bool recompute = false;
};

struct LossValue {
  double loss = 0;  // lm_loss_cof·ce + kl_loss_cof·kl, with the normalizers used
  double ce = 0, kl = 0;
  double ce_sum = 0, kl_sum = 0;  // before normalization
  int64_t scored = 0;             // positions counted in ce
  int64_t kl_rows = 0;
  // Bytes the training forward kept for the backward (trunk and head activations, Φ, logits and their
  // gradient): what recomputation bounds. 0 without a backward.
  size_t activation_bytes = 0;
};

// Positions `labels` [B, T] scores (after the causal shift unless MaskedLM).
int64_t scored_positions(const CepeConfig& cfg, const int64_t* labels, int64_t batch, int64_t len);

// Zero F32 gradients for the trainable tensors of `model` (the others undefined), in a ModelWeights laid out
// like the model's.
ModelWeights make_gradients(const CepeModel& model, TrainableSet set);

// Forward, loss and, when `grads` is given, backward: gradients are added to its defined tensors.
LossValue loss_and_gradients(const CepeModel& model, const LossInput& in, TrainableSet set, ModelWeights* grads);

}  // namespace cepe
