// cepe export -m CKPT -o DIR [--dtype bf16] [--decoder-window N] [--encoder-window N]: a checkpoint made ready to
// ship: weights converted (e.g. the trainer's F32 masters to BF16, half the bytes), the tokenizer beside them,
// and the windows the model was trained on recorded as max_position_embeddings (the key's meaning in Hugging
// Face's LLaMA configs), from which `cepe perplexity` and `cepe generate` take their defaults.
#include <cstdio>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cepe/error.h"
#include "cepe/model.h"
#include "commands.h"
#include "core/atomic_file.h"
#include "core/json_file.h"
#include "core/progress.h"

namespace cepe::cli {

namespace {

const char* kExportHelp =
    "usage: cepe export -m CHECKPOINT -o DIR [--dtype f32|bf16|f16] [--decoder-window N] [--encoder-window N]\n"
    "\n"
    "  -m, --model DIR        a checkpoint (e.g. a `cepe train` checkpoint-N directory)\n"
    "  -o, --output DIR       the exported model (config.json, model.safetensors, tokenizer.model)\n"
    "      --dtype T          weights as f32, bf16 or f16 (default: as stored)\n"
    "      --decoder-window N the decoder's training window -> config max_position_embeddings\n"
    "      --encoder-window N the encoder's chunk length in training -> encoder_config.max_position_embeddings\n";

}  // namespace

int cmd_export(int argc, char** argv) {
  Args args(argc, argv, {{"--model", "-m"}, {"--output", "-o"}, {"--dtype"}, {"--decoder-window"}, {"--encoder-window"}},
            {{"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kExportHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  namespace fs = std::filesystem;
  const std::string src = args.required("--model"), out = args.required("--output");
  std::error_code ec;
  if (fs::weakly_canonical(src, ec) == fs::weakly_canonical(out, ec)) throw Error("--output must differ from --model");
  const std::optional<DType> dtype = args.has("--dtype") ? std::optional<DType>(parse_dtype(args.str("--dtype"))) : std::nullopt;
  const long long dec_window = args.integer("--decoder-window", 0, 1, 1 << 24);
  const long long enc_window = args.integer("--encoder-window", 0, 1, 1 << 24);
  const auto model = CepeModel::load(src);
  if (enc_window && !model->config().has_encoder) throw Error("--encoder-window: " + src + " has no separate encoder");
  const fs::path tok = fs::path(src) / "tokenizer.model";
  if (!fs::exists(tok)) throw Error(src + ": no tokenizer.model to export with the weights");

  // Into a temporary folder beside DIR, renamed when complete: DIR is either the old export or the new one.
  const fs::path final_dir = fs::absolute(out);
  std::string tmp_name = final_dir.filename().string();
  tmp_name.insert(0, 1, '.');
  tmp_name.append(".tmp");
  const fs::path tmp = final_dir.parent_path() / tmp_name;
  fs::remove_all(tmp, ec);
  model->save(tmp.string(), dtype);
  fs::copy_file(tok, tmp / "tokenizer.model", fs::copy_options::overwrite_existing);
  nlohmann::json cfg = read_json_file((tmp / "config.json").string(), "config");
  if (dec_window) cfg["max_position_embeddings"] = dec_window;
  if (enc_window) cfg["encoder_config"]["max_position_embeddings"] = enc_window;
  write_text_atomic((tmp / "config.json").string(), cfg.dump(2) + "\n");
  CepeModel::load(tmp.string());  // what was written loads
  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir);
  std::printf("exported %s -> %s (%s weights, %s)\n", src.c_str(), out.c_str(),
              dtype ? dtype_name(*dtype) : "stored", Progress::format_bytes(static_cast<double>(fs::file_size(final_dir / "model.safetensors"))).c_str());
  return 0;
}

}  // namespace cepe::cli
