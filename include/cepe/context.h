#pragma once
// Long contexts outside the decoder: text cut into encoder chunks, encoded contexts saved to and loaded from
// files (safetensors, with the fingerprint of the model that encoded them), and several contexts combined.
#include <cstdint>
#include <string>
#include <vector>

#include "cepe/model.h"

namespace cepe {

// Cuts each document into chunks of `chunk_len` tokens (the last chunk of each document padded with `pad_id`
// and mask 0), all for one batch row: [1, n_ctx, chunk_len].
ContextChunks chunk_documents(const std::vector<std::vector<int32_t>>& docs, int64_t chunk_len, int32_t pad_id);

// Writes `ctx` atomically: tensors `states.{e}`, `mask`, and metadata (format, model fingerprint, layout,
// sources). The file can be read by any safetensors reader.
void save_context(const std::string& path, const EncodedContext& ctx, const CepeModel& model,
                  const std::vector<std::string>& sources = {});

// Reads a context file written by save_context, memory-mapped (no copy), after checking that `model`
// has the fingerprint it was encoded with and that every shape fits the model.
EncodedContext load_context(const std::string& path, const CepeModel& model);

// Concatenates contexts of one batch row along their keys (cross-attention is one softmax over all keys
// and has no positions, so order does not matter). States are stored in `dtype`.
EncodedContext concat_contexts(const std::vector<const EncodedContext*>& parts, DType dtype);

}  // namespace cepe
