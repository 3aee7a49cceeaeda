// cepe perplexity: long-document perplexity by context length under the paper's protocols (src/eval/perplexity.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
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
#include "eval/perplexity.h"
#include "context_input.h"
#include "eval_input.h"
#include "kernels/cpu/gemm.h"
#include "train/token_file.h"

namespace cepe::cli {

namespace {

const char* kPerplexityHelp =
    "usage: cepe perplexity -m DIR -f FILE [-f FILE]... [--protocol cepe[,vanilla,streaming,replug]]\n"
    "                       --context-tokens N[,N...] [--decoder-tokens D] [--eval-window E] [--chunk-len C]\n"
    "                       [--max-windows W] [--json OUT] [--plot OUT.png] [-t THREADS]\n"
    "\n"
    "Perplexity of the last E tokens of D-token decoder windows, with N tokens of the text before them read as\n"
    "context, on the same windows for every protocol and N (placed for the largest N):\n"
    "  cepe       the N tokens in chunks of C through the encoder, read by the cross-attention\n"
    "  vanilla    all N + D tokens in the decoder (past its training window: extrapolation)\n"
    "  streaming  StreamingLLM: 4 attention sinks + a recent window of D/2, steps of D/2, positions re-assigned\n"
    "  replug     each C-token chunk of the text before the last D - C tokens in front of them, one forward each,\n"
    "             the next-token distributions averaged (uniform weights)\n"
    "\n"
    "  -m, --model DIR         the model\n"
    "  -f, --file FILE         a text file (one document), a .tokens file, or a folder of text files; repeatable,\n"
    "                          each scored on its own\n"
    "      --protocol LIST     default cepe\n"
    "      --context-tokens L  context lengths N, e.g. 0,256,1024,4096\n"
    "      --decoder-tokens D  default: the decoder's training window (config max_position_embeddings)\n"
    "      --eval-window E     scored tokens per window (default min(256, D/4))\n"
    "      --chunk-len C       encoder chunk length (default: the encoder's max_position_embeddings, at most 256\n"
    "                          and D/2)\n"
    "      --max-windows W     windows per file, spread over all the candidates (default 16)\n"
    "      --json OUT          rows: protocol, context_tokens, decoder_tokens, scored_tokens, windows, ppl, ppl_ci95...\n"
    "      --plot OUT.png      perplexity against tokens in view, one chart per file\n"
    "      --cross-attn MODE   recompute | cached | absorbed | auto (default)\n"
    "  -t, --threads N         CPU threads\n"
    "  -q, --quiet             no progress bar\n";

}  // namespace

nlohmann::json perplexity_row_json(const eval::PerplexityRow& r, int64_t chunk_len) {
  return {{"source", r.source},
          {"protocol", eval::protocol_name(r.protocol)},
          {"context_tokens", r.context_tokens},
          {"decoder_tokens", r.decoder_tokens},
          {"eval_window", r.eval_window},
          {"chunk_len", chunk_len},
          {"windows", r.windows},
          {"scored_tokens", r.scored_tokens},
          {"mean_nll", r.mean_nll},
          {"ppl", r.ppl},
          {"ppl_ci95", {r.ppl_lo, r.ppl_hi}},
          {"seconds", r.seconds}};
}

void print_perplexity_table(const std::vector<eval::PerplexityRow>& rows) {
  std::printf("%-28s %-9s %8s %7s %7s %7s %9s %21s %8s\n", "file", "protocol", "context", "decoder", "windows", "scored",
              "ppl", "95% interval", "seconds");
  for (const eval::PerplexityRow& r : rows) {
    char interval[64];
    std::snprintf(interval, sizeof interval, "[%.3f, %.3f]", r.ppl_lo, r.ppl_hi);
    std::printf("%-28s %-9s %8lld %7lld %7lld %7lld %9.3f %21s %8.1f\n", r.source.substr(0, 28).c_str(),
                eval::protocol_name(r.protocol), static_cast<long long>(r.context_tokens),
                static_cast<long long>(r.decoder_tokens), static_cast<long long>(r.windows),
                static_cast<long long>(r.scored_tokens), r.ppl, interval, r.seconds);
  }
}

void plot_perplexity(const std::string& path, const std::vector<eval::PerplexityRow>& rows, const std::string& title,
                     int64_t decoder_tokens) {
  plot::Figure fig;
  fig.title = title;
  std::vector<std::string> sources;
  for (const auto& r : rows)
    if (std::find(sources.begin(), sources.end(), r.source) == sources.end()) sources.push_back(r.source);
  const int64_t eval_window = rows.empty() ? 0 : rows[0].eval_window;
  for (const std::string& s : sources) {
    plot::Chart c;
    c.title = s;
    // Short enough for a panel 420 pixels wide: the panels' x titles must not run into each other.
    c.x = {std::to_string(decoder_tokens) + "-token windows in view", plot::Scale::Log2};
    c.y = {"perplexity, last " + std::to_string(eval_window) + " tokens", plot::Scale::Linear};
    std::map<std::string, plot::Series> by_protocol;
    std::vector<std::string> order;
    for (const auto& r : rows) {
      if (r.source != s) continue;
      const std::string name = eval::protocol_name(r.protocol);
      if (!by_protocol.count(name)) {
        by_protocol[name] = {name == "cepe" ? "CEPE" : name == "vanilla" ? "vanilla (all in decoder)"
                                                 : name == "streaming" ? "StreamingLLM" : "RePlug", {}, {}, true};
        order.push_back(name);
      }
      by_protocol[name].x.push_back(static_cast<double>(r.context_tokens + decoder_tokens) / static_cast<double>(decoder_tokens));
      by_protocol[name].y.push_back(r.ppl);
    }
    double lo = INFINITY, hi = -INFINITY;
    for (const std::string& n : order) {
      c.series.push_back(by_protocol[n]);
      for (double y : by_protocol[n].y) lo = std::min(lo, y), hi = std::max(hi, y);
    }
    // One chart: headroom above the lines for its legend, so that it hides none of them. Several: one legend
    // above them all (below), since every chart has the same protocols.
    if (sources.size() == 1 && std::isfinite(lo) && hi > lo)
      c.y.max = hi + 0.12 * static_cast<double>(order.size()) * (hi - lo) + 1e-9;
    fig.charts.push_back(std::move(c));
  }
  fig.shared_legend = sources.size() > 1;
  fig.width = std::max<int>(900, 420 * static_cast<int>(sources.size()));
  fig.height = 520;
  plot::write_png(path, fig);
}

int cmd_perplexity(int argc, char** argv) {
  Args args(argc, argv,
            {{"--model", "-m"}, {"--file", "-f"}, {"--protocol"}, {"--context-tokens"}, {"--decoder-tokens"},
             {"--eval-window"}, {"--chunk-len"}, {"--max-windows"}, {"--json"}, {"--plot"}, {"--cross-attn"},
             {"--threads", "-t"}},
            {{"--help", "-h"}, {"--quiet", "-q"}});
  if (args.has("--help")) {
    std::fputs(kPerplexityHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  kernels::set_num_threads(args.threads());
  const std::string dir = args.required("--model");
  const std::vector<std::string> files = args.all("--file");
  if (files.empty()) throw Error("give at least one -f FILE");
  eval::PerplexityOptions o;
  o.protocols = eval::parse_protocols(args.str("--protocol", "cepe"));
  o.context_tokens = parse_int_list("--context-tokens", args.required("--context-tokens"));
  o.decode.cross_attn = cross_attn_option(args);
  const auto model = CepeModel::load(dir);
  o.decoder_tokens = args.integer("--decoder-tokens", default_decoder_tokens(*model), 2, 1 << 24);
  o.eval_window = args.integer("--eval-window", std::min<int64_t>(256, o.decoder_tokens / 4), 1, 1 << 24);
  o.chunk_len = args.integer("--chunk-len", default_chunk_len(*model, o.decoder_tokens), 1, 1 << 20);
  o.max_windows = args.integer("--max-windows", 16, 1, 1 << 24);
  const std::string tok_path = resolve_tokenizer_path(dir);
  const Tokenizer tok = Tokenizer::load(tok_path);
  std::vector<eval::Source> sources;
  for (const std::string& f : files) sources.push_back(load_source(f, tok, tok_path));

  std::vector<eval::PerplexityRow> rows;
  for (const eval::Source& s : sources) {
    const int64_t units = static_cast<int64_t>(eval::place_windows(s, o).size() * o.protocols.size() * o.context_tokens.size());
    Progress bar(args.has("--quiet") ? "" : "perplexity " + s.name, units, "evaluations", stderr,
                 args.has("--quiet") ? Progress::Style::Quiet : Progress::Style::Auto);
    const auto part = eval::evaluate_perplexity(*model, s, o, [&](int64_t done, int64_t) { bar.update(done); });
    bar.finish();
    rows.insert(rows.end(), part.begin(), part.end());
  }
  print_perplexity_table(rows);
  if (args.has("--json")) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : rows) j.push_back(perplexity_row_json(r, o.chunk_len));
    write_text_atomic(args.str("--json"), j.dump(2) + "\n");
  }
  if (args.has("--plot")) {
    plot_perplexity(args.str("--plot"), rows, "Perplexity by context length, " + dir, o.decoder_tokens);
    std::fprintf(stderr, "plot: %s\n", args.str("--plot").c_str());
  }
  return 0;
}

}  // namespace cepe::cli
