#pragma once
#include <cstdint>

namespace cepe::kernels {

// gate[i] = silu(gate[i]) * up[i]  (the SwiGLU of the LLaMA MLP), n elements, in place in `gate`.
void swiglu(float* gate, const float* up, int64_t n);
// out[i] = silu(gate[i]) * up[i], keeping the inputs for the backward (out may alias gate).
template <class T>
void swiglu(const T* gate, const T* up, int64_t n, T* out);
// Backward of swiglu: dgate = dout·up·silu'(gate), dup = dout·silu(gate) (overwritten).
template <class T>
void swiglu_backward(const T* dout, const T* gate, const T* up, int64_t n, T* dgate, T* dup);

// out[i] = silu(x[i]) = x·σ(x) (may alias), and its backward dx = dout·silu'(x) (overwritten).
template <class T>
void silu(const T* x, int64_t n, T* out);
template <class T>
void silu_backward(const T* dout, const T* x, int64_t n, T* dx);

// h[i] += x[i]: the residual connections.
template <class T>
void add_inplace(T* h, const T* x, int64_t n);

// y[r, :] += b for every row of y [rows, n] (a linear layer's bias), and its backward db += Σ_rows dy[r, :].
template <class T>
void add_bias(T* y, const T* b, int64_t rows, int64_t n);
template <class T>
void bias_backward(const T* dy, int64_t rows, int64_t n, T* db);

}  // namespace cepe::kernels
