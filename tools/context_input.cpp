#include "context_input.h"

#include "cepe/context.h"
#include "core/read_file.h"
#include "eval_input.h"

namespace cepe::cli {

ContextInputOptions context_input_options(const Args& args, const CepeModel& model) {
  ContextInputOptions o;
  o.files = args.all("--context");
  o.texts = args.all("--context-text");
  // Bounded: every chunk is padded to chunk_len, so an absurd value would fill memory token by token.
  const long long n = args.integer("--chunk-len", default_chunk_len(model, default_decoder_tokens(model)), 1, 1 << 20);
  o.chunk_len = n;
  return o;
}

ContextChunks chunk_context_inputs(const ContextInputOptions& in, const Tokenizer& tok, const CepeModel& model) {
  std::vector<std::vector<int32_t>> docs;
  for (const std::string& f : in.files) {
    const std::string text = read_file(f);
    try {
      docs.push_back(tok.encode(text, /*add_bos=*/false));
    } catch (const Error& e) {
      throw Error(f + ": " + e.what());
    }
    // Silently reading nothing would answer as if the user had given no context.
    if (docs.back().empty()) throw Error(f + ": context file is empty (no tokens)");
  }
  for (size_t i = 0; i < in.texts.size(); ++i) {
    try {
      docs.push_back(tok.encode(in.texts[i], /*add_bos=*/false));
    } catch (const Error& e) {
      throw Error("--context-text " + std::to_string(i + 1) + ": " + e.what());
    }
    if (docs.back().empty()) throw Error("--context-text " + std::to_string(i + 1) + ": the text is empty (no tokens)");
  }
  return chunk_documents(docs, in.chunk_len, static_cast<int32_t>(model.config().decoder.eos_token_id));
}

EncodeOptions encode_options(const Args& args) {
  EncodeOptions o;
  const std::string dt = args.str("--ctx-dtype", "f32");
  if (dt == "f32") o.state_dtype = DType::F32;
  else if (dt == "bf16") o.state_dtype = DType::BF16;
  else throw Error("--ctx-dtype must be f32 or bf16, not '" + dt + "'");
  const long long bt = args.integer("--batch-tokens", 8192, 1, 1ll << 32);
  o.batch_tokens = bt;
  return o;
}

CrossAttnMode cross_attn_option(const Args& args) {
  const std::string mode = args.str("--cross-attn", "auto");
  CrossAttnMode m = CrossAttnMode::Auto;
  if (!parse_cross_attn_mode(mode, &m))
    throw Error("--cross-attn must be recompute, cached, absorbed or auto, not '" + mode + "'");
  return m;
}

}  // namespace cepe::cli
