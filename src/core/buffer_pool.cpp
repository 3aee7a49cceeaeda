#include "core/buffer_pool.h"

#include <cstdlib>
#include <map>
#include <mutex>

namespace cepe {

namespace {

std::mutex g_mutex;
int g_users = 0;
std::multimap<size_t, void*> g_free;  // rounded size -> buffer
PoolStats g_stats;

size_t rounded(size_t bytes) { return bytes ? (bytes + 63) / 64 * 64 : 64; }

}  // namespace

void* pool_acquire(size_t bytes) {
  const size_t n = rounded(bytes);
  if (n >= kPooledMinBytes) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_users > 0) {
      auto it = g_free.find(n);
      if (it != g_free.end()) {
        void* p = it->second;
        g_free.erase(it);
        g_stats.cached_bytes -= n;
        ++g_stats.hits;
        return p;
      }
      ++g_stats.misses;
    }
  }
  return std::aligned_alloc(64, n);
}

void pool_release(void* p, size_t bytes) {
  if (!p) return;
  const size_t n = rounded(bytes);
  if (n >= kPooledMinBytes) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_users > 0) {
      g_free.emplace(n, p);
      g_stats.cached_bytes += n;
      return;
    }
  }
  std::free(p);
}

PoolStats pool_stats() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_stats;
}

ScopedBufferPool::ScopedBufferPool() {
  std::lock_guard<std::mutex> lock(g_mutex);
  ++g_users;
}

ScopedBufferPool::~ScopedBufferPool() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (--g_users > 0) return;
  for (auto& [n, p] : g_free) std::free(p);
  g_free.clear();
  g_stats.cached_bytes = 0;
}

}  // namespace cepe
