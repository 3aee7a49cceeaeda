#pragma once
// Generation with the reference's semantics (Hugging Face 4.34 greedy/sample loops as CEPE's
// LlamaForCausalContextLM drives them): the context is encoded once and reused at every step, the
// decoder keeps a KV cache, positions come from cumsum(mask) - 1, eos ends a row and finished rows are
// padded with the pad id (eos when the model has none).
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "cepe/model.h"

namespace cepe {

struct SamplingOptions {
  bool greedy = true;
  float temperature = 1.0f;
  int64_t top_k = 0;     // 0 = off
  float top_p = 1.0f;    // 1 = off
  uint64_t seed = 0;
};

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  SamplingOptions sampling;
  std::optional<int64_t> eos_id;  // default: the config's eos_token_id
  std::optional<int64_t> pad_id;  // default: the config's pad_token_id, else eos
  EncodeOptions encode;           // how a request's context is encoded
  DecodeOptions decode;           // cross-attention strategy and budget (last_only/mask_stride are set here)
};

struct GenerateRequest {
  int64_t batch = 0, len = 0;
  std::vector<int32_t> ids;    // [batch, len]
  std::vector<uint8_t> mask;   // [batch, len]; empty = all ones
  std::optional<ContextChunks> context;
  EncodedContext* encoded = nullptr;  // a context encoded beforehand (used instead of `context`)
};

struct GenerateTimings {
  double encode_s = 0, prefill_s = 0, decode_s = 0;
  int64_t context_tokens = 0, prefill_tokens = 0, decode_tokens = 0;
};

struct GenerateResult {
  std::vector<std::vector<int32_t>> sequences;  // [batch][len + steps]
  int64_t steps = 0;
  GenerateTimings timings;
};

// Called after each step with the new token of every row; return false to stop early.
using TokenCallback = std::function<bool(int64_t step, const std::vector<int32_t>& tokens,
                                         const std::vector<bool>& finished)>;

GenerateResult generate(const CepeModel& model, GenerateRequest& request, const GenerateOptions& options,
                        const TokenCallback& on_token = {});

// Picks the next token from one row of logits [V] (applies temperature, top-k, top-p as HF's warpers do).
class Sampler {
 public:
  explicit Sampler(const SamplingOptions& o);
  int32_t sample(const float* logits, int64_t vocab);

 private:
  SamplingOptions o_;
  uint64_t state_;
  double uniform();
};

}  // namespace cepe
