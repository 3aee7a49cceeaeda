#include "kernels/cpu/gemv_half.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "cepe/error.h"
#include "core/cpu_features.h"
#include "core/half.h"
#include "kernels/cpu/x86_simd.h"

namespace cepe::kernels::detail {
namespace {

enum class WT { F32, BF16, F16 };

template <WT T>
using WElem = std::conditional_t<T == WT::F32, float, uint16_t>;

// Rows [n0, n1) of y (row stride N) from rows [n0, n1) of W.
using RowsFn = void (*)(const float* x, int64_t K, const void* w, int64_t n0, int64_t n1, float* y, int64_t N,
                        bool accumulate);

inline void store(float* y, float r, bool accumulate) { *y = accumulate ? *y + r : r; }

// --- portable C++ --------------------------------------------------------------------------------------------

template <WT T>
inline float widen(WElem<T> v) {
  if constexpr (T == WT::F32) return v;
  else if constexpr (T == WT::BF16) return bf16_to_f32(v);
  else return f16_to_f32(v);
}

// 8 lanes per activation row, each an independent fp32 sum (the lane loop vectorises without reassociation).
template <WT T, int M>
void rows_generic(const float* x, int64_t K, const void* wv, int64_t n0, int64_t n1, float* y, int64_t N,
                  bool accumulate) {
  constexpr int L = 8;
  const auto* w = static_cast<const WElem<T>*>(wv);
  for (int64_t n = n0; n < n1; ++n) {
    const WElem<T>* wr = w + n * K;
    float acc[M][L] = {};
    for (int64_t k = 0; k < K; k += L) {
      const int len = static_cast<int>(std::min<int64_t>(L, K - k));
      float wf[L] = {};
      for (int j = 0; j < len; ++j) wf[j] = widen<T>(wr[k + j]);
      for (int m = 0; m < M; ++m) {
        const float* xr = x + m * K + k;
        if (len == L) {
          for (int j = 0; j < L; ++j) acc[m][j] += wf[j] * xr[j];
        } else {
          for (int j = 0; j < len; ++j) acc[m][j] += wf[j] * xr[j];
        }
      }
    }
    for (int m = 0; m < M; ++m) {
      float r = 0.0f;
      for (int j = 0; j < L; ++j) r += acc[m][j];
      store(y + m * N + n, r, accumulate);
    }
  }
}

#if CEPE_X86_SIMD

// --- AVX2 + FMA + F16C: 8 lanes, one weight row at a time ----------------------------------------------------

// Independent accumulators per activation row: at least 4 FMA chains in flight in total.
constexpr int avx2_unroll(int M) { return M == 1 ? 4 : M <= 3 ? 2 : 1; }

template <WT T>
CEPE_TARGET_AVX2 inline __m256 load8_avx2(const WElem<T>* p) {
  if constexpr (T == WT::F32) {
    return _mm256_loadu_ps(p);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (T == WT::BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else return _mm256_cvtph_ps(h);
  }
}

template <WT T, int M>
CEPE_TARGET_AVX2 void rows_avx2(const float* x, int64_t K, const void* wv, int64_t n0, int64_t n1, float* y,
                                int64_t N, bool accumulate) {
  constexpr int U = avx2_unroll(M);
  constexpr int64_t L = 8;
  const auto* w = static_cast<const WElem<T>*>(wv);
  const int64_t kv = K / L * L, tail = K - kv;
  // The K % 8 tail of x, zero-padded once (a tail of weights is copied per row into a zeroed buffer).
  alignas(32) float xt[M][L] = {};
  for (int m = 0; m < M; ++m)
    for (int64_t j = 0; j < tail; ++j) xt[m][j] = x[m * K + kv + j];
  for (int64_t n = n0; n < n1; ++n) {
    const WElem<T>* wr = w + n * K;
    __m256 acc[M][U];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) acc[m][u] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + U * L <= K; k += U * L) {
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        const __m256 wk = load8_avx2<T>(wr + k + u * L);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) acc[m][u] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(x + m * K + k + u * L), acc[m][u]);
      }
    }
    for (; k < kv; k += L) {
      const __m256 wk = load8_avx2<T>(wr + k);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[m][0] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(x + m * K + k), acc[m][0]);
    }
    if (tail) {
      WElem<T> wt[L] = {};
      std::memcpy(wt, wr + kv, static_cast<size_t>(tail) * sizeof(WElem<T>));
      const __m256 wk = load8_avx2<T>(wt);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[m][0] = _mm256_fmadd_ps(wk, _mm256_load_ps(xt[m]), acc[m][0]);
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      __m256 s = acc[m][0];
#pragma GCC unroll 4
      for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[m][u]);
      store(y + m * N + n, hsum_avx2(s), accumulate);
    }
  }
}

