#include "cepe/model.h"

#include <algorithm>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/half.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rope.h"
#include "model/cross_attention.h"
#include "cepe/kv_cache.h"
#include "model/transformer.h"
#include "model/weight_store.h"
#include "model/model_impl.h"
#include "model/heads.h"
#include "model/random_init.h"
#include "core/atomic_file.h"
#include "cepe/safetensors.h"
#include <map>
#include <nlohmann/json.hpp>

namespace cepe {

CepeModel::CepeModel() = default;
CepeModel::~CepeModel() = default;

std::shared_ptr<CepeModel> CepeModel::load(const std::string& dir, const LoadOptions& opt) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) throw Error(dir + ": model directory not found");
  std::shared_ptr<CepeModel> m(new CepeModel());
  m->impl_ = std::make_unique<ModelImpl>();
  ModelImpl& im = *m->impl_;
  im.dir = dir;
  im.cfg = load_cepe_config((fs::path(dir) / "config.json").string());
  im.store = WeightStore::open(dir);
  for (const TensorEntry& e : model_tensors(im.cfg, &im.weights)) {
    // Norm vectors and biases are small: converted to f32 once (and checked for NaN). Matrices stay mapped
    // in the file's dtype unless the caller wants writable f32 copies (training).
    const bool small = e.role == TensorRole::Norm || e.role == TensorRole::Bias;
    if (small) *e.slot = im.store.get_f32(e.name, e.shape);
    else if (opt.owned_f32) *e.slot = im.store.get(e.name, e.shape).to(DType::F32);
    else *e.slot = im.store.get(e.name, e.shape);
    // Tied weights (HF ties lm_head to embed_tokens; save_pretrained usually drops the copy): a stored copy
    // must have the right shape, and is otherwise ignored.
    for (const std::string& alias : e.aliases)
      if (im.store.has(alias)) im.store.get(alias, e.shape);
  }
  bind_tied(im.cfg, im.weights);
  std::vector<std::string> extra;
  for (const std::string& n : im.store.unused())
    if (n.find("rotary_emb.inv_freq") == std::string::npos) extra.push_back(n);
  if (!extra.empty())
    std::fprintf(stderr, "warning: %s: %zu tensor(s) not used by this config, e.g. '%s'\n", dir.c_str(), extra.size(),
                 extra[0].c_str());
  return m;
}

std::shared_ptr<CepeModel> make_model(std::unique_ptr<ModelImpl> impl) {
  std::shared_ptr<CepeModel> m(new CepeModel());
  bind_tied(impl->cfg, impl->weights);
  m->impl_ = std::move(impl);
  return m;
}

std::shared_ptr<CepeModel> CepeModel::create_random(const CepeConfig& cfg, uint64_t seed, double initializer_range) {
  auto im = std::make_unique<ModelImpl>();
  im->dir = "(random init, seed " + std::to_string(seed) + ")";
  im->cfg = cfg;
  const std::vector<InitTensor> fills = checkpoint_tensors(cfg);
  const std::vector<TensorEntry> entries = model_tensors(cfg, &im->weights);
  for (size_t i = 0; i < entries.size(); ++i) {
    Tensor t = Tensor::empty(DType::F32, entries[i].shape);
    init_fill(fills[i], seed, static_cast<float>(initializer_range), DType::F32, 0, t.numel(), t.raw());
    *entries[i].slot = t;
  }
  return make_model(std::move(im));
}

