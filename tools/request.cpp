#include "request.h"

#include "core/json_file.h"

#include <limits>

namespace cepe::cli {

namespace {

std::vector<int32_t> to_ids(const std::vector<int64_t>& v, const std::string& field) {
  std::vector<int32_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] < 0 || v[i] > std::numeric_limits<int32_t>::max())
      throw Error(field + ": token id " + std::to_string(v[i]) + " at flat index " + std::to_string(i) + " is out of range");
    out[i] = static_cast<int32_t>(v[i]);
  }
  return out;
}

std::vector<uint8_t> to_mask(const std::vector<int64_t>& v, const std::string& field) {
  std::vector<uint8_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != 0 && v[i] != 1)
      throw Error(field + ": mask values must be 0 or 1, got " + std::to_string(v[i]) + " at flat index " + std::to_string(i));
    out[i] = static_cast<uint8_t>(v[i]);
  }
  return out;
}

}  // namespace

Request read_request(const std::string& path) {
  using Kind = JsonFieldSpec::Kind;
  // Streamed, not parsed into a DOM: a request can hold millions of ids.
  auto fields = read_json_fields(path, "request", {{"input_ids", Kind::Integers, 2},
                                                   {"attention_mask", Kind::Integers, 2},
                                                   {"position_ids", Kind::Integers, 2},
                                                   {"encoder_input_ids", Kind::Integers, 3},
                                                   {"encoder_attention_mask", Kind::Integers, 3}});
  auto has = [&](const char* k) { return fields.count(k) != 0; };
  if (!has("input_ids")) throw Error(path + ": missing required field 'input_ids'");

  Request r;
  const JsonField& in = fields["input_ids"];
  const std::vector<int64_t>& shape = in.shape;
  r.batch = shape[0];
  r.len = shape[1];
  r.ids = to_ids(in.ints, "input_ids");
  if (has("attention_mask")) {
    const JsonField& m = fields["attention_mask"];
    if (m.shape != shape)
      throw Error("attention_mask: shape " + shape_str(m.shape) + " does not match input_ids " + shape_str(shape));
    r.mask = to_mask(m.ints, "attention_mask");
  } else {
    r.mask.assign(r.ids.size(), 1);
  }
  if (has("position_ids")) {
    const JsonField& p = fields["position_ids"];
    if (p.shape != shape)
      throw Error("position_ids: shape " + shape_str(p.shape) + " does not match input_ids " + shape_str(shape));
    for (size_t i = 0; i < p.ints.size(); ++i)
      if (p.ints[i] < 0 || p.ints[i] > (int64_t{1} << 40))
        throw Error("position_ids: value " + std::to_string(p.ints[i]) + " at flat index " + std::to_string(i) +
                    " is out of range");
    r.positions = p.ints;
  }
  if (has("encoder_input_ids")) {
    const JsonField& e = fields["encoder_input_ids"];
    const std::vector<int64_t>& es = e.shape;
    if (es[0] != r.batch)
      throw Error("encoder_input_ids: batch " + std::to_string(es[0]) + " does not match input_ids batch " +
                  std::to_string(r.batch));
    ContextChunks c;
    c.batch = es[0];
    c.n_ctx = es[1];
    c.ctx_len = es[2];
    c.ids = to_ids(e.ints, "encoder_input_ids");
    if (has("encoder_attention_mask")) {
      const JsonField& m = fields["encoder_attention_mask"];
      if (m.shape != es)
        throw Error("encoder_attention_mask: shape " + shape_str(m.shape) + " does not match encoder_input_ids " +
                    shape_str(es));
      c.mask = to_mask(m.ints, "encoder_attention_mask");
    } else {
      c.mask.assign(c.ids.size(), 1);
    }
    r.context = std::move(c);
  } else if (has("encoder_attention_mask")) {
    throw Error("encoder_attention_mask given without encoder_input_ids");
  }
  return r;
}

}  // namespace cepe::cli
