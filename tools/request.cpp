#include "request.h"

#include "core/json_file.h"

#include <cmath>
#include <limits>
#include <map>

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

using Kind = JsonFieldSpec::Kind;
using Fields = std::map<std::string, JsonField>;

const std::vector<JsonFieldSpec> kForwardFields = {{"input_ids", Kind::Integers, 2},
                                                   {"attention_mask", Kind::Integers, 2},
                                                   {"position_ids", Kind::Integers, 2},
                                                   {"encoder_input_ids", Kind::Integers, 3},
                                                   {"encoder_attention_mask", Kind::Integers, 3}};

Request forward_request(const std::string& path, Fields& fields) {
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

double finite_scalar(const JsonField& f, const char* name) {
  if (!f.scalar.is_number() || !std::isfinite(f.scalar.get<double>()))
    throw Error(std::string(name) + ": must be a finite number, got " + json_excerpt(f.scalar));
  return f.scalar.get<double>();
}

}  // namespace

Request read_request(const std::string& path) {
  // Streamed, not parsed into a DOM: a request can hold millions of ids.
  Fields fields = read_json_fields(path, "request", kForwardFields);
  return forward_request(path, fields);
}

GradRequest read_grad_request(const std::string& path) {
  std::vector<JsonFieldSpec> specs = kForwardFields;
  specs.push_back({"labels", Kind::Integers, 2});
  specs.push_back({"distill_index", Kind::Integers, 3});
  specs.push_back({"distill_prob", Kind::Numbers, 3});
  specs.push_back({"lm_loss_cof", Kind::Scalar, 0});
  specs.push_back({"kl_loss_cof", Kind::Scalar, 0});
  specs.push_back({"kl_loss_mode", Kind::Scalar, 0});
  Fields fields = read_json_fields(path, "request", specs);
  auto has = [&](const char* k) { return fields.count(k) != 0; };
  GradRequest g;
  g.forward = forward_request(path, fields);
  const Shape seq_shape = {g.forward.batch, g.forward.len};
  if (!has("labels")) throw Error(path + ": missing required field 'labels' [bsz][seq] (-100 = not scored)");
  const JsonField& lab = fields["labels"];
  if (lab.shape != seq_shape)
    throw Error("labels: shape " + shape_str(lab.shape) + " does not match input_ids " + shape_str(seq_shape));
  for (size_t i = 0; i < lab.ints.size(); ++i)
    if (lab.ints[i] != -100 && (lab.ints[i] < 0 || lab.ints[i] > std::numeric_limits<int32_t>::max()))
      throw Error("labels: " + std::to_string(lab.ints[i]) + " at flat index " + std::to_string(i) +
                  " is neither -100 nor a token id");
  g.labels = lab.ints;

  if (has("distill_index") != has("distill_prob"))
    throw Error(std::string(has("distill_index") ? "distill_index given without distill_prob"
                                                 : "distill_prob given without distill_index") +
                ": the KL needs both");
  if (has("distill_index")) {
    const JsonField& ix = fields["distill_index"];
    const JsonField& pr = fields["distill_prob"];
    if (ix.shape[0] != g.forward.batch || ix.shape[1] > g.forward.len)
      throw Error("distill_index: shape " + shape_str(ix.shape) + " does not fit input_ids " + shape_str(seq_shape) +
                  " ([bsz][T][k] with T <= seq)");
    if (pr.shape != Shape{ix.shape[0], ix.shape[1], ix.shape[2] + 1})
      throw Error("distill_prob: shape " + shape_str(pr.shape) + " must be distill_index's with k+1 = " +
                  std::to_string(ix.shape[2] + 1) + " columns (the top k, then the rest), i.e. " +
                  shape_str({ix.shape[0], ix.shape[1], ix.shape[2] + 1}));
    g.distill_len = ix.shape[1];
    g.distill_k = ix.shape[2];
    g.distill_index = to_ids(ix.ints, "distill_index");
    g.distill_prob.resize(pr.numbers.size());
    for (size_t i = 0; i < pr.numbers.size(); ++i) {
      const double p = pr.numbers[i];
      if (!(p >= 0.0 && p <= 1.0))
        throw Error("distill_prob: " + std::to_string(p) + " at flat index " + std::to_string(i) +
                    " is not a probability in [0, 1]");
      g.distill_prob[i] = static_cast<float>(p);
    }
  }
  if (has("lm_loss_cof")) g.lm_loss_cof = finite_scalar(fields["lm_loss_cof"], "lm_loss_cof");
  if (has("kl_loss_cof")) g.kl_loss_cof = finite_scalar(fields["kl_loss_cof"], "kl_loss_cof");
  if (has("kl_loss_mode")) {
    const JsonField& m = fields["kl_loss_mode"];
    if (!m.scalar.is_string()) throw Error("kl_loss_mode: must be a string (drop or smooth_<delta>), got " + json_excerpt(m.scalar));
    g.kl_loss_mode = m.scalar.get<std::string>();
  }
  if (!has("distill_index") && (g.kl_loss_cof || g.kl_loss_mode))
    throw Error(std::string(g.kl_loss_cof ? "kl_loss_cof" : "kl_loss_mode") +
                " given without distill_index and distill_prob: there is no KL to weigh");
  return g;
}

}  // namespace cepe::cli
