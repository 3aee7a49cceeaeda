#pragma once
#include <cstdint>

namespace cepe::kernels {

// y[r, :] = w * (x[r, :] / sqrt(mean(x[r, :]^2) + eps)); x, y: [rows, d] (may alias), w: [d].
// The mean is accumulated in double so the result is the rounding of the exact value, as the reference
// computes it in fp32 before the weight multiply. With `rstd` ([rows]) it also keeps 1/sqrt(mean + eps)
// for the backward.
template <class T>
void rmsnorm(const T* x, const T* w, int64_t rows, int64_t d, T eps, T* y, T* rstd = nullptr);

// Backward of rmsnorm, given its input x and saved rstd: dx = r·(w∘dy) − r³/d · x · Σ(w∘dy∘x), added to dx
// when accumulate_dx; dw += Σ_rows dy∘x·r (skipped when dw is null: a frozen norm).
template <class T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, int64_t rows, int64_t d, T* dx,
                      bool accumulate_dx, T* dw);

}  // namespace cepe::kernels
