#include "kernels/cpu/shared_kv_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cepe/error.h"
#include "core/half.h"
#include "kernels/cpu/fast_exp.h"
#include "kernels/cpu/x86_simd.h"

namespace cepe::kernels {
namespace {

// Keys per block: the widened block (64 rows of ~D floats, ~256 KiB at D = 1024) and the accumulator [M, D]
// share L2.
constexpr int64_t kBlock = 64;
// A thread gets at least this many keys: below it the parallel region and the merge cost more than they save.
constexpr int64_t kMinKeysPerThread = 256;
const float kNegInf = -std::numeric_limits<float>::infinity();

// The instruction set's kernels.
// scores: sc [M, n] = q [M, D] · s [n, D]ᵀ for one block of stored rows s (dtype dt, dense); half rows are
//   widened into `wide` (row stride ldw) on the way, and the f32 rows are returned (s itself, stride D, when
//   dt is F32). The bytes [pf, pf_end) (the next block's stored rows) are prefetched into L2 along the way.
// accumulate: u [M, D] += p [M, n] · s [n, D] with s of row stride lds.
// exp_shift: x[i] = exp(x[i] - shift), with exp(-inf) = 0 (fast_exp.h, on the same instruction set).
struct Kernels {
  const float* (*scores)(const float* q, int64_t M, int64_t D, const void* s, DType dt, float* wide, int64_t ldw,
                         int64_t n, float* sc, const char* pf, const char* pf_end);
  void (*accumulate)(const float* p, int64_t M, int64_t n, const float* s, int64_t lds, int64_t D, float* u);
  void (*exp_shift)(float* x, int64_t n, float shift);
};

// --- portable C++ --------------------------------------------------------------------------------------------

const float* scores_generic(const float* q, int64_t M, int64_t D, const void* stored, DType dt, float* wide,
                           int64_t ldw, int64_t n, float* sc, const char*, const char*) {
  const float* s = static_cast<const float*>(stored);
  int64_t lds = D;
  if (dt != DType::F32) {
    const size_t es = dtype_size(dt);
    for (int64_t j = 0; j < n; ++j)
      convert_to_f32(dt, static_cast<const char*>(stored) + static_cast<size_t>(j * D) * es, wide + j * ldw, D);
    s = wide;
    lds = ldw;
  }
  constexpr int L = 8;  // independent lanes: the lane loop vectorises without reassociating a sum
  for (int64_t r = 0; r < M; ++r)
    for (int64_t j = 0; j < n; ++j) {
      const float* a = q + r * D;
      const float* b = s + j * lds;
      float acc[L] = {};
      int64_t d = 0;
      for (; d + L <= D; d += L)
        for (int i = 0; i < L; ++i) acc[i] += a[d + i] * b[d + i];
      for (int i = 0; d + i < D; ++i) acc[i] += a[d + i] * b[d + i];
      float t = 0.0f;
      for (int i = 0; i < L; ++i) t += acc[i];
      sc[r * n + j] = t;
    }
  return s;
}

// Columns [0, width) of u (row stride D) and s (row stride lds).
void accumulate_columns(const float* p, int64_t M, int64_t n, const float* s, int64_t lds, int64_t D, float* u,
                        int64_t width) {
  for (int64_t r = 0; r < M; ++r)
    for (int64_t j = 0; j < n; ++j) {
      const float w = p[r * n + j];
      if (w == 0.0f) continue;
      const float* b = s + j * lds;
      float* ur = u + r * D;
      for (int64_t d = 0; d < width; ++d) ur[d] += w * b[d];
    }
}

void accumulate_generic(const float* p, int64_t M, int64_t n, const float* s, int64_t lds, int64_t D, float* u) {
  accumulate_columns(p, M, n, s, lds, D, u, D);
}

void exp_shift_generic(float* x, int64_t n, float shift) { detail::exp_shift(x, n, shift, detail::GemvIsa::Generic); }

constexpr Kernels kGeneric{scores_generic, accumulate_generic, exp_shift_generic};

#if CEPE_X86_SIMD

// Where a score tile reads its key rows: f32 rows, or stored half rows that it widens exactly and also
// writes to the block's f32 buffer for the later tiles (one pass instead of a separate widening pass).
enum class Src { F32, BF16, F16 };

// --- AVX-512 ------------------------------------------------------------------------------------------------

inline __mmask16 tail_mask(int64_t k) { return static_cast<__mmask16>(k >= 16 ? 0xffffu : (1u << k) - 1u); }

// Element `so` of s; a half value is also written, widened, to wide[wo].
template <Src S>
CEPE_TARGET_AVX512 inline __m512 load_key(const void* s, int64_t so, float* wide, int64_t wo, __mmask16 k) {
  if constexpr (S == Src::F32) {
    return _mm512_maskz_loadu_ps(k, static_cast<const float*>(s) + so);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(s) + so);
    const __m512 v = S == Src::BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                    : _mm512_cvtph_ps(h);
    _mm512_mask_storeu_ps(wide + wo, k, v);
    return v;
  }
}

// sc[r * n + j] = q_r · s_j for R query rows (stride D) and J keys (rows j of s, stride lds; widened copies
// to rows of `wide`, stride ldw): J·R accumulators, each key vector loaded once serves R rows.
template <int R, int J, Src S>
CEPE_TARGET_AVX512 inline void scores_tile(const float* q, int64_t D, const void* s, int64_t lds, float* wide,
                                           int64_t ldw, int64_t j0, int64_t n, float* sc) {
  __m512 acc[J][R];
#pragma GCC unroll 4
  for (int j = 0; j < J; ++j)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 k = tail_mask(D - d);
    __m512 sv[J];
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) sv[j] = load_key<S>(s, (j0 + j) * lds + d, wide, (j0 + j) * ldw + d, k);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 qv = _mm512_maskz_loadu_ps(k, q + r * D + d);
#pragma GCC unroll 4
      for (int j = 0; j < J; ++j) acc[j][r] = _mm512_fmadd_ps(sv[j], qv, acc[j][r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) sc[r * n + j0 + j] = hsum_avx512(acc[j][r]);
}

// Issues up to `lines` L2 prefetches from pf (advanced), stopping at pf_end.
CEPE_TARGET_AVX512 inline void prefetch_lines(const char*& pf, const char* pf_end, int64_t lines) {
  for (int64_t i = 0; i < lines && pf < pf_end; ++i, pf += 64) _mm_prefetch(pf, _MM_HINT_T1);
}

template <int R, Src S>
CEPE_TARGET_AVX512 void scores_rows(const float* q, int64_t D, const void* s, int64_t lds, float* wide, int64_t ldw,
                                    int64_t n, float* sc, const char*& pf, const char* pf_end, int64_t pf_lines) {
  int64_t j = 0;
  for (; j + 3 <= n; j += 3) {
    prefetch_lines(pf, pf_end, pf_lines);
    scores_tile<R, 3, S>(q, D, s, lds, wide, ldw, j, n, sc);
  }
  for (; j < n; ++j) scores_tile<R, 1, S>(q, D, s, lds, wide, ldw, j, n, sc);
}

// Rows [r, M) in tiles of 8, 4, 2, 1; the first tile reads from s (dense) as S, the rest from f32 `rows`
// (stride ldr).
template <Src S>
CEPE_TARGET_AVX512 void scores_all_rows(const float* q, int64_t M, int64_t D, const void* s, float* wide,
                                        int64_t ldw, const float* rows, int64_t ldr, int64_t n, float* sc,
                                        const char*& pf, const char* pf_end, int64_t pf_lines) {
  const int64_t first = M >= 8 ? 8 : M >= 4 ? 4 : M >= 2 ? 2 : 1;
  switch (first) {
    case 8: scores_rows<8, S>(q, D, s, D, wide, ldw, n, sc, pf, pf_end, pf_lines); break;
    case 4: scores_rows<4, S>(q, D, s, D, wide, ldw, n, sc, pf, pf_end, pf_lines); break;
    case 2: scores_rows<2, S>(q, D, s, D, wide, ldw, n, sc, pf, pf_end, pf_lines); break;
    default: scores_rows<1, S>(q, D, s, D, wide, ldw, n, sc, pf, pf_end, pf_lines); break;
  }
  int64_t r = first;
  for (; r + 8 <= M; r += 8)
    scores_rows<8, Src::F32>(q + r * D, D, rows, ldr, nullptr, 0, n, sc + r * n, pf, pf_end, pf_lines);
  prefetch_lines(pf, pf_end, (pf_end - pf + 63) / 64);
  if (M - r >= 4) scores_rows<4, Src::F32>(q + r * D, D, rows, ldr, nullptr, 0, n, sc + r * n, pf, pf_end, 0), r += 4;
  if (M - r >= 2) scores_rows<2, Src::F32>(q + r * D, D, rows, ldr, nullptr, 0, n, sc + r * n, pf, pf_end, 0), r += 2;
  if (M - r >= 1) scores_rows<1, Src::F32>(q + r * D, D, rows, ldr, nullptr, 0, n, sc + r * n, pf, pf_end, 0);
}

// The next block's prefetch is spread over the 8-row tiles' key tiles, so the loads of the stored states
// (the first touch of each block, from L3 or DRAM) overlap with this block's arithmetic.
CEPE_TARGET_AVX512 const float* scores_avx512(const float* q, int64_t M, int64_t D, const void* s, DType dt,
                                              float* wide, int64_t ldw, int64_t n, float* sc, const char* pf,
                                              const char* pf_end) {
  const int64_t tiles = std::max<int64_t>(1, (M + 7) / 8 * (n / 3));
  const int64_t pf_lines = (pf_end - pf + 64 * tiles - 1) / (64 * tiles);
  switch (dt) {
    case DType::BF16:
      scores_all_rows<Src::BF16>(q, M, D, s, wide, ldw, wide, ldw, n, sc, pf, pf_end, pf_lines);
      return wide;
    case DType::F16:
      scores_all_rows<Src::F16>(q, M, D, s, wide, ldw, wide, ldw, n, sc, pf, pf_end, pf_lines);
      return wide;
    default: {
      const float* rows = static_cast<const float*>(s);
      scores_all_rows<Src::F32>(q, M, D, s, nullptr, 0, rows, D, n, sc, pf, pf_end, pf_lines);
      return rows;
    }
  }
}

// u[r, 0:16E) += Σ_j p[r * n + j] · s_j[0:16E) for R rows of u (stride D); `last` masks the last vector of
// the strip. The R·E accumulators stay in registers across all n keys.
template <int R, int E>
CEPE_TARGET_AVX512 inline void accumulate_tile(const float* p, int64_t n, const float* s, int64_t lds, int64_t D,
                                               float* u, __mmask16 last) {
  __m512 acc[R][E];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int e = 0; e < E; ++e) acc[r][e] = _mm512_maskz_loadu_ps(e == E - 1 ? last : 0xffff, u + r * D + 16 * e);
  for (int64_t j = 0; j < n; ++j) {
    __m512 sv[E];
#pragma GCC unroll 4
    for (int e = 0; e < E; ++e) sv[e] = _mm512_maskz_loadu_ps(e == E - 1 ? last : 0xffff, s + j * lds + 16 * e);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 w = _mm512_set1_ps(p[r * n + j]);
#pragma GCC unroll 4
      for (int e = 0; e < E; ++e) acc[r][e] = _mm512_fmadd_ps(w, sv[e], acc[r][e]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int e = 0; e < E; ++e) _mm512_mask_storeu_ps(u + r * D + 16 * e, e == E - 1 ? last : 0xffff, acc[r][e]);
}

// One strip of 16E columns for all M rows: the strip of s (n · 64E bytes) stays in L1 across the row tiles.
template <int E>
CEPE_TARGET_AVX512 void accumulate_strip(const float* p, int64_t M, int64_t n, const float* s, int64_t lds, int64_t D,
                                         float* u, __mmask16 last) {
  int64_t r = 0;
  for (; r + 8 <= M; r += 8) accumulate_tile<8, E>(p + r * n, n, s, lds, D, u + r * D, last);
  if (M - r >= 4) accumulate_tile<4, E>(p + r * n, n, s, lds, D, u + r * D, last), r += 4;
  if (M - r >= 2) accumulate_tile<2, E>(p + r * n, n, s, lds, D, u + r * D, last), r += 2;
  if (M - r >= 1) accumulate_tile<1, E>(p + r * n, n, s, lds, D, u + r * D, last);
}

CEPE_TARGET_AVX512 void accumulate_avx512(const float* p, int64_t M, int64_t n, const float* s, int64_t lds,
                                          int64_t D, float* u) {
  int64_t d = 0;
  for (; d + 48 <= D; d += 48) accumulate_strip<3>(p, M, n, s + d, lds, D, u + d, 0xffff);
  const int64_t rest = D - d;
  if (rest > 32) accumulate_strip<3>(p, M, n, s + d, lds, D, u + d, tail_mask(rest - 32));
  else if (rest > 16) accumulate_strip<2>(p, M, n, s + d, lds, D, u + d, tail_mask(rest - 16));
  else if (rest > 0) accumulate_strip<1>(p, M, n, s + d, lds, D, u + d, tail_mask(rest));
}

void exp_shift_avx512(float* x, int64_t n, float shift) { detail::exp_shift(x, n, shift, detail::GemvIsa::Avx512); }

constexpr Kernels kAvx512{scores_avx512, accumulate_avx512, exp_shift_avx512};

// --- AVX2 + FMA + F16C: 8 lanes, the D % 8 tail in scalar code ----------------------------------------------

template <Src S>
CEPE_TARGET_AVX2 inline __m256 load_key8(const void* s, int64_t so, float* wide, int64_t wo) {
  if constexpr (S == Src::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(s) + so);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(s) + so));
    const __m256 v = S == Src::BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                                    : _mm256_cvtph_ps(h);
    _mm256_storeu_ps(wide + wo, v);
    return v;
  }
}

