#pragma once
// Randomly initialised checkpoints (`cepe init`): every tensor the loader reads for a config, filled like
// Hugging Face's `_init_weights` (Linear and Embedding ~ N(0, initializer_range), the padding row of an
// embedding zero, biases 0, RMSNorm weights 1), streamed to `model.safetensors` with bounded memory.
//
// The values depend only on (seed, tensor name, element index): each tensor's stream key is derived from the
// seed and a hash of its name, each fixed block of kInitBlock values has its own key, and each pair of values
// within a block comes from a counter-based hash (splitmix64 of key + counter) through Box-Muller. Any thread
// count, and any split of the work, gives the same bytes.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cepe/config.h"
#include "cepe/tensor.h"

namespace cepe {

enum class InitFill { Normal, Ones, Zeros };

struct InitTensor {
  std::string name;
  Shape shape;
  InitFill fill = InitFill::Normal;
  int64_t zero_row = -1;  // an embedding's padding_idx row, set to 0 as nn.Embedding does (-1: none)
};

// The tensors CepeModel::load reads for `cfg`, with the reference's names and shapes (spec §1.9):
// decoder (model.*, cross_attn in the has_cross layers, lm_head unless tied), then the encoder (encoder.*)
// when the model has one and uses it.
std::vector<InitTensor> checkpoint_tensors(const CepeConfig& cfg);
int64_t parameter_count(const CepeConfig& cfg);

// The random streams (exposed for tests and benchmarks).
constexpr int64_t kInitBlock = int64_t{1} << 16;  // values per RNG block
uint64_t init_stream_key(uint64_t seed, const std::string& tensor_name);
// The Box-Muller step: two N(0, 1) values from 64 random bits (high 32: radius, low 32: angle); |z| < 6.7.
void init_normal_pair(uint64_t bits, float* z0, float* z1);
// Values [first, first + count) of the N(0, std^2) stream `key`, as f32.
void init_normal(uint64_t key, float std, int64_t first, int64_t count, float* out);
// Elements [first, first + count) of tensor `t` (row-major) in `dtype` (F32, BF16 or F16), parallel.
void init_fill(const InitTensor& t, uint64_t seed, float std, DType dtype, int64_t first, int64_t count, void* out);

struct InitOptions {
  DType dtype = DType::F32;        // F32, BF16 or F16
  uint64_t seed = 0;
  double initializer_range = 0.02;  // std of the normal fills
  size_t buffer_bytes = 64u << 20;  // bytes per generated piece (two are in memory: one generated, one written)
  bool overwrite = false;           // replace an existing config.json / model.safetensors in the directory
  // Bytes of model.safetensors written so far, and its total size (header included).
  std::function<void(uint64_t done, uint64_t total)> progress;
};

struct InitResult {
  int64_t tensors = 0;
  int64_t parameters = 0;
  uint64_t file_bytes = 0;  // model.safetensors
  double seconds = 0;
};

// Bytes model.safetensors will take (header included).
uint64_t checkpoint_file_bytes(const CepeConfig& cfg, DType dtype, const InitOptions& opt = {});

// Creates `dir` if needed and writes `dir/model.safetensors` (atomically, streamed) and then
// `dir/config.json` (cepe_config_to_json with torch_dtype and initializer_range set). Fails before writing
// anything when the disk does not have room for it, or when a checkpoint is there and !opt.overwrite.
InitResult write_random_checkpoint(const std::string& dir, const CepeConfig& cfg, const InitOptions& opt);

}  // namespace cepe
