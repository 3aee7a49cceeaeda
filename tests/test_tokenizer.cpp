// Tokenizer (SentencePiece, LLaMA conventions), StreamDecoder and the UTF-8 validator.
#include <gtest/gtest.h>

#include <cstdlib>
#include <algorithm>
#include <filesystem>
#include <functional>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "cepe/tokenizer.h"
#include "core/utf8.h"
#include "golden.h"

namespace cepe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kTinyDir = std::string(CEPE_TEST_DATA) + "/cepe-tiny-a";

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  return json::parse(in);
}

const Tokenizer& tiny() {
  static const Tokenizer tok = Tokenizer::load(kTinyDir + "/tokenizer.model");
  return tok;
}

std::string stream_decode(const Tokenizer& tok, const std::vector<int32_t>& ids,
                          std::vector<std::string>* chunks = nullptr) {
  StreamDecoder dec(tok);
  std::string out;
  for (const int32_t id : ids) {
    std::string s = dec.push(id);
    if (chunks) chunks->push_back(s);
    out += s;
  }
  std::string tail = dec.flush();
  if (chunks) chunks->push_back(tail);
  return out + tail;
}

std::string expect_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected cepe::Error, got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected cepe::Error, nothing was thrown";
  return {};
}

// A scratch file removed at the end of the test.
struct TempFile {
  explicit TempFile(const std::string& name, const std::string& content) {
    path = (fs::temp_directory_path() /
            ("cepe_tok_" + std::to_string(::getpid()) + "_" + name)).string();
    std::ofstream(path, std::ios::binary) << content;
  }
  ~TempFile() {
    std::error_code ec;
    fs::remove(path, ec);
  }
  std::string path;
};

// Random ids biased towards the interesting ones: control, unknown, byte pieces and space-led pieces.
class RandomIds {
 public:
  explicit RandomIds(const Tokenizer& tok) : vocab_(tok.vocab_size()), special_{tok.bos_id(), tok.eos_id(), tok.unk_id()} {
    for (int32_t id = 0; id < vocab_; ++id) {
      const std::string p = tok.piece(id);
      if (p.size() == 1 && static_cast<unsigned char>(p[0]) >= 0x80) bytes_.push_back(id);
      else if (!p.empty() && p[0] == ' ') spaced_.push_back(id);
      if (p == " ") special_.push_back(id);  // the lone space piece has its own first-piece rules
    }
  }
  std::vector<int32_t> operator()(std::mt19937& rng, int max_len) const {
    std::vector<int32_t> ids(std::uniform_int_distribution<int>(0, max_len)(rng));
    for (auto& id : ids) {
      switch (std::uniform_int_distribution<int>(0, 9)(rng)) {
        case 0: id = special_[rng() % special_.size()]; break;
        case 1: case 2: case 3: case 4: id = bytes_.empty() ? 0 : bytes_[rng() % bytes_.size()]; break;
        case 5: case 6: id = spaced_.empty() ? 0 : spaced_[rng() % spaced_.size()]; break;
        default: id = static_cast<int32_t>(rng() % vocab_); break;
      }
    }
    return ids;
  }

 private:
  int32_t vocab_;
  std::vector<int32_t> special_, bytes_, spaced_;
};

// Every chunk a StreamDecoder returns must be whole UTF-8 characters.
void expect_chunks_valid_utf8(const std::vector<std::string>& chunks) {
  for (size_t i = 0; i < chunks.size(); ++i) {
    size_t bad = 0;
    EXPECT_TRUE(utf8_valid(chunks[i], &bad)) << "chunk " << i << " invalid at byte " << bad;
  }
}

// ------------------------------------------------------------------------------------------- UTF-8

