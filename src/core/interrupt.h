#pragma once
// Ctrl-C and SIGTERM: whatever the program is doing, temporary files it is writing are removed and it exits
// with one `error:` line and status 1. The handler does only async-signal-safe work (unlink, write, _exit), so
// it is correct at any point, even inside a GEMM or a write.
#include <string>

namespace cepe {

// Installs the SIGINT/SIGTERM handler (the CLI does this first thing). Idempotent.
void install_interrupt_cleanup();

// While alive, `path` is removed if the process is interrupted. Register before creating the file, so that
// there is no moment when it exists unregistered.
class TempFileGuard {
 public:
  explicit TempFileGuard(const std::string& path);
  ~TempFileGuard();
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;

 private:
  int slot_ = -1;  // -1: the table was full, the file is not guarded
};

// While one is alive, the first SIGINT/SIGTERM only records the request (a long job, such as training, then
// finishes its step and saves a checkpoint before it stops); a second one ends the process at once, as usual.
class DeferredInterrupt {
 public:
  DeferredInterrupt();
  ~DeferredInterrupt();
  DeferredInterrupt(const DeferredInterrupt&) = delete;
  DeferredInterrupt& operator=(const DeferredInterrupt&) = delete;

  static int requested();  // the signal received (SIGINT/SIGTERM), or 0
};

}  // namespace cepe
