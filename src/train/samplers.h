#pragma once
// Training samples in the reference's layouts (spec §3, data.py / data/sample_mds_*.py / train_mlm.py), drawn from
// token files: seeded, deterministic, random-access and rank-shardable.
//
// Windows. Every stream cuts its token files into windows of `window_len` tokens taken every `stride` tokens, from
//   - the concatenated stream of each file's documents (layouts decoder, mlm, concat, duplicate; a window never
//     crosses from one file into the next, as the reference cuts each tokenized file on its own), or
//   - inside each document of at least window_len tokens (layout filtered, the reference's ab_{L}).
// Window j of a segment of n tokens starts at j·stride, for j = 0 .. (n − window_len) / stride. The first
// `prev_len` tokens of a window are its context part (the reference's prev_token_ids), the rest its decoder part
// (token_ids). A sample takes
//   decoder input  = window[prev_len, prev_len + seq_len)                    (token_ids[:chunk_size])
//   encoder chunks = window[prev_len − n_ctx·ctx_len, prev_len) as [n_ctx, ctx_len]   (prev_token_ids[-total:])
//                    or, for duplicate, decoder_input[0, n_ctx·ctx_len)    (load_strategy=duplicate)
//   labels         = decoder input (the model shifts), −100 before the last `loss_window` tokens when set
// Defaults reproduce the reference's slicing: prev_len = n_ctx·ctx_len for filtered/concat and 0 otherwise,
// window_len = prev_len + seq_len, stride = window_len − prev_len (the reference's stride of one decoder part).
//
// Layouts:
//   decoder    windows of seq_len tokens, labels = inputs (decoder pretraining)
//   mlm        windows of seq_len tokens with train_mlm.py's MLMDataCollator: each token that is not special (BOS,
//              EOS, UNK, [MASK], `extra_special_ids` such as a pad id) is selected with probability
//              mlm_probability; selected tokens are always replaced by [MASK] (no 80/10/10); labels = the original
//              id at selected positions, −100 elsewhere
//   filtered   the reference's ab_{L}: documents of ≥ window_len tokens only
//   concat     rp_concat: the same slicing over each file's concatenated documents
//   duplicate  warmup: encoder = the decoder's own first n_ctx·ctx_len tokens
// Streams mix with weights (the standard stage: filtered and concat ≈ 2:1, the reference's default of stream
// sizes). Context masking (data.py mask_prob / mask_seq_prob; train mode only): per chunk u ~ U(0, 1):
// u < mask_prob·mask_seq_prob → the whole chunk's encoder_attention_mask is 0; else u < mask_prob → the mask of its
// last n ~ U{1 .. ctx_len − 1} tokens is 0 (numpy randint(1, ctx_len)). The ids are left as they are: "masked" is
// the attention mask. Per stream, min_context_chunks (train mode only) masks all but a random number of the chunks
// nearest the decoder, before the context masking above.
//
// The contract (what a checkpoint and data parallelism rely on):
//   - A sample is a pure function of (config, global sample index i): which stream, which window, the MLM
//     selection and the context masks all come from counter-based hashes of (seed, i), never from a running state.
//     So sample i is the same whether the run started at 0 or resumed at i, and the position to store in a
//     checkpoint is just the next global batch index (or sample index).
//   - Train mode (shuffle = true) is epoch-less: indices run forever. Stream s's k-th sample is window
//     perm_{s,e}(k mod N_s) of epoch e = k / N_s (a seeded bijection of the N_s windows, new each epoch). The mixture
//     assigns global indices to streams in blocks of M = Σ n_s slots (n_s ∝ weight_s, integers), each block's slots
//     in a seeded order: every block holds exactly n_s samples of stream s.
//   - Eval mode (shuffle = false): the streams' windows in order (stream, file, document, offset), each exactly
//     once, capped at max_samples; no context masking; batch() past the end holds fewer rows (possibly none).
//   - Rank sharding: with world_size W and per-rank batch B, global batch g holds samples [g·W·B, (g+1)·W·B), and
//     rank r gets rows r·B .. r·B + B − 1 of it: samples g·W·B + r·B + j. So W ranks of batch B see exactly what one
//     process with batch W·B sees, row for row, and data parallelism reproduces it.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "train/token_file.h"

