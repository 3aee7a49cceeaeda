// cepe bench train: the trainer's optimizer step (loss_and_gradients, clip, AdamW, the code `cepe train`
// runs) on a random model built from a config.json, timed step by step, with the time and FLOPs spent in
// the GEMMs against a plain sgemm measured in the same run, peak memory and the activation bytes kept.
// bench/train_vs_torch.sh runs it interleaved with the same step in PyTorch (bench/torch_train_step.py).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cepe/config.h"
#include "cepe/model.h"
#include "commands.h"
#include "core/atomic_file.h"
#include "core/buffer_pool.h"
#include "core/cpu_features.h"
#include "core/json_file.h"
#include "core/memory.h"
#include "core/plot.h"
#include "kernels/cpu/gemm.h"
#include "model/gradients.h"
#include "train/step.h"

namespace cepe::cli {

namespace {

const char* kBenchTrainHelp =
    "usage: cepe bench train --config CONFIG.json [options]\n"
    "\n"
    "  --config FILE       a config.json (LlamaForCausalLM, LlamaForMLM or LlamaForCausalContextLM); the\n"
    "                      model is random (HF init), e.g. bench/train/decoder.json, bench/train/cepe.json\n"
    "  --batch N           rows per step (default 8)\n"
    "  --seq N             decoder tokens per row (default 256)\n"
    "  --n-ctx N           context chunks per row, CEPE models (default 8)\n"
    "  --ctx-len N         tokens per chunk (default 64)\n"
    "  --trainable SET     cross_attn | cross_attn,encoder | all (default: cross_attn,encoder for CEPE\n"
    "                      models, as the standard stage; all otherwise)\n"
    "  --recompute         keep only each layer's input in the forward, recompute the rest in the backward\n"
    "  --warmup N          untimed steps first (default 2)\n"
    "  --steps N           timed steps (default 5)\n"
    "  --no-sgemm          skip the plain sgemm reference measurement\n"
    "  --json FILE         the result as a JSON object\n"
    "  --seed S, -t THREADS\n"
    "\n"
    "       cepe bench train --report RUNS.json --json OUT.json --md OUT.md [--plot OUT.png]\n"
    "  summarises the runs bench/train_vs_torch.sh collected (this command's --json objects and\n"
    "  bench/torch_train_step.py's, each with `round` and `model`): median and spread over rounds, ratios.\n";

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median seconds of one call of `shape` on its own (fresh buffers, the BLAS threaded as in the step).
double time_sgemm(const kernels::GemmShape& s, int reps) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> a(static_cast<size_t>(s.M * s.K)), b(static_cast<size_t>(s.K * s.N)), c(static_cast<size_t>(s.M * s.N));
  for (float& x : a) x = u(rng);
  for (float& x : b) x = u(rng);
  const int64_t lda = s.trans_a ? s.M : s.K, ldb = s.trans_b ? s.K : s.N;
  kernels::gemm(s.trans_a, s.trans_b, s.M, s.N, s.K, 1.f, a.data(), lda, b.data(), ldb, 0.f, c.data(), s.N);
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    kernels::gemm(s.trans_a, s.trans_b, s.M, s.N, s.K, 1.f, a.data(), lda, b.data(), ldb, 0.f, c.data(), s.N);
    t.push_back(since(t0));
  }
  return median(t);
}

std::string isa_name() {
  const CpuFeatures& f = cpu_features();
  if (f.avx512f) return "AVX-512";
  if (f.avx2 && f.fma) return "AVX2+FMA";
  return "SSE";
}

