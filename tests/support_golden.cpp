#include "golden.h"

namespace cepe::testing {

std::vector<float> Golden::f32(const std::string& name) const {
  Tensor t = st.get(name).to(DType::F32);
  return std::vector<float>(t.f32(), t.f32() + t.numel());
}

std::vector<int64_t> Golden::i64(const std::string& name) const {
  Tensor t = st.get(name).to(DType::I64);
  return std::vector<int64_t>(t.data<int64_t>(), t.data<int64_t>() + t.numel());
}

Golden::Golden(const std::string& dir_) : dir(dir_), st(SafeTensors::open(dir_ + "/golden.safetensors")) {
  const Shape s = shape("input_ids");
  batch = s[0];
  len = s[1];
  for (int64_t v : i64("input_ids")) ids.push_back(static_cast<int32_t>(v));
  if (has("attention_mask")) {
    for (int64_t v : i64("attention_mask")) mask.push_back(static_cast<uint8_t>(v));
  } else {
    mask.assign(ids.size(), 1);
  }
  if (has("position_ids")) {
    positions = i64("position_ids");
  } else {
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < len; ++t) positions.push_back(t);
  }
  if (has("encoder_input_ids")) {
    has_context = true;
    const Shape e = shape("encoder_input_ids");
    chunks.batch = e[0];
    chunks.n_ctx = e[1];
    chunks.ctx_len = e[2];
    for (int64_t v : i64("encoder_input_ids")) chunks.ids.push_back(static_cast<int32_t>(v));
    for (int64_t v : i64("encoder_attention_mask")) chunks.mask.push_back(static_cast<uint8_t>(v));
  }
}

}  // namespace cepe::testing
