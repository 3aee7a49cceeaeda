#pragma once
// Matrix products. Weights stay in the checkpoint's layout W: [out, in] (nn.Linear), f32, bf16 or f16;
// half-precision weights are never copied whole: up to 8 rows they are widened in registers by a GEMV kernel
// (gemv_half.h), beyond that tile by tile into a small per-thread buffer for the BLAS.
#include <cstdint>
#include <utility>
#include <vector>

#include "cepe/tensor.h"

namespace cepe::kernels {

// y[M, N] = x[M, K] · W[N, K]ᵀ  (+ y when accumulate). x and y are f32, row-major, dense.
void linear(const float* x, int64_t M, int64_t K, const Tensor& W, float* y, bool accumulate = false);

// Row-major f32 GEMM: C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C, with leading dimensions.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The same in f64: the training kernels are templates, and their f64 builds are what the finite-difference
// tests check.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

// Row-major f32 GEMV: y = alpha * op(A) x, A: [M, N] with leading dimension lda; op(A) = Aᵀ when trans
// (then x has M entries and y has N).
void gemv(bool trans, int64_t M, int64_t N, float alpha, const float* A, int64_t lda, const float* x, float* y);
void gemv(bool trans, int64_t M, int64_t N, double alpha, const double* A, int64_t lda, const double* x, double* y);

// Backward of y[M, N] = x[M, K] · W[N, K]ᵀ (a dense row-major W): dx = dy · W (added to dx when
// accumulate_dx), dW += dyᵀ · x. Either output may be null when it is not needed (a frozen weight, or
// nothing trainable below).
template <class T>
void linear_backward(const T* x, const T* dy, int64_t M, int64_t K, int64_t N, const T* W, T* dx, bool accumulate_dx,
                     T* dW);
// dx and dW of linear() for an F32 weight tensor (the training path keeps f32 master weights).
void linear_backward(const float* x, const float* dy, int64_t M, int64_t K, const Tensor& W, float* dx,
                     bool accumulate_dx, float* dW);

// Counters of the f32 matrix products, for `cepe bench train` only: off unless enabled (one relaxed load per
// call). Wall time is counted only for calls made outside OpenMP parallel regions (the multithreaded BLAS
// calls of the linears); calls from inside a region (attention's per-head products, each single-threaded)
// count their FLOPs apart, since their times overlap.
struct GemmShape {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  auto operator<=>(const GemmShape&) const = default;
};
struct GemmCounters {
  double seconds = 0, flops = 0;  // calls outside parallel regions
  int64_t calls = 0;
  double nested_flops = 0;        // calls inside parallel regions
  int64_t nested_calls = 0;
};
void gemm_counters_enable(bool on, bool record_shapes = false);
GemmCounters gemm_counters();
void gemm_counters_reset();
// Distinct shapes of the counted (outside-region) calls since the last reset, with their call counts.
std::vector<std::pair<GemmShape, int64_t>> gemm_counted_shapes();

// Sets the thread count of both OpenMP and the BLAS (no oversubscription). n <= 0 keeps the default.
void set_num_threads(int n);
int num_threads();

}  // namespace cepe::kernels
