#include "request.h"

#include "core/json_file.h"

#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

namespace cepe::cli {

namespace {

using json = nlohmann::json;

// Flattens a rectangular nested array of integers of the given rank; returns its shape.
std::vector<int64_t> flatten(const json& j, int rank, const std::string& field, std::vector<int64_t>* out) {
  std::vector<int64_t> shape;
  const json* cur = &j;
  for (int r = 0; r < rank; ++r) {
    if (!cur->is_array()) throw Error(field + ": expected a " + std::to_string(rank) + "-dimensional array");
    shape.push_back(static_cast<int64_t>(cur->size()));
    if (cur->empty()) break;
    cur = &(*cur)[0];
  }
  for (int64_t d : shape)
    if (d == 0) throw Error(field + ": empty dimension in shape " + shape_str(shape));
  std::vector<size_t> idx;
  std::function<void(const json&, int, std::string)> walk = [&](const json& node, int depth, std::string where) {
    if (depth == rank) {
      if (!node.is_number_integer()) throw Error(field + where + ": expected an integer, got " + node.dump());
      out->push_back(node.get<int64_t>());
      return;
    }
    if (!node.is_array()) throw Error(field + where + ": expected an array, got " + node.dump().substr(0, 40));
    if (static_cast<int64_t>(node.size()) != shape[static_cast<size_t>(depth)])
      throw Error(field + where + ": ragged array (length " + std::to_string(node.size()) + ", expected " +
                  std::to_string(shape[static_cast<size_t>(depth)]) + ")");
    for (size_t i = 0; i < node.size(); ++i) walk(node[i], depth + 1, where + "[" + std::to_string(i) + "]");
  };
  walk(j, 0, "");
  return shape;
}

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
  const json j = read_json_file(path, "request file");
  if (!j.is_object()) throw Error(path + ": request must be a JSON object");
  static const std::vector<std::string> known = {"input_ids", "attention_mask", "encoder_input_ids",
                                                 "encoder_attention_mask", "position_ids"};
  for (const auto& [k, _] : j.items())
    if (std::find(known.begin(), known.end(), k) == known.end())
      throw Error(path + ": unknown field '" + k + "' (expected input_ids, attention_mask, position_ids, encoder_input_ids, encoder_attention_mask)");
  if (!j.contains("input_ids")) throw Error(path + ": missing required field 'input_ids'");

  Request r;
  std::vector<int64_t> flat;
  auto shape = flatten(j["input_ids"], 2, "input_ids", &flat);
  r.batch = shape[0];
  r.len = shape[1];
  r.ids = to_ids(flat, "input_ids");
  if (j.contains("attention_mask")) {
    flat.clear();
    auto ms = flatten(j["attention_mask"], 2, "attention_mask", &flat);
    if (ms != shape)
      throw Error("attention_mask: shape " + shape_str(ms) + " does not match input_ids " + shape_str(shape));
    r.mask = to_mask(flat, "attention_mask");
  } else {
    r.mask.assign(r.ids.size(), 1);
  }
  if (j.contains("position_ids")) {
    flat.clear();
    auto ps = flatten(j["position_ids"], 2, "position_ids", &flat);
    if (ps != shape) throw Error("position_ids: shape " + shape_str(ps) + " does not match input_ids " + shape_str(shape));
    for (size_t i = 0; i < flat.size(); ++i)
      if (flat[i] < 0 || flat[i] > (int64_t{1} << 40))
        throw Error("position_ids: value " + std::to_string(flat[i]) + " at flat index " + std::to_string(i) + " is out of range");
    r.positions = flat;
  }
  if (j.contains("encoder_input_ids")) {
    flat.clear();
    auto es = flatten(j["encoder_input_ids"], 3, "encoder_input_ids", &flat);
    if (es[0] != r.batch)
      throw Error("encoder_input_ids: batch " + std::to_string(es[0]) + " does not match input_ids batch " +
                  std::to_string(r.batch));
    ContextChunks c;
    c.batch = es[0];
    c.n_ctx = es[1];
    c.ctx_len = es[2];
    c.ids = to_ids(flat, "encoder_input_ids");
    if (j.contains("encoder_attention_mask")) {
      flat.clear();
      auto ems = flatten(j["encoder_attention_mask"], 3, "encoder_attention_mask", &flat);
      if (ems != es)
        throw Error("encoder_attention_mask: shape " + shape_str(ems) + " does not match encoder_input_ids " + shape_str(es));
      c.mask = to_mask(flat, "encoder_attention_mask");
    } else {
      c.mask.assign(c.ids.size(), 1);
    }
    r.context = std::move(c);
  } else if (j.contains("encoder_attention_mask")) {
    throw Error("encoder_attention_mask given without encoder_input_ids");
  }
  return r;
}

}  // namespace cepe::cli
