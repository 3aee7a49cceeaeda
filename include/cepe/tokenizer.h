#pragma once
// Tokenizer: a SentencePiece model (tokenizer.model) with the LLaMA conventions.
//  - encode() optionally prepends BOS and never appends EOS; the text must be valid UTF-8.
//  - decode() skips BOS/EOS/other control pieces, turns byte-fallback pieces <0xNN> back into bytes and
//    drops the leading space of the first piece (the "dummy prefix" SentencePiece added when encoding).
//  - StreamDecoder turns ids into text one at a time (generation) and its outputs, concatenated, are exactly
//    decode(all ids).
// The header stays free of SentencePiece includes.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cepe/error.h"

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace cepe {

namespace detail {
struct TokenizerVocab;  // per-id decoding table (defined in tokenizer.cpp)
}  // namespace detail

class Tokenizer {
 public:
  // Loads a SentencePiece tokenizer.model. Throws cepe::Error naming `path` when the file is missing,
  // unreadable, empty or not a valid model.
  static Tokenizer load(const std::string& path);

  // Token ids of `text`. With `add_bos` the BOS id comes first; EOS is never added.
  // Throws cepe::Error("input is not valid UTF-8 at byte N") for ill-formed UTF-8.
  std::vector<int32_t> encode(const std::string& text, bool add_bos) const;

  // Text of `ids`. Control pieces (BOS/EOS/...) produce nothing; the unknown id produces " \u2047 ";
  // byte pieces that do not form valid UTF-8 produce U+FFFD, one per byte. Throws cepe::Error for an id
  // outside [0, vocab_size()).
  std::string decode(const std::vector<int32_t>& ids) const;

  // Text of one token as it is appended to already-printed text: the SentencePiece space marker U+2581
  // becomes ' ', a byte piece <0xNN> is that single raw byte (possibly part of a multi-byte character),
  // a control piece is "", the unknown piece is " \u2047 ". Context-dependent rules (dropping the leading
  // space of the first piece, buffering partial UTF-8) are StreamDecoder's job. Throws for a bad id.
  std::string piece(int32_t id) const;

  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t unk_id() const;
  int32_t vocab_size() const;

 private:
  friend class StreamDecoder;
  Tokenizer() = default;
  void check_id(int32_t id) const;

  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::shared_ptr<const detail::TokenizerVocab> vocab_;
};

// Incremental detokenizer for generation. push(id) returns the text that id adds to the output; bytes of an
// incomplete UTF-8 character are held back until the character is complete (or known to be invalid), so
// every returned chunk is whole characters. Concatenating all push() results and a final flush() equals
// Tokenizer::decode(all ids), including the LLaMA rule that the first piece's leading space is dropped.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer);

  std::string push(int32_t id);

  // End of stream: returns the held-back bytes (an incomplete character becomes U+FFFD per byte, as in
  // decode). The first-piece state is kept, so pushing more ids continues the same text; call reset() to
  // start a new, unrelated text.
  std::string flush();

  // Back to the initial state (the next piece is "first" again); held-back bytes are discarded.
  void reset();

 private:
  std::string drain(bool final);

  Tokenizer tok_;
  std::string pending_;        // bytes of the current run of byte pieces not yet emitted
  bool text_empty_ = true;     // nothing emitted yet
  bool is_bos_ws_ = true;      // the next piece may still lose its leading space
  bool bos_ws_seen_ = false;   // the previous non-byte piece lost its leading space
  std::vector<int32_t> ids_;   // only for models with a denormalizer: decoded as a whole on flush()
};

}  // namespace cepe