// --- AVX-512 F/BW/VL: 16 lanes, masked K tail ------------------------------------------------------------------

// 16 half values to f32, exactly.
template <WT T>
CEPE_TARGET_AVX512 inline __m512 widen16_avx512(__m256i h) {
  if constexpr (T == WT::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  else return _mm512_cvtph_ps(h);
}

template <WT T>
CEPE_TARGET_AVX512 inline __m512 load16_avx512(const WElem<T>* p) {
  if constexpr (T == WT::F32) {
    return _mm512_loadu_ps(p);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return widen16_avx512<T>(h);
  }
}

template <WT T>
CEPE_TARGET_AVX512 inline __m512 load16_avx512_masked(const WElem<T>* p, __mmask16 mask) {
  if constexpr (T == WT::F32) {
    return _mm512_maskz_loadu_ps(mask, p);
  } else {
    return widen16_avx512<T>(_mm256_maskz_loadu_epi16(mask, p));
  }
}

// Rows [0, R) of `wr` (row stride K) times the M rows of x, into y[m * N + r]. Along the way the bytes
// [pf, pf_end) (the next block of rows) are prefetched into L2 at the rate this block consumes its own,
// which turns the R interleaved row streams into one sequential stream ahead of the loads.
// Every row's sum runs in the same order whatever R is: one fp32 FMA chain per lane over K, the masked
// tail last, then a fixed horizontal sum.
template <WT T, int M, int R>
CEPE_TARGET_AVX512 inline void block_avx512(const float* x, int64_t K, const WElem<T>* wr, const char* pf,
                                            const char* pf_end, float* y, int64_t N, bool accumulate) {
  constexpr int64_t L = 16;
  constexpr int kPrefetchPerStep = static_cast<int>((R * L * sizeof(WElem<T>) + 63) / 64);
  __m512 acc[R][M];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  const int64_t kv = K / L * L;
  for (int64_t k = 0; k < kv; k += L) {
#pragma GCC unroll 4
    for (int i = 0; i < kPrefetchPerStep; ++i)
      if (pf < pf_end) {
        _mm_prefetch(pf, _MM_HINT_T1);
        pf += 64;
      }
    __m512 wk[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wk[r] = load16_avx512<T>(wr + r * K + k);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * K + k);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(wk[r], xv, acc[r][m]);
    }
  }
  if (kv < K) {
    const auto tail = static_cast<__mmask16>((1u << (K - kv)) - 1u);
    __m512 wk[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wk[r] = load16_avx512_masked<T>(wr + r * K + kv, tail);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(tail, x + m * K + kv);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(wk[r], xv, acc[r][m]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) store(y + m * N + r, hsum_avx512(acc[r][m]), accumulate);
}

// Weight rows per block: R * M accumulators (+ R weight vectors) must fit the 32 zmm registers, and
// R >= 4 at M = 1 keeps 4 FMA chains in flight. Each x vector loaded serves R rows (x of M rows does not
// fit L1 next to the weights once M >= 2, so this is what keeps M = 2..8 off the L2 bandwidth).
constexpr int rows_for(int M) { return M <= 5 ? 4 : M <= 7 ? 3 : 2; }

template <WT T, int M>
CEPE_TARGET_AVX512 void rows_avx512(const float* x, int64_t K, const void* wv, int64_t n0, int64_t n1, float* y,
                                    int64_t N, bool accumulate) {
  constexpr int R = rows_for(M);
  const auto* w = static_cast<const WElem<T>*>(wv);
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    const auto* pf = reinterpret_cast<const char*>(w + (n + R) * K);
    const auto* pf_end = reinterpret_cast<const char*>(w + std::min(n1, n + 2 * R) * K);
    block_avx512<T, M, R>(x, K, w + n * K, pf, pf_end, y + n, N, accumulate);
  }
  for (; n < n1; ++n) block_avx512<T, M, 1>(x, K, w + n * K, nullptr, nullptr, y + n, N, accumulate);
}

#endif  // CEPE_X86_SIMD

// --- dispatch -------------------------------------------------------------------------------------------------

template <template <WT, int> class K, WT T, size_t... I>
constexpr std::array<RowsFn, sizeof...(I)> make_row(std::index_sequence<I...>) {
  return {K<T, static_cast<int>(I) + 1>::fn...};
}

template <WT T, int M>
struct Generic {
  static constexpr RowsFn fn = rows_generic<T, M>;
};
#if CEPE_X86_SIMD
template <WT T, int M>
struct Avx2 {
  static constexpr RowsFn fn = rows_avx2<T, M>;
};
template <WT T, int M>
struct Avx512 {
  static constexpr RowsFn fn = rows_avx512<T, M>;
};
#endif

using Table = std::array<std::array<RowsFn, kGemvMaxRows>, 3>;  // [WT][M - 1]

template <template <WT, int> class K>
constexpr Table make_table() {
  constexpr auto seq = std::make_index_sequence<kGemvMaxRows>{};
  return {make_row<K, WT::F32>(seq), make_row<K, WT::BF16>(seq), make_row<K, WT::F16>(seq)};
}

constexpr Table kGeneric = make_table<Generic>();
#if CEPE_X86_SIMD
constexpr Table kAvx2 = make_table<Avx2>();
constexpr Table kAvx512 = make_table<Avx512>();
#endif

const Table& table(GemvIsa isa) {
  switch (isa) {
#if CEPE_X86_SIMD
    case GemvIsa::Avx512: return kAvx512;
    case GemvIsa::Avx2: return kAvx2;
#endif
    default: return kGeneric;
  }
}

// Below this many multiply-adds a call runs on the calling thread (a parallel region costs a few µs).
constexpr int64_t kParallelMinWork = int64_t{1} << 16;
// Thread chunks start on multiples of 16 rows (64 bytes of each row of y), which keeps the threads' writes
// to y mostly on separate cache lines.
constexpr int64_t kChunkAlign = 16;

}  // namespace

