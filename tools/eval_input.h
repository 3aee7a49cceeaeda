#pragma once
// What the evaluation commands read: documents (-f FILE: a text file, a token file, or a folder of text files)
// and the defaults a model's config.json gives (its training windows).
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cepe/model.h"
#include "cepe/tokenizer.h"
#include "eval/perplexity.h"
#include "eval/retrieval.h"

namespace cepe::cli {

// A text file becomes one document (BOS + its tokens); a `.tokens` file (cepe data tokenize) gives its documents
// as stored (made by the same tokenizer, else an error naming both); a folder gives each text file in it,
// recursively, in sorted order. The name is the file or folder name.
eval::Source load_source(const std::string& path, const Tokenizer& tok, const std::string& tokenizer_path);

// Comma-separated numbers in [lo, hi] (whole numbers with `integers`); an error names the option, the item and
// the range, with `example`.
std::vector<double> parse_number_list(const std::string& option, const std::string& list, double lo, double hi,
                                      bool integers, const std::string& example);
// Comma-separated counts in [0, 2^32] ("0,256,1024").
std::vector<int64_t> parse_int_list(const std::string& option, const std::string& list);

// The decoder's training window (config max_position_embeddings; 4096 for LLaMA-2) and the encoder's chunk
// length (its max_position_embeddings, at most 256 (the released models' chunks) and at most half the decoder
// tokens, so that a RePlug chunk and its text share the window).
int64_t default_decoder_tokens(const CepeModel& model);
int64_t default_chunk_len(const CepeModel& model, int64_t decoder_tokens);

// The perplexity rows as JSON (the --json contract), as a table on stdout, and as a plot (one chart per file).
nlohmann::json perplexity_row_json(const eval::PerplexityRow& r, int64_t chunk_len);
void print_perplexity_table(const std::vector<eval::PerplexityRow>& rows);
void plot_perplexity(const std::string& path, const std::vector<eval::PerplexityRow>& rows, const std::string& title,
                     int64_t decoder_tokens);

// The pass-key results as a table on stdout, JSON (every case and the accuracy per cell) and a heat map.
void print_passkey_table(const std::vector<eval::PasskeyResult>& results, const eval::PasskeyOptions& o);
nlohmann::json passkey_json(const std::vector<eval::PasskeyResult>& results, const eval::PasskeyOptions& o);
void plot_passkey(const std::string& path, const std::vector<eval::PasskeyResult>& results, const eval::PasskeyOptions& o,
                  const std::string& title, int64_t decoder_window);
// The tokens of `files` (load_source) without BOS/EOS, concatenated: filler text for retrieval tests.
std::vector<int32_t> filler_tokens(const std::vector<std::string>& files, const Tokenizer& tok, const std::string& tok_path);

}  // namespace cepe::cli
