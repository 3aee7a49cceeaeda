#include "model/transformer.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"

namespace cepe {

TrunkWeights load_trunk(const WeightStore& ws, const std::string& prefix, const LlamaConfig& cfg,
                        const std::vector<bool>& cross_layers, int64_t enc_hidden) {
  const int64_t d = cfg.hidden_size, qd = cfg.num_attention_heads * cfg.head_dim(), kvd = cfg.kv_dim();
  const int64_t ff = cfg.intermediate_size;
  TrunkWeights w;
  w.embed = ws.get(prefix + "embed_tokens.weight", {cfg.vocab_size, d});
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string p = prefix + "layers." + std::to_string(i) + ".";
    LayerWeights l;
    l.input_norm = ws.get_f32(p + "input_layernorm.weight", {d});
    l.post_norm = ws.get_f32(p + "post_attention_layernorm.weight", {d});
    l.self_attn.q = ws.get(p + "self_attn.q_proj.weight", {qd, d});
    l.self_attn.k = ws.get(p + "self_attn.k_proj.weight", {kvd, d});
    l.self_attn.v = ws.get(p + "self_attn.v_proj.weight", {kvd, d});
    l.self_attn.o = ws.get(p + "self_attn.o_proj.weight", {d, qd});
    if (cross_layers[static_cast<size_t>(i)]) {
      CrossAttentionWeights c;
      c.norm = ws.get_f32(p + "cross_attn.layernorm.weight", {d});
      c.q = ws.get(p + "cross_attn.q_proj.weight", {qd, d});
      c.k = ws.get(p + "cross_attn.k_proj.weight", {kvd, enc_hidden});
      c.v = ws.get(p + "cross_attn.v_proj.weight", {kvd, enc_hidden});
      c.o = ws.get(p + "cross_attn.o_proj.weight", {d, qd});
      l.cross = std::move(c);
    }
    l.gate = ws.get(p + "mlp.gate_proj.weight", {ff, d});
    l.up = ws.get(p + "mlp.up_proj.weight", {ff, d});
    l.down = ws.get(p + "mlp.down_proj.weight", {d, ff});
    w.layers.push_back(std::move(l));
  }
  w.norm = ws.get_f32(prefix + "norm.weight", {d});
  return w;
}

