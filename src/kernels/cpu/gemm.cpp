#include "kernels/cpu/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "core/half.h"
#include "kernels/cpu/gemv_half.h"

namespace cepe::kernels {

namespace {

void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint M, blasint N, blasint K, float alpha, const float* A,
               blasint lda, const float* B, blasint ldb, float beta, float* C, blasint ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint M, blasint N, blasint K, double alpha, const double* A,
               blasint lda, const double* B, blasint ldb, double beta, double* C, blasint ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

std::atomic<bool> g_count{false};
bool g_record_shapes = false;
std::mutex g_count_mutex;
GemmCounters g_counters;
std::map<GemmShape, int64_t> g_shapes;

// Runs f, counting it when the counters are on.
template <class F>
void counted(bool ta, bool tb, int64_t M, int64_t N, int64_t K, F f) {
  if (!g_count.load(std::memory_order_relaxed)) {
    f();
    return;
  }
  const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  if (omp_in_parallel()) {
    f();
    std::lock_guard<std::mutex> lock(g_count_mutex);
    g_counters.nested_flops += flops;
    ++g_counters.nested_calls;
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  f();
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(g_count_mutex);
  g_counters.seconds += dt;
  g_counters.flops += flops;
  ++g_counters.calls;
  if (g_record_shapes) ++g_shapes[GemmShape{ta, tb, M, N, K}];
}

template <class T>
void gemm_any(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
              int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // the BLAS may not touch C then: C = beta * C, as the product is empty
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  counted(trans_a, trans_b, M, N, K, [&] {  // (the clearing counts as the product's time)
    // OpenBLAS clears C for beta = 0 with its generic scalar beta kernel on Haswell/Zen, and in its threaded
    // driver that pass costs up to ~8% of a training step. memset (vectorised, split over the team) and
    // accumulating give the same bits: 0 + x = x exactly, and the BLAS never reads C's old values.
    if (beta == T(0)) {
      const bool dense = ldc == N;
      const int64_t rows = dense ? 1 : M, row_elems = dense ? M * N : N;
      if (!omp_in_parallel() && M * N >= (int64_t{1} << 16) && rows == 1) {
#pragma omp parallel
        {
          const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
          const int64_t lo = row_elems * t / nt, hi = row_elems * (t + 1) / nt;
          std::memset(C + lo, 0, static_cast<size_t>(hi - lo) * sizeof(T));
        }
      } else {
        for (int64_t i = 0; i < rows; ++i) std::memset(C + i * ldc, 0, static_cast<size_t>(row_elems) * sizeof(T));
      }
      beta = T(1);
    }
    blas_gemm(trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B,
              static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
  });
}

}  // namespace

void gemm_counters_enable(bool on, bool record_shapes) {
  std::lock_guard<std::mutex> lock(g_count_mutex);
  g_record_shapes = record_shapes;
  g_count.store(on, std::memory_order_relaxed);
}

GemmCounters gemm_counters() {
  std::lock_guard<std::mutex> lock(g_count_mutex);
  return g_counters;
}

void gemm_counters_reset() {
  std::lock_guard<std::mutex> lock(g_count_mutex);
  g_counters = GemmCounters{};
  g_shapes.clear();
}

std::vector<std::pair<GemmShape, int64_t>> gemm_counted_shapes() {
  std::lock_guard<std::mutex> lock(g_count_mutex);
  return {g_shapes.begin(), g_shapes.end()};
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_any(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_any(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <class T>
void linear_backward(const T* x, const T* dy, int64_t M, int64_t K, int64_t N, const T* W, T* dx, bool accumulate_dx,
                     T* dW) {
  if (dx) gemm(false, false, M, K, N, T(1), dy, N, W, K, accumulate_dx ? T(1) : T(0), dx, K);
  if (dW) gemm(true, false, N, K, M, T(1), dy, N, x, K, T(1), dW, K);
}
template void linear_backward<float>(const float*, const float*, int64_t, int64_t, int64_t, const float*, float*, bool,
                                     float*);
template void linear_backward<double>(const double*, const double*, int64_t, int64_t, int64_t, const double*, double*,
                                      bool, double*);

void linear_backward(const float* x, const float* dy, int64_t M, int64_t K, const Tensor& W, float* dx,
                     bool accumulate_dx, float* dW) {
  check(W.rank() == 2 && W.dim(1) == K && W.dtype() == DType::F32, [&] {
    return "linear_backward: weight " + shape_str(W.shape()) + " " + dtype_name(W.dtype()) +
           " is not an F32 matrix taking inputs of width " + std::to_string(K);
  });
  linear_backward(x, dy, M, K, W.dim(0), W.data<float>(), dx, accumulate_dx, dW);
}

namespace {

void blas_gemv(CBLAS_TRANSPOSE t, blasint M, blasint N, float alpha, const float* A, blasint lda, const float* x,
               float* y) {
  cblas_sgemv(CblasRowMajor, t, M, N, alpha, A, lda, x, 1, 0.0f, y, 1);
}
void blas_gemv(CBLAS_TRANSPOSE t, blasint M, blasint N, double alpha, const double* A, blasint lda, const double* x,
               double* y) {
  cblas_dgemv(CblasRowMajor, t, M, N, alpha, A, lda, x, 1, 0.0, y, 1);
}

template <class T>
void gemv_any(bool trans, int64_t M, int64_t N, T alpha, const T* A, int64_t lda, const T* x, T* y) {
  if (M == 0 || N == 0) {  // an empty product: y = 0
    if (trans) std::fill(y, y + N, T(0));
    else std::fill(y, y + M, T(0));
    return;
  }
  blas_gemv(trans ? CblasTrans : CblasNoTrans, static_cast<blasint>(M), static_cast<blasint>(N), alpha, A,
            static_cast<blasint>(lda), x, y);
}

}  // namespace

void gemv(bool trans, int64_t M, int64_t N, float alpha, const float* A, int64_t lda, const float* x, float* y) {
  gemv_any(trans, M, N, alpha, A, lda, x, y);
}

void gemv(bool trans, int64_t M, int64_t N, double alpha, const double* A, int64_t lda, const double* x, double* y) {
  gemv_any(trans, M, N, alpha, A, lda, x, y);
}

namespace {

void linear_f32(const float* x, int64_t M, int64_t K, const float* W, int64_t N, float* y, bool accumulate) {
  if (M == 1) {
    // OpenBLAS sends M=1 sgemm down its packed path, 4-6x slower than sgemv (docs/gemm-backend.md).
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(N), static_cast<blasint>(K), 1.0f, W,
                static_cast<blasint>(K), x, 1, accumulate ? 1.0f : 0.0f, y, 1);
    return;
  }
  if (M <= detail::kGemvMaxRows) {
    // OpenBLAS's small-M sgemm runs at 10-20 GFLOP/s (and M sgemv calls read W M times); the multi-row
    // GEMV reads W once for all rows (docs/gemm-backend.md).
    detail::gemv_rows(x, M, K, W, DType::F32, N, y, accumulate);
    return;
  }
  gemm(false, true, M, N, K, 1.0f, x, K, W, K, accumulate ? 1.0f : 0.0f, y, N);
}

}  // namespace

// Half-precision weights, large M: widen a block of output rows at a time and multiply it with the BLAS.
void detail::linear_widen_sgemm(const float* x, int64_t M, int64_t K, const void* w, DType dt, int64_t N, float* y,
                                bool accumulate) {
  const int64_t rows_per_tile = std::max<int64_t>(16, std::min<int64_t>(256, (1 << 18) / std::max<int64_t>(K, 1)));
  const int64_t tiles = (N + rows_per_tile - 1) / rows_per_tile;
  const auto* wh = static_cast<const uint16_t*>(w);
#pragma omp parallel
  {
    std::vector<float> buf(static_cast<size_t>(rows_per_tile * K));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * rows_per_tile, r1 = std::min(N, r0 + rows_per_tile);
      convert_to_f32(dt, wh + r0 * K, buf.data(), (r1 - r0) * K);
      // Inside the parallel region OpenBLAS (OpenMP build) runs single-threaded.
      gemm(false, true, M, r1 - r0, K, 1.0f, x, K, buf.data(), K, accumulate ? 1.0f : 0.0f, y + r0, N);
    }
  }
}

void linear(const float* x, int64_t M, int64_t K, const Tensor& W, float* y, bool accumulate) {
  check(W.rank() == 2 && W.dim(1) == K, [&] {
    return "linear: weight " + shape_str(W.shape()) + " does not take inputs of width " + std::to_string(K);
  });
  const int64_t N = W.dim(0);
  if (M == 0 || N == 0) return;
  switch (W.dtype()) {
    case DType::F32: linear_f32(x, M, K, W.data<float>(), N, y, accumulate); return;
    case DType::BF16:
    case DType::F16:
      // Decode-sized M is bound by streaming the weights: widen them in registers, read each row once for
      // all M rows of x (gemv_half.h). Larger M is compute-bound and goes to sgemm on widened tiles.
      if (M <= detail::kGemvMaxRows) detail::gemv_rows(x, M, K, W.raw(), W.dtype(), N, y, accumulate);
      else detail::linear_widen_sgemm(x, M, K, W.raw(), W.dtype(), N, y, accumulate);
      return;
    default: throw Error(std::string("linear: unsupported weight dtype ") + dtype_name(W.dtype()));
  }
}

void set_num_threads(int n) {
  if (n <= 0) return;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace cepe::kernels
