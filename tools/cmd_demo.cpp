// cepe demo: what CEPE does, on the shipped model (models/cepe-tiny) and held-out text, in a few minutes:
// perplexity against context length (CEPE, vanilla, StreamingLLM, RePlug on the same tokens), pass-key retrieval
// by length and depth, memory and speed against full attention, and answers that need facts from a long
// document. Tables on stdout, PNGs and JSON in --out.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cepe/error.h"
#include "cepe/model.h"
#include "commands.h"
#include "core/atomic_file.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "eval/retrieval.h"
#include "eval_input.h"
#include "kernels/cpu/gemm.h"
#include "train/token_file.h"

namespace cepe::cli {

namespace {

namespace fs = std::filesystem;

const char* kDemoHelp =
    "usage: cepe demo [-m models/cepe-tiny] [--corpus build/corpus] [--out build/demo] [--windows W] [--longest X]\n"
    "                 [-t THREADS]\n"
    "\n"
    "Runs, on the model and the held-out documents of scripts/fetch-corpus.sh (--held-only is enough):\n"
    "  1. perplexity against context length, CEPE from 0 to 64x the decoder window, vanilla up to and past its\n"
    "     window, StreamingLLM and RePlug, the same scored tokens for all (cepe perplexity)\n"
    "  2. pass-key retrieval by context length and needle depth (cepe passkey)\n"
    "  3. memory and speed of CEPE against the same decoder in full attention (cepe bench)\n"
    "  4. answers that need facts hidden deep in a long held-out document (cepe generate -c)\n"
    "and writes perplexity.png, passkey.png, bench.png and their JSON to --out.\n"
    "\n"
    "  -m, --model DIR     the model (default models/cepe-tiny)\n"
    "      --corpus DIR    the corpus (default build/corpus); its held/<domain>/ folders are read\n"
    "      --out DIR       where the plots and JSON go (default build/demo)\n"
    "      --windows W     perplexity windows per domain (default 5)\n"
    "      --longest X     the longest context, in decoder windows (default 64)\n"
    "  -t, --threads N     CPU threads\n";

using Clock = std::chrono::steady_clock;

void heading(int step, const std::string& what) {
  std::printf("\n== %d/4 %s\n", step, what.c_str());
  std::fflush(stdout);
}

// Multiples of the window, the repeated and non-positive ones (but a leading 0) left out.
std::vector<int64_t> times(int64_t window, std::initializer_list<int64_t> factors) {
  std::vector<int64_t> out;
  for (int64_t f : factors) {
    const int64_t n = f * window;
    if ((n > 0 || out.empty()) && std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
  }
  return out;
}

// Perplexity by domain x protocol (rows) and context length (columns, in windows): the demo's compact table.
void print_pivot(const std::vector<eval::PerplexityRow>& rows, int64_t window) {
  std::vector<int64_t> lengths;
  std::vector<std::string> sources;
  for (const auto& r : rows) {
    if (std::find(lengths.begin(), lengths.end(), r.context_tokens) == lengths.end()) lengths.push_back(r.context_tokens);
    if (std::find(sources.begin(), sources.end(), r.source) == sources.end()) sources.push_back(r.source);
  }
  std::sort(lengths.begin(), lengths.end());
  std::printf("perplexity of the last %lld tokens of %lld-token windows, by context read before them (in windows of %lld)\n",
              static_cast<long long>(rows.empty() ? 0 : rows[0].eval_window), static_cast<long long>(window),
              static_cast<long long>(window));
  std::printf("%-9s %-13s", "domain", "protocol");
  for (int64_t n : lengths) {
    char h[16];
    std::snprintf(h, sizeof h, "%lldx", static_cast<long long>(n / window));
    std::printf(" %7s", n == 0 ? "none" : h);
  }
  std::printf("\n");
  for (const std::string& s : sources)
    for (eval::Protocol p : {eval::Protocol::Cepe, eval::Protocol::Vanilla, eval::Protocol::Streaming, eval::Protocol::Replug}) {
      std::printf("%-9s %-13s", s.c_str(), p == eval::Protocol::Cepe ? "CEPE" : p == eval::Protocol::Vanilla ? "vanilla"
                                               : p == eval::Protocol::Streaming ? "StreamingLLM" : "RePlug");
      for (int64_t n : lengths) {
        const auto it = std::find_if(rows.begin(), rows.end(), [&](const eval::PerplexityRow& r) {
          return r.source == s && r.protocol == p && r.context_tokens == n;
        });
        if (it == rows.end()) std::printf(" %7s", "-");
        else std::printf(" %7.2f", it->ppl);
      }
      std::printf("\n");
    }
  std::printf("(every cell scores the same tokens; 95%% intervals and timings in perplexity.json)\n");
}

}  // namespace

int cmd_bench(int argc, char** argv);

int cmd_demo(int argc, char** argv) {
  Args args(argc, argv, {{"--model", "-m"}, {"--corpus"}, {"--out"}, {"--windows"}, {"--longest"}, {"--threads", "-t"}},
            {{"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kDemoHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  kernels::set_num_threads(args.threads());
  const auto t_start = Clock::now();
  const std::string dir = args.str("--model", "models/cepe-tiny");
  const fs::path corpus = args.str("--corpus", "build/corpus"), out = args.str("--out", "build/demo");
  const fs::path held = corpus / "held";
  std::error_code ec;
  if (!fs::is_directory(held, ec))
    throw Error(held.string() + ": no held-out documents (run: bash scripts/fetch-corpus.sh --held-only)");
  fs::create_directories(out, ec);
  if (ec) throw Error(out.string() + ": cannot create: " + ec.message());
  // Read before any work, so that a corpus without facts fails at once.
  const std::vector<eval::Fact> facts = eval::load_facts((corpus / "facts" / "held.tsv").string());
  const auto model = CepeModel::load(dir);
  if (!model->has_context_encoder()) throw Error(dir + ": the demo needs a CEPE model (with a context encoder)");
  const std::string tok_path = resolve_tokenizer_path(dir);
  const Tokenizer tok = Tokenizer::load(tok_path);
  const int64_t window = default_decoder_tokens(*model);
  const int64_t chunk = default_chunk_len(*model, window);
  const int64_t L = args.integer("--longest", 64, 4, 1 << 16);  // the longest context, in windows
  std::printf("cepe demo: %s (decoder window %lld tokens, encoder chunks of %lld), held-out text of %s\n", dir.c_str(),
              static_cast<long long>(window), static_cast<long long>(chunk), held.string().c_str());
  std::printf("The decoder was trained on %lld-token windows only; the encoder reads any length in parallel chunks.\n",
              static_cast<long long>(window));

  // ---- 1. Perplexity by context length ----
  heading(1, "Perplexity of held-out documents by context length (lower is better)");
  std::vector<std::string> domains;
  for (const char* d : {"books", "science", "math", "code", "docs"})
    if (fs::is_directory(held / d, ec)) domains.push_back(d);
  if (!fs::is_directory(held / "books", ec)) throw Error((held / "books").string() + ": the demo's filler text is a held-out book");
  if (domains.empty()) throw Error(held.string() + ": no domain folders (books, science, math, code, docs)");
  eval::PerplexityOptions base;
  base.decoder_tokens = window;
  // Score as many tokens per window as RePlug allows (its chunk sits before the last window - chunk tokens):
  // the demo reads few windows, and scoring more of each one costs almost nothing, so its curves are less noisy.
  base.eval_window = std::max<int64_t>(1, std::min<int64_t>(window / 2, window - chunk - 1));
  base.chunk_len = chunk;
  base.max_windows = args.integer("--windows", 5, 1, 1 << 16);
  base.place_for_context = L * window;
  struct Run {
    eval::Protocol p;
    std::vector<int64_t> n;
  };
  const std::vector<Run> runs = {
      {eval::Protocol::Cepe, [&] {
         std::vector<int64_t> n{0};
         for (int64_t f = 1; f <= L; f *= 2) n.push_back(f * window);
         if (n.back() != L * window) n.push_back(L * window);
         return n;
       }()},
      {eval::Protocol::Vanilla, times(window, {0, 1, 2, 3})},
      // Two lengths each: their cost grows with the context (RePlug runs the decoder once per chunk), they stay
      // flat, and the time goes to more windows instead, so that every curve is less noisy.
      {eval::Protocol::Streaming, times(window, {0, L / 16, L})},
      {eval::Protocol::Replug, times(window, {0, L / 16, L})}};
  std::vector<eval::Source> sources;
  int64_t units = 0;
  for (const std::string& d : domains) {
    sources.push_back(load_source((held / d).string(), tok, tok_path));
    sources.back().name = d;
    for (const Run& r : runs) units += static_cast<int64_t>(eval::place_windows(sources.back(), base).size() * r.n.size());
  }
  std::vector<eval::PerplexityRow> rows;
  {
    Progress bar("perplexity", units, "evaluations", stderr, Progress::Style::Auto);
    int64_t before = 0;
    for (const eval::Source& s : sources)
      for (const Run& r : runs) {
        eval::PerplexityOptions o = base;
        o.protocols = {r.p};
        o.context_tokens = r.n;
        const auto part = eval::evaluate_perplexity(*model, s, o, [&](int64_t done, int64_t) { bar.update(before + done); });
        before += static_cast<int64_t>(eval::place_windows(s, o).size() * r.n.size());
        rows.insert(rows.end(), part.begin(), part.end());
      }
    bar.finish();
  }
  print_pivot(rows, window);
  nlohmann::json ppl_json = nlohmann::json::array();
  for (const auto& r : rows) ppl_json.push_back(perplexity_row_json(r, chunk));
  write_text_atomic((out / "perplexity.json").string(), ppl_json.dump(2) + "\n");
  plot_perplexity((out / "perplexity.png").string(), rows, "Held-out perplexity by tokens in view, " + dir, window);

  // ---- 2. Pass-key retrieval ----
  heading(2, "Pass-key retrieval: a 5-digit key hidden in a held-out book, asked for after it");
  eval::PasskeyOptions pk;
  pk.context_tokens = times(window, {L / 16, L / 4, L});
  if (pk.context_tokens.front() == 0) pk.context_tokens.erase(pk.context_tokens.begin());
  pk.depths = {0, 0.25, 0.5, 0.75, 1};
  pk.trials = 2;
  pk.chunk_len = chunk;
  std::vector<eval::PasskeyResult> pk_results;
  {
    const std::vector<int32_t> filler = filler_tokens({(held / "books").string()}, tok, tok_path);
    Progress bar("passkey", static_cast<int64_t>(pk.context_tokens.size() * pk.depths.size()) * pk.trials, "cases",
                 stderr, Progress::Style::Auto);
    pk_results = eval::evaluate_passkey(*model, tok, filler, pk, [&](int64_t done, int64_t) { bar.update(done); });
    bar.finish();
  }
  print_passkey_table(pk_results, pk);
  write_text_atomic((out / "passkey.json").string(), passkey_json(pk_results, pk).dump(2) + "\n");
  plot_passkey((out / "passkey.png").string(), pk_results, pk, "Pass-key retrieval, " + dir, window);

  // ---- 3. Memory and speed against full attention ----
  heading(3, "Memory and speed: CEPE against the same decoder reading the context in full attention");
  {
    std::string ctx;
    for (int64_t n : pk.context_tokens) {
      if (!ctx.empty()) ctx.push_back(',');
      ctx.append(std::to_string(n));
    }
    const std::string json = (out / "bench.json").string(), png = (out / "bench.png").string(), ch = std::to_string(chunk);
    const std::string threads = std::to_string(args.threads());
    std::vector<std::string> a = {"-m", dir, "--context-tokens", ctx, "--baseline", "full", "--cross-attn", "auto",
                                  "--chunk-len", ch, "--json", json, "--plot", png, "-t", threads};
    std::vector<char*> argv2;
    for (std::string& s : a) argv2.push_back(s.data());
    cmd_bench(static_cast<int>(argv2.size()), argv2.data());
  }

  // ---- 4. Facts from deep inside a long document ----
  heading(4, "Reading a long document: facts hidden in a held-out novel, asked for after it");
  {
    // Five held-out facts (never in training), spread over the list, hidden at five depths of one document and
    // asked for one at a time: a tally, not one answer that may be lucky or unlucky.
    const size_t k = std::min<size_t>(5, facts.size());
    std::vector<eval::Fact> hidden;
    std::vector<eval::Needle> needles;
    for (size_t i = 0; i < k; ++i) {
      hidden.push_back(facts[(2 * i + 1) * facts.size() / (2 * k)]);
      needles.push_back({tok.encode(hidden.back().statement(), false), (static_cast<double>(i) + 0.5) / static_cast<double>(k)});
    }
    // The longest held-out book.
    fs::path longest;
    uintmax_t longest_size = 0;
    for (const auto& e : fs::directory_iterator(held / "books"))
      if (e.is_regular_file() && e.file_size() > longest_size) longest = e.path(), longest_size = e.file_size();
    if (longest.empty()) throw Error((held / "books").string() + ": no held-out book");
    const std::vector<int32_t> book = filler_tokens({longest.string()}, tok, tok_path);
    const int64_t n = std::min<int64_t>(L / 2 * window, static_cast<int64_t>(book.size()));
    std::vector<int64_t> where;
    const std::vector<int32_t> context = eval::insert_needles(tok, book, n, needles, &where);
    // Enough new tokens for the longest value (quiz values such as "S~ao Tom'e" take a token a character).
    constexpr int64_t kAnswerTokens = 32;
    const std::string doc_path = (out / "long-document.txt").string();
    write_text_atomic(doc_path, tok.decode(context));
    std::printf("document: the first %lld tokens of %s (held out from training), %zu facts hidden in it\n",
                static_cast<long long>(n), longest.filename().string().c_str(), hidden.size());
    std::printf("%7s  %-52s %-28s %s\n", "token", "fact hidden there", "answer from the document", "decoder alone");
    int right_with = 0, right_without = 0;
    for (size_t i = 0; i < hidden.size(); ++i) {
      const std::string question = hidden[i].question();
      const std::string with =
          eval::extract_answer(eval::answer_from_context(*model, tok, context, question, chunk, kAnswerTokens), false);
      const std::string without =
          eval::extract_answer(eval::answer_from_context(*model, tok, {}, question, chunk, kAnswerTokens), false);
      const bool right = with == hidden[i].value;
      right_with += right;
      right_without += without == hidden[i].value;
      std::printf("%7lld  %-52s %-28s %s\n", static_cast<long long>(where[i]), hidden[i].statement().c_str(),
                  (with + (right ? "  (right)" : "  (wrong)")).c_str(), without.c_str());
      std::fflush(stdout);
    }
    std::printf("right: %d of %zu with the document as context, %d of %zu from the decoder alone\n", right_with,
                hidden.size(), right_without, hidden.size());
    if (!hidden.empty())
      std::printf("the same in text mode: %s generate -m %s -c %s -p \"%s\" --greedy -n %lld\n", "./build/bin/cepe",
                  dir.c_str(), doc_path.c_str(), hidden[0].question().c_str(), static_cast<long long>(kAnswerTokens));
  }

  const double total_s = std::chrono::duration<double>(Clock::now() - t_start).count();
  std::printf("\ndone in %s. Plots: %s, %s, %s (JSON beside them)\n", Progress::format_duration(total_s).c_str(),
              (out / "perplexity.png").string().c_str(), (out / "passkey.png").string().c_str(),
              (out / "bench.png").string().c_str());
  return 0;
}

}  // namespace cepe::cli
