#pragma once
// Token files: a tokenized corpus as one safetensors file (our one format family), memory-mapped and read
// through zero-copy views.
//
//   tokens       I32 [n_tokens]    every document's ids, back to back
//   doc_offsets  I64 [n_docs + 1]  document i = tokens[doc_offsets[i], doc_offsets[i + 1])
//   __metadata__ format "cepe.tokens", format_version "1", n_docs, n_tokens, and the tokenizer that made it:
//                tokenizer_sha256 (of the tokenizer.model bytes), vocab_size, bos_id, eos_id, unk_id; sources (a
//                JSON array of the inputs it was made from). Other keys are informational and kept as they are.
//
// `cepe data tokenize` writes each document as BOS + ids + EOS (spec §3.1); the format itself does not
// require it (hand-made files in tests hold any ids below vocab_size).
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "cepe/safetensors.h"
#include "cepe/tokenizer.h"

namespace cepe {

class TempFileGuard;

inline constexpr const char* kTokenFileFormat = "cepe.tokens";
inline constexpr int kTokenFileVersion = 1;

// What identifies a tokenizer: the hash of its model file and the ids the data depends on.
struct TokenizerIdentity {
  std::string sha256;  // 64 lowercase hex digits of the tokenizer.model bytes
  int32_t vocab_size = 0;
  int32_t bos_id = -1, eos_id = -1, unk_id = -1;  // -1: the tokenizer has none
};

// `model_or_dir` is a tokenizer.model file or a directory holding one; returns the file's path.
std::string resolve_tokenizer_path(const std::string& model_or_dir);
// The identity of the tokenizer stored at `tokenizer_model_path`, already loaded as `tokenizer`.
TokenizerIdentity identify_tokenizer(const std::string& tokenizer_model_path, const Tokenizer& tokenizer);
// Loads the tokenizer at `model_or_dir` (file or directory) and returns its identity.
TokenizerIdentity identify_tokenizer(const std::string& model_or_dir);

// Streams documents into a token file in bounded memory: ids and offsets are spooled to two temporary files
// beside `path` (the final header's size is only known at the end), then commit() writes the safetensors file
// atomically (SafeTensorsWriter: temp file + rename) and removes the spools. Needs twice the file's size on
// disk while committing. Destroyed without commit(), it removes everything it created; `path` is untouched.
class TokenFileWriter {
 public:
  TokenFileWriter(std::string path, TokenizerIdentity tokenizer, std::vector<std::string> sources,
                  std::map<std::string, std::string> extra_metadata = {});
  ~TokenFileWriter();
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;

  // Appends one document; every id must be in [0, vocab_size).
  void add_document(std::span<const int32_t> ids);
  void set_metadata(const std::string& key, const std::string& value);  // before commit()
  void commit();

  int64_t n_docs() const { return n_docs_; }
  int64_t n_tokens() const { return n_tokens_; }

 private:
  void write_spool(std::FILE* f, const std::string& name, const void* data, size_t n);

  std::string path_, tokens_spool_, offsets_spool_;
  TokenizerIdentity tokenizer_;
  std::vector<std::string> sources_;
  std::map<std::string, std::string> extra_;
  std::unique_ptr<TempFileGuard> tokens_guard_, offsets_guard_;
  std::FILE* tokens_ = nullptr;
  std::FILE* offsets_ = nullptr;
  int64_t n_docs_ = 0, n_tokens_ = 0;
  bool committed_ = false;
};

// A loaded, fully validated token file. Cheap to copy (the mapping is shared).
class TokenFile {
 public:
  // Maps and validates `path`: format and version, exactly the two tensors with their dtypes and ranks,
  // offsets that start at 0, never decrease and end at n_tokens, every id in [0, vocab_size), metadata that
  // agrees with the tensors. Every problem is one cepe::Error starting with the path.
  static TokenFile open(const std::string& path);

  const std::string& path() const { return path_; }
  const TokenizerIdentity& tokenizer() const { return tokenizer_; }
  const std::vector<std::string>& sources() const { return sources_; }
  const std::map<std::string, std::string>& metadata() const { return st_.metadata(); }

  int64_t n_docs() const { return static_cast<int64_t>(offsets_.size()) - 1; }
  int64_t n_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  std::span<const int32_t> tokens() const { return tokens_; }
  std::span<const int64_t> doc_offsets() const { return offsets_; }
  int64_t doc_length(int64_t i) const { return offsets_[i + 1] - offsets_[i]; }
  std::span<const int32_t> doc(int64_t i) const {
    return tokens_.subspan(offsets_[i], offsets_[i + 1] - offsets_[i]);
  }

 private:
  std::string path_;
  SafeTensors st_;
  Tensor tokens_t_, offsets_t_;  // keep the views (and the mapping) alive
  std::span<const int32_t> tokens_;
  std::span<const int64_t> offsets_;
  TokenizerIdentity tokenizer_;
  std::vector<std::string> sources_;
};

// Throws when `file` was not made by the tokenizer `expected` (its hash differs), naming both hashes and
// `expected_origin` (e.g. the model's tokenizer.model path); also when the ids it relies on differ.
void check_tokenizer(const TokenFile& file, const TokenizerIdentity& expected, const std::string& expected_origin);

}  // namespace cepe
