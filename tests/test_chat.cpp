// Chat template (Llama-2-chat as token ids), py_strip, StopMatcher, unescape, and `cepe generate --chat/--stop`
// end to end (the real binary, CEPE_BINARY).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "cepe/chat.h"
#include "cepe/tokenizer.h"
#include "cli_runner.h"
#include "core/utf8.h"
#include "golden.h"

namespace cepe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int32_t>;

const fs::path kFixture = fs::path(CEPE_TEST_DATA) / "cepe-tiny-a";

const Tokenizer& tiny() {
  static const Tokenizer tok = Tokenizer::load((kFixture / "tokenizer.model").string());
  return tok;
}

// One encode() call of the reference: BOS + encode(text) [+ EOS].
Ids segment(const Tokenizer& tok, const std::string& text, bool eos) {
  Ids ids = {tok.bos_id()};
  const Ids t = tok.encode(text, /*add_bos=*/false);
  ids.insert(ids.end(), t.begin(), t.end());
  if (eos) ids.push_back(tok.eos_id());
  return ids;
}

Ids concat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const Ids& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Expects `f` to throw cepe::Error whose message contains every keyword.
template <class F>
void expect_error(F f, std::initializer_list<std::string_view> keywords) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (std::string_view k : keywords) EXPECT_NE(msg.find(k), std::string::npos) << "'" << k << "' not in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

// ------------------------------------------------------------------------------------------ chat template

TEST(ChatTemplate, SingleUserMessage) {
  const Tokenizer& tok = tiny();
  const Ids ids = llama2_chat_tokens(tok, {{"user", "hi"}});
  EXPECT_EQ(ids, segment(tok, "[INST] hi [/INST]", false));
  EXPECT_EQ(ids.front(), tok.bos_id());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok.bos_id()), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok.eos_id()), 0);
  // The same as one encode() with BOS (the reference calls encode(..., bos=True, eos=False)).
  EXPECT_EQ(ids, tok.encode("[INST] hi [/INST]", true));
}

TEST(ChatTemplate, SystemPromptJoinsFirstUserMessage) {
  const Tokenizer& tok = tiny();
  const Ids ids = llama2_chat_tokens(tok, {{"system", "Be brief."}, {"user", "What is CEPE?"}});
  EXPECT_EQ(ids, segment(tok, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is CEPE? [/INST]", false));
}

TEST(ChatTemplate, MultiTurnPairsEndWithEos) {
  const Tokenizer& tok = tiny();
  const std::vector<ChatMessage> dialog = {{"system", "S"},      {"user", "u1"}, {"assistant", "a1"},
                                           {"user", "u2"},       {"assistant", "a2"}, {"user", "u3"}};
  const Ids expected = concat({segment(tok, "[INST] <<SYS>>\nS\n<</SYS>>\n\nu1 [/INST] a1 ", true),
                               segment(tok, "[INST] u2 [/INST] a2 ", true), segment(tok, "[INST] u3 [/INST]", false)});
  EXPECT_EQ(llama2_chat_tokens(tok, dialog), expected);

  // Without a system message.
  const Ids plain = concat({segment(tok, "[INST] u1 [/INST] a1 ", true), segment(tok, "[INST] u2 [/INST]", false)});
  EXPECT_EQ(llama2_chat_tokens(tok, {{"user", "u1"}, {"assistant", "a1"}, {"user", "u2"}}), plain);
  // Each pair is its own encode() call: not the same as encoding the concatenated text once.
  EXPECT_EQ(std::count(plain.begin(), plain.end(), tok.bos_id()), 2);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), tok.eos_id()), 1);
}

