#pragma once
// exp for the softmax and activation kernels, vectorised: x = k·ln2 + t, a degree-7 Taylor polynomial in t,
// within ~2 ulp of std::exp. AVX-512 or AVX2+FMA when the CPU has them (chosen at run time), std::exp otherwise.
// One copy: attention, the shared-KV attention, SwiGLU/SiLU and their backward passes all call these.
#include <cstdint>

#include "kernels/cpu/gemv_half.h"  // detail::GemvIsa

namespace cepe::kernels {

// x[i] = exp(min(x[i] - shift, 0)) for i < n, with exp(-inf) = 0 (a key masked by writing -inf).
void exp_shift(float* x, int64_t n, float shift);
// Σ x[i] in double, in a fixed order (8 interleaved lanes, then the lanes in order) on every path.
double sum_f64(const float* x, int64_t n);
// sig[i] = 1 / (1 + exp(-x[i])), from exp(-|x|) only (no overflow for any x; NaN stays NaN).
void sigmoid(const float* x, int64_t n, float* sig);

namespace detail {
// The same on a given instruction set (tests run every path the CPU supports).
void exp_shift(float* x, int64_t n, float shift, GemvIsa isa);
double sum_f64(const float* x, int64_t n, GemvIsa isa);
void sigmoid(const float* x, int64_t n, float* sig, GemvIsa isa);
}  // namespace detail

}  // namespace cepe::kernels
