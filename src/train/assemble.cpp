#include "train/assemble.h"

#include <cmath>
#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include "model/model_impl.h"
#include "model/random_init.h"

namespace cepe::train {

CrossInit parse_cross_init(const std::string& name) {
  for (CrossInit m : {CrossInit::Copy, CrossInit::Zero, CrossInit::Normal, CrossInit::None})
    if (name == cross_init_name(m)) return m;
  throw Error("unknown init_mode '" + name + "' (supported: copy, zero, normal, none)");
}

const char* cross_init_name(CrossInit m) {
  switch (m) {
    case CrossInit::Copy: return "copy";
    case CrossInit::Zero: return "zero";
    case CrossInit::Normal: return "normal";
    case CrossInit::None: return "none";
  }
  return "?";
}

namespace {

// dst [rows, cols] ← src[:rows, :cols] (src has at least that many rows and columns).
void copy_slice(const Tensor& src, const Tensor& dst, const std::string& what) {
  const int64_t rows = dst.dim(0), cols = dst.rank() == 2 ? dst.dim(1) : 1;
  const int64_t src_cols = src.rank() == 2 ? src.dim(1) : 1;
  check(src.dtype() == DType::F32 && dst.dtype() == DType::F32 && src.dim(0) >= rows && src_cols >= cols, [&] {
    return "init_mode copy: " + what + " " + shape_str(dst.shape()) + " cannot be sliced from " + shape_str(src.shape()) +
           " (the reference slices the self-attention weight to [:out_features, :in_features])";
  });
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst.f32() + r * cols, src.f32() + r * src_cols, static_cast<size_t>(cols) * 4);
}

// Every tensor of a loaded model by checkpoint name, tied and stored copies under each of their names.
std::map<std::string, Tensor> tensors_by_name(const CepeModel& m) {
  std::map<std::string, Tensor> out;
  for (const TensorEntry& e : model_tensors(m.config(), &model_impl(m).weights)) {
    out[e.name] = *e.slot;
    for (const std::string& a : e.aliases) out.emplace(a, *e.slot);
  }
  return out;
}

}  // namespace

void init_cross_attention(CepeModel& model, CrossInit mode, uint64_t seed) {
  if (mode == CrossInit::None) return;
  ModelImpl& im = model_impl(model);
  for (size_t i = 0; i < im.weights.decoder.layers.size(); ++i) {
    LayerWeights& l = im.weights.decoder.layers[i];
    if (!l.cross) continue;
    CrossAttentionWeights& x = *l.cross;
    const std::string p = "layer " + std::to_string(i) + " cross_attn.";
    copy_slice(l.self_attn.q, x.q, p + "q_proj");
    copy_slice(l.self_attn.k, x.k, p + "k_proj");
    copy_slice(l.self_attn.v, x.v, p + "v_proj");
    copy_slice(l.post_norm, x.norm, p + "layernorm");
    if (mode == CrossInit::Copy) {
      copy_slice(l.self_attn.o, x.o, p + "o_proj");
    } else if (mode == CrossInit::Zero) {
      std::memset(x.o.raw(), 0, x.o.nbytes());
    } else {
      // torch.nn.init.kaiming_normal_: N(0, 2 / fan_in), fan_in = in_features (mode fan_in, a = 0).
      const float std = static_cast<float>(std::sqrt(2.0 / static_cast<double>(x.o.dim(1))));
      const std::string name = "model.layers." + std::to_string(i) + ".cross_attn.o_proj.weight";
      init_normal(init_stream_key(seed, name), std, 0, x.o.numel(), x.o.f32());
    }
  }
}

