#include "cepe/kv_cache.h"

namespace cepe {

KVCache::KVCache(int64_t layers, int64_t batch_, int64_t capacity_, int64_t kv_dim_)
    : batch(batch_), capacity(capacity_), kv_dim(kv_dim_) {
  for (int64_t l = 0; l < layers; ++l) {
    k.push_back(Tensor::empty(DType::F32, {batch, capacity, kv_dim}));
    v.push_back(Tensor::empty(DType::F32, {batch, capacity, kv_dim}));
  }
}

size_t KVCache::bytes() const {
  size_t n = 0;
  for (const Tensor& t : k) n += t.nbytes();
  for (const Tensor& t : v) n += t.nbytes();
  return n;
}

}  // namespace cepe