void CepeModel::save(const std::string& dir, std::optional<DType> dtype) const {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create the checkpoint directory: " + ec.message());
  std::map<std::string, Tensor> tensors;
  for (const TensorEntry& e : model_tensors(impl_->cfg, &impl_->weights)) {
    tensors[e.name] = dtype && e.slot->dtype() != *dtype ? e.slot->to(*dtype) : *e.slot;
    // LlamaForMLM's lm_head.bias is lm_bias (one Parameter); the released checkpoint stores both names.
    for (const std::string& alias : e.aliases)
      if (alias == "lm_head.bias") tensors[alias] = tensors[e.name];
  }
  save_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
  nlohmann::json cfg = cepe_config_to_json(impl_->cfg);
  if (dtype == DType::BF16) cfg["torch_dtype"] = "bfloat16";
  if (dtype == DType::F16) cfg["torch_dtype"] = "float16";
  write_text_atomic((fs::path(dir) / "config.json").string(), cfg.dump(2) + "\n");
}

const CepeConfig& CepeModel::config() const { return impl_->cfg; }
const std::string& CepeModel::dir() const { return impl_->dir; }
bool CepeModel::has_context_encoder() const {
  const CepeConfig& c = impl_->cfg;
  return c.do_cross_attention && c.num_cross_attn_layers > 0;
}

void check_ids(const int32_t* ids, int64_t n, int64_t vocab, const std::string& what) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      throw Error(what + ": token id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                  " is out of range [0, " + std::to_string(vocab) + ")");
}

void CepeModel::check_decoder_ids(const int32_t* ids, int64_t n, const std::string& what) const {
  check_ids(ids, n, impl_->cfg.decoder.vocab_size, what);
}

void CepeModel::check_encoder_ids(const int32_t* ids, int64_t n, const std::string& what) const {
  check_ids(ids, n, impl_->cfg.encoder_trunk().vocab_size, what);
}

EncoderLayout encoder_layout(const CepeConfig& c, const ContextChunks& ch, const int32_t* query_ids,
                             int64_t query_stride) {
  EncoderLayout lay;
  lay.batch = ch.batch;
  lay.n_ctx = ch.n_ctx;
  lay.ctx_len = ch.ctx_len;
  check(lay.batch > 0 && lay.n_ctx > 0 && lay.ctx_len > 0, "context chunks: empty [batch, n_ctx, ctx_len]");
  const int64_t total = lay.batch * lay.n_ctx * lay.ctx_len;
  check(static_cast<int64_t>(ch.ids.size()) == total && static_cast<int64_t>(ch.mask.size()) == total,
        "context chunks: ids/mask sizes do not match [batch, n_ctx, ctx_len]");
  check_ids(ch.ids.data(), total, c.encoder_trunk().vocab_size, "encoder_input_ids");
  // with_query modes: append the first N decoder tokens (and their mask) to every chunk before encoding.
  const bool with_query = c.encode_mode != EncodeMode::ContextOnly;
  lay.query = with_query ? c.encode_query_tokens : 0;
  if (with_query) {
    check(query_ids != nullptr, "encode_mode " + c.encode_mode_name + " needs the decoder input");
    check(lay.query <= query_stride, [&] {
      return "encode_mode " + c.encode_mode_name + ": query length " + std::to_string(lay.query) +
             " is longer than input_ids (" + std::to_string(query_stride) + " tokens)";
    });
  }
  lay.len = lay.ctx_len + lay.query;
  lay.rows = lay.batch * lay.n_ctx;
  // with_query_no_hid: drop the query positions again and keep the original chunk mask.
  lay.keep = c.encode_mode == EncodeMode::WithQueryNoHid ? lay.ctx_len : lay.len;
  return lay;
}

void fill_encoder_rows(const EncoderLayout& lay, const ContextChunks& ch, const int32_t* query_ids,
                       const uint8_t* query_mask, int64_t query_stride, int64_t r0, int64_t count, int32_t* ids,
                       uint8_t* mask, int64_t* pos) {
  const int64_t len = lay.ctx_len, L = lay.len;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t r = r0 + i, b = r / lay.n_ctx;
    std::copy(ch.ids.begin() + r * len, ch.ids.begin() + (r + 1) * len, ids + i * L);
    std::copy(ch.mask.begin() + r * len, ch.mask.begin() + (r + 1) * len, mask + i * L);
    for (int64_t t = 0; t < lay.query; ++t) {
      ids[i * L + len + t] = query_ids[b * query_stride + t];
      mask[i * L + len + t] = query_mask ? query_mask[b * query_stride + t] : 1;
    }
    for (int64_t t = 0; t < L; ++t) pos[i * L + t] = t;  // positions restart per chunk
  }
}

