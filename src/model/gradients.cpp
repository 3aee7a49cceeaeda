#include "model/gradients.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "model/cross_attention.h"
#include "model/heads.h"
#include "model/model_impl.h"
#include "model/transformer.h"

namespace cepe {

namespace {
constexpr TrainableSet kTrainableSets[] = {TrainableSet::CrossAttn, TrainableSet::Encoder, TrainableSet::CrossAttnEncoder,
                                           TrainableSet::All};
}  // namespace

bool parse_trainable_set(const std::string& name, TrainableSet* out) {
  for (TrainableSet s : kTrainableSets)
    if (name == trainable_set_name(s)) {
      *out = s;
      return true;
    }
  return false;
}

const char* trainable_set_name(TrainableSet s) {
  switch (s) {
    case TrainableSet::CrossAttn: return "cross_attn";
    case TrainableSet::Encoder: return "encoder";
    case TrainableSet::CrossAttnEncoder: return "cross_attn,encoder";
    case TrainableSet::All: return "all";
  }
  return "?";
}

std::string trainable_set_names() {
  std::string names;
  const size_t n = std::size(kTrainableSets);
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) names += i + 1 == n ? " or " : ", ";
    names += trainable_set_name(kTrainableSets[i]);
  }
  return names;
}

bool is_trainable(const TensorEntry& e, TrainableSet s) {
  switch (s) {
    case TrainableSet::CrossAttn: return e.group == TensorGroup::CrossAttn;
    case TrainableSet::Encoder: return e.group == TensorGroup::Encoder;
    case TrainableSet::CrossAttnEncoder: return e.group != TensorGroup::Decoder;
    case TrainableSet::All: return true;
  }
  return false;
}

