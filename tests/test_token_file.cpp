// Token files (src/train/token_file.h) and `cepe data tokenize|info` (src/train/tokenize_corpus.h, tools/cmd_data.cpp):
// round trips against the tokenizer, every validation error, tokenizer mismatches, and the CLI's clean errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "cepe/error.h"
#include "cepe/safetensors.h"
#include "cepe/tokenizer.h"
#include "cli_runner.h"
#include "core/sha256.h"
#include "train/token_file.h"
#include "train/tokenize_corpus.h"

namespace cepe {
namespace {

namespace fs = std::filesystem;
using testing::CleanError;
using testing::read_text;
using testing::Succeeded;
using testing::write_text;

const std::string kTokenizer = CEPE_TEST_DATA "/cepe-tiny-a/tokenizer.model";

const Tokenizer& tiny() {
  static const Tokenizer tok = Tokenizer::load(kTokenizer);
  return tok;
}

// Asserts that `fn` throws a cepe::Error whose message contains every piece.
template <class F>
void expect_error(F&& fn, std::initializer_list<std::string> pieces) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown (expected one mentioning '" << *pieces.begin() << "')";
  } catch (const Error& e) {
    for (const std::string& p : pieces) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // A million 'a', fed in uneven pieces (buffering across block boundaries).
  Sha256 h;
  const std::string piece(997, 'a');
  size_t left = 1000000;
  while (left) {
    const size_t n = std::min(left, piece.size());
    h.update(piece.data(), n);
    left -= n;
  }
  EXPECT_EQ(h.finish_hex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

class TokenFileTest : public testing::CliScratchTest {
 protected:
  TokenizerIdentity fake_identity(int32_t vocab = 100) {
    TokenizerIdentity t;
    t.sha256 = std::string(64, 'a');
    t.vocab_size = vocab;
    t.bos_id = 1, t.eos_id = 2, t.unk_id = 0;
    return t;
  }
  // A valid file written by TokenFileWriter.
  std::string write_docs(const std::string& name, const std::vector<std::vector<int32_t>>& docs, int32_t vocab = 100) {
    const std::string p = path(name);
    TokenFileWriter w(p, fake_identity(vocab), {"hand-made"});
    for (const auto& d : docs) w.add_document(d);
    w.commit();
    return p;
  }
  // The raw pieces of a token file, to corrupt one at a time.
  struct Raw {
    std::vector<int32_t> tokens{1, 5, 6, 2, 1, 7, 2};
    std::vector<int64_t> offsets{0, 4, 7};
    std::map<std::string, std::string> meta{{"format", "cepe.tokens"}, {"format_version", "1"},
                                            {"tokenizer_sha256", std::string(64, 'b')}, {"vocab_size", "10"},
                                            {"bos_id", "1"}, {"eos_id", "2"}, {"unk_id", "0"}, {"n_docs", "2"},
                                            {"n_tokens", "7"}, {"sources", "[\"x\"]"}};
    DType token_dtype = DType::I32;
    bool extra_tensor = false, drop_offsets = false;
  };
  std::string write_raw(const Raw& r, const std::string& name = "raw.tokens") {
    std::map<std::string, Tensor> t;
    Tensor tok = Tensor::empty(DType::I32, {static_cast<int64_t>(r.tokens.size())});
    std::copy(r.tokens.begin(), r.tokens.end(), tok.data<int32_t>());
    t["tokens"] = r.token_dtype == DType::I32 ? tok : tok.to(DType::I64);
    if (!r.drop_offsets) {
      Tensor off = Tensor::empty(DType::I64, {static_cast<int64_t>(r.offsets.size())});
      std::copy(r.offsets.begin(), r.offsets.end(), off.data<int64_t>());
      t["doc_offsets"] = off;
    }
    if (r.extra_tensor) t["labels"] = Tensor::zeros(DType::I32, {3});
    save_safetensors(path(name), t, r.meta);
    return path(name);
  }
};

TEST_F(TokenFileTest, WriterRoundTripAndZeroCopyViews) {
  const std::string p = write_docs("a.tokens", {{1, 10, 11, 2}, {}, {1, 99, 2}});
  const TokenFile f = TokenFile::open(p);
  EXPECT_EQ(f.n_docs(), 3);
  EXPECT_EQ(f.n_tokens(), 7);
  EXPECT_EQ(std::vector<int64_t>(f.doc_offsets().begin(), f.doc_offsets().end()), (std::vector<int64_t>{0, 4, 4, 7}));
  EXPECT_EQ(std::vector<int32_t>(f.doc(2).begin(), f.doc(2).end()), (std::vector<int32_t>{1, 99, 2}));
  EXPECT_EQ(f.doc_length(1), 0);
  EXPECT_EQ(f.tokenizer().vocab_size, 100);
  EXPECT_EQ(f.tokenizer().sha256, std::string(64, 'a'));
  EXPECT_EQ(f.sources(), std::vector<std::string>{"hand-made"});
  // The views point into the mapping (aligned data is not copied).
  const SafeTensors st = SafeTensors::open(p);
  EXPECT_EQ(f.metadata().at("format"), "cepe.tokens");
  EXPECT_EQ(st.info("tokens").end - st.info("tokens").begin, 7u * 4u);
  // No spool or temporary file is left behind.
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir_)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST_F(TokenFileTest, WriterRejectsOutOfRangeIdsAndLeavesNothing) {
  const std::string p = path("bad.tokens");
  {
    TokenFileWriter w(p, fake_identity(50), {});
    w.add_document(std::vector<int32_t>{1, 2});
    expect_error([&] { w.add_document(std::vector<int32_t>{1, 50}); }, {"document 1", "id 50", "[0, 50)"});
    expect_error([&] { w.add_document(std::vector<int32_t>{-1}); }, {"id -1"});
  }
  EXPECT_TRUE(fs::is_empty(dir_)) << "the spools must be removed when the writer is dropped";
}

TEST_F(TokenFileTest, ValidRawFileLoads) {
  const TokenFile f = TokenFile::open(write_raw(Raw{}));
  EXPECT_EQ(f.n_docs(), 2);
  EXPECT_EQ(f.doc(1)[1], 7);
}

TEST_F(TokenFileTest, EveryValidationError) {
  struct Case {
    const char* what;
    std::function<void(Raw&)> corrupt;
    std::vector<std::string> message;
  };
  const std::vector<Case> cases = {
      {"format", [](Raw& r) { r.meta["format"] = "cepe.context"; }, {"not a token file", "'cepe.context'"}},
      {"no format", [](Raw& r) { r.meta.erase("format"); }, {"not a token file", "missing"}},
      {"version", [](Raw& r) { r.meta["format_version"] = "2"; }, {"version 2 is not supported", "reads version 1"}},
      {"version text", [](Raw& r) { r.meta["format_version"] = "1.0"; }, {"'format_version'", "expected an integer"}},
      {"missing offsets", [](Raw& r) { r.drop_offsets = true; }, {"lacks the tensor 'doc_offsets'"}},
      {"extra tensor", [](Raw& r) { r.extra_tensor = true; }, {"unexpected tensor 'labels'"}},
      {"dtype", [](Raw& r) { r.token_dtype = DType::I64; }, {"'tokens' must be I32", "I64"}},
      {"offsets start", [](Raw& r) { r.offsets = {1, 4, 7}; }, {"doc_offsets[0] is 1"}},
      {"offsets decrease", [](Raw& r) { r.offsets = {0, 5, 4, 7}; r.meta["n_docs"] = "3"; }, {"decrease at document 1", "5 then 4"}},
      {"offsets end", [](Raw& r) { r.offsets = {0, 4, 6}; }, {"end at 6", "n_tokens = 7"}},
      {"id too large", [](Raw& r) { r.tokens[5] = 10; }, {"token 5 (document 1)", "id 10", "[0, 10)"}},
      {"negative id", [](Raw& r) { r.tokens[1] = -3; }, {"token 1 (document 0)", "id -3"}},
      {"n_docs", [](Raw& r) { r.meta["n_docs"] = "3"; }, {"metadata says 3 documents", "hold 2"}},
      {"n_tokens", [](Raw& r) { r.meta["n_tokens"] = "8"; }, {"8 tokens"}},
      {"sha", [](Raw& r) { r.meta["tokenizer_sha256"] = "abc"; }, {"tokenizer_sha256 must be 64 lowercase hex"}},
      {"bos", [](Raw& r) { r.meta["bos_id"] = "10"; }, {"bos_id 10 is outside the vocabulary"}},
      {"vocab", [](Raw& r) { r.meta["vocab_size"] = "0"; }, {"'vocab_size' is '0'"}},
      {"no eos", [](Raw& r) { r.meta.erase("eos_id"); }, {"lacks 'eos_id'"}},
      {"sources", [](Raw& r) { r.meta["sources"] = "[1]"; }, {"'sources' must be a JSON array of strings"}},
      {"sources json", [](Raw& r) { r.meta["sources"] = "[\"x\""; }, {"sources"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Raw r;
    c.corrupt(r);
    const std::string p = write_raw(r);
    try {
      TokenFile::open(p);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(p, 0), 0u) << "the message starts with the path: " << msg;
      for (const std::string& m : c.message) EXPECT_NE(msg.find(m), std::string::npos) << msg;
    }
  }
}

TEST_F(TokenFileTest, TruncatedAndGarbageFiles) {
  const std::string good = read_text(write_raw(Raw{}, "good.tokens"));
  for (size_t keep : {size_t{0}, size_t{5}, size_t{40}, good.size() - 1}) {
    SCOPED_TRACE(keep);
    write_text(path("cut.tokens"), good.substr(0, keep));
    EXPECT_THROW(TokenFile::open(path("cut.tokens")), Error);
  }
  write_text(path("text.tokens"), "hello, this is not a token file at all");
  EXPECT_THROW(TokenFile::open(path("text.tokens")), Error);
  expect_error([&] { TokenFile::open(path("missing.tokens")); }, {"missing.tokens"});
}

TEST_F(TokenFileTest, TokenizerMismatchNamesBothHashes) {
  const TokenFile f = TokenFile::open(write_raw(Raw{}));
  const TokenizerIdentity model = identify_tokenizer(kTokenizer);
  EXPECT_EQ(model.sha256, sha256_file_hex(kTokenizer));
  EXPECT_EQ(model.vocab_size, tiny().vocab_size());
  expect_error([&] { check_tokenizer(f, model, kTokenizer); },
               {"different tokenizer", std::string(64, 'b'), model.sha256, kTokenizer});
  // Same hash, different ids: a forged or inconsistent header.
  TokenizerIdentity same = f.tokenizer();
  same.eos_id = 3;
  expect_error([&] { check_tokenizer(f, same, "other"); }, {"disagrees", "eos 2", "eos 3"});
  same.eos_id = 2;
  EXPECT_NO_THROW(check_tokenizer(f, same, "other"));
}

TEST_F(TokenFileTest, TokenizeRoundTripMatchesTheTokenizer) {
  fs::create_directories(dir_ / "corpus/sub");
  fs::create_directories(dir_ / "corpus/.git");
  write_text(dir_ / "corpus/b.txt", "The quick brown fox.\nJumps over the lazy dog.\n");
  write_text(dir_ / "corpus/a.txt", "Hello world");
  write_text(dir_ / "corpus/sub/c.jsonl",
             "{\"text\": \"first line document\"}\n\n{\"text\": \"\", \"id\": 3}\n{\"text\": \"caf\\u00e9 \\u65e5\\u672c\"}\n");
  write_text(dir_ / "corpus/empty.txt", "");
  write_text(dir_ / "corpus/.hidden.txt", "\xff not even utf-8");
  write_text(dir_ / "corpus/.git/config", "\xff");
  write_text(dir_ / "single.txt", "One more, given as a file.");

  TokenizeOptions opt;
  opt.tokenizer = CEPE_TEST_DATA "/cepe-tiny-a";  // a model directory works as well as the file
  opt.output = path("out.tokens");
  opt.inputs = {path("corpus"), path("single.txt")};
  opt.progress = Progress::Style::Quiet;
  const TokenizeStats s = tokenize_corpus(opt);
  // Sorted: a.txt, b.txt, empty.txt (skipped), sub/c.jsonl (3 lines: 1 empty text skipped), then single.txt.
  const std::vector<std::string> texts = {"Hello world", "The quick brown fox.\nJumps over the lazy dog.\n",
                                          "first line document", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac",
                                          "One more, given as a file."};
  EXPECT_EQ(s.files, 5);
  EXPECT_EQ(s.documents, 5);
  EXPECT_EQ(s.skipped_empty, 2);

  const TokenFile f = TokenFile::open(opt.output);
  ASSERT_EQ(f.n_docs(), 5);
  int64_t total = 0;
  for (int64_t i = 0; i < 5; ++i) {
    SCOPED_TRACE(i);
    std::vector<int32_t> want = {tiny().bos_id()};
    const std::vector<int32_t> body = tiny().encode(texts[i], false);
    ASSERT_FALSE(body.empty());
    want.insert(want.end(), body.begin(), body.end());
    want.push_back(tiny().eos_id());
    EXPECT_EQ(std::vector<int32_t>(f.doc(i).begin(), f.doc(i).end()), want);
    EXPECT_EQ(tiny().decode(std::vector<int32_t>(f.doc(i).begin(), f.doc(i).end())), texts[i]);
    total += static_cast<int64_t>(want.size());
  }
  EXPECT_EQ(f.n_tokens(), total);
  EXPECT_EQ(s.tokens, total);
  EXPECT_NO_THROW(check_tokenizer(f, identify_tokenizer(kTokenizer), kTokenizer));
  EXPECT_EQ(f.sources(), opt.inputs);
  EXPECT_EQ(f.metadata().at("skipped_empty_documents"), "2");
  EXPECT_EQ(f.metadata().at("source_files"), "5");

  // Threads and tiny batches change nothing, byte for byte.
  TokenizeOptions par = opt;
  par.output = path("par.tokens");
  par.threads = 3;
  par.batch_bytes = 8;
  tokenize_corpus(par);
  EXPECT_EQ(read_text(par.output), read_text(opt.output));
  // Re-running over a folder that now holds the output skips it.
  TokenizeOptions again = opt;
  again.inputs = {path("corpus")};
  again.output = path("corpus/self.tokens");
  tokenize_corpus(again);
  EXPECT_EQ(tokenize_corpus(again).documents, 4);
}

TEST_F(TokenFileTest, TokenizeErrorsNameTheInputAndWriteNothing) {
  TokenizeOptions opt;
  opt.tokenizer = kTokenizer;
  opt.output = path("out.tokens");
  opt.progress = Progress::Style::Quiet;
  auto fails = [&](const std::vector<std::string>& inputs, std::initializer_list<std::string> pieces) {
    opt.inputs = inputs;
    expect_error([&] { tokenize_corpus(opt); }, pieces);
    EXPECT_FALSE(fs::exists(opt.output));
    for (const auto& e : fs::directory_iterator(dir_))
      EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  };
  write_text(path("good.txt"), "fine text");
  write_text(path("bad.txt"), "ok then \xc3\x28 broken");
  fails({path("good.txt"), path("bad.txt")}, {path("bad.txt"), "not valid UTF-8 at byte 8"});
  write_text(path("bad.jsonl"), "{\"text\": \"a\"}\n{\"text\": 3}\n");
  fails({path("bad.jsonl")}, {path("bad.jsonl") + ":2", "string field \"text\""});
  write_text(path("broken.jsonl"), "{\"text\": \"a\"}\n\n{\"text\": \"b\"\n");
  fails({path("broken.jsonl")}, {path("broken.jsonl") + ":3"});
  fails({path("nope.txt")}, {"input '" + path("nope.txt") + "' does not exist"});
  write_text(path("empty.txt"), "");
  fails({path("empty.txt")}, {"no documents to write", "1 empty document"});
  fs::create_directories(dir_ / "void");
  fails({path("void")}, {"hold no files"});
  opt.tokenizer = path("void");
  fails({path("good.txt")}, {"holds no tokenizer.model"});
}

TEST_F(TokenFileTest, CliTokenizeAndInfo) {
  write_text(path("a.txt"), "Hello world");
  write_text(path("b.jsonl"), "{\"text\": \"one\"}\n{\"text\": \"two three\"}\n");
  const auto r = run_cepe({"data", "tokenize", "-m", kTokenizer, "-o", path("c.tokens"), "--quiet", path("a.txt"), path("b.jsonl")});
  ASSERT_TRUE(Succeeded(r));
  EXPECT_NE(r.out.find("tokenized 3 documents (0 empty skipped) from 2 files"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tokens/s"), std::string::npos) << r.out;

  const auto info = run_cepe({"data", "info", path("c.tokens"), "-m", CEPE_TEST_DATA "/cepe-tiny-a"});
  ASSERT_TRUE(Succeeded(info));
  const TokenFile f = TokenFile::open(path("c.tokens"));
  EXPECT_NE(info.out.find("documents:   3\n"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("tokens:      " + std::to_string(f.n_tokens()) + "\n"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find(sha256_file_hex(kTokenizer)), std::string::npos);
  EXPECT_NE(info.out.find("check:       made by"), std::string::npos);
  std::vector<int64_t> len = {f.doc_length(0), f.doc_length(1), f.doc_length(2)};
  std::sort(len.begin(), len.end());
  EXPECT_NE(info.out.find("min " + std::to_string(len[0]) + ", median " + std::to_string(len[1]) + ", max " +
                          std::to_string(len[2])),
            std::string::npos)
      << info.out;

  Raw forged;
  write_raw(forged, "forged.tokens");
  EXPECT_TRUE(CleanError(run_cepe({"data", "info", path("forged.tokens"), "-m", kTokenizer}), {"different tokenizer"}));
  write_text(path("bad.txt"), "\xff");
  EXPECT_TRUE(CleanError(run_cepe({"data", "tokenize", "-m", kTokenizer, "-o", path("x.tokens"), path("bad.txt")}),
                         {"bad.txt", "UTF-8"}));
  EXPECT_FALSE(fs::exists(path("x.tokens")));
  EXPECT_TRUE(CleanError(run_cepe({"data", "tokenize", "-o", path("x.tokens"), path("a.txt")}), {"--model"}));
  EXPECT_TRUE(CleanError(run_cepe({"data", "frobnicate"}), {"unknown data subcommand"}));
  EXPECT_TRUE(CleanError(run_cepe({"data", "info", path("a.txt")}), {"a.txt"}));
}

}  // namespace
}  // namespace cepe
