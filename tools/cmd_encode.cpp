// cepe encode -m DIR (-c FILE | --context-text TEXT)... -o CTX [--chunk-len 256] [--ctx-dtype f32|bf16]
// Encodes long contexts once and writes them (states, mask, layout, model fingerprint) for
// `cepe generate --ctx CTX` to reuse without re-encoding.
#include <cstdio>
#include <filesystem>

#include "args.h"
#include "cepe/context.h"
#include "cepe/tokenizer.h"
#include "commands.h"
#include "context_input.h"
#include "core/progress.h"
#include "kernels/cpu/gemm.h"

namespace cepe::cli {

namespace {
const char* kEncodeHelp =
    "usage: cepe encode -m DIR (-c FILE | --context-text TEXT)... -o CTX.safetensors [options]\n"
    "\n"
    "  -c, --context FILE       a context file; repeatable (tokenized without BOS, cut into chunks)\n"
    "      --context-text TEXT  a context given inline; repeatable\n"
    "      --chunk-len N        tokens per encoder chunk (default as cepe generate)\n"
    "      --ctx-dtype T        f32 or bf16 storage of the states (default f32)\n"
    "      --batch-tokens N     encoder tokens per pass (default 8192; bounds the scratch memory)\n"
    "  -o, --output FILE        the encoded context (safetensors, written atomically)\n"
    "  -t, --threads N          CPU threads\n";
}  // namespace

int cmd_encode(int argc, char** argv) {
  Args args(argc, argv,
            {{"--model", "-m"}, {"--context", "-c"}, {"--context-text"}, {"--chunk-len"}, {"--ctx-dtype"},
             {"--batch-tokens"}, {"--output", "-o"}, {"--threads", "-t"}},
            {{"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kEncodeHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  kernels::set_num_threads(args.threads());
  const std::string out = args.required("--output");
  if (args.all("--context").empty() && args.all("--context-text").empty())
    throw Error("nothing to encode: give -c FILE or --context-text TEXT");
  auto model = CepeModel::load(args.required("--model"));
  const ContextInputOptions in = context_input_options(args, *model);
  check(model->has_context_encoder(), model->dir() + ": this model has no cross-attention, so it reads no context");
  check(model->config().encode_mode == EncodeMode::ContextOnly,
        "encode_mode " + model->config().encode_mode_name +
            " encodes every chunk together with the query, so contexts cannot be encoded ahead of the prompt");
  Tokenizer tok = Tokenizer::load((std::filesystem::path(model->dir()) / "tokenizer.model").string());
  ContextChunks chunks = chunk_context_inputs(in, tok, *model);
  if (chunks.n_ctx == 0) throw Error("the contexts are empty");

  EncodeOptions eo = encode_options(args);
  Progress bar("encode", chunks.n_ctx, "chunks");
  eo.progress = [&](int64_t done, int64_t) { bar.update(done); };
  EncodedContext ctx = model->encode(chunks, nullptr, nullptr, 0, eo);
  bar.finish();
  std::vector<std::string> sources = in.files;
  for (size_t i = 0; i < in.texts.size(); ++i) sources.push_back("<context-text " + std::to_string(i + 1) + ">");
  save_context(out, ctx, *model, sources);
  std::fprintf(stderr, "wrote %s: %lld chunks x %lld tokens, %s of %s states\n", out.c_str(),
               static_cast<long long>(ctx.n_ctx), static_cast<long long>(ctx.ctx_len),
               Progress::format_bytes(static_cast<double>(ctx.state_bytes())).c_str(),
               dtype_name(ctx.final_states().dtype()));
  return 0;
}

}  // namespace cepe::cli
