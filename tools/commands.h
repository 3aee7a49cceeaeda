#pragma once
// One function per `cepe` subcommand; argv excludes the program and subcommand names.
namespace cepe::cli {

int cmd_forward(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_init(int argc, char** argv);
int cmd_tokenize(int argc, char** argv);
int cmd_encode(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_bench_train(int argc, char** argv);  // `cepe bench train`
int cmd_grad(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_data(int argc, char** argv);
int cmd_export(int argc, char** argv);
int cmd_perplexity(int argc, char** argv);
int cmd_passkey(int argc, char** argv);
int cmd_demo(int argc, char** argv);

}  // namespace cepe::cli
