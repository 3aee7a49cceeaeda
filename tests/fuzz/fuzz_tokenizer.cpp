// cepe::Tokenizer::load on arbitrary bytes (a SentencePiece model is a protobuf), then a round of
// encode/decode/piece on what it accepted.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cepe/tokenizer.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static cepe::fuzz::InputFile file("tokenizer");
  const std::string& path = file.write(data, size);
  cepe::fuzz::expect_errors([&] {
    const cepe::Tokenizer tok = cepe::Tokenizer::load(path);
    const std::vector<int32_t> ids = tok.encode("Hello w\xc3\xb6rld 42 \xe2\x80\x94 \xf0\x9f\x98\x80!", true);
    for (const int32_t id : ids) {
      cepe::fuzz::fuzz_check(id >= 0 && id < tok.vocab_size(), "encode() returns ids in the vocabulary");
    }
    const std::string text = tok.decode(ids);
    cepe::fuzz::touch(text.data(), text.size());
    // Every piece kind (control, unknown, byte, normal) is near the start of a SentencePiece vocabulary.
    std::vector<int32_t> first(static_cast<size_t>(std::min<int32_t>(tok.vocab_size(), 300)));
    for (size_t i = 0; i < first.size(); ++i) first[i] = static_cast<int32_t>(i);
    cepe::StreamDecoder stream(tok);
    std::string streamed;
    for (const int32_t id : first) streamed += stream.push(id);
    streamed += stream.flush();
    cepe::fuzz::fuzz_check(streamed == tok.decode(first), "StreamDecoder output == decode()");
  });
  return 0;
}
