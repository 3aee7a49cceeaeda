#pragma once
// Training losses over logits, each with its gradient computed in the same pass (the forward is a reduction
// to a scalar, so its backward needs nothing saved).
#include <cstdint>

namespace cepe::kernels {

constexpr int64_t kIgnoreIndex = -100;  // PyTorch CrossEntropyLoss's ignore_index

struct LossSum {
  double sum = 0;     // Σ over the counted rows
  int64_t count = 0;  // rows counted
};

// Cross-entropy of each row of logits [rows, V] against labels[rows] (kIgnoreIndex = not counted; others
// must lie in [0, V)): sum of lse(row) − row[label]. With dlogits, adds `grad_scale`·(softmax − onehot) to
// the counted rows (the caller scales by 1/count for a mean).
template <class T>
LossSum cross_entropy(const T* logits, int64_t rows, int64_t V, const int64_t* labels, T* dlogits, T grad_scale);

// The CEPED distillation KL of the reference (LlamaForCausalContextLM.forward, spec §3.6) for rows of
// student logits [rows, V] against teacher top-k ids `index` [rows, k] and probabilities `prob`
// [rows, k+1] (the top k, then the rest). q = [softmax(logits)[index], 1 − Σ] and p = prob; mode drop
// removes the last column of both, smooth_δ maps x → (x + δ)/(1 + δ·(k+1)). Returns Σ_rows Σ p·(log p −
// log q) (terms with p = 0 are 0, as torch's xlogy); with dlogits, adds grad_scale·∂/∂logits.
enum class KlMode { Drop, Smooth };
template <class T>
double distill_kl(const T* logits, int64_t rows, int64_t V, const int32_t* index, const T* prob, int64_t k,
                  KlMode mode, double delta, T* dlogits, T grad_scale);

}  // namespace cepe::kernels