namespace {

Tensor buf(int64_t rows, int64_t cols) { return Tensor::empty(DType::F32, {rows, cols}); }

// Attention over the decoder's heads for queries q [B*T, H*hd] writing out [B*T, H*hd]; the caller sets
// the keys, values and masking.
kernels::AttentionArgs head_args(const LlamaConfig& cfg, const float* q, float* out, int64_t B, int64_t T) {
  kernels::AttentionArgs a;
  const int64_t qd = cfg.num_attention_heads * cfg.head_dim();
  a.q = q;
  a.q_stride = qd;
  a.out = out;
  a.out_stride = qd;
  a.batch = B;
  a.q_len = T;
  a.q_heads = cfg.num_attention_heads;
  a.kv_heads = cfg.num_key_value_heads;
  a.head_dim = cfg.head_dim();
  a.kv_stride = cfg.kv_dim();
  a.scale = 1.0f / std::sqrt(static_cast<float>(cfg.head_dim()));
  return a;
}

// h += SelfAttn(RMSNorm(h)), appending this call's K/V to the cache when there is one.
void self_attention(const LlamaConfig& cfg, const LayerWeights& lw, size_t layer, const TrunkCall& call,
                    const kernels::Rope& rope, float* h) {
  const int64_t B = call.batch, T = call.len, BT = B * T, d = cfg.hidden_size;
  const int64_t hd = cfg.head_dim(), Hq = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  const int64_t qd = Hq * hd, kvd = Hkv * hd;
  Tensor xn = buf(BT, d), q = buf(BT, qd), k = buf(BT, kvd), v = buf(BT, kvd), att = buf(BT, qd);
  kernels::rmsnorm(h, lw.input_norm.f32(), BT, d, static_cast<float>(cfg.rms_norm_eps), xn.f32());
  kernels::linear(xn.f32(), BT, d, lw.self_attn.q, q.f32());
  kernels::linear(xn.f32(), BT, d, lw.self_attn.k, k.f32());
  kernels::linear(xn.f32(), BT, d, lw.self_attn.v, v.f32());
  kernels::apply_rope(q.f32(), BT, Hq, hd, qd, call.positions, rope);
  kernels::apply_rope(k.f32(), BT, Hkv, hd, kvd, call.positions, rope);

  kernels::AttentionArgs a = head_args(cfg, q.f32(), att.f32(), B, T);
  a.causal = call.causal;
  if (call.cache) {
    KVCache& c = *call.cache;
    const int64_t past = c.length;
    float* kc = c.k[layer].f32();
    float* vc = c.v[layer].f32();
    for (int64_t b = 0; b < B; ++b) {
      std::memcpy(kc + (b * c.capacity + past) * kvd, k.f32() + b * T * kvd, static_cast<size_t>(T * kvd) * 4);
      std::memcpy(vc + (b * c.capacity + past) * kvd, v.f32() + b * T * kvd, static_cast<size_t>(T * kvd) * 4);
    }
    a.k = kc;
    a.v = vc;
    a.kv_batch_stride = c.capacity * kvd;
    a.kv_len = past + T;
    a.causal_offset = past;
  } else {
    a.k = k.f32();
    a.v = v.f32();
    a.kv_batch_stride = T * kvd;
    a.kv_len = T;
  }
  a.key_mask = call.key_mask;
  a.mask_batch_stride = call.key_mask_stride > 0 ? call.key_mask_stride : a.kv_len;
  kernels::attention(a);
  Tensor o = std::move(q);  // reuse: o_proj output has width d, q has width qd == d
  kernels::linear(att.f32(), BT, qd, lw.self_attn.o, o.f32());
  kernels::add_inplace(h, o.f32(), BT * d);
}

void mlp(const LlamaConfig& cfg, const LayerWeights& lw, int64_t BT, float* h) {
  const int64_t d = cfg.hidden_size, ff = cfg.intermediate_size;
  Tensor xn = buf(BT, d), g = buf(BT, ff), u = buf(BT, ff);
  kernels::rmsnorm(h, lw.post_norm.f32(), BT, d, static_cast<float>(cfg.rms_norm_eps), xn.f32());
  kernels::linear(xn.f32(), BT, d, lw.gate, g.f32());
  kernels::linear(xn.f32(), BT, d, lw.up, u.f32());
  kernels::swiglu(g.f32(), u.f32(), BT * ff);
  kernels::linear(g.f32(), BT, ff, lw.down, xn.f32());
  kernels::add_inplace(h, xn.f32(), BT * d);
}

}  // namespace

Tensor trunk_forward(const LlamaConfig& cfg, const TrunkWeights& w, const TrunkCall& call) {
  const int64_t B = call.batch, T = call.len, BT = B * T, d = cfg.hidden_size;
  const int64_t past = call.cache ? call.cache->length : 0;
  if (call.cache) {
    check(call.cache->batch == B, "KV cache holds " + std::to_string(call.cache->batch) + " rows, call has " +
                                      std::to_string(B));
    check(past + T <= call.cache->capacity,
          "KV cache full: " + std::to_string(past) + " + " + std::to_string(T) + " tokens exceed its capacity of " +
              std::to_string(call.cache->capacity));
  }
  // The reference's rotary tables are rebuilt for the longest sequence seen (matters for dynamic NTK only).
  int64_t rope_len = past + T;
  if (call.cache) {
    rope_len = std::max(rope_len, call.cache->rope_seen);
    call.cache->rope_seen = rope_len;
  }
  const kernels::Rope rope = kernels::Rope::make(cfg, rope_len);

  Tensor h = buf(BT, d);
  kernels::embedding(w.embed, call.ids, BT, h.f32());
  for (size_t i = 0; i < w.layers.size(); ++i) {
    if (call.all_hidden) call.all_hidden->push_back(h.clone());
    const LayerWeights& lw = w.layers[i];
    self_attention(cfg, lw, i, call, rope, h.f32());
    if (lw.cross && call.cross && call.cross->states[i]) cross_attention(cfg, *lw.cross, i, *call.cross, B, T, h.f32());
    mlp(cfg, lw, BT, h.f32());
  }
  if (call.cache) call.cache->length = past + T;
  kernels::rmsnorm(h.f32(), w.norm.f32(), BT, d, static_cast<float>(cfg.rms_norm_eps), h.f32());
  if (call.all_hidden) call.all_hidden->push_back(h.clone());
  return h;
}

}  // namespace cepe
