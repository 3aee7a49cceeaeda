#pragma once
// Learning-rate schedules as Hugging Face transformers' get_scheduler builds them (a torch LambdaLR over the
// optimizer's base lr), and the warmup length as HF Trainer derives it from a ratio.
#include <cstdint>
#include <string>
#include <string_view>

namespace cepe::train {

enum class ScheduleKind { Constant, ConstantWithWarmup, Linear, Cosine };

// "constant", "constant_with_warmup", "linear", "cosine" (HF's SchedulerType names); anything else is an error
// listing these.
ScheduleKind parse_schedule_kind(std::string_view name);
const char* schedule_kind_name(ScheduleKind kind);

// HF TrainingArguments.get_warmup_steps when warmup_steps is not given: ceil(total_steps * ratio), computed in
// double as Python does. ratio must be in [0, 1].
int64_t warmup_steps_from_ratio(int64_t total_steps, double ratio);

struct LrSchedule {
  ScheduleKind kind = ScheduleKind::Constant;
  double base_lr = 0;        // the optimizer's lr (LambdaLR's base_lr)
  int64_t warmup_steps = 0;  // ignored by Constant
  int64_t total_steps = 0;   // num_training_steps; Linear and Cosine need it > 0
  double num_cycles = 0.5;   // Cosine only: 0.5 = one half-wave from base_lr down to 0

  // Throws on a negative or non-finite base_lr, negative warmup, or total_steps <= 0 where needed.
  void validate() const;
  // LambdaLR's multiplier at optimizer step `step` (0-based: the first update uses factor(0), which is 0 with
  // any warmup, exactly as in HF), with HF's formulas term by term:
  //   warmup (step < warmup_steps): step / max(1, warmup_steps)
  //   linear: max(0, (total - step) / max(1, total - warmup))
  //   cosine: max(0, 0.5 * (1 + cos(pi * num_cycles * 2 * progress))), progress = (step - warmup) / max(1, total - warmup)
  double factor(int64_t step) const;
  double lr(int64_t step) const { return base_lr * factor(step); }  // LambdaLR: base_lr * lambda(step)
};

}  // namespace cepe::train
