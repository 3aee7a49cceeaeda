#include "train/samplers.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "cepe/error.h"

namespace cepe {

namespace {

// splitmix64's finaliser: a strong 64-bit mix, the basis of every counter-based draw here.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline uint64_t hash2(uint64_t a, uint64_t b) { return mix64(a ^ mix64(b)); }
inline uint64_t hash3(uint64_t a, uint64_t b, uint64_t c) { return hash2(hash2(a, b), c); }
inline uint64_t hash4(uint64_t a, uint64_t b, uint64_t c, uint64_t d) { return hash2(hash3(a, b, c), d); }

// Distinct purposes draw from unrelated sequences of the same seed.
enum Tag : uint64_t { kTagMixture = 0x6d6978, kTagEpoch = 0x65706f, kTagMlm = 0x6d6c6d, kTagContextMask = 0x63746d,
                   kTagContextLength = 0x63746c };

// A small counter-based generator for the draws inside one sample.
class Rng {
 public:
  explicit Rng(uint64_t key) : key_(key) {}
  uint64_t next() { return hash2(key_, counter_++); }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  // Uniform in [0, n) (multiply-shift; the bias is n / 2^64).
  uint64_t below(uint64_t n) { return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64); }

 private:
  uint64_t key_, counter_ = 0;
};

std::string stream_label(const StreamConfig& s, size_t i) {
  return "stream " + std::to_string(i) + " ('" + (s.name.empty() ? layout_name(s.layout) : s.name) + "')";
}

}  // namespace

// ------------------------------------------------------------------------------------------------ layouts

const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::Decoder: return "decoder";
    case Layout::Mlm: return "mlm";
    case Layout::Filtered: return "filtered";
    case Layout::Concat: return "concat";
    case Layout::Duplicate: return "duplicate";
  }
  return "?";
}

Layout parse_layout(const std::string& name) {
  for (Layout l : {Layout::Decoder, Layout::Mlm, Layout::Filtered, Layout::Concat, Layout::Duplicate})
    if (name == layout_name(l)) return l;
  throw Error("unknown data layout '" + name.substr(0, 40) + "' (known: decoder, mlm, filtered, concat, duplicate)");
}

bool layout_has_encoder(Layout layout) {
  return layout == Layout::Filtered || layout == Layout::Concat || layout == Layout::Duplicate;
}

// ------------------------------------------------------------------------------------------------ permutation

IndexPermutation::IndexPermutation(uint64_t n, uint64_t key) : n_(n), key_(key) {
  check(n > 0, "IndexPermutation: empty domain");
  int bits = 0;
  while (bits < 64 && (n - 1) >> bits) ++bits;
  half_bits_ = std::max(1, (bits + 1) / 2);
}

uint64_t IndexPermutation::operator()(uint64_t i) const {
  check(i < n_, [&] { return "IndexPermutation: index " + std::to_string(i) + " outside [0, " + std::to_string(n_) + ")"; });
  const uint64_t mask = (uint64_t{1} << half_bits_) - 1;
  uint64_t x = i;
  // Cycle walking: the Feistel network permutes [0, 4^half_bits), which is < 4n, so few steps land back in [0, n).
  do {
    uint64_t left = x >> half_bits_, right = x & mask;
    for (uint64_t round = 0; round < 6; ++round) {
      const uint64_t f = hash3(key_, round, right) & mask;
      const uint64_t next_right = left ^ f;
      left = right;
      right = next_right;
    }
    x = (left << half_bits_) | right;
  } while (x >= n_);
  return x;
}

// ------------------------------------------------------------------------------------------------ sampler

