#include "train/step.h"

#include "model/model_impl.h"

namespace cepe::train {

std::vector<ParamSlot> param_slots(const CepeModel& model, ModelWeights& grads) {
  ModelImpl& im = model_impl(model);
  std::vector<ParamSlot> slots;
  const std::vector<TensorEntry> w = model_tensors(im.cfg, &im.weights);
  const std::vector<TensorEntry> g = model_tensors(im.cfg, &grads);
  for (size_t i = 0; i < w.size(); ++i) {
    if (!g[i].slot->defined()) continue;
    check(w[i].slot->dtype() == DType::F32, "training needs f32 weights");
    slots.push_back({w[i].name, w[i].shape, w[i].slot->f32(), g[i].slot->f32(), uses_weight_decay(w[i].name)});
  }
  return slots;
}

GradClip optimizer_update(const std::vector<ParamSlot>& slots, AdamW& adam, double max_grad_norm, double lr) {
  const GradClip clip = clip_grad_norm(slots, max_grad_norm > 0 ? max_grad_norm : 1e30);
  adam.step(lr);
  zero_grads(slots);
  return clip;
}

}  // namespace cepe::train
