#include "patchwise/train/schedule.h"

#include <algorithm>
#include <cmath>

#include "patchwise/base/error.h"

namespace patchwise {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kOneCycleWarmup = 0.3;    // PyTorch's pct_start
constexpr double kOneCycleStart = 25;      // div_factor: the first rate is lr / 25
constexpr double kOneCycleEnd = 25 * 1e4;  // and the last lr / (25 * final_div_factor)

/// Half a cosine from `from` at p = 0 to `to` at p = 1.
double cosine(double from, double to, double p) {
  return to + (from - to) * 0.5 * (1 + std::cos(kPi * std::clamp(p, 0.0, 1.0)));
}

/// The warmup's length in steps.
int64_t warmup_steps(const ScheduleOptions& o, int64_t total, int64_t steps_per_epoch) {
  if (o.warmup_epochs < 0) {
    return o.kind == ScheduleKind::kOneCycle
               ? static_cast<int64_t>(std::llround(kOneCycleWarmup * static_cast<double>(total)))
               : 0;
  }
  return static_cast<int64_t>(std::llround(o.warmup_epochs * static_cast<double>(steps_per_epoch)));
}

}  // namespace

ScheduleKind parse_schedule_kind(const std::string& name) {
  if (name == "constant") return ScheduleKind::kConstant;
  if (name == "step") return ScheduleKind::kStep;
  if (name == "cosine") return ScheduleKind::kCosine;
  if (name == "onecycle") return ScheduleKind::kOneCycle;
  throw OptionError(
      "schedule",
      fmt::format("unknown schedule '{}', expected constant, step, cosine or onecycle", name));
}

std::string schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kConstant:
      return "constant";
    case ScheduleKind::kStep:
      return "step";
    case ScheduleKind::kCosine:
      return "cosine";
    case ScheduleKind::kOneCycle:
      return "onecycle";
  }
  return "constant";
}

void check_schedule_options(const ScheduleOptions& o, int64_t epochs) {
  check_option(
      o.warmup_epochs < static_cast<double>(epochs) && std::isfinite(o.warmup_epochs),
      "warmup",
      "{} epochs, expected fewer than the run's {} epochs",
      o.warmup_epochs,
      epochs);
  check_option(
      o.step_epochs > 0 && std::isfinite(o.step_epochs),
      "lr-step",
      "{} epochs, expected a positive number",
      o.step_epochs);
  check_option(o.gamma > 0 && o.gamma <= 1, "lr-gamma", "{}, expected 0 < gamma <= 1", o.gamma);
}

double scheduled_lr(
    const ScheduleOptions& o, double lr, int64_t step, int64_t total, int64_t steps_per_epoch) {
  const int64_t warmup = std::min(warmup_steps(o, total, steps_per_epoch), total - 1);
  const double after = static_cast<double>(step - warmup);
  if (o.kind == ScheduleKind::kOneCycle) {
    if (step < warmup) {  // annealed up along a cosine, as PyTorch's
      return cosine(lr / kOneCycleStart, lr, static_cast<double>(step) / warmup);
    }  // ending exactly at the last step
    return cosine(lr, lr / kOneCycleEnd, after / std::max<double>(total - 1 - warmup, 1));
  }
  double rate = lr;  // the cosine stops one step short of 0, as PyTorch's
  if (o.kind == ScheduleKind::kCosine) rate = cosine(lr, 0, after / (total - warmup));
  if (o.kind == ScheduleKind::kStep) {
    const double epoch = std::max(after, 0.0) / static_cast<double>(steps_per_epoch);
    rate = lr * std::pow(o.gamma, std::floor(epoch / o.step_epochs));
  }
  if (step < warmup) {
    return rate * static_cast<double>(step + 1) / static_cast<double>(warmup);
  }
  return rate;
}

}  // namespace patchwise
