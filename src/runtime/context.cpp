#include "cepe/context.h"

#include <cstring>
#include <map>

#include "cepe/safetensors.h"
#include "core/half.h"

namespace cepe {

namespace {
constexpr const char* kFormat = "cepe-context";
constexpr const char* kVersion = "1";
}  // namespace

ContextChunks chunk_documents(const std::vector<std::vector<int32_t>>& docs, int64_t chunk_len, int32_t pad_id) {
  check(chunk_len > 0, "chunk length must be positive");
  ContextChunks c;
  c.batch = 1;
  c.ctx_len = chunk_len;
  for (const auto& t : docs) {
    for (size_t i = 0; i < t.size(); i += static_cast<size_t>(chunk_len)) {
      for (int64_t j = 0; j < chunk_len; ++j) {
        const size_t k = i + static_cast<size_t>(j);
        c.ids.push_back(k < t.size() ? t[k] : pad_id);
        c.mask.push_back(k < t.size() ? 1 : 0);
      }
      ++c.n_ctx;
    }
  }
  return c;
}

void save_context(const std::string& path, const EncodedContext& ctx, const CepeModel& model,
                  const std::vector<std::string>& sources) {
  check(!ctx.states.empty() && ctx.mask.defined(), "save_context: the context is empty");
  // What load_context accepts: a uniform layout (combined contexts of mixed chunk lengths have ctx_len 0).
  check(ctx.n_ctx > 0 && ctx.ctx_len > 0 && ctx.n_ctx * ctx.ctx_len == ctx.keys(),
        path + ": only a context of uniform chunks can be saved (n_ctx " + std::to_string(ctx.n_ctx) + ", ctx_len " +
            std::to_string(ctx.ctx_len) + ", " + std::to_string(ctx.keys()) + " keys)");
  for (size_t e = 0; e < ctx.states.size(); ++e)
    check_finite(ctx.states[e], path + ": states." + std::to_string(e));
  std::map<std::string, Tensor> tensors;
  for (size_t e = 0; e < ctx.states.size(); ++e) tensors["states." + std::to_string(e)] = ctx.states[e];
  tensors["mask"] = ctx.mask;
  std::string src = "[";
  for (size_t i = 0; i < sources.size(); ++i) {
    src += i ? "," : "";
    src += '"';
    for (char ch : sources[i]) {
      if (ch == '"' || ch == '\\') src += '\\';
      if (static_cast<unsigned char>(ch) >= 0x20) src += ch;
    }
    src += '"';
  }
  src += "]";
  std::map<std::string, std::string> meta = {
      {"format", kFormat},
      {"version", kVersion},
      {"encoder_fingerprint", model.encoder_fingerprint()},
      {"batch", std::to_string(ctx.batch)},
      {"n_ctx", std::to_string(ctx.n_ctx)},
      {"ctx_len", std::to_string(ctx.ctx_len)},
      {"entries", std::to_string(ctx.states.size())},
      {"encode_mode", model.config().encode_mode_name},
      {"sources", src},
  };
  save_safetensors(path, tensors, meta);
}

EncodedContext load_context(const std::string& path, const CepeModel& model) {
  SafeTensors st = SafeTensors::open(path);
  const auto& meta = st.metadata();
  auto get = [&](const char* key) -> const std::string& {
    auto it = meta.find(key);
    if (it == meta.end()) throw Error(path + ": not a cepe context file (no '" + key + "' in its metadata)");
    return it->second;
  };
  if (get("format") != kFormat) throw Error(path + ": not a cepe context file (format '" + get("format") + "')");
  if (get("version") != kVersion)
    throw Error(path + ": context file version " + get("version") + " is not supported (expected " + kVersion + ")");
  const std::string want = model.encoder_fingerprint();
  if (get("encoder_fingerprint") != want)
    throw Error(path + ": encoded by a different model (encoder fingerprint " + get("encoder_fingerprint") +
                ", this model's is " + want + "); encode the context again with this model");
  auto num = [&](const char* key) {
    const std::string& v = get(key);
    try {
      size_t used = 0;
      long long x = std::stoll(v, &used);
      if (used != v.size() || x < 0) throw std::invalid_argument(v);
      return static_cast<int64_t>(x);
    } catch (const std::exception&) {
      throw Error(path + ": metadata '" + key + "' is not a count: '" + v + "'");
    }
  };
  const CepeConfig& c = model.config();
  EncodedContext ctx;
  ctx.batch = num("batch");
  ctx.n_ctx = num("n_ctx");
  ctx.ctx_len = num("ctx_len");
  const int64_t entries = num("entries");
  const int64_t want_entries = c.num_cross_attn_hidden_states > 1 ? c.encoder_trunk().num_hidden_layers + 1 : 1;
  if (entries != want_entries)
    throw Error(path + ": holds " + std::to_string(entries) + " hidden-state entries, the model reads " +
                std::to_string(want_entries));
  if (ctx.batch < 1) throw Error(path + ": metadata 'batch' is " + std::to_string(ctx.batch) + ", not a positive count");
  ctx.mask = st.get("mask");
  if (ctx.mask.dtype() != DType::U8 || ctx.mask.rank() != 2 || ctx.mask.dim(0) != ctx.batch)
    throw Error(path + ": tensor 'mask' must be U8 [batch, keys], found " + dtype_name(ctx.mask.dtype()) + " " +
                shape_str(ctx.mask.shape()));
  const int64_t K = ctx.mask.dim(1);
  for (int64_t e = 0; e < entries; ++e) {
    const std::string name = "states." + std::to_string(e);
    Tensor t = st.get(name);
    const Shape want_shape = {ctx.batch, K, c.encoder_hidden_size};
    if ((t.dtype() != DType::F32 && t.dtype() != DType::BF16) || t.shape() != want_shape)
      throw Error(path + ": tensor '" + name + "' must be F32 or BF16 " + shape_str(want_shape) + ", found " +
                  dtype_name(t.dtype()) + " " + shape_str(t.shape()));
    // Cheap next to using them, and a NaN context would otherwise be dropped silently by the absorbed kernel.
    check_finite(t, path + ": tensor '" + name + "'");
    ctx.states.push_back(t);
  }
  // Checked arithmetic: a product that wraps could otherwise equal the real key count.
  int64_t layout_keys = 0;
  if (ctx.n_ctx < 1 || ctx.ctx_len < 1 || __builtin_mul_overflow(ctx.n_ctx, ctx.ctx_len, &layout_keys) ||
      layout_keys != K)
    throw Error(path + ": metadata layout n_ctx " + std::to_string(ctx.n_ctx) + " x ctx_len " +
                std::to_string(ctx.ctx_len) + " does not match the " + std::to_string(K) + " keys of tensor 'mask'");
  for (int64_t i = 0; i < ctx.mask.numel(); ++i)
    if (ctx.mask.data<uint8_t>()[i] > 1) throw Error(path + ": tensor 'mask' holds values other than 0 and 1");
  return ctx;
}

EncodedContext concat_contexts(const std::vector<const EncodedContext*>& parts, DType dtype) {
  check(!parts.empty(), "concat_contexts: nothing to combine");
  const EncodedContext& first = *parts[0];
  int64_t K = 0, n_ctx = 0;
  int64_t ctx_len = first.ctx_len;
  for (const EncodedContext* p : parts) {
    check(p->batch == 1, "only single-row contexts can be combined");
    check(p->states.size() == first.states.size() && p->final_states().dim(2) == first.final_states().dim(2),
          "contexts with different state layouts cannot be combined");
    K += p->keys();
    n_ctx += p->n_ctx;
    if (p->ctx_len != ctx_len) ctx_len = 0;  // mixed chunk lengths
  }
  EncodedContext out;
  out.batch = 1;
  out.n_ctx = n_ctx;
  out.ctx_len = ctx_len;
  const int64_t de = first.final_states().dim(2);
  for (size_t e = 0; e < first.states.size(); ++e) {
    Tensor s = Tensor::empty(dtype, {1, K, de});
    int64_t k0 = 0;
    for (const EncodedContext* p : parts) {
      const Tensor& src = p->states[e];
      const int64_t n = src.dim(1) * de;
      char* dst = static_cast<char*>(s.raw()) + static_cast<size_t>(k0 * de) * dtype_size(dtype);
      if (src.dtype() == dtype) {
        std::memcpy(dst, src.raw(), src.nbytes());
      } else {
        Tensor f = src.dtype() == DType::F32 ? src : src.to(DType::F32);
        convert_from_f32(f.f32(), dtype, dst, n);
      }
      k0 += src.dim(1);
    }
    out.states.push_back(s);
  }
  out.mask = Tensor::empty(DType::U8, {1, K});
  int64_t k0 = 0;
  for (const EncodedContext* p : parts) {
    std::memcpy(out.mask.data<uint8_t>() + k0, p->mask.raw(), p->mask.nbytes());
    k0 += p->keys();
  }
  return out;
}

}  // namespace cepe
