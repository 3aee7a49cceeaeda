#include "train/token_file.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <limits>
#include <vector>

#include <nlohmann/json.hpp>

#include "cepe/error.h"
#include "core/atomic_file.h"
#include "core/interrupt.h"
#include "core/json_file.h"
#include "core/safetensors_writer.h"
#include "core/sha256.h"

namespace cepe {

namespace {

constexpr const char* kTokens = "tokens";
constexpr const char* kOffsets = "doc_offsets";

// A whole decimal integer in [lo, hi], or an error naming the key.
int64_t parse_int(const std::string& path, const std::map<std::string, std::string>& meta, const std::string& key,
                  int64_t lo, int64_t hi) {
  const auto it = meta.find(key);
  check(it != meta.end(), [&] { return path + ": token file metadata lacks '" + key + "'"; });
  const std::string& s = it->second;
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  check(ec == std::errc() && end == s.data() + s.size() && !s.empty() && v >= lo && v <= hi, [&] {
    return path + ": token file metadata '" + key + "' is '" + s.substr(0, 40) + "', expected an integer in [" +
           std::to_string(lo) + ", " + std::to_string(hi) + "]";
  });
  return v;
}

const std::string& meta_str(const std::string& path, const std::map<std::string, std::string>& meta,
                            const std::string& key) {
  const auto it = meta.find(key);
  check(it != meta.end(), [&] { return path + ": token file metadata lacks '" + key + "'"; });
  return it->second;
}

bool is_sha256_hex(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

void check_identity(const std::string& where, const TokenizerIdentity& t) {
  check(is_sha256_hex(t.sha256), where + ": tokenizer_sha256 must be 64 lowercase hex digits");
  check(t.vocab_size > 0, where + ": vocab_size must be positive");
  auto id_ok = [&](int32_t id, bool optional) { return (optional && id == -1) || (id >= 0 && id < t.vocab_size); };
  check(id_ok(t.bos_id, false), where + ": bos_id " + std::to_string(t.bos_id) + " is outside the vocabulary [0, " +
                                    std::to_string(t.vocab_size) + ")");
  check(id_ok(t.eos_id, false), where + ": eos_id " + std::to_string(t.eos_id) + " is outside the vocabulary [0, " +
                                    std::to_string(t.vocab_size) + ")");
  check(id_ok(t.unk_id, true), where + ": unk_id " + std::to_string(t.unk_id) + " is outside the vocabulary [0, " +
                                   std::to_string(t.vocab_size) + ") and not -1");
}

}  // namespace

std::string resolve_tokenizer_path(const std::string& model_or_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(model_or_dir, ec)) {
    const fs::path p = fs::path(model_or_dir) / "tokenizer.model";
    check(fs::exists(p, ec), "model directory '" + model_or_dir + "' holds no tokenizer.model");
    return p.string();
  }
  return model_or_dir;
}

TokenizerIdentity identify_tokenizer(const std::string& tokenizer_model_path, const Tokenizer& tokenizer) {
  TokenizerIdentity t;
  t.sha256 = sha256_file_hex(tokenizer_model_path);
  t.vocab_size = tokenizer.vocab_size();
  t.bos_id = tokenizer.bos_id();
  t.eos_id = tokenizer.eos_id();
  t.unk_id = tokenizer.unk_id();
  check(t.bos_id >= 0 && t.eos_id >= 0,
        "tokenizer model '" + tokenizer_model_path + "' defines no BOS or EOS token (token files need both)");
  return t;
}

TokenizerIdentity identify_tokenizer(const std::string& model_or_dir) {
  const std::string path = resolve_tokenizer_path(model_or_dir);
  return identify_tokenizer(path, Tokenizer::load(path));
}

// ------------------------------------------------------------------------------------------------ writer

TokenFileWriter::TokenFileWriter(std::string path, TokenizerIdentity tokenizer, std::vector<std::string> sources,
                                 std::map<std::string, std::string> extra_metadata)
    : path_(std::move(path)),
      tokens_spool_(temp_path_for(path_) + ".tokens"),
      offsets_spool_(temp_path_for(path_) + ".offsets"),
      tokenizer_(std::move(tokenizer)),
      sources_(std::move(sources)),
      extra_(std::move(extra_metadata)) {
  check_identity(path_, tokenizer_);
  tokens_guard_ = std::make_unique<TempFileGuard>(tokens_spool_);
  offsets_guard_ = std::make_unique<TempFileGuard>(offsets_spool_);
  tokens_ = std::fopen(tokens_spool_.c_str(), "wb");
  if (!tokens_) throw Error("cannot create '" + tokens_spool_ + "': " + std::strerror(errno));
  offsets_ = std::fopen(offsets_spool_.c_str(), "wb");
  if (!offsets_) {
    const int err = errno;
    std::fclose(tokens_);
    tokens_ = nullptr;
    std::remove(tokens_spool_.c_str());
    throw Error("cannot create '" + offsets_spool_ + "': " + std::strerror(err));
  }
  const int64_t zero = 0;
  write_spool(offsets_, offsets_spool_, &zero, sizeof zero);
}

TokenFileWriter::~TokenFileWriter() {
  if (tokens_) std::fclose(tokens_);
  if (offsets_) std::fclose(offsets_);
  std::remove(tokens_spool_.c_str());
  std::remove(offsets_spool_.c_str());
}

void TokenFileWriter::write_spool(std::FILE* f, const std::string& name, const void* data, size_t n) {
  if (n && std::fwrite(data, 1, n, f) != n)
    throw Error("cannot write '" + name + "': " + std::strerror(errno) + " (disk full?)");
}

void TokenFileWriter::add_document(std::span<const int32_t> ids) {
  check(!committed_, path_ + ": add_document after commit");
  for (size_t i = 0; i < ids.size(); ++i)
    check(ids[i] >= 0 && ids[i] < tokenizer_.vocab_size, [&] {
      return path_ + ": document " + std::to_string(n_docs_) + " has id " + std::to_string(ids[i]) + " at " +
             std::to_string(i) + ", outside the vocabulary [0, " + std::to_string(tokenizer_.vocab_size) + ")";
    });
  check(n_tokens_ + static_cast<int64_t>(ids.size()) <= std::numeric_limits<int64_t>::max() / 4,
        path_ + ": too many tokens");
  write_spool(tokens_, tokens_spool_, ids.data(), ids.size_bytes());
  n_tokens_ += static_cast<int64_t>(ids.size());
  ++n_docs_;
  write_spool(offsets_, offsets_spool_, &n_tokens_, sizeof n_tokens_);
}

void TokenFileWriter::set_metadata(const std::string& key, const std::string& value) { extra_[key] = value; }

void TokenFileWriter::commit() {
  check(!committed_, path_ + ": commit called twice");
  for (auto [f, name] : {std::pair{tokens_, &tokens_spool_}, std::pair{offsets_, &offsets_spool_}})
    if (std::fflush(f) != 0) throw Error("cannot write '" + *name + "': " + std::strerror(errno));

  std::map<std::string, std::string> meta = extra_;
  meta["format"] = kTokenFileFormat;
  meta["format_version"] = std::to_string(kTokenFileVersion);
  meta["n_docs"] = std::to_string(n_docs_);
  meta["n_tokens"] = std::to_string(n_tokens_);
  meta["tokenizer_sha256"] = tokenizer_.sha256;
  meta["vocab_size"] = std::to_string(tokenizer_.vocab_size);
  meta["bos_id"] = std::to_string(tokenizer_.bos_id);
  meta["eos_id"] = std::to_string(tokenizer_.eos_id);
  meta["unk_id"] = std::to_string(tokenizer_.unk_id);
  meta["sources"] = nlohmann::json(sources_).dump();

  SafeTensorsWriter out(path_, {{kTokens, DType::I32, {n_tokens_}}, {kOffsets, DType::I64, {n_docs_ + 1}}}, meta);
  std::vector<char> buf(4 << 20);
  for (const TensorInfo& t : out.order()) {
    const std::string& name = t.name == kTokens ? tokens_spool_ : offsets_spool_;
    // The spools were opened write-only: reopen for reading.
    std::FILE* in = std::fopen(name.c_str(), "rb");
    if (!in) throw Error("cannot reopen '" + name + "': " + std::strerror(errno));
    uint64_t left = t.end - t.begin;
    while (left) {
      const size_t n = std::fread(buf.data(), 1, std::min<uint64_t>(left, buf.size()), in);
      if (n == 0) {
        std::fclose(in);
        throw Error("cannot read back '" + name + "' (truncated spool)");
      }
      out.write(buf.data(), n);
      left -= n;
    }
    std::fclose(in);
  }
  out.commit();
  committed_ = true;
}

// ------------------------------------------------------------------------------------------------ reader

TokenFile TokenFile::open(const std::string& path) {
  TokenFile f;
  f.path_ = path;
  f.st_ = SafeTensors::open(path);
  const auto& meta = f.st_.metadata();
  const auto fmt = meta.find("format");
  check(fmt != meta.end() && fmt->second == kTokenFileFormat, [&] {
    std::string found = "missing";  // built step by step: `"'" + s` trips a GCC 12 -Wrestrict false positive
    if (fmt != meta.end()) found = std::string("'").append(fmt->second.substr(0, 40)).append("'");
    return path + ": not a token file (metadata format is " + found + ", expected '" + kTokenFileFormat + "')";
  });
  const int64_t version = parse_int(path, meta, "format_version", 0, std::numeric_limits<int32_t>::max());
  check(version == kTokenFileVersion, [&] {
    return path + ": token file version " + std::to_string(version) + " is not supported (this build reads version " +
           std::to_string(kTokenFileVersion) + ")";
  });
  for (const std::string& name : f.st_.names())
    check(name == kTokens || name == kOffsets,
          [&] { return path + ": unexpected tensor '" + name + "' in a token file (only tokens and doc_offsets)"; });
  for (const char* name : {kTokens, kOffsets})
    check(f.st_.has(name), [&] { return path + ": token file lacks the tensor '" + std::string(name) + "'"; });
  const TensorInfo& ti = f.st_.info(kTokens);
  const TensorInfo& oi = f.st_.info(kOffsets);
  check(ti.dtype == DType::I32 && ti.shape.size() == 1, [&] {
    return path + ": tensor 'tokens' must be I32 [n_tokens], found " + dtype_name(ti.dtype) + " " + shape_str(ti.shape);
  });
  check(oi.dtype == DType::I64 && oi.shape.size() == 1 && oi.shape[0] >= 1, [&] {
    return path + ": tensor 'doc_offsets' must be I64 [n_docs + 1], found " + dtype_name(oi.dtype) + " " +
           shape_str(oi.shape);
  });

  TokenizerIdentity& tok = f.tokenizer_;
  tok.sha256 = meta_str(path, meta, "tokenizer_sha256");
  tok.vocab_size = static_cast<int32_t>(parse_int(path, meta, "vocab_size", 1, std::numeric_limits<int32_t>::max()));
  tok.bos_id = static_cast<int32_t>(parse_int(path, meta, "bos_id", -1, std::numeric_limits<int32_t>::max()));
  tok.eos_id = static_cast<int32_t>(parse_int(path, meta, "eos_id", -1, std::numeric_limits<int32_t>::max()));
  tok.unk_id = static_cast<int32_t>(parse_int(path, meta, "unk_id", -1, std::numeric_limits<int32_t>::max()));
  check_identity(path, tok);

  const int64_t n_docs = parse_int(path, meta, "n_docs", 0, std::numeric_limits<int64_t>::max());
  const int64_t n_tokens = parse_int(path, meta, "n_tokens", 0, std::numeric_limits<int64_t>::max());
  check(n_docs == oi.shape[0] - 1 && n_tokens == ti.shape[0], [&] {
    return path + ": metadata says " + std::to_string(n_docs) + " documents and " + std::to_string(n_tokens) +
           " tokens, the tensors hold " + std::to_string(oi.shape[0] - 1) + " and " + std::to_string(ti.shape[0]);
  });

  const std::string& sources = meta_str(path, meta, "sources");
  const nlohmann::json src = parse_json(sources, path + ": metadata 'sources'");
  check(src.is_array(), path + ": metadata 'sources' must be a JSON array of strings");
  for (const auto& s : src) {
    check(s.is_string(), path + ": metadata 'sources' must be a JSON array of strings");
    f.sources_.push_back(s.get<std::string>());
  }

  f.tokens_t_ = f.st_.get(kTokens);
  f.offsets_t_ = f.st_.get(kOffsets);
  f.tokens_ = {f.tokens_t_.data<const int32_t>(), static_cast<size_t>(n_tokens)};
  f.offsets_ = {f.offsets_t_.data<const int64_t>(), static_cast<size_t>(n_docs + 1)};

  const auto& off = f.offsets_;
  check(off[0] == 0, [&] { return path + ": doc_offsets[0] is " + std::to_string(off[0]) + ", expected 0"; });
  for (size_t i = 1; i < off.size(); ++i)
    check(off[i] >= off[i - 1], [&] {
      return path + ": doc_offsets decrease at document " + std::to_string(i - 1) + " (" + std::to_string(off[i - 1]) +
             " then " + std::to_string(off[i]) + ")";
    });
  check(off.back() == n_tokens, [&] {
    return path + ": doc_offsets end at " + std::to_string(off.back()) + ", expected n_tokens = " +
           std::to_string(n_tokens);
  });
  const int32_t vocab = tok.vocab_size;
  const int32_t* ids = f.tokens_.data();
  // Branch-free scan first (this is the whole corpus); locate the culprit only on failure.
  uint32_t worst = 0;
  for (int64_t i = 0; i < n_tokens; ++i) worst = std::max(worst, static_cast<uint32_t>(ids[i]));
  if (worst >= static_cast<uint32_t>(vocab)) {
    int64_t i = 0;
    while (static_cast<uint32_t>(ids[i]) < static_cast<uint32_t>(vocab)) ++i;
    const int64_t doc = std::upper_bound(off.begin(), off.end(), i) - off.begin() - 1;
    throw Error(path + ": token " + std::to_string(i) + " (document " + std::to_string(doc) + ") has id " +
                std::to_string(ids[i]) + ", outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  return f;
}

void check_tokenizer(const TokenFile& file, const TokenizerIdentity& expected, const std::string& expected_origin) {
  const TokenizerIdentity& got = file.tokenizer();
  check(got.sha256 == expected.sha256, [&] {
    return file.path() + " was made by a different tokenizer (tokenizer.model sha256 " + got.sha256 + ", vocab " +
           std::to_string(got.vocab_size) + ") than " + expected_origin + " (sha256 " + expected.sha256 + ", vocab " +
           std::to_string(expected.vocab_size) + "); re-tokenize it with `cepe data tokenize -m " + expected_origin +
           "`";
  });
  check(got.vocab_size == expected.vocab_size && got.bos_id == expected.bos_id && got.eos_id == expected.eos_id &&
            got.unk_id == expected.unk_id,
        [&] {
          return file.path() + ": metadata (vocab " + std::to_string(got.vocab_size) + ", bos " +
                 std::to_string(got.bos_id) + ", eos " + std::to_string(got.eos_id) + ") disagrees with " +
                 expected_origin + " (vocab " + std::to_string(expected.vocab_size) + ", bos " +
                 std::to_string(expected.bos_id) + ", eos " + std::to_string(expected.eos_id) + ") despite the same sha256";
        });
}

}  // namespace cepe
