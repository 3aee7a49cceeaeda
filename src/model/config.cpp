#include "cepe/config.h"

#include <cmath>
#include <limits>
#include <optional>

#include <nlohmann/json.hpp>

#include "cepe/error.h"
#include "core/json_file.h"

namespace cepe {

namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& origin, const std::string& msg) { throw Error(origin + ": " + msg); }

// Integers are bounded so that no size read from a config can overflow the arithmetic built on it (a product of
// two such values fits in int64), and a float such as 1e300 is refused before it is converted (UB otherwise).
constexpr int64_t kMaxConfigInt = std::numeric_limits<int32_t>::max();

int64_t get_int(const json& j, const char* key, int64_t def, const std::string& origin, bool required = false) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) fail(origin, std::string("missing required key '") + key + "'");
    return def;
  }
  std::optional<int64_t> v;
  if (it->is_number_unsigned()) {
    if (it->get<uint64_t>() <= static_cast<uint64_t>(kMaxConfigInt)) v = it->get<int64_t>();
  } else if (it->is_number_integer()) {
    v = it->get<int64_t>();
  } else if (it->is_number_float()) {
    const double d = it->get<double>();
    // Integral floats ("4096.0") are what some exporters write.
    if (std::abs(d) <= static_cast<double>(kMaxConfigInt) && d == std::trunc(d)) v = static_cast<int64_t>(d);
  }
  if (!v && it->is_number()) fail(origin, std::string("key '") + key + "' must be an integer of at most " +
                                              std::to_string(kMaxConfigInt) + " in magnitude, got " + json_excerpt(*it));
  if (!v) fail(origin, std::string("key '") + key + "' must be an integer, got " + json_excerpt(*it));
  if (*v < -kMaxConfigInt || *v > kMaxConfigInt)
    fail(origin, std::string("key '") + key + "' must be at most " + std::to_string(kMaxConfigInt) +
                     " in magnitude, got " + std::to_string(*v));
  return *v;
}

double get_num(const json& j, const char* key, double def, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_number()) fail(origin, std::string("key '") + key + "' must be a number, got " + json_excerpt(*it));
  return it->get<double>();
}

bool get_bool(const json& j, const char* key, bool def, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) fail(origin, std::string("key '") + key + "' must be true or false, got " + json_excerpt(*it));
  return it->get<bool>();
}

std::string get_str(const json& j, const char* key, const std::string& def, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_string()) fail(origin, std::string("key '") + key + "' must be a string, got " + json_excerpt(*it));
  return it->get<std::string>();
}

void require_positive(int64_t v, const char* key, const std::string& origin) {
  if (v <= 0) fail(origin, std::string("key '") + key + "' must be positive, got " + std::to_string(v));
}

}  // namespace

