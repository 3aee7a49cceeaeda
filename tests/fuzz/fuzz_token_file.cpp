// cepe::TokenFile::open on arbitrary bytes; for an accepted file, its invariants, every byte of its views, and a few
// samples of every layout in train and eval mode (the samplers trust what open() validated).
#include <cstddef>
#include <cstdint>
#include <memory>

#include "fuzz_common.h"
#include "train/samplers.h"
#include "train/token_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static cepe::fuzz::InputFile file("token_file");
  const std::string& path = file.write(data, size);
  using cepe::fuzz::fuzz_check;
  std::shared_ptr<const cepe::TokenFile> f;
  cepe::fuzz::expect_errors([&] { f = std::make_shared<const cepe::TokenFile>(cepe::TokenFile::open(path)); });
  if (!f) return 0;
  const auto off = f->doc_offsets();
  const auto ids = f->tokens();
  const int32_t vocab = f->tokenizer().vocab_size;
  fuzz_check(!off.empty() && off.front() == 0 && off.back() == f->n_tokens(), "offsets span the tokens");
  for (size_t i = 1; i < off.size(); ++i) fuzz_check(off[i] >= off[i - 1], "offsets never decrease");
  for (const int32_t id : ids) fuzz_check(id >= 0 && id < vocab, "ids inside the vocabulary");
  cepe::fuzz::touch(ids.data(), ids.size_bytes());
  cepe::fuzz::touch(off.data(), off.size_bytes());
  for (const auto& s : f->sources()) cepe::fuzz::touch(s.data(), s.size());

  for (const cepe::Layout layout : {cepe::Layout::Decoder, cepe::Layout::Mlm, cepe::Layout::Filtered,
                                    cepe::Layout::Concat, cepe::Layout::Duplicate}) {
    for (const bool shuffle : {true, false}) {
      cepe::fuzz::expect_errors([&] {
        cepe::SamplerConfig c;
        cepe::StreamConfig s;
        s.layout = layout;
        s.files = {f};
        c.streams = {s};
        c.seq_len = 4;
        if (cepe::layout_has_encoder(layout)) c.n_ctx = 2, c.ctx_len = 2, c.context_masking = {0.5, 0.5};
        c.shuffle = shuffle;
        c.batch_size = 3;
        const cepe::Sampler sampler(c);
        for (int64_t g = 0; g < 2; ++g) {
          const cepe::Batch b = sampler.batch(g);
          fuzz_check(static_cast<int64_t>(b.input_ids.size()) == b.rows * 4, "batch shape");
          for (const int32_t id : b.input_ids) fuzz_check(id >= 0 && id <= vocab, "sample ids in range ([MASK] = vocab)");
          for (const int32_t id : b.encoder_input_ids) fuzz_check(id >= 0 && id < vocab, "encoder ids in range");
        }
      });
    }
  }
  return 0;
}
