#pragma once
// Reads a reference fixture directory (tests/data/<name>): golden.safetensors with the inputs and the
// outputs of the original CEPE PyTorch code (see ../shared/fixtures/README.md and tests/reference/).
#include <cstdlib>
#include <string>
#include <vector>

#include "cepe/model.h"
#include "cepe/safetensors.h"

namespace cepe::testing {

struct Golden {
  std::string dir;
  SafeTensors st;
  int64_t batch = 0, len = 0;
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  std::vector<int64_t> positions;  // arange unless the fixture gives position_ids
  bool has_context = false;
  ContextChunks chunks;

  explicit Golden(const std::string& dir_);
  bool has(const std::string& name) const { return st.has(name); }
  std::vector<float> f32(const std::string& name) const;
  std::vector<int64_t> i64(const std::string& name) const;
  Shape shape(const std::string& name) const { return st.info(name).shape; }
};

inline std::string data_dir(const std::string& name) { return std::string(CEPE_TEST_DATA) + "/" + name; }

// Where scripts/fetch-llama-tokenizer.sh put the real LLaMA-2 tokenizer (CEPE_LLAMA_TOKENIZER_DIR overrides).
inline std::string llama_tokenizer_dir() {
  if (const char* env = std::getenv("CEPE_LLAMA_TOKENIZER_DIR"); env && *env) return env;
#ifdef CEPE_BUILD_DIR
  return std::string(CEPE_BUILD_DIR) + "/llama-tokenizer";
#else
  return "build/llama-tokenizer";
#endif
}

}  // namespace cepe::testing
