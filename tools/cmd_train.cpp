// cepe train --config FILE [--resume] [--plot OUT.png] [-t N]
// One stage of the CEPE recipe from a JSON config (docs/training.md); `mpirun -np N cepe train ...` runs it
// data-parallel (rank 0 writes the checkpoints and the log).
#include <cstdio>

#include "args.h"
#include "commands.h"
#include "kernels/cpu/gemm.h"
#include "train/comm.h"
#include "train/trainer.h"

namespace cepe::cli {

namespace {

const char* kTrainHelp =
    "usage: cepe train --config FILE [--resume] [--plot OUT.png] [--stop-after N] [-t THREADS] [-q]\n"
    "  FILE: a JSON training config (docs/training.md): stage (decoder | mlm | warmup | cepe | ceped),\n"
    "  output_dir, model, data, batch_size, grad_accum, steps, optimizer, schedule, loss, eval, checkpoint.\n"
    "  --resume   continue from the latest checkpoint in output_dir (same config), exactly\n"
    "  --plot     write a PNG of the train and held-out loss curves (at every eval and at the end)\n"
    "  --stop-after N   save a checkpoint and stop after N steps of this run (resume later with --resume)\n"
    "  Ctrl-C / SIGTERM finish the current step and save a checkpoint; a second one stops at once.\n"
    "  Data parallel: mpirun -np N cepe train --config FILE (as root add --allow-run-as-root).\n";

}  // namespace

int cmd_train(int argc, char** argv) {
  Args args(argc, argv, {{"--config", "-c"}, {"--plot"}, {"--threads", "-t"}, {"--stop-after"}},
            {{"--help", "-h"}, {"--resume"}, {"--quiet", "-q"}});
  if (args.has("--help")) {
    std::fputs(kTrainHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  kernels::set_num_threads(args.threads());
  const train::TrainConfig cfg = train::load_train_config(args.required("--config"));
  train::TrainOptions opt;
  opt.resume = args.has("--resume");
  opt.plot = args.str("--plot");
  opt.quiet = args.has("--quiet");
  opt.stop_after = args.integer("--stop-after", 0, 0, int64_t{1} << 40);
  auto comm = train::make_communicator();
  const train::TrainResult r = train::run_training(cfg, opt, comm.get());
  if (comm->rank() == 0) {
    const train::StepRecord* last = r.steps.empty() ? nullptr : &r.steps.back();
    std::fprintf(stderr, "%s at step %lld of %lld%s%s%s\n", r.interrupted ? "stopped" : "done",
                 static_cast<long long>(r.final_step), static_cast<long long>(cfg.steps),
                 last ? (", loss " + std::to_string(last->loss)).c_str() : "",
                 r.evals.empty() ? "" : (", held-out " + std::to_string(r.evals.back().loss)).c_str(),
                 r.last_checkpoint.empty() ? "" : (", checkpoint " + r.last_checkpoint).c_str());
  }
  return r.interrupted ? 1 : 0;
}

}  // namespace cepe::cli
