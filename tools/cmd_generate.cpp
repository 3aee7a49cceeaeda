// cepe generate: text mode (-m DIR -p PROMPT [-c FILE]...) streams tokens as they are produced, optionally
// with the Llama-2-chat template (--chat, --system) and stop strings (--stop);
// tensor mode (--request REQ.json --output OUT.json) writes `sequences` [bsz][seq+N] as HF generate returns.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <limits>
#include <filesystem>
#include <optional>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cepe/chat.h"
#include "cepe/context.h"
#include "cepe/generate.h"
#include "cepe/tokenizer.h"
#include "commands.h"
#include "context_input.h"
#include "core/atomic_file.h"
#include "core/memory.h"
#include "core/progress.h"
#include "core/utf8.h"
#include "kernels/cpu/gemm.h"
#include "request.h"

namespace cepe::cli {

namespace {

const char* kGenerateHelp =
    "usage: cepe generate -m DIR -p PROMPT [-c FILE]... [options]\n"
    "       cepe generate --model DIR --request REQ.json --output OUT.json [options]\n"
    "\n"
    "  -m, --model DIR         checkpoint directory (config.json, model.safetensors, tokenizer.model)\n"
    "  -p, --prompt TEXT       prompt for the decoder (BOS is added); with --chat, the user message\n"
    "  -c, --context FILE      a context file for the encoder; repeatable. Tokenized without BOS and cut\n"
    "                          into chunks of --chunk-len tokens (the last one padded by mask)\n"
    "      --chunk-len N       tokens per encoder chunk (default: the encoder's max_position_embeddings,\n"
    "                          at most 256 (the released models) and half the decoder's)\n"
    "  -n, --max-new-tokens N  tokens to generate (default 64)\n"
    "      --greedy            argmax decoding (same as --temp 0)\n"
    "      --temp T            sampling temperature (default 0.8; 0 = greedy)\n"
    "      --top-k K           keep the K most likely tokens (default 40; 0 = off)\n"
    "      --top-p P           nucleus sampling mass (default 0.95; 1 = off)\n"
    "      --seed S            sampling seed (default 0)\n"
    "      --chat              for chat models (CEPED-LLaMA-2-Chat): the Llama-2-chat template as Meta's\n"
    "                          chat_completion builds it, BOS \"[INST] {prompt} [/INST]\", with --system\n"
    "                          BOS \"[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{prompt} [/INST]\". Prints the\n"
    "                          reply only\n"
    "      --system TEXT       system prompt for --chat (default: none)\n"
    "      --stop STR          stop when the generated text contains STR, which is not printed; repeatable.\n"
    "                          Escapes: \\n \\r \\t \\\\ \\' \\\" \\xHH \\uHHHH (e.g. --stop '\\n\\n')\n"
    "      --context-text TEXT a context given inline; repeatable\n"
    "      --ctx FILE          an encoded context written by `cepe encode`; repeatable, combines with -c\n"
    "      --ctx-dtype T       f32 or bf16 storage of freshly encoded states (default f32)\n"
    "      --batch-tokens N    encoder tokens per pass (default 8192; bounds the scratch memory)\n"
    "      --cross-attn MODE   recompute | cached | absorbed | auto (default auto: the cheapest by a cost\n"
    "                          model; cached only within --mem-budget and where it beats absorbed)\n"
    "      --mem-budget SIZE   memory the run may use, e.g. 16G (default 80% of the available memory)\n"
    "      --verbose           print where the memory went: weights, KV cache, states, cross K/V, scratch\n"
    "  -t, --threads N         CPU threads\n"
    "      --request FILE      token-id request (input_ids, attention_mask, encoder_input_ids,\n"
    "                          encoder_attention_mask), written back as {\"sequences\": ...} to --output\n";

GenerateOptions options_from(const Args& args) {
  GenerateOptions o;
  o.max_new_tokens = args.integer("--max-new-tokens", 64, 0, std::numeric_limits<int32_t>::max());
  const double temp = args.number("--temp", 0.8, 0, 1e6);
  o.sampling.greedy = args.has("--greedy") || temp == 0.0;
  o.sampling.temperature = temp > 0 ? static_cast<float>(temp) : 1.0f;
  o.sampling.top_k = args.integer("--top-k", 40, 0, 1 << 30);
  const double top_p = args.number("--top-p", 0.95, 0, 1);
  if (!(top_p > 0 && top_p <= 1)) throw Error("--top-p must be in (0, 1]");
  o.sampling.top_p = static_cast<float>(top_p);
  const long long seed = args.integer("--seed", 0, 0, std::numeric_limits<long long>::max());
  o.sampling.seed = static_cast<uint64_t>(seed);
  o.encode = encode_options(args);
  o.decode.cross_attn = cross_attn_option(args);
  return o;
}

// Memory --mem-budget leaves for a cached cross K/V once the weights, context states, KV cache and a scratch
// allowance are counted (default budget: 80% of the memory available at start).
size_t cross_kv_budget(const Args& args, const CepeModel& model, size_t states, int64_t batch, int64_t positions) {
  const double budget = args.has("--mem-budget") ? static_cast<double>(args.bytes("--mem-budget", 0))
                                                  : 0.8 * static_cast<double>(available_memory_bytes());
  const LlamaConfig& d = model.config().decoder;
  const double self_kv = 2.0 * static_cast<double>(d.num_hidden_layers * batch * positions * d.kv_dim()) * 4.0;
  const double used = static_cast<double>(model.weight_bytes() + states) + self_kv + 256e6;
  return budget > used ? static_cast<size_t>(budget - used) : 0;
}

// --verbose: where the memory went.
void print_memory(const CepeModel& model, const EncodedContext* ctx, int64_t batch, int64_t positions,
                  CrossAttnMode requested) {
  const LlamaConfig& d = model.config().decoder;
  const double weights = static_cast<double>(model.weight_bytes());
  const double kv = 2.0 * static_cast<double>(d.num_hidden_layers * batch * positions * d.kv_dim()) * 4.0;
  const double states = ctx ? static_cast<double>(ctx->state_bytes()) : 0.0;
  const double cross = ctx ? static_cast<double>(ctx->cross_kv_bytes()) : 0.0;
  const double peak = static_cast<double>(peak_rss_bytes());
  const double scratch = std::max(0.0, peak - weights - kv - states - cross);
  std::fprintf(stderr,
               "memory: weights %s | KV cache %s | encoder states %s | cross K/V %s (%s) | scratch %s | peak RSS %s\n",
               Progress::format_bytes(weights).c_str(), Progress::format_bytes(kv).c_str(),
               Progress::format_bytes(states).c_str(), Progress::format_bytes(cross).c_str(),
               cross > 0 ? "cached" : cross_attn_mode_name(requested), Progress::format_bytes(scratch).c_str(),
               Progress::format_bytes(peak).c_str());
}

// Encodes -c/--context-text inputs (with a progress bar) and combines them with --ctx files.
std::optional<EncodedContext> prepare_context(const Args& args, const CepeModel& model, const Tokenizer& tok,
                                              const EncodeOptions& eo) {
  const ContextInputOptions in = context_input_options(args, model);
  const std::vector<std::string> ctx_files = args.all("--ctx");
  if (in.files.empty() && in.texts.empty() && ctx_files.empty()) return std::nullopt;
  if (!model.has_context_encoder())
    throw Error(model.dir() + ": this model has no cross-attention, so it cannot read contexts");
  std::vector<EncodedContext> parts;
  for (const std::string& f : ctx_files) parts.push_back(load_context(f, model));
  if (!in.files.empty() || !in.texts.empty()) {
    ContextChunks chunks = chunk_context_inputs(in, tok, model);
    if (chunks.n_ctx > 0) {
      Progress bar("encode", chunks.n_ctx, "chunks");
      EncodeOptions o = eo;
      o.progress = [&](int64_t done, int64_t) { bar.update(done); };
      parts.push_back(model.encode(chunks, nullptr, nullptr, 0, o));
      bar.finish();
    }
  }
  if (parts.empty()) return std::nullopt;
  if (parts.size() == 1) return std::move(parts[0]);
  std::vector<const EncodedContext*> ptrs;
  for (const EncodedContext& p : parts) ptrs.push_back(&p);
  return concat_contexts(ptrs, eo.state_dtype);
}

int run_request(const Args& args, const CepeModel& model, GenerateOptions opt) {
  const std::string out_path = args.required("--output");
  Request r = read_request(args.str("--request"));
  if (!r.positions.empty()) throw Error("position_ids are derived from attention_mask in generate; remove them from the request");
  GenerateRequest g;
  g.batch = r.batch;
  g.len = r.len;
  g.ids = r.ids;
  g.mask = r.mask;
  g.context = r.context;
  opt.decode.cross_kv_budget = cross_kv_budget(args, model, 0, g.batch, g.len + opt.max_new_tokens);
  GenerateResult res = generate(model, g, opt);
  if (args.has("--verbose")) print_memory(model, nullptr, g.batch, g.len + opt.max_new_tokens, opt.decode.cross_attn);
  nlohmann::json out;
  out["sequences"] = res.sequences;
  write_text_atomic(out_path, out.dump());
  return 0;
}

// --stop values, escapes interpreted. Checked before the model loads.
StopMatcher stop_matcher_from(const Args& args) {
  std::vector<std::string> stops;
  const std::vector<std::string> raw = args.all("--stop");
  for (size_t i = 0; i < raw.size(); ++i) {
    const std::string which = raw.size() > 1 ? "--stop #" + std::to_string(i + 1) : std::string("--stop");
    std::string s;
    try {
      s = unescape(raw[i]);
    } catch (const Error& e) {
      throw Error(which + ": " + e.what());
    }
    if (s.empty()) throw Error(which + ": the stop string is empty");
    size_t bad = 0;
    if (!utf8_valid(s, &bad))
      throw Error(which + ": the stop string is not valid UTF-8 at byte " + std::to_string(bad) +
                  " (generated text is, so it could never match)");
    stops.push_back(std::move(s));
  }
  return StopMatcher(std::move(stops));
}

int run_text(const Args& args, const CepeModel& model, GenerateOptions opt, StopMatcher stop) {
  const std::string tok_path = (std::filesystem::path(model.dir()) / "tokenizer.model").string();
  Tokenizer tok = Tokenizer::load(tok_path);
  const std::string prompt = args.required("--prompt");
  const bool chat = args.has("--chat");
  std::vector<ChatMessage> dialog;
  std::vector<int32_t> ids;
  if (chat) {
    if (args.has("--system")) dialog.push_back({"system", args.str("--system")});
    dialog.push_back({"user", prompt});
    // Checked here so that the message names the option rather than the dialog's message number.
    for (const ChatMessage& m : dialog)
      if (size_t bad = 0; !utf8_valid(m.content, &bad))
        throw Error(std::string(m.role == "system" ? "--system" : "--prompt") + ": input is not valid UTF-8 at byte " +
                    std::to_string(bad));
    ids = llama2_chat_tokens(tok, dialog);
  } else {
    ids = tok.encode(prompt, /*add_bos=*/true);
  }

  GenerateRequest g;
  g.batch = 1;
  g.len = static_cast<int64_t>(ids.size());
  g.ids = ids;
  const int64_t chunk_len = context_input_options(args, model).chunk_len;
  std::optional<EncodedContext> ctx;
  double prepare_s = 0;  // encoding (and loading) the context outside generate()
  if (model.config().encode_mode == EncodeMode::ContextOnly) {
    const auto t0 = std::chrono::steady_clock::now();
    ctx = prepare_context(args, model, tok, opt.encode);
    prepare_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    g.encoded = ctx ? &*ctx : nullptr;
  } else {
    // with_query modes encode every chunk with the prompt: the chunks go to generate() as they are.
    if (args.has("--ctx"))
      throw Error("encode_mode " + model.config().encode_mode_name +
                  " encodes chunks together with the prompt, so --ctx files cannot be used");
    ContextChunks chunks = chunk_context_inputs(context_input_options(args, model), tok, model);
    if (chunks.n_ctx > 0) {
      if (!model.has_context_encoder())
        throw Error(model.dir() + ": this model has no cross-attention, so it cannot read contexts");
      g.context = std::move(chunks);
    }
  }
  opt.decode.cross_kv_budget =
      cross_kv_budget(args, model, ctx ? ctx->state_bytes() : 0, 1, g.len + opt.max_new_tokens);

  // The prompt is echoed once generation is under way, so that an error leaves stdout empty. A chat prints
  // the reply only (the text of the new tokens, as Meta's chat_completion returns it).
  bool echoed = false;
  auto echo_prompt = [&] {
    if (echoed) return;
    echoed = true;
    // Longer than trained is allowed (as in the reference) but worth saying, once the input is known good.
    const CepeConfig& cfg = model.config();
    if ((g.context || (ctx && ctx->ctx_len > 0 && !args.all("--context").empty())) &&
        chunk_len > cfg.encoder_trunk().max_position_embeddings)
      std::fprintf(stderr, "warning: --chunk-len %lld exceeds the encoder's max_position_embeddings (%lld)\n",
                   static_cast<long long>(chunk_len), static_cast<long long>(cfg.encoder_trunk().max_position_embeddings));
    if (g.len + opt.max_new_tokens > cfg.decoder.max_position_embeddings)
      std::fprintf(stderr, "warning: prompt + new tokens (%lld) exceed the decoder's max_position_embeddings (%lld)\n",
                   static_cast<long long>(g.len + opt.max_new_tokens),
                   static_cast<long long>(cfg.decoder.max_position_embeddings));
    if (chat && llama2_has_special_tags(dialog))
      std::fputs("warning: the chat messages contain [INST]/<<SYS>> tags, which Meta's chat_completion refuses\n",
                 stderr);
    if (!chat) std::fputs(prompt.c_str(), stdout);
  };
  StreamDecoder stream(tok);
  // Skip what the prompt already printed: feed the prompt through the stream decoder first. A chat reply is
  // decoded on its own, so its first piece loses its leading space as in decode(new tokens).
  if (!chat)
    for (int32_t id : ids) stream.push(id);
  // Stop strings are matched in the generated text only. Generation ends through the callback: returning
  // false stops the token loop right after the token that completed a stop string.
  const int32_t eos = static_cast<int32_t>(model.config().decoder.eos_token_id);
  GenerateResult res = generate(model, g, opt, [&](int64_t, const std::vector<int32_t>& t, const std::vector<bool>&) {
    echo_prompt();
    if (t[0] != eos) {
      std::fputs(stop.push(stream.push(t[0])).c_str(), stdout);
      std::fflush(stdout);
    }
    return !stop.stopped();
  });
  echo_prompt();
  std::string tail = stop.push(stream.flush());
  tail += stop.flush();
  std::fputs(tail.c_str(), stdout);
  std::fputs("\n", stdout);
  GenerateTimings tm = res.timings;
  if (ctx) tm.encode_s = prepare_s;
  auto rate = [](int64_t n, double s) { return s > 0 ? static_cast<double>(n) / s : 0.0; };
  std::fprintf(stderr,
               "\nencode: %lld tokens in %.3f s (%.1f t/s) | prefill: %lld tokens in %.3f s (%.1f t/s) | "
               "decode: %lld tokens in %.3f s (%.1f t/s)\n",
               static_cast<long long>(tm.context_tokens), tm.encode_s, rate(tm.context_tokens, tm.encode_s),
               static_cast<long long>(tm.prefill_tokens), tm.prefill_s, rate(tm.prefill_tokens, tm.prefill_s),
               static_cast<long long>(tm.decode_tokens), tm.decode_s, rate(tm.decode_tokens, tm.decode_s));
  if (args.has("--verbose")) print_memory(model, ctx ? &*ctx : nullptr, 1, g.len + opt.max_new_tokens, opt.decode.cross_attn);
  return 0;
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  Args args(argc, argv,
            {{"--model", "-m"}, {"--prompt", "-p"}, {"--context", "-c"}, {"--chunk-len"}, {"--max-new-tokens", "-n"},
             {"--temp"}, {"--top-k"}, {"--top-p"}, {"--seed"}, {"--threads", "-t"}, {"--request"}, {"--output", "-o"},
             {"--system"}, {"--stop"}, {"--ctx"}, {"--context-text"}, {"--ctx-dtype"}, {"--batch-tokens"},
             {"--cross-attn"}, {"--mem-budget"}},
            {{"--greedy"}, {"--chat"}, {"--verbose"}, {"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kGenerateHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  if (args.has("--request") == args.has("--prompt"))
    throw Error("give either -p PROMPT (text mode) or --request REQ.json (token mode)");
  if (args.has("--request"))
    for (const char* text_only : {"--chat", "--system", "--stop"})
      if (args.has(text_only))
        throw Error(std::string(text_only) +
                    " works on text (-p PROMPT); token mode (--request) takes token ids as given");
  if (args.has("--system") && !args.has("--chat")) throw Error("--system needs --chat");
  kernels::set_num_threads(args.threads());
  const GenerateOptions opt = options_from(args);
  if (args.has("--request"))
    for (const char* text_only : {"--context", "--context-text", "--ctx"})
      if (args.has(text_only))
        throw Error(std::string(text_only) + " works in text mode; a --request carries encoder_input_ids");
  StopMatcher stop = args.has("--request") ? StopMatcher() : stop_matcher_from(args);
  auto model = CepeModel::load(args.required("--model"));
  return args.has("--request") ? run_request(args, *model, opt) : run_text(args, *model, opt, std::move(stop));
}

}  // namespace cepe::cli
