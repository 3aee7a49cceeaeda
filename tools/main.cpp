// `cepe`: the command-line front end. Each subcommand lives in its own file; this one dispatches and turns
// every error into a single `error: ...` line with a non-zero exit.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "cepe/error.h"
#include "commands.h"

namespace {

void usage(std::FILE* out) {
  std::fputs(
      "usage: cepe <command> [options]\n"
      "\n"
      "commands:\n"
      "  generate   generate text (-m DIR -p PROMPT [-c FILE]...) or token ids (--request REQ.json)\n"
      "  forward    logits (and encoder states) for a JSON request of token ids\n"
      "  tokenize   print the token ids of a text\n"
      "\n"
      "Run `cepe <command> --help` for the options of a command.\n",
      out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "generate") return cepe::cli::cmd_generate(argc - 2, argv + 2);
    if (cmd == "forward") return cepe::cli::cmd_forward(argc - 2, argv + 2);
    if (cmd == "tokenize") return cepe::cli::cmd_tokenize(argc - 2, argv + 2);
    std::fprintf(stderr, "error: unknown command '%s' (try `cepe --help`)\n", cmd.c_str());
    return 2;
  } catch (const cepe::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 1;
}
