#pragma once
// A CEPE model: the decoder (a LLaMA with cross-attention in its last layers) and the parallel context
// encoder, loaded from a Hugging Face checkpoint directory (config.json + safetensors, weights mapped).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cepe/config.h"
#include "cepe/kv_cache.h"
#include "cepe/tensor.h"

namespace cepe {

struct ModelImpl;

// Encoder output, kept once and reused at every decoding step.
struct EncodedContext {
  int64_t batch = 0, n_ctx = 0, ctx_len = 0;  // ctx_len: per-chunk length of the states (chunk + query for with_query-N)
  // Entries the cross-attention reads: one [B, n_ctx*ctx_len, enc_hidden] tensor (the final normed states),
  // or all E+1 hidden-state entries when num_cross_attn_hidden_states > 1.
  std::vector<Tensor> states;
  Tensor mask;  // U8 [B, n_ctx*ctx_len], 1 = real token
  // Per-layer cross-attention K/V projected once from `states` and reused (filled lazily by the decoder).
  std::vector<Tensor> cross_k, cross_v;

  int64_t keys() const { return n_ctx * ctx_len; }
  const Tensor& final_states() const { return states.back(); }
};

// Context chunks for one batch: ids and mask [B, n_ctx, ctx_len].
struct ContextChunks {
  int64_t batch = 0, n_ctx = 0, ctx_len = 0;
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
};

class CepeModel {
 public:
  static std::shared_ptr<CepeModel> load(const std::string& dir);
  ~CepeModel();

  const CepeConfig& config() const;
  const std::string& dir() const;
  bool has_context_encoder() const;  // the model can read contexts (cross-attention layers exist)

  // Runs the encoder on every chunk independently (positions restart at 0 in each chunk). For the
  // with_query modes, `query_ids`/`query_mask` ([B, query_stride], the decoder input) supply the first N
  // tokens appended to every chunk.
  EncodedContext encode(const ContextChunks& chunks, const int32_t* query_ids = nullptr,
                        const uint8_t* query_mask = nullptr, int64_t query_stride = 0) const;

  // Decoder on T new tokens per row: ids/positions [B, T]; attn_mask [B, past+T] with row stride
  // `mask_stride` (0 = past+T; null mask = all ones);
  // `cache` (may be null) holds the past; `ctx` (may be null) is the encoded context.
  // Returns logits [B, T, V], or [B, 1, V] for the last position only when `last_only`.
  Tensor decode(const int32_t* ids, int64_t batch, int64_t len, const int64_t* positions, const uint8_t* attn_mask,
                KVCache* cache, EncodedContext* ctx, bool last_only = false, int64_t mask_stride = 0) const;

  // A KV cache sized for `capacity` positions of `batch` rows.
  std::unique_ptr<KVCache> make_cache(int64_t batch, int64_t capacity) const;

  // Checks token ids against the vocabularies (clear error naming the position).
  void check_decoder_ids(const int32_t* ids, int64_t n, const std::string& what) const;
  void check_encoder_ids(const int32_t* ids, int64_t n, const std::string& what) const;

  size_t weight_bytes() const;

 private:
  CepeModel();
  std::unique_ptr<ModelImpl> impl_;
};

}  // namespace cepe
