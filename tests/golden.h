#pragma once
// Reads a reference fixture directory (tests/data/<name>): golden.safetensors with the inputs and the
// outputs of the original CEPE PyTorch code (see ../shared/fixtures/README.md and tests/reference/).
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

}  // namespace cepe::testing
