#include "model/weights.h"

namespace cepe {

bool uses_separate_encoder(const CepeConfig& c) {
  return c.has_encoder && !c.encoder_is_model && c.do_cross_attention && c.num_cross_attn_layers > 0;
}

namespace {

struct TableBuilder {
  std::vector<TensorEntry>& out;
  void add(std::string name, Shape shape, TensorRole role, TensorGroup group, Tensor* slot) {
    TensorEntry e;
    e.name = std::move(name);
    e.shape = std::move(shape);
    e.role = role;
    e.group = group;
    e.slot = slot;
    out.push_back(std::move(e));
  }
};

void trunk(TableBuilder& b, const CepeConfig& c, const std::string& prefix, const LlamaConfig& t, bool with_cross,
           TensorGroup group, TrunkWeights* w) {
  const int64_t d = t.hidden_size, qd = t.num_attention_heads * t.head_dim(), kvd = t.kv_dim();
  const int64_t ff = t.intermediate_size;
  if (w) w->layers.resize(static_cast<size_t>(t.num_hidden_layers));
  b.add(prefix + "embed_tokens.weight", {t.vocab_size, d}, TensorRole::Embedding, group, w ? &w->embed : nullptr);
  if (t.pad_token_id && *t.pad_token_id >= 0 && *t.pad_token_id < t.vocab_size) b.out.back().padding_row = *t.pad_token_id;
  for (int64_t i = 0; i < t.num_hidden_layers; ++i) {
    const std::string p = prefix + "layers." + std::to_string(i) + ".";
    LayerWeights* l = w ? &w->layers[static_cast<size_t>(i)] : nullptr;
    auto slot = [&](Tensor LayerWeights::*m) { return l ? &(l->*m) : nullptr; };
    auto attn = [&](Tensor AttentionWeights::*m) { return l ? &(l->self_attn.*m) : nullptr; };
    b.add(p + "self_attn.q_proj.weight", {qd, d}, TensorRole::Linear, group, attn(&AttentionWeights::q));
    b.add(p + "self_attn.k_proj.weight", {kvd, d}, TensorRole::Linear, group, attn(&AttentionWeights::k));
    b.add(p + "self_attn.v_proj.weight", {kvd, d}, TensorRole::Linear, group, attn(&AttentionWeights::v));
    b.add(p + "self_attn.o_proj.weight", {d, qd}, TensorRole::Linear, group, attn(&AttentionWeights::o));
    if (with_cross && c.has_cross(i)) {
      CrossAttentionWeights* x = nullptr;
      if (l) x = l->cross ? &*l->cross : &l->cross.emplace();
      auto cs = [&](Tensor CrossAttentionWeights::*m) { return x ? &(x->*m) : nullptr; };
      const TensorGroup g = TensorGroup::CrossAttn;
      b.add(p + "cross_attn.layernorm.weight", {d}, TensorRole::Norm, g, cs(&CrossAttentionWeights::norm));
      b.add(p + "cross_attn.q_proj.weight", {qd, d}, TensorRole::Linear, g, cs(&CrossAttentionWeights::q));
      b.add(p + "cross_attn.k_proj.weight", {kvd, c.encoder_hidden_size}, TensorRole::Linear, g,
            cs(&CrossAttentionWeights::k));
      b.add(p + "cross_attn.v_proj.weight", {kvd, c.encoder_hidden_size}, TensorRole::Linear, g,
            cs(&CrossAttentionWeights::v));
      b.add(p + "cross_attn.o_proj.weight", {d, qd}, TensorRole::Linear, g, cs(&CrossAttentionWeights::o));
    } else if (l) {
      l->cross.reset();
    }
    b.add(p + "mlp.gate_proj.weight", {ff, d}, TensorRole::Linear, group, slot(&LayerWeights::gate));
    b.add(p + "mlp.up_proj.weight", {ff, d}, TensorRole::Linear, group, slot(&LayerWeights::up));
    b.add(p + "mlp.down_proj.weight", {d, ff}, TensorRole::Linear, group, slot(&LayerWeights::down));
    b.add(p + "input_layernorm.weight", {d}, TensorRole::Norm, group, slot(&LayerWeights::input_norm));
    b.add(p + "post_attention_layernorm.weight", {d}, TensorRole::Norm, group, slot(&LayerWeights::post_norm));
  }
  b.add(prefix + "norm.weight", {d}, TensorRole::Norm, group, w ? &w->norm : nullptr);
}

}  // namespace

std::vector<TensorEntry> model_tensors(const CepeConfig& c, ModelWeights* w) {
  std::vector<TensorEntry> out;
  TableBuilder b{out};
  const LlamaConfig& dec = c.decoder;
  const bool mlm = c.architecture == Architecture::MaskedLM;
  trunk(b, c, "model.", dec, !mlm, TensorGroup::Decoder, w ? &w->decoder : nullptr);
  const size_t embed = 0;  // model.embed_tokens.weight comes first
  if (mlm) {
    const int64_t d = dec.hidden_size;
    // named_parameters() order: the module's own lm_bias before its submodules; lm_head's weight and bias are
    // the embedding and lm_bias (tied), so they appear only as aliases.
    b.add("lm_bias", {dec.vocab_size}, TensorRole::Bias, TensorGroup::Decoder, w ? &w->mlm.bias : nullptr);
    out.back().aliases = {"lm_head.bias"};
    b.add("lm_dense.weight", {d, d}, TensorRole::Linear, TensorGroup::Decoder, w ? &w->mlm.dense : nullptr);
    b.add("lm_dense.bias", {d}, TensorRole::Bias, TensorGroup::Decoder, w ? &w->mlm.dense_bias : nullptr);
    b.add("lm_layer_norm.weight", {d}, TensorRole::Norm, TensorGroup::Decoder, w ? &w->mlm.norm : nullptr);
    // lm_head.weight is tied to the embedding as HF ties any head: when tie_word_embeddings (mlm_config.json).
    if (dec.tie_word_embeddings)
      out[embed].aliases = {"lm_head.weight"};
    else
      b.add("lm_head.weight", {dec.vocab_size, d}, TensorRole::Linear, TensorGroup::Decoder, w ? &w->lm_head : nullptr);
  } else if (dec.tie_word_embeddings) {
    out[embed].aliases = {"lm_head.weight"};
  } else {
    b.add("lm_head.weight", {dec.vocab_size, dec.hidden_size}, TensorRole::Linear, TensorGroup::Decoder,
          w ? &w->lm_head : nullptr);
  }
  if (uses_separate_encoder(c)) trunk(b, c, "encoder.", c.encoder, false, TensorGroup::Encoder, w ? &w->encoder : nullptr);
  return out;
}

void bind_tied(const CepeConfig& c, ModelWeights& w) {
  if (c.decoder.tie_word_embeddings) w.lm_head = w.decoder.embed;
}

}  // namespace cepe