std::string fmtd(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// median (min–max) of v, with format f.
std::string spread(const std::vector<double>& v, const char* f) {
  if (v.empty()) return "-";
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return fmtd(f, median(v)) + " (" + fmtd(f, *lo) + "–" + fmtd(f, *hi) + ")";
}

double step_median(const nlohmann::json& r) { return median(r.at("step_seconds").get<std::vector<double>>()); }

int report(const Args& args) {
  const nlohmann::json runs = read_json_file(args.required("--report"), "benchmark runs");
  nlohmann::json summary = {{"runs", runs}, {"models", nlohmann::json::object()}};
  std::ostringstream md;
  md << "| step | cepe.cpp tokens/s | PyTorch tokens/s | speed-up | GEMM GFLOP/s in the step | of sgemm 2048³ | of the "
        "same shapes alone | GEMM share of the step | peak RSS cepe.cpp | with recompute | PyTorch | activations kept | "
        "with recompute | recompute time cost |\n";
  md << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  plot::Figure fig;
  fig.title = "Training step, tokens/s by round (interleaved)";
  fig.width = 1000;
  std::string threads, isa;
  for (const std::string model : {"decoder", "cepe"}) {
    std::map<int64_t, double> ours, torch;
    std::vector<double> gemm, frac_sq, frac_sh, share, rss, act, torch_rss, rss_rc, act_rc, step_plain, step_rc;
    for (const nlohmann::json& r : runs) {
      if (r.value("model", "") != model) continue;
      const double tps = static_cast<double>(r.at("tokens_per_step").get<int64_t>()) / step_median(r);
      const int64_t round = r.value("round", int64_t{0});
      if (r.value("impl", "") == "pytorch") {
        torch[round] = tps;
        torch_rss.push_back(r.at("peak_rss_bytes").get<double>() / 1048576.0);
        continue;
      }
      threads = std::to_string(r.at("threads").get<int>());
      isa = r.at("isa").get<std::string>();
      if (r.value("recompute", false)) {
        rss_rc.push_back(r.at("peak_rss_bytes").get<double>() / 1048576.0);
        act_rc.push_back(r.at("activation_bytes").get<double>() / 1048576.0);
        step_rc.push_back(step_median(r));
        continue;
      }
      ours[round] = tps;
      step_plain.push_back(step_median(r));
      gemm.push_back(r.at("gemm_gflops").get<double>());
      frac_sq.push_back(100.0 * r.at("gemm_fraction_of_square").get<double>());
      frac_sh.push_back(100.0 * r.at("gemm_fraction_of_step_shapes").get<double>());
      share.push_back(100.0 * r.at("gemm_share_of_step").get<double>());
      rss.push_back(r.at("peak_rss_bytes").get<double>() / 1048576.0);
      act.push_back(r.at("activation_bytes").get<double>() / 1048576.0);
    }
    if (ours.empty()) continue;
    std::vector<double> o, t, ratio, xs, os, ts;
    for (const auto& [round, v] : ours) {
      o.push_back(v);
      xs.push_back(static_cast<double>(round));
      os.push_back(v);
      auto it = torch.find(round);
      ts.push_back(it == torch.end() ? std::nan("") : it->second);
      if (it != torch.end()) ratio.push_back(v / it->second);
    }
    for (const auto& [round, v] : torch) t.push_back(v);
    const double cost = step_rc.empty() ? 0 : median(step_rc) / median(step_plain) - 1.0;
    md << "| " << (model == "decoder" ? "decoder (LlamaForCausalLM, all trainable)" : "CEPE stage (decoder frozen, cross_attn,encoder)")
       << " | " << spread(o, "%.0f") << " | " << spread(t, "%.0f") << " | " << spread(ratio, "%.2fx") << " | "
       << spread(gemm, "%.0f") << " | " << spread(frac_sq, "%.0f%%") << " | " << spread(frac_sh, "%.0f%%") << " | "
       << spread(share, "%.0f%%") << " | " << fmtd("%.0f MiB", median(rss)) << " | "
       << (rss_rc.empty() ? "-" : fmtd("%.0f MiB", median(rss_rc))) << " | " << fmtd("%.0f MiB", median(torch_rss)) << " | "
       << fmtd("%.0f MiB", median(act)) << " | " << (act_rc.empty() ? "-" : fmtd("%.0f MiB", median(act_rc))) << " | "
       << (step_rc.empty() ? "-" : fmtd("%+.0f%%", 100.0 * cost)) << " |\n";
    summary["models"][model] = {{"cepe_tokens_per_s", o},           {"pytorch_tokens_per_s", t},
                                {"speedup", ratio},                 {"speedup_median", median(ratio)},
                                {"gemm_gflops", gemm},              {"gemm_percent_of_sgemm_2048", frac_sq},
                                {"gemm_percent_of_same_shapes", frac_sh}, {"gemm_percent_of_step", share},
                                {"peak_rss_mib", median(rss)},      {"peak_rss_mib_recompute", rss_rc.empty() ? 0.0 : median(rss_rc)},
                                {"pytorch_peak_rss_mib", median(torch_rss)}, {"activation_mib", median(act)},
                                {"activation_mib_recompute", act_rc.empty() ? 0.0 : median(act_rc)},
                                {"recompute_time_cost", cost}};
    plot::Chart ch;
    ch.title = model == "decoder" ? "decoder step (6 x 256, 8 x 256 tokens)" : "CEPE-stage step (+ 8 x 64 context)";
    ch.x.label = "round";
    ch.x.integer = true;
    ch.y.label = "tokens/s";
    ch.y.min = 0.0;
    ch.series.push_back({"cepe.cpp", xs, os, true});
    ch.series.push_back({"PyTorch (reference code)", xs, ts, true});
    fig.charts.push_back(ch);
  }
  md << "\nMedian (min–max) over the rounds; speed-up = cepe.cpp / PyTorch tokens/s of the same round. " << threads
     << " threads, " << isa << ".\n";
  summary["threads"] = threads;
  summary["isa"] = isa;
  std::fputs(md.str().c_str(), stdout);
  if (args.has("--md")) write_text_atomic(args.str("--md"), md.str());
  if (args.has("--json")) write_text_atomic(args.str("--json"), summary.dump(1) + "\n");
  if (args.has("--plot") && !fig.charts.empty()) plot::write_png(args.str("--plot"), fig);
  return 0;
}

}  // namespace

