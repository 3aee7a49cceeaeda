// Kernel micro-benchmarks: linear() (GEMV/GEMM) at LLaMA-2-7B shapes and attention at CEPE's encoder and
// decode shapes, next to the baselines that explain our choices (a naive loop, a direct M=1 cblas_sgemm).
//
//   cmake --build build --target cepe_bench_kernels && OMP_NUM_THREADS=2 ./build/bench/cepe_bench_kernels
//
// Threads come from OMP_NUM_THREADS; the OpenMP build of OpenBLAS reads the same variable.
// Counters: `flop` = FLOP/s, `weight_bytes` = bytes of weights (or K/V cache, for attention) streamed per
// second. Times are wall-clock (UseRealTime) because the work runs on an OpenMP team.
// Results and their interpretation: docs/gemm-backend.md.
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "cepe/tensor.h"
#include "core/half.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemv_half.h"
#include "kernels/cpu/shared_kv_attention.h"
#include "model/cross_attention.h"

namespace cepe::bench {
namespace {

constexpr int64_t kHidden = 4096;       // LLaMA-2-7B d_model
constexpr int64_t kFfn = 11008;         // LLaMA-2-7B intermediate size
constexpr double kMinTime = 0.3;        // seconds per benchmark; the whole program stays well under 60 s
constexpr size_t kAlign = 64;
// Decode weights are rotated over copies that add up to at least this much, so every call reads its
// weights from DRAM and not from the 32 MiB L3 (as a real model's 7B weights would be).
constexpr size_t kRotateBytes = size_t{128} << 20;

// 64-byte aligned buffer, freed with std::free.
std::shared_ptr<void> aligned_buffer(size_t bytes) {
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, std::max(rounded, kAlign));
  if (!p) throw Error("bench: out of memory");
  return std::shared_ptr<void>(p, std::free);
}

// Deterministic uniform values in [-1, 1) (splitmix64).
void fill_random(float* p, int64_t n, uint64_t seed) {
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    p[i] = static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }
}


struct F32Buffer {
  std::shared_ptr<void> mem;
  int64_t n = 0;
  float* data() const { return static_cast<float*>(mem.get()); }
};

F32Buffer random_f32(int64_t n, uint64_t seed) {
  F32Buffer b{aligned_buffer(static_cast<size_t>(n) * sizeof(float)), n};
  fill_random(b.data(), n, seed);
  return b;
}

// Weight copies [N, K] of one dtype, built once per (dtype, N, K) and kept for the whole run.
const std::vector<Tensor>& weights(DType dt, int64_t N, int64_t K) {
  static std::map<std::tuple<int, int64_t, int64_t>, std::vector<Tensor>> cache;
  auto key = std::make_tuple(static_cast<int>(dt), N, K);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const size_t bytes = static_cast<size_t>(N * K) * dtype_size(dt);
  const size_t copies = std::max<size_t>(1, (kRotateBytes + bytes - 1) / bytes);
  std::vector<Tensor> ws;
  F32Buffer tmp = dt == DType::F32 ? F32Buffer{} : random_f32(N * K, 0);
  for (size_t c = 0; c < copies; ++c) {
    auto mem = aligned_buffer(bytes);
    if (dt == DType::F32) {
      fill_random(static_cast<float*>(mem.get()), N * K, 100 + c);
    } else {
      convert_from_f32(tmp.data(), dt, mem.get(), N * K);  // bf16 or f16
    }
    ws.emplace_back(mem, mem.get(), dt, Shape{N, K});
  }
  return cache.emplace(key, std::move(ws)).first->second;
}

void set_counters(benchmark::State& state, double flops_per_iter, double bytes_per_iter) {
  const auto iters = static_cast<double>(state.iterations());
  state.counters["flop"] = benchmark::Counter(flops_per_iter * iters, benchmark::Counter::kIsRate);
  state.counters["weight_bytes"] = benchmark::Counter(bytes_per_iter * iters, benchmark::Counter::kIsRate);
}

// --- linear -------------------------------------------------------------------------------------------

