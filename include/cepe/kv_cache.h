#pragma once
// The decoder's self-attention KV cache: per layer, K and V rows [batch, capacity, kv_dim] in f32.
#include <cstdint>
#include <vector>

#include "cepe/tensor.h"

namespace cepe {

struct KVCache {
  int64_t batch = 0, capacity = 0, kv_dim = 0;
  int64_t length = 0;    // positions filled so far (the same for every row)
  int64_t rope_seen = 0; // longest sequence seen, for dynamic NTK RoPE (the reference's rotary cache grows)
  std::vector<Tensor> k, v;

  KVCache() = default;
  KVCache(int64_t layers, int64_t batch, int64_t capacity, int64_t kv_dim);
  size_t bytes() const;
};

}  // namespace cepe
