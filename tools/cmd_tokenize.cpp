// cepe tokenize -m DIR "text" [--no-bos] [--pieces]: the token ids of a text, LLaMA style (BOS first).
#include <cstdio>
#include <filesystem>

#include "args.h"
#include "cepe/tokenizer.h"
#include "commands.h"

namespace cepe::cli {

int cmd_tokenize(int argc, char** argv) {
  Args args(argc, argv, {{"--model", "-m"}}, {{"--no-bos"}, {"--pieces"}, {"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs("usage: cepe tokenize -m DIR [--no-bos] [--pieces] TEXT\n", stdout);
    return 0;
  }
  if (args.positional().size() != 1) throw Error("tokenize takes exactly one TEXT argument");
  const std::string dir = args.required("--model");
  const std::filesystem::path p = std::filesystem::is_directory(dir) ? std::filesystem::path(dir) / "tokenizer.model"
                                                                      : std::filesystem::path(dir);
  Tokenizer tok = Tokenizer::load(p.string());
  const std::vector<int32_t> ids = tok.encode(args.positional()[0], !args.has("--no-bos"));
  if (args.has("--pieces")) {
    for (int32_t id : ids) std::printf("%6d -> '%s'\n", id, tok.piece(id).c_str());
    return 0;
  }
  std::string line = "[";
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? ", " : "") + std::to_string(ids[i]);
  std::printf("%s]\n", line.c_str());
  return 0;
}

}  // namespace cepe::cli