template <Src S>
inline float load_key1(const void* s, int64_t so, float* wide, int64_t wo) {
  if constexpr (S == Src::F32) {
    return static_cast<const float*>(s)[so];
  } else {
    const uint16_t h = static_cast<const uint16_t*>(s)[so];
    const float v = S == Src::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    wide[wo] = v;
    return v;
  }
}

template <int R, int J, Src S>
CEPE_TARGET_AVX2 inline void scores_tile_avx2(const float* q, int64_t D, const void* s, int64_t lds, float* wide,
                                              int64_t ldw, int64_t j0, int64_t n, float* sc) {
  __m256 acc[J][R];
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) acc[j][r] = _mm256_setzero_ps();
  const int64_t dv = D / 8 * 8;
  for (int64_t d = 0; d < dv; d += 8) {
    __m256 sv[J];
    for (int j = 0; j < J; ++j) sv[j] = load_key8<S>(s, (j0 + j) * lds + d, wide, (j0 + j) * ldw + d);
    for (int r = 0; r < R; ++r) {
      const __m256 qv = _mm256_loadu_ps(q + r * D + d);
      for (int j = 0; j < J; ++j) acc[j][r] = _mm256_fmadd_ps(sv[j], qv, acc[j][r]);
    }
  }
  for (int j = 0; j < J; ++j) {
    float tail[8];
    for (int64_t d = dv; d < D; ++d) tail[d - dv] = load_key1<S>(s, (j0 + j) * lds + d, wide, (j0 + j) * ldw + d);
    for (int r = 0; r < R; ++r) {
      float t = hsum_avx2(acc[j][r]);
      for (int64_t d = dv; d < D; ++d) t += q[r * D + d] * tail[d - dv];
      sc[r * n + j0 + j] = t;
    }
  }
}