int64_t cross_state_entry(const CepeConfig& c, int64_t layer, int64_t entries) {
  // Spec §1.6: layer i reads entry [i - L] (Python negative index, clamped at -L) of the E+1 entries.
  const int64_t L = c.decoder.num_hidden_layers;
  return entries == 1 ? 0 : entries + std::max(layer - L, -L);
}

EncodedContext CepeModel::encode(const ContextChunks& ch, const int32_t* query_ids, const uint8_t* query_mask,
                                 int64_t query_stride, const EncodeOptions& opt) const {
  const ModelImpl& im = *impl_;
  const CepeConfig& c = im.cfg;
  check(has_context_encoder(), im.dir + ": this model has no cross-attention layers, so it cannot read a context");
  check(opt.state_dtype == DType::F32 || opt.state_dtype == DType::BF16,
        std::string("context states must be stored as F32 or BF16, not ") + dtype_name(opt.state_dtype));
  const EncoderLayout lay = encoder_layout(c, ch, query_ids, query_stride);
  const int64_t B = lay.batch, n = lay.n_ctx, L = lay.len, rows = lay.rows, keep = lay.keep;
  const bool all_entries = c.num_cross_attn_hidden_states > 1;
  const LlamaConfig& ecfg = c.encoder_trunk();
  const TrunkWeights& ew = c.encoder_is_model ? im.weights.decoder : im.weights.encoder;
  const int64_t de = ecfg.hidden_size;
  const int64_t n_entries = all_entries ? ecfg.num_hidden_layers + 1 : 1;

  EncodedContext out;
  out.batch = B;
  out.n_ctx = n;
  out.ctx_len = keep;
  for (int64_t e = 0; e < n_entries; ++e) out.states.push_back(Tensor::empty(opt.state_dtype, {B, n * keep, de}));
  out.mask = Tensor::empty(DType::U8, {B, n * keep});

  // Chunks are independent: encode them pass by pass (bounded scratch), each pass a batch of whole chunks
  // run in parallel by the kernels, and store the states as they come.
  const int64_t per_pass = std::max<int64_t>(1, opt.batch_tokens / L);
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  std::vector<int64_t> pos;
  for (int64_t r0 = 0; r0 < rows; r0 += per_pass) {
    const int64_t pr = std::min(per_pass, rows - r0);
    ids.resize(static_cast<size_t>(pr * L));
    mask.resize(static_cast<size_t>(pr * L));
    pos.resize(static_cast<size_t>(pr * L));
    fill_encoder_rows(lay, ch, query_ids, query_mask, query_stride, r0, pr, ids.data(), mask.data(), pos.data());
    std::vector<Tensor> entries;
    TrunkCall call;
    call.ids = ids.data();
    call.batch = pr;
    call.len = L;
    call.positions = pos.data();
    call.key_mask = mask.data();
    // The encoder is bidirectional; encoder_is_model reuses the decoder trunk, which stays causal.
    call.causal = c.encoder_is_model;
    call.all_hidden = all_entries ? &entries : nullptr;
    Tensor last = trunk_forward(ecfg, ew, call);
    if (!all_entries) entries.push_back(last);
    // Row r of the pass is chunk r % n of batch row r / n: its kept positions go to the same place in [B, n*keep].
    for (int64_t i = 0; i < pr; ++i) {
      const int64_t r = r0 + i;
      const size_t dst = static_cast<size_t>(r * keep * de);
      for (int64_t e = 0; e < n_entries; ++e) {
        Tensor& st = out.states[static_cast<size_t>(e)];
        const float* src = entries[static_cast<size_t>(e)].f32() + i * L * de;
        // A NaN state would not fail later: masked-softmax kernels can drop it and answer as if without context.
        if (const int64_t bad = first_non_finite(src, keep * de); bad >= 0)
          throw Error("encoder states are not finite (" + std::string(std::isnan(src[bad]) ? "NaN" : "Inf") +
                      " in chunk " + std::to_string(r % n) + " of batch row " + std::to_string(r / n) + ", position " +
                      std::to_string(bad / de) + (n_entries > 1 ? ", hidden-state entry " + std::to_string(e) : "") +
                      "): the encoder's weights hold NaN/Inf or its activations overflow");
        convert_from_f32(src, st.dtype(),
                         static_cast<char*>(st.raw()) + dst * dtype_size(st.dtype()), keep * de);
      }
      std::copy(mask.begin() + i * L, mask.begin() + i * L + keep, out.mask.data<uint8_t>() + r * keep);
    }
    if (opt.progress) opt.progress(r0 + pr, rows);
  }
  return out;
}

