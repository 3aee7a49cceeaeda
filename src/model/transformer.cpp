#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/copy.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"

namespace cepe {

namespace {

Tensor buf(int64_t rows, int64_t cols) { return Tensor::empty(DType::F32, {rows, cols}); }
Tensor zeros(int64_t rows, int64_t cols) { return Tensor::zeros(DType::F32, {rows, cols}); }

// Attention over the model's heads for queries q [B*T, H*hd] writing out [B*T, H*hd], over K/V rows of this
// call (the caller repoints them at the cache when there is one).
kernels::AttentionArgs head_args(const LlamaConfig& cfg, const float* q, float* out, int64_t B, int64_t T,
                                 const float* k = nullptr, const float* v = nullptr) {
  return kernels::heads_layout(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim(), q, out, B, T, k, v, T);
}

// Self-attention over this call's own K/V (no cache): the training layout.
kernels::AttentionArgs own_kv_args(const LlamaConfig& cfg, const TrunkCall& call, const LayerActivations& s) {
  kernels::AttentionArgs a = head_args(cfg, s.q.f32(), s.attn.f32(), call.batch, call.len, s.k.f32(), s.v.f32());
  a.causal = call.causal;
  a.key_mask = call.key_mask;
  a.mask_batch_stride = call.key_mask_stride > 0 ? call.key_mask_stride : call.len;
  a.lse = s.attn_lse.f32();
  a.probs = s.attn_probs.defined() ? s.attn_probs.f32() : nullptr;
  return a;
}

// h += SelfAttn(RMSNorm(h)), appending this call's K/V to the cache when there is one.
void self_attention(const LlamaConfig& cfg, const LayerWeights& lw, size_t layer, const TrunkCall& call,
                    const kernels::Rope& rope, float* h, LayerActivations* s) {
  const int64_t B = call.batch, T = call.len, BT = B * T, d = cfg.hidden_size;
  const int64_t hd = cfg.head_dim(), Hq = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  const int64_t qd = Hq * hd, kvd = Hkv * hd;
  Tensor xn = buf(BT, d), q = buf(BT, qd), k = buf(BT, kvd), v = buf(BT, kvd), att = buf(BT, qd);
  Tensor rstd = s ? Tensor::empty(DType::F32, {BT}) : Tensor();
  kernels::rmsnorm(h, lw.input_norm.f32(), BT, d, static_cast<float>(cfg.rms_norm_eps), xn.f32(),
                   s ? rstd.f32() : nullptr);
  kernels::linear(xn.f32(), BT, d, lw.self_attn.q, q.f32());
  kernels::linear(xn.f32(), BT, d, lw.self_attn.k, k.f32());
  kernels::linear(xn.f32(), BT, d, lw.self_attn.v, v.f32());
  kernels::apply_rope(q.f32(), BT, Hq, hd, qd, call.positions, rope);
  kernels::apply_rope(k.f32(), BT, Hkv, hd, kvd, call.positions, rope);

  if (s) {
    s->input_rstd = std::move(rstd);
    s->input_normed = std::move(xn);
    s->q = std::move(q);
    s->k = std::move(k);
    s->v = std::move(v);
    s->attn = std::move(att);
    s->attn_lse = Tensor::empty(DType::F32, {B, Hq, T});
    if (kernels::keep_attention_probs(B, Hq, T, T)) s->attn_probs = Tensor::empty(DType::F32, {B, Hq, T, T});
    kernels::attention(own_kv_args(cfg, call, *s));
    Tensor o = buf(BT, d);
    kernels::linear(s->attn.f32(), BT, qd, lw.self_attn.o, o.f32());
    kernels::add_inplace(h, o.f32(), BT * d);
    return;
  }
  kernels::AttentionArgs a = head_args(cfg, q.f32(), att.f32(), B, T, k.f32(), v.f32());
  a.causal = call.causal;
  if (call.cache) {
    KVCache& c = *call.cache;
    const int64_t past = c.length;
    kernels::copy_rows_strided(k.f32(), B, T * kvd, c.k[layer].f32() + past * kvd, c.capacity * kvd);
    kernels::copy_rows_strided(v.f32(), B, T * kvd, c.v[layer].f32() + past * kvd, c.capacity * kvd);
    a.k = c.k[layer].f32();
    a.v = c.v[layer].f32();
    a.kv_batch_stride = c.capacity * kvd;
    a.kv_len = past + T;
    a.causal_offset = past;
  }
  a.key_mask = call.key_mask;
  a.mask_batch_stride = call.key_mask_stride > 0 ? call.key_mask_stride : a.kv_len;
  kernels::attention(a);
  Tensor o = std::move(q);  // reuse: o_proj output has width d, q has width qd == d
  kernels::linear(att.f32(), BT, qd, lw.self_attn.o, o.f32());
  kernels::add_inplace(h, o.f32(), BT * d);
}

void mlp(const LlamaConfig& cfg, const LayerWeights& lw, int64_t BT, float* h, LayerActivations* s) {
  const int64_t d = cfg.hidden_size, ff = cfg.intermediate_size;
  Tensor xn = buf(BT, d), g = buf(BT, ff), u = buf(BT, ff);
  Tensor rstd = s ? Tensor::empty(DType::F32, {BT}) : Tensor();
  kernels::rmsnorm(h, lw.post_norm.f32(), BT, d, static_cast<float>(cfg.rms_norm_eps), xn.f32(),
                   s ? rstd.f32() : nullptr);
  kernels::linear(xn.f32(), BT, d, lw.gate, g.f32());
  kernels::linear(xn.f32(), BT, d, lw.up, u.f32());
  if (s) {
    Tensor act = buf(BT, ff), out = buf(BT, d);
    kernels::swiglu(g.f32(), u.f32(), BT * ff, act.f32());
    kernels::linear(act.f32(), BT, ff, lw.down, out.f32());
    kernels::add_inplace(h, out.f32(), BT * d);
    s->mlp_rstd = std::move(rstd);
    s->mlp_normed = std::move(xn);
    s->gate = std::move(g);
    s->up = std::move(u);
    s->act = std::move(act);
    return;
  }
  kernels::swiglu(g.f32(), u.f32(), BT * ff);
  kernels::linear(g.f32(), BT, ff, lw.down, xn.f32());
  kernels::add_inplace(h, xn.f32(), BT * d);
}

float* grad_of(const Tensor& t) { return t.defined() ? t.f32() : nullptr; }

bool layer_trains(const LayerWeights& g) {
  bool any = g.input_norm.defined() || g.post_norm.defined() || g.self_attn.q.defined() || g.self_attn.k.defined() ||
             g.self_attn.v.defined() || g.self_attn.o.defined() || g.gate.defined() || g.up.defined() ||
             g.down.defined();
  if (g.cross)
    any = any || g.cross->norm.defined() || g.cross->q.defined() || g.cross->k.defined() || g.cross->v.defined() ||
          g.cross->o.defined();
  return any;
}

Tensor copy_of(const float* h, int64_t rows, int64_t cols) {
  Tensor t = buf(rows, cols);
  std::memcpy(t.f32(), h, static_cast<size_t>(rows * cols) * sizeof(float));
  return t;
}

// One layer on h [B*T, d] in place; with `s`, keeps what the layer's backward needs (not s->input).
void layer_forward(const LlamaConfig& cfg, const LayerWeights& lw, size_t i, const TrunkCall& call,
                   const kernels::Rope& rope, float* h, LayerActivations* s) {
  const int64_t B = call.batch, T = call.len, BT = B * T, d = cfg.hidden_size;
  self_attention(cfg, lw, i, call, rope, h, s);
  const bool cross = lw.cross && call.cross && call.cross->states[i];
  if (s && cross) {
    s->after_attn = copy_of(h, BT, d);
    cross_attention_train(cfg, *lw.cross, *call.cross->states[i], call.cross->mask, B, T, h, s->cross);
  } else if (cross) {
    cross_attention(cfg, *lw.cross, i, *call.cross, B, T, h);
  }
  if (s) s->before_mlp = copy_of(h, BT, d);
  mlp(cfg, lw, BT, h, s);
}

}  // namespace

Tensor trunk_forward(const LlamaConfig& cfg, const TrunkWeights& w, const TrunkCall& call) {
  const int64_t B = call.batch, T = call.len, BT = B * T, d = cfg.hidden_size;
  const int64_t past = call.cache ? call.cache->length : 0;
  check(!(call.saved && call.cache), "trunk_forward: training runs without a KV cache");
  if (call.cache) {
    check(call.cache->batch == B, [&] {
      return "KV cache holds " + std::to_string(call.cache->batch) + " rows, call has " + std::to_string(B);
    });
    check(past + T <= call.cache->capacity, [&] {
      return "KV cache full: " + std::to_string(past) + " + " + std::to_string(T) + " tokens exceed its capacity of " +
             std::to_string(call.cache->capacity);
    });
  }
  // The reference's rotary tables are rebuilt for the longest sequence seen (matters for dynamic NTK only).
  int64_t rope_len = past + T;
  if (call.cache) {
    rope_len = std::max(rope_len, call.cache->rope_seen);
    call.cache->rope_seen = rope_len;
  }
  const kernels::Rope rope = kernels::Rope::make(cfg, rope_len);
  if (call.saved) call.saved->layers.assign(w.layers.size(), LayerActivations());

  Tensor h = buf(BT, d);
  kernels::embedding(w.embed, call.ids, BT, h.f32());
  for (size_t i = 0; i < w.layers.size(); ++i) {
    if (call.all_hidden) call.all_hidden->push_back(h.clone());
    const LayerWeights& lw = w.layers[i];
    LayerActivations* s = call.saved ? &call.saved->layers[i] : nullptr;
    if (s) s->input = h.clone();
    if (s && call.recompute) {
      // The training forward, its activations dropped at once (trunk_backward runs it again).
      LayerActivations transient;
      layer_forward(cfg, lw, i, call, rope, h.f32(), &transient);
    } else {
      layer_forward(cfg, lw, i, call, rope, h.f32(), s);
    }
  }
  if (call.cache) call.cache->length = past + T;
  if (call.saved) {
    call.saved->last = h.clone();
    call.saved->last_rstd = Tensor::empty(DType::F32, {BT});
  }
  kernels::rmsnorm(h.f32(), w.norm.f32(), BT, d, static_cast<float>(cfg.rms_norm_eps), h.f32(),
                   call.saved ? call.saved->last_rstd.f32() : nullptr);
  if (call.all_hidden) call.all_hidden->push_back(h.clone());
  return h;
}

void trunk_backward(const LlamaConfig& cfg, const TrunkWeights& w, const TrunkCall& call, Tensor d_out,
                    const TrunkGradients& grads) {
  check(call.saved != nullptr && call.saved->layers.size() == w.layers.size(),
        "trunk_backward: the forward did not keep its activations");
  const TrunkActivations& sv = *call.saved;
  TrunkWeights& g = *grads.weights;
  const int64_t B = call.batch, T = call.len, BT = B * T, d = cfg.hidden_size, ff = cfg.intermediate_size;
  const int64_t hd = cfg.head_dim(), Hq = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  const int64_t qd = Hq * hd, kvd = Hkv * hd;
  const int64_t L = static_cast<int64_t>(w.layers.size());
  auto entry = [&](int64_t e) -> const Tensor* {
    return static_cast<size_t>(e) < grads.hidden_entries.size() ? grads.hidden_entries[static_cast<size_t>(e)] : nullptr;
  };
  auto cross_state_grad = [&](int64_t i) -> Tensor* {
    return static_cast<size_t>(i) < grads.cross_states.size() ? grads.cross_states[static_cast<size_t>(i)] : nullptr;
  };
  // The lowest layer whose backward does anything: below it no weight trains and no gradient is wanted
  // (an injected entry only carries gradient down to what trains).
  int64_t lowest = L;
  if (g.embed.defined()) lowest = 0;
  for (int64_t i = 0; i < L && lowest == L; ++i)
    if (layer_trains(g.layers[static_cast<size_t>(i)]) || cross_state_grad(i)) lowest = i;

  // Final norm; the last entry of all_hidden is the normed output itself.
  Tensor dh = zeros(BT, d);
  if (const Tensor* e = entry(L)) kernels::add_inplace(d_out.f32(), e->f32(), BT * d);
  kernels::rmsnorm_backward(d_out.f32(), sv.last.f32(), w.norm.f32(), sv.last_rstd.f32(), BT, d, dh.f32(), false,
                            grad_of(g.norm));
  const kernels::Rope rope = kernels::Rope::make(cfg, T);
  for (int64_t i = L - 1; i >= lowest; --i) {
    const LayerWeights& lw = w.layers[static_cast<size_t>(i)];
    LayerWeights& lg = g.layers[static_cast<size_t>(i)];
    LayerActivations redone;
    if (call.recompute) {
      redone.input = sv.layers[static_cast<size_t>(i)].input;
      Tensor x = redone.input.clone();
      layer_forward(cfg, lw, static_cast<size_t>(i), call, rope, x.f32(), &redone);
    }
    const LayerActivations& s = call.recompute ? redone : sv.layers[static_cast<size_t>(i)];
    // MLP: h_out = before_mlp + down(swiglu(gate(n), up(n))), n = RMSNorm_post(before_mlp).
    {
      Tensor d_act = buf(BT, ff), d_gate = buf(BT, ff), d_up = buf(BT, ff), d_norm = buf(BT, d);
      kernels::linear_backward(s.act.f32(), dh.f32(), BT, ff, lw.down, d_act.f32(), false, grad_of(lg.down));
      kernels::swiglu_backward(d_act.f32(), s.gate.f32(), s.up.f32(), BT * ff, d_gate.f32(), d_up.f32());
      kernels::linear_backward(s.mlp_normed.f32(), d_gate.f32(), BT, d, lw.gate, d_norm.f32(), false, grad_of(lg.gate));
      kernels::linear_backward(s.mlp_normed.f32(), d_up.f32(), BT, d, lw.up, d_norm.f32(), true, grad_of(lg.up));
      kernels::rmsnorm_backward(d_norm.f32(), s.before_mlp.f32(), lw.post_norm.f32(), s.mlp_rstd.f32(), BT, d,
                                dh.f32(), true, grad_of(lg.post_norm));
    }
    if (lw.cross && call.cross && call.cross->states[static_cast<size_t>(i)]) {
      Tensor* dphi = cross_state_grad(i);
      cross_attention_backward(cfg, *lw.cross, *call.cross->states[static_cast<size_t>(i)], call.cross->mask, B, T,
                               s.after_attn.f32(), s.cross, dh.f32(), lg.cross ? &*lg.cross : nullptr,
                               dphi ? dphi->f32() : nullptr);
    }
    // Self-attention: h_mid = input + o(attn(rope(q(n)), rope(k(n)), v(n))), n = RMSNorm_in(input).
    // Skipped in the lowest layer when its weights are frozen and nothing below takes a gradient (a frozen
    // CEPE decoder: layer 0's cross-attention trains, its self-attention and the embedding do not).
    const bool self_trains = lg.input_norm.defined() || lg.self_attn.q.defined() || lg.self_attn.k.defined() ||
                             lg.self_attn.v.defined() || lg.self_attn.o.defined();
    if (i == lowest && !self_trains && !g.embed.defined()) break;
    {
      Tensor d_attn = buf(BT, qd), dq = zeros(BT, qd), dk = zeros(BT, kvd), dv = zeros(BT, kvd), d_norm = buf(BT, d);
      kernels::linear_backward(s.attn.f32(), dh.f32(), BT, qd, lw.self_attn.o, d_attn.f32(), false,
                               grad_of(lg.self_attn.o));
      kernels::attention_backward(own_kv_args(cfg, call, s), d_attn.f32(), qd, dq.f32(), dk.f32(), dv.f32());
      kernels::apply_rope_backward(dq.f32(), BT, Hq, hd, qd, call.positions, rope);
      kernels::apply_rope_backward(dk.f32(), BT, Hkv, hd, kvd, call.positions, rope);
      kernels::linear_backward(s.input_normed.f32(), dq.f32(), BT, d, lw.self_attn.q, d_norm.f32(), false,
                               grad_of(lg.self_attn.q));
      kernels::linear_backward(s.input_normed.f32(), dk.f32(), BT, d, lw.self_attn.k, d_norm.f32(), true,
                               grad_of(lg.self_attn.k));
      kernels::linear_backward(s.input_normed.f32(), dv.f32(), BT, d, lw.self_attn.v, d_norm.f32(), true,
                               grad_of(lg.self_attn.v));
      kernels::rmsnorm_backward(d_norm.f32(), s.input.f32(), lw.input_norm.f32(), s.input_rstd.f32(), BT, d, dh.f32(),
                                true, grad_of(lg.input_norm));
    }
    if (const Tensor* e = entry(i)) kernels::add_inplace(dh.f32(), e->f32(), BT * d);  // layer i's input entry
  }
  if (lowest == 0 && g.embed.defined())
    kernels::embedding_backward(dh.f32(), call.ids, BT, d, g.embed.f32(), cfg.pad_token_id ? *cfg.pad_token_id : -1);
}

}  // namespace cepe