TEST(ChatTemplate, ContentIsStrippedLikePython) {
  const Tokenizer& tok = tiny();
  EXPECT_EQ(llama2_chat_tokens(tok, {{"user", " \t hi there \n\n"}}), segment(tok, "[INST] hi there [/INST]", false));
  // U+3000 and U+00A0 are whitespace for str.strip(); U+200B is not.
  EXPECT_EQ(llama2_chat_tokens(tok, {{"user", "\u3000hi\u00a0"}}), segment(tok, "[INST] hi [/INST]", false));
  EXPECT_EQ(llama2_chat_tokens(tok, {{"user", "\u200bhi"}}), segment(tok, "[INST] \u200bhi [/INST]", false));
  EXPECT_EQ(llama2_chat_tokens(tok, {{"user", "q"}, {"assistant", "  a  "}, {"user", "r "}}),
            concat({segment(tok, "[INST] q [/INST] a ", true), segment(tok, "[INST] r [/INST]", false)}));
  // The reference strips the merged system + user text, not the system prompt itself: spaces inside the
  // <<SYS>> block survive, the user message's trailing ones do not.
  EXPECT_EQ(llama2_chat_tokens(tok, {{"system", "  S  "}, {"user", "  u  "}}),
            segment(tok, "[INST] <<SYS>>\n  S  \n<</SYS>>\n\n  u [/INST]", false));
  EXPECT_EQ(llama2_chat_tokens(tok, {{"system", ""}, {"user", "u"}}),
            segment(tok, "[INST] <<SYS>>\n\n<</SYS>>\n\nu [/INST]", false));
  // Empty messages are allowed (as in the reference).
  EXPECT_EQ(llama2_chat_tokens(tok, {{"user", ""}}), segment(tok, "[INST]  [/INST]", false));
}

TEST(ChatTemplate, BosAndEosAreTokensNeverText) {
  const Tokenizer& tok = tiny();
  // "<s>" / "</s>" written in a message are plain text: they never become the BOS/EOS ids.
  const Ids ids = llama2_chat_tokens(tok, {{"user", "<s>a</s>"}});
  EXPECT_EQ(ids, segment(tok, "[INST] <s>a</s> [/INST]", false));
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok.bos_id()), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok.eos_id()), 0);
}

TEST(ChatTemplate, InvalidDialogs) {
  const Tokenizer& tok = tiny();
  auto chat = [&](std::vector<ChatMessage> d) { return [&tok, d] { (void)llama2_chat_tokens(tok, d); }; };
  expect_error(chat({}), {"empty"});
  expect_error(chat({{"system", "s"}}), {"system", "user"});
  expect_error(chat({{"assistant", "a"}}), {"message 1", "assistant", "expected a user"});
  expect_error(chat({{"system", "s"}, {"assistant", "a"}, {"user", "u"}}), {"message 2", "expected a user"});
  expect_error(chat({{"user", "u"}, {"user", "v"}}), {"message 2", "expected an assistant"});
  expect_error(chat({{"user", "u"}, {"assistant", "a"}}), {"message 2", "end with a user message"});
  expect_error(chat({{"user", "u"}, {"system", "s"}, {"user", "v"}}), {"message 2", "system"});
  expect_error(chat({{"bot", "u"}}), {"message 1", "bot", "unknown role"});
  expect_error(chat({{"User", "u"}}), {"unknown role"});
  expect_error(chat({{"system", "ok"}, {"user", "bad \xff"}}), {"message 2", "UTF-8", "byte 4"});
}

TEST(ChatTemplate, SpecialTags) {
  EXPECT_FALSE(llama2_has_special_tags({{"user", "hello [INS] <<SYS> [/INST"}}));
  EXPECT_TRUE(llama2_has_special_tags({{"user", "a [INST] b"}}));
  EXPECT_TRUE(llama2_has_special_tags({{"system", "<</SYS>>"}, {"user", "u"}}));
  EXPECT_TRUE(llama2_has_special_tags({{"user", "u"}, {"assistant", "x[/INST]"}, {"user", "v"}}));
  EXPECT_TRUE(llama2_has_special_tags({{"user", "<<SYS>>"}}));
}

TEST(ChatPyStrip, MatchesPythonStrStrip) {
  // Expected values are Python 3's str.strip() of the same text.
  EXPECT_EQ(py_strip(""), "");
  EXPECT_EQ(py_strip(" \t\n\v\f\r"), "");
  EXPECT_EQ(py_strip("  a b  "), "a b");
  EXPECT_EQ(py_strip("\x1c\x1d\x1e\x1fx\x1f"), "x");
  EXPECT_EQ(py_strip("\u0085\u00a0x\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000"), "x");
  EXPECT_EQ(py_strip("\u200bx\u200b"), "\u200bx\u200b");   // zero-width space is not whitespace
  EXPECT_EQ(py_strip("\ufeffx"), "\ufeffx");               // nor is the BOM
  EXPECT_EQ(py_strip(std::string(" \0x", 3)), std::string("\0x", 2));  // nor NUL
  EXPECT_EQ(py_strip(" caf\u00e9 "), "caf\u00e9");
  EXPECT_EQ(py_strip(" \u65e5\u672c "), "\u65e5\u672c");
  EXPECT_EQ(py_strip(" \U0001F600 "), "\U0001F600");
  // Invalid bytes are never stripped (and stop the scan).
  EXPECT_EQ(py_strip(" \xff "), "\xff");
  EXPECT_EQ(py_strip(" \xa0 x"), "\xa0 x");  // a lone continuation byte, not U+00A0
  EXPECT_EQ(py_strip("x \xc2"), "x \xc2");
}

