#include "model/presets.h"

#include "cepe/error.h"

namespace cepe {

namespace {

LlamaConfig trunk(int64_t vocab, int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads, int64_t ffn,
                  double rms_eps, int64_t max_pos) {
  LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.intermediate_size = ffn;
  c.rms_norm_eps = rms_eps;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = max_pos;
  c.tie_word_embeddings = false;
  return c;
}

// A CEPE model with cross-attention in every decoder layer (as released) reading `encoder`.
CepeConfig cepe(const LlamaConfig& decoder, const LlamaConfig& encoder) {
  CepeConfig c;
  c.decoder = decoder;
  c.encoder = encoder;
  c.has_encoder = true;
  c.do_cross_attention = true;
  c.num_cross_attn_layers = decoder.num_hidden_layers;
  c.encoder_hidden_size = encoder.hidden_size;
  return c;
}

std::vector<ModelPreset> build() {
  std::vector<ModelPreset> p;
  // spec §1.1: LLaMA-2-7B (rms 1e-5, max_pos 4096) + LLaMA-MLM-Large with the vocab of the reference's
  // mlm_config.json (32000; the released MLM checkpoint has 32001 with [MASK], never used by CEPE inputs).
  p.push_back({"cepe-llama2-7b",
               "CEPE-LLaMA-2-7B: LLaMA-2-7B decoder, cross-attention in all 32 layers, 435M LLaMA-MLM-Large encoder",
               cepe(trunk(32000, 4096, 32, 32, 32, 11008, 1e-5, 4096), trunk(32000, 1024, 24, 16, 16, 4096, 1e-6, 512))});
  p.push_back({"cepe-small", "12-layer 768-wide decoder (cross-attention in all 12), 4-layer 384-wide encoder",
               cepe(trunk(32000, 768, 12, 12, 12, 2048, 1e-5, 4096), trunk(32000, 384, 4, 6, 6, 1024, 1e-6, 512))});
  // LLaMA vocabulary, so that the real tokenizer works with it; GQA in the decoder to cover kv_dim < hidden.
  p.push_back({"cepe-tiny", "2-layer 64-wide decoder (GQA 4/2 heads), 2-layer 32-wide encoder; LLaMA vocabulary",
               cepe(trunk(32000, 64, 2, 4, 2, 176, 1e-5, 512), trunk(32000, 32, 2, 2, 2, 96, 1e-6, 256))});
  return p;
}

}  // namespace

const std::vector<ModelPreset>& model_presets() {
  static const std::vector<ModelPreset> presets = build();
  return presets;
}

const CepeConfig& preset_config(const std::string& name) {
  std::string known;
  for (const ModelPreset& p : model_presets()) {
    if (p.name == name) return p.config;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  throw Error("unknown preset '" + name + "' (known: " + known + ")");
}

}  // namespace cepe
