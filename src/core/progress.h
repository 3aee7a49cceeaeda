#pragma once
// Progress of a long operation on stderr (or any stream): a redrawn bar with rate and ETA on a terminal,
// a plain line every few seconds otherwise (logs, CI), and a closing line with the total time.
// Used from one thread (the one driving the work).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace cepe {

class Progress {
 public:
  enum class Style { Auto, Bar, Lines, Quiet };  // Auto: Bar when `out` is a terminal, else Lines

  // `unit` "B" formats amounts as bytes (kB/MB/GB, rate in MB/s); any other unit is printed after plain
  // counts ("1200/5000 chunks, 35.2 chunks/s").
  Progress(std::string label, int64_t total, std::string unit);
  Progress(std::string label, int64_t total, std::string unit, std::FILE* out, Style style,
           double line_interval_s = 5.0);
  ~Progress();  // ends an unfinished bar's line (no "done" line: the work did not finish)
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // `done` out of `total` (clamped to it). Cheap: prints at most every 0.1 s (bar) or line_interval_s (lines).
  void update(int64_t done);
  // Prints the final state and the elapsed time once; later calls do nothing.
  void finish();
  // Work already done before this run (a resumed job): counted in the fraction, not in the rate and ETA.
  void set_baseline(int64_t done);
  // Extra fields appended to the status (e.g. "loss 2.31, lr 3.0e-04"); shown from the next print.
  void set_note(std::string note) { note_ = std::move(note); }

  double elapsed_s() const;
  // The text of the status, e.g. "42% 7.1 GB/17.0 GB, 251 MB/s, ETA 0:39" (also what the lines print).
  std::string status() const;

  // Helpers, also used by callers to print sizes and durations the same way.
  static std::string format_bytes(double bytes);   // "512 B", "17.0 kB", "17.03 GB" (decimal units)
  static std::string format_duration(double s);    // "0:07", "1:05", "1:02:03"

 private:
  using Clock = std::chrono::steady_clock;
  void print(bool final);
  std::string amount(double v) const;
  std::string rate_str(double per_s) const;

  std::string label_, unit_;
  int64_t total_ = 0, done_ = 0, baseline_ = 0;
  std::string note_;
  std::FILE* out_ = nullptr;
  Style style_ = Style::Lines;
  double interval_s_ = 5.0;
  Clock::time_point start_, last_print_;
  bool finished_ = false, bar_open_ = false;
};

}  // namespace cepe