// kl_loss_mode: drop | smooth_<δ> (the reference parses δ as float(mode.split("_")[-1])).
kernels::KlMode parse_kl_mode(const std::string& mode, const std::string& origin, double* delta) {
  if (mode == "drop") return kernels::KlMode::Drop;
  if (mode.rfind("smooth_", 0) == 0) {
    const std::string v = mode.substr(7);
    size_t used = 0;
    double d = -1;
    try {
      d = std::stod(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == v.size() && !v.empty() && std::isfinite(d) && d >= 0) {
      *delta = d;
      return kernels::KlMode::Smooth;
    }
  }
  throw Error(origin + ": kl_loss_mode '" + mode + "' is not drop or smooth_<delta> with a number delta >= 0" +
              (mode == "smooth" ? " (the reference's default 'smooth' has no delta: give kl_loss_mode in the request)"
                                : ""));
}


ModelWeights make_gradients(const CepeModel& model, TrainableSet set) {
  const CepeConfig& c = model.config();
  check(set == TrainableSet::All || c.architecture == Architecture::CausalContextLM, [&] {
    return std::string(architecture_name(c.architecture)) + " has no cross-attention or encoder: the only trainable set is 'all'";
  });
  check(set != TrainableSet::Encoder || uses_separate_encoder(c),
        "this model's encoder is its own decoder (encoder_is_model): the trainable set 'encoder' would train nothing");
  ModelWeights g;
  for (const TensorEntry& e : model_tensors(c, &g))
    if (is_trainable(e, set)) *e.slot = Tensor::zeros(DType::F32, e.shape);
  return g;
}

namespace {

// The encoder pass of a training step: its input rows, the states Φ the decoder reads and, when the encoder
// trains, its activations.
struct EncoderPass {
  EncoderLayout lay;
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  std::vector<int64_t> pos;
  TrunkActivations saved;
  TrunkCall call;
  std::vector<Tensor> phi;  // per hidden-state entry: F32 [B, n_ctx·keep, enc_hidden]
  Tensor phi_mask;          // U8 [B, n_ctx·keep]
};

void run_encoder(const ModelImpl& im, const LossInput& in, const uint8_t* dec_mask, bool train, EncoderPass& ep) {
  const CepeConfig& c = im.cfg;
  const ContextChunks& ch = *in.context;
  EncoderLayout& lay = ep.lay;
  lay = encoder_layout(c, ch, in.ids, in.len);
  check(lay.batch == in.batch, [&] {
    return "encoder_input_ids: batch " + std::to_string(lay.batch) + " does not match input_ids batch " +
           std::to_string(in.batch);
  });
  const int64_t rows = lay.rows, L = lay.len, keep = lay.keep;
  ep.ids.resize(static_cast<size_t>(rows * L));
  ep.mask.resize(ep.ids.size());
  ep.pos.resize(ep.ids.size());
  fill_encoder_rows(lay, ch, in.ids, dec_mask, in.len, 0, rows, ep.ids.data(), ep.mask.data(), ep.pos.data());
  const LlamaConfig& ecfg = c.encoder_trunk();
  const TrunkWeights& ew = c.encoder_is_model ? im.weights.decoder : im.weights.encoder;
  const bool all_entries = c.num_cross_attn_hidden_states > 1;
  std::vector<Tensor> entries;
  TrunkCall& call = ep.call;
  call.ids = ep.ids.data();
  call.batch = rows;
  call.len = L;
  call.positions = ep.pos.data();
  call.key_mask = ep.mask.data();
  call.causal = c.encoder_is_model;  // the separate encoder is bidirectional
  call.all_hidden = all_entries ? &entries : nullptr;
  call.saved = train ? &ep.saved : nullptr;
  call.recompute = train && in.recompute;
  Tensor last = trunk_forward(ecfg, ew, call);
  if (!all_entries) entries.push_back(last);
  // [rows, L, de] -> [B, n_ctx·keep, de]: each chunk row keeps its first `keep` positions.
  const int64_t de = ecfg.hidden_size;
  for (const Tensor& e : entries) {
    check_finite(e, "encoder states");
    Tensor phi = Tensor::empty(DType::F32, {lay.batch, lay.n_ctx * keep, de});
    for (int64_t r = 0; r < rows; ++r)
      std::copy(e.f32() + r * L * de, e.f32() + (r * L + keep) * de, phi.f32() + r * keep * de);
    ep.phi.push_back(std::move(phi));
  }
  ep.phi_mask = Tensor::empty(DType::U8, {lay.batch, lay.n_ctx * keep});
  for (int64_t r = 0; r < rows; ++r)
    std::copy(ep.mask.begin() + r * L, ep.mask.begin() + r * L + keep, ep.phi_mask.data<uint8_t>() + r * keep);
}

size_t bytes_of(const Tensor& t) { return t.defined() ? t.nbytes() : 0; }

size_t activation_bytes(const TrunkActivations& a) {
  size_t n = bytes_of(a.last) + bytes_of(a.last_rstd);
  for (const LayerActivations& l : a.layers) {
    for (const Tensor* t : {&l.input, &l.input_rstd, &l.input_normed, &l.q, &l.k, &l.v, &l.attn, &l.attn_lse,
                            &l.attn_probs, &l.after_attn, &l.before_mlp, &l.mlp_rstd, &l.mlp_normed, &l.gate, &l.up, &l.act})
      n += bytes_of(*t);
    const CrossActivations& c = l.cross;
    for (const Tensor* t : {&c.rstd, &c.normed, &c.q, &c.k, &c.v, &c.attn, &c.lse, &c.probs}) n += bytes_of(*t);
  }
  return n;
}

}  // namespace

int64_t scored_positions(const CepeConfig& cfg, const int64_t* labels, int64_t batch, int64_t len) {
  const int64_t shift = cfg.architecture == Architecture::MaskedLM ? 0 : 1;
  int64_t n = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = shift; t < len; ++t) n += labels[b * len + t] != kernels::kIgnoreIndex;
  return n;
}