Sampler::Sampler(SamplerConfig config) : cfg_(std::move(config)) {
  const SamplerConfig& c = cfg_;
  check(!c.streams.empty(), "data: no streams given");
  check(c.seq_len > 0, "data: seq_len must be positive, got " + std::to_string(c.seq_len));
  check(c.world_size >= 1 && c.rank >= 0 && c.rank < c.world_size,
        "data: rank " + std::to_string(c.rank) + " is outside world size " + std::to_string(c.world_size));
  check(c.batch_size >= 1, "data: batch_size must be positive, got " + std::to_string(c.batch_size));
  check(c.max_samples >= 0, "data: max_samples must be >= 0");
  check(c.loss_window >= 0 && c.loss_window <= c.seq_len,
        "data: loss_window " + std::to_string(c.loss_window) + " is outside [0, seq_len = " + std::to_string(c.seq_len) + "]");
  auto prob_ok = [](double p) { return std::isfinite(p) && p >= 0 && p <= 1; };
  check(prob_ok(c.mlm_probability), "data: mlm_probability must be in [0, 1]");
  check(prob_ok(c.context_masking.mask_prob) && prob_ok(c.context_masking.mask_seq_prob),
        "data: mask_prob and mask_seq_prob must be in [0, 1]");

  const bool encoder = layout_has_encoder(c.streams[0].layout);
  const bool mlm = c.streams[0].layout == Layout::Mlm;
  const std::shared_ptr<const TokenFile>* first_file = nullptr;
  for (size_t i = 0; i < c.streams.size(); ++i) {
    const StreamConfig& s = c.streams[i];
    const std::string label = stream_label(s, i);
    check(layout_has_encoder(s.layout) == encoder && (s.layout == Layout::Mlm) == mlm,
          "data: " + label + " has layout " + layout_name(s.layout) + ", which cannot mix with " +
              layout_name(c.streams[0].layout) + " (the batches would differ in shape)");
    check(!s.files.empty(), "data: " + label + " has no token files");
    for (const auto& f : s.files) {
      check(f != nullptr, "data: " + label + " has a null token file");
      if (!first_file) {
        first_file = &f;
        continue;
      }
      const TokenizerIdentity &a = (*first_file)->tokenizer(), &b = f->tokenizer();
      check(a.sha256 == b.sha256 && a.vocab_size == b.vocab_size && a.bos_id == b.bos_id && a.eos_id == b.eos_id &&
                a.unk_id == b.unk_id,
            [&] {
              return "data: " + label + ": " + f->path() + " was made by a different tokenizer (sha256 " + b.sha256 +
                     ", vocab " + std::to_string(b.vocab_size) + ") than " + (*first_file)->path() + " (sha256 " +
                     a.sha256 + ", vocab " + std::to_string(a.vocab_size) + "): one sampler reads one tokenizer's ids";
            });
    }
    check(std::isfinite(s.weight) && s.weight >= 0, "data: " + label + " has a negative or non-finite weight");
    check(s.min_context_chunks == 0 || (layout_has_encoder(s.layout) && s.min_context_chunks > 0 &&
                                        s.min_context_chunks <= c.n_ctx),
          [&] {
            return "data: " + label + ": min_context_chunks " + std::to_string(s.min_context_chunks) +
                   " must be in [1, n_ctx = " + std::to_string(c.n_ctx) + "] (0 = every chunk), for a layout with an encoder";
          });
  }
  if (encoder) {
    check(c.n_ctx > 0 && c.ctx_len > 0, "data: layouts with an encoder need n_ctx > 0 and ctx_len > 0");
    check(c.n_ctx <= (int64_t{1} << 31) / c.ctx_len, "data: n_ctx x ctx_len is too large");
  } else {
    check(c.n_ctx == 0 && c.ctx_len == 0, std::string("data: n_ctx/ctx_len are only for layouts with an encoder, not ") +
                                               layout_name(c.streams[0].layout));
    check(c.context_masking.mask_prob == 0, "data: context masking needs a layout with an encoder");
  }
  check(c.context_masking.mask_prob == 0 || c.ctx_len >= 2,
        "data: context masking needs ctx_len >= 2 (it masks 1 .. ctx_len - 1 trailing tokens)");
  check(!mlm || c.loss_window == 0, "data: loss_window does not apply to the mlm layout");
  const int64_t enc_tokens = c.n_ctx * c.ctx_len;

  const TokenizerIdentity& tok = (*first_file)->tokenizer();
  mask_id_ = c.mask_id >= 0 ? c.mask_id : tok.vocab_size;
  specials_ = {tok.bos_id, tok.eos_id, mask_id_};
  if (tok.unk_id >= 0) specials_.push_back(tok.unk_id);
  specials_.insert(specials_.end(), c.extra_special_ids.begin(), c.extra_special_ids.end());
  std::sort(specials_.begin(), specials_.end());

  for (size_t i = 0; i < c.streams.size(); ++i) {
    const StreamConfig& s = c.streams[i];
    const std::string label = stream_label(s, i);
    Stream st;
    st.cfg = s;
    const bool reads_prev = s.layout == Layout::Filtered || s.layout == Layout::Concat;
    st.prev_len = s.prev_len >= 0 ? s.prev_len : (reads_prev ? enc_tokens : 0);
    check(!reads_prev || st.prev_len >= enc_tokens,
          "data: " + label + ": prev_len " + std::to_string(st.prev_len) + " is shorter than the encoder's n_ctx x ctx_len = " +
              std::to_string(enc_tokens));
    check(s.layout != Layout::Duplicate || enc_tokens <= c.seq_len,
          "data: " + label + ": duplicate needs n_ctx x ctx_len (" + std::to_string(enc_tokens) +
              ") <= seq_len (" + std::to_string(c.seq_len) + ")");
    check(st.prev_len <= std::numeric_limits<int64_t>::max() / 4 - c.seq_len, "data: " + label + ": prev_len is too large");
    st.window_len = s.window_len >= 0 ? s.window_len : st.prev_len + c.seq_len;
    check(st.window_len >= st.prev_len + c.seq_len,
          "data: " + label + ": window_len " + std::to_string(st.window_len) + " is shorter than prev_len + seq_len = " +
              std::to_string(st.prev_len + c.seq_len));
    st.stride = s.stride >= 0 ? s.stride : st.window_len - st.prev_len;
    check(st.stride >= 1, "data: " + label + ": stride must be positive");

    auto add_segment = [&](int file, int64_t start, int64_t len) {
      if (len < st.window_len) return;
      st.segments.push_back({file, start, st.windows});
      const int64_t n = (len - st.window_len) / st.stride + 1;
      check(st.windows <= std::numeric_limits<int64_t>::max() - n, "data: " + label + ": too many windows");
      st.windows += n;
    };
    for (size_t f = 0; f < s.files.size(); ++f) {
      const TokenFile& tf = *s.files[f];
      if (s.layout == Layout::Filtered) {
        for (int64_t d = 0; d < tf.n_docs(); ++d) add_segment(static_cast<int>(f), tf.doc_offsets()[d], tf.doc_length(d));
      } else {
        add_segment(static_cast<int>(f), 0, tf.n_tokens());
      }
    }
    check(st.windows > 0, [&] {
      return "data: " + label + " has no windows: " +
             (s.layout == Layout::Filtered ? "no document has" : "no file has") + " at least window_len = " +
             std::to_string(st.window_len) + " tokens (first file: " + s.files[0]->path() + ")";
    });
    streams_.push_back(std::move(st));
  }

  // Mixture blocks: integer slots per stream, proportional to the weights (or to the window counts).
  const bool any_weight = std::any_of(c.streams.begin(), c.streams.end(), [](const StreamConfig& s) { return s.weight > 0; });
  std::vector<double> w;
  for (size_t i = 0; i < streams_.size(); ++i) {
    check(!any_weight || c.streams[i].weight > 0,
          "data: " + stream_label(c.streams[i], i) + " has weight 0 while others have weights (give every stream one, or none)");
    w.push_back(any_weight ? c.streams[i].weight : static_cast<double>(streams_[i].windows));
  }
  const bool integral = std::all_of(w.begin(), w.end(), [](double x) { return x == std::floor(x) && x <= 0x1p40; });
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  for (double x : w) slots_.push_back(integral ? static_cast<int64_t>(x) : std::max<int64_t>(1, std::llround(x / total * 1e6)));
  int64_t g = 0;
  for (int64_t s : slots_) g = std::gcd(g, s);
  slot_prefix_.push_back(0);
  for (int64_t& s : slots_) s /= g, slot_prefix_.push_back(slot_prefix_.back() + s);
  block_ = slot_prefix_.back();
}

