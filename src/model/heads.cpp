#include "model/heads.h"

#include <vector>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rmsnorm.h"

namespace cepe {

namespace {
float* grad_of(const Tensor& t) { return t.defined() ? t.f32() : nullptr; }
}  // namespace

void head_forward(const CepeConfig& cfg, const ModelWeights& w, const float* h, int64_t rows, float* logits,
                  HeadActivations* saved) {
  const int64_t d = cfg.decoder.hidden_size;
  if (cfg.architecture != Architecture::MaskedLM) {
    kernels::linear(h, rows, d, w.lm_head, logits);
    return;
  }
  HeadActivations local;
  HeadActivations& s = saved ? *saved : local;
  s.dense = Tensor::empty(DType::F32, {rows, d});
  s.act = Tensor::empty(DType::F32, {rows, d});
  s.rstd = Tensor::empty(DType::F32, {rows});
  s.normed = Tensor::empty(DType::F32, {rows, d});
  kernels::linear(h, rows, d, w.mlm.dense, s.dense.f32());
  kernels::add_bias(s.dense.f32(), w.mlm.dense_bias.f32(), rows, d);
  kernels::silu(s.dense.f32(), rows * d, s.act.f32());
  kernels::rmsnorm(s.act.f32(), w.mlm.norm.f32(), rows, d, static_cast<float>(cfg.decoder.rms_norm_eps), s.normed.f32(),
                   s.rstd.f32());
  kernels::linear(s.normed.f32(), rows, d, w.lm_head, logits);
  kernels::add_bias(logits, w.mlm.bias.f32(), rows, cfg.decoder.vocab_size);
}

void head_backward(const CepeConfig& cfg, const ModelWeights& w, const float* h, int64_t rows,
                   const HeadActivations& s, const float* dlogits, float* dh, ModelWeights& g) {
  const int64_t d = cfg.decoder.hidden_size, V = cfg.decoder.vocab_size;
  // The output matrix is the embedding when tied: its gradient goes to the embedding's slot.
  const bool tied = cfg.decoder.tie_word_embeddings;
  float* d_out_w = grad_of(tied ? g.decoder.embed : g.lm_head);
  if (cfg.architecture != Architecture::MaskedLM) {
    kernels::linear_backward(h, dlogits, rows, d, w.lm_head, dh, false, d_out_w);
    return;
  }
  std::vector<float> d_normed(static_cast<size_t>(rows * d)), d_act(d_normed.size()), d_dense(d_normed.size());
  if (float* db = grad_of(g.mlm.bias)) kernels::bias_backward(dlogits, rows, V, db);
  kernels::linear_backward(s.normed.f32(), dlogits, rows, d, w.lm_head, d_normed.data(), false, d_out_w);
  kernels::rmsnorm_backward(d_normed.data(), s.act.f32(), w.mlm.norm.f32(), s.rstd.f32(), rows, d, d_act.data(), false,
                            grad_of(g.mlm.norm));
  kernels::silu_backward(d_act.data(), s.dense.f32(), rows * d, d_dense.data());
  if (float* db = grad_of(g.mlm.dense_bias)) kernels::bias_backward(d_dense.data(), rows, d, db);
  kernels::linear_backward(h, d_dense.data(), rows, d, w.mlm.dense, dh, false, grad_of(g.mlm.dense));
}

}  // namespace cepe
