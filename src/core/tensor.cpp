#include "cepe/tensor.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/buffer_pool.h"

#include "core/half.h"

namespace cepe {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::I64: return 8;
    case DType::I8: case DType::U8: case DType::BOOL: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

bool dtype_from_name(const std::string& name, DType* out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"I64", DType::I64},
      {"I32", DType::I32}, {"I8", DType::I8},   {"U8", DType::U8},     {"BOOL", DType::BOOL}};
  for (const auto& [n, t] : table) {
    if (name == n) { *out = t; return true; }
  }
  return false;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

static std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> st(shape.size());
  int64_t acc = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}

Tensor::Tensor(std::shared_ptr<void> owner, void* data, DType dtype, Shape shape)
    : owner_(std::move(owner)), data_(data), dtype_(dtype), shape_(std::move(shape)) {
  for (int64_t d : shape_) check(d >= 0, [&] { return "negative dimension in shape " + shape_str(shape_); });
  strides_ = contiguous_strides(shape_);
  defined_ = true;
}

Tensor Tensor::empty(DType dtype, Shape shape) {
  for (int64_t d : shape) check(d >= 0, [&] { return "negative dimension in shape " + shape_str(shape); });
  size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  // 64-byte alignment keeps vector loads on cache lines.
  // Training reuses its buffers step after step (core/buffer_pool.h).
  void* p = pool_acquire(bytes);
  if (!p) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes for tensor " + shape_str(shape));
  std::shared_ptr<void> owner(p, [bytes](void* q) { pool_release(q, bytes); });
  return Tensor(owner, p, dtype, std::move(shape));
}

Tensor Tensor::zeros(DType dtype, Shape shape) {
  Tensor t = empty(dtype, std::move(shape));
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

float* Tensor::f32() const {
  check(dtype_ == DType::F32, [&] { return std::string("expected an F32 tensor, got ") + dtype_name(dtype_); });
  return static_cast<float*>(data_);
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  check(rank() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], [&] {
    return "slice [" + std::to_string(begin) + ", " + std::to_string(end) + ") out of range for shape " +
           shape_str(shape_);
  });
  Shape s = shape_;
  s[0] = end - begin;
  char* base = static_cast<char*>(data_) + static_cast<size_t>(begin * strides_[0]) * dtype_size(dtype_);
  return Tensor(owner_, base, dtype_, s);
}

Tensor Tensor::reshape(Shape shape) const {
  check(shape_numel(shape) == numel(), [&] { return "cannot reshape " + shape_str(shape_) + " to " + shape_str(shape); });
  check(is_contiguous(), "reshape of a non-contiguous tensor");
  return Tensor(owner_, data_, dtype_, std::move(shape));
}

Tensor Tensor::clone() const {
  Tensor t = empty(dtype_, shape_);
  std::memcpy(t.raw(), data_, nbytes());
  return t;
}

static bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }
static bool is_int(DType t) { return t == DType::I64 || t == DType::I32; }

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return clone();
  Tensor out = empty(dtype, shape_);
  const int64_t n = numel();
  if (is_float(dtype_) && is_float(dtype)) {
    if (dtype == DType::F32) {
      convert_to_f32(dtype_, data_, out.f32(), n);
    } else {
      Tensor tmp = dtype_ == DType::F32 ? *this : to(DType::F32);
      convert_from_f32(tmp.f32(), dtype, out.raw(), n);
    }
  } else if (is_int(dtype_) && is_int(dtype)) {
    for (int64_t i = 0; i < n; ++i) {
      int64_t v = dtype_ == DType::I64 ? data<int64_t>()[i] : data<int32_t>()[i];
      if (dtype == DType::I64) out.data<int64_t>()[i] = v;
      else out.data<int32_t>()[i] = static_cast<int32_t>(v);
    }
  } else {
    throw Error(std::string("unsupported conversion from ") + dtype_name(dtype_) + " to " + dtype_name(dtype));
  }
  return out;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);             // NaN
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);            // overflow -> inf
  if (x < 0x38800000u) {                                                          // subnormal or zero
    if (x < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = x >> 23;
    uint32_t m = (x & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;                                               // 14..24
    uint32_t half = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t h = ((x - 0x38000000u) >> 13);
  const uint32_t rem = x & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

void convert_to_f32(DType src_dtype, const void* src, float* dst, int64_t n) {
  switch (src_dtype) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    default: throw Error(std::string("cannot convert ") + dtype_name(src_dtype) + " to F32");
  }
}

void convert_from_f32(const float* src, DType dst_dtype, void* dst, int64_t n) {
  switch (dst_dtype) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::BF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    default: throw Error(std::string("cannot convert F32 to ") + dtype_name(dst_dtype));
  }
}

int64_t first_non_finite(const float* p, int64_t n) {
  // Branch-free scan of blocks (vectorises), then locate the value inside the first bad block.
  constexpr int64_t kBlock = 1024;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    bool bad = false;
    for (int64_t i = b; i < e; ++i) bad |= !(std::fabs(p[i]) <= std::numeric_limits<float>::max());
    if (bad)
      for (int64_t i = b; i < e; ++i)
        if (!std::isfinite(p[i])) return i;
  }
  return -1;
}

void check_finite(const Tensor& t, const std::string& what) {
  if (!t.defined()) return;
  const int64_t n = t.numel();
  int64_t bad = -1;
  float value = 0;
  if (t.dtype() == DType::F32) {
    bad = first_non_finite(t.data<float>(), n);
    if (bad >= 0) value = t.data<float>()[bad];
  } else if (t.dtype() == DType::BF16 || t.dtype() == DType::F16) {
    const uint16_t* h = t.data<uint16_t>();
    // Exponent all ones is Inf/NaN in both formats.
    const uint16_t exp_mask = t.dtype() == DType::BF16 ? 0x7f80 : 0x7c00;
    for (int64_t i = 0; i < n && bad < 0; ++i)
      if ((h[i] & exp_mask) == exp_mask) bad = i;
    if (bad >= 0) value = t.dtype() == DType::BF16 ? bf16_to_f32(h[bad]) : f16_to_f32(h[bad]);
  }
  if (bad < 0) return;
  std::string at = "[";
  int64_t rest = bad;
  Shape idx(t.shape().size());
  for (size_t d = idx.size(); d-- > 0;) {
    const int64_t dim = std::max<int64_t>(1, t.shape()[d]);
    idx[d] = rest % dim;
    rest /= dim;
  }
  for (size_t d = 0; d < idx.size(); ++d) at += (d ? ", " : "") + std::to_string(idx[d]);
  at += "]";
  throw Error(what + " holds " + (std::isnan(value) ? "NaN" : value > 0 ? "+Inf" : "-Inf") + " at " + at + " of " +
              shape_str(t.shape()));
}

}  // namespace cepe
