#include "cepe/tokenizer.h"

#include <sentencepiece_processor.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string_view>
#include <unordered_set>
#include <system_error>

#include "core/utf8.h"

namespace cepe {

namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581, SentencePiece's escaped space
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

std::string replace_space_markers(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (s.substr(i, kSpaceMarker.size()) == kSpaceMarker) {
      out += ' ';
      i += kSpaceMarker.size();
    } else {
      out += s[i++];
    }
  }
  return out;
}

// "<0xNN>" -> 0..255, or -1.
int parse_byte_piece(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = p[i];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return -1;
    v = v * 16 + d;
  }
  return v;
}

// Minimal protobuf wire-format reader, enough to read the few ModelProto fields the library does not expose
// (its generated .pb.h is not installed): the normalizer flags, the denormalizer and the unknown surface.
class WireReader {
 public:
  explicit WireReader(std::string_view data) : p_(data.data()), end_(data.data() + data.size()) {}

  // Reads the next field. For wire type 2 `bytes` is set, for wire type 0 `value`. False at the end or
  // on malformed input.
  bool next(uint32_t* field, uint32_t* wire_type, std::string_view* bytes, uint64_t* value) {
    if (p_ >= end_) return false;
    uint64_t key;
    if (!varint(&key)) return false;
    *field = static_cast<uint32_t>(key >> 3);
    *wire_type = static_cast<uint32_t>(key & 7);
    switch (*wire_type) {
      case 0: return varint(value);
      case 1: return skip(8);
      case 2: {
        uint64_t len;
        if (!varint(&len) || len > static_cast<uint64_t>(end_ - p_)) return false;
        *bytes = std::string_view(p_, len);
        p_ += len;
        return true;
      }
      case 5: return skip(4);
      case 3: return skip_group(*field, 0);
      default: return false;  // an end-group without its start, or wire types 6/7: malformed
    }
  }

 private:
  // sentencepiece_model.proto uses no groups, but protobuf skips them as unknown fields, and so must we:
  // stopping at one would miss the fields after it and mispredict how the library decodes.
  bool skip_group(uint32_t field, int depth) {
    if (depth > 64) return false;  // protobuf's own recursion limit is 100
    for (;;) {
      uint64_t key;
      if (!varint(&key)) return false;
      const auto f = static_cast<uint32_t>(key >> 3);
      uint64_t v;
      switch (key & 7) {
        case 0: if (!varint(&v)) return false; break;
        case 1: if (!skip(8)) return false; break;
        case 2: if (!varint(&v) || v > static_cast<uint64_t>(end_ - p_)) return false; p_ += v; break;
        case 3: if (!skip_group(f, depth + 1)) return false; break;
        case 4: return f == field;
        case 5: if (!skip(4)) return false; break;
        default: return false;
      }
    }
  }
  bool varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64 && p_ < end_; shift += 7) {
      const auto b = static_cast<unsigned char>(*p_++);
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  bool skip(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) return false;
    p_ += n;
    return true;
  }
  const char* p_;
  const char* end_;
};

struct ModelFlags {
  bool add_dummy_prefix = true;          // NormalizerSpec defaults
  bool remove_extra_whitespaces = true;
  bool has_denormalizer = false;
  std::string_view normalizer_charsmap, denormalizer_charsmap;  // precompiled_charsmap blobs (views into the file)
  std::string unk_surface = " \xE2\x81\x87 ";  // TrainerSpec default
};

