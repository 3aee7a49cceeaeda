#pragma once
// Long-document perplexity by context length, the protocols of the CEPE paper's language-modelling tables
// (spec §4.1, the reference's eval_lm.py), on the same windows of the same documents:
//
//   cepe       the N tokens before the decoder part, in chunks of C, go to the encoder; the decoder reads its D
//              tokens; loss on the last E of them.
//   vanilla    all N + D tokens in the decoder (put_in_decoder); loss on the last E. Past the training window
//              this is RoPE extrapolation, which is what the paper's vanilla rows show.
//   streaming  StreamingLLM: the N + D tokens through the decoder in steps of S tokens, the KV cache cut back to
//              4 attention sinks + the most recent after every step, positions re-assigned inside the cache
//              (S = cache = D/2 by default: the reference's 2,048-token steps for LLaMA-2's 4,096 window).
//   replug     RePlug with uniform weights (the reference's non-retrieval configs): every C-token chunk of the
//              text before the last D - C tokens is put in front of those D - C tokens, one forward each, and
//              the next-token distributions are averaged; loss of the mixture on the last E tokens.
//
// A window is where the scored tokens end. Windows are placed for the longest context asked for, so every
// protocol and every context length scores exactly the same tokens: window ends at N_max + D, N_max + D + E, ...
// of each document long enough (stride E, as the reference), at most `max_windows` of them per source, spread
// evenly over all the candidates.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cepe/model.h"

namespace cepe::eval {

enum class Protocol { Cepe, Vanilla, Streaming, Replug };
const char* protocol_name(Protocol p);
// "cepe,vanilla,streaming,replug" -> protocols; an unknown name is an error listing the valid ones.
std::vector<Protocol> parse_protocols(const std::string& list);

struct PerplexityOptions {
  std::vector<Protocol> protocols{Protocol::Cepe};
  std::vector<int64_t> context_tokens{0};  // N values
  int64_t decoder_tokens = 256;            // D
  int64_t eval_window = 64;                // E (< D)
  int64_t chunk_len = 128;                 // C: encoder chunks, and RePlug's chunks
  int64_t max_windows = 16;                // per source
  int64_t place_for_context = 0;           // windows placed as if this were the longest context (when larger):
                                           // runs with different context lists then score the same tokens
  int64_t streaming_sinks = 4;
  int64_t streaming_cache = 0;             // 0: D / 2 (sinks included)
  int64_t streaming_step = 0;              // 0: the cache size
  int64_t replug_batch = 8;                // chunk forwards per decoder call
  DecodeOptions decode{};                  // cross-attention strategy
  EncodeOptions encode{};
};

// A set of documents scored together (one -f argument): a text file, a token file, or a folder of text files.
struct Source {
  std::string name;
  std::vector<std::vector<int32_t>> docs;  // token ids, BOS first
};

struct Window {
  int64_t doc = 0, end = 0;  // the scored tokens are docs[doc][end - E, end)
};

// The windows of `source` for the given options (the longest context decides where they can start).
std::vector<Window> place_windows(const Source& source, const PerplexityOptions& o);

struct PerplexityRow {
  std::string source;
  Protocol protocol = Protocol::Cepe;
  int64_t context_tokens = 0, decoder_tokens = 0, eval_window = 0;
  int64_t windows = 0, scored_tokens = 0;
  double mean_nll = 0;      // nats per scored token
  double ppl = 0;           // exp(mean_nll)
  double ppl_lo = 0, ppl_hi = 0;  // 95% interval of the mean over windows (t distribution), as perplexities
  double seconds = 0;       // wall time spent on this row
  std::vector<double> window_nll;  // mean NLL of each window, in window order
};

// Called after each unit of work: `done` out of `total` (window x protocol x context length).
using PerplexityProgress = std::function<void(int64_t done, int64_t total)>;

// Every (protocol, context length) row for one source, in the order protocols x context lengths. A protocol
// that needs what the model lacks (cepe without an encoder) is an error before any work.
std::vector<PerplexityRow> evaluate_perplexity(const CepeModel& model, const Source& source, const PerplexityOptions& o,
                                               const PerplexityProgress& progress = {});

// The scored tokens' negative log-likelihoods of one window under one protocol and context length (exposed for
// tests): E values, token by token.
std::vector<double> window_nll(const CepeModel& model, const std::vector<int32_t>& doc, int64_t end, Protocol p,
                               int64_t context_tokens, const PerplexityOptions& o);

// Mean and 95% confidence interval (Student t) of per-window values, as perplexities exp(.).
void summarize(PerplexityRow& row);

}  // namespace cepe::eval