LlamaConfig parse_llama_config(const json& j, const std::string& origin) {
  if (!j.is_object()) fail(origin, "config must be a JSON object");
  LlamaConfig c;
  c.vocab_size = get_int(j, "vocab_size", 32000, origin);
  c.hidden_size = get_int(j, "hidden_size", 4096, origin);
  c.intermediate_size = get_int(j, "intermediate_size", 11008, origin);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", 32, origin);
  c.num_attention_heads = get_int(j, "num_attention_heads", 32, origin);
  // HF LlamaConfig: num_key_value_heads defaults to num_attention_heads.
  c.num_key_value_heads = get_int(j, "num_key_value_heads", c.num_attention_heads, origin);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", 2048, origin);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", 1e-6, origin);
  c.rope_theta = get_num(j, "rope_theta", 10000.0, origin);
  c.pretraining_tp = get_int(j, "pretraining_tp", 1, origin);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, origin);
  c.bos_token_id = get_int(j, "bos_token_id", 1, origin);
  c.eos_token_id = get_int(j, "eos_token_id", 2, origin);
  if (j.contains("pad_token_id") && !j["pad_token_id"].is_null()) c.pad_token_id = get_int(j, "pad_token_id", 0, origin);

  for (auto [key, v] : {std::pair{"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size},
                        {"intermediate_size", c.intermediate_size}, {"num_hidden_layers", c.num_hidden_layers},
                        {"num_attention_heads", c.num_attention_heads},
                        {"num_key_value_heads", c.num_key_value_heads},
                        {"max_position_embeddings", c.max_position_embeddings},
                        {"pretraining_tp", c.pretraining_tp}})
    require_positive(v, key, origin);
  // Token ids index the embedding. pad_token_id -1 is how older LLaMA conversions say "none".
  auto check_token = [&](int64_t id, const char* key) {
    if (id < 0 || id >= c.vocab_size)
      fail(origin, std::string("key '") + key + "' is " + std::to_string(id) + ", not a token id in [0, " +
                       std::to_string(c.vocab_size) + ")");
  };
  check_token(c.bos_token_id, "bos_token_id");
  check_token(c.eos_token_id, "eos_token_id");
  if (c.pad_token_id && *c.pad_token_id == -1) c.pad_token_id.reset();
  if (c.pad_token_id) check_token(*c.pad_token_id, "pad_token_id");
  if (c.hidden_size % c.num_attention_heads != 0)
    fail(origin, "hidden_size " + std::to_string(c.hidden_size) + " is not divisible by num_attention_heads " +
                     std::to_string(c.num_attention_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail(origin, "num_attention_heads " + std::to_string(c.num_attention_heads) +
                     " is not a multiple of num_key_value_heads " + std::to_string(c.num_key_value_heads));
  if (c.head_dim() % 2 != 0) fail(origin, "head dimension " + std::to_string(c.head_dim()) + " must be even for RoPE");
  if (!(c.rms_norm_eps > 0)) fail(origin, "rms_norm_eps must be positive");
  if (!(c.rope_theta > 0)) fail(origin, "rope_theta must be positive");

  const std::string act = get_str(j, "hidden_act", "silu", origin);
  if (act != "silu" && act != "swish")
    fail(origin, "unsupported hidden_act '" + act + "' (supported: silu)");

  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& rs = j["rope_scaling"];
    // Same rule as the reference's LlamaConfig: {"type": linear|dynamic, "factor": float > 1}.
    if (!rs.is_object()) fail(origin, "rope_scaling must be null or an object, got " + json_excerpt(rs));
    const std::string type = get_str(rs, "type", "", origin);
    if (type == "linear") c.rope_scaling.type = RopeScalingType::Linear;
    else if (type == "dynamic") c.rope_scaling.type = RopeScalingType::Dynamic;
    else fail(origin, "unsupported rope_scaling type '" + type + "' (supported: linear, dynamic)");
    if (!rs.contains("factor") || !rs["factor"].is_number())
      fail(origin, "rope_scaling.factor must be a number");
    c.rope_scaling.factor = rs["factor"].get<double>();
    if (!(c.rope_scaling.factor > 1.0))
      fail(origin, "rope_scaling.factor must be > 1, got " + json_excerpt(rs["factor"]));
  }
  return c;
}

const char* architecture_name(Architecture a) {
  switch (a) {
    case Architecture::CausalContextLM: return "LlamaForCausalContextLM";
    case Architecture::CausalLM: return "LlamaForCausalLM";
    case Architecture::MaskedLM: return "LlamaForMLM";
  }
  return "?";
}

CepeConfig parse_cepe_config(const json& j, const std::string& origin) {
  CepeConfig c;
  c.decoder = parse_llama_config(j, origin);
  if (auto it = j.find("architectures"); it != j.end() && !it->is_null()) {
    if (!it->is_array() || it->empty() || !(*it)[0].is_string())
      fail(origin, "key 'architectures' must be a list of class names, got " + json_excerpt(*it));
    const std::string name = (*it)[0].get<std::string>();
    bool known = false;
    for (Architecture a : {Architecture::CausalContextLM, Architecture::CausalLM, Architecture::MaskedLM})
      if (name == architecture_name(a)) c.architecture = a, known = true;
    if (!known)
      fail(origin, "unsupported architecture '" + name +
                       "' (supported: LlamaForCausalContextLM, LlamaForCausalLM, LlamaForMLM)");
  } else if (!j.contains("do_cross_attention")) {
    c.architecture = Architecture::CausalLM;  // a plain LLaMA config
  }
  c.do_cross_attention = get_bool(j, "do_cross_attention", false, origin);
  c.num_cross_attn_layers = get_int(j, "num_cross_attn_layers", 0, origin);
  c.num_cross_attn_hidden_states = get_int(j, "num_cross_attn_hidden_states", 1, origin);
  c.encoder_is_model = get_bool(j, "encoder_is_model", false, origin);
  c.train_encoder = get_bool(j, "train_encoder", false, origin);
  c.lm_loss_cof = get_num(j, "lm_loss_cof", 1.0, origin);
  c.kl_loss_cof = get_num(j, "kl_loss_cof", 1.0, origin);
  c.kl_loss_mode = get_str(j, "kl_loss_mode", "smooth", origin);
  c.train_batch_mode = get_str(j, "train_batch_mode", "none", origin);
  c.offload_hidden_states = get_bool(j, "offload_hidden_states", false, origin);

  if (c.num_cross_attn_layers < 0 || c.num_cross_attn_layers > c.decoder.num_hidden_layers)
    fail(origin, "num_cross_attn_layers " + std::to_string(c.num_cross_attn_layers) + " must be in [0, " +
                     std::to_string(c.decoder.num_hidden_layers) + "]");
  if (c.train_batch_mode != "none" && c.train_batch_mode != "in_batch_negative")
    fail(origin, "unsupported train_batch_mode '" + c.train_batch_mode + "' (supported: none, in_batch_negative)");
  if (c.kl_loss_mode != "drop" && c.kl_loss_mode != "smooth" && c.kl_loss_mode.rfind("smooth_", 0) != 0)
    fail(origin, "unsupported kl_loss_mode '" + c.kl_loss_mode + "' (supported: drop, smooth_<delta>)");

  // encode_mode: context_only | with_query-N | with_query_no_hid-N (the reference matches by substring;
  // anything else is rejected here instead of silently meaning context_only).
  c.encode_mode_name = get_str(j, "encode_mode", "context_only", origin);
  const std::string& m = c.encode_mode_name;
  auto parse_n = [&](const std::string& prefix) {
    const std::string n = m.substr(prefix.size());
    if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos || n.size() > 6)
      fail(origin, "encode_mode '" + m + "': expected " + prefix + "N with N a positive integer");
    int64_t v = std::stoll(n);
    if (v <= 0) fail(origin, "encode_mode '" + m + "': N must be positive");
    return v;
  };
  if (m == "context_only") {
    c.encode_mode = EncodeMode::ContextOnly;
  } else if (m.rfind("with_query_no_hid-", 0) == 0) {
    c.encode_mode = EncodeMode::WithQueryNoHid;
    c.encode_query_tokens = parse_n("with_query_no_hid-");
  } else if (m.rfind("with_query-", 0) == 0) {
    c.encode_mode = EncodeMode::WithQuery;
    c.encode_query_tokens = parse_n("with_query-");
  } else {
    fail(origin, "unsupported encode_mode '" + m + "' (supported: context_only, with_query-N, with_query_no_hid-N)");
  }

  if (c.architecture != Architecture::CausalContextLM && c.do_cross_attention)
    fail(origin, std::string(architecture_name(c.architecture)) + " has no cross-attention, but do_cross_attention is true");
  if (c.architecture == Architecture::MaskedLM && get_bool(j, "is_decoder", false, origin))
    fail(origin, "LlamaForMLM must not be a decoder (is_decoder is true)");
  const bool wants_encoder = c.do_cross_attention && c.num_cross_attn_layers > 0;
  if (c.encoder_is_model) {
    c.has_encoder = false;
  } else if (j.contains("encoder_config") && !j["encoder_config"].is_null()) {
    c.encoder = parse_llama_config(j["encoder_config"], origin + " (encoder_config)");
    c.has_encoder = true;
  } else if (wants_encoder) {
    fail(origin, "do_cross_attention is true but there is no encoder_config (and encoder_is_model is false)");
  }
  const int64_t enc_width = c.encoder_is_model ? c.decoder.hidden_size : (c.has_encoder ? c.encoder.hidden_size : 0);
  c.encoder_hidden_size = get_int(j, "encoder_hidden_size", c.decoder.hidden_size, origin);
  if (wants_encoder && c.encoder_hidden_size != enc_width)
    fail(origin, "encoder_hidden_size " + std::to_string(c.encoder_hidden_size) +
                     " does not match the encoder's hidden_size " + std::to_string(enc_width));

  if (c.num_cross_attn_hidden_states < 1)
    fail(origin, "num_cross_attn_hidden_states must be >= 1");
  if (wants_encoder && c.num_cross_attn_hidden_states > 1) {
    // Decoder layer i reads encoder entry [i - L] of the E+1 entries (spec §1.6), so the cross-attention
    // layers must not reach further back than the encoder has entries.
    const int64_t entries = c.encoder_trunk().num_hidden_layers + 1;
    if (c.num_cross_attn_layers > entries)
      fail(origin, "num_cross_attn_hidden_states > 1 with num_cross_attn_layers " +
                       std::to_string(c.num_cross_attn_layers) + " needs an encoder with at least " +
                       std::to_string(c.num_cross_attn_layers - 1) + " layers (found " +
                       std::to_string(entries - 1) + ")");
  }
  return c;
}