template <int R, Src S>
CEPE_TARGET_AVX2 void scores_rows_avx2(const float* q, int64_t D, const void* s, int64_t lds, float* wide, int64_t ldw,
                                      int64_t n, float* sc) {
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) scores_tile_avx2<R, 2, S>(q, D, s, lds, wide, ldw, j, n, sc);
  for (; j < n; ++j) scores_tile_avx2<R, 1, S>(q, D, s, lds, wide, ldw, j, n, sc);
}

// The first row tile reads the stored rows as S (and widens them into `wide`), the rest read f32 `rows`.
template <Src S>
CEPE_TARGET_AVX2 void scores_all_rows_avx2(const float* q, int64_t M, int64_t D, const void* s, float* wide,
                                           int64_t ldw, const float* rows, int64_t ldr, int64_t n, float* sc) {
  const int64_t first = M >= 4 ? 4 : M >= 2 ? 2 : 1;
  switch (first) {
    case 4: scores_rows_avx2<4, S>(q, D, s, D, wide, ldw, n, sc); break;
    case 2: scores_rows_avx2<2, S>(q, D, s, D, wide, ldw, n, sc); break;
    default: scores_rows_avx2<1, S>(q, D, s, D, wide, ldw, n, sc); break;
  }
  int64_t r = first;
  for (; r + 4 <= M; r += 4) scores_rows_avx2<4, Src::F32>(q + r * D, D, rows, ldr, nullptr, 0, n, sc + r * n);
  if (M - r >= 2) scores_rows_avx2<2, Src::F32>(q + r * D, D, rows, ldr, nullptr, 0, n, sc + r * n), r += 2;
  if (M - r >= 1) scores_rows_avx2<1, Src::F32>(q + r * D, D, rows, ldr, nullptr, 0, n, sc + r * n);
}

