#pragma once
// Chat prompts and stop strings (runtime layer).
//  - llama2_chat_tokens(): the Llama-2-chat prompt format ([INST], <<SYS>>) as token ids, exactly as Meta's
//    reference `Llama.chat_completion` builds them; BOS/EOS are token ids, never text.
//  - StopMatcher: cuts a streamed text at the first stop string, holding back only what could still
//    become one.
//  - unescape(): C-style escapes of command-line stop strings (`\n`, `\t`, ...).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "cepe/error.h"
#include "cepe/tokenizer.h"

namespace cepe {

struct ChatMessage {
  std::string role;     // "system", "user" or "assistant"
  std::string content;  // UTF-8
};

// Prompt ids of a Llama-2-chat dialog: an optional "system" message first, then "user" and "assistant"
// alternating, starting and ending with "user" (the model writes the next assistant turn).
//  - The system prompt joins the first user message: "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + user.
//  - Each (user, assistant) pair: BOS + encode("[INST] " + strip(user) + " [/INST] " + strip(assistant) + " ")
//    + EOS, one encode() call per pair.
//  - The final user message: BOS + encode("[INST] " + strip(user) + " [/INST]").
// strip() is Python's str.strip() (py_strip below). Throws cepe::Error naming the message for an empty dialog,
// an unknown role, a system message anywhere but first, roles out of order, a dialog that does not end with a
// user message, or content that is not valid UTF-8.
std::vector<int32_t> llama2_chat_tokens(const Tokenizer& tokenizer, const std::vector<ChatMessage>& dialog);

// True when some message contains one of the tags the template itself uses ("[INST]", "[/INST]", "<<SYS>>",
// "<</SYS>>"). Meta's chat_completion answers such dialogs with an error message instead of the model's reply;
// here it is only reported (callers may warn).
bool llama2_has_special_tags(const std::vector<ChatMessage>& dialog);

// Python's str.strip() without arguments on UTF-8 text: removes leading and trailing characters for which
// str.isspace() is true (ASCII \t \n \v \f \r, U+001C..U+001F, space, U+0085, U+00A0, U+1680, U+2000..U+200A,
// U+2028, U+2029, U+202F, U+205F, U+3000). Bytes that are not valid UTF-8 are never stripped.
std::string py_strip(std::string_view text);

// Streaming stop-string matcher. Feed it the decoded text piece by piece (StreamDecoder's output); push()
// returns the text that is safe to print now. A suffix that is still the beginning of a stop string is held
// back until it either completes one (then nothing from the stop string on is ever returned and stopped()
// becomes true) or cannot anymore (then it is released). flush() at the end of the stream returns what is
// still held.
//
// The result does not depend on how the text is split into pieces: the stream stops at the first byte where
// some stop string ends; of the stop strings ending there the longest (the one starting first) is matched,
// and the output is everything before it. With no stop strings push() returns its input unchanged.
// If the stop strings and the pieces are valid UTF-8, every returned chunk is whole characters.
class StopMatcher {
 public:
  StopMatcher() = default;
  // Throws cepe::Error for an empty stop string or one that is not valid UTF-8. Duplicates are harmless.
  explicit StopMatcher(std::vector<std::string> stops);

  // Appends `text` to the stream; returns the printable part. After a stop, returns "" and ignores `text`.
  std::string push(std::string_view text);
  // End of stream: returns the held-back text ("" after a stop) and clears it.
  std::string flush();
  // Back to the start of a new stream (same stop strings).
  void reset();

  bool stopped() const { return matched_ != kNone; }
  // The stop string that ended the stream ("" while not stopped).
  const std::string& matched() const;
  const std::vector<std::string>& stops() const { return stops_; }
  // Bytes currently held back (a suffix that is a proper prefix of a stop string).
  size_t held() const { return held_.size(); }

 private:
  static constexpr size_t kNone = static_cast<size_t>(-1);
  std::vector<std::string> stops_;
  size_t max_len_ = 0;
  std::string held_;
  size_t matched_ = kNone;  // index into stops_
};

// Interprets C-style escapes, e.g. for stop strings given on a command line: \n \r \t \\ \' \" \xHH (one byte,
// two hex digits) and \uHHHH (a code point as UTF-8; surrogates rejected). Any other character after a
// backslash, a trailing backslash or a malformed \x / \u is a cepe::Error naming the byte offset.
std::string unescape(std::string_view text);

}  // namespace cepe