namespace cepe {

enum class Layout { Decoder, Mlm, Filtered, Concat, Duplicate };
const char* layout_name(Layout layout);              // "decoder", "mlm", "filtered", "concat", "duplicate"
Layout parse_layout(const std::string& name);        // throws for an unknown name, listing the known ones
bool layout_has_encoder(Layout layout);              // filtered, concat, duplicate

struct StreamConfig {
  std::string name;                                  // for messages and logs (default: the layout's name)
  Layout layout = Layout::Concat;
  std::vector<std::shared_ptr<const TokenFile>> files;
  double weight = 0;                                 // mixture weight; all 0 = proportional to window counts
  int64_t prev_len = -1, window_len = -1, stride = -1;  // -1: the defaults above
  // Train mode, > 0: each sample keeps only its k encoder chunks nearest the decoder (the others' attention mask is
  // 0), k = min(n_ctx, floor(m·((n_ctx + 1)/m)^u)), u ~ U(0, 1): log-uniform over [m, n_ctx], so that every
  // doubling of the context an evaluation scores at (256, 512, ... tokens) gets about an equal share of training.
  // A model trained at one n_ctx only is worse with one or two chunks of context than with none.
  int64_t min_context_chunks = 0;
};

struct ContextMasking {
  double mask_prob = 0;                              // probability that a chunk is masked at all
  double mask_seq_prob = 0;                          // given that, the probability that the whole chunk is
};

struct SamplerConfig {
  std::vector<StreamConfig> streams;
  int64_t seq_len = 0;                               // T: decoder (or MLM) tokens per sample
  int64_t n_ctx = 0, ctx_len = 0;                    // encoder chunks, for the layouts with an encoder
  uint64_t seed = 0;
  bool shuffle = true;                               // false: eval mode (a fixed, ordered list of windows)
  int64_t max_samples = 0;                           // eval mode: at most this many samples (0 = all)
  int64_t loss_window = 0;                           // > 0: labels only on the last loss_window decoder tokens
  double mlm_probability = 0.3;
  int32_t mask_id = -1;                              // [MASK]; -1 = the token files' vocab_size (the reference's 32000)
  std::vector<int32_t> extra_special_ids;            // never selected for MLM either (e.g. a pad id)
  ContextMasking context_masking;
  int world_size = 1, rank = 0;
  int64_t batch_size = 1;                            // B: rows per rank per batch
};

// Flat row-major arrays. Encoder arrays are empty for decoder/mlm.
struct Batch {
  int64_t rows = 0, seq_len = 0, n_ctx = 0, ctx_len = 0;
  std::vector<int32_t> input_ids, labels;            // [rows, seq_len]; labels −100 = ignored
  std::vector<uint8_t> attention_mask;               // [rows, seq_len]
  std::vector<int32_t> encoder_input_ids;            // [rows, n_ctx, ctx_len]
  std::vector<uint8_t> encoder_attention_mask;       // [rows, n_ctx, ctx_len]
  std::vector<int64_t> sample_index;                 // [rows]: global sample index of each row
  std::vector<int32_t> stream;                       // [rows]: which stream it came from
  bool has_encoder() const { return n_ctx > 0; }
};

// Where a sample comes from (for tests, logs and aligning teacher outputs with samples).
struct SampleSource {
  int stream = 0;
  int64_t stream_index = 0;                          // k: the stream's own sample counter
  int64_t epoch = 0;                                 // of that stream (always 0 in eval mode)
  int64_t window = 0;                                // window number within the stream, in order
  int file = 0;                                      // index into the stream's files
  int64_t token_offset = 0;                          // first token of the window in that file
};

class Sampler {
 public:
  // Validates everything (shapes against every stream's window, tokenizers equal across files, probabilities,
  // rank < world size, streams with windows); errors name the stream and the option.
  explicit Sampler(SamplerConfig config);

  const SamplerConfig& config() const { return cfg_; }
  bool has_encoder() const;
  int num_streams() const { return static_cast<int>(streams_.size()); }
  int64_t stream_windows(int s) const;               // N_s
  // Eval mode: the number of samples; train mode: Σ N_s (one pass over every window, for reporting).
  int64_t size() const;
  // Eval mode: global batches to cover size() samples (the last one may be partial); train mode: INT64_MAX.
  int64_t num_batches() const;
  // The mixture's slots per block for each stream (n_s; train mode).
  const std::vector<int64_t>& block_slots() const { return slots_; }

  SampleSource locate(int64_t global_index) const;
  // Samples first .. first + count − 1, as rows (indices past the end in eval mode are left out).
  Batch samples(int64_t first, int64_t count) const;
  // This rank's rows of global batch g: samples g·W·B + r·B + j, j < B.
  Batch batch(int64_t global_batch) const;

 private:
  struct Segment {
    int file = 0;
    int64_t start = 0;       // first token in the file
    int64_t first_window = 0;  // windows before this segment in the stream
  };
  struct Stream {
    StreamConfig cfg;
    int64_t prev_len = 0, window_len = 0, stride = 0;
    std::vector<Segment> segments;
    int64_t windows = 0;
  };
  void fill_row(Batch& b, int64_t row, int64_t global_index) const;

  SamplerConfig cfg_;
  std::vector<Stream> streams_;
  std::vector<int64_t> slots_, slot_prefix_;  // mixture blocks
  int64_t block_ = 1;
  int32_t mask_id_ = -1;
  std::vector<int32_t> specials_;  // sorted
};

// A seeded bijection of [0, n) computed per element (a Feistel network with cycle walking): O(1) memory and
// random access, so a shuffled epoch of any size needs no table.
class IndexPermutation {
 public:
  IndexPermutation(uint64_t n, uint64_t key);
  uint64_t operator()(uint64_t i) const;
  uint64_t size() const { return n_; }

 private:
  uint64_t n_, key_;
  int half_bits_;
};

}  // namespace cepe