CEPE_TARGET_AVX2 const float* scores_avx2(const float* q, int64_t M, int64_t D, const void* s, DType dt, float* wide,
                                          int64_t ldw, int64_t n, float* sc, const char*, const char*) {
  switch (dt) {
    case DType::BF16: scores_all_rows_avx2<Src::BF16>(q, M, D, s, wide, ldw, wide, ldw, n, sc); return wide;
    case DType::F16: scores_all_rows_avx2<Src::F16>(q, M, D, s, wide, ldw, wide, ldw, n, sc); return wide;
    default: {
      const float* rows = static_cast<const float*>(s);
      scores_all_rows_avx2<Src::F32>(q, M, D, s, nullptr, 0, rows, D, n, sc);
      return rows;
    }
  }
}

// u[r, 0:8E) += Σ_j p[r * n + j] · s_j[0:8E) for R rows of u (stride D).
template <int R, int E>
CEPE_TARGET_AVX2 inline void accumulate_tile_avx2(const float* p, int64_t n, const float* s, int64_t lds, int64_t D,
                                                  float* u) {
  __m256 acc[R][E];
  for (int r = 0; r < R; ++r)
    for (int e = 0; e < E; ++e) acc[r][e] = _mm256_loadu_ps(u + r * D + 8 * e);
  for (int64_t j = 0; j < n; ++j) {
    __m256 sv[E];
    for (int e = 0; e < E; ++e) sv[e] = _mm256_loadu_ps(s + j * lds + 8 * e);
    for (int r = 0; r < R; ++r) {
      const __m256 w = _mm256_set1_ps(p[r * n + j]);
      for (int e = 0; e < E; ++e) acc[r][e] = _mm256_fmadd_ps(w, sv[e], acc[r][e]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int e = 0; e < E; ++e) _mm256_storeu_ps(u + r * D + 8 * e, acc[r][e]);
}

template <int E>
CEPE_TARGET_AVX2 void accumulate_strip_avx2(const float* p, int64_t M, int64_t n, const float* s, int64_t lds,
                                           int64_t D, float* u) {
  int64_t r = 0;
  for (; r + 4 <= M; r += 4) accumulate_tile_avx2<4, E>(p + r * n, n, s, lds, D, u + r * D);
  if (M - r >= 2) accumulate_tile_avx2<2, E>(p + r * n, n, s, lds, D, u + r * D), r += 2;
  if (M - r >= 1) accumulate_tile_avx2<1, E>(p + r * n, n, s, lds, D, u + r * D);
}

CEPE_TARGET_AVX2 void accumulate_avx2(const float* p, int64_t M, int64_t n, const float* s, int64_t lds, int64_t D,
                                      float* u) {
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) accumulate_strip_avx2<2>(p, M, n, s + d, lds, D, u + d);
  if (d + 8 <= D) accumulate_strip_avx2<1>(p, M, n, s + d, lds, D, u + d), d += 8;
  if (d < D) accumulate_columns(p, M, n, s + d, lds, D, u + d, D - d);
}

void exp_shift_avx2(float* x, int64_t n, float shift) { detail::exp_shift(x, n, shift, detail::GemvIsa::Avx2); }

constexpr Kernels kAvx2{scores_avx2, accumulate_avx2, exp_shift_avx2};

#endif  // CEPE_X86_SIMD

// --- the pass over the keys ------------------------------------------------------------------------------------

// One thread's share: running max m, normaliser l and unnormalised weighted sum u per query row.
struct Partial {
  std::vector<float> m, l, u;
};

// Folds a block's scores sc [M, n] into the running state; sc becomes the block's weights exp(score - m).
void online_softmax(const Kernels& k, float* sc, int64_t M, int64_t n, const uint8_t* mask, Partial& st, int64_t D) {
  for (int64_t r = 0; r < M; ++r) {
    float* sr = sc + r * n;
    if (mask)
      for (int64_t j = 0; j < n; ++j)
        if (!mask[j]) sr[j] = kNegInf;
    float bm = kNegInf;
    for (int64_t j = 0; j < n; ++j) bm = std::max(bm, sr[j]);
    if (bm == kNegInf) {  // no real key in this block
      std::fill(sr, sr + n, 0.0f);
      continue;
    }
    float& m = st.m[static_cast<size_t>(r)];
    float& l = st.l[static_cast<size_t>(r)];
    if (bm > m) {
      if (m != kNegInf) {
        const float c = std::exp(m - bm);
        l *= c;
        float* ur = st.u.data() + r * D;
        for (int64_t d = 0; d < D; ++d) ur[d] *= c;
      }
      m = bm;
    }
    k.exp_shift(sr, n, m);
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) sum += sr[j];
    l += sum;
  }
}