LossValue loss_and_gradients(const CepeModel& model, const LossInput& in, TrainableSet set, ModelWeights* grads) {
  const ModelImpl& im = model_impl(model);
  const CepeConfig& c = im.cfg;
  const ModelWeights& w = im.weights;
  const LlamaConfig& dec = c.decoder;
  const bool mlm = c.architecture == Architecture::MaskedLM, cepe = c.architecture == Architecture::CausalContextLM;
  const int64_t B = in.batch, T = in.len, BT = B * T, V = dec.vocab_size;
  check(B > 0 && T > 0, "loss: empty input_ids");
  check_ids(in.ids, BT, V, "input_ids");
  for (int64_t i = 0; i < BT; ++i)
    check(in.labels[i] == kernels::kIgnoreIndex || (in.labels[i] >= 0 && in.labels[i] < V), [&] {
      return "labels: " + std::to_string(in.labels[i]) + " at flat index " + std::to_string(i) +
             " is neither -100 nor a token id in [0, " + std::to_string(V) + ")";
    });
  check(cepe || !in.distill, [&] {
    return std::string(architecture_name(c.architecture)) + " takes no distillation targets (the CEPED KL is LlamaForCausalContextLM's)";
  });
  std::vector<uint8_t> ones;
  const uint8_t* mask = in.mask;
  if (!mask) {
    ones.assign(static_cast<size_t>(BT), 1);
    mask = ones.data();
  }
  std::vector<int64_t> arange;
  const int64_t* positions = in.positions;
  if (!positions) {
    arange.resize(static_cast<size_t>(BT));
    for (int64_t i = 0; i < BT; ++i) arange[static_cast<size_t>(i)] = i % T;
    positions = arange.data();
  }

  // The encoder runs with gradients only when it trains (the reference detaches Φ otherwise; with
  // encoder_is_model it is always detached, since `self.encoder` is None there).
  const bool train_encoder = grads && set != TrainableSet::CrossAttn && uses_separate_encoder(c);
  EncoderPass ep;
  CrossInput ci;
  if (in.context) {
    check(model.has_context_encoder(), im.dir + ": this model has no cross-attention layers, so it cannot read a context");
    run_encoder(im, in, mask, train_encoder, ep);
    const int64_t entries = static_cast<int64_t>(ep.phi.size());
    ci.states.assign(static_cast<size_t>(dec.num_hidden_layers), nullptr);
    for (int64_t i = 0; i < dec.num_hidden_layers; ++i)
      if (c.has_cross(i)) ci.states[static_cast<size_t>(i)] = &ep.phi[static_cast<size_t>(cross_state_entry(c, i, entries))];
    ci.mask = ep.phi_mask.data<uint8_t>();
    ci.keys = ep.phi[0].dim(1);
    ci.mode = CrossAttnMode::Recompute;
  }

  TrunkActivations saved;
  TrunkCall call;
  call.ids = in.ids;
  call.batch = B;
  call.len = T;
  call.positions = positions;
  call.key_mask = mask;
  call.causal = !mlm;  // LlamaForCausalLM is causal (train.py sets is_decoder); LlamaForMLM is not
  call.cross = in.context ? &ci : nullptr;
  call.saved = grads ? &saved : nullptr;
  call.recompute = grads && in.recompute;
  Tensor h = trunk_forward(dec, w.decoder, call);
  HeadActivations hs;
  Tensor logits = Tensor::empty(DType::F32, {BT, V});
  head_forward(c, w, h.f32(), BT, logits.f32(), grads ? &hs : nullptr);
  check_finite(logits, "logits");

  // Causal models score logits[t] against labels[t+1]; LlamaForMLM scores logits[t] against labels[t].
  std::vector<int64_t> targets(static_cast<size_t>(BT), kernels::kIgnoreIndex);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t src = mlm ? t : t + 1;
      if (src < T) targets[static_cast<size_t>(b * T + t)] = in.labels[b * T + src];
    }
  int64_t count = 0;
  for (int64_t y : targets) count += y != kernels::kIgnoreIndex;
  check(count > 0 || in.ce_normalizer > 0, "labels: no position is scored (every label is -100 after the shift)");
  const double ce_norm = in.ce_normalizer > 0 ? in.ce_normalizer : static_cast<double>(count);
  const double lm_cof = cepe ? in.lm_loss_cof : 1.0;
  Tensor dlogits = grads ? Tensor::zeros(DType::F32, {BT, V}) : Tensor();
  float* dl = grads ? dlogits.f32() : nullptr;
  LossValue out;
  const kernels::LossSum ce =
      kernels::cross_entropy(logits.f32(), BT, V, targets.data(), dl, static_cast<float>(lm_cof / ce_norm));
  out.ce_sum = ce.sum;
  out.ce = ce.sum / ce_norm;
  out.scored = count;
  out.loss = lm_cof * out.ce;
  if (in.distill && in.kl_loss_cof != 0.0) {
    const Distillation& ds = *in.distill;
    check(ds.len > 0 && ds.len <= T && ds.k > 0 && ds.k < V, [&] {
      return "distill_index: " + std::to_string(ds.len) + " positions of top-" + std::to_string(ds.k) +
             " do not fit a sequence of " + std::to_string(T) + " tokens and a vocabulary of " + std::to_string(V);
    });
    check(static_cast<int64_t>(ds.index.size()) == B * ds.len * ds.k &&
              static_cast<int64_t>(ds.prob.size()) == B * ds.len * (ds.k + 1),
          "distillation targets: sizes do not match [bsz][T][k] and [bsz][T][k+1]");
    check_ids(ds.index.data(), B * ds.len * ds.k, V, "distill_index");
    out.kl_rows = B * ds.len;
    const double rows = in.kl_normalizer > 0 ? in.kl_normalizer : static_cast<double>(B * ds.len);  // batchmean
    double kl = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t r0 = b * T + T - ds.len;  // the last ds.len positions of row b
      kl += kernels::distill_kl(logits.f32() + r0 * V, ds.len, V, ds.index.data() + b * ds.len * ds.k,
                                ds.prob.data() + b * ds.len * (ds.k + 1), ds.k, ds.mode, ds.delta,
                                dl ? dl + r0 * V : nullptr, static_cast<float>(in.kl_loss_cof / rows));
    }
    out.kl_sum = kl;
    out.kl = kl / rows;
    out.loss += in.kl_loss_cof * out.kl;
  }
  if (!grads) return out;

  out.activation_bytes = activation_bytes(saved) + activation_bytes(ep.saved) + bytes_of(hs.dense) + bytes_of(hs.act) +
                         bytes_of(hs.rstd) + bytes_of(hs.normed) + bytes_of(logits) + bytes_of(dlogits);
  for (const Tensor& p : ep.phi) out.activation_bytes += bytes_of(p);
  // Backward: head, decoder trunk (Φ's gradient when the encoder trains), then the encoder.
  Tensor dh = Tensor::empty(DType::F32, {BT, dec.hidden_size});
  head_backward(c, w, h.f32(), BT, hs, dlogits.f32(), dh.f32(), *grads);
  std::vector<Tensor> dphi;
  TrunkGradients dg;
  dg.weights = &grads->decoder;
  if (train_encoder) {
    for (const Tensor& p : ep.phi) dphi.push_back(Tensor::zeros(DType::F32, p.shape()));
    dg.cross_states.assign(static_cast<size_t>(dec.num_hidden_layers), nullptr);
    for (int64_t i = 0; i < dec.num_hidden_layers; ++i)
      if (c.has_cross(i))
        dg.cross_states[static_cast<size_t>(i)] =
            &dphi[static_cast<size_t>(cross_state_entry(c, i, static_cast<int64_t>(dphi.size())))];
  }
  trunk_backward(dec, w.decoder, call, std::move(dh), dg);
  if (!train_encoder) return out;

  // dΦ [B, n_ctx·keep, de] back to the encoder rows [rows·L, de]: the dropped query positions get none.
  const EncoderLayout& lay = ep.lay;
  const int64_t de = c.encoder.hidden_size, L = lay.len, keep = lay.keep;
  std::vector<Tensor> d_entries;
  for (const Tensor& dp : dphi) {
    Tensor full = Tensor::zeros(DType::F32, {lay.rows * L, de});
    for (int64_t r = 0; r < lay.rows; ++r)
      std::copy(dp.f32() + r * keep * de, dp.f32() + (r + 1) * keep * de, full.f32() + r * L * de);
    d_entries.push_back(std::move(full));
  }
  TrunkGradients eg;
  eg.weights = &grads->encoder;
  for (size_t e = 0; e + 1 < d_entries.size(); ++e) eg.hidden_entries.push_back(&d_entries[e]);
  trunk_backward(c.encoder, w.encoder, ep.call, std::move(d_entries.back()), eg);
  return out;
}

}  // namespace cepe
