#include "cepe/error.h"
#include "commands.h"
namespace cepe::cli {
int cmd_passkey(int, char**) { throw Error("passkey: under construction"); }
int cmd_demo(int, char**) { throw Error("demo: under construction"); }
}  // namespace cepe::cli