std::shared_ptr<CepeModel> assemble_cepe(const CepeAssembly& a) {
  auto dec = CepeModel::load(a.decoder, LoadOptions{.owned_f32 = true});
  const CepeConfig& dc = dec->config();
  check(dc.architecture != Architecture::MaskedLM, a.decoder + ": the decoder must be a causal LM, not LlamaForMLM");
  const bool was_cepe = dc.architecture == Architecture::CausalContextLM && dc.do_cross_attention;
  std::shared_ptr<CepeModel> enc;
  if (!a.encoder.empty()) enc = CepeModel::load(a.encoder, LoadOptions{.owned_f32 = true});

  CepeConfig c = dc;
  if (!was_cepe) {
    c.architecture = Architecture::CausalContextLM;
    c.do_cross_attention = true;
    c.num_cross_attn_layers = a.num_cross_attn_layers > 0 ? a.num_cross_attn_layers : dc.decoder.num_hidden_layers;
    check(c.num_cross_attn_layers <= dc.decoder.num_hidden_layers, "num_cross_attn_layers exceeds the decoder's layers");
    c.encode_mode_name = a.encode_mode;
    if (enc) {
      c.has_encoder = true;
      c.encoder_is_model = false;
      c.encoder = enc->config().decoder;
    } else if (a.encoder_config) {
      c.has_encoder = true;
      c.encoder_is_model = false;
      c.encoder = *a.encoder_config;
    } else {
      c.has_encoder = false;
      c.encoder_is_model = true;
    }
    c.encoder_hidden_size = c.encoder_is_model ? c.decoder.hidden_size : c.encoder.hidden_size;
    // Round trip through config.json's rules: every check the loader would make (encode_mode, widths...).
    c = parse_cepe_config(cepe_config_to_json(c), "assembled CEPE config");
  } else {
    check(a.encoder.empty() && !a.encoder_config, a.decoder +
                                                      ": is already a CEPE model with its own encoder; give no encoder");
  }
  // Every tensor gets the generic init first (new modules keep it), then the checkpoints' tensors overwrite.
  auto model = CepeModel::create_random(c, a.seed, a.initializer_range);
  ModelImpl& im = model_impl(*model);
  std::map<std::string, Tensor> from = tensors_by_name(*dec);
  if (enc) {
    check(!enc->config().do_cross_attention, a.encoder + ": the encoder checkpoint must not have cross-attention");
    // Its trunk `model.*` becomes `encoder.*`; the MLM head (lm_dense, lm_layer_norm, lm_bias) is dropped.
    for (const TensorEntry& e : model_tensors(enc->config(), &model_impl(*enc).weights))
      if (e.name.rfind("model.", 0) == 0) from["encoder." + e.name.substr(6)] = *e.slot;
  }
  for (const TensorEntry& e : model_tensors(c, &im.weights)) {
    auto it = from.find(e.name);
    if (it == from.end()) continue;  // a new module: keeps the generic init
    check(it->second.shape() == e.shape, [&] {
      return "assembling " + e.name + ": checkpoint shape " + shape_str(it->second.shape()) + " vs " + shape_str(e.shape);
    });
    std::memcpy(e.slot->raw(), it->second.raw(), e.slot->nbytes());
  }
  bind_tied(c, im.weights);
  im.dir = "(" + a.decoder + (a.encoder.empty() ? "" : " + " + a.encoder) + ")";
  if (!was_cepe) init_cross_attention(*model, a.init, a.seed);
  else if (a.init != CrossInit::None) init_cross_attention(*model, a.init, a.seed);
  return model;
}

int64_t init_from_checkpoint(CepeModel& model, const std::string& dir) {
  const auto src = CepeModel::load(dir, LoadOptions{.owned_f32 = true});
  const std::map<std::string, Tensor> from = tensors_by_name(*src);
  ModelImpl& im = model_impl(model);
  int64_t copied = 0;
  for (const TensorEntry& e : model_tensors(model.config(), &im.weights)) {
    auto it = from.find(e.name);
    if (it == from.end()) continue;
    const Tensor& s = it->second;
    Tensor& d = *e.slot;
    bool rows_only = s.rank() == d.rank() && s.rank() >= 1 && s.dim(0) <= d.dim(0);
    for (int i = 1; rows_only && i < s.rank(); ++i) rows_only = s.dim(i) == d.dim(i);
    check(rows_only && s.dtype() == DType::F32 && d.dtype() == DType::F32, [&] {
      return "init_from " + dir + ": " + e.name + " is " + shape_str(s.shape()) + " there but " + shape_str(d.shape()) +
             " in the model (only a first dimension that the model extends may differ)";
    });
    std::memcpy(d.raw(), s.raw(), s.nbytes());
    ++copied;
  }
  check(copied > 0, [&] { return "init_from " + dir + ": no tensor of that checkpoint has a name the model uses"; });
  bind_tied(model.config(), im.weights);
  return copied;
}

}  // namespace cepe::train