// --------------------------------------------------------------------------------------- real LLaMA-2 tokenizer

std::string llama_dir() { return testing::llama_tokenizer_dir(); }

TEST(ChatTemplateLlama2, KnownPromptIds) {
  const std::string dir = llama_dir();
  if (!fs::exists(dir + "/tokenizer.model"))
    GTEST_SKIP() << "LLaMA-2 tokenizer not found in " << dir << ": run scripts/fetch-llama-tokenizer.sh " << dir
                 << " (or set CEPE_LLAMA_TOKENIZER_DIR)";
  const Tokenizer tok = Tokenizer::load(dir + "/tokenizer.model");
  ASSERT_EQ(tok.bos_id(), 1);
  ASSERT_EQ(tok.eos_id(), 2);
  // Published Llama-2-chat prompt ids (Hugging Face's apply_chat_template for meta-llama/Llama-2-7b-chat-hf, the
  // same format as Meta's chat_completion): "[INST]" is ▁[ INST ] = 518 25580 29962, mid-text "[/INST]" is
  // ▁[ / INST ] = 518 29914 25580 29962, a finished turn ends "answer ▁" EOS and the next starts with BOS.
  EXPECT_EQ(llama2_chat_tokens(tok, {{"user", "hello"}}), (Ids{1, 518, 25580, 29962, 22172, 518, 29914, 25580, 29962}));
  const Ids sys = {1,    518,   25580, 29962, 3532, 14816, 29903, 6778, 13,  3492,  526,   20255, 29889,
                   13,   29966, 829,   14816, 29903, 6778, 13,    13,   12199, 518, 29914, 25580, 29962};
  EXPECT_EQ(llama2_chat_tokens(tok, {{"system", "You are assistant."}, {"user", "hello"}}), sys);
  const Ids turns = concat({Ids(sys.begin(), sys.end()),
                            Ids{920, 508, 306, 1371, 366, 29973, 29871, 2, 1, 518, 25580, 29962, 920, 1568, 338, 29871,
                                29906, 29974, 29906, 29973, 518, 29914, 25580, 29962}});
  EXPECT_EQ(llama2_chat_tokens(tok, {{"system", "You are assistant."},
                                     {"user", "hello"},
                                     {"assistant", "how can I help you?"},
                                     {"user", "how much is 2+2?"}}),
            turns);
  EXPECT_EQ(llama2_chat_tokens(tok, {{"user", "What is 2+2?"}}),
            (Ids{1, 518, 25580, 29962, 1724, 338, 29871, 29906, 29974, 29906, 29973, 518, 29914, 25580, 29962}));
  // Surrounding whitespace of a message does not reach the tokens.
  EXPECT_EQ(llama2_chat_tokens(tok, {{"user", " Hello\n"}}),
            (Ids{1, 518, 25580, 29962, 15043, 518, 29914, 25580, 29962}));
}

// --------------------------------------------------------------------------------------------- StopMatcher

// Feeds `pieces` and returns the chunks push() returned (and the final flush as the last chunk).
std::vector<std::string> feed(StopMatcher& m, const std::vector<std::string>& pieces) {
  std::vector<std::string> out;
  for (const std::string& p : pieces) out.push_back(m.push(p));
  out.push_back(m.flush());
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += x;
  return s;
}

TEST(StopMatcher, NoStopStringsPassThrough) {
  StopMatcher m;
  EXPECT_EQ(feed(m, {"a", "", "bc", "\xff"}), (std::vector<std::string>{"a", "", "bc", "\xff", ""}));
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.matched(), "");
  StopMatcher e(std::vector<std::string>{});
  EXPECT_EQ(e.push("xyz"), "xyz");
  EXPECT_EQ(e.flush(), "");
}

