#include "eval/retrieval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <numeric>
#include <string_view>

#include "cepe/error.h"
#include "cepe/generate.h"

namespace cepe::eval {

std::string passkey_needle(const std::string& key) {
  return "The pass key is " + key + ". Remember it. " + key + " is the pass key.";
}

std::string Fact::statement() const { return "The " + relation + " of " + key + " is " + value + "."; }

std::string Fact::question() const {
  return "What is the " + relation + " of " + key + "? The " + relation + " of " + key + " is";
}

std::vector<Fact> load_facts(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open the facts file");
  std::vector<Fact> facts;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const size_t a = line.find('\t'), b = a == std::string::npos ? a : line.find('\t', a + 1);
    if (b == std::string::npos || line.find('\t', b + 1) != std::string::npos || a == 0 || b == a + 1 ||
        b + 1 == line.size())
      throw Error(path + ":" + std::to_string(n) + ": expected \"relation<TAB>key<TAB>value\"");
    facts.push_back({line.substr(0, a), line.substr(a + 1, b - a - 1), line.substr(b + 1)});
  }
  if (facts.empty()) throw Error(path + ": no facts");
  return facts;
}

CaseRng::CaseRng(uint64_t seed, uint64_t index) : state_(seed * 0x9E3779B97F4A7C15ull ^ (index + 0x632BE59BD9B4E019ull)) {
  next();
  state_ ^= index * 0xD1B54A32D192ED03ull;
}

uint64_t CaseRng::next() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int64_t CaseRng::below(int64_t n) {
  check(n > 0, "CaseRng::below: empty range");
  return static_cast<int64_t>(next() % static_cast<uint64_t>(n));
}

double CaseRng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

std::string random_passkey(CaseRng& rng) { return std::to_string(10000 + rng.below(90000)); }

std::string training_passkey(CaseRng& rng) {
  std::string key = random_passkey(rng);
  if (rng.chance(0.5)) {
    const int64_t at = 1 + rng.below(4);                              // digits at.. repeat digit at - 1
    const int64_t run = 1 + rng.below(std::min<int64_t>(2, 5 - at));  // 1 or 2 of them
    for (int64_t i = at; i < at + run; ++i) key[static_cast<size_t>(i)] = key[static_cast<size_t>(at - 1)];
  }
  return key;
}

namespace {

bool ends_sentence(const Tokenizer& tok, int32_t id) {
  const std::string p = tok.piece(id);
  if (p.empty()) return true;  // BOS/EOS: a document boundary
  const char c = p.back();
  return c == '.' || c == '!' || c == '?' || c == '\n';
}

std::vector<int32_t> encode_text(const Tokenizer& tok, const std::string& s) { return tok.encode(s, false); }

void append(std::vector<int32_t>& dst, std::span<const int32_t> src) { dst.insert(dst.end(), src.begin(), src.end()); }

}  // namespace

int64_t needle_position(const Tokenizer& tok, std::span<const int32_t> base, double depth) {
  const int64_t n = static_cast<int64_t>(base.size());
  const int64_t pos = std::clamp<int64_t>(std::llround(std::clamp(depth, 0.0, 1.0) * static_cast<double>(n)), 0, n);
  for (int64_t p = pos; p >= std::max<int64_t>(0, pos - 48); --p)
    if (p == 0 || ends_sentence(tok, base[p - 1])) return p;
  return pos;
}

std::vector<int32_t> insert_needles(const Tokenizer& tok, std::span<const int32_t> filler, int64_t length,
                                    const std::vector<Needle>& needles, std::vector<int64_t>* starts) {
  int64_t needle_tokens = 0;
  for (const Needle& n : needles) needle_tokens += static_cast<int64_t>(n.ids.size());
  check(needle_tokens <= length, [&] {
    return "a context of " + std::to_string(length) + " tokens cannot hold needles of " + std::to_string(needle_tokens);
  });
  const int64_t base_len = length - needle_tokens;
  check(static_cast<int64_t>(filler.size()) >= base_len, [&] {
    return "filler of " + std::to_string(filler.size()) + " tokens is shorter than the " + std::to_string(base_len) +
           " a context needs";
  });
  const std::span<const int32_t> base = filler.first(static_cast<size_t>(base_len));
  std::vector<int64_t> at(needles.size());
  for (size_t i = 0; i < needles.size(); ++i) at[i] = needle_position(tok, base, needles[i].depth);
  std::vector<size_t> order(needles.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return at[a] < at[b]; });
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(length));
  if (starts) starts->assign(needles.size(), 0);
  int64_t done = 0;
  for (size_t i : order) {
    append(out, base.subspan(static_cast<size_t>(done), static_cast<size_t>(at[i] - done)));
    done = at[i];
    if (starts) (*starts)[i] = static_cast<int64_t>(out.size());
    append(out, needles[i].ids);
  }
  append(out, base.subspan(static_cast<size_t>(done)));
  return out;
}

