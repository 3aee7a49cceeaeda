#pragma once
// The tensor-level JSON contract of `cepe forward` / `cepe generate --request` (see docs/cli.md):
// input_ids [bsz][seq], attention_mask [bsz][seq], encoder_input_ids [bsz][n_ctx][ctx_len],
// encoder_attention_mask [bsz][n_ctx][ctx_len]; forward also takes optional position_ids [bsz][seq]. Ragged or ill-typed arrays are errors naming the field.
#include <optional>
#include <string>
#include <vector>

#include "cepe/model.h"

namespace cepe::cli {

struct Request {
  int64_t batch = 0, len = 0;
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;  // always filled (ones by default)
  std::vector<int64_t> positions;  // optional position_ids [bsz][seq] (forward only); empty = arange
  std::optional<ContextChunks> context;
};

Request read_request(const std::string& path);

// `cepe grad`'s request: the forward request plus labels [bsz][seq] (-100 = ignored) and the optional CEPED
// fields (distill_index [bsz][T][k], distill_prob [bsz][T][k+1], lm_loss_cof, kl_loss_cof, kl_loss_mode).
struct GradRequest {
  Request forward;
  std::vector<int64_t> labels;
  // Distillation (absent: no KL).
  int64_t distill_len = 0, distill_k = 0;
  std::vector<int32_t> distill_index;
  std::vector<float> distill_prob;
  // Coefficients and mode, when the request gives them (otherwise the model's config.json decides).
  std::optional<double> lm_loss_cof, kl_loss_cof;
  std::optional<std::string> kl_loss_mode;
};

GradRequest read_grad_request(const std::string& path);

}  // namespace cepe::cli
