#include "kernels/cpu/fast_exp.h"

#include <cmath>
#include <string>

#include "cepe/error.h"
#include "kernels/cpu/x86_simd.h"

namespace cepe::kernels {
namespace {

using detail::GemvIsa;

constexpr int kLanes = 8;  // the summation lanes of sum_f64, on every path

void exp_shift_generic(float* x, int64_t n, float shift) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(std::min(x[i] - shift, 0.0f));
}

double sum_generic(const float* x, int64_t n) {
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += x[i + l];
  for (int l = 0; i + l < n; ++l) acc[l] += x[i + l];
  double s = 0.0;
  for (double a : acc) s += a;
  return s;
}

inline float sigmoid1(float x) {
  const float e = std::exp(-std::fabs(x));  // in (0, 1]: no overflow
  const float r = 1.0f / (1.0f + e);
  return x >= 0.0f ? r : e * r;
}

void sigmoid_generic(const float* x, int64_t n, float* sig) {
  for (int64_t i = 0; i < n; ++i) sig[i] = sigmoid1(x[i]);
}

#if CEPE_X86_SIMD

// exp(x) = 2^k · e^t with k = round(x·log2 e), t = x - k·ln2 (ln2 split in two: k·kLn2Hi is exact), and e^t
// from its degree-7 Taylor polynomial (Horner coefficients, highest first; truncation < 2e-9 for |t| <= ln2/2).
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kExpTaylor[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};

inline __mmask16 tail_mask(int64_t k) { return static_cast<__mmask16>(k >= 16 ? 0xffffu : (1u << k) - 1u); }

// exp(x) for x <= 0 to within ~2 ulp, scaled by 2^k with vscalefps, which also takes the result to exactly 0
// below -110 (and -inf to 0).
CEPE_TARGET_AVX512 inline __m512 exp_nonpositive_avx512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-110.0f), x);  // (operands in this order: NaN stays NaN)
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 t = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Hi), x);
  t = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Lo), t);
  __m512 y = _mm512_set1_ps(kExpTaylor[0]);
  for (int i = 1; i < 8; ++i) y = _mm512_fmadd_ps(y, t, _mm512_set1_ps(kExpTaylor[i]));
  return _mm512_scalef_ps(y, k);
}

CEPE_TARGET_AVX512 void exp_shift_avx512(float* x, int64_t n, float shift) {
  const __m512 sh = _mm512_set1_ps(shift);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 v = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), sh);
    _mm512_mask_storeu_ps(x + i, k, exp_nonpositive_avx512(_mm512_min_ps(_mm512_setzero_ps(), v)));
  }
}

CEPE_TARGET_AVX512 void sigmoid_avx512(const float* x, int64_t n, float* sig) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(k, x + i);
    const __m512 e = exp_nonpositive_avx512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(v)));
    const __m512 r = _mm512_div_ps(one, _mm512_add_ps(one, e));
    const __mmask16 negative = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    _mm512_mask_storeu_ps(sig + i, k, _mm512_mask_mul_ps(r, negative, e, r));
  }
}

// exp(x) for x <= 0 as above, with 2^k applied through the exponent bits (valid while the result is normal:
// x >= -86); below -86 the result is 0, an absolute error under 5e-38. NaN stays NaN.
CEPE_TARGET_AVX2 inline __m256 exp_nonpositive_avx2(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-86.0f), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_set1_ps(-86.0f), x);  // (operands in this order: NaN stays NaN)
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 t = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Hi), x);
  t = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Lo), t);
  __m256 y = _mm256_set1_ps(kExpTaylor[0]);
  for (int i = 1; i < 8; ++i) y = _mm256_fmadd_ps(y, t, _mm256_set1_ps(kExpTaylor[i]));
  const __m256i scaled = _mm256_add_epi32(_mm256_castps_si256(y), _mm256_slli_epi32(_mm256_cvtps_epi32(k), 23));
  return _mm256_andnot_ps(underflow, _mm256_castsi256_ps(scaled));
}

