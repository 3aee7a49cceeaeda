#pragma once
// The pieces of one optimizer step that `cepe train` and `cepe bench train` share, so that the benchmark
// times exactly the trainer's step: the parameter slots the optimizer walks, and the update after the
// micro-batches' backward passes (clip by global norm, AdamW, zero the gradients).
#include <vector>

#include "cepe/model.h"
#include "model/weights.h"
#include "train/optimizer.h"

namespace cepe::train {

// The model's trainable f32 weights paired with their gradients in `grads` (make_gradients' layout).
std::vector<ParamSlot> param_slots(const CepeModel& model, ModelWeights& grads);

// clip_grad_norm (skipped as HF does when max_grad_norm <= 0), AdamW.step(lr), zero_grads.
GradClip optimizer_update(const std::vector<ParamSlot>& slots, AdamW& adam, double max_grad_norm, double lr);

}  // namespace cepe::train
