// cepe grad --model DIR --request REQ.json --output OUT.safetensors [--trainable SET] [-t N]
// The loss of one batch and the gradient of every trainable parameter, as PyTorch autograd through the
// reference computes them (docs/cli.md, docs/training.md): the tensor-level contract of the trainer.
#include <cmath>
#include <cstdio>
#include <map>

#include "args.h"
#include "cepe/model.h"
#include "cepe/safetensors.h"
#include "commands.h"
#include "kernels/cpu/gemm.h"
#include "model/gradients.h"
#include "request.h"

namespace cepe::cli {

namespace {

const char* kGradHelp =
    "usage: cepe grad --model DIR --request REQ.json --output OUT.safetensors [--trainable SET] [--recompute] [-t THREADS]\n"
    "  REQ.json: the forward request (input_ids [bsz][seq], optional attention_mask, position_ids,\n"
    "  encoder_input_ids / encoder_attention_mask [bsz][n_ctx][ctx_len]) plus labels [bsz][seq] (-100 =\n"
    "  not scored; causal models score logits[t] against labels[t+1], LlamaForMLM against labels[t]) and,\n"
    "  for the CEPED KL, distill_index [bsz][T][k], distill_prob [bsz][T][k+1], lm_loss_cof, kl_loss_cof,\n"
    "  kl_loss_mode (drop | smooth_<delta>; defaults from config.json).\n"
    "  --trainable: cross_attn | cross_attn,encoder | all (default; the only set without cross-attention).\n"
    "  OUT.safetensors: loss (F32 [1]) and the F32 gradient of each trainable parameter, under its name.\n";

}  // namespace

int cmd_grad(int argc, char** argv) {
  Args args(argc, argv, {{"--model", "-m"}, {"--request"}, {"--output", "-o"}, {"--trainable"}, {"--threads", "-t"}},
            {{"--help", "-h"}, {"--recompute"}});
  if (args.has("--help")) {
    std::fputs(kGradHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  kernels::set_num_threads(args.threads());
  const std::string out_path = args.required("--output");
  TrainableSet set = TrainableSet::All;
  const std::string set_name = args.str("--trainable", "all");
  if (!parse_trainable_set(set_name, &set))
    throw Error("--trainable: unknown set '" + set_name + "' (supported: " + trainable_set_names() + ")");
  GradRequest req = read_grad_request(args.required("--request"));
  auto model = CepeModel::load(args.required("--model"), LoadOptions{.owned_f32 = true});
  const CepeConfig& c = model->config();

  LossInput in;
  in.ids = req.forward.ids.data();
  in.batch = req.forward.batch;
  in.len = req.forward.len;
  in.mask = req.forward.mask.data();
  in.positions = req.forward.positions.empty() ? nullptr : req.forward.positions.data();
  in.context = req.forward.context ? &*req.forward.context : nullptr;
  in.labels = req.labels.data();
  in.recompute = args.has("--recompute");  // per-layer recomputation: the same gradients, less memory
  in.lm_loss_cof = req.lm_loss_cof.value_or(c.lm_loss_cof);
  Distillation distill;
  if (req.distill_len > 0) {
    distill.len = req.distill_len;
    distill.k = req.distill_k;
    distill.index = std::move(req.distill_index);
    distill.prob = std::move(req.distill_prob);
    const std::string mode = req.kl_loss_mode.value_or(c.kl_loss_mode);
    distill.mode = parse_kl_mode(mode, req.kl_loss_mode ? "request" : model->dir() + "/config.json", &distill.delta);
    in.distill = &distill;
    in.kl_loss_cof = req.kl_loss_cof.value_or(c.kl_loss_cof);
  }
  ModelWeights grads = make_gradients(*model, set);
  const LossValue loss = loss_and_gradients(*model, in, set, &grads);

  std::map<std::string, Tensor> out;
  Tensor l = Tensor::empty(DType::F32, {1});
  l.f32()[0] = static_cast<float>(loss.loss);
  out["loss"] = l;
  for (const TensorEntry& e : model_tensors(c, &grads))
    if (e.slot->defined()) {
      check_finite(*e.slot, "gradient of '" + e.name + "'");
      out[e.name] = *e.slot;
    }
  save_safetensors(out_path, out);
  std::fprintf(stderr, "loss %.6f (cross-entropy %.6f over %lld positions%s), %zu gradients -> %s\n", loss.loss,
               loss.ce, static_cast<long long>(loss.scored),
               in.distill ? (", KL " + std::to_string(loss.kl)).c_str() : "", out.size() - 1, out_path.c_str());
  return 0;
}

}  // namespace cepe::cli
