#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "cepe/generate.h"

namespace cepe {

Sampler::Sampler(const SamplingOptions& o) : o_(o), state_(o.seed ^ 0x9e3779b97f4a7c15ull) {
  check(o.temperature > 0, "temperature must be positive");
  check(o.top_p > 0 && o.top_p <= 1, "top-p must be in (0, 1]");
  check(o.top_k >= 0, "top-k must be >= 0");
}

// splitmix64: a small, well-mixed generator whose stream is fixed by the seed on every platform.
double Sampler::uniform() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
}

int32_t Sampler::sample(const float* logits, int64_t vocab) {
  if (o_.greedy) {
    // First maximal index, as torch.argmax.
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> s(logits, logits + vocab);
  // HF warper order: temperature, top-k, top-p.
  for (float& x : s) x /= o_.temperature;
  if (o_.top_k > 0 && o_.top_k < vocab) {
    std::vector<float> sorted(s);
    std::nth_element(sorted.begin(), sorted.begin() + (o_.top_k - 1), sorted.end(), std::greater<float>());
    const float kth = sorted[static_cast<size_t>(o_.top_k - 1)];
    for (float& x : s)
      if (x < kth) x = neg_inf;
  }
  if (o_.top_p < 1.0f) {
    std::vector<int64_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] < s[b]; });  // ascending
    const float m = s[static_cast<size_t>(order.back())];
    double total = 0;
    for (float x : s) total += std::exp(static_cast<double>(x) - m);
    double cum = 0;
    // Remove the low tail whose cumulative probability is <= 1 - top_p; always keep the top token.
    for (size_t i = 0; i + 1 < order.size(); ++i) {
      cum += std::exp(static_cast<double>(s[static_cast<size_t>(order[i])]) - m) / total;
      if (cum <= 1.0 - o_.top_p) s[static_cast<size_t>(order[i])] = neg_inf;
      else break;
    }
  }
  const float m = *std::max_element(s.begin(), s.end());
  double total = 0;
  std::vector<double> p(s.size());
  for (size_t i = 0; i < s.size(); ++i) total += (p[i] = std::exp(static_cast<double>(s[i]) - m));
  double u = uniform() * total;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) continue;
    u -= p[i];
    if (u <= 0) return static_cast<int32_t>(i);
  }
  for (size_t i = p.size(); i-- > 0;)
    if (p[i] > 0) return static_cast<int32_t>(i);
  return 0;
}

}  // namespace cepe