Tensor CepeModel::decode(const int32_t* ids, int64_t batch, int64_t len, const int64_t* positions,
                         const uint8_t* attn_mask, KVCache* cache, EncodedContext* ctx,
                         const DecodeOptions& opt) const {
  const ModelImpl& im = *impl_;
  const CepeConfig& c = im.cfg;
  check_decoder_ids(ids, batch * len, "input_ids");
  CrossInput ci;
  if (ctx) {
    check(has_context_encoder(), im.dir + ": this model has no cross-attention layers, so it cannot read a context");
    check(ctx->batch == batch, "encoded context has " + std::to_string(ctx->batch) + " rows, decoder input has " +
                                   std::to_string(batch));
    const int64_t L = c.decoder.num_hidden_layers;
    const int64_t E1 = static_cast<int64_t>(ctx->states.size());
    ci.states.assign(static_cast<size_t>(L), nullptr);
    for (int64_t i = 0; i < L; ++i) {
      if (!c.has_cross(i)) continue;
      const int64_t idx = cross_state_entry(c, i, E1);
      check(idx >= 0 && idx < E1, "encoded context has too few hidden-state entries for layer " + std::to_string(i));
      const Tensor& st = ctx->states[static_cast<size_t>(idx)];
      check(st.dim(2) == c.encoder_hidden_size, "encoded context states have width " + std::to_string(st.dim(2)) +
                                                    ", the model's cross-attention reads " +
                                                    std::to_string(c.encoder_hidden_size));
      ci.states[static_cast<size_t>(i)] = &st;
    }
    ci.mask = ctx->mask.data<uint8_t>();
    ci.keys = ctx->keys();
    if (ctx->cross_k.size() != static_cast<size_t>(L)) {
      ctx->cross_k.assign(static_cast<size_t>(L), Tensor());
      ctx->cross_v.assign(static_cast<size_t>(L), Tensor());
    }
    bool cached = false;
    for (const Tensor& t : ctx->cross_k) cached = cached || t.defined();
    ci.mode = resolve_cross_attn(opt.cross_attn, c.decoder, c.encoder_hidden_size, len, cached,
                                 cross_kv_bytes(batch, ci.keys), opt.cross_kv_budget);
    ci.stats = opt.stats;
    ci.kv_k = &ctx->cross_k;
    ci.kv_v = &ctx->cross_v;
  }
  TrunkCall call;
  call.ids = ids;
  call.batch = batch;
  call.len = len;
  call.positions = positions;
  call.key_mask = attn_mask;
  call.key_mask_stride = opt.mask_stride;
  // LlamaForMLM's trunk is bidirectional (is_decoder false).
  call.causal = c.architecture != Architecture::MaskedLM;
  check(call.causal || !cache, "LlamaForMLM is bidirectional: it has no KV cache (it cannot generate)");
  call.cache = cache;
  call.cross = ctx ? &ci : nullptr;
  Tensor h = trunk_forward(c.decoder, im.weights.decoder, call);

  const int64_t d = c.decoder.hidden_size, V = c.decoder.vocab_size;
  if (opt.last_only) {
    Tensor last = Tensor::empty(DType::F32, {batch, d});
    for (int64_t b = 0; b < batch; ++b)
      std::copy(h.f32() + ((b + 1) * len - 1) * d, h.f32() + (b + 1) * len * d, last.f32() + b * d);
    Tensor logits = Tensor::empty(DType::F32, {batch, 1, V});
    head_forward(c, im.weights, last.f32(), batch, logits.f32());
    check_finite(logits, "logits [batch, last position, vocab]");
    return logits;
  }
  Tensor logits = Tensor::empty(DType::F32, {batch, len, V});
  head_forward(c, im.weights, h.f32(), batch * len, logits.f32());
  // Otherwise sampling turns NaN into token 0 and prints garbage with exit status 0.
  check_finite(logits, "logits [batch, position, vocab]");
  return logits;
}

