// cepe generate: text mode (-m DIR -p PROMPT [-c FILE]...) streams tokens as they are produced;
// tensor mode (--request REQ.json --output OUT.json) writes `sequences` [bsz][seq+N] as HF generate returns.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cepe/generate.h"
#include "cepe/tokenizer.h"
#include "commands.h"
#include "core/atomic_file.h"
#include "kernels/cpu/gemm.h"
#include "request.h"

namespace cepe::cli {

namespace {

const char* kGenerateHelp =
    "usage: cepe generate -m DIR -p PROMPT [-c FILE]... [options]\n"
    "       cepe generate --model DIR --request REQ.json --output OUT.json [options]\n"
    "\n"
    "  -m, --model DIR         checkpoint directory (config.json, model.safetensors, tokenizer.model)\n"
    "  -p, --prompt TEXT       prompt for the decoder (BOS is added)\n"
    "  -c, --context FILE      a context file for the encoder; repeatable. Tokenized without BOS and cut\n"
    "                          into chunks of --chunk-len tokens (the last one padded by mask)\n"
    "      --chunk-len N       tokens per encoder chunk (default 256, as the released models)\n"
    "  -n, --max-new-tokens N  tokens to generate (default 64)\n"
    "      --greedy            argmax decoding (same as --temp 0)\n"
    "      --temp T            sampling temperature (default 0.8; 0 = greedy)\n"
    "      --top-k K           keep the K most likely tokens (default 40; 0 = off)\n"
    "      --top-p P           nucleus sampling mass (default 0.95; 1 = off)\n"
    "      --seed S            sampling seed (default 0)\n"
    "  -t, --threads N         CPU threads\n"
    "      --request FILE      token-id request (input_ids, attention_mask, encoder_input_ids,\n"
    "                          encoder_attention_mask), written back as {\"sequences\": ...} to --output\n";

std::string read_file(const std::string& path) {
  if (std::filesystem::exists(path) && !std::filesystem::is_regular_file(path))
    throw Error("not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open context file");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

GenerateOptions options_from(const Args& args) {
  GenerateOptions o;
  o.max_new_tokens = args.integer("--max-new-tokens", 64);
  if (o.max_new_tokens < 0) throw Error("--max-new-tokens must be >= 0");
  const double temp = args.number("--temp", 0.8);
  if (!(temp >= 0)) throw Error("--temp must be a number >= 0");
  o.sampling.greedy = args.has("--greedy") || temp == 0.0;
  o.sampling.temperature = temp > 0 ? static_cast<float>(temp) : 1.0f;
  o.sampling.top_k = args.integer("--top-k", 40);
  if (o.sampling.top_k < 0) throw Error("--top-k must be >= 0");
  const double top_p = args.number("--top-p", 0.95);
  if (!(top_p > 0 && top_p <= 1)) throw Error("--top-p must be in (0, 1]");
  o.sampling.top_p = static_cast<float>(top_p);
  const long long seed = args.integer("--seed", 0);
  o.sampling.seed = static_cast<uint64_t>(seed);
  return o;
}

int run_request(const Args& args, const CepeModel& model, const GenerateOptions& opt) {
  const std::string out_path = args.required("--output");
  Request r = read_request(args.str("--request"));
  if (!r.positions.empty()) throw Error("position_ids are derived from attention_mask in generate; remove them from the request");
  GenerateRequest g;
  g.batch = r.batch;
  g.len = r.len;
  g.ids = r.ids;
  g.mask = r.mask;
  g.context = r.context;
  GenerateResult res = generate(model, g, opt);
  nlohmann::json out;
  out["sequences"] = res.sequences;
  write_text_atomic(out_path, out.dump());
  return 0;
}

int run_text(const Args& args, const CepeModel& model, const GenerateOptions& opt) {
  const std::string tok_path = (std::filesystem::path(model.dir()) / "tokenizer.model").string();
  Tokenizer tok = Tokenizer::load(tok_path);
  const std::string prompt = args.required("--prompt");
  std::vector<int32_t> ids = tok.encode(prompt, /*add_bos=*/true);

  GenerateRequest g;
  g.batch = 1;
  g.len = static_cast<int64_t>(ids.size());
  g.ids = ids;
  const std::vector<std::string> files = args.all("--context");
  const long long chunk_len = args.integer("--chunk-len", 256);
  // Bounded: every chunk is padded to chunk_len, so an absurd value would fill memory token by token.
  if (chunk_len <= 0 || chunk_len > (1 << 20)) throw Error("--chunk-len must be in [1, 1048576]");
  if (!files.empty()) {
    if (!model.has_context_encoder()) throw Error(model.dir() + ": this model has no cross-attention, so it cannot read -c contexts");
    ContextChunks c;
    c.batch = 1;
    c.ctx_len = chunk_len;
    const int32_t pad = static_cast<int32_t>(model.config().decoder.eos_token_id);
    for (const std::string& f : files) {
      std::vector<int32_t> t;
      try {
        t = tok.encode(read_file(f), /*add_bos=*/false);
      } catch (const Error& e) {
        throw Error(f + ": " + e.what());
      }
      for (size_t i = 0; i < t.size(); i += static_cast<size_t>(chunk_len)) {
        for (long long j = 0; j < chunk_len; ++j) {
          const size_t k = i + static_cast<size_t>(j);
          c.ids.push_back(k < t.size() ? t[k] : pad);
          c.mask.push_back(k < t.size() ? 1 : 0);
        }
        ++c.n_ctx;
      }
    }
    if (c.n_ctx > 0) g.context = std::move(c);
  }

  // The prompt is echoed once generation is under way, so that an error leaves stdout empty.
  bool echoed = false;
  auto echo_prompt = [&] {
    if (echoed) return;
    echoed = true;
    // Longer than trained is allowed (as in the reference) but worth saying, once the input is known good.
    const CepeConfig& cfg = model.config();
    if (g.context && chunk_len > cfg.encoder_trunk().max_position_embeddings)
      std::fprintf(stderr, "warning: --chunk-len %lld exceeds the encoder's max_position_embeddings (%lld)\n",
                   chunk_len, static_cast<long long>(cfg.encoder_trunk().max_position_embeddings));
    if (g.len + opt.max_new_tokens > cfg.decoder.max_position_embeddings)
      std::fprintf(stderr, "warning: prompt + new tokens (%lld) exceed the decoder's max_position_embeddings (%lld)\n",
                   static_cast<long long>(g.len + opt.max_new_tokens),
                   static_cast<long long>(cfg.decoder.max_position_embeddings));
    std::fputs(prompt.c_str(), stdout);
  };
  StreamDecoder stream(tok);
  // Skip what the prompt already printed: feed the prompt through the stream decoder first.
  for (int32_t id : ids) stream.push(id);
  const int32_t eos = static_cast<int32_t>(model.config().decoder.eos_token_id);
  GenerateResult res = generate(model, g, opt, [&](int64_t, const std::vector<int32_t>& t, const std::vector<bool>&) {
    echo_prompt();
    if (t[0] != eos) {
      std::fputs(stream.push(t[0]).c_str(), stdout);
      std::fflush(stdout);
    }
    return true;
  });
  echo_prompt();
  std::fputs(stream.flush().c_str(), stdout);
  std::fputs("\n", stdout);
  const GenerateTimings& tm = res.timings;
  auto rate = [](int64_t n, double s) { return s > 0 ? static_cast<double>(n) / s : 0.0; };
  std::fprintf(stderr,
               "\nencode: %lld tokens in %.3f s (%.1f t/s) | prefill: %lld tokens in %.3f s (%.1f t/s) | "
               "decode: %lld tokens in %.3f s (%.1f t/s)\n",
               static_cast<long long>(tm.context_tokens), tm.encode_s, rate(tm.context_tokens, tm.encode_s),
               static_cast<long long>(tm.prefill_tokens), tm.prefill_s, rate(tm.prefill_tokens, tm.prefill_s),
               static_cast<long long>(tm.decode_tokens), tm.decode_s, rate(tm.decode_tokens, tm.decode_s));
  return 0;
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  Args args(argc, argv,
            {{"--model", "-m"}, {"--prompt", "-p"}, {"--context", "-c"}, {"--chunk-len"}, {"--max-new-tokens", "-n"},
             {"--temp"}, {"--top-k"}, {"--top-p"}, {"--seed"}, {"--threads", "-t"}, {"--request"}, {"--output", "-o"}},
            {{"--greedy"}, {"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kGenerateHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  if (args.has("--request") == args.has("--prompt"))
    throw Error("give either -p PROMPT (text mode) or --request REQ.json (token mode)");
  kernels::set_num_threads(static_cast<int>(args.integer("--threads", 0)));
  const GenerateOptions opt = options_from(args);
  auto model = CepeModel::load(args.required("--model"));
  return args.has("--request") ? run_request(args, *model, opt) : run_text(args, *model, opt);
}

}  // namespace cepe::cli