ModelFlags read_model_flags(std::string_view model) {
  ModelFlags f;
  WireReader top(model);
  uint32_t field, wt;
  std::string_view bytes;
  uint64_t value;
  while (top.next(&field, &wt, &bytes, &value)) {
    if (wt != 2) continue;
    WireReader sub(bytes);
    uint32_t sf, swt;
    std::string_view sb;
    uint64_t sv;
    if (field == 2) {  // TrainerSpec
      while (sub.next(&sf, &swt, &sb, &sv))
        if (sf == 44 && swt == 2) f.unk_surface = std::string(sb);
    } else if (field == 3) {  // NormalizerSpec
      while (sub.next(&sf, &swt, &sb, &sv)) {
        if (sf == 3 && swt == 0) f.add_dummy_prefix = sv != 0;
        if (sf == 4 && swt == 0) f.remove_extra_whitespaces = sv != 0;
        if (sf == 2 && swt == 2) f.normalizer_charsmap = sb;
      }
    } else if (field == 5) {  // denormalizer NormalizerSpec: active when precompiled_charsmap is non-empty
      while (sub.next(&sf, &swt, &sb, &sv))
        if (sf == 2 && swt == 2) {
          f.has_denormalizer = !sb.empty();
          f.denormalizer_charsmap = sb;
        }
    }
  }
  return f;
}

// SentencePiece walks a precompiled_charsmap (a darts-clone double array, then NUL-terminated replacement
// strings) without bounds checks, so a hostile tokenizer.model makes it read outside the blob on ordinary text.
// This walks every node any input can reach, checks each index it would read, and returns what is wrong ("" if
// nothing). Layout (sentencepiece normalizer.cc): uint32 trie size in bytes, the trie's uint32 units, the strings.
std::string charsmap_problem(std::string_view blob) {
  if (blob.empty()) return "";  // no rules: the identity
  if (blob.size() <= 4) return "is shorter than its 4-byte header";
  uint32_t trie_bytes = 0;
  std::memcpy(&trie_bytes, blob.data(), 4);
  if (trie_bytes >= blob.size()) return "declares a trie larger than the blob";  // the library's own check
  const size_t n = trie_bytes / 4;
  const std::string_view strings = blob.substr(4 + trie_bytes);
  if (n == 0) return "has an empty trie";
  auto unit = [&](size_t i) {
    uint32_t u;
    std::memcpy(&u, blob.data() + 4 + 4 * i, 4);
    return u;
  };
  auto offset = [](uint32_t u) { return static_cast<size_t>((u >> 10) << ((u & (1u << 9)) >> 6)); };
  std::vector<size_t> todo = {offset(unit(0))};
  std::unordered_set<size_t> seen(todo.begin(), todo.end());
  while (!todo.empty()) {
    const size_t base = todo.back();
    todo.pop_back();
    for (size_t c = 0; c < 256; ++c) {  // every byte of the input text may be next
      const size_t j = base ^ c;
      if (j >= n) return "trie unit " + std::to_string(j) + " is outside the " + std::to_string(n) + "-unit trie";
      const uint32_t u = unit(j);
      if ((u & ((1u << 31) | 0xFFu)) != c) continue;  // not a child for this byte
      const size_t next = j ^ offset(u);
      if ((u >> 8) & 1u) {  // a leaf: its value is an offset into the strings, read up to a NUL
        if (next >= n) return "trie leaf " + std::to_string(next) + " is outside the trie";
        const size_t value = unit(next) & ((1u << 31) - 1);
        if (value >= strings.size() || strings.find('\0', value) == std::string_view::npos)
          return "replacement string offset " + std::to_string(value) + " is outside its strings";
      }
      if (seen.insert(next).second) todo.push_back(next);
    }
  }
  return "";
}

}  // namespace

namespace detail {

// How each id decodes, mirroring SentencePieceProcessor::Decode (sentencepiece 0.1.9x) so that
// StreamDecoder reproduces decode() exactly.
struct TokenizerVocab {
  enum class Kind : uint8_t { Normal, Control, Unknown, Byte };
  struct Entry {
    Kind kind = Kind::Normal;
    bool space_prefix = false;  // raw piece starts with U+2581 (may be dropped when first)
    std::string text;           // full text (U+2581 -> ' '); for Byte the single raw byte
    std::string text_no_prefix; // text without the leading space (only when space_prefix)
  };
  std::vector<Entry> entries;
  bool strip_first_space = true;  // add_dummy_prefix || remove_extra_whitespaces
  bool remove_extra_whitespaces = false;
  bool has_denormalizer = false;
};

}  // namespace detail