TEST(StopMatcher, WholeStopInOnePiece) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.push("abcSTOPdef"), "abc");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched(), "STOP");
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.flush(), "");
  StopMatcher first({"STOP"});
  EXPECT_EQ(first.push("STOP"), "");
  EXPECT_TRUE(first.stopped());
}

TEST(StopMatcher, StopSplitAcrossPieces) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.push("ab"), "ab");
  EXPECT_EQ(m.push("cST"), "c");
  EXPECT_EQ(m.held(), 2u);
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.push("O"), "");
  EXPECT_EQ(m.push("Pxyz"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.flush(), "");
  // One byte at a time.
  StopMatcher b({"STOP"});
  std::string out;
  for (char c : std::string("xxSTSTOPyy")) out += b.push(std::string(1, c));
  EXPECT_EQ(out, "xxST");
  EXPECT_TRUE(b.stopped());
}

TEST(StopMatcher, HeldTextIsReleasedWhenItCannotMatch) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.push("xST"), "x");
  EXPECT_EQ(m.push("y"), "STy");
  EXPECT_EQ(m.held(), 0u);
  EXPECT_EQ(m.push("abcS"), "abc");
  EXPECT_EQ(m.flush(), "S");  // end of stream: the held prefix is text after all
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, OverlappingPrefixes) {
  // "ab" completes first: the stream stops there, not waiting for "abc".
  StopMatcher m({"abc", "ab"});
  EXPECT_EQ(m.push("xa"), "x");
  EXPECT_EQ(m.push("b"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched(), "ab");
  // Both end at the same byte: the longer (earlier-starting) one is cut, whatever the piece split.
  for (const std::vector<std::string>& pieces :
       {std::vector<std::string>{"xabc"}, {"x", "a", "b", "c"}, {"xa", "bc"}, {"xab", "c"}}) {
    StopMatcher o({"bc", "abc"});
    EXPECT_EQ(join(feed(o, pieces)), "x");
    EXPECT_EQ(o.matched(), "abc");
  }
  // A shorter stop string inside a longer one ends first.
  StopMatcher inner({"abcd", "bc"});
  EXPECT_EQ(join(feed(inner, {"abcd"})), "a");
  EXPECT_EQ(inner.matched(), "bc");
  // Self-overlapping stop string.
  StopMatcher self({"aab"});
  EXPECT_EQ(join(feed(self, {"a", "a", "a", "b", "z"})), "a");
  EXPECT_EQ(self.matched(), "aab");
  StopMatcher no({"aab"});
  EXPECT_EQ(join(feed(no, {"a", "a", "a", "c"})), "aaac");
  EXPECT_FALSE(no.stopped());
}

TEST(StopMatcher, MultipleStopStringsFirstOccurrenceWins) {
  StopMatcher m({"END", "\n\n", "User:"});
  EXPECT_EQ(join(feed(m, {"foo\n", "\nbar END"})), "foo");
  EXPECT_EQ(m.matched(), "\n\n");
  StopMatcher u({"END", "\n\n", "User:"});
  EXPECT_EQ(join(feed(u, {"Sure.", " Us", "e", "r: hi", "END"})), "Sure. ");
  EXPECT_EQ(u.matched(), "User:");
  // Duplicates are harmless.
  StopMatcher d({"x", "x"});
  EXPECT_EQ(d.push("abxc"), "ab");
}

TEST(StopMatcher, Utf8MultiByte) {
  // Stop string split inside a character and across pieces.
  StopMatcher m({"\u65e5\u672c\u8a9e"});  // 日本語
  std::vector<std::string> chunks = feed(m, {"\u65e5\u672c\u4eba ", "\u65e5", "\u672c", "\u8a9e", "!"});
  EXPECT_EQ(join(chunks), "\u65e5\u672c\u4eba ");
  for (const std::string& c : chunks) EXPECT_TRUE(utf8_valid(c)) << c;
  EXPECT_TRUE(m.stopped());
  // A held partial match that turns out not to be one comes back whole.
  StopMatcher h({"\u00e9t\u00e9"});  // été
  EXPECT_EQ(h.push("caf\u00e9"), "caf");
  EXPECT_EQ(h.push("!"), "\u00e9!");
  EXPECT_EQ(h.push("\u00e9t"), "");
  EXPECT_EQ(h.push("\u00e8"), "\u00e9t\u00e8");  // è shares é's lead byte but not the character
  EXPECT_FALSE(h.stopped());
  StopMatcher e({"\u00e9"});
  EXPECT_EQ(join(feed(e, {"caf", "\u00e8\u00e9", "x"})), "caf\u00e8");
  StopMatcher emoji({"\U0001F600\n"});
  EXPECT_EQ(join(feed(emoji, {"a\U0001F600", "b\U0001F600", "\nc"})), "a\U0001F600b");
}

TEST(StopMatcher, ResetStartsANewStream) {
  StopMatcher m({"ab"});
  EXPECT_EQ(m.push("xab"), "x");
  EXPECT_TRUE(m.stopped());
  m.reset();
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.push("a"), "");
  m.reset();
  EXPECT_EQ(m.held(), 0u);
  EXPECT_EQ(m.push("yz"), "yz");
}

