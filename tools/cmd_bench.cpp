// cepe bench: CEPE (encode, prefill, decode per cross-attention strategy) against the same decoder with the
// same tokens in full attention, side by side, by context length. Markdown to stdout, --json rows, --plot.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cepe/context.h"
#include "cepe/kv_cache.h"
#include "cepe/model.h"
#include "commands.h"
#include "core/atomic_file.h"
#include "core/memory.h"
#include "core/plot.h"
#include "core/progress.h"
#include "kernels/cpu/gemm.h"

namespace cepe::cli {

namespace {

const char* kBenchHelp =
    "usage: cepe bench -m DIR --context-tokens N[,N...] [options]\n"
    "       cepe bench train --config CONFIG.json [options]   (the training step: cepe bench train --help)\n"
    "\n"
    "  --context-tokens LIST   context lengths to measure, e.g. 4096,32768,131072\n"
    "  --prompt-tokens N       decoder prompt tokens (default 64)\n"
    "  --gen-tokens N          tokens to decode (default 8)\n"
    "  --cross-attn LIST       strategies to measure: recompute,cached,absorbed,auto (default recompute,absorbed,cached)\n"
    "  --baseline full|none    also run the decoder with the same tokens in full attention (default none)\n"
    "  --ctx-dtype f32|bf16    storage of the encoder states (default f32)\n"
    "  --chunk-len N           encoder chunk length (default 256)\n"
    "  --batch-tokens N        encoder tokens per pass (default 4096)\n"
    "  --mem-budget SIZE       memory a run may use, e.g. 20G (default 90% of RAM); what needs more is\n"
    "                          reported as not fitting instead of being run\n"
    "  --json FILE             the rows as a JSON array\n"
    "  --plot FILE.png         throughput and memory against context length\n"
    "  --seed S, -t THREADS\n";

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Row {
  std::string mode, cross_attn;
  int64_t context_tokens = 0;
  std::optional<double> encode_tps, prefill_tps, decode_tps, cross_gflops;
  std::optional<double> peak_rss;
  double kv_bytes = 0, state_bytes = 0;
  std::string note;  // "does not fit (needs ...)" for rows that were not run
};

nlohmann::json opt_json(const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

nlohmann::json row_json(const Row& r) {
  return {{"mode", r.mode},
          {"cross_attn", r.cross_attn},
          {"context_tokens", r.context_tokens},
          {"encode_tokens_per_s", opt_json(r.encode_tps)},
          {"prefill_tokens_per_s", opt_json(r.prefill_tps)},
          {"decode_tokens_per_s", opt_json(r.decode_tps)},
          {"peak_rss_bytes", opt_json(r.peak_rss)},
          {"kv_bytes", r.kv_bytes},
          {"context_state_bytes", r.state_bytes},
          {"cross_attn_gflops", opt_json(r.cross_gflops)}};
}

std::string fmt(const std::optional<double>& v, const char* f = "%.2f") {
  if (!v) return "-";
  char b[64];
  std::snprintf(b, sizeof b, f, *v);
  return b;
}

std::vector<int64_t> parse_list(const std::string& s, const char* what) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end || v <= 0) throw Error(std::string(what) + ": '" + item + "' is not a positive count");
    out.push_back(v);
  }
  if (out.empty()) throw Error(std::string(what) + " is empty");
  return out;
}

// Activation scratch of one trunk pass of `tokens` rows (hidden, q/k/v/o, two MLP halves), in bytes.
double pass_scratch(const LlamaConfig& c, int64_t tokens) {
  return 4.0 * static_cast<double>(tokens) *
         (6.0 * static_cast<double>(c.hidden_size) + 2.0 * static_cast<double>(c.intermediate_size));
}

struct Bench {
  explicit Bench(const CepeModel& m) : model(m) {}
  const CepeModel& model;
  int64_t prompt = 64, gen = 8, chunk_len = 256;
  EncodeOptions enc;
  double budget = 0;
  std::mt19937_64 rng;

  std::vector<int32_t> random_ids(int64_t n, int64_t vocab) {
    std::uniform_int_distribution<int32_t> d(3, static_cast<int32_t>(vocab - 1));
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = d(rng);
    return v;
  }