size_t CepeModel::cross_kv_bytes(int64_t batch, int64_t keys) const {
  const CepeConfig& c = impl_->cfg;
  int64_t layers = 0;
  for (int64_t i = 0; i < c.decoder.num_hidden_layers; ++i) layers += c.has_cross(i);
  return static_cast<size_t>(layers) * 2 * static_cast<size_t>(batch * keys * c.decoder.kv_dim()) * sizeof(float);
}

const char* cross_attn_mode_name(CrossAttnMode m) {
  switch (m) {
    case CrossAttnMode::Recompute: return "recompute";
    case CrossAttnMode::Cached: return "cached";
    case CrossAttnMode::Absorbed: return "absorbed";
    case CrossAttnMode::Auto: return "auto";
  }
  return "?";
}

bool parse_cross_attn_mode(const std::string& name, CrossAttnMode* out) {
  for (CrossAttnMode m : {CrossAttnMode::Recompute, CrossAttnMode::Cached, CrossAttnMode::Absorbed, CrossAttnMode::Auto})
    if (name == cross_attn_mode_name(m)) {
      *out = m;
      return true;
    }
  return false;
}

size_t EncodedContext::state_bytes() const {
  size_t n = mask.defined() ? mask.nbytes() : 0;
  for (const Tensor& t : states) n += t.nbytes();
  return n;
}

size_t EncodedContext::cross_kv_bytes() const {
  size_t n = 0;
  for (const Tensor& t : cross_k) n += t.defined() ? t.nbytes() : 0;
  for (const Tensor& t : cross_v) n += t.defined() ? t.nbytes() : 0;
  return n;
}

std::unique_ptr<KVCache> CepeModel::make_cache(int64_t batch, int64_t capacity) const {
  const LlamaConfig& d = impl_->cfg.decoder;
  return std::make_unique<KVCache>(d.num_hidden_layers, batch, capacity, d.kv_dim());
}

void CepeModel::evict_cache(KVCache& c, int64_t keep_first, int64_t keep_last) const {
  check(keep_first >= 0 && keep_last >= 0, "evict_cache: negative counts");
  const int64_t dropped = c.length - keep_first - keep_last;
  if (dropped <= 0) return;
  const LlamaConfig& d = impl_->cfg.decoder;
  const kernels::Rope rope = kernels::Rope::make(d, std::max<int64_t>(c.rope_seen, c.length));
  const std::vector<int64_t> shift(static_cast<size_t>(keep_last), dropped);
  for (size_t l = 0; l < c.k.size(); ++l) {
    for (int64_t b = 0; b < c.batch; ++b) {
      for (Tensor* t : {&c.k[l], &c.v[l]}) {
        float* rows = t->f32() + b * c.capacity * c.kv_dim;
        std::memmove(rows + keep_first * c.kv_dim, rows + (c.length - keep_last) * c.kv_dim,
                     static_cast<size_t>(keep_last * c.kv_dim) * sizeof(float));
      }
      kernels::apply_rope(c.k[l].f32() + (b * c.capacity + keep_first) * c.kv_dim, keep_last, d.num_key_value_heads,
                          d.head_dim(), c.kv_dim, shift.data(), rope, /*inverse=*/true);
    }
  }
  c.length = keep_first + keep_last;
}