int cmd_bench_train(int argc, char** argv) {
  if (argc > 0 && (std::string(argv[0]) == "-h" || std::string(argv[0]) == "--help")) {
    std::fputs(kBenchTrainHelp, stdout);
    return 0;
  }
  Args args(argc, argv,
            {{"--config"}, {"--batch"}, {"--seq"}, {"--n-ctx"}, {"--ctx-len"}, {"--trainable"}, {"--warmup"},
             {"--steps"}, {"--json"}, {"--seed"}, {"-t", "--threads"}, {"--report"}, {"--md"}, {"--plot"}},
            {{"--recompute"}, {"--no-sgemm"}});
  if (args.has("--report")) return report(args);
  kernels::set_num_threads(args.threads());
  const std::string config_path = args.required("--config");
  const CepeConfig cfg = load_cepe_config(config_path);
  const bool cepe = cfg.architecture == Architecture::CausalContextLM;
  const int64_t B = args.integer("--batch", 8, 1, 1 << 20), T = args.integer("--seq", 256, 2, 1 << 24);
  const int64_t n_ctx = cepe ? args.integer("--n-ctx", 8, 1, 1 << 20) : 0;
  const int64_t ctx_len = cepe ? args.integer("--ctx-len", 64, 1, 1 << 24) : 0;
  const int warmup = static_cast<int>(args.integer("--warmup", 2, 0, 1000));
  const int steps = static_cast<int>(args.integer("--steps", 5, 1, 100000));
  const uint64_t seed = static_cast<uint64_t>(args.integer("--seed", 0, 0, 1LL << 62));
  TrainableSet set = cepe ? TrainableSet::CrossAttnEncoder : TrainableSet::All;
  if (args.has("--trainable") && !parse_trainable_set(args.str("--trainable"), &set))
    throw Error("--trainable: must be " + trainable_set_names());

  auto model = CepeModel::create_random(cfg, seed);
  ModelWeights grads = make_gradients(*model, set);
  const std::vector<train::ParamSlot> slots = train::param_slots(*model, grads);
  int64_t trainable = 0;
  for (const train::ParamSlot& s : slots) trainable += s.numel();
  train::AdamW adam(slots, train::AdamWConfig{});  // torch's defaults, weight decay 0 (as the PyTorch side)
  const ScopedBufferPool pool;  // as `cepe train`

  const int64_t V = cfg.decoder.vocab_size;
  std::mt19937_64 rng(seed + 1);
  std::uniform_int_distribution<int32_t> tok(3, static_cast<int32_t>(V - 1));
  std::vector<int32_t> ids(static_cast<size_t>(B * T));
  for (int32_t& x : ids) x = tok(rng);
  std::vector<int64_t> labels(ids.begin(), ids.end());
  ContextChunks chunks;
  LossInput in;
  in.ids = ids.data();
  in.batch = B;
  in.len = T;
  in.labels = labels.data();
  in.recompute = args.has("--recompute");
  if (cepe) {
    chunks.batch = B;
    chunks.n_ctx = n_ctx;
    chunks.ctx_len = ctx_len;
    chunks.ids.resize(static_cast<size_t>(B * n_ctx * ctx_len));
    for (int32_t& x : chunks.ids) x = tok(rng);
    chunks.mask.assign(chunks.ids.size(), 1);
    in.context = &chunks;
  }
  const int64_t dec_tokens = B * T, tokens = dec_tokens + B * n_ctx * ctx_len;

  std::vector<double> step_s, gemm_s, gemm_flops;
  double nested_flops = 0;
  size_t act_bytes = 0;
  double first_loss = 0, last_loss = 0;
  std::vector<std::pair<kernels::GemmShape, int64_t>> shapes;
  for (int i = 0; i < warmup + steps; ++i) {
    const bool timed = i >= warmup;
    kernels::gemm_counters_reset();
    kernels::gemm_counters_enable(timed, timed && shapes.empty());
    const auto t0 = Clock::now();
    const LossValue v = loss_and_gradients(*model, in, set, &grads);
    train::optimizer_update(slots, adam, 1.0, 1e-4);
    const double dt = since(t0);
    kernels::gemm_counters_enable(false);
    std::fprintf(stderr, "bench train: step %d%s: %.3f s, loss %.4f\n", i + 1, timed ? "" : " (warmup)", dt, v.loss);
    if (i == 0) first_loss = v.loss;
    last_loss = v.loss;
    act_bytes = v.activation_bytes;
    if (!timed) continue;
    const kernels::GemmCounters c = kernels::gemm_counters();
    if (shapes.empty()) shapes = kernels::gemm_counted_shapes();
    step_s.push_back(dt);
    gemm_s.push_back(c.seconds);
    gemm_flops.push_back(c.flops);
    nested_flops = c.nested_flops;
  }
  const double peak_rss = static_cast<double>(peak_rss_bytes());

  // The sgemm reference, measured after the steps in the same process and thread count: a large square
  // product (the machine's attainable rate), and the step's own shapes on their own.
  double square_gflops = 0, shapes_gflops = 0;
  if (!args.has("--no-sgemm")) {
    const kernels::GemmShape sq{false, false, 2048, 2048, 2048};
    square_gflops = 2.0 * 2048.0 * 2048.0 * 2048.0 / time_sgemm(sq, 5) / 1e9;
    double t = 0, f = 0;
    for (const auto& [s, n] : shapes) {
      t += static_cast<double>(n) * time_sgemm(s, 5);
      f += static_cast<double>(n) * 2.0 * static_cast<double>(s.M) * static_cast<double>(s.N) * static_cast<double>(s.K);
    }
    shapes_gflops = t > 0 ? f / t / 1e9 : 0;
  }
  const double med_step = median(step_s), med_gemm = median(gemm_s);
  const double flops = gemm_flops.empty() ? 0 : gemm_flops.front();
  const double gemm_gflops = med_gemm > 0 ? flops / med_gemm / 1e9 : 0;

  nlohmann::json j = {
      {"impl", "cepe.cpp"},
      {"config", config_path},
      {"architecture", architecture_name(cfg.architecture)},
      {"trainable", trainable_set_name(set)},
      {"trainable_params", trainable},
      {"recompute", in.recompute},
      {"threads", kernels::num_threads()},
      {"isa", isa_name()},
      {"batch", B},
      {"seq", T},
      {"n_ctx", n_ctx},
      {"ctx_len", ctx_len},
      {"decoder_tokens_per_step", dec_tokens},
      {"tokens_per_step", tokens},
      {"step_seconds", step_s},
      {"median_step_seconds", med_step},
      {"tokens_per_s", med_step > 0 ? static_cast<double>(tokens) / med_step : 0},
      {"decoder_tokens_per_s", med_step > 0 ? static_cast<double>(dec_tokens) / med_step : 0},
      {"gemm_seconds", gemm_s},
      {"gemm_flops_per_step", flops},
      {"gemm_gflops", gemm_gflops},
      {"gemm_share_of_step", med_step > 0 ? med_gemm / med_step : 0},
      {"attention_gemm_flops_per_step", nested_flops},
      {"sgemm_square_2048_gflops", square_gflops},
      {"sgemm_step_shapes_gflops", shapes_gflops},
      {"gemm_fraction_of_square", square_gflops > 0 ? gemm_gflops / square_gflops : 0},
      {"gemm_fraction_of_step_shapes", shapes_gflops > 0 ? gemm_gflops / shapes_gflops : 0},
      {"gemm_shapes", static_cast<int64_t>(shapes.size())},
      {"peak_rss_bytes", peak_rss},
      {"activation_bytes", static_cast<double>(act_bytes)},
      {"first_loss", first_loss},
      {"last_loss", last_loss},
  };
  std::printf("| model | trainable | recompute | threads | ISA | tokens/s | step s | GEMM GFLOP/s | of sgemm 2048³ | of same shapes | GEMM share | peak RSS MiB | activations MiB |\n");
  std::printf("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::printf("| %s | %s | %s | %d | %s | %.0f | %.3f | %.1f | %.0f%% | %.0f%% | %.0f%% | %.0f | %.0f |\n",
              architecture_name(cfg.architecture), trainable_set_name(set), in.recompute ? "yes" : "no",
              kernels::num_threads(), isa_name().c_str(), j["tokens_per_s"].get<double>(), med_step, gemm_gflops,
              100.0 * j["gemm_fraction_of_square"].get<double>(), 100.0 * j["gemm_fraction_of_step_shapes"].get<double>(),
              100.0 * j["gemm_share_of_step"].get<double>(), peak_rss / 1048576.0, static_cast<double>(act_bytes) / 1048576.0);
  if (args.has("--json")) write_text_atomic(args.str("--json"), j.dump(2) + "\n");
  return 0;
}

}  // namespace cepe::cli