// Times `call(x, W, y)` for x [M, K], W [N, K] in `dt` (rotated over copies, see weights()), y [M, N].
template <typename Call>
void run_weight_bench(benchmark::State& state, DType dt, int64_t N, int64_t M, Call call) {
  const int64_t K = kHidden;
  const auto& ws = weights(dt, N, K);
  const F32Buffer x = random_f32(M * K, 1);
  F32Buffer y{aligned_buffer(static_cast<size_t>(M * N) * sizeof(float)), M * N};
  size_t i = 0;
  for (auto _ : state) {
    call(x.data(), ws[i++ % ws.size()], y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2.0 * M * N * K, static_cast<double>(N * K) * static_cast<double>(dtype_size(dt)));
}

void bm_linear(benchmark::State& state, DType dt, int64_t N, int64_t M) {
  run_weight_bench(state, dt, N, M,
                   [&](const float* x, const Tensor& w, float* y) { kernels::linear(x, M, kHidden, w, y); });
}

// The small-M kernel pinned to one instruction set (kernels::linear picks the best one).
void bm_gemv_rows(benchmark::State& state, DType dt, int64_t N, int64_t M, kernels::detail::GemvIsa isa) {
  if (!kernels::detail::gemv_isa_supported(isa)) {
    state.SkipWithError("instruction set not supported by this CPU");
    return;
  }
  run_weight_bench(state, dt, N, M, [&](const float* x, const Tensor& w, float* y) {
    kernels::detail::gemv_rows(x, M, kHidden, w.raw(), dt, N, y, false, isa);
  });
}

// The pre-gemv_half path for half weights at small M: widen 64-row tiles, then sgemm on each.
void bm_widen_sgemm(benchmark::State& state, DType dt, int64_t N, int64_t M) {
  run_weight_bench(state, dt, N, M, [&](const float* x, const Tensor& w, float* y) {
    kernels::detail::linear_widen_sgemm(x, M, kHidden, w.raw(), dt, N, y, false);
  });
}

// --- side-by-side baselines for M = 1 ---------------------------------------------------------------------

// The loop anyone would write first: one dot product per output row, rows split over the OpenMP team.
// Without -ffast-math the compiler may not reorder the float sum, so each row is one scalar FMA chain.
void naive_matvec(const float* W, const float* x, float* y, int64_t N, int64_t K) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* w = W + n * K;
    float acc = 0.0f;
    for (int64_t k = 0; k < K; ++k) acc += w[k] * x[k];
    y[n] = acc;
  }
}

// The same loop with the reduction declared reorderable, so it vectorises (no blocking, no prefetch).
void naive_matvec_simd(const float* W, const float* x, float* y, int64_t N, int64_t K) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* w = W + n * K;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < K; ++k) acc += w[k] * x[k];
    y[n] = acc;
  }
}

template <void (*Fn)(const float*, const float*, float*, int64_t, int64_t)>
void bm_matvec_loop(benchmark::State& state, int64_t N) {
  const int64_t K = kHidden;
  const auto& ws = weights(DType::F32, N, K);
  const F32Buffer x = random_f32(K, 1);
  F32Buffer y{aligned_buffer(static_cast<size_t>(N) * sizeof(float)), N};
  size_t i = 0;
  for (auto _ : state) {
    Fn(ws[i++ % ws.size()].data<float>(), x.data(), y.data(), N, K);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2.0 * N * K, static_cast<double>(N * K) * sizeof(float));
}

// What linear() would cost if it sent M rows to sgemm (y = x · Wᵀ, the nn.Linear "NT" case); for M = 1 that
// is the packed path linear() avoids with sgemv, for 2 <= M <= 8 it was linear()'s f32 path.
void bm_sgemm(benchmark::State& state, int64_t N, int64_t M) {
  const int64_t K = kHidden;
  const auto& ws = weights(DType::F32, N, K);
  const F32Buffer x = random_f32(M * K, 1);
  F32Buffer y{aligned_buffer(static_cast<size_t>(M * N) * sizeof(float)), M * N};
  size_t i = 0;
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(M), static_cast<blasint>(N),
                static_cast<blasint>(K), 1.0f, x.data(), static_cast<blasint>(K), ws[i++ % ws.size()].data<float>(),
                static_cast<blasint>(K), 0.0f, y.data(), static_cast<blasint>(N));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2.0 * M * N * K, static_cast<double>(N * K) * sizeof(float));
}