namespace {

// Bytes of the tensors whose entry passes `keep` (each weight once: tied names are aliases).
template <class Keep>
size_t tensor_bytes(ModelImpl& im, Keep keep) {
  size_t n = 0;
  for (const TensorEntry& e : model_tensors(im.cfg, &im.weights))
    if (keep(e)) n += e.slot->nbytes();
  return n;
}

}  // namespace

void CepeModel::warm_up() const {
  volatile uint8_t sink = 0;
  for (const TensorEntry& e : model_tensors(impl_->cfg, &impl_->weights)) {
    const auto* p = static_cast<const uint8_t*>(e.slot->raw());
    for (size_t i = 0; i < e.slot->nbytes(); i += 4096) sink = sink + p[i];
  }
}

size_t CepeModel::context_weight_bytes() const {
  return tensor_bytes(*impl_, [](const TensorEntry& e) { return e.group != TensorGroup::Decoder; });
}

size_t CepeModel::weight_bytes() const {
  return tensor_bytes(*impl_, [](const TensorEntry&) { return true; });
}

}  // namespace cepe

namespace cepe {

namespace {

// FNV-1a, 64 bit: small and stable across platforms (an identity check, not a security boundary).
struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
  void add(const std::string& s) { add(s.data(), s.size() + 1); }
  void add(int64_t v) { add(&v, sizeof v); }
};

void hash_tensor(Fnv& f, const std::string& name, const Tensor& t) {
  f.add(name);
  f.add(std::string(dtype_name(t.dtype())));
  for (int64_t d : t.shape()) f.add(d);
  // 64 evenly spaced 1 KiB samples: enough to tell checkpoints apart without reading gigabytes.
  const size_t bytes = t.nbytes(), sample = 1024, count = 64;
  const auto* p = static_cast<const uint8_t*>(t.raw());
  if (bytes <= sample * count) {
    f.add(p, bytes);
    return;
  }
  for (size_t i = 0; i < count; ++i) f.add(p + (bytes - sample) / (count - 1) * i, sample);
}

}  // namespace

std::string CepeModel::encoder_fingerprint() const {
  const ModelImpl& im = *impl_;
  const CepeConfig& c = im.cfg;
  Fnv f;
  const LlamaConfig& e = c.encoder_trunk();
  for (int64_t v : {e.vocab_size, e.hidden_size, e.intermediate_size, e.num_hidden_layers, e.num_attention_heads,
                    e.num_key_value_heads, e.max_position_embeddings, c.num_cross_attn_hidden_states > 1 ? int64_t{1} : 0,
                    static_cast<int64_t>(c.encoder_is_model)})
    f.add(v);
  f.add(&e.rms_norm_eps, sizeof e.rms_norm_eps);
  f.add(&e.rope_theta, sizeof e.rope_theta);
  f.add(static_cast<int64_t>(e.rope_scaling.type));
  f.add(&e.rope_scaling.factor, sizeof e.rope_scaling.factor);
  f.add(c.encode_mode_name);
  // The trunk that encodes: the encoder's tensors, or the decoder trunk's (without its cross-attention and
  // head) when the decoder is the encoder.
  for (const TensorEntry& e : model_tensors(c, &impl_->weights)) {
    const bool encodes = c.encoder_is_model ? e.group == TensorGroup::Decoder && e.name.rfind("model.", 0) == 0
                                            : e.group == TensorGroup::Encoder;
    if (encodes) hash_tensor(f, e.name, *e.slot);
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(f.h));
  return hex;
}

}  // namespace cepe
