#include "eval_input.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "cepe/error.h"
#include "core/read_file.h"
#include "train/token_file.h"

namespace cepe::cli {

namespace {

std::vector<int32_t> text_document(const std::string& path, const Tokenizer& tok) {
  const std::string text = read_file(path);
  try {
    return tok.encode(text, true);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

std::string number_text(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

}  // namespace

eval::Source load_source(const std::string& path, const Tokenizer& tok, const std::string& tokenizer_path) {
  namespace fs = std::filesystem;
  eval::Source src;
  src.name = fs::path(path).filename().string();
  if (src.name.empty()) src.name = fs::path(path).parent_path().filename().string();
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    std::vector<std::string> files;
    for (const auto& e : fs::recursive_directory_iterator(path, ec))
      if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    if (files.empty()) throw Error(path + ": a folder without files");
    for (const std::string& f : files) src.docs.push_back(text_document(f, tok));
  } else if (path.size() > 7 && path.compare(path.size() - 7, 7, ".tokens") == 0) {
    const TokenFile f = TokenFile::open(path);
    check_tokenizer(f, identify_tokenizer(tokenizer_path, tok), tokenizer_path);
    for (int64_t i = 0; i < f.n_docs(); ++i) {
      const auto d = f.doc(i);
      src.docs.emplace_back(d.begin(), d.end());
    }
  } else {
    if (!fs::exists(path, ec)) throw Error(path + ": no such file");
    src.docs.push_back(text_document(path, tok));
  }
  return src;
}

std::vector<double> parse_number_list(const std::string& option, const std::string& list, double lo, double hi,
                                      bool integers, const std::string& example) {
  std::vector<double> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    double v = NAN;
    try {
      v = integers ? static_cast<double>(std::stoll(item, &used)) : std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || item.empty() || !(v >= lo && v <= hi))
      throw Error(option + ": '" + item + "' is not " + (integers ? "a count" : "a number") + " in [" +
                  number_text(lo) + ", " + number_text(hi) + "] (give e.g. " + example + ")");
    out.push_back(v);
  }
  if (out.empty()) throw Error(option + ": empty list");
  return out;
}

std::vector<int64_t> parse_int_list(const std::string& option, const std::string& list) {
  const std::vector<double> v = parse_number_list(option, list, 0, 4294967296.0, true, "0,256,1024");
  return std::vector<int64_t>(v.begin(), v.end());
}

int64_t default_decoder_tokens(const CepeModel& model) { return model.config().decoder.max_position_embeddings; }

int64_t default_chunk_len(const CepeModel& model, int64_t decoder_tokens) {
  const int64_t half = std::max<int64_t>(1, decoder_tokens / 2);  // RePlug's chunks share the window with the text
  if (!model.has_context_encoder()) return std::min<int64_t>(256, half);
  return std::min({int64_t{256}, half, model.config().encoder_trunk().max_position_embeddings});
}

}  // namespace cepe::cli
