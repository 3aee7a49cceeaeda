#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numbers>

#include "cepe/error.h"

namespace cepe::train {

ScheduleKind parse_schedule_kind(std::string_view name) {
  if (name == "constant") return ScheduleKind::Constant;
  if (name == "constant_with_warmup") return ScheduleKind::ConstantWithWarmup;
  if (name == "linear") return ScheduleKind::Linear;
  if (name == "cosine") return ScheduleKind::Cosine;
  throw Error("unknown lr scheduler '" + std::string(name) +
              "' (expected constant, constant_with_warmup, linear or cosine)");
}

const char* schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::Constant: return "constant";
    case ScheduleKind::ConstantWithWarmup: return "constant_with_warmup";
    case ScheduleKind::Linear: return "linear";
    case ScheduleKind::Cosine: return "cosine";
  }
  return "?";
}

int64_t warmup_steps_from_ratio(int64_t total_steps, double ratio) {
  check(std::isfinite(ratio) && ratio >= 0.0 && ratio <= 1.0, [&] {
    char b[64];
    std::snprintf(b, sizeof b, "%g", ratio);
    return std::string("warmup_ratio must be in [0, 1], got ") + b;
  });
  check(total_steps >= 0, [&] { return "total steps must be >= 0, got " + std::to_string(total_steps); });
  return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * ratio));
}

void LrSchedule::validate() const {
  check(std::isfinite(base_lr) && base_lr >= 0.0, "learning rate must be a number >= 0");
  check(warmup_steps >= 0, [&] { return "warmup steps must be >= 0, got " + std::to_string(warmup_steps); });
  if (kind == ScheduleKind::Linear || kind == ScheduleKind::Cosine)
    check(total_steps > 0, [&] {
      return std::string("the ") + schedule_kind_name(kind) + " schedule needs total steps > 0, got " +
             std::to_string(total_steps);
    });
  check(std::isfinite(num_cycles), "num_cycles must be finite");
}

double LrSchedule::factor(int64_t step) const {
  const auto d = [](int64_t v) { return static_cast<double>(v); };
  if (kind == ScheduleKind::Constant) return 1.0;
  if (step < warmup_steps) return d(step) / d(std::max<int64_t>(1, warmup_steps));
  switch (kind) {
    case ScheduleKind::ConstantWithWarmup: return 1.0;
    case ScheduleKind::Linear:
      return std::max(0.0, d(total_steps - step) / d(std::max<int64_t>(1, total_steps - warmup_steps)));
    case ScheduleKind::Cosine: {
      const double progress = d(step - warmup_steps) / d(std::max<int64_t>(1, total_steps - warmup_steps));
      return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles * 2.0 * progress)));
    }
    case ScheduleKind::Constant: break;
  }
  return 1.0;
}

}  // namespace cepe::train
