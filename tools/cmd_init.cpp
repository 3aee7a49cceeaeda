// cepe init (--preset NAME | --config FILE) -o DIR [--dtype f32|bf16|f16] [--seed S]: a randomly initialised
// checkpoint in the Hugging Face layout (config.json + model.safetensors), streamed to disk with bounded memory,
// so that memory and speed can be measured at real scale without downloading weights.
#include <cinttypes>
#include <cstdio>
#include <limits>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cepe/tokenizer.h"
#include "commands.h"
#include "core/atomic_file.h"
#include "core/json_file.h"
#include "core/progress.h"
#include "core/read_file.h"
#include "kernels/cpu/gemm.h"
#include "model/presets.h"
#include "model/random_init.h"

namespace cepe::cli {

namespace {

const char* kInitHelp =
    "usage: cepe init (--preset NAME | --config FILE) -o DIR [options]\n"
    "\n"
    "Writes a randomly initialised checkpoint (config.json + model.safetensors) as Hugging Face's\n"
    "_init_weights would: linear and embedding weights ~ N(0, initializer_range), RMSNorm weights 1.\n"
    "\n"
    "      --preset NAME       cepe-llama2-7b | cepe-small | cepe-tiny (see --list)\n"
    "      --config FILE       a CEPE config.json instead (validated like a checkpoint's)\n"
    "  -o, --output DIR        output directory (created if needed)\n"
    "      --dtype T           f32 (default) | bf16 | f16\n"
    "      --seed S            random seed (default 0); the bytes depend only on it, not on threads\n"
    "      --tokenizer FILE    copy this tokenizer.model into DIR (text mode needs one)\n"
    "      --force             overwrite a checkpoint already in DIR\n"
    "  -t, --threads N         CPU threads\n"
    "      --list              print the presets (shapes, parameters, sizes) and exit\n";

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

std::string trunk_str(const LlamaConfig& t) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "%" PRId64 " layers x %" PRId64 " (%" PRId64 " heads, %" PRId64 " KV heads, FFN %" PRId64
                ", max_pos %" PRId64 "), vocab %" PRId64,
                t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.intermediate_size,
                t.max_position_embeddings, t.vocab_size);
  return buf;
}

int list_presets() {
  std::printf("%-15s %-10s %-10s %15s %8s %10s %10s  %s\n", "preset", "decoder", "encoder", "parameters", "tensors", "f32",
              "bf16/f16", "description");
  for (const ModelPreset& p : model_presets()) {
    const CepeConfig& c = p.config;
    auto shape = [](const LlamaConfig& t) { return std::to_string(t.num_hidden_layers) + "x" + std::to_string(t.hidden_size); };
    std::printf("%-15s %-10s %-10s %15s %8zu %10s %10s  %s\n", p.name.c_str(), shape(c.decoder).c_str(),
                c.has_encoder ? shape(c.encoder).c_str() : "-", with_commas(parameter_count(c)).c_str(),
                checkpoint_tensors(c).size(),
                Progress::format_bytes(static_cast<double>(checkpoint_file_bytes(c, DType::F32))).c_str(),
                Progress::format_bytes(static_cast<double>(checkpoint_file_bytes(c, DType::BF16))).c_str(),
                p.description.c_str());
  }
  return 0;
}

}  // namespace