// Keys [k0, k1) into `st`, block by block.
void attend_range(const Kernels& k, const float* q, int64_t M, int64_t D, const void* s, DType dt,
                  const uint8_t* mask, int64_t k0, int64_t k1, Partial& st) {
  st.m.assign(static_cast<size_t>(M), kNegInf);
  st.l.assign(static_cast<size_t>(M), 0.0f);
  st.u.assign(static_cast<size_t>(M * D), 0.0f);
  // Scratch kept per thread across calls: a decode step calls this once per layer, and fresh buffers of
  // this size would come from mmap and page-fault in every time.
  thread_local std::vector<float> sc, wide;
  sc.resize(static_cast<size_t>(M * kBlock));
  // The widened block's row stride: rows 4 KiB apart (D = 1024) would all map to the same few L1 sets, and the
  // weighted sum walks a column strip down all of them.
  int64_t ldw = (D + 15) / 16 * 16;
  if (ldw % 256 == 0) ldw += 16;
  if (dt != DType::F32) wide.resize(static_cast<size_t>(kBlock * ldw));
  const size_t es = dtype_size(dt);
  for (int64_t b0 = k0; b0 < k1; b0 += kBlock) {
    const int64_t n = std::min(kBlock, k1 - b0);
    const uint8_t* mb = mask ? mask + b0 : nullptr;
    if (mb && std::none_of(mb, mb + n, [](uint8_t v) { return v != 0; })) continue;
    const void* stored = static_cast<const char*>(s) + static_cast<size_t>(b0 * D) * es;
    const char* next = static_cast<const char*>(s) + static_cast<size_t>((b0 + n) * D) * es;
    const char* next_end = static_cast<const char*>(s) + static_cast<size_t>(std::min(k1, b0 + n + kBlock) * D) * es;
    const float* rows = k.scores(q, M, D, stored, dt, wide.data(), ldw, n, sc.data(), next, next_end);
    online_softmax(k, sc.data(), M, n, mb, st, D);
    k.accumulate(sc.data(), M, n, rows, dt == DType::F32 ? D : ldw, D, st.u.data());
  }
}

