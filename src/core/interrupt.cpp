#include "core/interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace cepe {

namespace {

// A fixed table of C strings: the handler may run between any two instructions, so it cannot touch a
// std::vector or a lock. Slots are claimed and released with atomic exchanges.
constexpr int kSlots = 64;
std::atomic<char*> g_temp_files[kSlots];
bool g_stderr_tty = false;  // a progress bar may be mid-line: start the error on a line of its own

void write_all(const char* s) {
  size_t n = std::strlen(s);
  while (n > 0) {
    const ssize_t w = ::write(STDERR_FILENO, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

std::atomic<int> g_deferred{0};   // live DeferredInterrupt objects
std::atomic<int> g_requested{0};  // the deferred signal, once received

extern "C" void on_interrupt(int sig) {
  if (g_deferred.load() > 0) {
    int none = 0;
    if (g_requested.compare_exchange_strong(none, sig)) {
      if (g_stderr_tty) write_all("\n");
      write_all(sig == SIGINT ? "interrupted by SIGINT: finishing this step and saving a checkpoint (interrupt again to stop now)\n"
                              : "interrupted by SIGTERM: finishing this step and saving a checkpoint\n");
      return;
    }
  }
  bool removed = false;
  for (auto& slot : g_temp_files) {
    if (char* p = slot.load()) removed = ::unlink(p) == 0 || removed;
  }
  if (g_stderr_tty) write_all("\n");
  write_all(sig == SIGINT ? "error: interrupted by SIGINT" : "error: interrupted by SIGTERM");
  write_all(removed ? "; unfinished output files were removed\n" : "\n");
  ::_exit(1);
}

}  // namespace

void install_interrupt_cleanup() {
  g_stderr_tty = ::isatty(STDERR_FILENO) == 1;
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  // A deferred interrupt returns to the program: restart the system calls it interrupted (writes in flight).
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  // Both signals are blocked while the handler runs, so it runs once.
  sigaddset(&sa.sa_mask, SIGINT);
  sigaddset(&sa.sa_mask, SIGTERM);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

DeferredInterrupt::DeferredInterrupt() { g_deferred.fetch_add(1); }
DeferredInterrupt::~DeferredInterrupt() { g_deferred.fetch_sub(1); }
int DeferredInterrupt::requested() { return g_requested.load(); }

TempFileGuard::TempFileGuard(const std::string& path) {
  char* copy = ::strdup(path.c_str());
  if (!copy) return;
  for (int i = 0; i < kSlots; ++i) {
    char* expected = nullptr;
    if (g_temp_files[i].compare_exchange_strong(expected, copy)) {
      slot_ = i;
      return;
    }
  }
  std::free(copy);
}

TempFileGuard::~TempFileGuard() {
  if (slot_ >= 0) std::free(g_temp_files[slot_].exchange(nullptr));
}

}  // namespace cepe