bool Sampler::has_encoder() const { return layout_has_encoder(cfg_.streams[0].layout); }

int64_t Sampler::stream_windows(int s) const { return streams_.at(static_cast<size_t>(s)).windows; }

int64_t Sampler::size() const {
  int64_t n = 0;
  for (const Stream& s : streams_) n += s.windows;
  if (!cfg_.shuffle && cfg_.max_samples > 0) n = std::min(n, cfg_.max_samples);
  return n;
}

int64_t Sampler::num_batches() const {
  if (cfg_.shuffle) return std::numeric_limits<int64_t>::max();
  const int64_t global = cfg_.world_size * cfg_.batch_size;
  return (size() + global - 1) / global;
}

SampleSource Sampler::locate(int64_t i) const {
  check(i >= 0, "data: negative sample index " + std::to_string(i));
  SampleSource src;
  int64_t window = 0;
  if (cfg_.shuffle) {
    const int64_t block = i / block_;
    const auto slot = static_cast<int64_t>(
        IndexPermutation(static_cast<uint64_t>(block_), hash3(cfg_.seed, kTagMixture, static_cast<uint64_t>(block)))(
            static_cast<uint64_t>(i % block_)));
    src.stream = static_cast<int>(std::upper_bound(slot_prefix_.begin(), slot_prefix_.end(), slot) - slot_prefix_.begin() - 1);
    src.stream_index = block * slots_[src.stream] + (slot - slot_prefix_[src.stream]);
    const int64_t n = streams_[src.stream].windows;
    src.epoch = src.stream_index / n;
    window = static_cast<int64_t>(
        IndexPermutation(static_cast<uint64_t>(n), hash4(cfg_.seed, kTagEpoch, static_cast<uint64_t>(src.stream),
                                                         static_cast<uint64_t>(src.epoch)))(
            static_cast<uint64_t>(src.stream_index % n)));
  } else {
    check(i < size(), [&] {
      return "data: eval sample " + std::to_string(i) + " is past the end (" + std::to_string(size()) + " samples)";
    });
    int64_t k = i;
    while (k >= streams_[src.stream].windows) k -= streams_[src.stream++].windows;
    src.stream_index = window = k;
  }
  const Stream& st = streams_[src.stream];
  const auto seg = std::upper_bound(st.segments.begin(), st.segments.end(), window,
                                    [](int64_t w, const Segment& s) { return w < s.first_window; }) - 1;
  src.window = window;
  src.file = seg->file;
  src.token_offset = seg->start + (window - seg->first_window) * st.stride;
  return src;
}