TEST(Utf8, AcceptsWellFormed) {
  EXPECT_TRUE(utf8_valid("", nullptr));
  EXPECT_TRUE(utf8_valid("plain ascii\t\n", nullptr));
  EXPECT_TRUE(utf8_valid(std::string_view("nul\0inside", 10), nullptr));
  EXPECT_TRUE(utf8_valid("\xC2\x80 \xDF\xBF", nullptr));                    // U+0080, U+07FF
  EXPECT_TRUE(utf8_valid("\xE0\xA0\x80 \xED\x9F\xBF \xEE\x80\x80", nullptr));  // U+0800, U+D7FF, U+E000
  EXPECT_TRUE(utf8_valid("\xEF\xBF\xBD", nullptr));                         // U+FFFD
  EXPECT_TRUE(utf8_valid("\xF0\x90\x80\x80 \xF4\x8F\xBF\xBF", nullptr));    // U+10000, U+10FFFF
  EXPECT_TRUE(utf8_valid("Ünïcödé → 镇 🦙", nullptr));
  EXPECT_EQ(utf8_char_len("🦙x"), 4u);
  EXPECT_EQ(utf8_char_len("x"), 1u);
  EXPECT_EQ(utf8_char_len(""), 0u);
}

TEST(Utf8, RejectsIllFormedWithOffset) {
  struct Case {
    std::string s;
    size_t offset;
  };
  const std::vector<Case> cases = {
      {"ab\x80", 2},                  // lone continuation byte
      {"abc\xC3", 3},                 // truncated 2-byte
      {"\xE2\x86", 0},                // truncated 3-byte
      {"x\xF0\x9F\xA6", 1},           // truncated 4-byte
      {"\xC0\xAF", 0},                // overlong '/'
      {"\xC1\xBF", 0},                // overlong
      {"ok\xE0\x80\xAF", 2},          // overlong 3-byte
      {"\xF0\x80\x80\xAF", 0},        // overlong 4-byte
      {"\xED\xA0\x80", 0},            // surrogate U+D800
      {"\xED\xBF\xBF", 0},            // surrogate U+DFFF
      {"\xF4\x90\x80\x80", 0},        // U+110000
      {"\xF5\x80\x80\x80", 0},        // lead beyond U+10FFFF
      {"\xF8\x88\x80\x80\x80", 0},    // 5-byte form
      {"\xFF", 0},
      {"é\xC3(", 2},                  // bad continuation
      {"🦙\xE2\x28\xA1", 4},
  };
  for (const auto& c : cases) {
    size_t bad = 12345;
    EXPECT_FALSE(utf8_valid(c.s, &bad)) << ::testing::PrintToString(c.s);
    EXPECT_EQ(bad, c.offset) << ::testing::PrintToString(c.s);
  }
}

TEST(Utf8, LeadLength) {
  EXPECT_EQ(utf8_lead_len('a'), 1u);
  EXPECT_EQ(utf8_lead_len(0xC3), 2u);
  EXPECT_EQ(utf8_lead_len(0xE2), 3u);
  EXPECT_EQ(utf8_lead_len(0xF0), 4u);
  EXPECT_EQ(utf8_lead_len(0x80), 0u);
  EXPECT_EQ(utf8_lead_len(0xF8), 0u);
}

// ------------------------------------------------------------------------------------------- Tokenizer

TEST(Tokenizer, TinyModelMetadata) {
  const json g = read_json(kTinyDir + "/golden.json")["tokenizer"];
  const Tokenizer& tok = tiny();
  EXPECT_EQ(tok.vocab_size(), g["vocab_size"].get<int>());
  EXPECT_EQ(tok.bos_id(), g["bos_id"].get<int>());
  EXPECT_EQ(tok.eos_id(), g["eos_id"].get<int>());
  EXPECT_EQ(tok.unk_id(), g["unk_id"].get<int>());
}

TEST(Tokenizer, GoldenSamples) {
  const json samples = read_json(kTinyDir + "/golden.json")["tokenizer"]["samples"];
  ASSERT_EQ(samples.size(), 2u);
  const Tokenizer& tok = tiny();
  for (const auto& s : samples) {
    const std::string text = s["text"].get<std::string>();
    const auto ids = s["ids"].get<std::vector<int32_t>>();
    const auto ids_bos = s["ids_with_bos"].get<std::vector<int32_t>>();
    const std::string decoded = s["decoded"].get<std::string>();
    SCOPED_TRACE(text);
    EXPECT_EQ(tok.encode(text, false), ids);
    EXPECT_EQ(tok.encode(text, true), ids_bos);
    EXPECT_EQ(tok.decode(ids), decoded);
    EXPECT_EQ(tok.decode(ids_bos), decoded);
    EXPECT_EQ(decoded, text);
    // piece(): the golden pieces with U+2581 as ' ' and <0xNN> as the raw byte.
    const auto pieces = s["pieces"].get<std::vector<std::string>>();
    ASSERT_EQ(pieces.size(), ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      std::string want = pieces[i];
      if (want.size() == 6 && want.rfind("<0x", 0) == 0) {
        want = std::string(1, static_cast<char>(std::stoi(want.substr(3, 2), nullptr, 16)));
      } else {
        std::string spaced;
        for (size_t k = 0; k < want.size();) {
          if (want.compare(k, 3, "\xE2\x96\x81") == 0) {
            spaced += ' ';
            k += 3;
          } else {
            spaced += want[k++];
          }
        }
        want = spaced;
      }
      EXPECT_EQ(tok.piece(ids[i]), want) << "id " << ids[i];
    }
  }
}

