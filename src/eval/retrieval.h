#pragma once
// Retrieval tasks over long contexts: the passkey test (needle in a haystack; Mohtashami & Jaggi 2023, the
// template the CEPE and long-context literature use) and key-value facts (bsdgames' quiz: "The capital of X is
// Y."), built at the token level so that evaluation (`cepe passkey`) and the synthetic training data of the
// CEPE stage (`cepe data synth`) are the same texts.
//
// A case is: a context (encoder tokens, no BOS) of exactly the requested length — filler text with the needles
// inserted at sentence starts near the requested depths — and a question for the decoder whose greedy
// continuation must be the answer.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "cepe/model.h"
#include "cepe/tokenizer.h"

namespace cepe::eval {

inline constexpr const char* kPasskeyTask =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there.";
inline constexpr const char* kPasskeyQuestion = "What is the pass key? The pass key is";
std::string passkey_needle(const std::string& key);  // "The pass key is KEY. Remember it. KEY is the pass key."

// "The <relation> of <key> is <value>." facts, from "relation<TAB>key<TAB>value" lines (scripts/fetch-corpus.sh).
struct Fact {
  std::string relation, key, value;
  std::string statement() const;  // The capital of Burkina Faso is Ouagadougou.
  std::string question() const;    // What is the capital of Burkina Faso? The capital of Burkina Faso is
};
// Reads a facts file; one error naming the file and line for a malformed one, or for a file without facts.
std::vector<Fact> load_facts(const std::string& path);

// Deterministic random numbers for one case: SplitMix64 seeded from (seed, index), so case i is the same
// whatever else is generated (and on every platform: no std:: distributions).
class CaseRng {
 public:
  CaseRng(uint64_t seed, uint64_t index);
  uint64_t next();
  int64_t below(int64_t n);  // uniform in [0, n), n > 0
  double uniform();          // [0, 1)
  bool chance(double p) { return uniform() < p; }

 private:
  uint64_t state_;
};

// A random 5-digit pass key, 10000..99999.
std::string random_passkey(CaseRng& rng);
// A pass key for training data: half of them with a run of 2-3 equal digits (77759, 20733). Copying by "find the
// digit I just wrote, emit the one after it" gets exactly these wrong (20733 -> 2073, 77759 -> 7777777), so the
// retrieval data must hold many of them for the cross-attention to learn to copy by position instead.
std::string training_passkey(CaseRng& rng);

// Where a needle goes in `base` (the filler it is inserted into) for a depth in [0, 1]: the token index
// round(depth * base.size()), moved back to the start of a sentence or line (after a token that ends with '.',
// '!', '?' or a newline) when one is within 48 tokens, so that the needle reads as a sentence of its own.
int64_t needle_position(const Tokenizer& tok, std::span<const int32_t> base, double depth);

struct Needle {
  std::vector<int32_t> ids;  // the statement's tokens
  double depth = 0;          // requested depth in [0, 1]
};

// `filler` (at least `length` tokens) cut to `length` tokens with every needle inserted at its depth (needles
// in the order given; each placed in the filler that remains): exactly `length` tokens. `starts[i]` receives
// the token index of needle i in the result.
std::vector<int32_t> insert_needles(const Tokenizer& tok, std::span<const int32_t> filler, int64_t length,
                                    const std::vector<Needle>& needles, std::vector<int64_t>* starts = nullptr);

// One retrieval question: the decoder's prompt text (the question) and the expected answer text.
struct Question {
  std::string prompt;  // e.g. "What is the pass key? The pass key is"
  std::string answer;  // e.g. "71432" (the continuation, without its leading space and final period)
};

struct PasskeyCase {
  std::vector<int32_t> context;  // exactly the requested length
  Question question;
  int64_t needle_start = 0;      // token index of the needle in the context
};

// A passkey case of `length` context tokens: optionally the task description first, then filler with the
// needle at `depth`.
PasskeyCase make_passkey_case(const Tokenizer& tok, std::span<const int32_t> filler, int64_t length, double depth,
                              const std::string& key, bool with_task);

// The answer a greedy continuation gives: its text up to the first character that cannot continue the answer
// (the leading spaces skipped; digits for a pass key, else up to '.', '?', '!' or a newline), trimmed.
std::string extract_answer(const std::string& continuation, bool digits_only);

// One synthetic training document for the CEPE stage: `context_len` encoder tokens + `decoder_len` decoder tokens.
// The context is filler with a pass key (with probability `p_passkey`; keys from training_passkey, as are the
// labelled ones below) and 1..max_facts facts inserted at random
// depths (half the facts with a value swapped for another of the same relation, so that only the context can
// answer), and 0..max_numbers labelled pass keys ("The pass key of <a fact's key> is NNNNN.", so that a document
// copies several numbers out of its context: the plain pass key's answer is only 5 of its decoder tokens); the
// decoder part asks for them, in random order: it either starts with BOS and the first question
// (the way `cepe generate -p QUESTION` puts it) or continues the filler for a few tokens and then asks. What
// remains of the decoder part is filler text again. `filler` is any token stream (e.g. a training token file);
// the window used is drawn from it by `rng`.
struct SynthOptions {
  int64_t context_len = 2048, decoder_len = 256;
  double p_passkey = 0.7;
  int max_facts = 6;
  int max_numbers = 0;        // labelled pass keys (their labels are the facts' keys)
  double p_task = 0.5;        // the passkey task description at the start of the context
  double p_bos_first = 0.5;   // the decoder part starts with BOS + the first question
  double p_swap_value = 0.5;  // a fact's value replaced by another of its relation
};
std::vector<int32_t> make_synth_document(const Tokenizer& tok, std::span<const int32_t> filler,
                                         const std::vector<Fact>& facts, const SynthOptions& options, CaseRng& rng);

// Greedy answer of `model` to `question` (BOS + its tokens in the decoder) with `context` read by the encoder in
// chunks of `chunk_len` from its start (the last one padded by mask), as `cepe generate -c FILE -p QUESTION`
// does: the text of at most `max_new_tokens` new tokens (up to EOS).
std::string answer_from_context(const CepeModel& model, const Tokenizer& tok, std::span<const int32_t> context,
                                const std::string& question, int64_t chunk_len, int64_t max_new_tokens,
                                const DecodeOptions& decode = {});

struct PasskeyOptions {
  std::vector<int64_t> context_tokens{1024};
  std::vector<double> depths{0, 0.25, 0.5, 0.75, 1};
  int64_t trials = 4;           // per length and depth, each with its own key and filler window
  uint64_t seed = 0;
  bool with_task = false;       // the task description first in the context
  int64_t chunk_len = 128;
  int64_t max_new_tokens = 8;
  DecodeOptions decode{};
};

struct PasskeyResult {
  int64_t context_tokens = 0;
  double depth = 0;
  int64_t trial = 0;
  std::string key, answer, continuation;
  bool correct = false;
  double seconds = 0;
  int64_t needle_start = 0;      // token index of the needle in the context (where a chunk boundary cuts it)
  std::vector<int32_t> context;  // the case's context tokens (kept for --save-cases)
};

// Every (length, depth, trial) case, in that order. `filler` must hold more tokens than the longest context;
// each trial's filler is a window of it at a position drawn from (seed, case).
std::vector<PasskeyResult> evaluate_passkey(const CepeModel& model, const Tokenizer& tok, std::span<const int32_t> filler,
                                            const PasskeyOptions& o,
                                            const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace cepe::eval
