// cepe data tokenize|info|sample: token files for training (src/train/token_file.h) and a look at the samples the
// training layouts cut from them (src/train/samplers.h).
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cepe/error.h"
#include "commands.h"
#include "core/progress.h"
#include "eval/retrieval.h"
#include "kernels/cpu/gemm.h"
#include "train/samplers.h"
#include "train/teacher.h"
#include "train/token_file.h"
#include "train/tokenize_corpus.h"

namespace cepe::cli {

namespace {

const char* kDataHelp =
    "usage: cepe data <tokenize|info|sample> [options]\n"
    "\n"
    "  tokenize -m TOKENIZER -o OUT.tokens INPUT...   text files / .jsonl files / folders into a token file\n"
    "  info FILE [-m TOKENIZER]                       header and statistics of a token file\n"
    "  sample FILE... --layout L --seq-len T [...]    print samples of a training layout as JSON\n"
    "  teacher --config TRAIN.json -m TEACHER -o OUT --samples N   CEPED teacher top-k targets\n"
    "  synth -m TOKENIZER --filler F.tokens --facts F.tsv -o OUT.tokens -n N   retrieval training documents\n"
    "\n"
    "Run `cepe data <subcommand> --help` for its options.\n";

const char* kTokenizeHelp =
    "usage: cepe data tokenize -m TOKENIZER -o OUT.tokens [-t N] [--quiet] INPUT...\n"
    "\n"
    "  -m, --model PATH     a tokenizer.model file or a model directory holding one\n"
    "  -o, --output FILE    the token file (safetensors; written atomically)\n"
    "  -t, --threads N      tokenizer threads (documents in parallel; default: all cores)\n"
    "      --quiet          no progress bar\n"
    "\n"
    "INPUT: files or folders (walked recursively, sorted, hidden entries skipped). A .jsonl file holds one\n"
    "document per line (its \"text\" field); any other file is one document. Each document is stored as\n"
    "BOS + tokens + EOS; documents without tokens are skipped and counted.\n";

const char* kInfoHelp =
    "usage: cepe data info FILE [-m TOKENIZER]\n"
    "\n"
    "Validates FILE and prints its header and document statistics; with -m also checks that it was made by\n"
    "that tokenizer.\n";

const char* kSampleHelp =
    "usage: cepe data sample FILE... --layout L --seq-len T [options]\n"
    "\n"
    "      --layout L           decoder | mlm | filtered | concat | duplicate\n"
    "      --seq-len T          decoder (or MLM) tokens per sample\n"
    "      --n-ctx N, --ctx-len C   encoder chunks (filtered, concat, duplicate)\n"
    "      --prev-len P, --window-len L, --stride S   window slicing (default: the reference's)\n"
    "      --index I            first global sample index (default 0)\n"
    "      --count N            samples to print (default 1)\n"
    "      --seed S             (default 0)\n"
    "      --eval               eval mode: windows in order, no shuffling or context masking\n"
    "      --loss-window K      labels only on the last K decoder tokens\n"
    "      --mlm-prob P         MLM selection probability (default 0.3)\n"
    "      --mask-prob P, --mask-seq-prob Q   context masking (train mode)\n"
    "      --world-size W, --rank R, --batch B   print rank R's rows of global batch --index instead\n";

int data_tokenize(int argc, char** argv) {
  Args args(argc, argv, {{"--model", "-m"}, {"--output", "-o"}, {"--threads", "-t"}}, {{"--quiet"}, {"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kTokenizeHelp, stdout);
    return 0;
  }
  TokenizeOptions opt;
  opt.tokenizer = args.required("--model");
  opt.output = args.required("--output");
  opt.inputs = args.positional();
  if (opt.inputs.empty()) throw Error("data tokenize: give at least one INPUT (a file or a folder)");
  opt.threads = args.threads() > 0 ? args.threads() : omp_get_max_threads();
  if (args.has("--quiet")) opt.progress = Progress::Style::Quiet;
  const TokenizeStats s = tokenize_corpus(opt);
  std::error_code ec;
  const auto size = std::filesystem::file_size(opt.output, ec);
  std::printf("tokenized %lld documents (%lld empty skipped) from %lld files, %s: %lld tokens in %.2f s (%.0f tokens/s) -> %s (%s)\n",
              static_cast<long long>(s.documents), static_cast<long long>(s.skipped_empty),
              static_cast<long long>(s.files), Progress::format_bytes(static_cast<double>(s.input_bytes)).c_str(),
              static_cast<long long>(s.tokens), s.seconds, s.seconds > 0 ? static_cast<double>(s.tokens) / s.seconds : 0.0,
              opt.output.c_str(), Progress::format_bytes(ec ? 0.0 : static_cast<double>(size)).c_str());
  return 0;
}

int data_info(int argc, char** argv) {
  Args args(argc, argv, {{"--model", "-m"}}, {{"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kInfoHelp, stdout);
    return 0;
  }
  if (args.positional().size() != 1) throw Error("data info takes exactly one FILE");
  const TokenFile f = TokenFile::open(args.positional()[0]);
  std::string checked;  // checked before anything is printed: a mismatch is one error line
  if (args.has("--model")) {
    checked = resolve_tokenizer_path(args.str("--model"));
    check_tokenizer(f, identify_tokenizer(checked), checked);
  }
  const TokenizerIdentity& t = f.tokenizer();
  std::error_code ec;
  const auto size = std::filesystem::file_size(f.path(), ec);
  std::printf("file:        %s (%s)\n", f.path().c_str(), Progress::format_bytes(ec ? 0.0 : static_cast<double>(size)).c_str());
  std::printf("format:      %s version %d\n", kTokenFileFormat, kTokenFileVersion);
  std::printf("tokenizer:   sha256 %s, vocab %d, bos %d, eos %d, unk %d\n", t.sha256.c_str(), t.vocab_size, t.bos_id,
              t.eos_id, t.unk_id);
  std::printf("sources:     %s\n", nlohmann::json(f.sources()).dump().c_str());
  for (const auto& entry : f.metadata()) {
    const std::string& k = entry.first;  // not a structured binding: clang 14 cannot capture one in a lambda
    const std::string& v = entry.second;
    static const char* kShown[] = {"format", "format_version", "tokenizer_sha256", "vocab_size", "bos_id", "eos_id",
                                   "unk_id", "sources", "n_docs", "n_tokens"};
    if (std::none_of(std::begin(kShown), std::end(kShown), [&](const char* s) { return k == s; }))
      std::printf("%-12s %s\n", (k + ":").c_str(), v.substr(0, 200).c_str());
  }
  std::printf("documents:   %lld\n", static_cast<long long>(f.n_docs()));
  std::printf("tokens:      %lld\n", static_cast<long long>(f.n_tokens()));
  if (f.n_docs() > 0) {
    std::vector<int64_t> len(static_cast<size_t>(f.n_docs()));
    for (int64_t i = 0; i < f.n_docs(); ++i) len[static_cast<size_t>(i)] = f.doc_length(i);
    const auto [mn, mx] = std::minmax_element(len.begin(), len.end());
    const int64_t lo = *mn, hi = *mx;
    std::nth_element(len.begin(), len.begin() + static_cast<long>(len.size() / 2), len.end());
    std::printf("doc length:  min %lld, median %lld, max %lld, mean %.1f\n", static_cast<long long>(lo),
                static_cast<long long>(len[len.size() / 2]), static_cast<long long>(hi),
                static_cast<double>(f.n_tokens()) / static_cast<double>(f.n_docs()));
  }
  if (!checked.empty()) std::printf("check:       made by %s\n", checked.c_str());
  return 0;
}

int data_sample(int argc, char** argv) {
  Args args(argc, argv,
            {{"--layout"}, {"--seq-len"}, {"--n-ctx"}, {"--ctx-len"}, {"--prev-len"}, {"--window-len"}, {"--stride"},
             {"--index"}, {"--count"}, {"--seed"}, {"--loss-window"}, {"--mlm-prob"}, {"--mask-prob"},
             {"--mask-seq-prob"}, {"--world-size"}, {"--rank"}, {"--batch"}},
            {{"--eval"}, {"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kSampleHelp, stdout);
    return 0;
  }
  if (args.positional().empty()) throw Error("data sample: give at least one token FILE");
  constexpr long long kMax = 1ll << 40;
  SamplerConfig c;
  StreamConfig s;
  s.layout = parse_layout(args.required("--layout"));
  for (const std::string& p : args.positional()) s.files.push_back(std::make_shared<const TokenFile>(TokenFile::open(p)));
  s.prev_len = args.integer("--prev-len", -1, 0, kMax);
  s.window_len = args.integer("--window-len", -1, 1, kMax);
  s.stride = args.integer("--stride", -1, 1, kMax);
  c.streams.push_back(std::move(s));
  c.seq_len = args.integer("--seq-len", 0, 1, 1 << 24);
  if (!args.has("--seq-len")) throw Error("missing required option --seq-len");
  c.n_ctx = args.integer("--n-ctx", 0, 0, 1 << 20);
  c.ctx_len = args.integer("--ctx-len", 0, 0, 1 << 24);
  c.seed = static_cast<uint64_t>(args.integer("--seed", 0, 0, std::numeric_limits<long long>::max()));
  c.shuffle = !args.has("--eval");
  c.loss_window = args.integer("--loss-window", 0, 0, 1 << 24);
  c.mlm_probability = args.number("--mlm-prob", 0.3, 0, 1);
  c.context_masking.mask_prob = args.number("--mask-prob", 0, 0, 1);
  c.context_masking.mask_seq_prob = args.number("--mask-seq-prob", 0, 0, 1);
  c.world_size = static_cast<int>(args.integer("--world-size", 1, 1, 1 << 16));
  c.rank = static_cast<int>(args.integer("--rank", 0, 0, (1 << 16) - 1));
  c.batch_size = args.integer("--batch", 1, 1, 1 << 16);
  const bool sharded = args.has("--world-size") || args.has("--rank") || args.has("--batch");
  const int64_t index = args.integer("--index", 0, 0, kMax);
  const int64_t count = args.integer("--count", 1, 1, 1 << 16);
  const Sampler sampler(c);
  const Batch b = sharded ? sampler.batch(index) : sampler.samples(index, count);
  nlohmann::json out = nlohmann::json::array();
  for (int64_t r = 0; r < b.rows; ++r) {
    const SampleSource src = sampler.locate(b.sample_index[r]);
    const auto row = [&](const auto& v, int64_t n) {
      return nlohmann::json(std::vector<int64_t>(v.begin() + r * n, v.begin() + (r + 1) * n));
    };
    nlohmann::json j = {{"sample_index", b.sample_index[r]},
                        {"source", {{"stream", src.stream}, {"stream_index", src.stream_index}, {"epoch", src.epoch},
                                    {"window", src.window}, {"file", c.streams[0].files[src.file]->path()},
                                    {"token_offset", src.token_offset}}},
                        {"input_ids", row(b.input_ids, b.seq_len)},
                        {"labels", row(b.labels, b.seq_len)},
                        {"attention_mask", row(b.attention_mask, b.seq_len)}};
    if (b.has_encoder()) {
      const int64_t E = b.n_ctx * b.ctx_len;
      nlohmann::json ids = nlohmann::json::array(), mask = nlohmann::json::array();
      for (int64_t k = 0; k < b.n_ctx; ++k) {
        const int64_t o = r * E + k * b.ctx_len;
        ids.push_back(std::vector<int64_t>(b.encoder_input_ids.begin() + o, b.encoder_input_ids.begin() + o + b.ctx_len));
        mask.push_back(std::vector<int64_t>(b.encoder_attention_mask.begin() + o, b.encoder_attention_mask.begin() + o + b.ctx_len));
      }
      j["encoder_input_ids"] = std::move(ids);
      j["encoder_attention_mask"] = std::move(mask);
    }
    out.push_back(std::move(j));
  }
  std::printf("%s\n", out.dump().c_str());
  std::fprintf(stderr, "%s: %lld windows%s\n", layout_name(c.streams[0].layout),
               static_cast<long long>(sampler.stream_windows(0)), c.shuffle ? " (train mode: shuffled, epoch-less)" : " (eval mode)");
  return 0;
}

const char* kTeacherHelp =
    "usage: cepe data teacher --config TRAIN.json -m TEACHER -o OUT.teacher --samples N [--top-k K] [--batch B] [-t N]\n"
    "  CEPED teacher targets (spec 3.6): TEACHER (a causal LM checkpoint) reads each of the first N training samples\n"
    "  of TRAIN.json (a ceped config) with its context inside its own window (the n_ctx x ctx_len context tokens,\n"
    "  then the seq_len decoder tokens) and keeps, at the last seq_len positions, the top-K probabilities plus the\n"
    "  rest (fp16) and their ids (int32), row i = global sample i. K defaults to 50, as the reference.\n";

int data_teacher(int argc, char** argv) {
  Args args(argc, argv, {{"--config", "-c"}, {"--model", "-m"}, {"--output", "-o"}, {"--samples"}, {"--top-k"},
                         {"--batch"}, {"--threads", "-t"}},
            {{"--help", "-h"}, {"--quiet", "-q"}});
  if (args.has("--help")) {
    std::fputs(kTeacherHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  kernels::set_num_threads(args.threads());
  const train::TrainConfig cfg = train::load_train_config(args.required("--config"));
  train::TeacherOptions opt;
  opt.teacher = args.required("--model");
  opt.output = args.required("--output");
  opt.samples = args.integer("--samples", 0, 1, int64_t{1} << 40);
  opt.top_k = args.integer("--top-k", 50, 1, 1 << 20);
  opt.batch = args.integer("--batch", 4, 1, 1 << 16);
  opt.quiet = args.has("--quiet");
  if (opt.samples == 0) throw Error("--samples is required (how many training samples the targets cover)");
  train::write_teacher_targets(cfg, opt);
  return 0;
}

const char* kSynthHelp =
    "usage: cepe data synth -m TOKENIZER --filler FILE.tokens [--facts FILE.tsv] -o OUT.tokens -n N [options]\n"
    "\n"
    "Synthetic retrieval documents for the CEPE stage (src/eval/retrieval.h), each exactly --context-tokens +\n"
    "--decoder-tokens long: filler text (a random window of FILE.tokens) with a pass key and key-value facts\n"
    "inserted at random depths of the context part, then a decoder part that asks for them. Read with the\n"
    "`filtered` layout (prev_len = context tokens), every document gives one sample.\n"
    "\n"
    "  -m, --model PATH          the tokenizer (file or model directory); FILE.tokens must be its\n"
    "      --filler FILE         token file the filler text comes from (training text only)\n"
    "      --facts FILE          \"relation<TAB>key<TAB>value\" lines (scripts/fetch-corpus.sh: facts/train.tsv)\n"
    "  -o, --output FILE         the token file (written atomically)\n"
    "  -n, --documents N         how many documents\n"
    "      --context-tokens E    encoder tokens per document (default 2048)\n"
    "      --decoder-tokens T    decoder tokens per document (default 256)\n"
    "      --p-passkey P         share of documents with a pass key (default 0.7)\n"
    "      --max-facts K         facts per document, 1..K (default 6; 0: none)\n"
    "      --max-numbers K       labelled pass keys per document, 0..K (\"The pass key of <a fact's key> is\n"
    "                            NNNNN.\"; default 0; needs --facts)\n"
    "      --seed S              document i depends only on (S, i) (default 0)\n";

int data_synth(int argc, char** argv) {
  Args args(argc, argv,
            {{"--model", "-m"}, {"--filler"}, {"--facts"}, {"--output", "-o"}, {"--documents", "-n"},
             {"--context-tokens"}, {"--decoder-tokens"}, {"--p-passkey"}, {"--max-facts"}, {"--max-numbers"}, {"--seed"}},
            {{"--help", "-h"}});
  if (args.has("--help")) {
    std::fputs(kSynthHelp, stdout);
    return 0;
  }
  if (!args.positional().empty()) throw Error("unexpected argument '" + args.positional()[0] + "'");
  const std::string tok_path = resolve_tokenizer_path(args.required("--model"));
  const Tokenizer tok = Tokenizer::load(tok_path);
  const TokenizerIdentity identity = identify_tokenizer(tok_path, tok);
  const TokenFile filler = TokenFile::open(args.required("--filler"));
  check_tokenizer(filler, identity, tok_path);
  const std::vector<eval::Fact> facts = args.has("--facts") ? eval::load_facts(args.str("--facts")) : std::vector<eval::Fact>{};
  eval::SynthOptions o;
  o.context_len = args.integer("--context-tokens", 2048, 16, 1 << 24);
  o.decoder_len = args.integer("--decoder-tokens", 256, 32, 1 << 20);
  o.p_passkey = args.number("--p-passkey", 0.7, 0, 1);
  o.max_facts = static_cast<int>(args.integer("--max-facts", facts.empty() ? 0 : 6, 0, 64));
  if (o.max_facts > 0 && facts.empty()) throw Error("--max-facts needs --facts");
  o.max_numbers = static_cast<int>(args.integer("--max-numbers", 0, 0, 64));
  if (o.max_numbers > 0 && facts.empty()) throw Error("--max-numbers needs --facts");
  const int64_t n = args.integer("--documents", 0, 1, int64_t{1} << 32);
  if (!args.has("--documents")) throw Error("missing required option --documents (-n)");
  const uint64_t seed = static_cast<uint64_t>(args.integer("--seed", 0, 0, std::numeric_limits<long long>::max()));
  const std::string out = args.required("--output");
  TokenFileWriter w(out, identity, {filler.path()},
                    {{"document_layout", "synth: " + std::to_string(o.context_len) + " context + " +
                                             std::to_string(o.decoder_len) + " decoder tokens"},
                     {"synth_seed", std::to_string(seed)}});
  Progress bar("synth", n, "documents");
  for (int64_t i = 0; i < n; ++i) {
    eval::CaseRng rng(seed, static_cast<uint64_t>(i));
    w.add_document(eval::make_synth_document(tok, filler.tokens(), facts, o, rng));
    bar.update(i + 1);
  }
  bar.finish();
  w.commit();
  std::printf("wrote %lld retrieval documents of %lld + %lld tokens -> %s\n", static_cast<long long>(n),
              static_cast<long long>(o.context_len), static_cast<long long>(o.decoder_len), out.c_str());
  return 0;
}

}  // namespace

int cmd_data(int argc, char** argv) {
  if (argc < 1 || !std::strcmp(argv[0], "--help") || !std::strcmp(argv[0], "-h")) {
    std::fputs(kDataHelp, argc < 1 ? stderr : stdout);
    return argc < 1 ? 2 : 0;
  }
  const std::string sub = argv[0];
  if (sub == "tokenize") return data_tokenize(argc - 1, argv + 1);
  if (sub == "info") return data_info(argc - 1, argv + 1);
  if (sub == "sample") return data_sample(argc - 1, argv + 1);
  if (sub == "teacher") return data_teacher(argc - 1, argv + 1);
  if (sub == "synth") return data_synth(argc - 1, argv + 1);
  throw Error("unknown data subcommand '" + sub + "' (tokenize, info, sample, teacher, synth)");
}

}  // namespace cepe::cli
