#pragma once
// CEPED teacher targets (spec §3.6, data/calculate_logits.py): a plain decoder reads each training sample with
// its context inside its own window — the encoder's n_ctx·ctx_len context tokens, then the decoder's seq_len
// tokens — and keeps, for each of the last seq_len positions, the top-k probabilities of its next-token
// distribution plus the rest (fp16) and their token ids (int32). Student position j and teacher position
// n_ctx·ctx_len + j predict the same token.
//
// File (safetensors): `index` I32 [samples, seq_len, k], `prob` F16 [samples, seq_len, k+1]; metadata format
// "cepe.teacher", k, seq_len, samples, the teacher's directory, and `samples_of`: the training config's data
// section and seed, which fix what global sample i is (samplers.h) — row i holds sample i's targets.
#include <cstdint>
#include <string>

#include "cepe/safetensors.h"
#include "train/trainer.h"

namespace cepe::train {

struct TeacherOptions {
  std::string teacher;   // a causal LM checkpoint dir (LlamaForCausalLM, or a CEPE model run without context)
  std::string output;
  int64_t samples = 0;   // global samples 0 .. samples-1 of the config's training data
  int64_t top_k = 50;
  int64_t batch = 4;     // samples per forward
  bool quiet = false;
};

// Runs the teacher over the samples of `cfg`'s training data and writes the targets (atomically).
void write_teacher_targets(const TrainConfig& cfg, const TeacherOptions& opt);

// What identifies the samples of a config: its data section (without the teacher) and its seed.
std::string samples_identity(const TrainConfig& cfg);

class TeacherTargets {
 public:
  // Validates the file in full (format, shapes, ids in [0, vocab), probabilities in [0, 1]) and that it was
  // made for `cfg`'s samples.
  static TeacherTargets open(const std::string& path, const TrainConfig& cfg, int64_t vocab);
  int64_t samples() const { return samples_; }
  int64_t len() const { return len_; }
  int64_t k() const { return k_; }
  // Sample `i`'s targets: index [len, k], prob [len, k+1] (widened to f32).
  void fill(int64_t i, int32_t* index, float* prob) const;

 private:
  SafeTensors st_;
  Tensor index_, prob_;
  int64_t samples_ = 0, len_ = 0, k_ = 0;
};

}  // namespace cepe::train
