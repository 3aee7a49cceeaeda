#pragma once
// Tensor: one view type (storage owner, data pointer, dtype, shape, strides) used by every layer.
// Tensors are row-major. Kernels take contiguous views; `owner` keeps the bytes alive (an owned buffer
// or a memory-mapped file), so views into a mapped checkpoint cost nothing to create.
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "cepe/error.h"

namespace cepe {

enum class DType : uint8_t { F32, F16, BF16, I64, I32, I8, U8, BOOL };

size_t dtype_size(DType t);
const char* dtype_name(DType t);          // safetensors spelling: "F32", "BF16", ...
bool dtype_from_name(const std::string& name, DType* out);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);    // "[2, 3]"
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  // A view over `data`, kept alive by `owner` (may be null for borrowed memory).
  Tensor(std::shared_ptr<void> owner, void* data, DType dtype, Shape shape);

  static Tensor empty(DType dtype, Shape shape);   // uninitialised owned buffer
  static Tensor zeros(DType dtype, Shape shape);

  bool defined() const { return defined_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const std::vector<int64_t>& strides() const { return strides_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(i < 0 ? i + rank() : i); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;

  void* raw() const { return data_; }
  template <class T> T* data() const { return static_cast<T*>(data_); }
  float* f32() const;                      // checks dtype == F32
  const std::shared_ptr<void>& owner() const { return owner_; }

  // Rows [begin, end) along dim 0, sharing storage.
  Tensor slice0(int64_t begin, int64_t end) const;
  // Same storage, new shape with the same element count.
  Tensor reshape(Shape shape) const;
  // Deep copy into an owned contiguous buffer.
  Tensor clone() const;
  // Converted copy (F32/F16/BF16 between each other, I64/I32 between each other).
  Tensor to(DType dtype) const;

 private:
  std::shared_ptr<void> owner_;
  void* data_ = nullptr;
  DType dtype_ = DType::F32;
  Shape shape_;
  std::vector<int64_t> strides_;
  bool defined_ = false;
};

// Index of the first NaN/Inf among `n` floats, or -1.
int64_t first_non_finite(const float* p, int64_t n);
// Throws "<what> holds NaN at [i, j, ...] of [shape]" when an F32/BF16/F16 tensor holds a NaN or Inf (a checkpoint
// with bad weights must fail loudly, not print garbage or silently ignore a context). Other dtypes pass.
void check_finite(const Tensor& t, const std::string& what);

}  // namespace cepe