CEPE_TARGET_AVX2 void exp_shift_avx2(float* x, int64_t n, float shift) {
  const __m256 sh = _mm256_set1_ps(shift);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_min_ps(_mm256_setzero_ps(), _mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
    _mm256_storeu_ps(x + i, exp_nonpositive_avx2(v));
  }
  if (i < n) {  // the tail through the same polynomial, so a row's weights do not depend on where it ends
    float tail[8];
    for (int l = 0; l < 8; ++l) tail[l] = i + l < n ? x[i + l] : shift;
    const __m256 v = _mm256_min_ps(_mm256_setzero_ps(), _mm256_sub_ps(_mm256_loadu_ps(tail), sh));
    _mm256_storeu_ps(tail, exp_nonpositive_avx2(v));
    for (int l = 0; i + l < n; ++l) x[i + l] = tail[l];
  }
}

// The same lanes and order as sum_generic: lane l of the two accumulators sums x[i + l].
CEPE_TARGET_AVX2 double sum_avx2(const float* x, int64_t n) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  double acc[kLanes];
  _mm256_storeu_pd(acc, lo);
  _mm256_storeu_pd(acc + 4, hi);
  for (int l = 0; i + l < n; ++l) acc[l] += x[i + l];
  double s = 0.0;
  for (double a : acc) s += a;
  return s;
}

CEPE_TARGET_AVX2 inline __m256 sigmoid8_avx2(__m256 v) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
  const __m256 e = exp_nonpositive_avx2(_mm256_sub_ps(_mm256_setzero_ps(), abs));
  const __m256 r = _mm256_div_ps(one, _mm256_add_ps(one, e));
  return _mm256_blendv_ps(r, _mm256_mul_ps(e, r), _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
}

CEPE_TARGET_AVX2 void sigmoid_avx2(const float* x, int64_t n, float* sig) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(sig + i, sigmoid8_avx2(_mm256_loadu_ps(x + i)));
  if (i < n) {
    float tail[8] = {};
    for (int l = 0; i + l < n; ++l) tail[l] = x[i + l];
    _mm256_storeu_ps(tail, sigmoid8_avx2(_mm256_loadu_ps(tail)));
    for (int l = 0; i + l < n; ++l) sig[i + l] = tail[l];
  }
}

#endif  // CEPE_X86_SIMD

void check_isa(GemvIsa isa, const char* what) {
  if (!detail::gemv_isa_supported(isa))
    throw Error(std::string(what) + ": this CPU does not support " + detail::gemv_isa_name(isa));
}

// The best path, chosen once (gemv_best_isa probes the CPU once).
GemvIsa best() {
  static const GemvIsa isa = detail::gemv_best_isa();
  return isa;
}

}  // namespace

namespace detail {

void exp_shift(float* x, int64_t n, float shift, GemvIsa isa) {
  check_isa(isa, "exp_shift");
#if CEPE_X86_SIMD
  if (isa == GemvIsa::Avx512) return exp_shift_avx512(x, n, shift);
  if (isa == GemvIsa::Avx2) return exp_shift_avx2(x, n, shift);
#endif
  exp_shift_generic(x, n, shift);
}

double sum_f64(const float* x, int64_t n, GemvIsa isa) {
  check_isa(isa, "sum_f64");
#if CEPE_X86_SIMD
  // AVX-512 machines run the AVX2 sum: the same lanes, and the loop is bound by the f64 adds either way.
  if (isa != GemvIsa::Generic) return sum_avx2(x, n);
#endif
  return sum_generic(x, n);
}

void sigmoid(const float* x, int64_t n, float* sig, GemvIsa isa) {
  check_isa(isa, "sigmoid");
#if CEPE_X86_SIMD
  if (isa == GemvIsa::Avx512) return sigmoid_avx512(x, n, sig);
  if (isa == GemvIsa::Avx2) return sigmoid_avx2(x, n, sig);
#endif
  sigmoid_generic(x, n, sig);
}

}  // namespace detail

void exp_shift(float* x, int64_t n, float shift) { detail::exp_shift(x, n, shift, best()); }
double sum_f64(const float* x, int64_t n) { return detail::sum_f64(x, n, best()); }
void sigmoid(const float* x, int64_t n, float* sig) { detail::sigmoid(x, n, sig, best()); }

}  // namespace cepe::kernels
