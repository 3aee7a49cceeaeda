// cepe forward --model DIR --request REQ.json --output OUT.json [-t N]
// Logits [bsz][seq][vocab] for the request's tokens (positions 0..seq-1, as the reference's forward), and
// the encoder states the cross-attention reads [bsz][n_ctx][ctx_len][enc_hidden] when there is a context.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cepe/model.h"
#include "commands.h"
#include "core/atomic_file.h"
#include "kernels/cpu/gemm.h"
#include "request.h"

namespace cepe::cli {

namespace {

const char* kForwardHelp =
    "usage: cepe forward --model DIR --request REQ.json --output OUT.json [-t THREADS]\n"
    "  REQ.json: input_ids [bsz][seq]; optional attention_mask and position_ids [bsz][seq] (default\n"
    "  arange, as the reference's forward), encoder_input_ids and\n"
    "  encoder_attention_mask [bsz][n_ctx][ctx_len].\n"
    "  OUT.json: logits [bsz][seq][vocab]; encoder_hidden_states [bsz][n_ctx][ctx_len][hidden] with a context.\n";

nlohmann::json nested(const float* p, const std::vector<int64_t>& shape, size_t dim = 0) {
  nlohmann::json a = nlohmann::json::array();
  int64_t stride = 1;
  for (size_t i = dim + 1; i < shape.size(); ++i) stride *= shape[i];
  for (int64_t i = 0; i < shape[dim]; ++i) {
    if (dim + 1 == shape.size()) a.push_back(static_cast<double>(p[i]));
    else a.push_back(nested(p + i * stride, shape, dim + 1));
  }
  return a;
}

}  // namespace

int cmd_forward(int argc, char** argv) {
  Args args(argc, argv, {{"--model", "-m"}, {"--request"}, {"--output", "-o"}, {"--threads", "-t"}}, {{"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kForwardHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  kernels::set_num_threads(args.threads());
  const std::string out_path = args.required("--output");
  Request req = read_request(args.required("--request"));
  auto model = CepeModel::load(args.required("--model"));
  model->check_decoder_ids(req.ids.data(), static_cast<int64_t>(req.ids.size()), "input_ids");

  std::optional<EncodedContext> ctx;
  if (req.context) ctx = model->encode(*req.context, req.ids.data(), req.mask.data(), req.len);
  // The reference's forward uses positions arange(seq) whatever the mask (cumsum positions are a
  // generation-time convention).
  std::vector<int64_t> pos = req.positions;
  if (pos.empty()) {
    pos.resize(req.ids.size());
    for (int64_t b = 0; b < req.batch; ++b)
      for (int64_t t = 0; t < req.len; ++t) pos[static_cast<size_t>(b * req.len + t)] = t;
  }
  Tensor logits = model->decode(req.ids.data(), req.batch, req.len, pos.data(), req.mask.data(), nullptr,
                                ctx ? &*ctx : nullptr);

  nlohmann::json out;
  out["logits"] = nested(logits.f32(), logits.shape());
  if (ctx) {
    const Tensor& s = ctx->final_states();
    out["encoder_hidden_states"] = nested(s.f32(), {ctx->batch, ctx->n_ctx, ctx->ctx_len, s.dim(2)});
  }
  write_text_atomic(out_path, out.dump());
  return 0;
}

}  // namespace cepe::cli
