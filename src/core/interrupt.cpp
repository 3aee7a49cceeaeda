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

extern "C" void on_interrupt(int sig) {
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
  sigemptyset(&sa.sa_mask);
  // Both signals are blocked while the handler runs, so it runs once.
  sigaddset(&sa.sa_mask, SIGINT);
  sigaddset(&sa.sa_mask, SIGTERM);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

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
