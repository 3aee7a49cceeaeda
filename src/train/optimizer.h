#pragma once
// The optimizer layer of the trainer: AdamW as torch.optim.AdamW, clipping by global norm as
// torch.nn.utils.clip_grad_norm_, gradient-accumulation helpers, and the optimizer state as a safetensors file.
//
// Exactness (docs/training.md, "Optimizer"): AdamW::step repeats, element by element and in fp32, the
// operations of torch 1.13's default single-tensor AdamW on the CPU (`_single_tensor_adamw`: foreach, amsgrad,
// maximize and capturable off), with the same roundings of the Python-double scalars to float and fused
// multiply-adds exactly where torch's AVX2 kernels fuse; given the same gradients it gives torch's parameters
// to the last bit. Every element is updated independently, so the result does not depend on the thread count.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "cepe/tensor.h"

namespace cepe::train {

// One trainable tensor: its fp32 master values and its gradient, both contiguous `numel()` floats owned by the
// caller (the trainer's parameter and gradient arenas). `name` is the checkpoint's tensor name.
struct ParamSlot {
  std::string name;
  Shape shape;
  float* value = nullptr;
  float* grad = nullptr;
  bool decay = true;  // whether weight decay applies; usually uses_weight_decay(name)
  int64_t numel() const { return shape_numel(shape); }
};

// Hugging Face Trainer's rule (get_decay_parameter_names) written as a function of the name, for our tensor
// names: no decay for biases (the name contains "bias": `lm_dense.bias`, `lm_bias`, `lm_head.bias`) or for the
// weights of RMSNorm/LayerNorm modules (the name contains "layernorm" or "layer_norm", or ends in
// "norm.weight": `input_layernorm`, `post_attention_layernorm`, `cross_attn.layernorm`, `lm_layer_norm`,
// `model.norm`, `encoder.norm`); every other tensor (projections, embeddings, `lm_head.weight`) decays.
bool uses_weight_decay(std::string_view name);

// torch.optim.AdamW's hyper-parameters except the learning rate, which the schedule gives per step. HF's
// `adamw_torch` defaults; weight_decay applies to the slots with `decay` set (HF's two parameter groups).
struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

class AdamW {
 public:
  // Moments start at zero, the step at 0. Throws on an empty or duplicate name, a null pointer, an empty shape
  // or hyper-parameters torch would refuse (beta outside [0, 1), eps or weight_decay negative or not finite).
  AdamW(std::vector<ParamSlot> params, AdamWConfig config);

  // One update of every slot from its gradient, with learning rate `lr` (torch's per-step order: the step
  // counter first, so the first update has t = 1). Gradients are read, never modified.
  void step(double lr);

  int64_t step_count() const { return step_; }  // updates done so far (torch's state['step'])
  const AdamWConfig& config() const { return config_; }
  const std::vector<ParamSlot>& params() const { return params_; }
  // First and second moments of slot `i` (numel() floats each).
  const float* exp_avg(size_t i) const { return exp_avg_.at(i).data(); }
  const float* exp_avg_sq(size_t i) const { return exp_avg_sq_.at(i).data(); }

  // The state as a safetensors file, written atomically: `exp_avg.<name>` and `exp_avg_sq.<name>` (F32, the
  // slot's shape) for every slot; metadata `format` = "cepe.adamw", `step`, `beta1`, `beta2`, `eps`,
  // `weight_decay` (as %.17g, so they read back exactly), `decay.<name>` = "1"/"0".
  void save_state(const std::string& path) const;
  // Reads a file written by save_state into this optimizer, validated in full before anything changes: the
  // format, step (an integer >= 0), the same hyper-parameters and decay flags, exactly the tensors of this
  // optimizer's slots (no missing or extra names), F32 with the slots' shapes, finite, exp_avg_sq >= 0.
  // Every failure is one cepe::Error naming the file and what is wrong. Resuming from it continues bit-exactly.
  void load_state(const std::string& path);

 private:
  std::vector<ParamSlot> params_;
  AdamWConfig config_;
  int64_t step_ = 0;
  std::vector<std::vector<float>> exp_avg_, exp_avg_sq_;
};

// What clip_grad_norm did: the global 2-norm of the gradients before clipping (the value HF logs as
// `grad_norm`) and the factor every gradient was multiplied by (1 when the norm was within max_norm).
struct GradClip {
  float total_norm = 0;
  float scale = 1;
  bool clipped() const { return scale < 1.0f; }
};

// The global 2-norm of all gradients as torch.nn.utils.clip_grad_norm_ computes it: the 2-norm of the
// per-tensor 2-norms, each with torch 1.13's CPU (AVX2) reduction order in float, so bit-equal to torch's
// (another torch build, e.g. AVX-512 with 16 lanes, can differ in the last bits). The same for any thread count:
// threads split the tensors, never a sum. A NaN or Inf gradient is an error naming the tensor and
// the element ("gradient of 'x' is not finite (NaN at element 12)"): in fp32/bf16 training without loss scaling
// a non-finite gradient means divergence or a bug, and skipping the step (what fp16 loss scaling does) would
// hide it; a trainer that wants to skip catches the error.
float global_grad_norm(const std::vector<ParamSlot>& params);

// clip_grad_norm_(params, max_norm): total = global_grad_norm; scale = min(1, (1 / (total + 1e-6)) * max_norm)
// in float, in torch's order; every gradient is multiplied by scale. max_norm must be > 0 (HF skips clipping
// when max_grad_norm is 0: so does the trainer, by not calling this).
GradClip clip_grad_norm(const std::vector<ParamSlot>& params, double max_norm);

// Gradient accumulation, as HF does it: zero before the first micro-batch, and each micro-batch's loss (hence
// the gradient seed of its backward pass) divided by the number of micro-batches, accumulation_scale(n).
void zero_grads(const std::vector<ParamSlot>& params);
void scale_grads(const std::vector<ParamSlot>& params, float factor);
inline float accumulation_scale(int64_t micro_batches) { return 1.0f / static_cast<float>(micro_batches); }

}  // namespace cepe::train
