#include "eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>

#include "cepe/error.h"

namespace cepe::eval {

const char* protocol_name(Protocol p) {
  switch (p) {
    case Protocol::Cepe: return "cepe";
    case Protocol::Vanilla: return "vanilla";
    case Protocol::Streaming: return "streaming";
    case Protocol::Replug: return "replug";
  }
  return "?";
}

std::vector<Protocol> parse_protocols(const std::string& list) {
  std::vector<Protocol> out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = list.find(',', start);
    const std::string name = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    Protocol p;
    if (name == "cepe") p = Protocol::Cepe;
    else if (name == "vanilla") p = Protocol::Vanilla;
    else if (name == "streaming") p = Protocol::Streaming;
    else if (name == "replug") p = Protocol::Replug;
    else throw Error("--protocol: unknown protocol '" + name + "' (cepe, vanilla, streaming, replug)");
    if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

namespace {

using Clock = std::chrono::steady_clock;

int64_t streaming_cache(const PerplexityOptions& o) { return o.streaming_cache > 0 ? o.streaming_cache : o.decoder_tokens / 2; }
int64_t streaming_step(const PerplexityOptions& o) { return o.streaming_step > 0 ? o.streaming_step : streaming_cache(o); }

// -log softmax(logits)[target], in double.
double token_nll(const float* logits, int64_t vocab, int32_t target) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < vocab; ++v) mx = std::max(mx, logits[v]);
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(logits[v]) - mx);
  return std::log(sum) + mx - static_cast<double>(logits[target]);
}

std::vector<int64_t> iota_positions(int64_t begin, int64_t n) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), begin);
  return p;
}

// The N context tokens before the decoder part, as chunks of C aligned to the decoder part's start (a first,
// partial chunk holds the oldest tokens, right-padded by mask).
ContextChunks context_chunks(const std::vector<int32_t>& doc, int64_t ctx_end, int64_t n, int64_t c) {
  ContextChunks ch;
  ch.batch = 1;
  ch.n_ctx = (n + c - 1) / c;
  ch.ctx_len = c;
  ch.ids.assign(static_cast<size_t>(ch.n_ctx * c), 0);
  ch.mask.assign(static_cast<size_t>(ch.n_ctx * c), 0);
  const int64_t first_len = n - (ch.n_ctx - 1) * c;
  int64_t src = ctx_end - n;
  for (int64_t k = 0; k < ch.n_ctx; ++k) {
    const int64_t len = k == 0 ? first_len : c;
    for (int64_t j = 0; j < len; ++j) {
      ch.ids[static_cast<size_t>(k * c + j)] = doc[static_cast<size_t>(src + j)];
      ch.mask[static_cast<size_t>(k * c + j)] = 1;
    }
    src += len;
  }
  return ch;
}

// The last `keys` encoder entries of `full` (whole chunks), as a context of its own.
EncodedContext last_keys(const EncodedContext& full, int64_t keys, int64_t ctx_len) {
  EncodedContext sub;
  sub.batch = 1;
  sub.ctx_len = ctx_len;
  sub.n_ctx = keys / ctx_len;
  const int64_t total = full.keys(), from = total - keys;
  for (const Tensor& s : full.states) {
    const int64_t h = s.dim(2);
    Tensor t = Tensor::empty(s.dtype(), {1, keys, h});
    const size_t row = static_cast<size_t>(h) * dtype_size(s.dtype());
    std::memcpy(t.raw(), static_cast<const char*>(s.raw()) + static_cast<size_t>(from) * row, static_cast<size_t>(keys) * row);
    sub.states.push_back(std::move(t));
  }
  sub.mask = Tensor::empty(DType::U8, {1, keys});
  std::memcpy(sub.mask.raw(), full.mask.data<uint8_t>() + from, static_cast<size_t>(keys));
  return sub;
}

// NLLs of the last E decoder tokens given logits [D, V] of the decoder part `dec`.
std::vector<double> scored_nll(const Tensor& logits, const int32_t* dec, int64_t d, int64_t e) {
  const int64_t vocab = logits.dim(2);
  std::vector<double> out;
  out.reserve(static_cast<size_t>(e));
  for (int64_t t = d - e; t < d; ++t) out.push_back(token_nll(logits.f32() + (t - 1) * vocab, vocab, dec[t]));
  return out;
}

