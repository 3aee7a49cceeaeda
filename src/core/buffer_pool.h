#pragma once
// A cache of freed tensor buffers by exact size, for training. Every step of a run allocates the same shapes
// in the same order, so with the pool on, the first step plans the activation memory (its buffers are
// allocated once) and every later step reuses them: no allocation, no page faults, no zeroing by the
// kernel. Inference leaves it off (memory-mapped weights and one-off buffers gain nothing from it).
#include <cstddef>
#include <cstdint>

namespace cepe {

// Buffers of at least this many bytes are pooled; smaller ones come from malloc as before.
constexpr size_t kPooledMinBytes = size_t{64} << 10;

// Takes a 64-byte aligned buffer of `bytes` (rounded up to 64) from the pool when it is on and holds one,
// else allocates; null when out of memory. release() returns it to the pool (or frees it when the pool is off).
void* pool_acquire(size_t bytes);
void pool_release(void* p, size_t bytes);

struct PoolStats {
  int64_t hits = 0, misses = 0;
  size_t cached_bytes = 0;  // free buffers held now
};
PoolStats pool_stats();

// Turns the pool on for its lifetime (nestable); the last one off frees the cached buffers.
class ScopedBufferPool {
 public:
  ScopedBufferPool();
  ~ScopedBufferPool();
  ScopedBufferPool(const ScopedBufferPool&) = delete;
  ScopedBufferPool& operator=(const ScopedBufferPool&) = delete;
};

}  // namespace cepe
