#pragma once
// x86 SIMD intrinsics for the hand-written kernels, and the target attributes that let those kernels be
// compiled (and dispatched at run time) whether or not the build uses -march=native.
// CEPE_X86_SIMD is 1 where the intrinsics exist; the kernels keep a portable C++ path for the rest.
#if defined(__x86_64__) || defined(__i386__)
// g++ 12 reports false -W[maybe-]uninitialized warnings inside many AVX-512 intrinsics (on their
// _mm512_undefined_*() pass-through operand) once they are inlined; the warnings point into the header.
// clang has no -Wmaybe-uninitialized (and would warn about the unknown group), nor these false reports.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#define CEPE_X86_SIMD 1
#define CEPE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define CEPE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace cepe::kernels {

// The sum of the 16 lanes, in a fixed order.
CEPE_TARGET_AVX512 inline float hsum_avx512(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128 s = _mm512_castps512_ps128(v);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The sum of the 8 lanes, in a fixed order.
CEPE_TARGET_AVX2 inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace cepe::kernels
#else
#define CEPE_X86_SIMD 0
#endif