PasskeyCase make_passkey_case(const Tokenizer& tok, std::span<const int32_t> filler, int64_t length, double depth,
                              const std::string& key, bool with_task) {
  PasskeyCase c;
  if (with_task) c.context = encode_text(tok, std::string(kPasskeyTask) + "\n");
  const int64_t rest = length - static_cast<int64_t>(c.context.size());
  check(rest > 0, "a passkey context must be longer than the task description");
  std::vector<int64_t> starts;
  const std::vector<int32_t> body =
      insert_needles(tok, filler, rest, {Needle{encode_text(tok, passkey_needle(key)), depth}}, &starts);
  c.needle_start = static_cast<int64_t>(c.context.size()) + starts[0];
  append(c.context, body);
  c.question = {kPasskeyQuestion, key};
  return c;
}

std::string extract_answer(const std::string& continuation, bool digits_only) {
  size_t i = 0;
  while (i < continuation.size() && (continuation[i] == ' ' || continuation[i] == '\t')) ++i;
  size_t j = i;
  if (digits_only) {
    while (j < continuation.size() && continuation[j] >= '0' && continuation[j] <= '9') ++j;
  } else {
    while (j < continuation.size() && std::string_view(".?!\n").find(continuation[j]) == std::string_view::npos) ++j;
  }
  std::string a = continuation.substr(i, j - i);
  while (!a.empty() && (a.back() == ' ' || a.back() == '\t')) a.pop_back();
  return a;
}

std::vector<int32_t> make_synth_document(const Tokenizer& tok, std::span<const int32_t> filler,
                                         const std::vector<Fact>& facts, const SynthOptions& o, CaseRng& rng) {
  const int64_t spare = o.decoder_len;  // filler the decoder part may continue with
  const int64_t need = o.context_len + o.decoder_len + spare;
  check(static_cast<int64_t>(filler.size()) >= need, [&] {
    return "filler of " + std::to_string(filler.size()) + " tokens is shorter than one document (" +
           std::to_string(need) + ")";
  });
  const std::span<const int32_t> w = filler.subspan(static_cast<size_t>(rng.below(static_cast<int64_t>(filler.size()) - need + 1)),
                                                    static_cast<size_t>(need));

  // The needles and, in the same order, the question-and-answer texts that ask for them.
  std::vector<Needle> needles;
  std::vector<std::string> asked;
  const bool passkey = rng.chance(o.p_passkey);
  if (passkey) {
    const std::string key = training_passkey(rng);
    needles.push_back({encode_text(tok, passkey_needle(key)), rng.uniform()});
    asked.push_back(std::string(kPasskeyQuestion) + " " + key + ".");
  }
  // Each (relation, key) is asked about once; a statement goes into the context and its question into `asked`.
  std::vector<std::string> keys_used;
  auto first_use = [&](const Fact& f) {
    const std::string id = f.relation + "\t" + f.key;
    if (std::find(keys_used.begin(), keys_used.end(), id) != keys_used.end()) return false;
    keys_used.push_back(id);
    return true;
  };
  auto hide = [&](const Fact& f) {
    needles.push_back({encode_text(tok, f.statement()), rng.uniform()});
    asked.push_back(f.question() + " " + f.value + ".");
  };
  auto any_fact = [&]() -> const Fact& { return facts[static_cast<size_t>(rng.below(static_cast<int64_t>(facts.size())))]; };
  const int n_facts = facts.empty() || o.max_facts <= 0 ? 0 : 1 + static_cast<int>(rng.below(o.max_facts));
  for (int f = 0; f < n_facts; ++f) {
    Fact fact = any_fact();
    if (!first_use(fact)) continue;
    if (rng.chance(o.p_swap_value)) {
      for (int tries = 0; tries < 32; ++tries) {
        const Fact& other = any_fact();
        if (other.relation == fact.relation && other.value != fact.value) {
          fact.value = other.value;
          break;
        }
      }
    }
    hide(fact);
  }
  const int n_numbers = facts.empty() || o.max_numbers <= 0 ? 0 : static_cast<int>(rng.below(o.max_numbers + 1));
  for (int k = 0; k < n_numbers; ++k) {
    const std::string& label = any_fact().key;
    const Fact number{"pass key", label, training_passkey(rng)};
    if (first_use(number)) hide(number);
  }

  std::vector<int32_t> doc;
  doc.reserve(static_cast<size_t>(o.context_len + o.decoder_len));
  if (passkey && rng.chance(o.p_task)) doc = encode_text(tok, std::string(kPasskeyTask) + "\n");
  append(doc, insert_needles(tok, w, o.context_len - static_cast<int64_t>(doc.size()), needles));

  // Decoder part: [BOS | a little more filler], the questions in random order, then filler again.
  for (size_t i = asked.size(); i > 1; --i) std::swap(asked[i - 1], asked[static_cast<size_t>(rng.below(static_cast<int64_t>(i)))]);
  std::vector<int32_t> dec;
  int64_t next_filler = o.context_len;
  if (asked.empty() || rng.chance(o.p_bos_first)) {
    dec.push_back(tok.bos_id());
  } else {
    const int64_t k = 1 + rng.below(std::max<int64_t>(1, o.decoder_len / 2));
    append(dec, w.subspan(static_cast<size_t>(next_filler), static_cast<size_t>(k)));
    next_filler += k;
  }
  for (const std::string& qa : asked) {
    const std::vector<int32_t> ids = encode_text(tok, qa);
    if (static_cast<int64_t>(dec.size() + ids.size()) > o.decoder_len) break;
    append(dec, ids);
  }
  const int64_t rest = o.decoder_len - static_cast<int64_t>(dec.size());
  append(dec, w.subspan(static_cast<size_t>(next_filler), static_cast<size_t>(rest)));
  append(doc, dec);
  return doc;
}