void Sampler::fill_row(Batch& b, int64_t row, int64_t global_index) const {
  const SampleSource src = locate(global_index);
  const Stream& st = streams_[src.stream];
  const int32_t* window = st.cfg.files[src.file]->tokens().data() + src.token_offset;
  const int64_t T = cfg_.seq_len;
  const int32_t* dec = window + st.prev_len;
  int32_t* ids = b.input_ids.data() + row * T;
  int32_t* labels = b.labels.data() + row * T;
  std::copy(dec, dec + T, ids);
  std::fill(b.attention_mask.begin() + row * T, b.attention_mask.begin() + (row + 1) * T, uint8_t{1});
  b.sample_index[row] = global_index;
  b.stream[row] = src.stream;

  if (st.cfg.layout == Layout::Mlm) {
    // MLMDataCollator.torch_mask_tokens with 100% [MASK]: one Bernoulli(p) draw per position, specials excluded.
    Rng rng(hash3(cfg_.seed, kTagMlm, static_cast<uint64_t>(global_index)));
    for (int64_t t = 0; t < T; ++t) {
      const bool draw = rng.uniform() < cfg_.mlm_probability;
      const bool special = std::binary_search(specials_.begin(), specials_.end(), ids[t]);
      if (draw && !special) {
        labels[t] = ids[t];
        ids[t] = mask_id_;
      } else {
        labels[t] = -100;
      }
    }
    return;
  }
  std::copy(dec, dec + T, labels);
  if (cfg_.loss_window > 0) std::fill(labels, labels + (T - cfg_.loss_window), -100);
  if (!has_encoder()) return;

  const int64_t E = cfg_.n_ctx * cfg_.ctx_len;
  const int32_t* enc = st.cfg.layout == Layout::Duplicate ? dec : window + st.prev_len - E;
  std::copy(enc, enc + E, b.encoder_input_ids.begin() + row * E);
  uint8_t* mask = b.encoder_attention_mask.data() + row * E;
  std::fill(mask, mask + E, uint8_t{1});
  if (cfg_.shuffle && st.cfg.min_context_chunks > 0) {
    Rng rng(hash3(cfg_.seed, kTagContextLength, static_cast<uint64_t>(global_index)));
    const auto m = static_cast<double>(st.cfg.min_context_chunks), n = static_cast<double>(cfg_.n_ctx);
    const auto kept = std::clamp(static_cast<int64_t>(std::floor(m * std::pow((n + 1) / m, rng.uniform()))),
                                 st.cfg.min_context_chunks, cfg_.n_ctx);
    std::fill(mask, mask + (cfg_.n_ctx - kept) * cfg_.ctx_len, uint8_t{0});
  }
  const ContextMasking& cm = cfg_.context_masking;
  if (cfg_.shuffle && cm.mask_prob > 0) {
    Rng rng(hash3(cfg_.seed, kTagContextMask, static_cast<uint64_t>(global_index)));
    for (int64_t c = 0; c < cfg_.n_ctx; ++c) {
      const double u = rng.uniform();
      if (u >= cm.mask_prob) continue;
      uint8_t* chunk = mask + c * cfg_.ctx_len;
      const int64_t n = u < cm.mask_prob * cm.mask_seq_prob
                            ? cfg_.ctx_len
                            : 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(cfg_.ctx_len - 1)));
      std::fill(chunk + cfg_.ctx_len - n, chunk + cfg_.ctx_len, uint8_t{0});
    }
  }
}

