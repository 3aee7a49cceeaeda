#pragma once
// `cepe train`: one JSON config (docs/training.md) runs one stage of the CEPE recipe — decoder or MLM
// pretraining, the warmup ("duplicate"), standard CEPE training or CEPED — on the model code inference runs.
// Checkpoints are Hugging Face directories (config.json + model.safetensors with the reference's names) plus
// the optimizer moments and the trainer state, written atomically; a resumed run continues exactly.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/plot.h"
#include "train/optimizer.h"
#include "train/samplers.h"

namespace cepe::train {

class Communicator;

enum class Stage { Decoder, Mlm, Warmup, Cepe, Ceped };
const char* stage_name(Stage s);

struct StreamSpec {
  std::string name, layout;
  std::vector<std::string> files;
  double weight = 0;
  int64_t prev_len = -1, window_len = -1, stride = -1;
  int64_t min_context_chunks = 0;
};

struct TrainConfig {
  Stage stage = Stage::Decoder;
  std::string output_dir;
  // The model to start from: a checkpoint, a config (random init), or a CEPE assembly (decoder + encoder).
  struct Model {
    std::string checkpoint;
    nlohmann::json config;  // a config.json object (random init)
    std::string init_from;  // with config: a checkpoint whose same-named tensors replace the random ones
    std::string decoder, encoder;
    nlohmann::json encoder_config;  // a random encoder for the assembly
    int64_t num_cross_attn_layers = 0;
    std::string encode_mode = "context_only";
    std::string init_mode;  // copy | zero | normal | none (default by stage: warmup copy, otherwise none)
    uint64_t seed = 0;
    double initializer_range = 0.02;
    std::string tokenizer;  // tokenizer.model copied into checkpoints (default: the starting model's)
  } model;
  std::string trainable;  // cross_attn | cross_attn,encoder | all (default by stage)
  struct Data {
    std::vector<StreamSpec> train, eval;
    int64_t seq_len = 0, n_ctx = 0, ctx_len = 0, loss_window = 0;
    double mlm_probability = 0.3;
    int32_t mask_id = -1;
    std::vector<int32_t> extra_special_ids;
    double mask_prob = 0, mask_seq_prob = 0;
    std::string teacher;  // ceped: the teacher targets (`cepe data teacher`)
  } data;
  int64_t batch_size = 1, grad_accum = 1, steps = 0;
  bool recompute = false;  // per-layer recomputation (LossInput::recompute): less activation memory, same gradients
  uint64_t seed = 0;
  AdamWConfig adam;
  double lr = 1e-4, max_grad_norm = 1.0;
  std::string schedule = "cosine";
  double warmup_ratio = 0;
  int64_t warmup_steps = -1;  // -1: from warmup_ratio
  double lm_loss_cof = 1.0, kl_loss_cof = 0.0;
  std::string kl_loss_mode = "drop";
  int64_t eval_every = 0, eval_batches = 4, eval_batch_size = 0;  // eval_batch_size 0: batch_size
  int64_t save_every = 0, keep_last = 2;
  int64_t log_every = 1;
  nlohmann::json raw;  // the config as given, stored in checkpoints (a resume must use the same)
};

// The sampler of the config's training (train = true) or held-out data, for `world` ranks of `batch` rows.
SamplerConfig make_sampler_config(const TrainConfig& c, bool train, int world, int rank, int64_t batch);

// Parses and validates (unknown keys, wrong types and out-of-range values are errors naming the key).
TrainConfig parse_train_config(const nlohmann::json& j, const std::string& origin);
TrainConfig load_train_config(const std::string& path);

struct TrainOptions {
  bool resume = false;          // continue from the latest complete checkpoint in output_dir
  std::string plot;             // PNG of the train and eval loss curves, rewritten at every eval and at the end
  int64_t stop_after = 0;       // > 0: stop (with a checkpoint) after this many steps of this run (tests)
  bool quiet = false;           // no progress output (tests)
};

struct StepRecord {
  int64_t step = 0;  // 1-based optimizer step
  double loss = 0, ce = 0, kl = 0, lr = 0, grad_norm = 0;
};
struct EvalRecord {
  int64_t step = 0;
  double loss = 0;
  std::optional<double> loss_no_context;  // CEPE stages: the same windows without the encoder
  int64_t tokens = 0;
};
struct TrainResult {
  std::vector<StepRecord> steps;  // this run's
  std::vector<EvalRecord> evals;
  int64_t final_step = 0;
  std::string last_checkpoint;
  bool interrupted = false;
};

// A checkpoint's trainer_state.json: the step, the config the run used, and the loss history (for plots).
struct TrainerState {
  int64_t step = 0;
  nlohmann::json config;
  std::vector<std::pair<int64_t, double>> train;
  std::vector<EvalRecord> evals;
};
TrainerState parse_trainer_state(const nlohmann::json& j, const std::string& origin);

// The loss curves `cepe train --plot` draws: titled by the run (output_dir's last part) and its stage; the train
// loss per step with its trailing mean over a twentieth of the steps (when that is >= 5), the held-out evals
// (and, for CEPE stages, without context); the legend above the chart.
plot::Figure loss_figure(const TrainConfig& cfg, const std::vector<std::pair<int64_t, double>>& train,
                         const std::vector<EvalRecord>& evals);

// Runs the stage; `comm` (null: one process) shards the batches and sums the gradients across ranks.
TrainResult run_training(const TrainConfig& cfg, const TrainOptions& opt, Communicator* comm = nullptr);

}  // namespace cepe::train