TEST(Tokenizer, NeverAddsEos) {
  const Tokenizer& tok = tiny();
  for (const std::string text : {"", "a", "Hello world!", "end.\n"}) {
    const auto ids = tok.encode(text, true);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids.front(), tok.bos_id());
    for (const int32_t id : ids) EXPECT_NE(id, tok.eos_id());
  }
  EXPECT_TRUE(tok.encode("", false).empty());
  EXPECT_EQ(tok.encode("", true), std::vector<int32_t>{tok.bos_id()});
}

TEST(Tokenizer, DecodeSkipsControlPieces) {
  const Tokenizer& tok = tiny();
  const auto ids = tok.encode("Hello world!", false);
  std::vector<int32_t> with_control{tok.bos_id()};
  with_control.insert(with_control.end(), ids.begin(), ids.end());
  with_control.push_back(tok.eos_id());
  EXPECT_EQ(tok.decode(with_control), "Hello world!");
  EXPECT_EQ(tok.piece(tok.bos_id()), "");
  EXPECT_EQ(tok.piece(tok.eos_id()), "");
  EXPECT_EQ(tok.piece(tok.unk_id()), tok.decode({tok.unk_id()}));
}

TEST(Tokenizer, RoundTripsText) {
  const Tokenizer& tok = tiny();
  for (const std::string text :
       {"Hello", " leading space", "  two leading", "trailing  ", "tabs\tand\nnewlines\n",
        "Ünïcödé → 镇 🦙 Ꙋ", "emoji only 🦙🦙", "\xEF\xBF\xBD replacement char"}) {
    EXPECT_EQ(tok.decode(tok.encode(text, true)), text) << text;
  }
}

TEST(Tokenizer, InvalidUtf8IsAnError) {
  const Tokenizer& tok = tiny();
  std::string msg = expect_error([&] { tok.encode("abc\xFF" "def", true); });
  EXPECT_NE(msg.find("input is not valid UTF-8 at byte 3"), std::string::npos) << msg;
  msg = expect_error([&] { tok.encode("caf\xC3", false); });  // truncated é
  EXPECT_NE(msg.find("input is not valid UTF-8 at byte 3"), std::string::npos) << msg;
  msg = expect_error([&] { tok.encode("\xED\xA0\x80", false); });  // surrogate
  EXPECT_NE(msg.find("input is not valid UTF-8 at byte 0"), std::string::npos) << msg;
}

TEST(Tokenizer, BadIdsAreErrors) {
  const Tokenizer& tok = tiny();
  std::string msg = expect_error([&] { tok.decode({5, tok.vocab_size()}); });
  EXPECT_NE(msg.find("token id 512 is out of range"), std::string::npos) << msg;
  msg = expect_error([&] { tok.piece(-1); });
  EXPECT_NE(msg.find("token id -1 is out of range"), std::string::npos) << msg;
  StreamDecoder dec(tok);
  msg = expect_error([&] { dec.push(100000); });
  EXPECT_NE(msg.find("out of range"), std::string::npos) << msg;
}

