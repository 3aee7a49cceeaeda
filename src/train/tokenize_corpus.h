#pragma once
// `cepe data tokenize`: text files and folders into one token file, streamed in bounded memory.
//  - Inputs are files or folders; a folder is walked recursively, in sorted (byte-wise) path order, skipping hidden
//    entries (a name starting with '.'), so the same tree always gives the same file.
//  - A `.jsonl` file holds one document per non-blank line, the string field "text" of a JSON object; any other
//    file is one document, its bytes exactly (a trailing newline included).
//  - Each document becomes BOS + ids + EOS, the ids from the tokenizer without its own BOS (spec §3.1).
//  - A document with no tokens (empty text) is skipped and counted; no documents at all is an error.
//  - Invalid UTF-8, malformed JSON lines, a missing "text", unreadable or missing inputs, and documents over
//    kMaxDocumentBytes are errors naming the file (and line) — the output is then not written.
// Documents are read and tokenized in batches of about kBatchBytes (parallel over documents with threads > 1) and
// their ids appended to the writer's spool as they come, so memory is one batch, whatever the corpus size.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/progress.h"

namespace cepe {

inline constexpr int64_t kMaxDocumentBytes = int64_t{1} << 30;

struct TokenizeOptions {
  std::string tokenizer;            // a tokenizer.model file or a directory holding one
  std::string output;               // the token file (written atomically)
  std::vector<std::string> inputs;  // files or folders
  int threads = 1;                  // tokenizer threads (documents in parallel)
  int64_t batch_bytes = 16 << 20;   // text read per batch (bounds the memory)
  Progress::Style progress = Progress::Style::Auto;  // on stderr, in input bytes
};

struct TokenizeStats {
  int64_t files = 0, documents = 0, skipped_empty = 0, tokens = 0, input_bytes = 0;
  double seconds = 0;
};

// The files `inputs` name, in the order described above (errors for a missing input or an empty selection).
std::vector<std::string> list_corpus_files(const std::vector<std::string>& inputs, const std::string& exclude_output = "");

TokenizeStats tokenize_corpus(const TokenizeOptions& options);

}  // namespace cepe