const char* gemv_isa_name(GemvIsa isa) {
  switch (isa) {
    case GemvIsa::Avx512: return "avx512";
    case GemvIsa::Avx2: return "avx2";
    case GemvIsa::Generic: return "generic";
  }
  return "?";
}

bool gemv_isa_supported(GemvIsa isa) {
  switch (isa) {
    case GemvIsa::Generic: return true;
#if CEPE_X86_SIMD
    case GemvIsa::Avx2: {
      const CpuFeatures& f = cpu_features();
      return f.avx2 && f.fma && f.f16c;
    }
    case GemvIsa::Avx512: {
      // The AVX-512 kernels are also compiled with avx2,fma,f16c (CEPE_TARGET_AVX512).
      const CpuFeatures& f = cpu_features();
      return f.avx512f && f.avx512bw && f.avx512vl && f.avx2 && f.fma && f.f16c;
    }
#else
    default: return false;
#endif
  }
  return false;
}

GemvIsa gemv_best_isa() {
  static const GemvIsa best = gemv_isa_supported(GemvIsa::Avx512) ? GemvIsa::Avx512
                              : gemv_isa_supported(GemvIsa::Avx2) ? GemvIsa::Avx2
                                                                  : GemvIsa::Generic;
  return best;
}

void gemv_rows(const float* x, int64_t M, int64_t K, const void* w, DType dt, int64_t N, float* y, bool accumulate,
               GemvIsa isa) {
  if (M < 1 || M > kGemvMaxRows || K < 0 || N < 0)
    throw Error("gemv_rows: bad shape M=" + std::to_string(M) + " K=" + std::to_string(K) + " N=" + std::to_string(N));
  if (!gemv_isa_supported(isa)) throw Error(std::string("gemv_rows: this CPU does not support ") + gemv_isa_name(isa));
  WT wt;
  switch (dt) {
    case DType::F32: wt = WT::F32; break;
    case DType::BF16: wt = WT::BF16; break;
    case DType::F16: wt = WT::F16; break;
    default: throw Error(std::string("gemv_rows: unsupported weight dtype ") + dtype_name(dt));
  }
  if (N == 0) return;
  const RowsFn fn = table(isa)[static_cast<size_t>(wt)][static_cast<size_t>(M - 1)];
  const int64_t blocks = (N + kChunkAlign - 1) / kChunkAlign;
#pragma omp parallel if (M * N * K >= kParallelMinWork && blocks > 1)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t n0 = std::min(N, blocks * t / nt * kChunkAlign);
    const int64_t n1 = std::min(N, blocks * (t + 1) / nt * kChunkAlign);
    if (n1 > n0) fn(x, K, w, n0, n1, y, N, accumulate);
  }
}

}  // namespace cepe::kernels::detail