std::vector<double> cepe_nll(const CepeModel& model, const std::vector<int32_t>& doc, int64_t end, int64_t n,
                             const PerplexityOptions& o, const EncodedContext* shared) {
  const int64_t D = o.decoder_tokens;
  const int32_t* dec = doc.data() + end - D;
  const std::vector<int64_t> pos = iota_positions(0, D);
  if (n == 0) return scored_nll(model.decode(dec, 1, D, pos.data(), nullptr, nullptr, nullptr, o.decode), dec, D, o.eval_window);
  EncodedContext ctx;
  if (shared && n % o.chunk_len == 0 && n <= shared->keys()) {
    ctx = last_keys(*shared, n, o.chunk_len);
  } else {
    const std::vector<uint8_t> qmask(static_cast<size_t>(D), 1);
    ctx = model.encode(context_chunks(doc, end - D, n, o.chunk_len), dec, qmask.data(), D, o.encode);
  }
  return scored_nll(model.decode(dec, 1, D, pos.data(), nullptr, nullptr, &ctx, o.decode), dec, D, o.eval_window);
}

// The decoder alone over tokens [begin, end) of `doc` in blocks through a KV cache; returns the NLLs of the last
// E tokens. StreamingLLM when `stream` (cache cut back to sinks + recent after every block).
std::vector<double> decoder_only_nll(const CepeModel& model, const std::vector<int32_t>& doc, int64_t begin, int64_t end,
                                     const PerplexityOptions& o, bool stream) {
  const int64_t L = end - begin, E = o.eval_window;
  const int64_t cache_len = streaming_cache(o), step = streaming_step(o);
  const int64_t first_block = stream ? std::min(L, cache_len) : std::min(L, o.decoder_tokens);
  std::unique_ptr<KVCache> cache = model.make_cache(1, stream ? cache_len + step : L);
  std::vector<double> nll(static_cast<size_t>(E), 0.0);
  DecodeOptions d = o.decode;
  int64_t at = 0;  // tokens of [begin, end) done
  // Vanilla: the blocks before the last end where the last D tokens start, so that the scored tokens and the
  // positions that predict them are all in the last block.
  const int64_t vanilla_tail = std::max<int64_t>(0, L - o.decoder_tokens);
  while (at < L) {
    int64_t n;
    if (stream) n = at == 0 ? first_block : std::min(step, L - at);
    else n = at < vanilla_tail ? std::min(o.decoder_tokens, vanilla_tail - at) : L - at;
    // Logits are needed where a position predicts a scored token: global positions L-E-1 .. L-2.
    const bool needed = at + n - 1 >= L - E - 1;
    d.last_only = !needed;
    const std::vector<int64_t> pos = iota_positions(cache->length, n);
    const Tensor logits = model.decode(doc.data() + begin + at, 1, n, pos.data(), nullptr, cache.get(), nullptr, d);
    if (needed) {
      const int64_t vocab = logits.dim(2);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t g = at + j + 1;  // the token position j predicts
        if (g >= L - E && g < L)
          nll[static_cast<size_t>(g - (L - E))] = token_nll(logits.f32() + j * vocab, vocab, doc[static_cast<size_t>(begin + g)]);
      }
    }
    at += n;
    if (stream && cache->length > cache_len) model.evict_cache(*cache, o.streaming_sinks, cache_len - o.streaming_sinks);
  }
  return nll;
}

std::vector<double> replug_nll(const CepeModel& model, const std::vector<int32_t>& doc, int64_t end, int64_t n,
                               const PerplexityOptions& o) {
  const int64_t C = o.chunk_len, Dr = o.decoder_tokens - C, E = o.eval_window, T = C + Dr;
  const int64_t text_begin = end - o.decoder_tokens - n, text_end = end - Dr;  // the text cut into chunks
  const int64_t n_chunks = (text_end - text_begin + C - 1) / C;
  const int32_t* dec = doc.data() + text_end;
  std::vector<double> lse(static_cast<size_t>(E), -std::numeric_limits<double>::infinity());
  for (int64_t first = 0; first < n_chunks; first += o.replug_batch) {
    const int64_t rows = std::min(o.replug_batch, n_chunks - first);
    std::vector<int32_t> ids(static_cast<size_t>(rows * T), 0);
    std::vector<uint8_t> mask(static_cast<size_t>(rows * T), 1);
    std::vector<int64_t> pos(static_cast<size_t>(rows * T), 0);
    for (int64_t r = 0; r < rows; ++r) {
      // Chunk k (from the end: k = 0 is the one just before the decoder part); a partial oldest chunk is
      // left-padded (mask 0), its tokens at positions 0...
      const int64_t k = first + r;
      const int64_t c_end = text_end - k * C, c_begin = std::max(text_begin, c_end - C), len = c_end - c_begin;
      const int64_t pad = C - len;
      for (int64_t j = 0; j < T; ++j) {
        const size_t at = static_cast<size_t>(r * T + j);
        if (j < pad) {
          mask[at] = 0;
          continue;
        }
        ids[at] = j < C ? doc[static_cast<size_t>(c_begin + j - pad)] : dec[j - C];
        pos[at] = j - pad;
      }
    }
    DecodeOptions d = o.decode;
    d.last_only = false;
    const Tensor logits = model.decode(ids.data(), rows, T, pos.data(), mask.data(), nullptr, nullptr, d);
    const int64_t vocab = logits.dim(2);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = Dr - E; t < Dr; ++t) {
        const double lp = -token_nll(logits.f32() + (r * T + C + t - 1) * vocab, vocab, dec[t]);
        double& s = lse[static_cast<size_t>(t - (Dr - E))];
        s = s == -std::numeric_limits<double>::infinity() ? lp : std::max(s, lp) + std::log1p(std::exp(-std::fabs(s - lp)));
      }
  }
  std::vector<double> nll(static_cast<size_t>(E));
  for (int64_t t = 0; t < E; ++t) nll[static_cast<size_t>(t)] = std::log(static_cast<double>(n_chunks)) - lse[static_cast<size_t>(t)];
  return nll;
}

