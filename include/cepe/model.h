#pragma once
// A CEPE model: the decoder (a LLaMA with cross-attention in its last layers) and the parallel context
// encoder, loaded from a Hugging Face checkpoint directory (config.json + safetensors, weights mapped).
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cepe/config.h"
#include "cepe/kv_cache.h"
#include "cepe/tensor.h"

namespace cepe {

struct ModelImpl;

// How the decoder's cross-attention reads the encoder states Φ (all give the reference's numbers):
//  Recompute: project K/V from Φ block by block at every call, online softmax (the reference's math, with
//             bounded memory: no [T, K] scores and no full K/V are ever materialised);
//  Cached:    project each layer's K/V once per context and keep them (fast, 2·kv_dim floats per key and layer);
//  Absorbed:  fold W_k into the queries and apply W_v after the weighted sum: all heads attend over the
//             shared states in one pass (scores, then the weighted sum), reading only Φ (decode);
//  Auto:      the one a cost model (FLOPs, and memory traffic at the machine's FLOP/byte balance) says is
//             cheapest for this call; Cached only within the memory budget and only when decoding from the
//             cache beats Absorbed (e.g. few KV heads), since filling it costs a Recompute.
enum class CrossAttnMode { Recompute, Cached, Absorbed, Auto };
const char* cross_attn_mode_name(CrossAttnMode m);
bool parse_cross_attn_mode(const std::string& name, CrossAttnMode* out);

// Encoder output, kept once and reused at every decoding step.
struct EncodedContext {
  // Chunk layout (metadata): n_ctx chunks of ctx_len positions per row (chunk + query for with_query-N).
  int64_t batch = 0, n_ctx = 0, ctx_len = 0;
  // Entries the cross-attention reads, F32 or BF16 [B, K, enc_hidden]: the final normed states, or all E+1
  // hidden-state entries when num_cross_attn_hidden_states > 1.
  std::vector<Tensor> states;
  Tensor mask;  // U8 [B, K], 1 = real token
  // Per-layer cross-attention K/V, F32 [B, K, kv_dim], filled by the Cached strategy and reused.
  std::vector<Tensor> cross_k, cross_v;

  int64_t keys() const { return states.empty() ? 0 : states[0].dim(1); }
  const Tensor& final_states() const { return states.back(); }
  size_t state_bytes() const;
  size_t cross_kv_bytes() const;
};

struct EncodeOptions {
  DType state_dtype = DType::F32;  // F32 or BF16 storage of the states
  int64_t batch_tokens = 8192;     // encoder tokens per pass: bounds the activation scratch
  // Called after every pass with the chunks done and the total.
  std::function<void(int64_t done, int64_t total)> progress;
};

// Time and arithmetic of the cross-attention strategy's work over the encoder states (filled when
// DecodeOptions::stats is set): from the projected queries to the attention output, i.e. K/V projection
// and attention (recompute), attention over cached K/V (cached), or query folding, attention over Φ and
// W_v (absorbed). The q/o projections, the same in every strategy, are not included.
struct CrossAttnStats {
  double seconds = 0;
  double flops = 0;
};

struct DecodeOptions {
  CrossAttnMode cross_attn = CrossAttnMode::Auto;
  size_t cross_kv_budget = 0;  // bytes the Auto strategy may spend on a cross K/V cache
  bool last_only = false;      // logits for the last position only
  int64_t mask_stride = 0;     // row stride of the attention mask (0 = past + T)
  CrossAttnStats* stats = nullptr;
};

// Context chunks for one batch: ids and mask [B, n_ctx, ctx_len].
struct ContextChunks {
  int64_t batch = 0, n_ctx = 0, ctx_len = 0;
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
};

struct LoadOptions {
  // Every weight as a writable f32 copy (training keeps f32 master weights); otherwise matrices stay
  // memory-mapped in the file's dtype.
  bool owned_f32 = false;
};

class CepeModel {
 public:
  static std::shared_ptr<CepeModel> load(const std::string& dir, const LoadOptions& options = {});
  // A model of owned f32 weights filled as Hugging Face's _init_weights would (the values `cepe init` writes
  // for the same seed and initializer_range).
  static std::shared_ptr<CepeModel> create_random(const CepeConfig& cfg, uint64_t seed, double initializer_range = 0.02);
  // Writes dir/model.safetensors (the weights in their dtype, or converted to `dtype` when given, under the
  // reference's names; tied copies are not stored, as save_pretrained does) and then dir/config.json (its
  // torch_dtype the weights'), each atomically.
  void save(const std::string& dir, std::optional<DType> dtype = std::nullopt) const;
  ~CepeModel();

  const CepeConfig& config() const;
  const std::string& dir() const;
  bool has_context_encoder() const;  // the model can read contexts (cross-attention layers exist)

  // Runs the encoder on every chunk independently (positions restart at 0 in each chunk). For the
  // with_query modes, `query_ids`/`query_mask` ([B, query_stride], the decoder input) supply the first N
  // tokens appended to every chunk.
  EncodedContext encode(const ContextChunks& chunks, const int32_t* query_ids = nullptr,
                        const uint8_t* query_mask = nullptr, int64_t query_stride = 0,
                        const EncodeOptions& options = {}) const;

  // Decoder on T new tokens per row: ids/positions [B, T]; attn_mask [B, past+T] (null = all ones);
  // `cache` (may be null) holds the past; `ctx` (may be null) is the encoded context.
  // Returns logits [B, T, V], or [B, 1, V] with options.last_only.
  Tensor decode(const int32_t* ids, int64_t batch, int64_t len, const int64_t* positions, const uint8_t* attn_mask,
                KVCache* cache, EncodedContext* ctx, const DecodeOptions& options = {}) const;

  // Bytes a Cached cross K/V for `keys` encoder tokens per row would take.
  size_t cross_kv_bytes(int64_t batch, int64_t keys) const;

  // A KV cache sized for `capacity` positions of `batch` rows.
  std::unique_ptr<KVCache> make_cache(int64_t batch, int64_t capacity) const;

  // StreamingLLM's cache eviction (Xiao et al. 2023, "attention sinks"): keeps the first `keep_first`
  // positions (the sinks) and the last `keep_last`, drops those between, and re-assigns positions inside the
  // cache: the kept recent keys are rotated back by the number dropped (RoPE rotations compose), so the cache
  // holds positions 0 .. keep_first + keep_last - 1 and the next call continues at cache->length. With dynamic
  // NTK scaling the rotation is the current scale's, as the reference's streaming code recomputes none.
  void evict_cache(KVCache& cache, int64_t keep_first, int64_t keep_last) const;

  // Checks token ids against the vocabularies (clear error naming the position).
  void check_decoder_ids(const int32_t* ids, int64_t n, const std::string& what) const;
  void check_encoder_ids(const int32_t* ids, int64_t n, const std::string& what) const;

  size_t weight_bytes() const;
  // Reads every page of the mapped weights once, so that a measurement that follows does not time the disk.
  void warm_up() const;
  // The part of weight_bytes() that only reads contexts: the encoder and the cross-attention modules.
  size_t context_weight_bytes() const;

  // Identifies what determines the encoder states (encoder config, encode mode, encoder weights sampled
  // throughout each tensor): two models with the same fingerprint produce the same contexts.
  std::string encoder_fingerprint() const;

 private:
  CepeModel();
  std::unique_ptr<ModelImpl> impl_;
  friend ModelImpl& model_impl(const CepeModel& m);  // the model layer's view (src/model/model_impl.h)
  friend std::shared_ptr<CepeModel> make_model(std::unique_ptr<ModelImpl> impl);
};

}  // namespace cepe
