#pragma once
// The context options shared by `cepe encode` and `cepe generate`: files (-c), inline texts
// (--context-text), chunk length and state dtype, turned into encoder chunks.
#include <string>
#include <vector>

#include "args.h"
#include "cepe/model.h"
#include "cepe/tokenizer.h"

namespace cepe::cli {

struct ContextInputOptions {
  std::vector<std::string> files, texts;
  int64_t chunk_len = 256;
};

// --chunk-len defaults to the model's training chunk length (default_chunk_len in eval_input.h: 256 for the
// released models, the shipped cepe-tiny's 128).
ContextInputOptions context_input_options(const Args& args, const CepeModel& model);
// Tokenizes every input without BOS and cuts it into chunks (the last of each padded by mask).
ContextChunks chunk_context_inputs(const ContextInputOptions& in, const Tokenizer& tok, const CepeModel& model);
// --ctx-dtype and --batch-tokens.
EncodeOptions encode_options(const Args& args);
// --cross-attn recompute | cached | absorbed | auto (default auto).
CrossAttnMode cross_attn_option(const Args& args);

}  // namespace cepe::cli