// The f32 decode reference: M separate cblas_sgemv calls (each streams the weights once; M = 1 is exactly
// linear_f32/M:1). The small-M ratios in docs/gemm-backend.md are taken against this, from the same run.
void bm_sgemv_xM(benchmark::State& state, int64_t N, int64_t M) {
  const int64_t K = kHidden;
  const auto& ws = weights(DType::F32, N, K);
  const F32Buffer x = random_f32(M * K, 1);
  F32Buffer y{aligned_buffer(static_cast<size_t>(M * N) * sizeof(float)), M * N};
  size_t i = 0;
  for (auto _ : state) {
    const float* w = ws[i++ % ws.size()].data<float>();
    for (int64_t m = 0; m < M; ++m)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(N), static_cast<blasint>(K), 1.0f, w,
                  static_cast<blasint>(K), x.data() + m * K, 1, 0.0f, y.data() + m * N, 1);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2.0 * M * N * K, static_cast<double>(N * K) * sizeof(float));
}

// --- attention --------------------------------------------------------------------------------------------

struct AttnShape {
  int64_t batch, q_len, kv_len, heads, head_dim;
  bool causal;
  int64_t causal_offset;
};

void bm_attention(benchmark::State& state, AttnShape s) {
  const int64_t width = s.heads * s.head_dim;
  const F32Buffer q = random_f32(s.batch * s.q_len * width, 2);
  const F32Buffer k = random_f32(s.batch * s.kv_len * width, 3);
  const F32Buffer v = random_f32(s.batch * s.kv_len * width, 4);
  F32Buffer out{aligned_buffer(static_cast<size_t>(s.batch * s.q_len * width) * sizeof(float)),
                s.batch * s.q_len * width};
  kernels::AttentionArgs a;
  a.q = q.data();
  a.out = out.data();
  a.q_stride = a.out_stride = width;
  a.k = k.data();
  a.v = v.data();
  a.kv_stride = width;
  a.kv_batch_stride = s.kv_len * width;
  a.batch = s.batch;
  a.q_len = s.q_len;
  a.kv_len = s.kv_len;
  a.q_heads = a.kv_heads = s.heads;
  a.head_dim = s.head_dim;
  a.causal = s.causal;
  a.causal_offset = s.causal_offset;
  a.scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  for (auto _ : state) {
    kernels::attention(a);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // Q·Kᵀ and P·V, 2 FLOP per multiply-add each; every query here sees all kv_len keys.
  const double flops = 4.0 * s.batch * s.heads * s.q_len * s.kv_len * s.head_dim;
  const double kv_bytes = 2.0 * s.batch * s.kv_len * width * sizeof(float);
  set_counters(state, flops, kv_bytes);
}


// --- cross-attention decode --------------------------------------------------------------------------------

// One LLaMA-2-7B cross-attention layer in a decode step (T = 1, 32 heads x 128, hidden 4096) over K encoder
// states of the 435M encoder (width 1024) kept in bf16, weights in bf16. `flop` is the strategy's work
// (what cross_attention() reports) over the whole layer's time, q/o projections included;
// `cross_attn_gflops` is that work over its own time, the figure `cepe bench` reports.
void bm_cross_attention(benchmark::State& state, CrossAttnMode mode, int64_t K) {
  constexpr int64_t kEnc = 1024;
  LlamaConfig cfg;
  cfg.hidden_size = kHidden;
  cfg.num_attention_heads = 32;
  cfg.num_key_value_heads = 32;
  auto bf16_tensor = [](int64_t rows, int64_t cols, uint64_t seed) {
    F32Buffer tmp = random_f32(rows * cols, seed);
    Tensor t = Tensor::empty(DType::BF16, {rows, cols});
    convert_from_f32(tmp.data(), DType::BF16, t.raw(), rows * cols);
    return t;
  };
  CrossAttentionWeights w;
  w.norm = Tensor::empty(DType::F32, {kHidden});
  std::fill(w.norm.f32(), w.norm.f32() + kHidden, 1.0f);
  w.q = bf16_tensor(kHidden, kHidden, 11);
  w.k = bf16_tensor(kHidden, kEnc, 12);
  w.v = bf16_tensor(kHidden, kEnc, 13);
  w.o = bf16_tensor(kHidden, kHidden, 14);
  Tensor phi = bf16_tensor(K, kEnc, 15).reshape({1, K, kEnc});
  std::vector<uint8_t> mask(static_cast<size_t>(K), 1);
  CrossAttnStats stats;
  CrossInput in;
  in.states = {&phi};
  in.mask = mask.data();
  in.keys = K;
  in.mode = mode;
  in.stats = &stats;
  const F32Buffer h0 = random_f32(kHidden, 16);
  F32Buffer h{aligned_buffer(kHidden * sizeof(float)), kHidden};
  for (auto _ : state) {
    std::copy(h0.data(), h0.data() + kHidden, h.data());
    cross_attention(cfg, w, 0, in, 1, 1, h.data());
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, stats.flops / static_cast<double>(state.iterations()), static_cast<double>(phi.nbytes()));
  // What `cepe bench` reports: the strategy's FLOPs over its own time (the q/o projections excluded).
  state.counters["cross_attn_gflops"] = stats.seconds > 0 ? stats.flops / stats.seconds / 1e9 : 0.0;
}

// The kernel inside absorbed decode alone: M folded query rows against N shared key/value rows of width D.
void bm_shared_kv_attention(benchmark::State& state, DType dt, int64_t M, int64_t N, int64_t D,
                            kernels::detail::GemvIsa isa) {
  if (!kernels::detail::gemv_isa_supported(isa)) {
    state.SkipWithError("instruction set not supported by this CPU");
    return;
  }
  const F32Buffer q = random_f32(M * D, 21), s32 = random_f32(N * D, 22);
  for (int64_t i = 0; i < M * D; ++i) q.data()[i] *= 0.05f;  // scores of a few units, as after 1/sqrt(hd)
  auto mem = aligned_buffer(static_cast<size_t>(N * D) * dtype_size(dt));
  convert_from_f32(s32.data(), dt, mem.get(), N * D);
  F32Buffer out{aligned_buffer(static_cast<size_t>(M * D) * sizeof(float)), M * D};
  for (auto _ : state) {
    kernels::detail::shared_kv_attention(q.data(), M, D, mem.get(), dt, N, nullptr, out.data(), isa);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 4.0 * M * N * D, static_cast<double>(N * D) * static_cast<double>(dtype_size(dt)));
}

void register_all() {
  auto tune = [](benchmark::internal::Benchmark* b) {
    b->UseRealTime()->MinTime(kMinTime)->Unit(benchmark::kMillisecond);
  };
  auto name = [](const std::string& kind, int64_t N, int64_t M) {
    return kind + "/" + std::to_string(N) + "x" + std::to_string(kHidden) + "/M:" + std::to_string(M);
  };
  using kernels::detail::GemvIsa;
  for (int64_t N : {kHidden, kFfn}) {
    for (int64_t M : {int64_t{1}, int64_t{256}}) {
      tune(benchmark::RegisterBenchmark(name("linear_f32", N, M).c_str(), bm_linear, DType::F32, N, M));
      tune(benchmark::RegisterBenchmark(name("linear_bf16", N, M).c_str(), bm_linear, DType::BF16, N, M));
    }
    tune(benchmark::RegisterBenchmark(name("baseline_naive_matvec_f32", N, 1).c_str(),
                                      bm_matvec_loop<naive_matvec>, N));
    tune(benchmark::RegisterBenchmark(name("baseline_naive_simd_matvec_f32", N, 1).c_str(),
                                      bm_matvec_loop<naive_matvec_simd>, N));
    tune(benchmark::RegisterBenchmark(name("baseline_cblas_sgemm_f32", N, 1).c_str(), bm_sgemm, N, 1));
  }
  // Decode with a few rows (M = 1, 4, 8: e.g. a batch of sequences or speculative tokens), every weight
  // dtype, next to the f32 references from the same run: M sgemv calls and one M-row sgemm.
  for (int64_t N : {kHidden, kFfn}) {
    for (int64_t M : {int64_t{1}, int64_t{4}, int64_t{8}}) {
      tune(benchmark::RegisterBenchmark(name("small_m/sgemv_xM_f32", N, M).c_str(), bm_sgemv_xM, N, M));
      tune(benchmark::RegisterBenchmark(name("small_m/linear_f32", N, M).c_str(), bm_linear, DType::F32, N, M));
      tune(benchmark::RegisterBenchmark(name("small_m/linear_bf16", N, M).c_str(), bm_linear, DType::BF16, N, M));
      tune(benchmark::RegisterBenchmark(name("small_m/linear_f16", N, M).c_str(), bm_linear, DType::F16, N, M));
      if (M > 1) tune(benchmark::RegisterBenchmark(name("small_m/sgemm_f32", N, M).c_str(), bm_sgemm, N, M));
      tune(benchmark::RegisterBenchmark(name("small_m/gemv_rows_avx512_f32", N, M).c_str(), bm_gemv_rows,
                                        DType::F32, N, M, GemvIsa::Avx512));
      tune(benchmark::RegisterBenchmark(name("small_m/gemv_rows_avx2_bf16", N, M).c_str(), bm_gemv_rows,
                                        DType::BF16, N, M, GemvIsa::Avx2));
      tune(benchmark::RegisterBenchmark(name("small_m/widen_sgemm_bf16", N, M).c_str(), bm_widen_sgemm,
                                        DType::BF16, N, M));
    }
  }
  // CEPE encoder: 16 chunks of 256 tokens, 16 heads x 64, bidirectional.
  tune(benchmark::RegisterBenchmark("attention_encoder/B:16/T:256/H:16x64/bidir", bm_attention,
                                    AttnShape{16, 256, 256, 16, 64, false, 0}));
  // Decoder step: 1 query against a 4096-entry KV cache, 32 heads x 128 (LLaMA-2-7B).
  tune(benchmark::RegisterBenchmark("attention_decode/q:1/kv:4096/H:32x128/causal", bm_attention,
                                    AttnShape{1, 1, 4096, 32, 128, true, 4095}));
  // Absorbed decode's kernel at the same shapes (32 folded queries, 8k states of width 1024), per isa.
  for (auto [isa, label] : {std::pair{GemvIsa::Avx512, "avx512"}, std::pair{GemvIsa::Avx2, "avx2"},
                            std::pair{GemvIsa::Generic, "generic"}})
    tune(benchmark::RegisterBenchmark((std::string("shared_kv_attention/") + label + "/M:32/N:8192/D:1024/bf16").c_str(),
                                      bm_shared_kv_attention, DType::BF16, int64_t{32}, int64_t{8192}, int64_t{1024}, isa));
  // CEPE decode step: one cross-attention layer of the 7B shapes over 8k bf16 encoder states.
  for (auto [mode, label] : {std::pair{CrossAttnMode::Absorbed, "absorbed"}, std::pair{CrossAttnMode::Recompute, "recompute"}})
    tune(benchmark::RegisterBenchmark((std::string("cross_attention_decode/") + label + "/K:8192/H:32x128/enc:1024/bf16").c_str(),
                                      bm_cross_attention, mode, int64_t{8192}));
}

}  // namespace
}  // namespace cepe::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("omp_max_threads", std::to_string(omp_get_max_threads()));
  benchmark::AddCustomContext("openblas_threads", std::to_string(openblas_get_num_threads()));
  benchmark::AddCustomContext("openblas_parallel", openblas_get_parallel() == 2   ? "OpenMP"
                                                   : openblas_get_parallel() == 1 ? "pthreads"
                                                                                  : "sequential");
  benchmark::AddCustomContext("openblas_core", openblas_get_corename());
  benchmark::AddCustomContext("openblas_config", openblas_get_config());
  cepe::bench::register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
