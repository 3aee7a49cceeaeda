#include "train/tokenize_corpus.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "cepe/error.h"
#include "cepe/tokenizer.h"
#include "core/json_file.h"
#include "train/token_file.h"

namespace cepe {

namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

struct Document {
  std::string text;
  std::string origin;  // "file" or "file:line"
  int64_t bytes = 0;   // input bytes it accounts for (progress)
};

// Reads a corpus file document by document.
class DocumentReader {
 public:
  explicit DocumentReader(const std::string& path) : path_(path), jsonl_(ends_with(path, ".jsonl")) {
    in_.open(path, std::ios::binary);
    if (!in_) throw Error("cannot open input '" + path + "': " + std::strerror(errno));
  }

  // The next document, or false at the end of the file.
  bool next(Document* doc) {
    if (!jsonl_) {
      if (done_) return false;
      done_ = true;
      std::error_code ec;
      const auto size = fs::file_size(path_, ec);
      if (ec) throw Error("cannot read input '" + path_ + "': " + ec.message());
      check(size <= static_cast<uintmax_t>(kMaxDocumentBytes), [&] {
        return "input '" + path_ + "' is " + std::to_string(size) + " bytes, over the " +
               std::to_string(kMaxDocumentBytes) + "-byte limit for one document (split it, or use .jsonl)";
      });
      doc->text.assign(std::istreambuf_iterator<char>(in_), std::istreambuf_iterator<char>());
      if (in_.bad()) throw Error("cannot read input '" + path_ + "'");
      doc->origin = path_;
      doc->bytes = static_cast<int64_t>(doc->text.size());
      return true;
    }
    std::string line;
    while (std::getline(in_, line)) {
      ++line_no_;
      const int64_t bytes = static_cast<int64_t>(line.size()) + 1;
      const std::string origin = path_ + ":" + std::to_string(line_no_);
      check(static_cast<int64_t>(line.size()) <= kMaxDocumentBytes,
            [&] { return origin + ": line over the " + std::to_string(kMaxDocumentBytes) + "-byte limit"; });
      if (std::all_of(line.begin(), line.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r'; })) {
        pending_bytes_ += bytes;
        continue;
      }
      const nlohmann::json j = parse_json(line, origin);
      check(j.is_object() && j.contains("text") && j["text"].is_string(),
            origin + ": expected a JSON object with a string field \"text\"");
      doc->text = j["text"].get<std::string>();
      doc->origin = origin;
      doc->bytes = bytes + pending_bytes_;
      pending_bytes_ = 0;
      return true;
    }
    if (in_.bad()) throw Error("cannot read input '" + path_ + "'");
    return false;
  }

  int64_t pending_bytes() const { return pending_bytes_; }  // blank lines after the last document

 private:
  std::string path_;
  bool jsonl_;
  std::ifstream in_;
  bool done_ = false;
  int64_t line_no_ = 0, pending_bytes_ = 0;
};

}  // namespace

std::vector<std::string> list_corpus_files(const std::vector<std::string>& inputs, const std::string& exclude_output) {
  check(!inputs.empty(), "no inputs given (text files, .jsonl files or folders)");
  std::error_code ec;
  const fs::path excluded = exclude_output.empty() ? fs::path() : fs::weakly_canonical(exclude_output, ec);
  auto excluded_file = [&](const fs::path& p) {
    if (excluded.empty()) return false;
    const std::string c = fs::weakly_canonical(p, ec).string();
    return c == excluded.string() || c.rfind(excluded.string() + ".tmp.", 0) == 0;
  };
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    const auto status = fs::status(input, ec);
    check(!ec && fs::exists(status), "input '" + input + "' does not exist");
    if (fs::is_directory(status)) {
      std::vector<std::string> found;
      fs::recursive_directory_iterator it(input, ec), end;
      check(!ec, "cannot read folder '" + input + "': " + ec.message());
      for (; it != end; it.increment(ec)) {
        check(!ec, "cannot read folder '" + input + "': " + ec.message());
        if (is_hidden(it->path())) {
          if (it->is_directory(ec)) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file(ec) && !excluded_file(it->path())) found.push_back(it->path().string());
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      check(fs::is_regular_file(status), "input '" + input + "' is not a regular file or a folder");
      files.push_back(input);
    }
  }
  check(!files.empty(), "the inputs hold no files");
  return files;
}

TokenizeStats tokenize_corpus(const TokenizeOptions& opt) {
  const auto start = std::chrono::steady_clock::now();
  const std::string tok_path = resolve_tokenizer_path(opt.tokenizer);
  const Tokenizer tok = Tokenizer::load(tok_path);
  const TokenizerIdentity id = identify_tokenizer(tok_path, tok);
  check(!opt.output.empty(), "no output file given");
  const std::vector<std::string> files = list_corpus_files(opt.inputs, opt.output);

  TokenizeStats stats;
  stats.files = static_cast<int64_t>(files.size());
  for (const std::string& f : files) {
    std::error_code ec;
    const auto n = fs::file_size(f, ec);
    if (!ec) stats.input_bytes += static_cast<int64_t>(n);
  }
  TokenFileWriter writer(opt.output, id, opt.inputs,
                         {{"document_layout", "bos + tokens + eos"}, {"tokenizer_path", tok_path}});
  Progress bar("tokenize", stats.input_bytes, "B", stderr, opt.progress);
  const int threads = std::max(1, opt.threads);

  std::vector<Document> batch;
  std::vector<std::vector<int32_t>> ids;
  std::vector<std::string> errors;
  int64_t done_bytes = 0;
  auto flush = [&] {
    const int64_t n = static_cast<int64_t>(batch.size());
    ids.assign(batch.size(), {});
    errors.assign(batch.size(), {});
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && n > 1)
    for (int64_t i = 0; i < n; ++i) {
      try {
        ids[i] = tok.encode(batch[i].text, false);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    }
    std::vector<int32_t> doc;
    for (int64_t i = 0; i < n; ++i) {
      if (!errors[i].empty()) throw Error(batch[i].origin + ": " + errors[i]);
      done_bytes += batch[i].bytes;
      if (ids[i].empty()) {
        ++stats.skipped_empty;
        continue;
      }
      doc.clear();
      doc.reserve(ids[i].size() + 2);
      doc.push_back(id.bos_id);
      doc.insert(doc.end(), ids[i].begin(), ids[i].end());
      doc.push_back(id.eos_id);
      writer.add_document(doc);
      ++stats.documents;
      stats.tokens += static_cast<int64_t>(doc.size());
    }
    batch.clear();
    bar.update(done_bytes);
  };

  int64_t batch_bytes = 0;
  for (const std::string& f : files) {
    DocumentReader reader(f);
    Document d;
    while (reader.next(&d)) {
      batch_bytes += static_cast<int64_t>(d.text.size());
      batch.push_back(std::move(d));
      d = Document();
      if (batch_bytes >= opt.batch_bytes || static_cast<int64_t>(batch.size()) >= 4096) {
        flush();
        batch_bytes = 0;
      }
    }
    done_bytes += reader.pending_bytes();
  }
  flush();
  check(stats.documents > 0, [&] {
    return "no documents to write: the " + std::to_string(stats.files) + " input file(s) hold " +
           (stats.skipped_empty ? std::to_string(stats.skipped_empty) + " empty document(s) only" : std::string("no documents"));
  });
  writer.set_metadata("skipped_empty_documents", std::to_string(stats.skipped_empty));
  writer.set_metadata("source_files", std::to_string(stats.files));
  writer.commit();
  bar.finish();
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace cepe