Batch Sampler::samples(int64_t first, int64_t count) const {
  check(first >= 0 && count >= 0, "data: negative sample range");
  check(first <= std::numeric_limits<int64_t>::max() - count, "data: sample index overflows");
  int64_t rows = count;
  if (!cfg_.shuffle) rows = std::clamp<int64_t>(size() - first, 0, count);
  Batch b;
  b.rows = rows;
  b.seq_len = cfg_.seq_len;
  const int64_t T = cfg_.seq_len;
  b.input_ids.resize(static_cast<size_t>(rows * T));
  b.labels.resize(static_cast<size_t>(rows * T));
  b.attention_mask.resize(static_cast<size_t>(rows * T));
  b.sample_index.resize(static_cast<size_t>(rows));
  b.stream.resize(static_cast<size_t>(rows));
  if (has_encoder()) {
    b.n_ctx = cfg_.n_ctx;
    b.ctx_len = cfg_.ctx_len;
    b.encoder_input_ids.resize(static_cast<size_t>(rows * cfg_.n_ctx * cfg_.ctx_len));
    b.encoder_attention_mask.resize(static_cast<size_t>(rows * cfg_.n_ctx * cfg_.ctx_len));
  }
  for (int64_t r = 0; r < rows; ++r) fill_row(b, r, first + r);
  return b;
}

Batch Sampler::batch(int64_t global_batch) const {
  check(global_batch >= 0, "data: negative batch index");
  const int64_t global = cfg_.world_size * cfg_.batch_size;
  check(global_batch <= std::numeric_limits<int64_t>::max() / global - 1, "data: batch index overflows");
  return samples(global_batch * global + cfg_.rank * cfg_.batch_size, cfg_.batch_size);
}

}  // namespace cepe
