// The Llama-2-chat prompt format as token ids.
//
// Follows Meta's reference implementation, meta-llama/llama (formerly facebookresearch/llama),
// llama/generation.py, `Llama.chat_completion` (Llama 2 release, 2023): B_INST/E_INST = "[INST]"/"[/INST]",
// B_SYS/E_SYS = "<<SYS>>\n"/"\n<</SYS>>\n\n"; a leading system message is merged into the first user message
// as B_SYS + system + E_SYS + user (the system text itself is not stripped; the merged text is); every
// (user, assistant) pair is one `tokenizer.encode(f"{B_INST} {user.strip()} {E_INST} {answer.strip()} ",
// bos=True, eos=True)`, and the final user message is `encode(f"{B_INST} {user.strip()} {E_INST}", bos=True,
// eos=False)`. The roles must be user/assistant alternating after the optional system message and the last one
// must be user (the reference asserts both). Hugging Face's LlamaTokenizer default chat template writes the same
// text with "<s>"/"</s>" strings; here BOS/EOS are always the tokenizer's ids, never text.
#include <array>
#include <string>

#include "cepe/chat.h"
#include "core/utf8.h"

namespace cepe {

namespace {

constexpr std::string_view kBInst = "[INST]";
constexpr std::string_view kEInst = "[/INST]";
constexpr std::string_view kBSys = "<<SYS>>\n";
constexpr std::string_view kESys = "\n<</SYS>>\n\n";

// Code points for which Python's str.isspace() is true.
bool py_isspace(uint32_t c) {
  if (c == 0x20 || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return true;
  if (c < 0x80) return false;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// The code point of the well-formed character of `n` bytes at `p` (n from utf8_char_len).
uint32_t code_point(const unsigned char* p, size_t n) {
  if (n == 1) return p[0];
  uint32_t c = p[0] & (0xFFu >> (n + 1));
  for (size_t i = 1; i < n; ++i) c = (c << 6) | (p[i] & 0x3Fu);
  return c;
}

std::string message_name(size_t i, const ChatMessage& m) {
  const std::string role = m.role.size() <= 32 ? m.role : m.role.substr(0, 32) + "...";
  return "chat message " + std::to_string(i + 1) + " (" + role + ")";
}

}  // namespace

std::string py_strip(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    const size_t n = utf8_char_len(s.substr(begin));
    if (n == 0 || !py_isspace(code_point(reinterpret_cast<const unsigned char*>(s.data() + begin), n))) break;
    begin += n;
  }
  size_t end = s.size();
  while (end > begin) {
    // Start of the last character: back over at most 3 continuation bytes.
    size_t start = end - 1;
    while (start > begin && end - start < 4 && utf8_is_continuation(static_cast<unsigned char>(s[start]))) --start;
    const size_t n = utf8_char_len(s.substr(start, end - start));
    if (n != end - start || !py_isspace(code_point(reinterpret_cast<const unsigned char*>(s.data() + start), n))) break;
    end = start;
  }
  return std::string(s.substr(begin, end - begin));
}

std::vector<int32_t> llama2_chat_tokens(const Tokenizer& tok, const std::vector<ChatMessage>& dialog) {
  check(!dialog.empty(), "chat: the dialog is empty (it needs a user message)");
  for (size_t i = 0; i < dialog.size(); ++i) {
    const ChatMessage& m = dialog[i];
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      throw Error(message_name(i, m) + ": unknown role; the roles are system, user and assistant");
    size_t bad = 0;
    if (!utf8_valid(m.content, &bad))
      throw Error(message_name(i, m) + ": content is not valid UTF-8 at byte " + std::to_string(bad));
  }
  const bool has_system = dialog[0].role == "system";
  const size_t first = has_system ? 1 : 0;
  check(first < dialog.size(), "chat: a system message must be followed by a user message");
  for (size_t i = first; i < dialog.size(); ++i) {
    const bool user = (i - first) % 2 == 0;
    if (dialog[i].role != (user ? "user" : "assistant"))
      throw Error(message_name(i, dialog[i]) + (user ? ": expected a user" : ": expected an assistant") +
                  " message (an optional system message first, then user and assistant alternating, starting "
                  "with user)");
  }
  check(dialog.back().role == "user",
        message_name(dialog.size() - 1, dialog.back()) + ": the dialog must end with a user message");

  auto user_text = [&](size_t i) {
    if (has_system && i == first)
      return py_strip(std::string(kBSys) + dialog[0].content + std::string(kESys) + dialog[i].content);
    return py_strip(dialog[i].content);
  };

  std::vector<int32_t> ids;
  size_t i = first;
  for (; i + 1 < dialog.size(); i += 2) {
    const std::string text = std::string(kBInst) + " " + user_text(i) + " " + std::string(kEInst) + " " +
                             py_strip(dialog[i + 1].content) + " ";
    const std::vector<int32_t> t = tok.encode(text, /*add_bos=*/true);
    ids.insert(ids.end(), t.begin(), t.end());
    ids.push_back(tok.eos_id());
  }
  const std::string last = std::string(kBInst) + " " + user_text(i) + " " + std::string(kEInst);
  const std::vector<int32_t> t = tok.encode(last, /*add_bos=*/true);
  ids.insert(ids.end(), t.begin(), t.end());
  return ids;
}

bool llama2_has_special_tags(const std::vector<ChatMessage>& dialog) {
  static const std::array<std::string_view, 4> kTags = {kBInst, kEInst, "<<SYS>>", "<</SYS>>"};
  for (const ChatMessage& m : dialog)
    for (std::string_view tag : kTags)
      if (m.content.find(tag) != std::string::npos) return true;
  return false;
}

}  // namespace cepe