Tokenizer Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) throw Error("tokenizer model '" + path + "' does not exist");
  if (!fs::is_regular_file(status)) throw Error("tokenizer model '" + path + "' is not a regular file");

  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open tokenizer model '" + path + "'");
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error("cannot read tokenizer model '" + path + "'");
  if (data.empty()) throw Error("tokenizer model '" + path + "' is empty");

  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  const auto st = sp->LoadFromSerializedProto(data);
  if (!st.ok()) {
    throw Error("tokenizer model '" + path + "' is not a valid SentencePiece model: " +
                std::string(st.message()));
  }
  const int n = sp->GetPieceSize();
  if (n <= 0) throw Error("tokenizer model '" + path + "' has an empty vocabulary");

  const ModelFlags flags = read_model_flags(data);
  for (const auto& [blob, which] : {std::pair{flags.normalizer_charsmap, "normalizer"},
                                    std::pair{flags.denormalizer_charsmap, "denormalizer"}}) {
    const std::string problem = charsmap_problem(blob);
    if (!problem.empty())
      throw Error("tokenizer model '" + path + "': the " + which + "'s precompiled_charsmap " + problem +
                  " (corrupt or hostile file)");
  }
  auto vocab = std::make_shared<detail::TokenizerVocab>();
  vocab->strip_first_space = flags.add_dummy_prefix || flags.remove_extra_whitespaces;
  vocab->remove_extra_whitespaces = flags.remove_extra_whitespaces;
  vocab->has_denormalizer = flags.has_denormalizer;
  vocab->entries.resize(n);
  for (int id = 0; id < n; ++id) {
    auto& e = vocab->entries[id];
    const std::string& raw = sp->IdToPiece(id);
    // Decode(ids) maps ids to pieces and back, so the piece's own id decides its kind.
    const int eff = sp->PieceToId(raw);
    if (sp->IsControl(eff)) {
      e.kind = detail::TokenizerVocab::Kind::Control;
    } else if (sp->IsUnknown(eff)) {
      e.kind = detail::TokenizerVocab::Kind::Unknown;
      e.text = sp->IdToPiece(eff) == raw ? flags.unk_surface : raw;
    } else if (sp->IsByte(eff)) {
      const int b = parse_byte_piece(raw);
      if (b < 0) {
        throw Error("tokenizer model '" + path + "': byte piece " + std::to_string(id) + " '" + raw +
                    "' is not of the form <0xNN>");
      }
      e.kind = detail::TokenizerVocab::Kind::Byte;
      e.text = std::string(1, static_cast<char>(b));
    } else {
      e.kind = detail::TokenizerVocab::Kind::Normal;
      e.text = replace_space_markers(raw);
      e.space_prefix = std::string_view(raw).substr(0, kSpaceMarker.size()) == kSpaceMarker;
      if (e.space_prefix) e.text_no_prefix = replace_space_markers(std::string_view(raw).substr(kSpaceMarker.size()));
    }
  }

  Tokenizer t;
  t.sp_ = std::move(sp);
  t.vocab_ = vocab;
  // The table above predicts how the library decodes each piece. Where a model defeats the prediction (an
  // unusual or hostile file), stream by decoding the whole text instead, as for a denormalizer: slower to
  // show, never different from decode().
  if (!vocab->has_denormalizer) {
    for (int32_t id = 0; id < n; ++id) {
      StreamDecoder one(t);
      std::string streamed = one.push(id);
      streamed += one.flush();
      if (streamed != t.decode({id})) {
        vocab->has_denormalizer = true;
        break;
      }
    }
  }
  return t;
}

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw Error("token id " + std::to_string(id) + " is out of range [0, " + std::to_string(vocab_size()) +
                ")");
  }
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_bos) const {
  size_t bad = 0;
  if (!utf8_valid(text, &bad)) throw Error("input is not valid UTF-8 at byte " + std::to_string(bad));
  std::vector<int> ids;
  const auto st = sp_->Encode(text, &ids);
  if (!st.ok()) throw Error("tokenizer: encoding failed: " + std::string(st.message()));
  std::vector<int32_t> out;
  out.reserve(ids.size() + 1);
  if (add_bos) {
    if (bos_id() < 0) throw Error("tokenizer: the model defines no BOS token");
    out.push_back(bos_id());
  }
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  for (const int32_t id : ids) check_id(id);
  const std::vector<int> v(ids.begin(), ids.end());
  std::string text;
  const auto st = sp_->Decode(v, &text);
  if (!st.ok()) throw Error("tokenizer: decoding failed: " + std::string(st.message()));
  return text;
}

