#pragma once
// CepeModel's state, shared inside the model layer (training computes gradients over the same weights).
#include <string>

#include "cepe/model.h"
#include "model/weight_store.h"
#include "model/weights.h"

namespace cepe {

struct ModelImpl {
  std::string dir;
  CepeConfig cfg;
  WeightStore store;   // the mapped files (empty for a model built in memory)
  ModelWeights weights;
};

// Token ids must index the vocabulary (the error names `what` and the position).
void check_ids(const int32_t* ids, int64_t n, int64_t vocab, const std::string& what);

// How context chunks go through the encoder: B·n_ctx rows of `len` = ctx_len + query tokens (with_query
// modes append the first N decoder tokens to every chunk), of which the first `keep` positions are kept.
struct EncoderLayout {
  int64_t batch = 0, n_ctx = 0, ctx_len = 0, query = 0, len = 0, rows = 0, keep = 0;
};
EncoderLayout encoder_layout(const CepeConfig& c, const ContextChunks& ch, const int32_t* query_ids,
                             int64_t query_stride);
// The encoder's input for chunk rows [r0, r0 + count): ids, mask and positions, each [count, len].
void fill_encoder_rows(const EncoderLayout& lay, const ContextChunks& ch, const int32_t* query_ids,
                       const uint8_t* query_mask, int64_t query_stride, int64_t r0, int64_t count, int32_t* ids,
                       uint8_t* mask, int64_t* pos);
// The hidden-state entry (of `entries`) that decoder layer `layer`'s cross-attention reads.
int64_t cross_state_entry(const CepeConfig& c, int64_t layer, int64_t entries);

inline ModelImpl& model_impl(const CepeModel& m) { return *m.impl_; }
// A model over weights built in memory (random init, assembly); `impl->dir` names it in messages.
std::shared_ptr<CepeModel> make_model(std::unique_ptr<ModelImpl> impl);

}  // namespace cepe