TEST(Tokenizer, MissingModelIsAnError) {
  const std::string path = kTinyDir + "/no-such-tokenizer.model";
  const std::string msg = expect_error([&] { Tokenizer::load(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  const std::string dir_msg = expect_error([&] { Tokenizer::load(kTinyDir); });
  EXPECT_NE(dir_msg.find(kTinyDir), std::string::npos) << dir_msg;
}

TEST(Tokenizer, CorruptModelIsAnError) {
  TempFile garbage("garbage.model", std::string("this is not a protobuf \xFF\xFF\xFF\xFF\x01\x02", 30));
  std::string msg = expect_error([&] { Tokenizer::load(garbage.path); });
  EXPECT_NE(msg.find(garbage.path), std::string::npos) << msg;

  TempFile empty("empty.model", "");
  msg = expect_error([&] { Tokenizer::load(empty.path); });
  EXPECT_NE(msg.find(empty.path), std::string::npos) << msg;

  // A real model cut in half.
  std::ifstream in(kTinyDir + "/tokenizer.model", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 100u);
  TempFile truncated("truncated.model", bytes.substr(0, bytes.size() / 2));
  msg = expect_error([&] { Tokenizer::load(truncated.path); });
  EXPECT_NE(msg.find(truncated.path), std::string::npos) << msg;
}

// ------------------------------------------------------------------------------------------- StreamDecoder

TEST(StreamDecoder, GoldenSamplesMatchDecode) {
  const json samples = read_json(kTinyDir + "/golden.json")["tokenizer"]["samples"];
  const Tokenizer& tok = tiny();
  for (const auto& s : samples) {
    for (const char* key : {"ids", "ids_with_bos"}) {
      const auto ids = s[key].get<std::vector<int32_t>>();
      std::vector<std::string> chunks;
      EXPECT_EQ(stream_decode(tok, ids, &chunks), tok.decode(ids)) << key;
      expect_chunks_valid_utf8(chunks);
    }
  }
}

TEST(StreamDecoder, MultiByteCharsArriveWhole) {
  const Tokenizer& tok = tiny();
  // "→" and "🦙" are not in the 512-piece vocabulary: they are byte-fallback pieces.
  const auto ids = tok.encode("a→b🦙", false);
  StreamDecoder dec(tok);
  std::vector<std::string> nonempty;
  for (const int32_t id : ids) {
    std::string s = dec.push(id);
    if (!s.empty()) nonempty.push_back(s);
  }
  EXPECT_EQ(dec.flush(), "");
  std::string all;
  for (const auto& s : nonempty) all += s;
  EXPECT_EQ(all, "a→b🦙");
  EXPECT_NE(std::find(nonempty.begin(), nonempty.end(), "→"), nonempty.end());
  EXPECT_NE(std::find(nonempty.begin(), nonempty.end(), "🦙"), nonempty.end());
}

TEST(StreamDecoder, DropsLeadingSpaceOfFirstPieceOnly) {
  const Tokenizer& tok = tiny();
  const auto ids = tok.encode("in in", false);  // "▁in", "▁in"
  ASSERT_EQ(tok.piece(ids.front()), " in");
  StreamDecoder dec(tok);
  EXPECT_EQ(dec.push(tok.bos_id()), "");
  std::string out;
  for (const int32_t id : ids) out += dec.push(id);
  out += dec.flush();
  EXPECT_EQ(out, "in in");
  dec.reset();
  EXPECT_EQ(dec.push(ids.front()), "in");
}

TEST(StreamDecoder, LoneSpacePieceAndControlPieces) {
  // decode() drops the leading space of the first piece only: a lone "▁" first piece becomes "" and the next
  // piece keeps its space, with or without control pieces in between.
  const Tokenizer& tok = tiny();
  const auto in = tok.encode("in", false);
  ASSERT_EQ(in.size(), 1u);
  int32_t space = -1;
  for (int32_t id = 0; id < tok.vocab_size(); ++id)
    if (tok.piece(id) == " ") space = id;
  ASSERT_GE(space, 0);
  const int32_t bos = tok.bos_id(), eos = tok.eos_id();
  for (const std::vector<int32_t>& ids :
       {std::vector<int32_t>{space, in[0]}, {space, eos, in[0]}, {bos, space, bos, space, in[0]},
        {space, space, in[0]}, {eos, space, eos, eos, in[0], space}}) {
    std::vector<std::string> chunks;
    EXPECT_EQ(stream_decode(tok, ids, &chunks), tok.decode(ids)) << ::testing::PrintToString(ids);
  }
  EXPECT_EQ(tok.decode({space, in[0]}), " in");
  EXPECT_EQ(tok.decode({space, eos, in[0]}), " in");
  EXPECT_EQ(tok.decode({bos, in[0]}), "in");
}

TEST(StreamDecoder, IncompleteBytesFlushAsReplacement) {
  const Tokenizer& tok = tiny();
  // The three byte pieces of "→" (E2 86 92); push only the first two.
  const auto ids = tok.encode("→", false);
  std::vector<int32_t> bytes;
  for (const int32_t id : ids)
    if (tok.piece(id).size() == 1 && static_cast<unsigned char>(tok.piece(id)[0]) >= 0x80) bytes.push_back(id);
  ASSERT_EQ(bytes.size(), 3u);
  const std::vector<int32_t> partial{bytes[0], bytes[1]};
  StreamDecoder dec(tok);
  EXPECT_EQ(dec.push(partial[0]), "");
  EXPECT_EQ(dec.push(partial[1]), "");
  EXPECT_EQ(dec.flush(), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode(partial), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(StreamDecoder, RandomIdsMatchDecode) {
  const Tokenizer& tok = tiny();
  const RandomIds random_ids(tok);
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 3000; ++iter) {
    const auto ids = random_ids(rng, 24);
    std::vector<std::string> chunks;
    ASSERT_EQ(stream_decode(tok, ids, &chunks), tok.decode(ids)) << ::testing::PrintToString(ids);
    expect_chunks_valid_utf8(chunks);
  }
}

// ------------------------------------------------------------------------------------------- real LLaMA-2

std::string llama_dir() { return testing::llama_tokenizer_dir(); }

#define CEPE_REQUIRE_LLAMA_TOKENIZER(dir)                                                                \
  do {                                                                                                   \
    if (!fs::exists((dir) + "/tokenizer.model") || !fs::exists((dir) + "/llama_cases.json")) {           \
      GTEST_SKIP() << "LLaMA-2 tokenizer not found in " << (dir)                                         \
                   << ": run scripts/fetch-llama-tokenizer.sh " << (dir)                                  \
                   << " (or set CEPE_LLAMA_TOKENIZER_DIR)";                                               \
    }                                                                                                    \
  } while (0)

TEST(LlamaTokenizer, GoldenCases) {
  const std::string dir = llama_dir();
  CEPE_REQUIRE_LLAMA_TOKENIZER(dir);
  const Tokenizer tok = Tokenizer::load(dir + "/tokenizer.model");
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.unk_id(), 0);

  const json cases = read_json(dir + "/llama_cases.json");
  ASSERT_TRUE(cases.is_array());
  ASSERT_EQ(cases.size(), 12u);
  for (const auto& c : cases) {
    const std::string text = c["text"].get<std::string>();
    const auto ids = c["ids"].get<std::vector<int32_t>>();  // as in llama-tokenizer-js: BOS first
    SCOPED_TRACE(::testing::PrintToString(text));
    ASSERT_FALSE(ids.empty());
    ASSERT_EQ(ids.front(), tok.bos_id());
    EXPECT_EQ(tok.encode(text, true), ids);
    EXPECT_EQ(tok.encode(text, false), std::vector<int32_t>(ids.begin() + 1, ids.end()));
    EXPECT_EQ(tok.decode(tok.encode(text, false)), text);
    EXPECT_EQ(tok.decode(ids), text);
    std::vector<std::string> chunks;
    EXPECT_EQ(stream_decode(tok, ids, &chunks), text);
    expect_chunks_valid_utf8(chunks);
  }
}

TEST(LlamaTokenizer, StreamMatchesDecodeOnRandomIds) {
  const std::string dir = llama_dir();
  CEPE_REQUIRE_LLAMA_TOKENIZER(dir);
  const Tokenizer tok = Tokenizer::load(dir + "/tokenizer.model");
  const RandomIds random_ids(tok);
  std::mt19937 rng(99);
  for (int iter = 0; iter < 3000; ++iter) {
    const auto ids = random_ids(rng, 24);
    std::vector<std::string> chunks;
    ASSERT_EQ(stream_decode(tok, ids, &chunks), tok.decode(ids)) << ::testing::PrintToString(ids);
    expect_chunks_valid_utf8(chunks);
  }
}

}  // namespace
}  // namespace cepe