const Kernels& kernels_for(detail::GemvIsa isa) {
#if CEPE_X86_SIMD
  if (isa == detail::GemvIsa::Avx512) return kAvx512;
  if (isa == detail::GemvIsa::Avx2) return kAvx2;
#else
  (void)isa;
#endif
  return kGeneric;
}

}  // namespace

namespace detail {

void shared_kv_attention(const float* q, int64_t M, int64_t D, const void* s, DType dt, int64_t N,
                         const uint8_t* mask, float* out, GemvIsa isa) {
  if (M < 1 || D < 1 || N < 1)
    throw Error("shared_kv_attention: bad shape M=" + std::to_string(M) + " D=" + std::to_string(D) +
                " N=" + std::to_string(N));
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16)
    throw Error(std::string("shared_kv_attention: unsupported state dtype ") + dtype_name(dt));
  if (!gemv_isa_supported(isa))
    throw Error(std::string("shared_kv_attention: this CPU does not support ") + gemv_isa_name(isa));
  const Kernels& k = kernels_for(isa);
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  const int64_t want = std::clamp<int64_t>(N / kMinKeysPerThread, 1, omp_get_max_threads());
  std::vector<Partial*> parts(static_cast<size_t>(want));
  int64_t team = 1;
  // No `if (want > 1)`: num_threads(1) already runs the region on this thread alone, and clang 14 emits the
  // num_threads push before testing the if, so a false if left it pending for the next region, which then got
  // one thread: OpenBLAS's next threaded call waited forever for its second thread.
#pragma omp parallel num_threads(static_cast<int>(want))
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
#pragma omp single
    team = nt;
    const int64_t k0 = std::min(N, blocks * t / nt * kBlock), k1 = std::min(N, blocks * (t + 1) / nt * kBlock);
    thread_local Partial mine;  // reused across calls (see attend_range); read by the merge below
    parts[static_cast<size_t>(t)] = &mine;
    attend_range(k, q, M, D, s, dt, mask, k0, k1, mine);
  }
  // Merge in thread order: out_r = Σ_t e^(m_t - m) u_t / Σ_t e^(m_t - m) l_t.
  for (int64_t r = 0; r < M; ++r) {
    float m = kNegInf;
    for (int64_t t = 0; t < team; ++t) m = std::max(m, parts[static_cast<size_t>(t)]->m[static_cast<size_t>(r)]);
    float* o = out + r * D;
    std::fill(o, o + D, 0.0f);
    if (m == kNegInf) continue;  // every key masked: documented as zeros
    float l = 0.0f;
    for (int64_t t = 0; t < team; ++t) {
      const Partial& p = *parts[static_cast<size_t>(t)];
      const float mt = p.m[static_cast<size_t>(r)];
      if (mt == kNegInf) continue;
      const float c = std::exp(mt - m);
      l += c * p.l[static_cast<size_t>(r)];
      const float* u = p.u.data() + r * D;
      for (int64_t d = 0; d < D; ++d) o[d] += c * u[d];
    }
    const float inv = 1.0f / l;
    for (int64_t d = 0; d < D; ++d) o[d] *= inv;
  }
}

}  // namespace detail

