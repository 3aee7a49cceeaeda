#pragma once
#include <cstdint>

namespace cepe::kernels {

// In-place softmax of each row of x: [rows, n].
void softmax_rows(float* x, int64_t rows, int64_t n);
// out[r, :] = log_softmax(x[r, :]) (may alias).
void log_softmax_rows(const float* x, int64_t rows, int64_t n, float* out);

// x[j] = exp(min(x[j] - shift, 0)) for j < n, with exp(-inf) = 0 (a key masked by writing -inf): fast_exp.h's
// vectorised pass for f32, libm for the f64 test builds.
template <class T>
void shifted_exp(T* x, int64_t n, T shift);

// One row of raw scores s[0, n) turned into softmax weights over the allowed keys: those before `limit` whose
// mask byte is set (mask null: all). Weights of the other keys are 0. Returns false, with all weights 0,
// when no key is allowed; otherwise true, with the row's log-sum-exp (max + log Σ exp) in *lse when given.
template <class T>
bool masked_softmax_row(T* s, int64_t limit, int64_t n, const uint8_t* mask, T* lse = nullptr);

// One key block of an online (flash-style) softmax for M query rows: s [M, n] holds scaled scores and is
// overwritten with the block's weights; m/l are the running max and normaliser; acc [M, D] (row stride
// acc_ld) accumulates weights · V, V [n, D] with row stride v_ld. After the last block, acc / l is the output.
void online_softmax_block(float* s, int64_t M, int64_t n, const uint8_t* mask, float* m, float* l, float* acc,
                          int64_t acc_ld, const float* V, int64_t v_ld, int64_t D);
// acc[r, :] /= l[r] for the M rows of an online softmax.
void online_softmax_finish(float* acc, int64_t M, int64_t acc_ld, const float* l, int64_t D);

}  // namespace cepe::kernels