std::string answer_from_context(const CepeModel& model, const Tokenizer& tok, std::span<const int32_t> context,
                                const std::string& question, int64_t chunk_len, int64_t max_new_tokens,
                                const DecodeOptions& decode) {
  GenerateRequest req;
  req.ids = tok.encode(question, true);
  req.batch = 1;
  req.len = static_cast<int64_t>(req.ids.size());
  if (!context.empty()) {
    ContextChunks ch;
    ch.batch = 1;
    ch.ctx_len = chunk_len;
    ch.n_ctx = (static_cast<int64_t>(context.size()) + chunk_len - 1) / chunk_len;
    ch.ids.assign(static_cast<size_t>(ch.n_ctx * chunk_len), 0);
    ch.mask.assign(ch.ids.size(), 0);
    std::copy(context.begin(), context.end(), ch.ids.begin());
    std::fill(ch.mask.begin(), ch.mask.begin() + static_cast<long>(context.size()), uint8_t{1});
    req.context = std::move(ch);
  }
  GenerateOptions g;
  g.max_new_tokens = max_new_tokens;
  g.sampling.greedy = true;
  g.decode = decode;
  const GenerateResult r = generate(model, req, g);
  std::vector<int32_t> fresh(r.sequences[0].begin() + req.len, r.sequences[0].end());
  while (!fresh.empty() && fresh.back() == tok.eos_id()) fresh.pop_back();
  return tok.decode(fresh);
}

std::vector<PasskeyResult> evaluate_passkey(const CepeModel& model, const Tokenizer& tok, std::span<const int32_t> filler,
                                            const PasskeyOptions& o,
                                            const std::function<void(int64_t done, int64_t total)>& progress) {
  check(!o.context_tokens.empty() && !o.depths.empty() && o.trials >= 1, "passkey: no lengths, depths or trials");
  for (double d : o.depths) check(d >= 0 && d <= 1, "passkey: depths must be in [0, 1]");
  const int64_t longest = *std::max_element(o.context_tokens.begin(), o.context_tokens.end());
  check(static_cast<int64_t>(filler.size()) > longest, [&] {
    return "passkey: the filler has " + std::to_string(filler.size()) + " tokens, fewer than the longest context (" +
           std::to_string(longest) + ")";
  });
  check(model.has_context_encoder(), "passkey: the model has no context encoder (cross-attention)");
  std::vector<PasskeyResult> out;
  const int64_t total = static_cast<int64_t>(o.context_tokens.size() * o.depths.size()) * o.trials;
  for (int64_t n : o.context_tokens)
    for (double depth : o.depths)
      for (int64_t t = 0; t < o.trials; ++t) {
        const auto t0 = std::chrono::steady_clock::now();
        CaseRng rng(o.seed, static_cast<uint64_t>(out.size()));
        PasskeyResult r;
        r.context_tokens = n;
        r.depth = depth;
        r.trial = t;
        r.key = random_passkey(rng);
        const int64_t start = rng.below(static_cast<int64_t>(filler.size()) - n + 1);
        const PasskeyCase c = make_passkey_case(tok, filler.subspan(static_cast<size_t>(start)), n, depth, r.key, o.with_task);
        r.continuation = answer_from_context(model, tok, c.context, c.question.prompt, o.chunk_len, o.max_new_tokens, o.decode);
        r.answer = extract_answer(r.continuation, true);
        r.correct = r.answer == r.key;
        r.needle_start = c.needle_start;
        r.context = c.context;
        r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        out.push_back(std::move(r));
        if (progress) progress(static_cast<int64_t>(out.size()), total);
      }
  return out;
}

}  // namespace cepe::eval
