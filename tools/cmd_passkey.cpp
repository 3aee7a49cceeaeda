// cepe passkey: needle-in-a-haystack retrieval (the pass-key test) by context length x needle depth over real
// filler text: accuracy table, JSON and a heat map (src/eval/retrieval.h).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cepe/error.h"
#include "cepe/model.h"
#include "commands.h"
#include "core/atomic_file.h"
#include "core/plot.h"
#include "core/progress.h"
#include "eval/retrieval.h"
#include "context_input.h"
#include "eval_input.h"
#include "kernels/cpu/gemm.h"
#include "train/token_file.h"

namespace cepe::cli {

namespace {

const char* kPasskeyHelp =
    "usage: cepe passkey -m DIR -f FILLER [-f FILLER]... [--context-tokens N[,N...]] [--depths D[,D...]]\n"
    "                    [--trials K] [--seed S] [--task] [--json OUT] [--plot OUT.png] [--save-cases DIR]\n"
    "\n"
    "The pass-key test: FILLER text (real text: a text file, a .tokens file or a folder) cut to N tokens with\n"
    "\"The pass key is NNNNN. Remember it. NNNNN is the pass key.\" inserted at each depth (0 = start, 1 = end),\n"
    "read by the encoder; the decoder is asked \"What is the pass key? The pass key is\" and must continue with\n"
    "the key (greedy). Each trial has its own random key and filler window.\n"
    "\n"
    "  -m, --model DIR          the model\n"
    "  -f, --filler FILE        filler text (repeatable: concatenated)\n"
    "      --context-tokens L   context lengths (default 1024,4096,16384)\n"
    "      --depths L           needle depths in [0, 1] (default 0,0.25,0.5,0.75,1)\n"
    "      --trials K           cases per length and depth (default 4)\n"
    "      --seed S             (default 0)\n"
    "      --task               put the task description (\"There is an important info hidden ...\") first\n"
    "      --chunk-len C        encoder chunk length (default as cepe generate)\n"
    "      --json OUT           every case and the accuracy table\n"
    "      --plot OUT.png       heat map of accuracy by length x depth\n"
    "      --save-cases DIR     each case's context as a text file plus cases.tsv (file, question, key), for\n"
    "                           running the same cases through `cepe generate -c FILE -p QUESTION`\n"
    "      --cross-attn MODE    recompute | cached | absorbed | auto (default)\n"
    "  -t, --threads N          CPU threads\n"
    "  -q, --quiet              no progress bar\n";

std::string depth_label(double d) {
  char b[16];
  std::snprintf(b, sizeof b, "%.0f%%", d * 100);
  return b;
}

std::string tokens_label(int64_t n) {
  return n >= 1024 && n % 1024 == 0 ? std::to_string(n / 1024) + "k" : std::to_string(n);
}

}  // namespace

// Accuracy by (length, depth) of `results`, for the table, the JSON and the heat map.
std::map<std::pair<int64_t, double>, std::pair<int64_t, int64_t>> passkey_accuracy(const std::vector<eval::PasskeyResult>& results) {
  std::map<std::pair<int64_t, double>, std::pair<int64_t, int64_t>> acc;  // -> (correct, cases)
  for (const auto& r : results) {
    auto& a = acc[{r.context_tokens, r.depth}];
    a.first += r.correct;
    a.second += 1;
  }
  return acc;
}

void print_passkey_table(const std::vector<eval::PasskeyResult>& results, const eval::PasskeyOptions& o) {
  const auto acc = passkey_accuracy(results);
  std::printf("pass-key accuracy (%lld cases per cell)\n%-8s", static_cast<long long>(o.trials), "depth");
  for (int64_t n : o.context_tokens) std::printf(" %8s", (tokens_label(n) + " tok").c_str());
  std::printf("\n");
  for (double d : o.depths) {
    std::printf("%-8s", depth_label(d).c_str());
    for (int64_t n : o.context_tokens) {
      const auto& a = acc.at({n, d});
      std::printf(" %7.0f%%", 100.0 * static_cast<double>(a.first) / static_cast<double>(a.second));
    }
    std::printf("\n");
  }
  std::printf("%-8s", "all");
  for (int64_t n : o.context_tokens) {
    int64_t c = 0, t = 0;
    for (double d : o.depths) c += acc.at({n, d}).first, t += acc.at({n, d}).second;
    std::printf(" %7.0f%%", 100.0 * static_cast<double>(c) / static_cast<double>(t));
  }
  std::printf("\n");
}

void plot_passkey(const std::string& path, const std::vector<eval::PasskeyResult>& results, const eval::PasskeyOptions& o,
                  const std::string& title, int64_t decoder_window) {
  const auto acc = passkey_accuracy(results);
  plot::Chart c;
  c.title = "accuracy, % of " + std::to_string(o.trials) + " keys per cell";
  c.x.label = "context tokens read by the encoder";
  c.title += ", decoder window " + std::to_string(decoder_window);
  c.y.label = "needle depth";
  for (int64_t n : o.context_tokens) c.heatmap.columns.push_back(tokens_label(n));
  for (double d : o.depths) c.heatmap.rows.push_back(depth_label(d));
  for (double d : o.depths)
    for (int64_t n : o.context_tokens) {
      const auto& a = acc.at({n, d});
      c.heatmap.values.push_back(static_cast<double>(a.first) / static_cast<double>(a.second));
    }
  c.heatmap.label_scale = 100;
  plot::Figure fig;
  fig.title = title;
  // Wide enough for the longer title line (about 14 px a character, centred over the chart): neither is clipped.
  const size_t title_chars = std::max(fig.title.size(), c.title.size());
  fig.width = std::max<int>({640, 150 + 110 * static_cast<int>(o.context_tokens.size()), 60 + 14 * static_cast<int>(title_chars)});
  fig.height = std::max<int>(360, 150 + 48 * static_cast<int>(o.depths.size()));
  fig.charts.push_back(std::move(c));
  plot::write_png(path, fig);
}

nlohmann::json passkey_json(const std::vector<eval::PasskeyResult>& results, const eval::PasskeyOptions& o) {
  nlohmann::json cases = nlohmann::json::array(), cells = nlohmann::json::array();
  for (const auto& r : results)
    cases.push_back({{"context_tokens", r.context_tokens}, {"depth", r.depth}, {"trial", r.trial}, {"key", r.key},
                     {"answer", r.answer}, {"continuation", r.continuation}, {"correct", r.correct}, {"needle_start", r.needle_start}, {"seconds", r.seconds}});
  for (const auto& [k, a] : passkey_accuracy(results))
    cells.push_back({{"context_tokens", k.first}, {"depth", k.second}, {"correct", a.first}, {"cases", a.second},
                     {"accuracy", static_cast<double>(a.first) / static_cast<double>(a.second)}});
  return {{"chunk_len", o.chunk_len}, {"with_task", o.with_task}, {"seed", o.seed}, {"accuracy", cells}, {"cases", cases}};
}

std::vector<int32_t> filler_tokens(const std::vector<std::string>& files, const Tokenizer& tok, const std::string& tok_path) {
  std::vector<int32_t> out;
  for (const std::string& f : files) {
    const eval::Source s = load_source(f, tok, tok_path);
    for (const auto& d : s.docs)
      for (int32_t id : d)
        if (id != tok.bos_id() && id != tok.eos_id()) out.push_back(id);
  }
  return out;
}

int cmd_passkey(int argc, char** argv) {
  Args args(argc, argv,
            {{"--model", "-m"}, {"--filler", "-f"}, {"--context-tokens"}, {"--depths"}, {"--trials"}, {"--seed"},
             {"--chunk-len"}, {"--json"}, {"--plot"}, {"--save-cases"}, {"--cross-attn"}, {"--threads", "-t"}},
            {{"--help", "-h"}, {"--quiet", "-q"}, {"--task"}});
  if (args.has("--help")) {
    std::fputs(kPasskeyHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  kernels::set_num_threads(args.threads());
  const std::string dir = args.required("--model");
  const std::vector<std::string> files = args.all("--filler");
  if (files.empty()) throw Error("give the filler text with -f FILE (real text, e.g. a held-out book)");
  eval::PasskeyOptions o;
  o.context_tokens = parse_int_list("--context-tokens", args.str("--context-tokens", "1024,4096,16384"));
  o.depths = parse_number_list("--depths", args.str("--depths", "0,0.25,0.5,0.75,1"), 0, 1, false, "0,0.5,1");
  o.trials = args.integer("--trials", 4, 1, 1 << 20);
  o.seed = static_cast<uint64_t>(args.integer("--seed", 0, 0, std::numeric_limits<long long>::max()));
  o.with_task = args.has("--task");
  o.decode.cross_attn = cross_attn_option(args);
  for (int64_t n : o.context_tokens) if (n < 64) throw Error("--context-tokens: each length must be at least 64");
  const auto model = CepeModel::load(dir);
  o.chunk_len = args.integer("--chunk-len", default_chunk_len(*model, default_decoder_tokens(*model)), 1, 1 << 20);
  const std::string tok_path = resolve_tokenizer_path(dir);
  const Tokenizer tok = Tokenizer::load(tok_path);
  const std::vector<int32_t> filler = filler_tokens(files, tok, tok_path);
  const int64_t total = static_cast<int64_t>(o.context_tokens.size() * o.depths.size()) * o.trials;
  Progress bar("passkey", total, "cases", stderr, args.has("--quiet") ? Progress::Style::Quiet : Progress::Style::Auto);
  const auto results = eval::evaluate_passkey(*model, tok, filler, o, [&](int64_t done, int64_t) { bar.update(done); });
  bar.finish();
  print_passkey_table(results, o);
  if (args.has("--json")) write_text_atomic(args.str("--json"), passkey_json(results, o).dump(2) + "\n");
  if (args.has("--plot")) {
    plot_passkey(args.str("--plot"), results, o, "Pass-key retrieval, " + dir, default_decoder_tokens(*model));
    std::fprintf(stderr, "plot: %s\n", args.str("--plot").c_str());
  }
  if (args.has("--save-cases")) {
    namespace fs = std::filesystem;
    const fs::path out = args.str("--save-cases");
    fs::create_directories(out);
    std::string tsv;
    for (size_t i = 0; i < results.size(); ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "case-%04zu.txt", i);
      write_text_atomic((out / name).string(), tok.decode(results[i].context));
      tsv += std::string(name) + "\t" + eval::kPasskeyQuestion + "\t" + results[i].key + "\t" +
             std::to_string(results[i].context_tokens) + "\t" + std::to_string(results[i].depth) + "\n";
    }
    write_text_atomic((out / "cases.tsv").string(), tsv);
    std::fprintf(stderr, "cases: %s (%zu contexts, cases.tsv)\n", out.string().c_str(), results.size());
  }
  return 0;
}

}  // namespace cepe::cli
