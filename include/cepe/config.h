#pragma once
// Model configuration: the Hugging Face config.json of a CEPE checkpoint (LLaMA keys + the CEPE keys of
// spec §1.10, with the nested `encoder_config`). Every key that changes the math is read and validated;
// a value the reference would not accept is an error, never a silent default.
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace cepe {

enum class RopeScalingType { None, Linear, Dynamic };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::None;
  double factor = 1.0;
};

// One LLaMA trunk (the decoder, or the encoder's `encoder_config`).
struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t pretraining_tp = 1;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  std::optional<int64_t> pad_token_id;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim(); }
};

enum class EncodeMode { ContextOnly, WithQuery, WithQueryNoHid };

// `architectures[0]` of config.json: the CEPE model (LlamaForCausalContextLM, the default), a plain LLaMA
// decoder (LlamaForCausalLM: decoder pretraining) or the reference's MLM encoder (LlamaForMLM: bidirectional
// trunk + head, for encoder pretraining).
enum class Architecture { CausalContextLM, CausalLM, MaskedLM };
const char* architecture_name(Architecture a);  // the HF class name

struct CepeConfig {
  Architecture architecture = Architecture::CausalContextLM;
  LlamaConfig decoder;  // the decoder, or the MLM model's trunk
  // The separate encoder (absent when encoder_is_model or when the model has no cross-attention).
  bool has_encoder = false;
  LlamaConfig encoder;

  bool do_cross_attention = false;
  int64_t num_cross_attn_layers = 0;
  int64_t num_cross_attn_hidden_states = 1;
  int64_t encoder_hidden_size = 0;  // in-features of cross-attention k/v
  bool encoder_is_model = false;
  EncodeMode encode_mode = EncodeMode::ContextOnly;
  int64_t encode_query_tokens = 0;  // N of with_query[-no_hid]-N
  std::string encode_mode_name = "context_only";

  // Training-only keys, kept so that checkpoints round-trip.
  bool train_encoder = false;
  double lm_loss_cof = 1.0;
  double kl_loss_cof = 1.0;
  std::string kl_loss_mode = "smooth";
  std::string train_batch_mode = "none";
  bool offload_hidden_states = false;

  // Decoder layer `layer` has a cross-attention module (the last num_cross_attn_layers layers).
  bool has_cross(int64_t layer) const {
    return do_cross_attention && layer >= decoder.num_hidden_layers - num_cross_attn_layers;
  }
  // Number of encoder hidden-state entries the encoder produces (E+1 when all are kept).
  const LlamaConfig& encoder_trunk() const { return encoder_is_model ? decoder : encoder; }
};

// Parses and validates; `origin` names the source in errors (e.g. the file path).
LlamaConfig parse_llama_config(const nlohmann::json& j, const std::string& origin);
CepeConfig parse_cepe_config(const nlohmann::json& j, const std::string& origin);
CepeConfig load_cepe_config(const std::string& path);  // config.json

// The config.json of `c` with the Hugging Face key names (LlamaForCausalContextLM, nested encoder_config):
// parse_cepe_config(cepe_config_to_json(c)) gives `c` back. Keys the parser does not keep are written with
// the reference's values (hidden_act "silu", initializer_range 0.02, torch_dtype "float32"...).
nlohmann::json cepe_config_to_json(const CepeConfig& c);

}  // namespace cepe