TEST(StopMatcher, InvalidStopStrings) {
  expect_error([] { StopMatcher m({"ok", ""}); }, {"stop string 2", "empty"});
  expect_error([] { StopMatcher m({"a\xff"}); }, {"stop string 1", "UTF-8", "byte 1"});
}

// Brute-force reference: the first prefix of `text` that ends with a stop string; of those ending there the
// longest; everything before it.
std::string reference_cut(const std::string& text, const std::vector<std::string>& stops, std::string* matched) {
  for (size_t p = 1; p <= text.size(); ++p) {
    const std::string* best = nullptr;
    for (const std::string& s : stops)
      if (s.size() <= p && text.compare(p - s.size(), s.size(), s) == 0 && (!best || s.size() > best->size()))
        best = &s;
    if (best) {
      *matched = *best;
      return text.substr(0, p - best->size());
    }
  }
  matched->clear();
  return text;
}

TEST(StopMatcher, RandomSplitsMatchReference) {
  // Small alphabet with multi-byte characters so that partial matches are frequent.
  const std::vector<std::string> alphabet = {"a", "b", "\n", " ", "\u00e9", "\u65e5", "\U0001F600"};
  std::mt19937 rng(1234);
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  int stopped = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<std::string> chars;
    const size_t len = pick(24);
    for (size_t i = 0; i < len; ++i) chars.push_back(alphabet[pick(3) == 0 ? pick(alphabet.size()) : pick(2)]);
    std::string text;
    for (const std::string& c : chars) text += c;
    std::vector<std::string> stops;
    const size_t n_stops = pick(4);
    for (size_t k = 0; k < n_stops; ++k) {
      std::string s;
      const size_t sl = 1 + pick(4);
      for (size_t i = 0; i < sl; ++i) s += alphabet[pick(3) == 0 ? pick(alphabet.size()) : pick(2)];
      stops.push_back(s);
    }
    std::string want_match;
    const std::string want = reference_cut(text, stops, &want_match);
    // Split at random character boundaries (as StreamDecoder pieces are whole characters).
    std::vector<std::string> pieces;
    for (size_t i = 0; i < chars.size();) {
      const size_t n = 1 + pick(4);
      std::string p;
      for (size_t j = 0; j < n && i < chars.size(); ++j) p += chars[i++];
      pieces.push_back(p);
      if (pick(5) == 0) pieces.emplace_back();
    }
    SCOPED_TRACE(::testing::PrintToString(text) + " stops " + ::testing::PrintToString(stops));
    // Piece by piece, until a stop: what came out plus what is held is what went in, and the held part is exactly
    // the longest suffix that is still a proper prefix of a stop string (nothing is held longer than needed).
    {
      StopMatcher m(stops);
      std::string in, out;
      for (const std::string& p : pieces) {
        in += p;
        out += m.push(p);
        if (m.stopped()) break;
        ASSERT_EQ(out.size() + m.held(), in.size());
        ASSERT_EQ(out, in.substr(0, out.size()));
        size_t longest = 0;
        for (const std::string& st : stops)
          for (size_t k = std::min(in.size(), st.size() - 1); k > longest; --k)
            if (in.compare(in.size() - k, k, st, 0, k) == 0) {
              longest = k;
              break;
            }
        ASSERT_EQ(m.held(), longest);
      }
    }
    StopMatcher m(stops);
    const std::vector<std::string> chunks = feed(m, pieces);
    ASSERT_EQ(join(chunks), want);
    ASSERT_EQ(m.matched(), want_match);
    ASSERT_EQ(m.stopped(), !want_match.empty());
    for (const std::string& c : chunks) ASSERT_TRUE(utf8_valid(c)) << ::testing::PrintToString(c);
    stopped += m.stopped();
  }
  EXPECT_GT(stopped, 300);
  EXPECT_LT(stopped, 2700);
}