std::string Tokenizer::piece(int32_t id) const {
  check_id(id);
  return vocab_->entries[id].text;
}

int32_t Tokenizer::bos_id() const { return sp_->bos_id(); }
int32_t Tokenizer::eos_id() const { return sp_->eos_id(); }
int32_t Tokenizer::unk_id() const { return sp_->unk_id(); }
int32_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

// ---------------------------------------------------------------------------------------------------------
// StreamDecoder: the same state machine as SentencePieceProcessor::Decode, run one piece at a time.
//  - A run of consecutive byte pieces is cut into UTF-8 characters; a byte that cannot start a valid
//    character becomes U+FFFD and the scan resumes at the next byte. Any non-byte piece ends the run.
//  - The leading space of a piece is dropped while nothing has been output yet and the previous non-byte
//    piece did not itself drop one.

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer) : tok_(tokenizer) {}

std::string StreamDecoder::drain(bool final) {
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const std::string_view rest = std::string_view(pending_).substr(i);
    const size_t n = utf8_char_len(rest);
    if (n > 0) {
      out.append(rest.substr(0, n));
      i += n;
      continue;
    }
    if (!final) {
      // Hold back a proper prefix of a character that more bytes could still complete.
      const size_t need = utf8_lead_len(static_cast<unsigned char>(rest[0]));
      bool could_complete = need > rest.size();
      for (size_t k = 1; could_complete && k < rest.size(); ++k)
        could_complete = utf8_is_continuation(static_cast<unsigned char>(rest[k]));
      if (could_complete) break;
    }
    out.append(kReplacement);
    i += 1;
  }
  pending_.erase(0, i);
  if (!out.empty()) text_empty_ = false;
  return out;
}

std::string StreamDecoder::push(int32_t id) {
  tok_.check_id(id);
  const auto& vocab = *tok_.vocab_;
  if (vocab.has_denormalizer) {  // the denormalizer rewrites whole texts: decode everything at the end
    ids_.push_back(id);
    return {};
  }
  using Kind = detail::TokenizerVocab::Kind;
  const auto& e = vocab.entries[id];
  if (e.kind == Kind::Byte) {
    pending_ += e.text;
    return drain(false);
  }

  std::string out = drain(true);  // a non-byte piece ends the byte run
  if (bos_ws_seen_ || !text_empty_) is_bos_ws_ = false;
  bool dropped = false;
  switch (e.kind) {
    case Kind::Control:
      break;
    case Kind::Unknown:
      out += e.text;
      break;
    default:
      if (is_bos_ws_ && vocab.strip_first_space && e.space_prefix) {
        out += e.text_no_prefix;
        dropped = !vocab.remove_extra_whitespaces;
      } else {
        out += e.text;
      }
      break;
  }
  bos_ws_seen_ = dropped;
  if (!out.empty()) text_empty_ = false;
  return out;
}

std::string StreamDecoder::flush() {
  if (tok_.vocab_->has_denormalizer) {
    std::string out = tok_.decode(ids_);
    ids_.clear();
    return out;
  }
  return drain(true);
}

void StreamDecoder::reset() {
  pending_.clear();
  ids_.clear();
  text_empty_ = true;
  is_bos_ws_ = true;
  bos_ws_seen_ = false;
}

}  // namespace cepe
