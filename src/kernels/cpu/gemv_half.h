#pragma once
// Small-M matrix products for decode: y[M, N] (+)= x[M, K] · widen(W[N, K])ᵀ with 1 <= M <= kGemvMaxRows and
// W dense f32, bf16 or f16 (the name is historical: the f32 kernel shares the code).
//
// Numerics are plain fp32: half weights are widened exactly in registers (bf16: 16-bit shift, f16:
// vcvtph2ps), multiplied with the unrounded f32 activations and summed with fp32 FMAs. Each output is
// computed by one thread in a fixed order, so for one `isa` the result is identical run to run and for
// any thread count.
//
// Threads: OpenMP over static chunks of output rows; each thread streams its weight rows sequentially and
// uses every loaded weight row for all M activation rows (the weights are the bandwidth cost).
// kernels::linear() calls this; tests and benchmarks may call it directly to pin an instruction set.
#include <cstdint>

#include "cepe/tensor.h"

namespace cepe::kernels::detail {

constexpr int64_t kGemvMaxRows = 8;

enum class GemvIsa { Generic, Avx2, Avx512 };

const char* gemv_isa_name(GemvIsa isa);
// Whether this CPU (and OS) can run `isa`. Generic is always supported.
bool gemv_isa_supported(GemvIsa isa);
// The best supported isa, detected once (AVX-512 F/BW/VL, else AVX2+FMA+F16C, else portable C++).
GemvIsa gemv_best_isa();

// Requires 1 <= M <= kGemvMaxRows, K >= 0, W.dtype() in {F32, BF16, F16} (raw pointer `w`, [N, K] dense).
// accumulate=false never reads y.
void gemv_rows(const float* x, int64_t M, int64_t K, const void* w, DType dt, int64_t N, float* y, bool accumulate,
               GemvIsa isa);
inline void gemv_rows(const float* x, int64_t M, int64_t K, const void* w, DType dt, int64_t N, float* y,
                      bool accumulate) {
  gemv_rows(x, M, K, w, dt, N, y, accumulate, gemv_best_isa());
}

// The large-M path for half weights (defined in gemm.cpp): widen a tile of weight rows to f32 per thread,
// multiply it with sgemm. Exposed so the benchmarks can compare the two paths at small M.
void linear_widen_sgemm(const float* x, int64_t M, int64_t K, const void* w, DType dt, int64_t N, float* y,
                        bool accumulate);

}  // namespace cepe::kernels::detail
