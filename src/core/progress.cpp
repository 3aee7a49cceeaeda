#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace cepe {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

Progress::Progress(std::string label, int64_t total, std::string unit)
    : Progress(std::move(label), total, std::move(unit), stderr, Style::Auto) {}

Progress::Progress(std::string label, int64_t total, std::string unit, std::FILE* out, Style style,
                   double line_interval_s)
    : label_(std::move(label)), unit_(std::move(unit)), total_(std::max<int64_t>(total, 0)), out_(out),
      style_(style), interval_s_(line_interval_s) {
  if (style_ == Style::Auto) style_ = (out_ && ::isatty(::fileno(out_))) ? Style::Bar : Style::Lines;
  if (!out_) style_ = Style::Quiet;
  start_ = last_print_ = Clock::now();
}

Progress::~Progress() {
  if (bar_open_ && !finished_) {
    std::fputc('\n', out_);
    std::fflush(out_);
  }
}

double Progress::elapsed_s() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

std::string Progress::format_bytes(double b) {
  if (b < 1e3) return fmt("%.0f B", b);
  if (b < 1e6) return fmt("%.1f kB", b / 1e3);
  if (b < 1e9) return fmt("%.1f MB", b / 1e6);
  return fmt("%.2f GB", b / 1e9);
}

std::string Progress::format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const long long t = std::llround(s);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", t / 3600, t / 60 % 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lld:%02lld", t / 60, t % 60);
  return buf;
}

std::string Progress::amount(double v) const {
  if (unit_ == "B") return format_bytes(v);
  return fmt("%.0f", v);
}

std::string Progress::rate_str(double per_s) const {
  if (unit_ == "B") return fmt("%.0f MB/s", per_s / 1e6);
  return fmt(per_s < 100 ? "%.1f " : "%.0f ", per_s) + unit_ + "/s";
}

std::string Progress::status() const {
  const double t = elapsed_s();
  const double rate = t > 0 ? static_cast<double>(done_ - baseline_) / t : 0.0;
  const double pct = total_ > 0 ? 100.0 * static_cast<double>(done_) / static_cast<double>(total_) : 100.0;
  std::string s = fmt("%.0f%% ", std::floor(pct)) + amount(static_cast<double>(done_)) + "/" +
                  amount(static_cast<double>(total_));
  if (unit_ != "B" && !unit_.empty()) s += " " + unit_;
  s += ", " + rate_str(rate);
  if (done_ < total_) {  // no estimate from the first second
    s += ", ETA " + format_duration(rate > 0 && t >= 1.0 ? static_cast<double>(total_ - done_) / rate : NAN);
  }
  if (!note_.empty()) s += ", " + note_;
  return s;
}

void Progress::set_baseline(int64_t done) {
  baseline_ = std::clamp<int64_t>(done, 0, total_);
  done_ = std::max(done_, baseline_);
}

void Progress::update(int64_t done) {
  if (finished_) return;
  done_ = std::clamp<int64_t>(done, 0, total_);
  if (style_ == Style::Quiet) return;
  const auto now = Clock::now();
  const double since = std::chrono::duration<double>(now - last_print_).count();
  if (style_ == Style::Bar ? since < 0.1 : since < interval_s_) return;
  last_print_ = now;
  print(false);
}

void Progress::finish() {
  if (finished_) return;
  if (style_ != Style::Quiet) print(true);
  finished_ = true;
}

void Progress::print(bool final) {
  const double t = elapsed_s();
  if (final) {
    // The closing line: what was done, how long it took, the average rate.
    std::string s = label_ + ": " + amount(static_cast<double>(done_));
    if (unit_ != "B" && !unit_.empty()) s += " " + unit_;
    s += " in " + fmt("%.1f s", t);
    if (t > 0) s += " (" + rate_str(static_cast<double>(done_) / t) + ")";
    std::fprintf(out_, "%s%s\n", style_ == Style::Bar ? "\r\033[K" : "", s.c_str());
    bar_open_ = false;
  } else if (style_ == Style::Bar) {
    constexpr int kWidth = 30;
    const double frac = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
    const int fill = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<size_t>(fill), '#');
    bar.append(static_cast<size_t>(kWidth - fill), '.');
    std::fprintf(out_, "\r\033[K%s [%s] %s", label_.c_str(), bar.c_str(), status().c_str());
    bar_open_ = true;
  } else {
    std::fprintf(out_, "%s: %s\n", label_.c_str(), status().c_str());
  }
  std::fflush(out_);
}

}  // namespace cepe
