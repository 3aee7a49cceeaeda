// `cepe`: the command-line front end. Each subcommand lives in its own file; this one dispatches and turns
// every error into a single `error: ...` line with a non-zero exit.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "cepe/error.h"
#include "core/interrupt.h"
#include "train/comm.h"
#include "commands.h"

namespace {

void usage(std::FILE* out) {
  std::fputs(
      "usage: cepe <command> [options]\n"
      "\n"
      "commands:\n"
      "  generate   generate text (-m DIR -p PROMPT [-c FILE]...) or token ids (--request REQ.json)\n"
      "  forward    logits (and encoder states) for a JSON request of token ids\n"
      "  grad       loss and gradients of the trainable parameters for a JSON request with labels\n"
      "  train      run a training stage (decoder, mlm, warmup, cepe, ceped) from a JSON config\n"
      "  tokenize   print the token ids of a text\n"
      "  init       write a randomly initialised checkpoint (--preset NAME | --config FILE) -o DIR\n"
      "  encode     encode long contexts once into a file for `generate --ctx`\n"
      "  bench      CEPE against full attention: throughput and memory by context length\n"
      "  data       training data: tokenize text into token files, inspect them and their samples\n"
      "  export     write a checkpoint for release (e.g. BF16 weights, its training windows in config.json)\n"
      "  perplexity long-document perplexity by context length: CEPE, vanilla, StreamingLLM, RePlug\n"
      "  passkey    pass-key retrieval accuracy by context length and needle depth\n"
      "  demo       the default model: perplexity, retrieval, memory and speed against full attention\n"
      "\n"
      "Run `cepe <command> --help` for the options of a command.\n",
      out);
}

// The message on one line whatever it quotes (a JSON key, an option, a file name...): control characters
// are escaped.
std::string one_line(const std::string& s) {
  std::string out;
  for (const unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else out += static_cast<char>(c);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  cepe::install_interrupt_cleanup();
  try {
    if (cmd == "generate") return cepe::cli::cmd_generate(argc - 2, argv + 2);
    if (cmd == "forward") return cepe::cli::cmd_forward(argc - 2, argv + 2);
    if (cmd == "grad") return cepe::cli::cmd_grad(argc - 2, argv + 2);
    if (cmd == "train") return cepe::cli::cmd_train(argc - 2, argv + 2);
    if (cmd == "tokenize") return cepe::cli::cmd_tokenize(argc - 2, argv + 2);
    if (cmd == "init") return cepe::cli::cmd_init(argc - 2, argv + 2);
    if (cmd == "encode") return cepe::cli::cmd_encode(argc - 2, argv + 2);
    if (cmd == "bench") return cepe::cli::cmd_bench(argc - 2, argv + 2);
    if (cmd == "data") return cepe::cli::cmd_data(argc - 2, argv + 2);
    if (cmd == "export") return cepe::cli::cmd_export(argc - 2, argv + 2);
    if (cmd == "perplexity") return cepe::cli::cmd_perplexity(argc - 2, argv + 2);
    if (cmd == "passkey") return cepe::cli::cmd_passkey(argc - 2, argv + 2);
    if (cmd == "demo") return cepe::cli::cmd_demo(argc - 2, argv + 2);
    std::fprintf(stderr, "error: unknown command '%s' (try `cepe --help`)\n", one_line(cmd).c_str());
    return 2;
  } catch (const cepe::Error& e) {
    std::fprintf(stderr, "error: %s\n", one_line(e.what()).c_str());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", one_line(e.what()).c_str());
  }
  // Under mpirun: skip MPI_Finalize at exit, which would wait forever for ranks still in a collective; mpirun
  // then ends them (train/comm.h). A no-op otherwise.
  cepe::train::communication_failed();
  return 1;
}
