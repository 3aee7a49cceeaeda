// CEPED teacher targets (`cepe data teacher`, src/train/teacher.cpp) as the ceped stage opens them: every
// accepted file must give in-range ids and probabilities for every sample it claims to hold.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_common.h"
#include "train/teacher.h"

namespace {

// The ceped config the corpus's files were made for (make_corpus.py writes the same samples_of).
const cepe::train::TrainConfig& config() {
  static const cepe::train::TrainConfig c = cepe::train::parse_train_config(
      nlohmann::json::parse(R"({"stage": "ceped", "output_dir": "out", "model": {"checkpoint": "m"}, "steps": 1,
        "data": {"train": [{"files": ["x.tokens"], "layout": "concat"}], "seq_len": 4, "n_ctx": 2, "ctx_len": 2,
                 "teacher": "t"}})"),
      "fuzz config");
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static cepe::fuzz::InputFile file("teacher");
  const std::string& path = file.write(data, size);
  constexpr int64_t kVocab = 16;
  cepe::fuzz::expect_errors([&] {
    const cepe::train::TeacherTargets t = cepe::train::TeacherTargets::open(path, config(), kVocab);
    std::vector<int32_t> index(static_cast<size_t>(t.len() * t.k()));
    std::vector<float> prob(static_cast<size_t>(t.len() * (t.k() + 1)));
    for (int64_t i = 0; i < std::min<int64_t>(t.samples(), 64); ++i) {
      t.fill(i, index.data(), prob.data());
      for (int32_t v : index) cepe::fuzz::fuzz_check(v >= 0 && v < kVocab, "teacher ids are in the vocabulary");
      for (float p : prob) cepe::fuzz::fuzz_check(p >= 0.0f && p <= 1.0f, "teacher probabilities are in [0, 1]");
    }
  });
  return 0;
}