// ---------------------------------------------------------------------------------------------- unescape

TEST(StopUnescape, Sequences) {
  EXPECT_EQ(unescape(""), "");
  EXPECT_EQ(unescape("plain text"), "plain text");
  EXPECT_EQ(unescape("\\n\\n"), "\n\n");
  EXPECT_EQ(unescape("a\\tb\\rc"), "a\tb\rc");
  EXPECT_EQ(unescape("\\\\n"), "\\n");
  EXPECT_EQ(unescape("\\'\\\""), "'\"");
  EXPECT_EQ(unescape("\\x41\\x7e\\x0A"), "A~\n");
  EXPECT_EQ(unescape("\\xc3\\xa9"), "\u00e9");
  EXPECT_EQ(unescape("\\u00e9\\u65E5\\u0041"), "\u00e9\u65e5A");
  EXPECT_EQ(unescape("caf\u00e9 \\n"), "caf\u00e9 \n");  // raw UTF-8 passes through
}

TEST(StopUnescape, Errors) {
  expect_error([] { unescape("a\\"); }, {"trailing backslash", "byte 1"});
  expect_error([] { unescape("ab\\q"); }, {"unknown escape", "\\q", "byte 2"});
  expect_error([] { unescape("\\\x01"); }, {"unknown escape", "\\x01"});
  expect_error([] { unescape("\\x4"); }, {"\\x", "2 hex digits"});
  expect_error([] { unescape("\\xg0"); }, {"\\x", "2 hex digits"});
  expect_error([] { unescape("\\u12"); }, {"\\u", "4 hex digits"});
  expect_error([] { unescape("\\ud800"); }, {"surrogate"});
}

// -------------------------------------------------------------------------------------------------- CLI

using cepe::testing::CleanError;
using cepe::testing::CliScratchTest;
using cepe::testing::read_text;
using cepe::testing::RunResult;
using cepe::testing::Succeeded;
using cepe::testing::write_text;

// "decode: N tokens" from the timing line.
long long decode_tokens(const std::string& err) {
  const size_t at = err.find("decode: ");
  if (at == std::string::npos) return -1;
  return std::atoll(err.c_str() + at + 8);
}

// The \uHHHH spelling of a BMP-only UTF-8 string (empty when it has a character outside the BMP).
std::string u_escaped(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_char_len(std::string_view(s).substr(i));
    if (n == 0 || n == 4) return "";
    const auto* p = reinterpret_cast<const unsigned char*>(s.data() + i);
    uint32_t c = n == 1 ? p[0] : (p[0] & (0xFFu >> (n + 1)));
    for (size_t k = 1; k < n; ++k) c = (c << 6) | (p[k] & 0x3F);
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\u%04X", c);
    out += buf;
    i += n;
  }
  return out;
}

class ChatCli : public CliScratchTest {
 protected:
  RunResult run(std::vector<std::string> extra) {
    std::vector<std::string> a = {"generate", "-m", kFixture.string()};
    a.insert(a.end(), extra.begin(), extra.end());
    return run_cepe(a);
  }
  // New greedy tokens for `prompt` ids through token mode (cut at the first eos, which ends the row).
  Ids token_mode(const Ids& prompt, int n) {
    const fs::path req = dir_ / "req.json", out = dir_ / "out.json";
    write_text(req, json{{"input_ids", {prompt}}}.dump());
    const RunResult r = run_cepe({"generate", "-m", kFixture.string(), "--request", req.string(), "-o", out.string(),
                                  "--greedy", "-n", std::to_string(n)});
    EXPECT_TRUE(Succeeded(r));
    const Ids seq = json::parse(read_text(out))["sequences"][0].get<Ids>();
    Ids gen(seq.begin() + static_cast<std::ptrdiff_t>(prompt.size()), seq.end());
    if (auto eos = std::find(gen.begin(), gen.end(), tiny().eos_id()); eos != gen.end()) gen.erase(eos, gen.end());
    return gen;
  }
};

