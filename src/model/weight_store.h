#pragma once
// The tensors of a checkpoint directory: `model.safetensors`, or the shards named by
// `model.safetensors.index.json` (the Hugging Face sharded layout). Tensors are views into the mapped files.
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cepe/safetensors.h"
#include "cepe/tensor.h"

namespace cepe {

class WeightStore {
 public:
  static WeightStore open(const std::string& dir);

  bool has(const std::string& name) const;
  // A floating-point weight of exactly `shape`; errors name the tensor, the file and both shapes.
  Tensor get(const std::string& name, const Shape& shape) const;
  // The same as a float32 copy (small tensors such as norm weights, converted once at load).
  Tensor get_f32(const std::string& name, const Shape& shape) const;

  // Names that exist in the files but were never requested (reported as unexpected tensors).
  std::vector<std::string> unused() const;
  std::string describe() const;  // "dir/model.safetensors" or "dir (N shards)"

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafeTensors>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index in files_
  mutable std::set<std::string> used_;
};

}  // namespace cepe