CepeConfig load_cepe_config(const std::string& path) {
  return parse_cepe_config(read_json_file(path, "config"), path);
}

namespace {

json llama_config_to_json(const LlamaConfig& c) {
  json j = json::object();
  j["model_type"] = "llama";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["initializer_range"] = 0.02;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["use_cache"] = true;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["pad_token_id"] = c.pad_token_id ? json(*c.pad_token_id) : json(nullptr);
  j["pretraining_tp"] = c.pretraining_tp;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type == RopeScalingType::None) {
    j["rope_scaling"] = nullptr;
  } else {
    j["rope_scaling"] = {{"type", c.rope_scaling.type == RopeScalingType::Linear ? "linear" : "dynamic"},
                         {"factor", c.rope_scaling.factor}};
  }
  j["torch_dtype"] = "float32";
  return j;
}

}  // namespace

json cepe_config_to_json(const CepeConfig& c) {
  json j = llama_config_to_json(c.decoder);
  j["architectures"] = {architecture_name(c.architecture)};
  j["is_decoder"] = c.architecture != Architecture::MaskedLM;
  if (c.architecture != Architecture::CausalContextLM) return j;  // no CEPE keys
  j["do_cross_attention"] = c.do_cross_attention;
  j["num_cross_attn_layers"] = c.num_cross_attn_layers;
  j["num_cross_attn_hidden_states"] = c.num_cross_attn_hidden_states;
  j["encoder_is_model"] = c.encoder_is_model;
  j["train_encoder"] = c.train_encoder;
  j["encoder_hidden_size"] = c.encoder_hidden_size;
  j["encode_mode"] = c.encode_mode_name;
  j["train_batch_mode"] = c.train_batch_mode;
  j["offload_hidden_states"] = c.offload_hidden_states;
  j["lm_loss_cof"] = c.lm_loss_cof;
  j["kl_loss_cof"] = c.kl_loss_cof;
  j["kl_loss_mode"] = c.kl_loss_mode;
  if (c.has_encoder) {
    json e = llama_config_to_json(c.encoder);
    e["architectures"] = {"LlamaForMLM"};
    e["is_decoder"] = false;
    e["is_encoder"] = true;
    j["encoder_config"] = std::move(e);
  } else {
    j["encoder_config"] = nullptr;
  }
  return j;
}

}  // namespace cepe