void check_options(const CepeModel& model, const PerplexityOptions& o) {
  check(!o.protocols.empty() && !o.context_tokens.empty(), "perplexity: no protocol or no context length");
  check(o.decoder_tokens >= 2, "--decoder-tokens must be at least 2");
  check(o.eval_window >= 1 && o.eval_window < o.decoder_tokens, [&] {
    return "--eval-window must be in [1, decoder tokens) = [1, " + std::to_string(o.decoder_tokens) + ")";
  });
  check(o.chunk_len >= 1, "--chunk-len must be positive");
  check(o.max_windows >= 1, "--max-windows must be positive");
  for (int64_t n : o.context_tokens) check(n >= 0, "--context-tokens must not be negative");
  for (Protocol p : o.protocols) {
    if (p == Protocol::Cepe && !model.has_context_encoder() &&
        std::any_of(o.context_tokens.begin(), o.context_tokens.end(), [](int64_t n) { return n > 0; }))
      throw Error("--protocol cepe: the model has no context encoder (cross-attention); use vanilla, streaming or replug");
    if (p == Protocol::Replug)
      check(o.chunk_len + o.eval_window < o.decoder_tokens, [&] {
        return "--protocol replug puts a chunk of " + std::to_string(o.chunk_len) + " tokens before the last " +
               std::to_string(o.decoder_tokens - o.chunk_len) + " decoder tokens, which must exceed --eval-window (" +
               std::to_string(o.eval_window) + "): use a shorter --chunk-len";
      });
    if (p == Protocol::Streaming) {
      const int64_t c = streaming_cache(o);
      check(c > o.streaming_sinks && c - o.streaming_sinks >= 1, "streaming: the cache must hold more than the sinks");
    }
  }
}

}  // namespace

std::vector<Window> place_windows(const Source& source, const PerplexityOptions& o) {
  const int64_t n_max = std::max(o.place_for_context, *std::max_element(o.context_tokens.begin(), o.context_tokens.end()));
  const int64_t need = n_max + o.decoder_tokens;
  std::vector<Window> all;
  for (size_t d = 0; d < source.docs.size(); ++d)
    for (int64_t e = need; e <= static_cast<int64_t>(source.docs[d].size()); e += o.eval_window)
      all.push_back({static_cast<int64_t>(d), e});
  if (static_cast<int64_t>(all.size()) <= o.max_windows) return all;
  std::vector<Window> picked;
  const double n = static_cast<double>(all.size());
  for (int64_t i = 0; i < o.max_windows; ++i)
    picked.push_back(all[static_cast<size_t>((static_cast<double>(i) + 0.5) * n / static_cast<double>(o.max_windows))]);
  return picked;
}

std::vector<double> window_nll(const CepeModel& model, const std::vector<int32_t>& doc, int64_t end, Protocol p,
                               int64_t n, const PerplexityOptions& o) {
  check(end - o.decoder_tokens - n >= 0 && end <= static_cast<int64_t>(doc.size()), "window_nll: window outside the document");
  switch (p) {
    case Protocol::Cepe: return cepe_nll(model, doc, end, n, o, nullptr);
    case Protocol::Vanilla: return decoder_only_nll(model, doc, end - o.decoder_tokens - n, end, o, false);
    case Protocol::Streaming: return decoder_only_nll(model, doc, end - o.decoder_tokens - n, end, o, true);
    case Protocol::Replug: return replug_nll(model, doc, end, n, o);
  }
  return {};
}