void shared_kv_attention(const float* q, int64_t M, int64_t D, const void* s, DType dt, int64_t N,
                         const uint8_t* mask, float* out) {
  detail::shared_kv_attention(q, M, D, s, dt, N, mask, out, detail::gemv_best_isa());
}

void fold_queries(const float* q, int64_t q_stride, int64_t tokens, int64_t Hq, int64_t Hkv, int64_t hd,
                  const Tensor& Wk, float scale, float* out) {
  const int64_t de = Wk.dim(1), group = Hq / Hkv;
  std::fill(out, out + Hq * tokens * de, 0.0f);
  const size_t es = dtype_size(Wk.dtype());
  // The KV groups write disjoint rows of `out`: the threads split them.
#pragma omp parallel for schedule(static) if (Hkv > 1)
  for (int64_t g = 0; g < Hkv; ++g) {
    thread_local std::vector<float> wrow;
    wrow.resize(static_cast<size_t>(de));
    for (int64_t i = 0; i < hd; ++i) {
      const int64_t row = g * hd + i;
      convert_to_f32(Wk.dtype(), static_cast<const char*>(Wk.raw()) + static_cast<size_t>(row * de) * es, wrow.data(), de);
      for (int64_t h = g * group; h < (g + 1) * group; ++h)
        for (int64_t t = 0; t < tokens; ++t) {
          const float c = scale * q[t * q_stride + h * hd + i];
          float* dst = out + (h * tokens + t) * de;
          for (int64_t e = 0; e < de; ++e) dst[e] += c * wrow[static_cast<size_t>(e)];
        }
    }
  }
}

}  // namespace cepe::kernels