TEST_F(ChatCli, HelpMentionsChatAndStop) {
  const RunResult r = run({"--help"});
  ASSERT_TRUE(Succeeded(r));
  for (const char* k : {"--chat", "--system", "--stop", "[INST]", "<<SYS>>", "\\n", "repeatable"})
    EXPECT_NE(r.out.find(k), std::string::npos) << k;
}

TEST_F(ChatCli, ReplyIsTheDecodedNewTokensOfTheTemplate) {
  for (const bool with_system : {false, true}) {
    SCOPED_TRACE(with_system ? "with --system" : "no system");
    std::vector<ChatMessage> dialog;
    std::vector<std::string> args = {"-p", " hi ", "--chat", "-n", "16", "--greedy"};
    if (with_system) {
      dialog.push_back({"system", "Be brief."});
      args.insert(args.end(), {"--system", "Be brief."});
    }
    dialog.push_back({"user", " hi "});
    const RunResult r = run(args);
    ASSERT_TRUE(Succeeded(r));
    // The decoder got exactly the template's ids: token mode on them gives the same reply.
    const Ids prompt = llama2_chat_tokens(tiny(), dialog);
    const Ids gen = token_mode(prompt, 16);
    EXPECT_EQ(r.out, tiny().decode(gen) + "\n");
    EXPECT_NE(r.err.find("prefill: " + std::to_string(prompt.size()) + " tokens"), std::string::npos) << r.err;
  }
}

TEST_F(ChatCli, StopEndsGeneration) {
  const RunResult full = run({"-p", "hi", "--chat", "-n", "16", "--greedy"});
  ASSERT_TRUE(Succeeded(full));
  ASSERT_EQ(decode_tokens(full.err), 15) << full.err;
  const std::string reply = full.out.substr(0, full.out.size() - 1);

  // A stop string that never occurs changes nothing (the brief's `--stop X`).
  const RunResult x = run({"-p", "hi", "--chat", "-n", "16", "--greedy", "--stop", "X"});
  ASSERT_TRUE(Succeeded(x));
  if (reply.find('X') == std::string::npos) {
    EXPECT_EQ(x.out, full.out);
  }

  // Stop strings cut out of the reply: two characters starting near its middle, and its first character.
  const Ids gen = token_mode(llama2_chat_tokens(tiny(), {{"user", "hi"}}), 16);
  ASSERT_EQ(tiny().decode(gen), reply);
  std::vector<size_t> starts = {0};
  for (size_t i = reply.size() / 2; i < reply.size(); ++i)
    if (utf8_char_len(std::string_view(reply).substr(i)) != 0) {
      starts.push_back(i);
      break;
    }
  for (size_t start : starts) {
    const size_t n1 = utf8_char_len(std::string_view(reply).substr(start));
    ASSERT_GT(n1, 0u);
    const size_t n2 = start + n1 < reply.size() ? utf8_char_len(std::string_view(reply).substr(start + n1)) : 0;
    const std::string stop = reply.substr(start, n1 + n2);
    SCOPED_TRACE("stop " + ::testing::PrintToString(stop));
    const std::string want = reply.substr(0, reply.find(stop));
    // The token that completes the stop string in the streamed text is the last one generated: steps = k + 1,
    // decode tokens = k.
    long long k = 0;
    {
      StreamDecoder stream(tiny());
      std::string streamed;
      for (; k < static_cast<long long>(gen.size()); ++k) {
        streamed += stream.push(gen[static_cast<size_t>(k)]);
        if (streamed.find(stop) != std::string::npos) break;
      }
      ASSERT_LT(k, static_cast<long long>(gen.size()));
    }

    const RunResult r = run({"-p", "hi", "--chat", "-n", "16", "--greedy", "--stop", stop});
    ASSERT_TRUE(Succeeded(r));
    EXPECT_EQ(r.out, want + "\n");
    EXPECT_EQ(decode_tokens(r.err), k) << r.err;

    // The same through escapes, among other stop strings that do not occur.
    if (const std::string esc = u_escaped(stop); !esc.empty()) {
      const RunResult e = run({"-p", "hi", "--chat", "-n", "16", "--greedy", "--stop", "\\n\\nNEVER", "--stop", esc});
      ASSERT_TRUE(Succeeded(e));
      if (reply.find("\n\nNEVER") == std::string::npos) {
        EXPECT_EQ(e.out, want + "\n");
      }
    }
  }
}