void summarize(PerplexityRow& r) {
  const std::vector<double>& x = r.window_nll;
  r.windows = static_cast<int64_t>(x.size());
  r.scored_tokens = r.windows * r.eval_window;
  if (x.empty()) return;
  const double n = static_cast<double>(x.size());
  const double mean = std::accumulate(x.begin(), x.end(), 0.0) / n;
  double ss = 0;
  for (double v : x) ss += (v - mean) * (v - mean);
  const double sd = x.size() > 1 ? std::sqrt(ss / (n - 1)) : 0.0;
  // Student t quantile 0.975 by degrees of freedom (the next smaller tabulated df: conservative).
  static const std::pair<int, double> kT[] = {{1, 12.706}, {2, 4.303}, {3, 3.182}, {4, 2.776}, {5, 2.571}, {6, 2.447},
                                              {7, 2.365}, {8, 2.306}, {9, 2.262}, {10, 2.228}, {12, 2.179}, {15, 2.131},
                                              {20, 2.086}, {25, 2.060}, {30, 2.042}, {40, 2.021}, {60, 2.000}, {120, 1.980}};
  double t = 1.960;
  const int df = static_cast<int>(x.size()) - 1;
  for (const auto& [k, q] : kT)
    if (df >= k) t = q;
  if (df >= 1000) t = 1.960;
  const double half = x.size() > 1 ? t * sd / std::sqrt(n) : std::numeric_limits<double>::infinity();
  r.mean_nll = mean;
  r.ppl = std::exp(mean);
  r.ppl_lo = std::exp(mean - half);
  r.ppl_hi = std::exp(mean + half);
}

std::vector<PerplexityRow> evaluate_perplexity(const CepeModel& model, const Source& source, const PerplexityOptions& o,
                                               const PerplexityProgress& progress) {
  check_options(model, o);
  const std::vector<Window> windows = place_windows(source, o);
  if (windows.empty()) {
    const int64_t n_max = std::max(o.place_for_context, *std::max_element(o.context_tokens.begin(), o.context_tokens.end()));
    throw Error(source.name + ": no document has the " + std::to_string(n_max + o.decoder_tokens) +
                " tokens a window needs (longest context + decoder tokens)");
  }
  std::vector<PerplexityRow> rows;
  std::map<std::pair<int, int64_t>, size_t> index;
  for (Protocol p : o.protocols)
    for (int64_t n : o.context_tokens) {
      index[{static_cast<int>(p), n}] = rows.size();
      PerplexityRow r;
      r.source = source.name;
      r.protocol = p;
      r.context_tokens = n;
      r.decoder_tokens = p == Protocol::Replug ? o.decoder_tokens - o.chunk_len : o.decoder_tokens;
      r.eval_window = o.eval_window;
      rows.push_back(std::move(r));
    }
  const int64_t total = static_cast<int64_t>(windows.size() * o.protocols.size() * o.context_tokens.size());
  int64_t done = 0;
  const int64_t n_max = *std::max_element(o.context_tokens.begin(), o.context_tokens.end());
  const bool share = std::all_of(o.context_tokens.begin(), o.context_tokens.end(), [&](int64_t n) { return n % o.chunk_len == 0; });
  for (const Window& w : windows) {
    const std::vector<int32_t>& doc = source.docs[static_cast<size_t>(w.doc)];
    for (Protocol p : o.protocols) {
      // CEPE: the longest context is encoded once per window and every shorter one reads its last chunks (the
      // chunks are independent, so their states are the same): one encoder pass per window.
      EncodedContext shared;
      bool have_shared = false;
      double shared_s = 0;
      if (p == Protocol::Cepe && share && n_max > 0) {
        const auto t0 = Clock::now();
        const int32_t* dec = doc.data() + w.end - o.decoder_tokens;
        const std::vector<uint8_t> qmask(static_cast<size_t>(o.decoder_tokens), 1);
        shared = model.encode(context_chunks(doc, w.end - o.decoder_tokens, n_max, o.chunk_len), dec, qmask.data(),
                              o.decoder_tokens, o.encode);
        have_shared = true;
        shared_s = std::chrono::duration<double>(Clock::now() - t0).count();
      }
      for (int64_t n : o.context_tokens) {
        const auto t0 = Clock::now();
        PerplexityRow& r = rows[index[{static_cast<int>(p), n}]];
        const std::vector<double> nll = p == Protocol::Cepe ? cepe_nll(model, doc, w.end, n, o, have_shared ? &shared : nullptr)
                                                             : window_nll(model, doc, w.end, p, n, o);
        r.window_nll.push_back(std::accumulate(nll.begin(), nll.end(), 0.0) / static_cast<double>(nll.size()));
        // The shared encoding is charged to the longest context, which is the one that needs all of it.
        r.seconds += std::chrono::duration<double>(Clock::now() - t0).count() + (n == n_max ? shared_s : 0.0);
        if (progress) progress(++done, total);
      }
    }
  }
  for (PerplexityRow& r : rows) summarize(r);
  return rows;
}

}  // namespace cepe::eval