int cmd_init(int argc, char** argv) {
  Args args(argc, argv,
            {{"--preset"}, {"--config"}, {"--output", "-o"}, {"--dtype"}, {"--seed"}, {"--tokenizer"}, {"--threads", "-t"}},
            {{"--force"}, {"--list"}, {"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kInitHelp, stdout);
    return 0;
  }
  if (args.has("--list")) return list_presets();
  if (!args.positional().empty()) throw Error("init takes no positional arguments (got '" + args.positional()[0] + "')");
  if (args.has("--preset") == args.has("--config")) throw Error("init needs exactly one of --preset NAME or --config FILE");
  const std::string dir = args.required("--output");

  InitOptions opt;
  opt.dtype = parse_dtype(args.str("--dtype", "f32"));
  const long long seed = args.integer("--seed", 0, 0, std::numeric_limits<long long>::max());
  opt.seed = static_cast<uint64_t>(seed);
  opt.overwrite = args.has("--force");
  const long long threads = args.threads();
  if (threads < 0) throw Error("--threads must be >= 0");
  kernels::set_num_threads(static_cast<int>(threads));

  std::string name;
  CepeConfig cfg;
  if (args.has("--preset")) {
    name = args.str("--preset");
    cfg = preset_config(name);
  } else {
    name = args.str("--config");
    const nlohmann::json j = read_json_file(name, "config");
    cfg = parse_cepe_config(j, name);
    if (j.contains("initializer_range") && !j["initializer_range"].is_null()) {
      if (!j["initializer_range"].is_number() || !(j["initializer_range"].get<double>() > 0))
        throw Error(name + ": key 'initializer_range' must be a positive number, got " + json_excerpt(j["initializer_range"]));
      opt.initializer_range = j["initializer_range"].get<double>();
    }
  }

  // A tokenizer to copy in is checked before hours of writing, not after.
  std::string tokenizer_bytes;
  if (args.has("--tokenizer")) {
    const std::string tp = args.str("--tokenizer");
    const Tokenizer tok = Tokenizer::load(tp);
    const int64_t vocab = std::min(cfg.decoder.vocab_size, cfg.encoder_trunk().vocab_size);
    if (tok.vocab_size() > vocab)
      throw Error(tp + ": the tokenizer has " + std::to_string(tok.vocab_size()) + " tokens, more than the model's vocab_size " +
                  std::to_string(vocab));
    tokenizer_bytes = read_file(tp);
  }

  const std::vector<InitTensor> tensors = checkpoint_tensors(cfg);
  const int64_t params = parameter_count(cfg);
  const uint64_t bytes = checkpoint_file_bytes(cfg, opt.dtype, opt);
  std::printf("%s: %s, seed %llu, initializer_range %g\n", name.c_str(), dtype_name(opt.dtype),
              static_cast<unsigned long long>(opt.seed), opt.initializer_range);
  std::printf("  decoder: %s", trunk_str(cfg.decoder).c_str());
  if (cfg.do_cross_attention && cfg.num_cross_attn_layers > 0)
    std::printf(", cross-attention in the last %" PRId64 " layers", cfg.num_cross_attn_layers);
  std::printf("%s\n", cfg.decoder.tie_word_embeddings ? ", tied lm_head" : "");
  if (cfg.has_encoder && !cfg.encoder_is_model && cfg.do_cross_attention && cfg.num_cross_attn_layers > 0)
    std::printf("  encoder: %s\n", trunk_str(cfg.encoder).c_str());
  std::printf("  %zu tensors, %s parameters (%.3f B), %s -> %s\n", tensors.size(), with_commas(params).c_str(),
              static_cast<double>(params) / 1e9, Progress::format_bytes(static_cast<double>(bytes)).c_str(),
              (std::filesystem::path(dir) / "model.safetensors").c_str());
  std::fflush(stdout);

  Progress progress("model.safetensors", static_cast<int64_t>(bytes), "B");
  opt.progress = [&](uint64_t done, uint64_t) {
    progress.update(static_cast<int64_t>(done));
  };
  const InitResult r = write_random_checkpoint(dir, cfg, opt);
  progress.update(static_cast<int64_t>(r.file_bytes));
  progress.finish();

  if (!tokenizer_bytes.empty()) write_text_atomic((std::filesystem::path(dir) / "tokenizer.model").string(), tokenizer_bytes);
  std::printf("wrote %s (config.json, model.safetensors%s) in %.1f s\n", dir.c_str(),
              tokenizer_bytes.empty() ? "" : ", tokenizer.model", r.seconds);
  if (tokenizer_bytes.empty() && !std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.model"))
    std::fprintf(stderr,
                 "note: %s has no tokenizer.model: token-id requests (--request) work, text mode (-p/-c) needs one "
                 "(pass --tokenizer FILE, or copy the LLaMA-2 tokenizer.model in)\n",
                 dir.c_str());
  return 0;
}

}  // namespace cepe::cli