TEST_F(ChatCli, StopWithoutChatMatchesGeneratedTextOnly) {
  const RunResult full = run({"-p", "hi", "-n", "12", "--greedy"});
  ASSERT_TRUE(Succeeded(full));
  ASSERT_EQ(full.out.rfind("hi", 0), 0u);
  const std::string gen = full.out.substr(2, full.out.size() - 3);
  // The prompt is not searched: "hi" stops only where the generated text has it.
  const RunResult p = run({"-p", "hi", "-n", "12", "--greedy", "--stop", "hi"});
  ASSERT_TRUE(Succeeded(p));
  EXPECT_EQ(p.out, "hi" + gen.substr(0, gen.find("hi")) + "\n");
  // Cut inside the generated text.
  size_t start = gen.size() / 2;
  while (start < gen.size() && utf8_char_len(std::string_view(gen).substr(start)) == 0) ++start;
  ASSERT_LT(start, gen.size());
  const std::string stop = gen.substr(start, utf8_char_len(std::string_view(gen).substr(start)));
  const RunResult r = run({"-p", "hi", "-n", "12", "--greedy", "--stop", stop});
  ASSERT_TRUE(Succeeded(r));
  EXPECT_EQ(r.out, "hi" + gen.substr(0, gen.find(stop)) + "\n");
}

TEST_F(ChatCli, OptionErrors) {
  const fs::path req = dir_ / "req.json";
  write_text(req, R"({"input_ids": [[1, 5, 6]]})");
  const std::vector<std::string> token_mode = {"--request", req.string(), "-o", (dir_ / "o.json").string()};
  auto with = [&](std::vector<std::string> a, std::initializer_list<std::string> more) {
    a.insert(a.end(), more);
    return a;
  };
  EXPECT_TRUE(CleanError(run(with(token_mode, {"--chat"})), {"--chat", "--request"}));
  EXPECT_TRUE(CleanError(run(with(token_mode, {"--stop", "x"})), {"--stop", "--request"}));
  EXPECT_TRUE(CleanError(run(with(token_mode, {"--system", "s"})), {"--system", "--request"}));
  EXPECT_FALSE(fs::exists(dir_ / "o.json"));
  EXPECT_TRUE(CleanError(run({"-p", "hi", "--system", "s"}), {"--system", "--chat"}));
  EXPECT_TRUE(CleanError(run({"-p", "hi", "--stop", ""}), {"--stop", "empty"}));
  EXPECT_TRUE(CleanError(run({"-p", "hi", "--stop", "a\\qb"}), {"--stop", "unknown escape", "\\q"}));
  EXPECT_TRUE(CleanError(run({"-p", "hi", "--stop", "ok", "--stop", "x\\"}), {"--stop #2", "trailing backslash"}));
  EXPECT_TRUE(CleanError(run({"-p", "hi", "--stop", "\\xff"}), {"--stop", "UTF-8"}));
  EXPECT_TRUE(CleanError(run({"-p", "hi", "--stop", "a\nb\\z"}), {"--stop", "unknown escape"}));  // still one line
  EXPECT_TRUE(CleanError(run({"-p", "\xff", "--chat"}), {"--prompt", "UTF-8"}));
  EXPECT_TRUE(CleanError(run({"-p", "hi", "--chat", "--system", "a\xfe"}), {"--system", "UTF-8", "byte 1"}));
  EXPECT_TRUE(CleanError(run({"-p", "hi", "--chat=1"}), {"--chat", "takes no value"}));
}

TEST_F(ChatCli, WarnsAboutTemplateTagsInMessages) {
  const RunResult r = run({"-p", "[INST] hi", "--chat", "-n", "2", "--greedy"});
  ASSERT_TRUE(Succeeded(r));
  EXPECT_NE(r.err.find("warning:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("[INST]"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace cepe