  // Prefill `ids` (in blocks of `block` tokens, positions 0..), then decode `gen` greedy tokens.
  // Returns {prefill seconds, decode seconds}.
  std::pair<double, double> run_decoder(const std::vector<int32_t>& ids, EncodedContext* ctx, DecodeOptions opt,
                                        CrossAttnStats* decode_stats, KVCache& cache, int64_t block) {
    const int64_t T = static_cast<int64_t>(ids.size());
    std::vector<uint8_t> mask(static_cast<size_t>(cache.capacity), 1);
    opt.last_only = true;
    opt.mask_stride = cache.capacity;
    auto t0 = Clock::now();
    Tensor logits;
    for (int64_t s = 0; s < T; s += block) {
      const int64_t n = std::min(block, T - s);
      std::vector<int64_t> pos(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = s + i;
      logits = model.decode(ids.data() + s, 1, n, pos.data(), mask.data(), &cache, ctx, opt);
    }
    const double prefill_s = seconds_since(t0);
    const int64_t V = model.config().decoder.vocab_size;
    opt.stats = decode_stats;
    t0 = Clock::now();
    for (int64_t g = 0; g < gen; ++g) {
      const int32_t next = static_cast<int32_t>(std::max_element(logits.f32(), logits.f32() + V) - logits.f32());
      const int64_t pos = T + g;
      logits = model.decode(&next, 1, 1, &pos, mask.data(), &cache, ctx, opt);
    }
    return {prefill_s, seconds_since(t0)};
  }
};

std::string gb(double bytes) { return Progress::format_bytes(bytes); }

// Decode throughput and peak memory against context length, side by side, one line per mode.
void write_plot(const std::string& path, const std::vector<Row>& rows) {
  // Only measured rows are drawn; a series with nothing measured (all "does not fit") is left out.
  std::map<std::string, std::vector<const Row*>> series;
  for (const Row& r : rows)
    if (r.decode_tps) series[r.mode == "full" ? "full attention" : "CEPE " + r.cross_attn].push_back(&r);
  if (series.empty()) {
    std::fprintf(stderr, "warning: --plot: no row was measured, so there is nothing to draw\n");
    return;
  }
  plot::Figure fig{.title = "cepe bench", .width = 1200, .height = 500};
  plot::Chart speed{.title = "Decode throughput",
                    .x = {.label = "context tokens", .scale = plot::Scale::Log2},
                    .y = {.label = "decode tokens/s", .scale = plot::Scale::Log10}};
  plot::Chart memory{.title = "Peak memory",
                     .x = speed.x,
                     .y = {.label = "peak RSS (GB)", .scale = plot::Scale::Linear, .min = 0.0}};
  for (const auto& [name, rs] : series) {
    plot::Series s{.name = name, .markers = true}, m{.name = name, .markers = true};
    for (const Row* r : rs) {
      s.x.push_back(static_cast<double>(r->context_tokens));
      s.y.push_back(r->decode_tps ? *r->decode_tps : NAN);
      m.x.push_back(static_cast<double>(r->context_tokens));
      m.y.push_back(r->peak_rss ? *r->peak_rss / 1e9 : NAN);
    }
    speed.series.push_back(std::move(s));
    memory.series.push_back(std::move(m));
  }
  fig.charts = {std::move(speed), std::move(memory)};
  plot::write_png(path, fig);
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  if (argc > 0 && std::string(argv[0]) == "train") return cmd_bench_train(argc - 1, argv + 1);
  Args args(argc, argv,
            {{"--model", "-m"}, {"--context-tokens"}, {"--prompt-tokens"}, {"--gen-tokens"}, {"--cross-attn"},
             {"--baseline"}, {"--ctx-dtype"}, {"--chunk-len"}, {"--batch-tokens"}, {"--mem-budget"}, {"--json"},
             {"--plot"}, {"--seed"}, {"--threads", "-t"}},
            {{"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kBenchHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  kernels::set_num_threads(args.threads());
  const std::vector<int64_t> lengths = parse_list(args.required("--context-tokens"), "--context-tokens");
  std::vector<CrossAttnMode> modes;
  {
    std::stringstream ss(args.str("--cross-attn", "recompute,absorbed,cached"));
    std::string item;
    while (std::getline(ss, item, ',')) {
      CrossAttnMode m;
      if (!parse_cross_attn_mode(item, &m)) throw Error("--cross-attn: unknown strategy '" + item + "'");
      modes.push_back(m);
    }
  }
  const std::string baseline = args.str("--baseline", "none");
  if (baseline != "full" && baseline != "none") throw Error("--baseline must be full or none");
  auto model = CepeModel::load(args.required("--model"));
  check(model->has_context_encoder(), model->dir() + ": this model has no cross-attention to benchmark");
  const CepeConfig& cfg = model->config();
  check(cfg.encode_mode == EncodeMode::ContextOnly, "bench needs encode_mode context_only");

  Bench b(*model);
  b.prompt = args.integer("--prompt-tokens", 64, 1, 1 << 24);
  b.gen = args.integer("--gen-tokens", 8, 1, 1 << 24);
  b.chunk_len = args.integer("--chunk-len", 256, 1, 1 << 20);
  b.rng.seed(static_cast<uint64_t>(args.integer("--seed", 0, 0, std::numeric_limits<long long>::max())));
  const std::string dt = args.str("--ctx-dtype", "f32");
  if (dt == "bf16") b.enc.state_dtype = DType::BF16;
  else if (dt != "f32") throw Error("--ctx-dtype must be f32 or bf16");
  b.enc.batch_tokens = args.integer("--batch-tokens", 4096, 1, 1ll << 32);
  b.budget = args.has("--mem-budget") ? static_cast<double>(args.bytes("--mem-budget", 0))
                                      : 0.9 * static_cast<double>(total_memory_bytes());
  const double weights = static_cast<double>(model->weight_bytes());
  const LlamaConfig& dec = cfg.decoder;
  const LlamaConfig& encc = cfg.encoder_trunk();
  const double kv_per_token = 2.0 * static_cast<double>(dec.num_hidden_layers * dec.kv_dim()) * 4.0;
  const double state_per_token = static_cast<double>(cfg.encoder_hidden_size * dtype_size(b.enc.state_dtype)) *
                                 static_cast<double>(cfg.num_cross_attn_hidden_states > 1 ? encc.num_hidden_layers + 1 : 1);
  std::fprintf(stderr, "bench: %s, weights %s, memory budget %s\n", model->dir().c_str(), gb(weights).c_str(),
               gb(b.budget).c_str());

  {
    const auto t0 = Clock::now();
    model->warm_up();  // page the mapped weights in before anything is timed
    std::fprintf(stderr, "bench: weights paged in in %.1f s\n", seconds_since(t0));
  }
  std::vector<Row> rows;
  const std::vector<int32_t> prompt = [&] {
    auto p = b.random_ids(b.prompt, dec.vocab_size);
    p[0] = static_cast<int32_t>(dec.bos_token_id);
    return p;
  }();
  for (const int64_t L : lengths) {
    const int64_t n_chunks = (L + b.chunk_len - 1) / b.chunk_len;
    const double states = state_per_token * static_cast<double>(n_chunks * b.chunk_len);
    const double self_kv = kv_per_token * static_cast<double>(b.prompt + b.gen);
    const double cepe_need = weights + states + self_kv + pass_scratch(encc, b.enc.batch_tokens) +
                             pass_scratch(dec, b.prompt) + 64e6;
    std::optional<EncodedContext> ctx;
    std::optional<double> encode_tps, encode_peak;
    if (cepe_need <= b.budget) {
      std::vector<int32_t> ctx_ids = b.random_ids(L, encc.vocab_size);
      ContextChunks chunks = chunk_documents({ctx_ids}, b.chunk_len, static_cast<int32_t>(dec.eos_token_id));
      Progress bar("encode " + std::to_string(L), chunks.n_ctx, "chunks");
      EncodeOptions eo = b.enc;
      eo.progress = [&](int64_t done, int64_t) { bar.update(done); };
      reset_peak_rss();
      const auto t0 = Clock::now();
      ctx = model->encode(chunks, nullptr, nullptr, 0, eo);
      const double s = seconds_since(t0);
      bar.finish();
      encode_tps = static_cast<double>(L) / s;
      encode_peak = static_cast<double>(peak_rss_bytes());
    }
    for (CrossAttnMode mode : modes) {
      Row r;
      r.mode = "cepe";
      r.cross_attn = cross_attn_mode_name(mode);
      r.context_tokens = L;
      r.state_bytes = states;
      r.kv_bytes = self_kv;
      const double cross_kv = static_cast<double>(model->cross_kv_bytes(1, n_chunks * b.chunk_len));
      const bool caches = mode == CrossAttnMode::Cached;
      if (caches) r.kv_bytes += cross_kv;
      const double need = cepe_need + (caches ? cross_kv : 0.0);
      if (!ctx || need > b.budget) {
        r.note = "does not fit (needs " + gb(need) + ")";
        rows.push_back(r);
        std::fprintf(stderr, "bench: cepe %s at %lld tokens %s\n", r.cross_attn.c_str(), static_cast<long long>(L), r.note.c_str());
        continue;
      }
      ctx->cross_k.clear();  // every strategy starts from the states alone
      ctx->cross_v.clear();
      DecodeOptions o;
      o.cross_attn = mode;
      o.cross_kv_budget = static_cast<size_t>(std::max(0.0, b.budget - cepe_need));
      KVCache cache = std::move(*model->make_cache(1, b.prompt + b.gen));
      CrossAttnStats st;
      reset_peak_rss();
      std::fprintf(stderr, "bench: cepe %s at %lld tokens: prefill %lld + decode %lld\n", r.cross_attn.c_str(),
                   static_cast<long long>(L), static_cast<long long>(b.prompt), static_cast<long long>(b.gen));
      auto [ps, ds] = b.run_decoder(prompt, &*ctx, o, &st, cache, b.prompt);
      r.encode_tps = encode_tps;
      r.prefill_tps = static_cast<double>(b.prompt) / ps;
      r.decode_tps = static_cast<double>(b.gen) / ds;
      r.cross_gflops = st.seconds > 0 ? st.flops / st.seconds / 1e9 : 0.0;
      r.peak_rss = std::max(*encode_peak, static_cast<double>(peak_rss_bytes()));
      if (caches) r.kv_bytes = self_kv + static_cast<double>(ctx->cross_kv_bytes());
      std::fprintf(stderr, "bench: -> prefill %.2f t/s, decode %.3f t/s, cross-attn %.1f GFLOP/s, peak %s\n",
                   *r.prefill_tps, *r.decode_tps, *r.cross_gflops, gb(*r.peak_rss).c_str());
      rows.push_back(r);
    }
    ctx.reset();
    if (baseline == "full") {
      // The paper's vanilla baseline: the same context tokens in front of the prompt, full causal attention.
      Row r;
      r.mode = "full";
      r.cross_attn = "none";
      r.context_tokens = L;
      const int64_t total = L + b.prompt;
      r.kv_bytes = kv_per_token * static_cast<double>(total + b.gen);
      const int64_t block = 512;
      // Only the decoder's own weights are touched in this mode.
      const double need = weights - static_cast<double>(model->context_weight_bytes()) + r.kv_bytes + pass_scratch(dec, block) +
                          4.0 * static_cast<double>(block * (total + b.gen)) * kernels::num_threads() + 64e6;
      if (need > b.budget) {
        r.note = "does not fit (needs " + gb(need) + ")";
        std::fprintf(stderr, "bench: full attention at %lld tokens %s\n", static_cast<long long>(L), r.note.c_str());
        rows.push_back(r);
        continue;
      }
      std::vector<int32_t> ids = b.random_ids(total, dec.vocab_size);
      ids[0] = static_cast<int32_t>(dec.bos_token_id);
      KVCache cache = std::move(*model->make_cache(1, total + b.gen));
      reset_peak_rss();
      std::fprintf(stderr, "bench: full attention at %lld tokens: prefill %lld + decode %lld\n",
                   static_cast<long long>(L), static_cast<long long>(total), static_cast<long long>(b.gen));
      auto [ps, ds] = b.run_decoder(ids, nullptr, DecodeOptions{}, nullptr, cache, block);
      r.prefill_tps = static_cast<double>(total) / ps;
      r.decode_tps = static_cast<double>(b.gen) / ds;
      r.peak_rss = static_cast<double>(peak_rss_bytes());
      std::fprintf(stderr, "bench: -> prefill %.2f t/s, decode %.3f t/s, peak %s\n", *r.prefill_tps, *r.decode_tps,
                   gb(*r.peak_rss).c_str());
      rows.push_back(r);
    }
  }

  std::printf("| mode | cross_attn | context_tokens | encode t/s | prefill t/s | decode t/s | peak RSS | KV | states | cross-attn GFLOP/s |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    if (!r.note.empty()) {
      std::printf("| %s | %s | %lld | %s | | | | %s | %s | |\n", r.mode.c_str(), r.cross_attn.c_str(),
                  static_cast<long long>(r.context_tokens), r.note.c_str(), gb(r.kv_bytes).c_str(),
                  r.state_bytes > 0 ? gb(r.state_bytes).c_str() : "-");
      continue;
    }
    std::printf("| %s | %s | %lld | %s | %s | %s | %s | %s | %s | %s |\n", r.mode.c_str(), r.cross_attn.c_str(),
                static_cast<long long>(r.context_tokens), fmt(r.encode_tps, "%.1f").c_str(),
                fmt(r.prefill_tps).c_str(), fmt(r.decode_tps, "%.3f").c_str(),
                r.peak_rss ? gb(*r.peak_rss).c_str() : "-", gb(r.kv_bytes).c_str(),
                r.state_bytes > 0 ? gb(r.state_bytes).c_str() : "-", fmt(r.cross_gflops, "%.1f").c_str());
  }
  if (args.has("--json")) {
    nlohmann::json arr = nlohmann::json::array();
    for (const Row& r : rows) arr.push_back(row_json(r));
    write_text_atomic(args.str("--json"), arr.dump(2) + "\n");
  }
  if (args.has("--plot")) write_plot(args.str("--plot"), rows);
  return 0;
}

}  // namespace cepe::cli
